"""The shadow report: the candidate's mirrored answers against what users got.

``source`` finds the pair records (S3 or a folder), ``embedded`` (DuckDB) or ``athena``
runs the aggregate ``queries`` (Trino text, transpiled for DuckDB), ``stats`` gives each
figure its interval, ``text`` and ``judging`` measure the texts of a sample, ``report``
assembles the JSON, ``page`` the HTML, ``publish`` the CloudWatch metrics and
``mirror_metrics`` reads the gateways' dropped copies; ``pipeline`` ties them together for
``weightshift shadow report``. Documentation: ``docs/shadow-report.md``.
"""
