"""The names both sides share: metrics, trial statuses, MLflow tags, artifacts, the Tune payload.

The engine writes these names, the worker's adapters send them (``workers.tune_trial``,
``workers.mlflow_log``) and the driver reads them back (``orchestrator.tracking``,
``orchestrator.results``). Each is written here once and imported everywhere else.
Plain Python, imports nothing heavy: the driver's dry run and the reports load it freely.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

# --- metric names (MLflow metric keys, history columns, ``xmem trial --out`` fields) -------
EPOCH = "epoch"

TRAIN_LOSS = "train/loss"
TRAIN_ACC = "train/acc"
TEST_LOSS = "test/loss"
TEST_ACC = "test/acc"
TEST_BEST_ACC = "test/best_acc"

ALIGN_REP = "align/rep"            # hidden representation (post-activation), train probe
ALIGN_REP_TEST = "align/rep_test"  # the same on the test probe
ALIGN_GRAD_LOGITS = "align/grad_logits"
ALIGN_GRAD = "align/grad"          # all parameters together
ALIGN_GRAD_PREFIX = "align/grad_"  # + module name of a weight-bearing layer

DYN_GRAD_NORM_RATIO_HIDDEN = "dyn/grad_norm_ratio_hidden"  # ||grad W1|| / ||W1||
DYN_WEIGHT_CHANGE_HIDDEN = "dyn/weight_change_hidden"      # ||W1 - W1(0)|| / ||W1(0)||

EVAL_METRICS = (TRAIN_LOSS, TRAIN_ACC, TEST_LOSS, TEST_ACC, TEST_BEST_ACC)
ALIGN_METRICS = (ALIGN_REP, ALIGN_REP_TEST, ALIGN_GRAD_LOGITS, ALIGN_GRAD)
DYN_METRICS = (DYN_GRAD_NORM_RATIO_HIDDEN, DYN_WEIGHT_CHANGE_HIDDEN)


def align_grad_layer(layer_name: str) -> str:
    """Metric name of the gradient alignment of one layer, e.g. ``align/grad_hidden``."""
    return ALIGN_GRAD_PREFIX + layer_name


# --- trial statuses (the ``xmem.status`` tag, the progress display, the engine) ---------
STATUS_PENDING = "pending"      # not started in this session (display only)
STATUS_RUNNING = "running"
STATUS_FINISHED = "finished"
STATUS_DIVERGED = "diverged"    # a non-finite loss or weight: a result, never retried
STATUS_FAILED = "failed"
STATUS_INTERRUPTED = "interrupted"  # stopped by Ctrl-C / SIGTERM on the driver: resumable, not failed
TRIAL_STATUSES = (STATUS_PENDING, STATUS_RUNNING, STATUS_FINISHED, STATUS_FAILED, STATUS_DIVERGED,
                  STATUS_INTERRUPTED)
# The statuses whose numbers are results (a diverged trial's are, until the blow-up).
RESULT_STATUSES = (STATUS_FINISHED, STATUS_DIVERGED)

# MLflow's own run statuses, as its client spells them (a run's lifecycle, beside xmem's).
RUN_SCHEDULED, RUN_RUNNING, RUN_FINISHED, RUN_FAILED = "SCHEDULED", "RUNNING", "FINISHED", "FAILED"
RUN_KILLED = "KILLED"

# --- MLflow tags -------------------------------------------------------------------------
TAG_SWEEP = "xmem.sweep"
TAG_ROLE = "xmem.role"                # parent | trial
TAG_TRIAL_ID = "xmem.trial_id"
TAG_VERSION = "xmem.version"
TAG_GIT_COMMIT = "xmem.git_commit"
TAG_ATTEMPTS = "xmem.attempts"        # how many times a worker started the trial
TAG_TRIAL_COUNT = "xmem.trial_count"  # on the parent run
TAG_STATUS = "xmem.status"            # running | finished | diverged | failed
TAG_DEVICE = "xmem.device"            # cpu or the GPU's name
TAG_RAY_NODE = "xmem.ray_node_id"
TAG_HOST = "xmem.host"
TAG_PID = "xmem.pid"                  # the worker process of the current attempt
TAG_START_EPOCH = "xmem.start_epoch"  # the epoch the current attempt started from
TAG_ATTEMPT_SECONDS = "xmem.attempt_seconds"        # wall time of the last attempt in the worker
TAG_CHECKPOINT_SECONDS = "xmem.checkpoint_seconds"  # of which saving checkpoints
TAG_CHECKPOINTS = "xmem.checkpoints"                # checkpoints the last attempt saved
TAG_ERROR = "xmem.error"              # a failed trial: the first line of its error
TAG_ERROR_KIND = "xmem.error_kind"    # a failed trial: user (fix the input) | crash (rerun)
TAG_PACK = "xmem.pack"                # the pack (one Tune trial) the current attempt trained in
TAG_PACK_SIZE = "xmem.pack_size"      # how many trials that pack trained together
TAG_TRIAL_INDEX = "xmem.trial_index"  # the trial's place in the spec (0000, 0001, ...): the UI's sort
TAG_SYSTEM_METRICS_RUN = "xmem.system_metrics_run"  # the run holding the pack's system/* metrics
TAG_STORAGE = "xmem.storage"          # on the parent run: the sweep's Tune storage
TAG_SPEC_PATH = "xmem.spec_path"      # on the parent run: the spec file last run
TAG_WORKDIR = "xmem.workdir"          # on the parent run: the folder relative data paths resolve against
# One attempt lineage per run: an attempt that cannot continue a run's metric series (it starts
# over, or from a checkpoint older than what the run holds) gets a new run, and the old run is
# tagged with the new one's id; every reader skips runs carrying this tag.
TAG_SUPERSEDED_BY = "xmem.superseded_by"
TAG_SUPERSEDES = "xmem.supersedes"  # on the new run: the run it replaces (set first, so a crash
                                    # between the two writes still leaves one current run)
TAG_ATTEMPT_PREFIX = "xmem.attempt."  # + attempt number: JSON of that attempt's version, commit, start epoch, host
# On the parent run: the driver holding the sweep (one driver per sweep).
TAG_LEASE_HOLDER = "xmem.lease.holder"    # JSON {"host", "pid", "token", "started"}
TAG_LEASE_EXPIRES = "xmem.lease.expires"  # Unix seconds; the holder renews it while it runs
TAG_PARENT_RUN = "mlflow.parentRunId"
TAG_NOTE = "mlflow.note.content"      # the description the MLflow UI shows
TAG_MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"

ROLE_PARENT, ROLE_TRIAL = "parent", "trial"
# Why a trial failed: a user error fails the same way on every rerun (fix the input first); a
# crash (a killed worker, a lost server, a bug) may pass on a rerun, which resumes the trial.
ERROR_USER, ERROR_CRASH = "user", "crash"
ERROR_SUMMARY_LENGTH = 300  # characters of the error's first line kept in the tag


def tag_int(tags: Mapping[str, str], name: str) -> int | None:
    """A tag holding an integer (``xmem.attempts``), or None when missing or unreadable."""
    try:
        return int(tags[name])
    except (KeyError, ValueError):
        return None


# --- artifacts ---------------------------------------------------------------------------
# Of a trial's run (workers.mlflow_log; error.txt also from the driver for a silent death).
CONFIG_ARTIFACT = "config.yaml"          # the resolved trial config
HISTORY_ARTIFACT = "history.parquet"     # one row per evaluated epoch
ALIGNMENT_ARTIFACT = "alignment.parquet" # per-class alignment: epoch, metric, class, omega
WEIGHTS_ARTIFACT = "weights.pt"          # the final model's state_dict
ERROR_ARTIFACT = "error.txt"             # why an attempt failed
# Of the sweep's parent run.
SPEC_ARTIFACT = "spec.yaml"              # the spec as the sweep last ran it
REPORT_ARTIFACT_DIR = "report"           # what xmem report wrote

# Files of one checkpoint folder (workers.checkpoint writes both; the driver reads the info
# file without torch to find every trial's latest checkpoint).
CHECKPOINT_STATE_FILE = "trial_state.pt"
CHECKPOINT_INFO_FILE = "xmem_checkpoint.json"


# --- the Tune payload and what a trial reports to Tune -----------------------------------
PAYLOAD_KEY = "xmem"  # Tune's param space: {"xmem": grid_search([PackPayload dicts])}
REPORT_EPOCH = EPOCH              # in each tune.report: the epoch just evaluated
REPORT_STATUS = "xmem_status"     # ... and the trial's status (running, finished, diverged, failed)
REPORT_MEMBERS = "xmem_members"   # ... and per member trial id: [epoch, status]


@dataclass(frozen=True, eq=False)  # holds a dict: compared and hashed by identity
class TrialPayload:
    """What the driver sends a worker for one trial (plain, picklable values).

    It travels through Tune's param space as a dict (``to_dict``), since Tune copies and logs
    configs as JSON; ``from_dict`` reads it back on either side.
    """

    trial: dict[str, Any]
    """The resolved trial config (``TrialConfig.to_dict()``), paths made absolute."""
    trial_id: str
    name: str
    """The trial's readable name (the MLflow run name, the Tune trial name)."""
    run_id: str
    """The MLflow run the driver created for the trial; the worker continues it."""
    tracking_uri: str
    resume_from: str | None = None
    """A checkpoint folder (local path or URI) an earlier session of the sweep left."""
    resume_fallbacks: list[str] = field(default_factory=list)
    """Older complete checkpoints of the trial, newest first: tried in order when
    ``resume_from`` cannot be loaded (a torn or corrupt copy)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrialPayload":
        return cls(**values)

    @classmethod
    def of_tune_config(cls, tune_config: Mapping[str, Any]) -> "TrialPayload":
        """The payload inside a Tune trial's config (``{"xmem": {...}}``)."""
        return cls.from_dict(tune_config[PAYLOAD_KEY])


@dataclass(frozen=True, eq=False)
class PackPayload:
    """What the driver sends a worker for one pack: trials trained together (``workers.pack``).

    One pack is one Tune trial; every member keeps its own ``TrialPayload`` (its MLflow run,
    its checkpoint to resume from). A pack of one is a trial run alone.
    """

    pack_id: str
    name: str
    """The pack's readable name (the Tune trial name): its first member's, plus the count."""
    members: list[dict[str, Any]]
    """``TrialPayload.to_dict()`` of each member, in spec order."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def trials(self) -> list[TrialPayload]:
        return [TrialPayload.from_dict(member) for member in self.members]

    def trial_ids(self) -> list[str]:
        return [member["trial_id"] for member in self.members]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PackPayload":
        return cls(**values)

    @classmethod
    def of_tune_config(cls, tune_config: Mapping[str, Any]) -> "PackPayload":
        """The payload inside a Tune trial's config (``{"xmem": {...}}``)."""
        return cls.from_dict(tune_config[PAYLOAD_KEY])
