"""Unit tests of the shared limiter with injected time (no sleeping).

Several ``RateLimiter.attach`` instances on one file stand in for worker processes: each
has its own open file description, so they exclude each other through flock exactly as
processes do. Real processes are in test_ratelimit_processes.py.
"""

from __future__ import annotations

import heapq
import math
from datetime import datetime, timezone

import pytest

from gsvr_batch import quota
from gsvr_batch.errors import BatchStop, QuotaExhausted, RateLimited, UsageError
from gsvr_batch.ratelimit import (
    DEFAULT_RETRY_DELAY,
    MAX_SLEEP,
    RECOVERY_STEP,
    WINDOW,
    Limits,
    NullLimiter,
    RateLimiter,
)

M = "gemini-2.5-flash"
WALL = datetime(2026, 11, 28, 15, 0, tzinfo=timezone.utc)


def make(tmp_path, limits: Limits, *, rpd_used=None, wall=WALL, n=1, models=(M,)):
    path = tmp_path / "journal.jsonl.ratelimit"
    main = RateLimiter.create(path, {m: limits for m in models}, rpd_used, now=0.0, wall=wall)
    workers = [RateLimiter.attach(path) for _ in range(n)]
    return main, workers


def simulate(workers, duration, *, tokens=0, kind="generate", model=M, lateness=0.0005):
    """Every worker calls wait_time as soon as allowed; returns sorted admission times."""
    heap = [(0.001 * i, i) for i in range(len(workers))]
    admitted = []
    while heap:
        t, i = heapq.heappop(heap)
        if t >= duration:
            continue
        w = workers[i].wait_time(kind, model, tokens, now=t)
        if w == 0.0:
            admitted.append(t)
            heapq.heappush(heap, (t + 0.0003 * (i + 1), i))  # next call right after
        else:
            assert w > 0
            heapq.heappush(heap, (t + w + lateness, i))
    return sorted(admitted)


def max_in_window(times, length):
    """Largest number of times inside any half-open window [x, x + length)."""
    best, j = 0, 0
    for i in range(len(times)):
        while times[i] - times[j] >= length:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_many_processes_never_exceed_limit_in_any_window_and_reach_97_percent(tmp_path):
    rpm = 120
    main, workers = make(tmp_path, Limits(rpm=rpm, tpm=None, rpd=None), n=5)
    duration = 1200.0
    times = simulate(workers, duration)
    assert max_in_window(times, 60.0) <= rpm
    # Pacing: never more than ceil(rpm/60) + 1 admissions in any second.
    assert max_in_window(times, 1.0) <= math.ceil(rpm / 60) + 1
    # Saturated throughput ≥ 0.97 of the configured rate.
    assert len(times) >= 0.97 * rpm * duration / 60
    snap = main.snapshot(now=duration)
    bucket = next(b for b in snap["buckets"] if b["model"] == M and b["kind"] == "rpm")
    assert bucket["total_admitted"] == len(times)
    assert snap["rpd"][M]["used"] == len(times)


@pytest.mark.parametrize("rpm", [5, 15, 600])
def test_window_and_burst_bounds_for_other_limits(tmp_path, rpm):
    main, workers = make(tmp_path, Limits(rpm=rpm, tpm=None, rpd=None), n=4)
    duration = 240.0 if rpm >= 600 else 900.0
    times = simulate(workers, duration)
    assert max_in_window(times, 60.0) <= rpm
    assert max_in_window(times, 1.0) <= math.ceil(rpm / 60) + 1
    # A small limit is not rounded down by the safety margin (5 RPM stays 5 per window).
    assert len(times) >= 0.97 * rpm * duration / 60 - 1


def test_start_up_is_paced_not_a_burst(tmp_path):
    main, (w,) = make(tmp_path, Limits(rpm=60, tpm=None, rpd=None))
    assert w.wait_time("generate", M, now=100.0) == 0.0
    # A classic token bucket would let 60 through at once here.
    assert w.wait_time("generate", M, now=100.0) == pytest.approx(1.0)
    assert w.wait_time("generate", M, now=100.5) == pytest.approx(0.5)
    assert w.wait_time("generate", M, now=101.0) == 0.0


