"""Static checks of what cannot run here (no Docker engine, no Kubernetes, no Slurm): the
Compose stack, the image, the KubeRay manifests and the Slurm script say what xmem expects,
publish nothing to the world, and hold no secrets."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from orchestrator.settings import DEFAULT_STORAGE, resolve_settings
from orchestrator.spec import load_spec
from workers.config import TrialConfig

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
KUBERAY = ROOT / "deploy" / "kuberay"
SBATCH = ROOT / "deploy" / "slurm" / "xmem-sweep.sbatch"
CREDENTIAL = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN", re.IGNORECASE)
SECRET = re.compile(r"PASSWORD|SECRET|TOKEN", re.IGNORECASE)   # an access key is a user name
PLACEHOLDER = "change-me"


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Compose's variable interpolation, as `docker compose` does it with ``env`` as the
    environment: ``${V}``, ``${V:-default}``, ``${V:?error}`` (here "<V>" when unset) and
    ``${V:+replacement}``; ``$$`` is a literal ``$``."""
    env = env or {}

    def one(match: re.Match) -> str:
        name, operator, argument = match.group(1), match.group(2), match.group(3) or ""
        value = env.get(name, "")
        if operator == ":-":
            return value or argument
        if operator == ":?":
            return value or f"<{name}>"
        if operator == ":+":
            return argument if value else ""
        return value

    text = re.sub(r"\$\{(\w+)(:[-?+])?([^}]*)\}", one, text.replace("$$", "\0"))
    return text.replace("\0", "$")


def _compose(name: str = "compose.yaml") -> dict:
    return yaml.safe_load((DOCKER / name).read_text())


def _service_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


# --- docker/compose.yaml ------------------------------------------------------------------------

def test_compose_has_the_whole_stack_with_health_checks():
    services = _compose()["services"]
    assert set(services) == {"head", "worker", "mlflow", "postgres", "minio", "minio-init"}
    for name, service in services.items():
        if name != "minio-init":                         # a one-shot job, not a service to watch
            assert service["healthcheck"]["test"], name
    assert services["worker"]["depends_on"]["head"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "minio-init": {"condition": "service_completed_successfully"}}


def test_every_published_port_is_bound_to_127_0_0_1_and_the_dashboard_always():
    services = _compose()["services"]
    published = {}
    for name, service in services.items():
        for port in service.get("ports", []):
            host, host_port, container_port = interpolate(port).rsplit(":", 2)
            assert host == "127.0.0.1", (name, port)      # the default, without an env file
            published[(name, container_port)] = port
    assert set(published) == {("mlflow", "5000"), ("head", "8265")}
    # Opting out (XMEM_BIND=0.0.0.0) moves MLflow's UI only: the dashboard runs code.
    assert published[("head", "8265")].startswith("127.0.0.1:")
    opted_out = interpolate(published[("mlflow", "5000")], {"XMEM_BIND": "0.0.0.0"})
    assert opted_out.startswith("0.0.0.0:")


def test_workers_scale_with_all_gpus_visible_and_claim_distinct_ones():
    worker = _compose()["services"]["worker"]
    assert "container_name" not in worker                # --scale needs generated names
    device, = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["count"] == "all" and "gpu" in device["capabilities"]
    assert worker["command"] == ["xmem-worker-start"]
    assert "COPY docker/worker-start.sh /usr/local/bin/xmem-worker-start" in _dockerfile()
    assert "gpu-locks:/opt/xmem-locks" in worker["volumes"]
    assert _service_env(worker)["XMEM_GPU_LOCKS"] == "/opt/xmem-locks"


