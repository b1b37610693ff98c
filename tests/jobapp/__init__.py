"""A small app for the integration tests; configured entirely by environment variables.

Runners the tests start (``flask bgjobs worker`` or auto-started ones) rebuild it from
``BGJOBS_APP=jobapp:create_app()``, so whatever the test sets in the environment applies
to them too.
"""

from __future__ import annotations

import os

from flask import Flask

from flask_bgjobs import BackgroundJobs

bgjobs = BackgroundJobs()


def create_app() -> Flask:
    """Build the test app; its instance folder comes from ``JOBAPP_INSTANCE``."""
    app = Flask("jobapp", instance_path=os.environ["JOBAPP_INSTANCE"])
    app.config["TESTING"] = True
    bgjobs.init_app(app)
    return app
