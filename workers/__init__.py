"""xmem's training engine: data, models, losses, alignment and the trial loop.

Runs anywhere torch runs. Nothing in this package imports ray or mlflow except the
Tune trial adapter (``workers.tune_trial``) and its MLflow logger (``workers.mlflow_log``),
which are only imported by Ray workers.
"""

__version__ = "0.1.0"
