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

    # Fields a client may change while the server runs (host/port/log_path are fixed at start).
    RUNTIME_FIELDS = (
        "api_key", "rpm", "rpd", "tpm", "file_rpm", "latency", "fail_rate",
        "processing_delay", "batch_duration", "retry_delay", "day_reset",
    )

    def public_dict(self) -> dict[str, Any]:
        """The settings without the key itself (never echo a secret)."""
        d = asdict(self)
        d["api_key"] = "(set)" if self.api_key else None
        return d

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}
