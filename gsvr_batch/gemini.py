"""The google-genai client and the ONE place API errors are sorted (DESIGN invariant 8).

Everything that talks to Gemini goes through the official SDK; this module builds the
client the way the SDK itself would (``GEMINI_API_KEY`` / ``GOOGLE_API_KEY``,
``GOOGLE_GEMINI_BASE_URL``) and turns whatever the SDK or the transport raises into our
error hierarchy with :func:`classify`.

The SDK is built WITHOUT ``retry_options``: its tenacity retry ignores the server's
``google.rpc.RetryInfo.retryDelay`` (googleapis/python-genai#1875) and would retry
behind the shared rate limiter's back. The pipeline retries instead, honouring the delay
and telling every worker about it.

Decisions on ambiguous answers (documented here because they decide batch behaviour):

* 429 with any ``QuotaFailure`` violation whose ``quotaId`` contains ``PerDay`` is a
  spent daily quota (:class:`QuotaExhausted`), even though such answers also carry a
  ``RetryInfo`` of a few seconds: retrying would just burn another request.
* 403 ``PERMISSION_DENIED`` is fatal for the batch (the key/project cannot do this),
  EXCEPT the Files API answer "You do not have permission to access the File X or it may
  not exist", which is about one expired / foreign file: a task error
  (:class:`RequestRejected`), so the batch goes on.
* 400 ``FAILED_PRECONDITION`` "User location is not supported" fails every request the
  same way, so it is fatal too.
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import re
import socket
from dataclasses import dataclass
from typing import Any

from . import secrets as _secrets
from .errors import (
    CredentialsError,
    DiskFull,
    FatalAPIError,
    FileGone,
    GsvrError,
    InputError,
    ModelNotFound,
    NetworkError,
    QuotaExhausted,
    RateLimited,
    RequestRejected,
    ServerError,
    TokenOverflow,
    UploadAmbiguous,
)

# The SDK's own env var names, in its order of precedence (see _api_client.get_env_api_key).
SDK_KEY_ENVS = ("GOOGLE_API_KEY", "GEMINI_API_KEY")
BASE_URL_ENV = "GOOGLE_GEMINI_BASE_URL"
# The sandbox accepts any non-empty key, but the SDK refuses to start without one.
SANDBOX_PLACEHOLDER_KEY = "sandbox-key"


@dataclass(frozen=True)
class WorkerConfig:
    """How a worker process builds its client; picklable, never holds the key itself."""

    base_url: str | None  # None → the SDK reads GOOGLE_GEMINI_BASE_URL itself
    api_version: str | None  # None → SDK default
    api_key_env: str | None  # env var holding the key; None → the SDK's own lookup
    request_timeout: float  # seconds, per HTTP request
    limiter_path: str | None  # RateLimiter.attach(path); None → NullLimiter
    poll_interval: float = 1.0
    active_timeout: float = 600
    max_call_retries: int = 5
    backend: str = "gemini"  # "gemini" | "sandbox"
    manager_pid: int | None = None  # a worker checks its manager is alive before it starts working


# --------------------------------------------------------------------------- credentials


@dataclass(frozen=True)
class Credentials:
    """Where the key comes from (the env var name), never the key itself."""

    source: str | None  # "GEMINI_API_KEY", the manifest's api_key_env, or None (sandbox placeholder)
    sandbox: bool


def resolve_credentials(api_key_env: str | None, sandbox: bool) -> Credentials:
    """Check, before any work starts, that a key will be found; raise CredentialsError if not.

    With ``api_key_env`` the named variable is the only source (an explicit choice must
    not silently fall back to another key). Without it, the SDK's own lookup applies.
    In sandbox mode a missing key is fine: a placeholder is sent.

    The key found must be able to travel in an HTTP header: a line break, NUL, other control
    character, inner whitespace or non-ASCII character makes httpx raise an error that quotes
    the header (so the key), which once went to the journal as a "network error". Such a key
    is refused here, naming the variable and the position, never any part of the value.
    Surrounding whitespace is stripped (here and when the key is used), as before.
    The variable is registered as a secret (:mod:`gsvr_batch.secrets`) for this process and
    the workers it spawns.
    """
    if api_key_env:
        _secrets.register_env(api_key_env)
        if (os.environ.get(api_key_env) or "").strip():
            _check_key(api_key_env)
            return Credentials(source=api_key_env, sandbox=sandbox)
    else:
        for name in SDK_KEY_ENVS:
            if (os.environ.get(name) or "").strip():
                _check_key(name)
                return Credentials(source=name, sandbox=sandbox)
    if sandbox:
        return Credentials(source=None, sandbox=True)
    wanted = ["GEMINI_API_KEY", "GOOGLE_API_KEY"]
    if api_key_env:
        msg = (
            f"no API key: the manifest's api_key_env names {api_key_env}, which is not set "
            f"(GEMINI_API_KEY and GOOGLE_API_KEY are not used when api_key_env is given). "
            f"Set {api_key_env}, or run offline against the sandbox with --sandbox."
        )
    else:
        msg = (
            f"no API key: set {' or '.join(wanted)} (or name another variable with "
            f"api_key_env in the manifest's settings), or run offline against the sandbox with --sandbox."
        )
    raise CredentialsError(msg)


def _check_key(name: str) -> None:
    """Raise CredentialsError if the key in ``name`` cannot be sent as a header (value never shown)."""
    problem = _secrets.header_value_problem((os.environ.get(name) or "").strip())
    if problem:
        raise CredentialsError(
            f"the API key in {name} {problem}, so it cannot be sent in an HTTP header. "
            f"A Gemini API key is one line of letters, digits, '-' and '_': check how {name} is set "
            f"(a key file read with \"$(cat file)\" must hold the key alone, without comment lines). "
            f"The value is not shown."
        )


def _lookup_key(api_key_env: str | None) -> str | None:
    # Checked here too, not only in resolve_credentials: `cancel` and workers build clients
    # without it, and a key that cannot be a header must never reach httpx (its error quotes it).
    if api_key_env:
        value = (os.environ.get(api_key_env) or "").strip() or None
        if value:
            _check_key(api_key_env)
        return value
    for name in SDK_KEY_ENVS:
        value = (os.environ.get(name) or "").strip()
        if value:
            _check_key(name)
            return value
    return None


def make_client(cfg: WorkerConfig) -> Any:
    """Build a ``genai.Client`` with our timeout and no SDK retries.

    ``base_url`` is passed only when set, so ``GOOGLE_GEMINI_BASE_URL`` keeps working
    exactly as the SDK documents it.
    """
    from google import genai
    from google.genai import types

    if cfg.backend == "sandbox":
        # The run's own offline sandbox takes any key: never send it a real one, and never depend
        # on an environment variable a long-lived forkserver may have missed.
        key: str | None = SANDBOX_PLACEHOLDER_KEY
    else:
        key = _lookup_key(cfg.api_key_env)
    if key is None:
        # Raises CredentialsError with the full explanation.
        resolve_credentials(cfg.api_key_env, sandbox=False)
    if key:
        _secrets.register(key)  # whatever variable it came from, this process scrubs it
    http: dict[str, Any] = {"timeout": max(1, int(round(cfg.request_timeout * 1000)))}
    if cfg.base_url:
        http["base_url"] = cfg.base_url
    if cfg.api_version:
        http["api_version"] = cfg.api_version
    try:
        return genai.Client(api_key=key, http_options=types.HttpOptions(**http))
    except ValueError as exc:
        raise CredentialsError(redact(str(exc))) from exc


# --------------------------------------------------------------------------- redaction

# The machinery (what is secret, every escaped form, workers) lives in gsvr_batch.secrets;
# `gemini.redact` stays importable for the modules and tests that use it.
redact = _secrets.redact


# --------------------------------------------------------------------------- classification

_TYPE_PREFIX = "type.googleapis.com/"


def _error_details(body: Any) -> list[dict]:
    """The ``details`` list of a Google RPC error body (``{"error": {...}}`` or bare)."""
    if not isinstance(body, dict):
        return []
    inner = body.get("error", body)
    details = inner.get("details") if isinstance(inner, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _detail(details: list[dict], type_name: str) -> list[dict]:
    return [d for d in details if d.get("@type") == _TYPE_PREFIX + type_name]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")
_RETRY_IN_MESSAGE = re.compile(r"retry in (\d+(?:\.\d+)?)s", re.IGNORECASE)


def parse_duration(value: Any) -> float | None:
    """Parse a protobuf JSON Duration ("3s", "1.5s", "30s") into seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1))
    return None


