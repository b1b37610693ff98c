"""flask-bgjobs: background jobs for Flask in separate processes, with the app's database as the queue."""

from __future__ import annotations

from flask_bgjobs.current import current_job
from flask_bgjobs.errors import (
    BgJobsError,
    ConfigError,
    DatabaseBusy,
    DiscardJob,
    InvalidJob,
    InvalidTransition,
    JobNotAllowed,
    JobNotFound,
    RetryJob,
    SchemaError,
)
from flask_bgjobs.extension import BackgroundJobs, run_background_job
from flask_bgjobs.models import Job

__all__ = [
    "BackgroundJobs",
    "BgJobsError",
    "ConfigError",
    "DatabaseBusy",
    "DiscardJob",
    "InvalidJob",
    "InvalidTransition",
    "Job",
    "JobNotAllowed",
    "JobNotFound",
    "RetryJob",
    "SchemaError",
    "current_job",
    "run_background_job",
]
