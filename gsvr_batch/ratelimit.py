"""One rate limiter shared by every worker process (DESIGN invariant 7).

Gemini quotas are per project, so 2–8 worker processes must share one view of them. The
state lives in an mmap'd file next to the journal (``<journal>.ratelimit``): the manager
``create``s it, every worker ``attach``es by path, and ``gsvr-batch status`` can attach and
``snapshot`` it. ``time.monotonic()`` (CLOCK_MONOTONIC, system-wide on Linux) is the clock,
so times written by one process mean the same in another. Every core function takes
``now=`` so tests drive time without sleeping.

Buckets
    One set per model (models known at ``create``, from the manifest):
      * ``rpm``  requests admitted in a sliding window;
      * ``tpm``  input tokens in a sliding window: charged with the caller's estimate at
        ``acquire`` and corrected with ``usage_metadata`` in ``record_success``;
      * ``rpd``  requests today (America/Los_Angeles day) against the daily budget; it also
        counts when the model has no daily cap, so the manager can journal usage.
    Plus one ``file_rpm`` bucket for the whole project (the Files API is not per model),
    limited by the smallest ``file_rpm`` of the models. Which buckets a call kind charges
    is ``DEFAULT_KINDS`` (override with ``create(..., kinds=...)``)::

        "generate" → rpm, tpm, rpd        (generate_content)
        "file"     → file_rpm             (files.upload / get / delete)

    A model not known at create time (a typo'd ``models/`` prefix is normalised first)
    shares the default slot ``"*"``: the limits given for ``"*"`` if any, else the
    strictest value of each limit over the given models. Sharing one slot is conservative;
    raising would stop a batch for a limiter bookkeeping gap, which is worse.

Why a sliding-window log, not a classic token bucket
    A token bucket of capacity = RPM lets 2×RPM through in the first 60 s (full bucket +
    refill). Instead each request bucket keeps a ring of its last admission times and
    admits only if fewer than ``k = floor(RPM × factor)`` admissions lie in the last
    ``W = 60 s / safety`` (safety 0.98 → W ≈ 61.2 s). So *no* window of 60 s (indeed of W)
    ever holds more than the limit, whatever the start-up. ``safety`` pads the window
    rather than shrinking the count, so a limit of 5 RPM stays 5 per 61.2 s (a count
    margin would round it down to 4, losing 20 %); saturated throughput is ≈ safety × RPM
    (≥ 0.97 × RPM with the default), the rest is slack for latency jitter between our
    admission and the server's clock.

    On top, *pacing*: consecutive admissions of one bucket are at least
    ``60 / (RPM × factor)`` seconds apart, so a free slot count never turns into a burst
    (at start-up all RPM slots are free). Bound: any 1-second window holds at most
    ``floor(RPM/60) + 1 ≤ ceil(RPM/60) + 1`` admissions. Lateness of one waking worker does
    not accumulate: after the first minute admissions are driven by the expiry of the one
    ``k`` places earlier, and the pacing interval (60/RPM) is shorter than that average
    gap (W/k).

    TPM uses the same ring with token amounts and a running sum: admit if the window's sum
    plus this estimate ≤ TPM × factor. A single request larger than the whole budget is
    admitted only into an empty window (else it would wait forever). TPM is not paced.

Adaptive rate (after a 429)
    ``record_rate_limited`` sets ``hold_until = now + retryDelay`` (``DEFAULT_RETRY_DELAY``
    = 5 s without RetryInfo) on the buckets of that kind and model, so every worker waits,
    and multiplies their rate factor by ``Limits.backoff`` (0.7, floor ``min_factor`` 0.1).
    A 429 that arrives while the bucket is already holding does not lower the factor
    again: the replies to requests sent before the first 429 would otherwise compound it
    (8 workers → 0.7⁸). ``record_success`` raises the factor additively by
    ``RECOVERY_STEP`` (0.05) at most once per ``max(5 s, 10 × 60/RPM)``: at least ten
    requests at the lowered rate and five seconds between steps, so a renewed 429 shows
    up before the next increase (AIMD, as TCP). From 0.7 that is ~30 s at 120 RPM and
    ~12 min at 5 RPM. Recovery stops at a *ceiling*: at a 429 we count what we sent in the
    window — roughly the limit the server really enforces (a project quota lower than
    configured, or another client on the same project) — and set the ceiling to 0.95 of
    that (only when we were using at least half the limit: a 429 at a low rate says
    nothing about ours), so the rate settles just under the real limit instead of climbing back into the
    next 429 every half minute. After ``CEILING_PROBE_INTERVAL`` (10 min) without a 429
    the ceiling rises one step (0.05), so a raised quota is found again; that probe costs
    at most one 429 per ten minutes.

Daily quota
    ``create`` receives ``rpd_used`` (today's count from the journal). When a model's
    budget is spent, or after ``record_quota_day_exhausted`` (a per-day 429), ``acquire``
    raises ``QuotaExhausted(resets_at=<next midnight America/Los_Angeles, ISO UTC>)``. The
    day rolls over by itself at Pacific midnight. Wall time is ``time.time()``; a limiter
    created with ``wall=`` (tests) derives wall time from ``now`` instead.

Locking
    ``fcntl.flock`` on the state file: the kernel drops it when its holder dies, even by
    ``kill -9`` (``multiprocessing.Lock`` would stay held forever, CPython #88304). A
    ``threading.Lock`` adds exclusion between threads of one process (flock is per open
    file, so two threads using one instance would not exclude each other). The lock is
    never held while sleeping: ``wait_time`` decides under the lock, ``acquire`` sleeps
    outside it (at most ``MAX_SLEEP`` = 0.25 s at a time so pause and cancel are seen
    within a second) and retries. State updates write an entry before publishing the
    count, so a holder killed mid-update leaves at worst one lost admission record.

Pause / cancel
    ``set_paused(True)`` makes every ``acquire`` wait in 0.25 s steps until resumed;
    ``set_cancelled()`` makes every ``acquire`` raise ``BatchStop("batch cancelled")``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import mmap
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from .errors import BatchStop, QuotaExhausted, RateLimited, UsageError
from .quota import Limits, iso_utc, next_pacific_midnight, normalize_model, pacific_day

# quota_id of a QuotaExhausted raised because the run's own daily budget (settings.rpd) is spent,
# not because the API said so: the manager does not journal it as a block that outlives the run.
LOCAL_RPD_QUOTA = "settings.rpd"

__all__ = [
    "DEFAULT_KINDS",
    "Limits",
    "NullLimiter",
    "RateLimiter",
]

MAGIC = b"GSVRRL01"
VERSION = 1
DEFAULT_MODEL = "*"
FILES_SLOT = "*files*"
DEFAULT_KINDS: dict[str, tuple[str, ...]] = {
    "generate": ("rpm", "tpm", "rpd"),
    "file": ("file_rpm",),
}
WINDOW = 60.0  # seconds: the unit of the published per-minute limits
DEFAULT_RETRY_DELAY = 5.0  # seconds held after a 429 that carries no RetryInfo
RECOVERY_STEP = 0.05
MIN_RECOVERY_INTERVAL = 5.0
MAX_SLEEP = 0.25  # longest single sleep in acquire: pause/cancel latency
PAUSE_STEP = 0.25
TOKEN_RING = 4096  # TPM ring size when the model has no RPM to size it by
TEST_HOLD_ENV = "GSVR_RATELIMIT_TEST_HOLD_LOCK"  # test hook: see _locked()

# Header: 8 doubles (the first holds the magic bytes).
_H_VERSION, _H_META_LEN, _H_PAUSED, _H_CANCELLED, _H_ANCHOR_MONO, _H_ANCHOR_WALL, _H_SIMULATED = range(1, 8)
_HEADER_DOUBLES = 8
# Per-bucket state block (doubles), followed by its ring of (time, amount) pairs.
(_FACTOR, _HOLD, _NEXT, _RECOVER, _SUM, _HEAD, _COUNT, _USED, _DAY, _EXHAUSTED, _TOTAL, _BACKOFFS, _CEILING,
 _LAST_429) = range(14)
_STATE_DOUBLES = 14
CEILING_MARGIN = 0.95  # aim this far below the limit a 429 revealed
CEILING_MIN_SEEN = 0.5  # only a 429 that came while we used ≥ half the limit sets a ceiling
CEILING_PROBE_INTERVAL = 600.0  # seconds without a 429 before the ceiling is raised one step

_WINDOW_KINDS = ("rpm", "tpm", "file_rpm")


def _day_number(day: str) -> int:
    return int(day.replace("-", ""))


class _Bucket:
    """Static description of one bucket (from the file's JSON metadata)."""

    __slots__ = ("model", "kind", "limit", "capacity", "base", "window", "unit", "backoff",
                 "min_factor", "recover_every")

    def __init__(self, d: dict) -> None:
        self.model: str = d["model"]
        self.kind: str = d["kind"]
        self.limit: float | None = d["limit"]
        self.capacity: int = d["capacity"]
        self.base: int = d["base"]  # index (in doubles) of the state block
        self.window: float = d["window"]
        self.unit: bool = d["unit"]  # request-count bucket (amount 1) vs token bucket
        self.backoff: float = d["backoff"]
        self.min_factor: float = d["min_factor"]
        self.recover_every: float = d["recover_every"]

    @property
    def ring(self) -> int:
        return self.base + _STATE_DOUBLES


def _strictest(limits: list[Limits]) -> Limits:
    def smallest(values):
        vals = [v for v in values if v is not None]
        return min(vals) if vals else None

    return Limits(
        rpm=smallest(lim.rpm for lim in limits),
        tpm=smallest(lim.tpm for lim in limits),
        rpd=smallest(lim.rpd for lim in limits),
        file_rpm=smallest(lim.file_rpm for lim in limits),
        backoff=min(lim.backoff for lim in limits),
        min_factor=min(lim.min_factor for lim in limits),
        safety=min(lim.safety for lim in limits),
    )


def _recover_every(rpm: float | None) -> float:
    if not rpm:
        return MIN_RECOVERY_INTERVAL
    return max(MIN_RECOVERY_INTERVAL, 10 * WINDOW / rpm)


class RateLimiter:
    """Shared-memory limiter; see the module docstring for the rules it keeps."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        # Use create() / attach(); this opens and maps an existing state file.
        self.path = str(path)
        try:
            self._fd = os.open(self.path, os.O_RDWR)
        except OSError as exc:
            raise UsageError(f"cannot open rate-limit state {self.path}: {exc.strerror or exc}") from exc
        try:
            self._mm = mmap.mmap(self._fd, 0)
        except (OSError, ValueError) as exc:
            os.close(self._fd)
            raise UsageError(f"cannot map rate-limit state {self.path}: {exc}") from exc
        if self._mm[:8] != MAGIC:
            self._mm.close()
            os.close(self._fd)
            raise UsageError(f"{self.path} is not a gsvr-batch rate-limit state file")
        self._d = memoryview(self._mm).cast("d")
        meta_len = int(self._d[_H_META_LEN])
        start = _HEADER_DOUBLES * 8
        meta = json.loads(bytes(self._mm[start:start + meta_len]).decode("utf-8"))
        self._kinds: dict[str, tuple[str, ...]] = {k: tuple(v) for k, v in meta["kinds"].items()}
        self._models: set[str] = set(meta["models"])
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        for bd in meta["buckets"]:
            b = _Bucket(bd)
            self._buckets[(b.model, b.kind)] = b
        self._tlock = threading.Lock()
        self._test_hold = os.environ.get(TEST_HOLD_ENV)
        self._closed = False

    # ------------------------------------------------------------------ set-up

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        limits_by_model: dict[str, Limits],
        rpd_used: dict[str, int] | None = None,
        *,
        now: float | None = None,
        wall: datetime | None = None,
        kinds: dict[str, tuple[str, ...]] | None = None,
    ) -> RateLimiter:
        """Write a fresh state file at ``path`` (manager, once per run) and attach to it.

        ``rpd_used``: requests already charged today per model (from the journal).
        ``wall``: the UTC time matching ``now``; given → wall time is derived from ``now``
        (simulated time in tests), else ``time.time()`` is used.
        """
        now = time.monotonic() if now is None else now
        kinds = {k: tuple(v) for k, v in (kinds or DEFAULT_KINDS).items()}
        for kind, parts in kinds.items():
            unknown = [p for p in parts if p not in ("rpm", "tpm", "rpd", "file_rpm")]
            if unknown:
                raise UsageError(f"rate-limit kind {kind!r}: unknown bucket(s) {unknown}")
        models = {normalize_model(m): lim for m, lim in limits_by_model.items()}
        if not models:
            raise UsageError("rate limiter needs the limits of at least one model")
        if DEFAULT_MODEL not in models:
            models[DEFAULT_MODEL] = _strictest(list(models.values()))

        buckets: list[dict] = []

        def add(model: str, kind: str, limit: float | None, capacity: int, lim: Limits, rpm: float | None):
            buckets.append({
                "model": model, "kind": kind, "limit": limit, "capacity": capacity, "base": 0,
                "window": WINDOW / lim.safety, "unit": kind != "tpm", "backoff": lim.backoff,
                "min_factor": lim.min_factor, "recover_every": _recover_every(rpm),
            })

        for model, lim in sorted(models.items()):
            if lim.rpm is not None:
                add(model, "rpm", float(lim.rpm), max(1, math.ceil(lim.rpm)), lim, lim.rpm)
            if lim.tpm is not None:
                cap = max(1, math.ceil(lim.rpm)) if lim.rpm is not None else TOKEN_RING
                add(model, "tpm", float(lim.tpm), cap, lim, lim.rpm)
            add(model, "rpd", None if lim.rpd is None else int(lim.rpd), 0, lim, lim.rpm)
        file_limits = [lim for lim in models.values() if lim.file_rpm is not None]
        if file_limits:
            strict = _strictest(file_limits)
            add(FILES_SLOT, "file_rpm", float(strict.file_rpm), max(1, math.ceil(strict.file_rpm)),
                strict, strict.file_rpm)

        # Lay out: header | metadata JSON (padded to 8) | state+ring blocks.
        def meta_bytes() -> bytes:
            return json.dumps({"version": VERSION, "kinds": kinds, "models": sorted(models),
                               "buckets": buckets}, sort_keys=True).encode("utf-8")

        # Bases depend on the metadata length: reserve room for every base's digits
        # (at most 16 characters each) before assigning them.
        meta_room = (len(meta_bytes()) + 16 * len(buckets) + 7) // 8
        index = _HEADER_DOUBLES + meta_room
        for b in buckets:
            b["base"] = index
            index += _STATE_DOUBLES + 2 * b["capacity"]
        meta = meta_bytes()
        assert len(meta) <= meta_room * 8
        total_doubles = index

        wall_ts = (wall if wall is not None else datetime.now(timezone.utc)).timestamp()
        today = pacific_day(datetime.fromtimestamp(wall_ts, timezone.utc))
        used = {normalize_model(m): int(n) for m, n in (rpd_used or {}).items()}

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Build in a temp file and rename, so an attacher never maps a half-written file.
        fd, tmp = tempfile.mkstemp(prefix=".gsvr-tmp-", dir=path.parent)
        try:
            os.ftruncate(fd, total_doubles * 8)
            with mmap.mmap(fd, total_doubles * 8) as mm:
                mm[:8] = MAGIC
                d = memoryview(mm).cast("d")
                try:
                    d[_H_VERSION] = VERSION
                    d[_H_META_LEN] = len(meta)
                    d[_H_ANCHOR_MONO] = now
                    d[_H_ANCHOR_WALL] = wall_ts
                    d[_H_SIMULATED] = 1.0 if wall is not None else 0.0
                    start = _HEADER_DOUBLES * 8
                    mm[start:start + len(meta)] = meta
                    for b in buckets:
                        base = b["base"]
                        d[base + _FACTOR] = 1.0
                        d[base + _CEILING] = 1.0
                        d[base + _LAST_429] = -math.inf
                        d[base + _HOLD] = -math.inf
                        d[base + _NEXT] = -math.inf
                        d[base + _RECOVER] = -math.inf
                        if b["kind"] == "rpd":
                            d[base + _DAY] = _day_number(today)
                            d[base + _USED] = used.get(b["model"], 0)
                finally:
                    d.release()
                mm.flush()
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except OSError as exc:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise UsageError(f"cannot create rate-limit state {path}: {exc.strerror or exc}") from exc
        return cls(path)

    @classmethod
    def attach(cls, path: str | os.PathLike[str]) -> RateLimiter:
        """Map an existing state file (workers, ``gsvr-batch status``)."""
        return cls(path)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._d.release()
        self._mm.close()
        os.close(self._fd)

    def __enter__(self) -> RateLimiter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ locking

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._tlock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                if self._test_hold:
                    # Test hook (tests/test_ratelimit_processes.py): announce that we hold
                    # the lock, then sit in the critical section until kill -9.
                    Path(self._test_hold).touch()
                    time.sleep(3600)
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ helpers

    def _slots(self, kind: str, model: str) -> list[_Bucket]:
        try:
            parts = self._kinds[kind]
        except KeyError:
            raise UsageError(f"unknown rate-limit kind {kind!r} (known: {', '.join(sorted(self._kinds))})") from None
        m = normalize_model(model)
        if m not in self._models:
            m = DEFAULT_MODEL
        out = []
        for part in parts:
            b = self._buckets.get((FILES_SLOT if part == "file_rpm" else m, part))
            if b is not None:
                out.append(b)
        return out

    def _wall(self, now: float) -> datetime:
        d = self._d
        if d[_H_SIMULATED]:
            ts = d[_H_ANCHOR_WALL] + (now - d[_H_ANCHOR_MONO])
        else:
            ts = time.time()
        return datetime.fromtimestamp(ts, timezone.utc)

    def _prune(self, b: _Bucket, now: float) -> None:
        d, base = self._d, b.base
        count = int(d[base + _COUNT])
        if not count:
            return
        head = int(d[base + _HEAD])
        total = d[base + _SUM]
        cutoff = now - b.window
        while count and d[b.ring + 2 * head] <= cutoff:
            total -= d[b.ring + 2 * head + 1]
            head = (head + 1) % b.capacity
            count -= 1
        d[base + _HEAD] = head
        d[base + _COUNT] = count
        d[base + _SUM] = total if count else 0.0  # drop float residue when empty

    def _entry(self, b: _Bucket, i: int) -> tuple[float, float]:
        """i-th oldest live entry."""
        j = (int(self._d[b.base + _HEAD]) + i) % b.capacity
        return self._d[b.ring + 2 * j], self._d[b.ring + 2 * j + 1]

    def _roll_day(self, b: _Bucket, now: float) -> None:
        today = _day_number(pacific_day(self._wall(now)))
        if int(self._d[b.base + _DAY]) != today:
            self._d[b.base + _DAY] = today
            self._d[b.base + _USED] = 0
            self._d[b.base + _EXHAUSTED] = 0

    def _window_wait(self, b: _Bucket, amount: float, now: float) -> float:
        d, base = self._d, b.base
        wait = d[base + _HOLD] - now
        factor = d[base + _FACTOR]
        count = int(d[base + _COUNT])
        if b.unit:
            k = max(1, math.floor(b.limit * factor + 1e-9))
            wait = max(wait, d[base + _NEXT] - now)
            if count >= k:
                t, _ = self._entry(b, count - k)
                wait = max(wait, t + b.window - now)
        elif amount > 0:
            budget = b.limit * factor
            excess = d[base + _SUM] + amount - budget
            if amount > budget:
                excess = d[base + _SUM]  # oversize request: only into an empty window
            if excess > 1e-9:
                acc = 0.0
                for i in range(count):
                    t, a = self._entry(b, i)
                    acc += a
                    if acc >= excess - 1e-9:
                        wait = max(wait, t + b.window - now)
                        break
            if count >= b.capacity:
                t, _ = self._entry(b, 0)
                wait = max(wait, t + b.window - now)
        return max(0.0, wait)

    def _append(self, b: _Bucket, t: float, amount: float) -> None:
        d, base = self._d, b.base
        count = int(d[base + _COUNT])
        j = (int(d[base + _HEAD]) + count) % b.capacity
        # Entry first, count last: a holder killed between the two loses one record
        # instead of publishing garbage.
        d[b.ring + 2 * j] = t
        d[b.ring + 2 * j + 1] = amount
        d[base + _SUM] += amount
        d[base + _COUNT] = count + 1
        d[base + _TOTAL] += 1

    def _last_time(self, b: _Bucket) -> float:
        count = int(self._d[b.base + _COUNT])
        return self._entry(b, count - 1)[0] if count else -math.inf

    def _try(self, kind: str, model: str, tokens: int, now: float) -> float:
        """Under the lock: 0.0 → admitted and charged; else seconds to wait (nothing charged)."""
        d = self._d
        if d[_H_CANCELLED]:
            raise BatchStop("batch cancelled")
        if d[_H_PAUSED]:
            return PAUSE_STEP
        slots = self._slots(kind, model)
        for b in slots:
            if b.kind != "rpd":
                continue
            self._roll_day(b, now)
            used = int(d[b.base + _USED])
            if d[b.base + _EXHAUSTED] or (b.limit is not None and used >= b.limit):
                resets = next_pacific_midnight(self._wall(now))
                raise QuotaExhausted(
                    f"daily request quota for {normalize_model(model)} is spent "
                    f"({used} of {b.limit if b.limit is not None else 'server limit'} today); "
                    f"it resets at {iso_utc(resets)} (midnight Pacific)",
                    resets_at=iso_utc(resets),
                    # the server said so (a daily 429), or only our own budget (settings.rpd) is spent
                    quota_id=None if d[b.base + _EXHAUSTED] else LOCAL_RPD_QUOTA,
                )
        wait = 0.0
        for b in slots:
            if b.kind == "rpd":
                continue
            self._prune(b, now)
            wait = max(wait, self._window_wait(b, 1.0 if b.unit else float(tokens), now))
        if wait > 0.0:
            return wait
        for b in slots:
            if b.kind == "rpd":
                d[b.base + _USED] += 1
                continue
            if not b.unit and tokens <= 0:
                continue
            # Keep each ring sorted even when another process read its clock a moment
            # later than us but took the lock first (a later time is the safe side).
            t = max(now, self._last_time(b))
            self._append(b, t, 1.0 if b.unit else float(tokens))
            if b.unit:
                d[b.base + _NEXT] = t + WINDOW / (b.limit * d[b.base + _FACTOR])
        return 0.0

    # ------------------------------------------------------------------ public API

    def wait_time(self, kind: str, model: str, tokens: int = 0, *, now: float) -> float:
        """0.0 → admitted and charged; else seconds to wait (nothing charged).

        Raises ``QuotaExhausted`` when the day's budget is spent, ``BatchStop`` when cancelled.
        """
        with self._locked():
            return self._try(kind, model, tokens, now)

    def acquire(
        self,
        kind: str,
        model: str,
        tokens: int = 0,
        *,
        now: float | None = None,
        sleep: Callable[[float], object] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        timeout: float | None = None,
    ) -> None:
        """Block until one ``kind`` call for ``model`` (with ``tokens`` estimated input
        tokens) is admitted; the lock is never held while sleeping.

        ``now``: time of the first attempt (tests); later attempts read ``clock()`` inside
        the lock, so the admission time is the one that keeps the rings in order.
        ``timeout``: raise ``RateLimited`` rather than wait past it.
        """
        first = True
        deadline: float | None = None
        while True:
            with self._locked():
                t = now if (first and now is not None) else clock()
                wait = self._try(kind, model, tokens, t)
            first = False
            if wait <= 0.0:
                return
            if timeout is not None:
                if deadline is None:
                    deadline = t + timeout
                if t + wait > deadline:
                    raise RateLimited(
                        f"rate limiter would wait {wait:.1f}s for {kind} on {normalize_model(model)}, "
                        f"past the {timeout:g}s timeout",
                        retry_delay=wait,
                    )
            sleep(min(wait, MAX_SLEEP))

    def record_success(
        self,
        kind: str,
        model: str,
        *,
        estimated_tokens: int = 0,
        actual_tokens: int = 0,
        now: float | None = None,
    ) -> None:
        """A call succeeded: let a lowered rate recover, correct the TPM estimate."""
        with self._locked():
            now = time.monotonic() if now is None else now
            d = self._d
            for b in self._slots(kind, model):
                if b.kind == "rpd":
                    continue
                base = b.base
                ceiling = d[base + _CEILING]
                if ceiling < 1.0 and now - d[base + _LAST_429] >= CEILING_PROBE_INTERVAL:
                    # Quiet for long enough: probe whether the server allows more again.
                    ceiling = d[base + _CEILING] = min(1.0, ceiling + RECOVERY_STEP)
                    d[base + _LAST_429] = now
                if d[base + _FACTOR] < ceiling and now >= d[base + _RECOVER]:
                    d[base + _FACTOR] = min(ceiling, d[base + _FACTOR] + RECOVERY_STEP)
                    d[base + _RECOVER] = now + b.recover_every
                if b.kind == "tpm" and actual_tokens != estimated_tokens:
                    self._correct_tokens(b, float(estimated_tokens), float(actual_tokens), now)

    def _correct_tokens(self, b: _Bucket, estimated: float, actual: float, now: float) -> None:
        self._prune(b, now)
        d = self._d
        count = int(d[b.base + _COUNT])
        if estimated > 0:
            # Entries with equal estimates are interchangeable; fix the newest.
            for i in range(count - 1, -1, -1):
                j = (int(d[b.base + _HEAD]) + i) % b.capacity
                if d[b.ring + 2 * j + 1] == estimated:
                    d[b.ring + 2 * j + 1] = max(0.0, actual)
                    d[b.base + _SUM] += max(0.0, actual) - estimated
                    return
        # Estimate already expired (or never charged): charge an excess now — the safe
        # side — and forget a shortfall.
        if actual > estimated and count < b.capacity:
            self._append(b, max(now, self._last_time(b)), actual - estimated)
            d[b.base + _TOTAL] -= 1  # a correction, not an admission

    def record_rate_limited(self, kind: str, model: str, retry_delay: float | None, *, now: float | None = None) -> None:
        """A 429 (per-minute): hold every worker on these buckets and lower their rate."""
        delay = DEFAULT_RETRY_DELAY if retry_delay is None else max(0.0, float(retry_delay))
        with self._locked():
            now = time.monotonic() if now is None else now
            d = self._d
            for b in self._slots(kind, model):
                if b.kind == "rpd":
                    continue
                base = b.base
                if now >= d[base + _HOLD]:  # not already holding: see the docstring
                    self._prune(b, now)
                    # What we sent in the window when the server said "no" is an estimate of
                    # the limit it really enforces (e.g. a project quota lower than configured);
                    # recovery stops a little below it instead of climbing into the next 429.
                    sent = d[base + _COUNT] if b.unit else d[base + _SUM]
                    seen = max(0.0, sent - (1 if b.unit else 0)) / b.limit if b.limit else 1.0
                    new = d[base + _FACTOR] * b.backoff
                    if seen >= CEILING_MIN_SEEN:  # a 429 at a low rate is not about our rate
                        ceiling = max(b.min_factor, min(d[base + _CEILING], CEILING_MARGIN * seen))
                        d[base + _CEILING] = ceiling
                        new = min(new, ceiling)
                    d[base + _FACTOR] = max(b.min_factor, new)
                    d[base + _LAST_429] = now
                    d[base + _BACKOFFS] += 1
                d[base + _HOLD] = max(d[base + _HOLD], now + delay)
                d[base + _RECOVER] = d[base + _HOLD] + b.recover_every

    def record_quota_day_exhausted(self, model: str, *, now: float | None = None) -> None:
        """A per-day 429: no more requests for ``model`` until Pacific midnight."""
        with self._locked():
            now = time.monotonic() if now is None else now
            for b in self._slots("generate", model) if "generate" in self._kinds else []:
                if b.kind == "rpd":
                    self._roll_day(b, now)
                    self._d[b.base + _EXHAUSTED] = 1.0

    def requests_today(self, model: str, *, now: float | None = None) -> int:
        """Requests charged to ``model``'s daily count today (Pacific day)."""
        with self._locked():
            now = time.monotonic() if now is None else now
            for b in self._slots("generate", model) if "generate" in self._kinds else []:
                if b.kind == "rpd":
                    self._roll_day(b, now)
                    return int(self._d[b.base + _USED])
        return 0

    def set_paused(self, paused: bool) -> None:
        with self._locked():
            self._d[_H_PAUSED] = 1.0 if paused else 0.0

    def is_paused(self) -> bool:
        return bool(self._d[_H_PAUSED])

    def set_cancelled(self) -> None:
        with self._locked():
            self._d[_H_CANCELLED] = 1.0

    def is_cancelled(self) -> bool:
        return bool(self._d[_H_CANCELLED])

    def admission_times(self, model: str, limit_kind: str = "rpm") -> list[float]:
        """Times of the live entries of one bucket, oldest first (status, tests)."""
        m = FILES_SLOT if limit_kind == "file_rpm" else normalize_model(model)
        b = self._buckets.get((m if m in self._models or m == FILES_SLOT else DEFAULT_MODEL, limit_kind))
        if b is None or b.kind == "rpd":
            return []
        with self._locked():
            return [self._entry(b, i)[0] for i in range(int(self._d[b.base + _COUNT]))]

    def snapshot(self, *, now: float | None = None) -> dict:
        """Read-only view for status and journaling (does not prune or roll the day)."""
        with self._locked():
            now = time.monotonic() if now is None else now
            d = self._d
            wall = self._wall(now)
            today = _day_number(pacific_day(wall))
            out: dict = {"paused": bool(d[_H_PAUSED]), "cancelled": bool(d[_H_CANCELLED]),
                         "buckets": [], "rpd": {}}
            for (model, kind), b in sorted(self._buckets.items()):
                base = b.base
                if kind == "rpd":
                    same_day = int(d[base + _DAY]) == today
                    used = int(d[base + _USED]) if same_day else 0
                    exhausted = bool(d[base + _EXHAUSTED]) and same_day
                    left = None if b.limit is None else max(0, int(b.limit) - used)
                    out["rpd"][model] = {
                        "day": pacific_day(wall), "used": used, "limit": b.limit,
                        "left": 0 if exhausted else left, "exhausted": exhausted or left == 0,
                        "resets_at": iso_utc(next_pacific_midnight(wall)),
                    }
                    continue
                entries = [self._entry(b, i) for i in range(int(d[base + _COUNT]))]
                recent = [(t, a) for t, a in entries if t > now - WINDOW]
                out["buckets"].append({
                    "model": model, "kind": kind, "limit": b.limit,
                    "factor": round(d[base + _FACTOR], 4),
                    "effective_limit": b.limit * d[base + _FACTOR],
                    "hold_remaining": max(0.0, d[base + _HOLD] - now),
                    "admitted_last_60s": len(recent) if b.unit else None,
                    "tokens_last_60s": None if b.unit else sum(a for _, a in recent),
                    "total_admitted": int(d[base + _TOTAL]),
                    "rate_limited": int(d[base + _BACKOFFS]),
                })
            return out


class NullLimiter:
    """Admits everything, counts requests (dry runs, unit tests of other modules)."""

    def __init__(self) -> None:
        self._paused = False
        self._cancelled = False
        self._today: dict[str, int] = {}

    @classmethod
    def attach(cls, path: str | os.PathLike[str] | None = None) -> NullLimiter:
        return cls()

    def acquire(self, kind: str, model: str, tokens: int = 0, *, now=None, sleep=time.sleep,
                clock=time.monotonic, timeout: float | None = None) -> None:
        if self._cancelled:
            raise BatchStop("batch cancelled")
        if kind == "generate":
            m = normalize_model(model)
            self._today[m] = self._today.get(m, 0) + 1

    def wait_time(self, kind: str, model: str, tokens: int = 0, *, now: float) -> float:
        self.acquire(kind, model, tokens)
        return 0.0

    def record_success(self, kind, model, *, estimated_tokens=0, actual_tokens=0, now=None) -> None:
        pass

    def record_rate_limited(self, kind, model, retry_delay, *, now=None) -> None:
        pass

    def record_quota_day_exhausted(self, model, *, now=None) -> None:
        pass

    def requests_today(self, model: str, *, now=None) -> int:
        return self._today.get(normalize_model(model), 0)

    def set_paused(self, paused: bool) -> None:
        self._paused = bool(paused)

    def is_paused(self) -> bool:
        return self._paused

    def set_cancelled(self) -> None:
        self._cancelled = True

    def is_cancelled(self) -> bool:
        return self._cancelled

    def admission_times(self, model: str, limit_kind: str = "rpm") -> list[float]:
        return []

    def snapshot(self, *, now=None) -> dict:
        return {"paused": self._paused, "cancelled": self._cancelled, "buckets": [],
                "rpd": {m: {"used": n, "limit": None, "left": None} for m, n in self._today.items()}}

    def close(self) -> None:
        pass
