"""Every exception gsvr-batch raises on purpose, in one hierarchy.

Lower-level errors (google-genai's ``APIError``, ``OSError``, ``yaml.YAMLError``,
httpx transport errors) are translated where they enter our code, with
``raise NewError(...) from exc`` so the original stays in ``__cause__``::

    GsvrError                      base; ``exit_code`` says how the CLI ends
    ├── UsageError                 bad command line / settings            (exit 2)
    │   ├── ManifestError          manifest problems, ``problems`` list    (exit 2)
    │   ├── TemplateError          unknown template / parameter            (exit 2)
    │   └── CredentialsError       no API key and no sandbox               (exit 2)
    ├── JournalError               journal cannot be used                  (exit 2)
    │   ├── JournalCorrupt         bad record mid-file: line + repair cmd
    │   ├── JournalMismatch        journal belongs to another manifest
    │   └── IllegalTransition      a record that the fold refuses
    ├── LockHeld                   another run holds the journal           (exit 75)
    ├── BatchStop                  the whole batch must stop now
    │   ├── FatalAPIError          invalid key, permission denied          (exit 3)
    │   ├── QuotaExhausted         per-day quota spent; ``resets_at``      (exit 75)
    │   └── DiskFull               no space left for outputs               (exit 75)
    ├── TransientError             worth retrying with backoff
    │   ├── RateLimited            429 per-minute; ``retry_delay``, ``quota_id``
    │   ├── ServerError            5xx, 408
    │   └── NetworkError           connection reset/refused, timeouts
    └── TaskError                  permanent for this task; the batch goes on
        ├── InputError             missing/empty/unsupported/too large input
        ├── FileProcessingFailed   Files API says FAILED or never ACTIVE
        ├── ContentBlocked         no text: safety block, bad finishReason
        ├── RequestRejected        400/404 that is about this request
        └── OutputError            the output could not be written (OS error)

Every error can say ``error_class`` (its class name, journaled) and ``retryable``.
"""

from __future__ import annotations

from .exitcodes import ExitCode


class GsvrError(Exception):
    """Base of every deliberate gsvr-batch error."""

    exit_code: int = ExitCode.USAGE
    retryable: bool = False

    @property
    def error_class(self) -> str:
        return type(self).__name__

    def to_record(self) -> dict:
        """Fields for a journal record (never contains secrets)."""
        return {"error_class": self.error_class, "message": str(self), "retryable": self.retryable}


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
    pass


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
    """Stops the whole batch; running tasks are put back, not failed."""


class FatalAPIError(BatchStop):
    exit_code = ExitCode.FATAL_API


class QuotaExhausted(BatchStop):
    exit_code = ExitCode.TEMPFAIL

    def __init__(self, message: str, resets_at: str | None = None, quota_id: str | None = None) -> None:
        super().__init__(message)
        self.resets_at = resets_at  # ISO-8601 UTC
        self.quota_id = quota_id


class DiskFull(BatchStop):
    exit_code = ExitCode.TEMPFAIL


class TransientError(GsvrError):
    exit_code = ExitCode.TASKS_FAILED
    retryable = True


class RateLimited(TransientError):
    def __init__(self, message: str, retry_delay: float | None = None, quota_id: str | None = None) -> None:
        super().__init__(message)
        self.retry_delay = retry_delay
        self.quota_id = quota_id


class ServerError(TransientError):
    pass


class NetworkError(TransientError):
    pass


class TaskError(GsvrError):
    exit_code = ExitCode.TASKS_FAILED


class InputError(TaskError):
    pass


class FileProcessingFailed(TaskError):
    pass


class ContentBlocked(TaskError):
    pass


class RequestRejected(TaskError):
    pass


class OutputError(TaskError):
    pass