def test_rate_limited_holds_everyone_lowers_factor_and_recovers(tmp_path):
    rpm = 120
    lim = Limits(rpm=rpm, tpm=None, rpd=None)
    main, (a, b) = make(tmp_path, lim, n=2)
    assert a.wait_time("generate", M, now=10.0) == 0.0
    a.record_rate_limited("generate", M, 2.0, now=10.2)
    # The other "process" is held until 12.2 even though a slot is free.
    assert b.wait_time("generate", M, now=10.3) == pytest.approx(1.9)
    assert b.wait_time("generate", M, now=12.1) == pytest.approx(0.1)
    # A second 429 during the hold (reply to an earlier request) does not compound.
    b.record_rate_limited("generate", M, 1.0, now=11.0)
    snap = main.snapshot(now=11.0)
    rpm_bucket = next(x for x in snap["buckets"] if x["model"] == M and x["kind"] == "rpm")
    assert rpm_bucket["factor"] == pytest.approx(0.7)
    assert rpm_bucket["hold_remaining"] == pytest.approx(1.2)
    assert b.wait_time("generate", M, now=12.2) == 0.0
    # The lowered factor slows pacing: 60 / (120 × 0.7) s between admissions.
    assert b.wait_time("generate", M, now=12.3) == pytest.approx(12.2 + 60 / 84 - 12.3)
    # Without RetryInfo the hold is the default delay; this 429 comes after the hold → 0.49.
    a.record_rate_limited("generate", M, None, now=20.0)
    assert b.wait_time("generate", M, now=20.0) == pytest.approx(DEFAULT_RETRY_DELAY)
    factor = lambda: next(x for x in main.snapshot(now=0)["buckets"] if x["model"] == M and x["kind"] == "rpm")["factor"]  # noqa: E731
    assert factor() == pytest.approx(0.49)
    # Recovery: nothing during the hold + one interval, then +0.05 per interval (5 s at 120 RPM).
    a.record_success("generate", M, now=21.0)
    assert factor() == pytest.approx(0.49)
    t = 30.0
    steps = 0
    while factor() < 1.0:
        a.record_success("generate", M, now=t)
        a.record_success("generate", M, now=t + 1.0)  # within the interval: no extra step
        t += 5.0
        steps += 1
        assert steps < 100
    assert steps == math.ceil((1.0 - 0.49) / RECOVERY_STEP - 1e-9)
    # Factor floor.
    for i in range(30):
        a.record_rate_limited("generate", M, 0.0, now=1000.0 + i)
    assert factor() == pytest.approx(lim.min_factor)


def test_lowered_factor_lowers_the_window_count(tmp_path):
    rpm = 60
    main, workers = make(tmp_path, Limits(rpm=rpm, tpm=None, rpd=None), n=3)
    main.record_rate_limited("generate", M, 0.0, now=0.0)  # factor 0.7, no hold
    times = simulate(workers, 300.0)
    assert max_in_window(times, 60.0) <= math.floor(rpm * 0.7)


def test_tpm_charged_with_estimate_then_corrected(tmp_path):
    main, (w,) = make(tmp_path, Limits(rpm=60, tpm=1000, rpd=None))
    window = WINDOW / 0.98
    assert w.wait_time("generate", M, 600, now=0.0) == 0.0
    # 600 + 600 > 1000: wait until the first estimate leaves the window.
    assert w.wait_time("generate", M, 600, now=2.0) == pytest.approx(window - 2.0)
    # The call really used 300 input tokens: the correction frees room.
    w.record_success("generate", M, estimated_tokens=600, actual_tokens=300, now=3.0)
    assert w.wait_time("generate", M, 600, now=3.0) == 0.0
    snap = main.snapshot(now=3.0)
    tpm = next(x for x in snap["buckets"] if x["model"] == M and x["kind"] == "tpm")
    assert tpm["tokens_last_60s"] == pytest.approx(900)
    # Under-estimate after the entry has expired: the excess is charged now.
    w.record_success("generate", M, estimated_tokens=50, actual_tokens=400, now=4.0)
    snap = main.snapshot(now=4.0)
    tpm = next(x for x in snap["buckets"] if x["model"] == M and x["kind"] == "tpm")
    assert tpm["tokens_last_60s"] == pytest.approx(1250)
    assert w.wait_time("generate", M, 100, now=5.0) > 0


def test_oversize_request_waits_for_an_empty_window_instead_of_forever(tmp_path):
    main, (w,) = make(tmp_path, Limits(rpm=60, tpm=1000, rpd=None))
    window = WINDOW / 0.98
    assert w.wait_time("generate", M, 100, now=0.0) == 0.0
    assert w.wait_time("generate", M, 5000, now=1.0) == pytest.approx(window - 1.0)
    assert w.wait_time("generate", M, 5000, now=window) == 0.0


