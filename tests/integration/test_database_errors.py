"""A database error in the logs names the statement, not the job data bound to it (issue 12).

The logs may be read by more people than the job table (a log shipper, a support desk); job
params, results, messages and errors belong in the table only.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from conftest import Env

from flask_bgjobs import run_background_job

J = "jobapp.jobs.Jobs"

pytestmark = pytest.mark.usefixtures("ctx")


def refuse_progress_writes(app: Any) -> None:
    """Make the database refuse every progress report, as a failing trigger would."""
    store = app.extensions["bgjobs"].store
    store.ensure_tables()
    with store.engine.begin() as conn:
        if store.is_postgres:
            conn.exec_driver_sql(
                "CREATE OR REPLACE FUNCTION bgjobs_test_refuse() RETURNS trigger LANGUAGE plpgsql "
                "AS $$ BEGIN IF NEW.progress_message IS NOT NULL THEN "
                "RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER bgjobs_test_refuse BEFORE UPDATE OF progress_message "
                "ON bgjobs_jobs FOR EACH ROW EXECUTE FUNCTION bgjobs_test_refuse()"
            )
        else:
            conn.exec_driver_sql(
                "CREATE TRIGGER bgjobs_test_refuse BEFORE UPDATE OF progress_message "
                "ON bgjobs_jobs WHEN NEW.progress_message IS NOT NULL "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )


def test_a_database_error_line_names_the_statement_but_not_the_job_data_bound_to_it(
    env: Env, app: Any, bgjobs: Any
) -> None:
    refuse_progress_writes(app)
    job = run_background_job(J, "progress", [4])
    env.burst()
    assert bgjobs.get_job(job.id, with_events=False).status == "succeeded"  # best effort
    errors = env.error_log.read_text()
    assert "database error during progress" in errors
    assert not re.search(r"step \d of 4", errors)  # the progress message it tried to write
    assert "[parameters:" not in errors
