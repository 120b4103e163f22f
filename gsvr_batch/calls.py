"""The one call-retry loop: every API call of a worker, of batch mode and of the upload janitor.

``call_api`` runs one SDK call through the shared rate limiter and retries it only when the
failed request provably cost nothing (see ``policy.py``):

* 429 per minute: tell the shared limiter (every worker holds until ``retryDelay``), then retry;
* 429 per day: tell the limiter (no more requests today) and raise ``QuotaExhausted``;
* 5xx / 408 answers and connections that never carried the request: retry with backoff,
  at most ``max_call_retries`` times and ``max_call_wait`` seconds of waiting in all;
* a **generate** request whose answer was lost after it may have reached the model (read
  timeout, connection dropped mid-answer): *not* retried here. It may have been billed, so it
  ends the attempt; the caller counts it (``CallLost``) and the task-level policy decides.
* anything else: raised at once.

Non-idempotent calls (``batches.create``) must not come here with retries: batch mode calls
them with ``retries=0`` and looks the job up by its journaled display name instead.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any, Callable, TypeVar

from .errors import GsvrError, NetworkError, QuotaExhausted, RateLimited, TransientError, UploadAmbiguous
from .gemini import classify
from .policy import RetryPolicy

log = logging.getLogger("gsvr_batch.calls")

T = TypeVar("T")


class CallLost(NetworkError):
    """A generate request whose answer was lost after it may have reached the model.

    Raised instead of retrying: the request may have been billed, so it ends the attempt and is
    journaled as a lost (maybe-paid) call; the task-level retry policy decides what comes next.
    """


def call_api(limiter: Any, kind: str, model: str, fn: Callable[[], T], *, policy: RetryPolicy,
             label: str = "", tokens: int = 0, paid: bool = False, retries: int | None = None,
             on_request: Callable[[], None] | None = None, sleep: Callable[[float], Any] = time.sleep,
             rng: random.Random | None = None) -> T:
    """Run ``fn`` (one SDK call) under the limiter's ``kind`` bucket for ``model``.

    ``paid``: a generate call (billed when answered): lost answers are not retried.
    ``retries``: override ``policy.max_call_retries`` (0 for non-idempotent calls).
    ``on_request``: called just before each request is sent (daily-quota accounting).
    """
    max_retries = policy.max_call_retries if retries is None else retries
    n = 0
    waited = 0.0
    while True:
        limiter.acquire(kind, model, tokens=tokens)  # may raise QuotaExhausted / Cancelled
        if on_request is not None:
            on_request()
        try:
            out = fn()
        except Exception as exc:  # noqa: BLE001 - translated right here
            err = classify(exc)
            if isinstance(err, QuotaExhausted):
                if "youtube" in (err.quota_id or "").lower():
                    err.model = "youtube"  # the YouTube hours of the day: local videos may go on
                else:
                    err.model = err.model or model
                    limiter.record_quota_day_exhausted(model)
                raise err from exc
            if isinstance(err, RateLimited):
                limiter.record_rate_limited(kind, model, err.retry_delay)
            if isinstance(err, UploadAmbiguous):
                raise err from exc  # the upload may exist at the server: the caller looks before uploading again
            if paid and isinstance(err, NetworkError) and err.delivered is not False:
                raise CallLost(f"{label or 'generate'} answer lost after the request may have reached the model "
                               f"({err}); it may have been billed", delivered=err.delivered) from exc
            if not isinstance(err, TransientError) or n >= max_retries:
                raise err from exc
            n += 1
            # A 429's retryDelay counts from its answer (now): the limiter's acquire also holds every
            # worker until then; waiting here too makes the server's delay hold without a limiter.
            delay = policy.call_delay(n, err.retry_delay if isinstance(err, RateLimited) else None, rng)
            if waited + delay > policy.max_call_wait:
                raise err from exc  # bounded: a failing server costs minutes, not hours
            waited += delay
            log.info("%s call failed (%s), retry %d/%d in %.1f s", label or kind, err, n, max_retries, delay)
            sleep(delay)
            continue
        if kind != "generate":
            # generate calls report with the real token count once the answer is read; file
            # calls here, so a file bucket slowed by a 429 recovers too.
            limiter.record_success(kind, model)
        return out


__all__ = ["call_api", "CallLost", "GsvrError"]
