"""The foundation every other cloud package stands on: the database and its migrations,
the tables, one clock, one error root, the audit trail, settings and periodic jobs.
Nothing here imports another cloud package.

Public modules (import them as modules): ``models`` (the tables), ``settings``,
``clock``, ``errors``, ``audit``, ``quantities``, ``fields``, ``db``, ``migrate``,
``jobs``, ``headers``, ``systemd``. The names below are the ones most callers need.
"""

from __future__ import annotations

from cloud.core.db import Database, like_pattern, resolve_url
from cloud.core.jobs import Job, job_runner, run_jobs_once
from cloud.core.migrate import check_current, current_revision, head_revision, upgrade

__all__ = [
    "Database",
    "Job",
    "check_current",
    "current_revision",
    "head_revision",
    "job_runner",
    "like_pattern",
    "resolve_url",
    "run_jobs_once",
    "upgrade",
]
