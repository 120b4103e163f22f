"""Data shapes of a manifest (the contract in docs/ARCHITECTURE.md), shared by the parsers.

``manifest.py`` re-exports everything here; import from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_TEMPLATE = "comprehensive_lesson"
DEFAULT_MODEL = "gemini-2.5-flash"
DEFAULT_OUTPUT_DIR = "output"
# ``{ext}`` follows output_format (md/json/html); with the default format this is {stem}_{template}.md
DEFAULT_OUTPUT_PATTERN = "{stem}_{template}.{ext}"
OUTPUT_FORMATS = ("md", "json", "html")


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth a warning) in a manifest, with where and how to fix it."""

    file: str
    line: int | None
    message: str
    hint: str | None = None
    severity: str = "error"  # "error" | "warning" (additive to the documented contract)

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        text = f"{where}: {'warning: ' if self.severity == 'warning' else ''}{self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


@dataclass(frozen=True)
class Job:
    job_id: str  # stable: sha256 of source identity + template + output (relative to output root)
    source: str  # absolute local path (resolved against the manifest's folder) or URL
    source_kind: str  # "local" | "youtube" | "url"
    title: str
    template: str
    params: dict
    model: str
    output_path: str  # absolute, inside output_root
    output_format: str  # "md" | "json" | "html"
    max_duration: float | None
    origin: str  # "jobs/manifest.yaml:14" — where the job was defined (file:line)


# The settings type is generated from the one settings table (gsvr_batch/settings.py).
from .settings import Settings  # noqa: E402  (re-exported: manifest.Settings)


@dataclass
class Manifest:
    path: Path | None
    base_dir: Path
    output_root: Path
    jobs: list[Job]
    settings: Settings
    templates_dirs: list[Path]
    identity: str
    content_hash: str
    warnings: list[Problem] = field(default_factory=list)
    # defaults used to build the jobs (kept so a derived manifest can be written back as YAML)
    defaults: dict[str, Any] = field(default_factory=dict)
    date: str = ""  # the {date} used in output names (YYYY-MM-DD)


@dataclass
class RawJob:
    """One job entry as written, before defaults, expansion and checks."""

    fields: dict[str, Any]
    file: str  # display name of the file that defined it
    line: int | None
    base_dir: Path  # folder its relative paths resolve against
    field_lines: dict[str, int | None] = field(default_factory=dict)

    def line_of(self, key: str) -> int | None:
        return self.field_lines.get(key) or self.line


@dataclass
class RawManifest:
    """What a parser hands to the builder: sections as plain dicts plus line numbers."""

    file: str
    base_dir: Path
    defaults: dict[str, Any] = field(default_factory=dict)
    defaults_lines: dict[str, int | None] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    settings_lines: dict[str, int | None] = field(default_factory=dict)
    jobs: list[RawJob] = field(default_factory=list)