def test_ray_nodes_share_the_data_and_storage_volumes_where_xmem_looks():
    compose = _compose()
    workdir = re.search(r"^WORKDIR (\S+)", _dockerfile(), re.M).group(1)
    storage = f"{workdir}/{DEFAULT_STORAGE}"               # xmem's default --storage there
    data_dir = TrialConfig.__dataclass_fields__["data_dir"].default   # ~/.cache/xmem/data
    home = "/home/xmem"
    assert f"ln -s /data {data_dir.replace('~', home)}" in _dockerfile()
    assert "useradd --create-home --uid 1000 xmem" in _dockerfile()
    for name in ("head", "worker"):
        mounts = [interpolate(volume) for volume in compose["services"][name]["volumes"]]
        assert f"runs:{storage}" in mounts, name
        assert "data:/data" in mounts, name
    for volume in ("data", "runs", "gpu-locks", "postgres", "minio"):
        assert volume in compose["volumes"]
    # XMEM_DATA may name a host folder instead of the volume.
    assert interpolate(compose["services"]["worker"]["volumes"][0],
                       {"XMEM_DATA": "/srv/datasets"}) == "/srv/datasets:/data"


def test_ray_nodes_environment_is_what_xmem_reads(tmp_path):
    services = _compose()["services"]
    spec_path = tmp_path / "s.yaml"
    spec_path.write_text("name: s\ngrid: {sigma: [1.0]}\n")
    spec = load_spec(spec_path)
    mlflow_port = services["mlflow"]["command"][services["mlflow"]["command"].index("--port") + 1]
    head_port = next(arg.split("=")[1] for arg in services["head"]["command"]
                     if arg.startswith("--port="))
    allowed = _service_env(services["mlflow"])["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    for name in ("head", "worker"):
        settings = resolve_settings(spec, None, None, None, environ=_service_env(services[name]))
        assert settings.address == f"head:{head_port}"
        assert settings.tracking_uri == f"http://mlflow:{mlflow_port}"
        assert settings.sources["tracking_uri"] == "environment"
        assert urlsplit(settings.tracking_uri).netloc in allowed   # MLflow answers that Host


def test_only_the_services_that_need_a_credential_get_it():
    services = _compose()["services"]
    holders = {name for name, service in services.items()
               if any(CREDENTIAL.search(key) or "@" in value
                      for key, value in _service_env(service).items())}
    assert holders == {"mlflow", "postgres", "minio", "minio-init"}    # never head or worker
    mlflow = _service_env(services["mlflow"])
    assert mlflow["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://")
    assert mlflow["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")   # proxied by the server
    assert "--no-serve-artifacts" not in services["mlflow"]["command"]


def test_no_secret_values_are_committed():
    """Every credential in the Compose files is a variable the env file fills; the example env
    file holds placeholders only; the real env file is ignored by git and Docker builds."""
    for name in ("compose.yaml", "compose.auth.yaml"):
        for service_name, service in _compose(name)["services"].items():
            for key, value in _service_env(service).items():
                if CREDENTIAL.search(key) and not key.endswith("_PATH"):
                    assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", value), (name, service_name, key)
                if "://" in value and "@" in value:       # credentials inside a URL
                    userinfo = value.split("://", 1)[1].rsplit("@", 1)[0]
                    assert re.fullmatch(r"\$\{\w+:\?[^}]*\}:\$\{\w+:\?[^}]*\}", userinfo), value
    example = {}
    for line in (DOCKER / "xmem.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = line.split("=", 1)
            example[key] = value
            if SECRET.search(key):
                assert value == PLACEHOLDER, key
    # Every variable the Compose files require (${V:?...}) is in the example.
    required = set()
    for name in ("compose.yaml", "compose.auth.yaml"):
        required |= set(re.findall(r"\$\{(\w+):\?", (DOCKER / name).read_text()))
    assert required <= set(example), required - set(example)
    assert "docker/xmem.env" in (ROOT / ".gitignore").read_text().splitlines()
    assert "*.env" in (ROOT / ".dockerignore").read_text().splitlines()
    tracked = subprocess.run(["git", "ls-files", "docker", "deploy"], cwd=ROOT,
                             capture_output=True, text=True).stdout.split()
    assert not [path for path in tracked if path.endswith(".env")]
    for path in [*DOCKER.iterdir(), *KUBERAY.iterdir(), SBATCH]:
        text = path.read_text()
        assert not re.search(r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY", text), path


def test_basic_auth_override_turns_on_mlflows_auth_app():
    override = _compose("compose.auth.yaml")["services"]
    assert override["mlflow"]["command"][:4] == ["mlflow", "server", "--app-name", "basic-auth"]
    ini = (DOCKER / "mlflow-basic-auth.ini").read_text()
    assert "admin_password" not in ini.replace("# ", "")   # from MLFLOW_AUTH_ADMIN_PASSWORD
    for name in ("head", "worker"):
        assert set(_service_env(override[name])) == {"MLFLOW_TRACKING_USERNAME",
                                                      "MLFLOW_TRACKING_PASSWORD"}


# --- docker/Dockerfile --------------------------------------------------------------------------

def test_dockerfile_installs_xmem_and_exposes_no_dashboard():
    dockerfile = _dockerfile()
    assert "pip install '.[cluster]'" in dockerfile and "pip install --no-deps ." in dockerfile
    for folder in ("workers", "orchestrator", "experiments"):
        assert f"COPY {folder} ./{folder}" in dockerfile
    exposed = {port for line in re.findall(r"^EXPOSE (.+)$", dockerfile, re.M) for port in line.split()}
    assert "8265" not in exposed
    command = re.search(r"^CMD (.+)$", dockerfile, re.M).group(1)
    assert "0.0.0.0" not in command and "--dashboard-host=127.0.0.1" in command
    assert re.search(r"^USER xmem$", dockerfile, re.M)


def test_the_cluster_extra_has_the_postgresql_driver_and_tests_use_it():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(requirement.startswith("psycopg[binary]") for requirement in extras["cluster"])
    assert any(requirement.startswith("boto3") for requirement in extras["cluster"])
    # The PostgreSQL test skips without the driver: CI installs it with the test extra.
    assert any(requirement.startswith("psycopg[binary]") for requirement in extras["test"])


def test_worker_start_claims_distinct_gpus(tmp_path):
    """Stand-in, named as such, for nvidia-smi (this machine has no GPU): it lists GPUs 0 and 1.
    Two workers started together get different GPUs, a third finds none free and says how
    many to run, and one that starts after the others stopped gets a freed GPU."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "XMEM_GPU_LOCKS": str(tmp_path / "locks")}
    script = str(DOCKER / "worker-start.sh")
    holding = [subprocess.Popen([script, "sh", "-c", 'echo "gpus=$CUDA_VISIBLE_DEVICES"; exec sleep 30'],
                                env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        claimed = set()
        for process in holding:
            for line in process.stdout:
                if line.startswith("gpus="):
                    claimed.add(line.strip())
                    break
        assert claimed == {"gpus=0", "gpus=1"}
        third = subprocess.run([script, "true"], env=env, capture_output=True, text=True)
        assert third.returncode == 1 and "--scale worker=2" in third.stderr
    finally:
        for process in holding:
            process.kill()
            process.wait()
    again = subprocess.run([script, "sh", "-c", 'echo "gpus=$CUDA_VISIBLE_DEVICES"'], env=env,
                           capture_output=True, text=True)
    assert "gpus=0" in again.stdout
    cpu_only = subprocess.run([script, "sh", "-c", 'echo "gpus=[$CUDA_VISIBLE_DEVICES]"'],
                              env={**env, "XMEM_GPUS_PER_WORKER": "0"}, capture_output=True, text=True)
    assert "gpus=[]" in cpu_only.stdout


# --- deploy/kuberay -----------------------------------------------------------------------------

def _manifests(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((KUBERAY / name).read_text()) if doc]


def test_kuberay_cluster_has_a_head_and_a_gpu_group_of_one_image():
    documents = _manifests("raycluster.yaml")
    cluster, = [doc for doc in documents if doc["kind"] == "RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    head, = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    group, = cluster["spec"]["workerGroupSpecs"]
    worker, = group["template"]["spec"]["containers"]
    assert head["image"] == worker["image"] and "xmem" in head["image"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert cluster["spec"]["headGroupSpec"]["serviceType"] == "ClusterIP"
    workdir = re.search(r"^WORKDIR (\S+)", _dockerfile(), re.M).group(1)
    claims = {doc["metadata"]["name"]: doc for doc in documents if doc["kind"] == "PersistentVolumeClaim"}
    for pod in (cluster["spec"]["headGroupSpec"]["template"]["spec"], group["template"]["spec"]):
        container, = pod["containers"]
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        for path in ("/data", f"{workdir}/{DEFAULT_STORAGE}"):
            claim = volumes[mounts[path]]["persistentVolumeClaim"]["claimName"]
            assert claims[claim]["spec"]["accessModes"] == ["ReadWriteMany"]   # every node
    policy, = [doc for doc in documents if doc["kind"] == "NetworkPolicy"]
    assert policy["spec"]["podSelector"]["matchLabels"] == {"ray.io/cluster": cluster["metadata"]["name"]}


def test_kuberay_tracking_server_is_the_one_the_ray_pods_use():
    cluster, = [doc for doc in _manifests("raycluster.yaml") if doc["kind"] == "RayCluster"]
    head, = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    env = {item["name"]: item for item in head["env"]}
    uri = urlsplit(env["MLFLOW_TRACKING_URI"]["value"])
    documents = _manifests("mlflow.yaml")
    service, = [doc for doc in documents if doc["kind"] == "Service"
                and doc["metadata"]["name"] == uri.hostname]
    assert service["spec"]["ports"][0]["port"] == uri.port
    deployment, = [doc for doc in documents if doc["kind"] == "Deployment"
                   and doc["metadata"]["name"] == uri.hostname]
    mlflow, = deployment["spec"]["template"]["spec"]["containers"]
    assert mlflow["image"] == head["image"]
    mlflow_env = {item["name"]: item for item in mlflow["env"]}
    assert uri.netloc in mlflow_env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    for item in [*mlflow["env"], *[e for d in documents if d["kind"] == "Deployment"
                                   for c in d["spec"]["template"]["spec"]["containers"]
                                   for e in c.get("env", [])]]:
        if CREDENTIAL.search(item["name"]):
            assert "secretKeyRef" in item["valueFrom"], item   # never a literal value
    assert "$(POSTGRES_PASSWORD)" in mlflow_env["MLFLOW_BACKEND_STORE_URI"]["value"]


# --- deploy/slurm -------------------------------------------------------------------------------

def test_sbatch_script_parses_and_follows_rays_slurm_recipe():
    assert subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True).returncode == 0
    text = SBATCH.read_text()
    assert "#SBATCH --ntasks-per-node=1" in text
    assert re.search(r"srun .*-w \"\$head_node\" \\\n\s+ray start --head", text)
    assert 'ray start --address="$RAY_ADDRESS"' in text
    assert re.search(r"^xmem sweep \"\$1\" --address \"\$RAY_ADDRESS\" --storage", text, re.M)
    assert "--dashboard-host=127.0.0.1" in text and "0.0.0.0" not in text


def test_sbatch_script_refuses_to_run_without_a_tracking_server(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(["bash", str(SBATCH), "experiments/fig1.yaml"], env=env,
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and "MLFLOW_TRACKING_URI" in done.stderr


# --- references ---------------------------------------------------------------------------------

def test_every_spec_the_docs_name_exists():
    texts = [ROOT / "README.md", DOCKER / "README.md", *DOCKER.iterdir(), *KUBERAY.iterdir(), SBATCH]
    named = {match for path in texts if path.is_file()
             for match in re.findall(r"experiments/[\w.-]+\.yaml", path.read_text())}
    assert "experiments/fig1.yaml" in named
    assert [spec for spec in named if not (ROOT / spec).is_file()] == []
