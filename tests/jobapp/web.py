"""The test app as a web server serves it (``flask --app jobapp.web:create_app() run``).

Adds what a browser session needs and the runner does not: a ``SECRET_KEY`` and session
cookie settings. Everything else (database, allowlist, dashboard login) comes from the
environment, exactly as for the runner, which still rebuilds ``jobapp:create_app()``.
"""

from __future__ import annotations

import os

from flask import Flask

import jobapp


def create_app() -> Flask:
    """The `jobapp` app with a secret key from ``JOBAPP_SECRET_KEY`` and Lax session cookies."""
    app = jobapp.create_app()
    app.config["TESTING"] = os.environ.get("JOBAPP_TESTING", "1") == "1"
    app.config["SECRET_KEY"] = os.environ.get("JOBAPP_SECRET_KEY", "jobapp-test-secret")
    app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    return app
