"""Default Gemini API limits per model and tier, and the Pacific-midnight day helpers.

Gemini quotas are per *project* and per model, measured as requests per minute (RPM),
input tokens per minute (TPM) and requests per day (RPD). Per-day quotas reset at
midnight America/Los_Angeles (so the reset is 07:00 or 08:00 UTC depending on DST).

The numbers below are the published tables as read on ``LIMITS_READ_ON`` from
``LIMITS_SOURCE``. Google changes them without notice (the free tier was cut sharply in
December 2025, and the page now points to AI Studio for the per-project values), so they
are only defaults: ``resolve_limits`` lets the manifest / CLI (``rpm:``, ``tpm:``, ``rpd:``)
win, and the README tells users to check https://aistudio.google.com/rate-limit.
Where a tier publishes no daily cap the RPD is ``None`` (no daily budget enforced by us).
Where we were unsure we chose the lower number: a too-low default costs throughput, a
too-high one costs avoidable 429s (DESIGN invariant 7).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import timeutil
from .errors import UsageError

LIMITS_SOURCE = "https://ai.google.dev/gemini-api/docs/rate-limits"
LIMITS_READ_ON = "2026-11-28"

PACIFIC = timeutil.PACIFIC

# Our own choice: the Files API publishes no RPM. Uploads / gets / deletes are cheap for
# the server but we still do not want 8 workers polling `files.get` in a tight loop.
DEFAULT_FILE_RPM = 600.0

TIERS = ("free", "1", "2", "3")
FALLBACK_MODEL = "*"

# DEFAULT_LIMITS[tier][model] = (rpm, tpm, rpd); rpd None = no published daily cap.
DEFAULT_LIMITS: dict[str, dict[str, tuple[float | None, float | None, int | None]]] = {
    "free": {
        "gemini-2.5-pro": (5, 250_000, 100),
        "gemini-2.5-flash": (10, 250_000, 20),  # cut from 250 to 20 RPD in Dec 2025
        "gemini-2.5-flash-lite": (15, 250_000, 20),
        "gemini-2.0-flash": (15, 1_000_000, 200),
        # Not offered on the free tier; a tiny budget makes the first call fail fast and
        # clearly (the server answers 429 with a per-day quota) instead of hammering.
        "gemini-3-pro-preview": (2, 125_000, 10),
        FALLBACK_MODEL: (5, 250_000, 20),
    },
    "1": {
        "gemini-2.5-pro": (150, 2_000_000, 10_000),
        "gemini-2.5-flash": (1_000, 1_000_000, 10_000),
        "gemini-2.5-flash-lite": (4_000, 4_000_000, None),
        "gemini-2.0-flash": (2_000, 4_000_000, None),
        "gemini-3-pro-preview": (50, 1_000_000, 1_000),
        FALLBACK_MODEL: (150, 1_000_000, 1_000),
    },
    "2": {
        "gemini-2.5-pro": (1_000, 5_000_000, 50_000),
        "gemini-2.5-flash": (2_000, 3_000_000, 100_000),
        "gemini-2.5-flash-lite": (10_000, 10_000_000, None),
        "gemini-2.0-flash": (10_000, 10_000_000, None),
        "gemini-3-pro-preview": (1_000, 5_000_000, 50_000),
        FALLBACK_MODEL: (1_000, 3_000_000, 10_000),
    },
    "3": {
        "gemini-2.5-pro": (2_000, 8_000_000, None),
        "gemini-2.5-flash": (10_000, 8_000_000, None),
        "gemini-2.5-flash-lite": (30_000, 30_000_000, None),
        "gemini-2.0-flash": (30_000, 30_000_000, None),
        "gemini-3-pro-preview": (2_000, 8_000_000, None),
        FALLBACK_MODEL: (2_000, 8_000_000, None),
    },
}


@dataclass
class Limits:
    """Limits of one model as the limiter enforces them (``None`` = not limited).

    ``backoff``: factor the rate is multiplied by on a 429; ``min_factor``: floor for it.
    ``safety``: fraction of the configured per-minute limits we aim for (0.98 → the
    limiter's sliding window is 60/0.98 ≈ 61.2 s long), a pad for network latency jitter
    between our admission and the server's clock.
    """

    rpm: float | None
    tpm: float | None
    rpd: int | None
    file_rpm: float | None = DEFAULT_FILE_RPM
    backoff: float = 0.7
    min_factor: float = 0.1
    safety: float = 0.98


def normalize_model(model: str) -> str:
    """'models/gemini-2.5-flash' → 'gemini-2.5-flash' (the SDK accepts both spellings)."""
    model = model.strip()
    if model.startswith("models/"):
        model = model[len("models/"):]
    return model


def _base_model(model: str) -> str:
    """Best default row for a versioned name: 'gemini-2.5-flash-001' → 'gemini-2.5-flash'."""
    table = DEFAULT_LIMITS["free"]
    if model in table:
        return model
    # Longest known name that prefixes the given one ("gemini-2.5-flash-lite-preview-…").
    candidates = [m for m in table if m != FALLBACK_MODEL and model.startswith(m)]
    return max(candidates, key=len) if candidates else FALLBACK_MODEL


def resolve_limits(
    model: str,
    tier: str = "free",
    rpm: float | None = None,
    tpm: float | None = None,
    rpd: int | None = None,
    *,
    file_rpm: float | None = None,
) -> Limits:
    """Defaults for ``model`` on ``tier``, with explicit values winning."""
    tier = str(tier).strip().lower()
    if tier.startswith("tier"):
        tier = tier[4:].strip(" _-")
    if tier not in DEFAULT_LIMITS:
        raise UsageError(f"unknown quota tier {tier!r} (expected one of: {', '.join(TIERS)})")
    for name, value in (("rpm", rpm), ("tpm", tpm), ("rpd", rpd), ("file_rpm", file_rpm)):
        if value is not None and value <= 0:
            raise UsageError(f"{name} must be positive, got {value!r}")
    d_rpm, d_tpm, d_rpd = DEFAULT_LIMITS[tier][_base_model(normalize_model(model))]
    return Limits(
        rpm=float(rpm) if rpm is not None else (float(d_rpm) if d_rpm is not None else None),
        tpm=float(tpm) if tpm is not None else (float(d_tpm) if d_tpm is not None else None),
        rpd=int(rpd) if rpd is not None else d_rpd,
        file_rpm=float(file_rpm) if file_rpm is not None else DEFAULT_FILE_RPM,
    )


# The Pacific-day helpers live in timeutil; these names stay for the modules that import them here.
pacific_day = timeutil.pacific_day
next_pacific_midnight = timeutil.next_pacific_midnight
iso_utc = timeutil.iso_utc