def test_file_calls_use_their_own_bucket(tmp_path):
    main, (w,) = make(tmp_path, Limits(rpm=1, tpm=None, rpd=1, file_rpm=600))
    assert w.wait_time("generate", M, now=0.0) == 0.0
    # RPM and RPD of the model are spent, file calls still go (paced at 600/min).
    assert w.wait_time("file", M, now=0.0) == 0.0
    assert w.wait_time("file", M, now=0.05) == pytest.approx(0.05)
    assert w.wait_time("file", "another-model", now=0.1) == 0.0
    assert w.requests_today(M, now=0.1) == 1


def test_unknown_model_shares_the_strictest_default_slot(tmp_path):
    path = tmp_path / "rl"
    rl = RateLimiter.create(path, {
        "gemini-2.5-pro": Limits(rpm=5, tpm=None, rpd=100),
        "models/gemini-2.5-flash": Limits(rpm=10, tpm=None, rpd=20),
    }, now=0.0, wall=WALL)
    assert rl.wait_time("generate", "gemini-2.5-flash", now=0.0) == 0.0  # prefix normalised
    assert rl.requests_today("models/gemini-2.5-flash", now=0.0) == 1
    assert rl.wait_time("generate", "gemini-9-unknown", now=0.0) == 0.0
    assert rl.wait_time("generate", "gemini-8-other", now=1.0) == pytest.approx(60 / 5 - 1.0)
    snap = rl.snapshot(now=1.0)
    assert snap["rpd"]["*"]["limit"] == 20 and snap["rpd"]["*"]["used"] == 1
    with pytest.raises(UsageError, match="unknown rate-limit kind"):
        rl.wait_time("embed", "gemini-2.5-pro", now=2.0)


def test_daily_budget_raises_quota_exhausted_with_pacific_midnight(tmp_path):
    wall = datetime(2026, 11, 28, 15, 0, tzinfo=timezone.utc)  # 07:00 PST
    main, (w,) = make(tmp_path, Limits(rpm=600, tpm=None, rpd=3), rpd_used={M: 1}, wall=wall)
    assert w.wait_time("generate", M, now=0.0) == 0.0
    assert w.wait_time("generate", M, now=1.0) == 0.0
    with pytest.raises(QuotaExhausted) as info:
        w.acquire("generate", M, now=2.0, sleep=_no_sleep)
    assert info.value.resets_at == "2026-11-29T08:00:00Z"
    assert "midnight Pacific" in str(info.value)
    assert main.snapshot(now=2.0)["rpd"][M]["left"] == 0
    # 17 hours later (after Pacific midnight) the budget is back.
    later = 17 * 3600.0
    assert w.wait_time("generate", M, now=later) == 0.0
    assert w.requests_today(M, now=later) == 1


def test_per_day_429_marks_the_day_spent_even_without_a_known_budget(tmp_path):
    main, (w,) = make(tmp_path, Limits(rpm=600, tpm=None, rpd=None))
    assert w.wait_time("generate", M, now=0.0) == 0.0
    main.record_quota_day_exhausted(M, now=1.0)
    with pytest.raises(QuotaExhausted) as info:
        w.wait_time("generate", M, now=2.0)
    assert info.value.resets_at == "2026-11-29T08:00:00Z"
    # Files are not per-day limited.
    assert w.wait_time("file", M, now=2.0) == 0.0


@pytest.mark.parametrize("now_utc, day, midnight", [
    # 2026-03-08: clocks go 02:00 PST → 03:00 PDT (10:00 UTC).
    ("2026-03-08T07:30:00+00:00", "2026-03-07", "2026-03-08T08:00:00Z"),
    ("2026-03-08T09:30:00+00:00", "2026-03-08", "2026-03-09T07:00:00Z"),
    ("2026-03-08T10:30:00+00:00", "2026-03-08", "2026-03-09T07:00:00Z"),
    # 2026-11-01: clocks go 02:00 PDT → 01:00 PST (09:00 UTC).
    ("2026-11-01T06:30:00+00:00", "2026-10-31", "2026-11-01T07:00:00Z"),
    ("2026-11-01T08:30:00+00:00", "2026-11-01", "2026-11-02T08:00:00Z"),
    ("2026-11-01T12:00:00+00:00", "2026-11-01", "2026-11-02T08:00:00Z"),
    ("2026-11-02T07:59:59+00:00", "2026-11-01", "2026-11-02T08:00:00Z"),
    ("2026-11-02T08:00:00+00:00", "2026-11-02", "2026-11-03T08:00:00Z"),
])
def test_pacific_day_and_next_midnight_across_dst(now_utc, day, midnight):
    t = datetime.fromisoformat(now_utc)
    assert quota.pacific_day(t) == day
    assert quota.iso_utc(quota.next_pacific_midnight(t)) == midnight
    assert quota.next_pacific_midnight(t) > t


