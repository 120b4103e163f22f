"""Every exception gsvr-batch raises on purpose, in one hierarchy, each carrying its policy.

Lower-level errors (google-genai's ``APIError``, ``OSError``, ``yaml.YAMLError``, httpx
transport errors) are translated where they enter our code, with ``raise NewError(...) from
exc`` so the original stays in ``__cause__``::

    GsvrError                        base: ``exit_code`` and ``disposition`` live on the class
    ├── UsageError                   bad command line / settings              exit 2
    │   ├── ManifestError            manifest problems, ``problems`` list      exit 2
    │   ├── TemplateError            unknown template / parameter              exit 2
    │   ├── CredentialsError         no (usable) API key and no sandbox        exit 2
    │   └── ModelNotFound            the API does not know the model (404)     exit 2
    ├── JournalError                 journal cannot be used                    exit 2
    │   ├── JournalCorrupt           bad record mid-file: line + repair cmd
    │   ├── JournalMismatch          journal belongs to another manifest
    │   └── IllegalTransition        a record that the fold refuses
    ├── LockHeld                     another run holds the journal             exit 75
    ├── BatchStop                    the whole batch stops now; nobody is charged
    │   ├── FatalAPIError            invalid key, permission denied            exit 3   STOP_BATCH
    │   ├── QuotaExhausted           per-day quota spent; ``resets_at``        exit 75  PAUSE_UNTIL
    │   ├── DiskFull                 no space left for outputs                 exit 75  PAUSE
    │   ├── JournalWriteFailed       the journal cannot be appended to         exit 75  PAUSE
    │   └── Cancelled                the run is stopping (cancel / signal)              REQUEUE
    ├── TransientError               worth retrying with backoff                        RETRY
    │   ├── RateLimited              429 per-minute; ``retry_delay``, ``quota_id``
    │   ├── ServerError              5xx, 408
    │   ├── NetworkError             connection reset/refused, timeouts
    │   ├── UploadAmbiguous          an upload whose last answer was lost
    │   └── WorkerDied               the worker process running the task died   (crash budget)
    └── TaskError                    permanent for this task; the batch goes on         FAIL_TASK
        ├── InputError               missing/empty/unsupported/too large input
        ├── FileProcessingFailed     Files API says FAILED or never ACTIVE
        ├── ContentBlocked           no text: safety block, bad finishReason
        ├── RequestRejected          400/404 that is about this request
        │   ├── TokenOverflow        400 "input token count (N) exceeds … (L)"
        │   └── FileGone             403 on an upload that is gone (a reused one: re-uploaded, once)
        └── OutputError              the output could not be written (OS error)

An error crosses the worker → manager process boundary as an :class:`ErrorRecord` (a typed,
JSON-ready record), never as a bare string: ``err.to_record()`` in the worker,
``ErrorRecord.from_dict`` in the manager. What the manager *does* with it is decided in one
place, :func:`gsvr_batch.policy.RetryPolicy.decide`, from the record's ``disposition``.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, fields
from typing import Any

from .exitcodes import ExitCode


class Disposition(str, enum.Enum):
    """What an error asks of the manager (the policy may still refuse, e.g. attempts spent)."""

    RETRY = "retry"  # try the task again after a delay; charged to the task
    FAIL_TASK = "fail_task"  # permanent for this task; the batch goes on
    STOP_BATCH = "stop_batch"  # fatal for the batch (exit 3); the task is put back uncharged
    PAUSE_UNTIL = "pause_until"  # stop now, continue after ``resets_at`` (daily quota; exit 75)
    PAUSE = "pause"  # stop now, continue when the cause is fixed (disk full; exit 75)
    REQUEUE = "requeue"  # the run is stopping (cancel, signal): put back, nobody is charged

    def __str__(self) -> str:
        return self.value


class GsvrError(Exception):
    """Base of every deliberate gsvr-batch error."""

    exit_code: int = ExitCode.USAGE
    disposition: Disposition = Disposition.FAIL_TASK
    # Which budget a RETRY spends: "attempt" (max_attempts) or "crash" (crash_budget).
    budget: str = "attempt"

    @property
    def error_class(self) -> str:
        return type(self).__name__

    @property
    def retryable(self) -> bool:
        return self.disposition is Disposition.RETRY

    def to_record(self, **extra: Any) -> ErrorRecord:
        """The typed record that crosses the process boundary (never contains secrets:
        messages are redacted where the error is made)."""
        fields_ = {"error_class": self.error_class, "message": str(self), "disposition": self.disposition,
                   "exit_code": int(self.exit_code), "budget": self.budget}
        for name in ("retry_delay", "resets_at", "quota_id", "model"):
            value = getattr(self, name, None)
            if value is not None:
                fields_[name] = value
        fields_.update(extra)
        return ErrorRecord(**fields_)


@dataclass(frozen=True)
class ErrorRecord:
    """An error as data: what the worker reports and the journal keeps."""

    error_class: str
    message: str
    disposition: Disposition
    exit_code: int = int(ExitCode.TASKS_FAILED)
    budget: str = "attempt"
    retry_delay: float | None = None
    resets_at: str | None = None
    quota_id: str | None = None
    model: str | None = None

    @property
    def retryable(self) -> bool:
        return self.disposition is Disposition.RETRY

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["disposition"] = self.disposition.value
        return {k: v for k, v in d.items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ErrorRecord:
        """Rebuild a record; tolerant of journals written before dispositions existed."""
        known = {k: v for k, v in d.items() if k in _RECORD_FIELDS}
        raw = known.get("disposition") or _LEGACY_KINDS.get(str(d.get("kind")), Disposition.FAIL_TASK)
        try:
            known["disposition"] = Disposition(raw)
        except ValueError:
            known["disposition"] = Disposition.FAIL_TASK
        known.setdefault("error_class", "Error")
        known.setdefault("message", "")
        for name in ("retry_delay",):
            if known.get(name) is not None:
                try:
                    known[name] = float(known[name])
                except (TypeError, ValueError):
                    known[name] = None
        return cls(**known)


_RECORD_FIELDS = frozenset(f.name for f in fields(ErrorRecord))
# Journals of 0.1 said "kind" instead of "disposition".
_LEGACY_KINDS = {"transient": "retry", "task": "fail_task", "fatal": "stop_batch", "quota_day": "pause_until",
                 "disk_full": "pause", "cancelled": "requeue"}


class UsageError(GsvrError):
    exit_code = ExitCode.USAGE


class ManifestError(UsageError):
    """One or more problems in a manifest; ``problems`` holds ``manifest.Problem`` items."""

    def __init__(self, message: str, problems: list | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


class TemplateError(UsageError):
    pass


class CredentialsError(UsageError):
    disposition = Disposition.STOP_BATCH


class ModelNotFound(UsageError):
    disposition = Disposition.STOP_BATCH


class JournalError(GsvrError):
    exit_code = ExitCode.USAGE


class JournalCorrupt(JournalError):
    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


class JournalMismatch(JournalError):
    pass


class IllegalTransition(JournalError):
    pass


class LockHeld(GsvrError):
    exit_code = ExitCode.TEMPFAIL


class BatchStop(GsvrError):
    """Stops the whole batch; running tasks are put back, not failed, and nobody is charged."""

    disposition = Disposition.REQUEUE
    exit_code = ExitCode.TEMPFAIL


class FatalAPIError(BatchStop):
    exit_code = ExitCode.FATAL_API
    disposition = Disposition.STOP_BATCH


class QuotaExhausted(BatchStop):
    exit_code = ExitCode.TEMPFAIL
    disposition = Disposition.PAUSE_UNTIL

    def __init__(self, message: str, resets_at: str | None = None, quota_id: str | None = None,
                 model: str | None = None) -> None:
        super().__init__(message)
        self.resets_at = resets_at  # ISO-8601 UTC
        self.quota_id = quota_id
        self.model = model


class DiskFull(BatchStop):
    exit_code = ExitCode.TEMPFAIL
    disposition = Disposition.PAUSE


class JournalWriteFailed(BatchStop):
    """An append or fsync of the journal failed (disk full, I/O error): the run stops, exit 75."""

    exit_code = ExitCode.TEMPFAIL
    disposition = Disposition.PAUSE


class Cancelled(BatchStop):
    """The run is stopping (``gsvr-batch cancel``, a signal): the task goes back, uncharged."""

    disposition = Disposition.REQUEUE


class TransientError(GsvrError):
    exit_code = ExitCode.TASKS_FAILED
    disposition = Disposition.RETRY


class RateLimited(TransientError):
    def __init__(self, message: str, retry_delay: float | None = None, quota_id: str | None = None) -> None:
        super().__init__(message)
        self.retry_delay = retry_delay
        self.quota_id = quota_id


class ServerError(TransientError):
    pass


class NetworkError(TransientError):
    """A transport failure. ``delivered``: False when the request provably never reached the
    server (connection refused, connect timeout); True/None when it may have (a read timeout, a
    connection dropped mid-answer) — such a generate call may have been billed."""

    def __init__(self, message: str, *, delivered: bool | None = None) -> None:
        super().__init__(message)
        self.delivered = delivered


class UploadAmbiguous(TransientError):
    """The answer to an upload was lost after the upload may have taken effect (uploads are free,
    so the pipeline starts a new session, or adopts the file it finds by name and sha256)."""


class WorkerDied(TransientError):
    """The worker process running this task died (kill, OOM, segfault): spends the crash budget."""

    budget = "crash"


class TaskError(GsvrError):
    exit_code = ExitCode.TASKS_FAILED
    disposition = Disposition.FAIL_TASK


class InputError(TaskError):
    pass


class FileProcessingFailed(TaskError):
    pass


class ContentBlocked(TaskError):
    pass


class RequestRejected(TaskError):
    pass


class FileGone(RequestRejected):
    """403 "You do not have permission to access the File … or it may not exist": the upload a
    request names is gone (expired, or deleted after this task checked it). A task that reused
    another task's upload uploads the video itself and sends the request again, once."""


class TokenOverflow(RequestRejected):
    """400 "The input token count (N) exceeds the maximum number of tokens allowed (L)."

    Never final for a task: the pipeline moves to the next context strategy sized from N and L.
    """

    def __init__(self, message: str, tokens: int, limit: int) -> None:
        super().__init__(message)
        self.tokens = tokens
        self.limit = limit


class OutputError(TaskError):
    pass
