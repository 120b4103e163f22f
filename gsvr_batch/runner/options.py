"""What one invocation of ``gsvr-batch run`` / ``retry`` is asked to do, and what it answers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import settings as settings_mod
from ..errors import UsageError


class RunOptions:
    """The manifest, the settings given on the command line, and the actions of this invocation.

    Settings are passed by name, exactly as in ``settings.SETTINGS`` (``workers=4``,
    ``sandbox=True``, ``output="lessons"``…); a value of None means "not given here: the
    manifest (or the default) decides". Everything else is an action of this run only.
    """

    def __init__(self, manifest: str | list[str] | tuple[str, ...], *, force: bool = False, dry_run: bool = False,
                 retry_failed: bool = False, retry_ids: tuple[str, ...] = (), only_ids: tuple[str, ...] | None = None,
                 accept_identity: str | None = None, grace: float = 120.0,
                 sandbox_options: dict[str, Any] | None = None, now: Callable[[], float] = time.time,
                 **given: Any) -> None:
        self.manifest = manifest
        self.force = force
        self.dry_run = dry_run
        self.retry_failed = retry_failed
        self.retry_ids = tuple(retry_ids)
        # `retry`: dispatch only these tasks (the rest of the batch is left as it is).
        self.only_ids = None if only_ids is None else frozenset(only_ids)
        # `retry` of a folder/list batch runs its manifest.derived.yaml under the original identity.
        self.accept_identity = accept_identity
        self.grace = grace  # seconds running tasks get after the first Ctrl-C / SIGTERM / cancel
        self.sandbox_options = dict(sandbox_options or {})  # SandboxConfig fields for --sandbox
        self.now = now  # the wall clock (injectable: quota-day tests live through midnight Pacific)
        unknown = [k for k in given if settings_mod.canonical(k) is None]
        if unknown:
            raise UsageError(f"unknown run option(s): {', '.join(sorted(unknown))}")
        self.settings = {settings_mod.canonical(k): v for k, v in given.items()
                         if v is not None and not (isinstance(v, (list, tuple)) and not v)}

    def get(self, name: str, default: Any = None) -> Any:
        return self.settings.get(name, default)

    @property
    def sources(self) -> list[str]:
        return [self.manifest] if isinstance(self.manifest, str) else list(self.manifest)

    def __repr__(self) -> str:
        return f"RunOptions({self.manifest!r}, settings={self.settings!r})"


@dataclass
class RunResult:
    exit_code: int
    message: str
    journal: str
    output_root: str
    counts: dict[str, int] = field(default_factory=dict)
    cost_usd: float = 0.0  # the batch's whole spend, every run
    run_cost_usd: float = 0.0  # what this run spent
    display: str = "log"  # what --progress resolved to: how the CLI prints the last lines
