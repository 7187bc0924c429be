"""MLflow tag names, trial statuses and the checkpoint info file name: shared by the driver (``orchestrator.tracking``) and
the worker (``workers.mlflow_log``), defined once here. Plain strings; imports nothing."""

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
TAG_STORAGE = "xmem.storage"          # on the parent run: the sweep's Tune storage
TAG_SPEC_PATH = "xmem.spec_path"      # on the parent run: the spec file last run
TAG_PARENT_RUN = "mlflow.parentRunId"
TAG_NOTE = "mlflow.note.content"      # the description the MLflow UI shows
TAG_MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"

ROLE_PARENT, ROLE_TRIAL = "parent", "trial"
STATUS_RUNNING, STATUS_FINISHED, STATUS_DIVERGED, STATUS_FAILED = (
    "running", "finished", "diverged", "failed")

# Beside each checkpoint's state file: {"trial_id", "epoch", "run_id"}, read by the driver
# (orchestrator.checkpoints) without torch.
CHECKPOINT_INFO_FILE = "xmem_checkpoint.json"
