"""xmem's driver side: the command line, sweep specs, Ray Tune, MLflow, and the results.

Imports go from here to ``workers``, never back. ``ray`` is imported only by
``orchestrator.tune_runner`` and ``mlflow`` only by ``orchestrator.tracking.reader`` and
``orchestrator.tracking.writer`` (``tests/test_boundaries.py`` checks it); the README's
Layout section lists every module.
"""