def test_day_rolls_over_at_pacific_midnight_on_dst_day(tmp_path):
    wall = datetime(2026, 11, 1, 6, 30, tzinfo=timezone.utc)  # 23:30 PDT on Oct 31
    main, (w,) = make(tmp_path, Limits(rpm=600, tpm=None, rpd=1), wall=wall)
    assert w.wait_time("generate", M, now=0.0) == 0.0
    with pytest.raises(QuotaExhausted) as info:
        w.wait_time("generate", M, now=10.0)
    assert info.value.resets_at == "2026-11-01T07:00:00Z"
    with pytest.raises(QuotaExhausted):
        w.wait_time("generate", M, now=1799.0)  # 23:59:59 PDT
    assert w.wait_time("generate", M, now=1800.0) == 0.0  # 00:00 PDT Nov 1
    with pytest.raises(QuotaExhausted) as info:
        w.wait_time("generate", M, now=1801.0)
    # Nov 1 is 25 hours long: the next reset is 08:00 UTC on Nov 2.
    assert info.value.resets_at == "2026-11-02T08:00:00Z"


def _no_sleep(seconds):
    raise AssertionError(f"unexpected sleep({seconds})")


class FakeTime:
    """clock/sleep pair: sleeping advances the clock; hooks run at given sleep counts."""

    def __init__(self, start=0.0):
        self.t = start
        self.sleeps: list[float] = []
        self.hooks: dict[int, callable] = {}

    def clock(self):
        return self.t

    def sleep(self, s):
        assert s > 0, "acquire must never spin with zero sleeps"
        self.sleeps.append(s)
        self.t += s
        hook = self.hooks.get(len(self.sleeps))
        if hook:
            hook()


def test_acquire_sleeps_outside_the_lock_without_spinning(tmp_path):
    main, (a, b) = make(tmp_path, Limits(rpm=6, tpm=None, rpd=None), n=2)
    ft = FakeTime(100.0)
    a.acquire("generate", M, clock=ft.clock, sleep=ft.sleep)
    assert ft.sleeps == []
    # While a sleeps, b can take the lock (it would block forever if a held it).
    ft.hooks[1] = lambda: b.snapshot(now=ft.t)
    a.acquire("generate", M, clock=ft.clock, sleep=ft.sleep)
    assert ft.t == pytest.approx(110.0)  # 60/6 s pacing
    assert all(0 < s <= MAX_SLEEP for s in ft.sleeps)
    assert len(ft.sleeps) == math.ceil(10.0 / MAX_SLEEP)


def test_acquire_timeout_raises_rate_limited(tmp_path):
    main, (a,) = make(tmp_path, Limits(rpm=1, tpm=None, rpd=None))
    ft = FakeTime()
    a.acquire("generate", M, clock=ft.clock, sleep=ft.sleep, timeout=5)
    with pytest.raises(RateLimited) as info:
        a.acquire("generate", M, clock=ft.clock, sleep=ft.sleep, timeout=5)
    assert info.value.retry_delay == pytest.approx(WINDOW / 0.98)  # 1 RPM: one per padded window
    assert ft.sleeps == []


def test_pause_blocks_every_worker_in_short_steps_until_resumed(tmp_path):
    main, (a, b) = make(tmp_path, Limits(rpm=600, tpm=None, rpd=None), n=2)
    main.set_paused(True)
    assert a.is_paused() and b.is_paused()
    w = b.wait_time("generate", M, now=0.0)
    assert 0 < w <= 0.25
    assert main.snapshot(now=0.0)["rpd"][M]["used"] == 0  # nothing charged while paused
    ft = FakeTime()
    ft.hooks[20] = lambda: main.set_paused(False)
    a.acquire("generate", M, clock=ft.clock, sleep=ft.sleep)
    assert len(ft.sleeps) == 20 and all(s <= 0.25 for s in ft.sleeps)
    assert not b.is_paused()
    assert main.snapshot(now=ft.t)["rpd"][M]["used"] == 1


def test_cancel_stops_waiting_and_new_acquires(tmp_path):
    main, (a, b) = make(tmp_path, Limits(rpm=1, tpm=None, rpd=None), n=2)
    ft = FakeTime()
    a.acquire("generate", M, clock=ft.clock, sleep=ft.sleep)
    ft.hooks[3] = main.set_cancelled
    with pytest.raises(BatchStop, match="cancelled"):
        a.acquire("generate", M, clock=ft.clock, sleep=ft.sleep)
    assert len(ft.sleeps) == 3  # ended at the next check, not after the 60 s wait
    with pytest.raises(BatchStop, match="cancelled"):
        b.acquire("file", M, clock=ft.clock, sleep=ft.sleep)