def retry_delay_of(body: Any, message: str | None = None) -> float | None:
    """``RetryInfo.retryDelay`` in seconds; else the "Please retry in 36.4s." of the message."""
    for info in _detail(_error_details(body), "google.rpc.RetryInfo"):
        delay = parse_duration(info.get("retryDelay"))
        if delay is not None:
            return delay
    if message:
        m = _RETRY_IN_MESSAGE.search(message)
        if m:
            return float(m.group(1))
    return None


def quota_ids_of(body: Any) -> list[str]:
    ids = []
    for failure in _detail(_error_details(body), "google.rpc.QuotaFailure"):
        for violation in failure.get("violations") or []:
            if isinstance(violation, dict) and violation.get("quotaId"):
                ids.append(str(violation["quotaId"]))
    return ids


def _reasons_of(body: Any) -> list[str]:
    return [str(d.get("reason")) for d in _detail(_error_details(body), "google.rpc.ErrorInfo") if d.get("reason")]


def next_reset_iso(now: _dt.datetime | None = None) -> str:
    """Next midnight America/Los_Angeles (when per-day quotas reset), as ISO-8601 UTC."""
    from .timeutil import iso_utc, next_pacific_midnight

    return iso_utc(next_pacific_midnight(now))


def _api_message(code: int | None, status: str | None, message: str | None) -> str:
    head = f"Gemini answered {code}" + (f" {status}" if status else "")
    text = (message or "").strip()
    return redact(f"{head}: {text}" if text else head)


