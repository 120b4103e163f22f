"""Time in one place: ISO-8601 UTC text, durations, and the Pacific quota day.

Everything takes the time it works on as a parameter (unix seconds or an aware datetime), so the
scheduler, the quota checks and the tests share one injectable clock (huey's ``loop(now)``).
Per-day Gemini quotas reset at midnight America/Los_Angeles: 07:00 or 08:00 UTC with DST.
"""

from __future__ import annotations

import re
import time
from datetime import date, datetime, timedelta, timezone
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo

PACIFIC = ZoneInfo("America/Los_Angeles")


def as_utc(t: datetime | float | None = None) -> datetime:
    """An aware UTC datetime from unix seconds, a datetime (naive = UTC) or None (now)."""
    if t is None:
        return datetime.now(timezone.utc)
    if isinstance(t, (int, float)):
        return datetime.fromtimestamp(t, tz=timezone.utc)
    if t.tzinfo is None:
        return t.replace(tzinfo=timezone.utc)  # the journal writes UTC everywhere
    return t.astimezone(timezone.utc)


def iso_utc(t: datetime | float | None = None) -> str:
    """'2026-11-28T08:00:00Z' (seconds): records' reset times, messages, front matter."""
    return as_utc(t).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_utc_ms(t: float | None = None) -> str:
    """'2026-11-28T15:00:00.123Z' (milliseconds): the journal's ``ts``."""
    return as_utc(time.time() if t is None else t).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_iso(text: Any) -> datetime | None:
    """An aware datetime from ISO-8601 text ('…Z' or an offset; naive = UTC), or None."""
    if isinstance(text, datetime):
        return as_utc(text)
    if not text:
        return None
    try:
        t = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def parse_iso_ts(text: Any) -> float | None:
    t = parse_iso(text)
    return t.timestamp() if t is not None else None


def pacific_day(t: datetime | float | None = None) -> str:
    """The quota day (America/Los_Angeles calendar date) containing ``t``, 'YYYY-MM-DD'."""
    return as_utc(t).astimezone(PACIFIC).date().isoformat()


def next_pacific_midnight(t: datetime | float | None = None) -> datetime:
    """The next midnight in America/Los_Angeles after ``t``, as an aware UTC datetime.

    Built from the next *calendar date* at 00:00 local (not now + 24 h), so it is right on the
    DST days, when a Pacific day is 23 or 25 hours long.
    """
    local = as_utc(t).astimezone(PACIFIC)
    tomorrow: date = local.date() + timedelta(days=1)
    return datetime.combine(tomorrow, dtime(0, 0), tzinfo=PACIFIC).astimezone(timezone.utc)


_CLOCK = re.compile(r"\d+(:\d{1,2}){1,2}")
_UNITS = re.compile(r"(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m(?:in)?)?\s*(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(value: Any) -> float | None:
    """Seconds from 5400, '5400', '90m', '1h30m', '45s', '1:30:00' or '90:00'; None if not a positive duration."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if value > 0 else None
    text = str(value).strip().lower()
    seconds: float | None = None
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    elif _CLOCK.fullmatch(text):
        seconds = 0.0
        for part in text.split(":"):
            seconds = seconds * 60 + int(part)
    else:
        m = _UNITS.fullmatch(text)
        if m and any(m.groups()):
            h, mi, s = (float(g) if g else 0.0 for g in m.groups())
            seconds = h * 3600 + mi * 60 + s
    return seconds if seconds and seconds > 0 else None


def fmt_clock(seconds: float | None, *, unknown: str = "?") -> str:
    """'1:02:03' or '2:03' (minutes:seconds under an hour)."""
    if seconds is None:
        return unknown
    total = int(round(max(0.0, seconds)))
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fmt_span(seconds: float) -> str:
    """A human span: '45 s', '12 min', '3 h 20 min', '2 d 4 h'."""
    s = max(0, int(round(seconds)))
    if s < 90:
        return f"{s} s"
    if s < 3600:
        return f"{round(s / 60)} min"
    if s < 2 * 86400:
        h, m = divmod(round(s / 60), 60)
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(round(s / 3600), 24)
    return f"{d} d {h} h" if h else f"{d} d"
