"""The gates a rollout stage must pass, decided on evidence (``docs/gates.md``).

- ``stage``: the stage gate. The candidate against the stable colour over the same window,
  read from the gateways' metrics in CloudWatch (``GetMetricData``), each criterion decided
  by the anytime-valid tests of ``weightshift.evidence``: pass, fail or inconclusive.
"""
