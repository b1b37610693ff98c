"""The fault suite: FAULTS.md cases 1–15, each with the invariants I1–I4 checked at its end.

A package, so that its ``conftest.py`` is imported as ``faults.conftest`` and never replaces
the shared ``tests/conftest.py`` that other test modules import as ``conftest``.

Environment knobs (all optional):

- ``BGJOBS_FAULTS_FULL=1``: case 11 runs its full 60 s instead of 20 s.
- ``BGJOBS_FAULTS_C13_JOBS=N``: case 13 races over N jobs instead of 10,000.
- ``BGJOBS_FAULTS_NO_PG_RESTART=1``: skip the half of case 12 that restarts the local
  PostgreSQL server (it needs root and ``pg_ctlcluster``, and disturbs anything else using
  that server).
"""
