"""The test app with one view that enqueues, for the load case of the fault suite (FAULTS 14).

Served by gunicorn as ``jobapp.webapp:create_app()``; configured by the environment like
`jobapp.create_app`.
"""

from __future__ import annotations

from flask import Flask, jsonify, request

from flask_bgjobs import run_background_job
from jobapp import create_app as create_job_app


def create_app() -> Flask:
    """`jobapp.create_app` plus ``POST /enqueue`` (201 with the new job's id) and ``GET /ping``."""
    app = create_job_app()

    @app.post("/enqueue")
    def enqueue() -> tuple[object, int]:
        # DatabaseBusy (SQLite stayed locked) becomes 503 + Retry-After in the extension.
        # ?unique_key=K: SPEC §10's unique jobs, under the same load.
        job = run_background_job(
            "jobapp.jobs.Jobs",
            "noop",
            unique_key=request.args.get("unique_key"),
            delay=3600 if request.args.get("unique_key") else None,
        )
        return jsonify(id=job.id, duplicate=job.duplicate), 201

    @app.get("/ping")
    def ping() -> str:
        return "pong"

    return app
