"""Error answers in the exact JSON shapes the Gemini Developer API sends.

The shapes (``google.rpc.Status`` with typed ``details``) were taken from real answers
quoted in google-genai issue threads, so that code written against the sandbox
classifies real errors the same way.
"""

from __future__ import annotations

import math
from typing import Any

HELP_URL = "https://ai.google.dev/gemini-api/docs/rate-limits"
_TYPE = "type.googleapis.com/google.rpc."


class ApiError(Exception):
    """An HTTP error answer; ``body()`` is what goes on the wire."""

    def __init__(self, code: int, status: str, message: str, details: list[dict] | None = None,
                 injected: str | None = None) -> None:
        super().__init__(f"{code} {status}: {message}")
        self.code = code
        self.status = status
        self.message = message
        self.details = details
        self.injected = injected  # which fault this was, for the request log

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message, "status": self.status}
        if self.details:
            err["details"] = self.details
        return {"error": err}


def invalid_key() -> ApiError:
    msg = "API key not valid. Please pass a valid API key."
    return ApiError(400, "INVALID_ARGUMENT", msg, [
        {"@type": _TYPE + "ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com",
         "metadata": {"service": "generativelanguage.googleapis.com"}},
        {"@type": _TYPE + "LocalizedMessage", "locale": "en-US", "message": msg},
    ])


def missing_key() -> ApiError:
    return ApiError(403, "PERMISSION_DENIED",
                    "Method doesn't allow unregistered callers (callers without established identity). "
                    "Please use API Key or other form of API consumer identity to call this API.")


def format_delay(seconds: float) -> str:
    """RetryInfo.retryDelay as the API writes it: whole seconds, rounded up, e.g. ``"3s"``."""
    return f"{max(0, math.ceil(seconds - 1e-9))}s"


def quota_exceeded(*, metric: str, quota_id: str, model: str | None, limit: float,
                   retry_delay: float | None, injected: str | None = None) -> ApiError:
    """429 RESOURCE_EXHAUSTED with QuotaFailure, Help and (when known) RetryInfo."""
    dims = {"location": "global"}
    if model:
        dims["model"] = model
    limit_text = str(int(limit)) if float(limit).is_integer() else str(limit)
    message = (
        "You exceeded your current quota, please check your plan and billing details. "
        f"For more information on this error, head to: {HELP_URL}. "
        "To monitor your current usage, head to: https://ai.dev/usage?tab=rate-limit. \n"
        f"* Quota exceeded for metric: {metric}, limit: {limit_text}"
        + (f", model: {model}" if model else "")
    )
    if retry_delay is not None:
        message += f"\nPlease retry in {retry_delay:.1f}s."
    details: list[dict] = [
        {"@type": _TYPE + "QuotaFailure", "violations": [
            {"quotaMetric": metric, "quotaId": quota_id, "quotaDimensions": dims, "quotaValue": limit_text},
        ]},
        {"@type": _TYPE + "Help", "links": [
            {"description": "Learn more about Gemini API quotas", "url": HELP_URL},
        ]},
    ]
    if retry_delay is not None:
        details.append({"@type": _TYPE + "RetryInfo", "retryDelay": format_delay(retry_delay)})
    return ApiError(429, "RESOURCE_EXHAUSTED", message, details, injected=injected)


def internal(injected: str | None = None) -> ApiError:
    return ApiError(500, "INTERNAL", "An internal error has occurred. Please retry or report in "
                    "https://developers.generativeai.google/guide/troubleshooting", injected=injected)


def overloaded(injected: str | None = None) -> ApiError:
    return ApiError(503, "UNAVAILABLE", "The model is overloaded. Please try again later.", injected=injected)


def deadline(injected: str | None = None) -> ApiError:
    return ApiError(504, "DEADLINE_EXCEEDED", "Deadline Exceeded", injected=injected)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "INVALID_ARGUMENT", message)


def not_found(message: str) -> ApiError:
    return ApiError(404, "NOT_FOUND", message)


def file_not_found(file_id: str) -> ApiError:
    # The real API answers 403 (not 404) for a file that does not exist or is not yours.
    return ApiError(403, "PERMISSION_DENIED",
                    f"You do not have permission to access the File {file_id} or it may not exist.")


def file_not_active(file_id: str) -> ApiError:
    return ApiError(400, "FAILED_PRECONDITION",
                    f"The File {file_id} is not in an ACTIVE state and usage is not allowed.")


def by_status(code: int, injected: str | None = None) -> ApiError:
    """An injected server-side error for a status number (500, 503 or 504)."""
    if code == 503:
        return overloaded(injected)
    if code == 504:
        return deadline(injected)
    return internal(injected)
