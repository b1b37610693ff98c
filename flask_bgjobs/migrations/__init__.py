"""Schema migrations (Alembic), shipped with the package and run by `Store` and
``flask bgjobs upgrade-db``; the version lives in ``bgjobs_alembic_version``, never in a host
app's own ``alembic_version``.

``0001`` is the schema of 0.1.0, ``0002`` that of 0.2.0. A new database is created from
``models.metadata`` and stamped with the head; one written by an older release is upgraded in
place by these steps, every row kept.
"""
