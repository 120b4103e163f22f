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
# ``{ext}`` follows output_format (md/json/html); with the default format this is {stem}_{template}.md.
# ``{dir}/`` mirrors a folder job's subfolders (``a/x.mp4`` → ``a/x_summary_report.md``) and is
# empty for a video at the top of the folder or named directly, so those names (and job ids) are
# exactly what they were before ``{dir}`` existed.
DEFAULT_OUTPUT_PATTERN = "{dir}/{stem}_{template}.{ext}"
# What the default was before: a batch started with it keeps it (manifest._keep_flat_layout).
FLAT_OUTPUT_PATTERN = "{stem}_{template}.{ext}"
OUTPUT_FORMATS = ("md", "json", "html")
STATE_DIR = ".gsvr"  # OUTPUT_ROOT/.gsvr/: the default state folder (journal, lock, snapshot...)
DERIVED_MANIFEST = "manifest.derived.yaml"  # written next to the journal of a folder / list / videos batch
# A folder holding one of these is a manifest's folder, not a folder of videos (``run jobs/``).
MANIFEST_NAMES = ("manifest.yaml", "manifest.yml", "manifest.csv")


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth a warning) in a manifest, with where and how to fix it."""

    file: str
    line: int | None
    message: str
    hint: str | None = None
    severity: str = "error"  # "error" | "warning" (additive to the documented contract)
    # The local video this problem says is gone (not found, or a dangling link): a run forgives
    # it when the video's tasks completed earlier (gone.validate_for_run).
    gone: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        text = f"{where}: {'warning: ' if self.severity == 'warning' else ''}{self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


def origin_of(job: Any) -> tuple[str, int | None]:
    """``jobs/manifest.yaml:14`` → (file, 14); a job without a line → (file, None)."""
    head, sep, tail = str(job.origin).rpartition(":")
    return (head, int(tail)) if sep and tail.isdigit() else (str(job.origin), None)


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
    # Long videos: only the ``context:`` options this job (or ``defaults:``) set explicitly, already
    # validated (context.parse_context_options), e.g. {"strategy": "clips", "clip_minutes": 40.0};
    # None when it set none. Explicit keys only, so an unset option leaves the template's in force.
    context: dict | None = None


def new_job(*, job_id: str, source: str, source_kind: str, title: str, template: str, params: dict, model: str,
            output_path: str, output_format: str, max_duration: float | None, origin: str,
            context: dict | None = None) -> Job:
    """``Job(...)`` with the same fields, for the manifest builder, which makes one per video.

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__`` (~2.5 us for
    Job's twelve: a tenth of building a 10,000-job manifest); the instance dictionary takes them
    directly, in field order, as ``__init__`` would. Job has no ``__post_init__`` to skip.
    """
    job = object.__new__(Job)
    job.__dict__.update(job_id=job_id, source=source, source_kind=source_kind, title=title, template=template,
                        params=params, model=model, output_path=output_path, output_format=output_format,
                        max_duration=max_duration, origin=origin, context=context)
    return job


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
    # the journal a run of this manifest uses (--journal / settings.journal / OUTPUT_ROOT/.gsvr/journal.jsonl)
    journal: Path | None = None
    settings_lines: dict[str, int | None] = field(default_factory=dict)  # where each settings key was written


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
    # ``derived_from:`` of a manifest.derived.yaml: the batch it was written for (identity, journal)
    derived: dict[str, Any] | None = None
