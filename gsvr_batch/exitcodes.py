"""Process exit codes; the README's table and ``gsvr-batch --help`` are generated from this."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0  # every task done (completed or skipped)
    TASKS_FAILED = 1  # the batch ran to the end but some tasks failed for good
    USAGE = 2  # usage, manifest, template or journal error; nothing was started
    FATAL_API = 3  # batch aborted by a fatal API error (invalid key, permission denied)
    CANCELLED = 4  # batch cancelled with `gsvr-batch cancel`
    INTERNAL = 70  # a bug in gsvr-batch (EX_SOFTWARE; the traceback is saved to a file), or workers that cannot start
    TEMPFAIL = 75  # try again later: lock held, quota exhausted, cost limit, paused, disk full, batch jobs pending
    INTERRUPTED = 130  # interrupted by Ctrl-C / SIGTERM; rerun to continue


DESCRIPTIONS = {
    ExitCode.OK: "all tasks done (completed or skipped)",
    ExitCode.TASKS_FAILED: "finished, but some tasks failed for good (see `gsvr-batch replay`)",
    ExitCode.USAGE: "usage, manifest, template or journal error; nothing was started",
    ExitCode.FATAL_API: "aborted by a fatal API error (invalid key, permission denied); nothing marked failed",
    ExitCode.CANCELLED: "cancelled with `gsvr-batch cancel`",
    ExitCode.INTERNAL: "internal error (a bug in gsvr-batch), or worker processes that cannot start here: the "
    "journal stays consistent; the message says which, and names a file with the details of a bug",
    ExitCode.TEMPFAIL: "try again later: another run holds the journal, daily quota or cost limit reached, "
    "disk full, or batch-mode jobs still pending",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C / SIGTERM); rerun the same command to continue",
}
