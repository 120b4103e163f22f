"""Per-model request/token quotas over a sliding 60 s window and a per-day counter.

Callers hold the server lock; nothing here locks. Time always comes in as ``now`` so
tests and benchmarks can drive the clock (and the day boundary) themselves.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict, deque
from zoneinfo import ZoneInfo

from . import rpc

WINDOW = 60.0
PACIFIC = ZoneInfo("America/Los_Angeles")

GEN_METRIC = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
TOKEN_METRIC = "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count"
FILE_METRIC = "generativelanguage.googleapis.com/file_requests"
RPM_ID = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
RPD_ID = "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
TPM_ID = "GenerateContentInputTokensPerModelPerMinute-FreeTier"
FILE_RPM_ID = "FileRequestsPerMinutePerProject"
# Google documents the free tier's "8 hours of YouTube video per day" but not the quota's id or
# metric in a 429; these two are our assumption, shaped like the real ids (``PerDay`` in the id,
# which is what a client keys on to treat it as a daily quota).
YOUTUBE_METRIC = "generativelanguage.googleapis.com/generate_content_free_tier_youtube_video_seconds"
YOUTUBE_ID = "GenerateContentYouTubeVideoSecondsPerDayPerProject-FreeTier"


def day_key(now: float, day_reset: float | None, epoch: float) -> str:
    """Which quota day ``now`` falls in: the Pacific date, or a numbered synthetic day."""
    if day_reset:
        return f"day-{int((now - epoch) // day_reset)}"
    return dt.datetime.fromtimestamp(now, PACIFIC).date().isoformat()


def seconds_to_day_end(now: float, day_reset: float | None, epoch: float) -> float:
    if day_reset:
        return day_reset - ((now - epoch) % day_reset)
    local = dt.datetime.fromtimestamp(now, PACIFIC)
    midnight = (local + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.timestamp() - now


def _slot_free_in(times: deque[float], limit: float, now: float) -> float:
    """Seconds until the window holds fewer than ``limit`` calls (the oldest ones leave)."""
    keep = int(limit)
    if keep <= 0 or not times:
        return WINDOW
    return times[max(0, len(times) - keep)] + WINDOW - now


class Quotas:
    def __init__(self, epoch: float) -> None:
        self.epoch = epoch
        self.requests: dict[str, deque[float]] = defaultdict(deque)  # model -> admitted times
        self.tokens: dict[str, deque[tuple[float, int]]] = defaultdict(deque)
        self.file_calls: deque[float] = deque()
        self.day = ""
        self.day_counts: dict[str, int] = defaultdict(int)
        self.youtube_seconds = 0.0  # YouTube video seconds admitted today (per project)

    def _roll_day(self, now: float, day_reset: float | None) -> None:
        key = day_key(now, day_reset, self.epoch)
        if key != self.day:
            self.day = key
            self.day_counts.clear()
            self.youtube_seconds = 0.0

    def reset_day(self) -> None:
        """Start a fresh quota day now (as if midnight Pacific had just passed)."""
        self.day_counts.clear()
        self.youtube_seconds = 0.0

    def check_youtube(self, seconds: float, now: float, *, limit: float | None, day_reset: float | None,
                      retry_delay: float | None) -> None:
        """Raise a per-day 429 if ``seconds`` more of YouTube video would pass today's limit.

        Nothing is counted here: call :meth:`add_youtube` once the request is admitted.
        """
        self._roll_day(now, day_reset)
        if limit is None or seconds <= 0 or self.youtube_seconds + seconds <= limit:
            return
        delay = retry_delay if retry_delay is not None else seconds_to_day_end(now, day_reset, self.epoch)
        raise rpc.quota_exceeded(metric=YOUTUBE_METRIC, quota_id=YOUTUBE_ID, model=None, limit=limit,
                                 retry_delay=delay)

    def add_youtube(self, seconds: float) -> None:
        self.youtube_seconds += seconds

    @staticmethod
    def _trim(q: deque, now: float) -> None:
        while q and (q[0] if isinstance(q[0], float) else q[0][0]) <= now - WINDOW:
            q.popleft()

    def check_generate(self, model: str, prompt_tokens: int, now: float, *, rpm: float | None,
                       rpd: int | None, tpm: float | None, day_reset: float | None,
                       retry_delay: float | None) -> None:
        """Raise a 429 ApiError if this call is over a quota; otherwise count it."""
        self._roll_day(now, day_reset)
        if rpd is not None and self.day_counts[model] >= rpd:
            delay = retry_delay if retry_delay is not None else seconds_to_day_end(now, day_reset, self.epoch)
            raise rpc.quota_exceeded(metric=GEN_METRIC, quota_id=RPD_ID, model=model, limit=rpd,
                                     retry_delay=delay)
        reqs = self.requests[model]
        self._trim(reqs, now)
        if rpm is not None and len(reqs) >= rpm:
            # The slot frees when the oldest admitted call leaves the window.
            delay = retry_delay if retry_delay is not None else _slot_free_in(reqs, rpm, now)
            raise rpc.quota_exceeded(metric=GEN_METRIC, quota_id=RPM_ID, model=model, limit=rpm,
                                     retry_delay=delay)
        toks = self.tokens[model]
        self._trim(toks, now)
        if tpm is not None:
            used = sum(t for _, t in toks)
            if used + prompt_tokens > tpm:
                # Wait until enough old tokens leave the window (or a full window if never enough).
                delay = WINDOW
                freed = 0
                for ts, t in toks:
                    freed += t
                    if used - freed + prompt_tokens <= tpm:
                        delay = ts + WINDOW - now
                        break
                if retry_delay is not None:
                    delay = retry_delay
                raise rpc.quota_exceeded(metric=TOKEN_METRIC, quota_id=TPM_ID, model=model, limit=tpm,
                                         retry_delay=delay)
        reqs.append(now)
        toks.append((now, prompt_tokens))
        self.day_counts[model] += 1

    def check_file(self, now: float, *, file_rpm: float | None, retry_delay: float | None) -> None:
        self._trim(self.file_calls, now)
        if file_rpm is not None and len(self.file_calls) >= file_rpm:
            delay = retry_delay if retry_delay is not None else _slot_free_in(self.file_calls, file_rpm, now)
            raise rpc.quota_exceeded(metric=FILE_METRIC, quota_id=FILE_RPM_ID, model=None,
                                     limit=file_rpm, retry_delay=delay)
        self.file_calls.append(now)

    def snapshot(self, now: float) -> dict:
        return {
            "day": self.day,
            "requests_today": dict(self.day_counts),
            "requests_last_minute": {m: sum(1 for t in q if t > now - WINDOW) for m, q in self.requests.items()},
            "youtube_seconds_today": self.youtube_seconds,
        }