def test_attach_refuses_a_file_that_is_not_a_limiter(tmp_path):
    bogus = tmp_path / "x.ratelimit"
    bogus.write_bytes(b"not a limiter" * 10)
    with pytest.raises(UsageError, match="not a gsvr-batch rate-limit"):
        RateLimiter.attach(bogus)
    with pytest.raises(UsageError, match="cannot open"):
        RateLimiter.attach(tmp_path / "missing")


def test_create_replaces_state_and_carries_rpd_used(tmp_path):
    main, (w,) = make(tmp_path, Limits(rpm=60, tpm=None, rpd=10), rpd_used={M: 4})
    assert w.requests_today(M, now=0.0) == 4
    w.close()
    main.close()
    main2, (w2,) = make(tmp_path, Limits(rpm=60, tpm=None, rpd=10), rpd_used={M: 7})
    assert w2.requests_today(M, now=0.0) == 7
    assert main2.snapshot(now=0.0)["rpd"][M]["left"] == 3


def test_null_limiter_admits_everything_and_counts():
    n = NullLimiter()
    for _ in range(1000):
        n.acquire("generate", M, 10**6)
    n.acquire("file", M)
    assert n.requests_today(M) == 1000
    n.set_paused(True)
    assert n.is_paused()
    n.set_cancelled()
    with pytest.raises(BatchStop):
        n.acquire("generate", M)


def test_resolve_limits_defaults_and_overrides():
    for tier in quota.TIERS:
        for model in ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite",
                      "gemini-2.0-flash", "gemini-3-pro-preview", quota.FALLBACK_MODEL):
            assert model in quota.DEFAULT_LIMITS[tier]
    free = quota.resolve_limits("gemini-2.5-flash", "free")
    assert (free.rpm, free.tpm, free.rpd) == (10, 250_000, 20)
    assert free.file_rpm == quota.DEFAULT_FILE_RPM
    t1 = quota.resolve_limits("models/gemini-2.5-pro", "tier1", rpm=100, rpd=500)
    assert (t1.rpm, t1.tpm, t1.rpd) == (100, 2_000_000, 500)
    # A versioned name takes its family's row; an unknown one the fallback row.
    assert quota.resolve_limits("gemini-2.5-flash-lite-001", "1").rpm == 4_000
    assert quota.resolve_limits("gemini-x", "2").rpm == quota.DEFAULT_LIMITS["2"]["*"][0]
    with pytest.raises(UsageError, match="unknown quota tier"):
        quota.resolve_limits(M, "gold")
    with pytest.raises(UsageError, match="rpm must be positive"):
        quota.resolve_limits(M, "free", rpm=0)
    assert quota.LIMITS_SOURCE.startswith("https://ai.google.dev/")


def test_a_429_at_a_high_rate_sets_a_ceiling_that_recovery_stops_under(tmp_path):
    """Server enforces less than configured: settle under what the 429 revealed, probe rarely."""
    from gsvr_batch.ratelimit import CEILING_MARGIN, CEILING_PROBE_INTERVAL

    rpm = 60
    main, (a,) = make(tmp_path, Limits(rpm=rpm, tpm=None, rpd=None), n=1)
    t = 0.0
    for _ in range(43):  # 43 admissions in the window, then the server says no
        while a.wait_time("generate", M, now=t) > 0:
            t += 0.05
    a.record_rate_limited("generate", M, 1.0, now=t)
    factor = lambda: next(x for x in main.snapshot(now=0)["buckets"] if x["model"] == M and x["kind"] == "rpm")["factor"]  # noqa: E731
    assert factor() == pytest.approx(min(0.7, CEILING_MARGIN * 42 / 60))
    for i in range(200):  # plenty of recovery intervals, no new 429
        a.record_success("generate", M, now=t + 10 + 10 * i)
        if 10 + 10 * i >= CEILING_PROBE_INTERVAL - 20:
            break
    assert factor() == pytest.approx(CEILING_MARGIN * 42 / 60, abs=0.051)
    assert factor() < 42 / 60  # under the limit the server revealed
    a.record_success("generate", M, now=t + CEILING_PROBE_INTERVAL + 100)
    a.record_success("generate", M, now=t + CEILING_PROBE_INTERVAL + 200)
    assert factor() > CEILING_MARGIN * 42 / 60  # after a quiet period the ceiling is probed upward
