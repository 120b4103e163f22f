"""Settings of the sandbox server (constructor arguments, CLI flags, runtime control)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass
class SandboxConfig:
    """How the sandbox behaves; every field can also be changed at runtime via ``/_sandbox/config``.

    ``api_key=None`` accepts any non-empty key. ``rpm``/``tpm``/``rpd`` are per model,
    ``file_rpm`` is for all Files API calls together (per project, like the real API).
    ``day_reset=None`` starts a new quota day at midnight America/Los_Angeles (as the real
    API does); a number makes a "day" last that many seconds of the server clock, so
    benchmarks can live through several days in a minute.

    ``models`` adds models (name → input token limit) to the built-in table (``models.py``);
    ``input_token_limit`` overrides the input limit of every model (a small one lets a test
    overflow the window with a short video). ``youtube_durations`` declares YouTube videos'
    lengths (video id → seconds; others are assumed to last ``lesson.ASSUMED_DURATION``);
    ``youtube_seconds_per_day`` is a per-project daily quota of YouTube video seconds (the free
    tier's is 8 h = 28,800). ``cache_ttl``: seconds a media part stays in the implicit cache
    (0 turns it off). ``upload_lost_answer_rate``: probability that an upload's finalize takes
    effect but its answer is lost (503 without an upload status).
    """

    host: str = "127.0.0.1"
    port: int = 0
    api_key: str | None = None
    rpm: float | None = None
    rpd: int | None = None
    tpm: float | None = None
    file_rpm: float | None = None
    latency: float = 0.0
    fail_rate: float = 0.0
    processing_delay: float = 0.5
    batch_duration: float = 2.0
    log_path: str | None = None
    seed: int | None = None
    retry_delay: float | None = None
    day_reset: float | None = None
    models: dict[str, int] | None = None
    input_token_limit: int | None = None
    youtube_durations: dict[str, float] | None = None
    youtube_seconds_per_day: float | None = None
    cache_ttl: float = 300.0
    upload_lost_answer_rate: float = 0.0

    # Fields a client may change while the server runs (host/port/log_path are fixed at start).
    RUNTIME_FIELDS = (
        "api_key", "rpm", "rpd", "tpm", "file_rpm", "latency", "fail_rate",
        "processing_delay", "batch_duration", "retry_delay", "day_reset", "models", "input_token_limit",
        "youtube_durations", "youtube_seconds_per_day", "cache_ttl", "upload_lost_answer_rate",
    )
    _INT_FIELDS = ("rpd", "input_token_limit")
    _DICT_FIELDS = {"models": int, "youtube_durations": float}  # value type of each mapping

    @classmethod
    def coerce(cls, key: str, value: Any) -> Any:
        """A runtime value (e.g. from JSON) in the field's type; raises ValueError/TypeError."""
        if value is None or key == "api_key":
            return value
        if key in cls._DICT_FIELDS:
            if not isinstance(value, dict):
                raise TypeError(f"{key} must be an object of name -> number")
            kind = cls._DICT_FIELDS[key]
            return {str(k): kind(v) for k, v in value.items()}
        return int(value) if key in cls._INT_FIELDS else float(value)

    def public_dict(self) -> dict[str, Any]:
        """The settings without the key itself (never echo a secret)."""
        d = asdict(self)
        d["api_key"] = "(set)" if self.api_key else None
        return d

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


def parse_pairs(values: tuple[str, ...] | list[str], kind: type, option: str) -> dict[str, Any] | None:
    """``("abc=10800", ...)`` from a repeatable CLI option → ``{"abc": 10800.0}`` (None when empty).

    Raises ValueError with a message naming ``option`` for anything not ``NAME=NUMBER``.
    """
    out: dict[str, Any] = {}
    for raw in values:
        name, sep, value = str(raw).partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            number = kind(value.strip())
            if number <= 0:
                raise ValueError
        except ValueError:
            raise ValueError(f"{option} expects NAME=NUMBER with a positive number, got {raw!r}") from None
        out[name.strip()] = number
    return out or None
