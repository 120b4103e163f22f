"""What crosses the process boundary between the manager and a worker.

The manager builds a :class:`TaskSpec` from a manifest job plus journal state, sends it
to a worker, and gets back a :class:`TaskResult`. While a task runs, the worker also
sends :class:`Event` tuples through a queue (step changes, finished uploads) so the
manager can journal them at once. Both are plain, picklable dataclasses; neither ever
holds an API key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class UploadRef:
    """A video the Files API holds for us (reused by retries until it expires)."""

    name: str  # "files/abc123"
    uri: str
    mime_type: str
    expires_at: str | None = None  # ISO-8601 UTC, from the API's expirationTime
    size_bytes: int | None = None
    source_sha256: str | None = None  # of the local file that was uploaded

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> UploadRef | None:
        if not d:
            return None
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


@dataclass(frozen=True)
class TaskSpec:
    """Everything a worker needs to turn one video into one output file."""

    task_id: str
    source: str  # absolute local path, or URL
    source_kind: str  # "local" | "youtube" | "url"
    title: str
    template: str  # template name
    params: dict[str, Any]  # template parameters from the manifest (defaults applied later)
    model: str
    output_path: str  # absolute, already checked to be inside output_root
    output_root: str
    output_format: str = "md"  # "md" | "json" | "html"
    attempt: int = 1
    templates_dirs: tuple[str, ...] = ()
    reuse_upload: UploadRef | None = None
    keep_uploads: bool = False
    max_duration: float | None = None  # seconds; longer videos are skipped
    backend: str = "gemini"  # "gemini" | "sandbox" (goes into the output's front matter)
    max_download_bytes: int = 2 * 1024**3
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskResult:
    """What a worker returns. ``ok`` False means ``error`` says why."""

    task_id: str
    ok: bool
    output_path: str | None = None
    sha256: str | None = None
    bytes_written: int | None = None
    usage: dict[str, int] = field(default_factory=dict)  # prompt_tokens, candidates_tokens, total_tokens
    model_version: str | None = None
    video_duration: float | None = None
    elapsed: float = 0.0
    upload: UploadRef | None = None
    upload_deleted: bool = False
    skipped_reason: str | None = None  # set when the task was skipped (e.g. too long)
    # error: {"error_class", "message", "retryable", "kind", + optional "retry_delay", "resets_at", "quota_id"}
    # kind: "transient" (retry later), "task" (fail this task), "fatal" (stop batch, exit 3),
    #       "quota_day" (pause batch until reset, exit 75), "disk_full" (pause batch, exit 75)
    error: dict[str, Any] | None = None
    api_calls: dict[str, int] = field(default_factory=dict)  # e.g. {"generate": 1, "upload": 1}


# Events: (kind, task_id, payload) put on the manager's queue by workers.
EVENT_STEP = "step"  # payload: {"step": "resolving"|"downloading"|"uploading"|"processing"|"generating"|"writing"}
EVENT_UPLOAD = "upload"  # payload: UploadRef.to_dict()
EVENT_USAGE = "usage"  # payload: {"model": str, "requests": int} one per generate call (RPD accounting)
Event = tuple[str, str, dict[str, Any]]
