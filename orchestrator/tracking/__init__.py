"""The driver's side of MLflow, the only driver modules that import mlflow.

  server    the embedded ``mlflow server`` (start, health, stop, ``xmem ui``), and
            ``open_tracking``: the URI a read command uses
  reader    ``SweepReader``: one sweep's experiment and runs, read back as plain data
  writer    ``SweepTracker``: what a running sweep creates (experiment, parent, trial runs)
  records   ``TrialRecord``: a trial's run as plain data (no mlflow import)
  params    trial config keys as MLflow params and back (no mlflow import)

The worker's side is ``workers.mlflow_log``; the names both sides use are in
``workers.contract``.
"""