def _classify_api_error(exc: Any, now: _dt.datetime | None) -> GsvrError:
    code = getattr(exc, "code", None)
    try:
        code = int(code) if code is not None else None
    except (TypeError, ValueError):
        code = None
    status = getattr(exc, "status", None)
    message = getattr(exc, "message", None)
    body = getattr(exc, "details", None)
    text = _api_message(code, status, message)
    reasons = _reasons_of(body)

    if code == 429 or status == "RESOURCE_EXHAUSTED":
        quota_ids = quota_ids_of(body)
        daily = [q for q in quota_ids if "perday" in q.lower()]
        if daily:
            return QuotaExhausted(
                f"{text} (daily quota {daily[0]} spent; it resets at midnight Pacific)",
                resets_at=next_reset_iso(now),
                quota_id=daily[0],
            )
        return RateLimited(
            text,
            retry_delay=retry_delay_of(body, message),
            quota_id=quota_ids[0] if quota_ids else None,
        )
    if any(r in ("API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED") for r in reasons):
        return FatalAPIError(f"{text} Check the API key (GEMINI_API_KEY / GOOGLE_API_KEY).")
    if code == 401 or status == "UNAUTHENTICATED":
        return FatalAPIError(text)
    if code == 403 or status == "PERMISSION_DENIED":
        low = (message or "").lower()
        if "access the file" in low or ("file" in low and "may not exist" in low):
            # One expired / foreign upload, not the key: fail (or re-upload) this task only.
            return FileGone(text)
        return FatalAPIError(text)
    if code == 400 and status == "FAILED_PRECONDITION" and "location is not supported" in (message or "").lower():
        return FatalAPIError(text)
    if code == 400:
        overflow = _TOKEN_OVERFLOW.search(message or "")
        if overflow:
            # Never final: the pipeline moves to the next context strategy sized from N and L.
            return TokenOverflow(text, tokens=int(overflow.group(1)), limit=int(overflow.group(2)))
        if "upload session is already finalized" in (message or "").lower():
            # The SDK re-sent a chunk after losing the answer to a finalize that had worked:
            # the file probably exists. Uploads are free, so this is worth another look, not a failure.
            return UploadAmbiguous(text)
    if code == 404 and _MODEL_NOT_FOUND.search(message or ""):
        return ModelNotFound(f"{text} Check the model name (gsvr-batch validate lists the models it knows).")
    if code in (408,) or status == "DEADLINE_EXCEEDED":
        return ServerError(text)
    if code is not None and code >= 500:
        return ServerError(text)
    if code is not None and 400 <= code < 500:
        return RequestRejected(text)
    return ServerError(text)


