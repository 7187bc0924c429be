"""xmem's training engine: data, models, losses, alignment and the trial loop.

Runs anywhere torch runs. Nothing in this package imports ray or mlflow except the Tune
trial adapter (``workers.tune_trial``) and its MLflow logger (``workers.mlflow_log``), which
only Ray workers import; nothing here imports ``orchestrator``.

  contract    names both sides share (metrics, statuses, tags, artifacts, the Tune payload)
  datasets    dataset facts (classes, split sizes, image shapes)
  config      TrialConfig and its validation;  yaml_io: the YAML users write
  data/       decoded, cached, subset, standardized, device-resident datasets
  models, losses, sgd, alignment (alignment_reference: the slow, obviously-correct check)
  trial       the training loop;  checkpoint: its saved state;  local: ``xmem trial``
"""

__version__ = "0.1.0"
