"""A sweep's results, read back from MLflow: tables, groupings, claims, figures, the report.

  tables    the trials and history tables (what ``xmem export`` writes)
  grouping  varying keys, panels, seed means, condition groups (claims and figures share them)
  claims/   the paper's claims checked on the tables, like with like (rules.py: how)
  figures   the paper's figures drawn from the tables (imports matplotlib)
  report    ``xmem report``: figures, claims and trials as PNGs and one HTML page
"""