_TOKEN_OVERFLOW = re.compile(r"input token count \(?(\d+)\)? exceeds the maximum number of tokens allowed "
                             r"\(?(\d+)\)?", re.IGNORECASE)
_MODEL_NOT_FOUND = re.compile(r"models/\S+ is not found|model .* (?:is )?not found", re.IGNORECASE)


def _transport_classes() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(timeout classes, other transport classes) from httpx2 and/or httpx, whichever exist.

    The SDK uses httpx2 when it is installed and httpx otherwise (_api_client.py), and a
    user may force either with GOOGLE_GENAI_HTTP_CLIENT, so both are recognised.
    """
    timeouts: list[type] = []
    transports: list[type] = []
    for name in ("httpx2", "httpx"):
        try:
            mod = __import__(name)
        except ImportError:
            continue
        for attr in ("TimeoutException",):
            cls = getattr(mod, attr, None)
            if isinstance(cls, type):
                timeouts.append(cls)
        for attr in ("TransportError", "StreamError"):
            cls = getattr(mod, attr, None)
            if isinstance(cls, type):
                transports.append(cls)
    return tuple(timeouts), tuple(transports)


# Transport errors that prove the request never reached the server (nothing can have been billed).
_NOT_DELIVERED = frozenset({"ConnectError", "ConnectTimeout", "PoolTimeout", "WriteError", "WriteTimeout",
                            "UnsupportedProtocol", "ProxyError"})

_NETWORK_ERRNOS = {
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.EPIPE,
    errno.ETIMEDOUT,
    errno.ENETUNREACH,
    errno.EHOSTUNREACH,
    errno.ENETDOWN,
}


def classify(exc: BaseException, *, now: _dt.datetime | None = None) -> GsvrError:
    """Sort any exception from an API call into our hierarchy (never raises).

    Our own errors pass through unchanged. The original exception is not attached here;
    callers do ``raise classify(exc) from exc``.
    """
    if isinstance(exc, GsvrError):
        return exc
    from google.genai import errors as genai_errors

    if isinstance(exc, genai_errors.APIError):
        return _classify_api_error(exc, now)

    timeouts, transports = _transport_classes()
    kind = type(exc).__name__
    detail = redact(str(exc)) or kind
    if kind == "LocalProtocolError":
        # httpx refused to *build* the request (e.g. an illegal header value): nothing was sent,
        # and sending it again cannot help. The message may quote the header: it is redacted.
        return RequestRejected(f"the request could not be sent ({kind}): {detail}")
    if kind in _NOT_DELIVERED:
        return NetworkError(f"network error ({kind}): {detail}", delivered=False)
    if timeouts and isinstance(exc, timeouts):
        return NetworkError(f"request timed out ({kind}): {detail}", delivered=None)
    if transports and isinstance(exc, transports):
        return NetworkError(f"network error ({kind}): {detail}", delivered=None)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return NetworkError(f"request timed out: {detail}", delivered=None)
    if isinstance(exc, (ConnectionRefusedError, socket.gaierror)):
        return NetworkError(f"network error ({kind}): {detail}", delivered=False)
    if isinstance(exc, ConnectionError):
        return NetworkError(f"network error ({kind}): {detail}", delivered=None)
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return DiskFull(f"no space left on device: {exc.strerror or detail}")
        if exc.errno in _NETWORK_ERRNOS:
            return NetworkError(f"network error: {exc.strerror or detail}")
        # Reading the local video failed while the SDK streamed it (permissions, vanished file).
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return InputError(f"cannot read the input{where}: {exc.strerror or detail}")
    # Anything else (SDK ValueError, unexpected response shape): about this request only.
    return RequestRejected(f"{kind}: {detail}")
