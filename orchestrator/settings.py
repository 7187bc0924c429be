"""Where a sweep runs and records: flag > environment > spec > default, and the default places.

``xmem sweep`` resolves three settings (the Ray address, the MLflow tracking URI, the Tune
storage); the commands that read a sweep back (status, export, report) resolve where its runs
are. Each choice is printed with where it came from, so a user knows which one to change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple

from workers.errors import XmemError

if TYPE_CHECKING:  # annotations only: the read commands need no spec
    from orchestrator.spec import SweepSpec

DEFAULT_STORAGE = "xmem-runs"
MLFLOW_FOLDER = "mlflow"  # under the storage: the embedded tracking server's store
REPORTS_FOLDER = "reports"  # under the default storage: xmem report's default output


class Setting(NamedTuple):
    """A resolved setting and where it came from: "flag", "environment", "spec" or
    "default" (printed so that a user knows which one to change)."""

    value: Any
    source: str


def resolve_setting(flag: Any, env_var_name: str | None, spec_value: Any, default: Any,
                    environ: Mapping[str, str] = os.environ) -> Setting:
    """The command-line flag, else the environment variable, else the spec, else the default.

    The most specific, most recent choice wins: a flag is typed for this one run, the
    environment (RAY_ADDRESS, MLFLOW_TRACKING_URI) is set for a shell or a cluster, the spec
    is shared across machines. None means "not given"; so does an empty environment
    variable, the usual way to unset one (``MLFLOW_TRACKING_URI= xmem sweep ...``).
    """
    if flag is not None:
        return Setting(flag, "flag")
    if env_var_name and environ.get(env_var_name):
        return Setting(environ[env_var_name], "environment")
    if spec_value is not None:
        return Setting(spec_value, "spec")
    return Setting(default, "default")


@dataclass(frozen=True)
class SweepSettings:
    address: str | None
    tracking_uri: str | None
    """None: run an embedded tracking server under ``local_mlflow_root(storage)``."""
    storage: str
    """An absolute local path, or a URI (s3://...)."""
    sources: dict[str, str]  # setting -> where it came from (flag, environment, spec, default)


def resolve_settings(spec: "SweepSpec", address: str | None, tracking_uri: str | None,
                     storage: str | None, environ: Mapping[str, str] = os.environ) -> SweepSettings:
    """Flag > environment (RAY_ADDRESS, MLFLOW_TRACKING_URI) > spec > embedded default.

    Raises:
        XmemError: a storage URI pyarrow cannot open, or a remote cluster without a tracking
            URI (its workers could not reach an embedded server on 127.0.0.1).
    """
    address_setting = resolve_setting(address, "RAY_ADDRESS", None, None, environ)
    uri_setting = resolve_setting(tracking_uri, "MLFLOW_TRACKING_URI", spec.tracking_uri, None,
                                  environ)
    storage_setting = resolve_setting(storage, None, spec.storage, DEFAULT_STORAGE, environ)
    storage_value = storage_setting.value
    if "://" not in storage_value:
        storage_value = str(Path(storage_value).expanduser().resolve())
    else:
        _check_storage_uri(storage_value, storage_setting.source)
    if uri_setting.value is None and not is_local_address(address_setting.value):
        raise XmemError(embedded_server_refusal(
            f"the Ray cluster at {address_setting.value} ({address_setting.source})"))
    return SweepSettings(address_setting.value, uri_setting.value, storage_value, {
        "address": address_setting.source, "tracking_uri": uri_setting.source,
        "storage": storage_setting.source})


def embedded_server_refusal(cluster: str) -> str:
    """Why a sweep on ``cluster`` (its address and how it was found) cannot use the embedded
    tracking server, and what to give instead. Said when the address is remote, and again by
    preflight when the cluster Ray joined turns out to have nodes on other hosts."""
    return (f"{cluster} runs trials on other machines, which cannot reach an embedded tracking "
            "server on 127.0.0.1.\nGive a tracking server every node reaches: --tracking-uri "
            "http://HOST:5000 (or MLFLOW_TRACKING_URI, or tracking_uri in the spec); "
            "README.md (\"On a cluster\") shows how to run one. Use --storage on a shared filesystem or s3:// "
            "as well, so that trials can resume on any node.")


def is_local_address(address: str | None) -> bool:
    """None/"local"/"auto" or a cluster on this machine (its workers share 127.0.0.1)."""
    if address in (None, "", "local", "auto"):
        return True
    host = address.split("://", 1)[-1].rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "::1", "[::1]")


def _check_storage_uri(storage: str, source: str) -> None:
    import pyarrow.fs as pafs

    try:
        pafs.FileSystem.from_uri(storage)
    except Exception as error:  # pyarrow raises ArrowInvalid / ArrowNotImplementedError / OSError
        raise XmemError(f"storage {storage!r} ({source}) is not a usable location: {error}\n"
                        "Use a local or shared folder (/nfs/xmem-runs) or s3://bucket/prefix.") from None


def local_mlflow_root(storage: str = DEFAULT_STORAGE) -> Path:
    """Where the embedded MLflow server keeps its SQLite file and artifacts."""
    if "://" in storage:  # remote Tune storage: keep the local store beside the user
        return Path(DEFAULT_STORAGE).resolve() / MLFLOW_FOLDER
    return Path(storage) / MLFLOW_FOLDER


def default_report_dir(sweep: str) -> Path:
    """./xmem-runs/reports/<sweep>: beside the default sweep storage."""
    return Path(DEFAULT_STORAGE) / REPORTS_FOLDER / sweep


def tracking_uri_for(tracking_uri: str | None, store: str | None,
                     environ: Mapping[str, str] = os.environ) -> tuple[str | None, Path | None]:
    """Where a command that reads a sweep back finds its runs: (the tracking URI, or None)
    and (the embedded store folder to read, or None).

    ``--tracking-uri`` wins over ``MLFLOW_TRACKING_URI`` (empty = unset), which wins over
    the store folder (``store``, else the one ``xmem sweep`` uses by default:
    ./xmem-runs/mlflow).
    """
    if tracking_uri:
        return tracking_uri, None
    if environ.get("MLFLOW_TRACKING_URI"):
        return environ["MLFLOW_TRACKING_URI"], None
    root = Path(store).expanduser() if store else local_mlflow_root()
    return None, root.resolve()
