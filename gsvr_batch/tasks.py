"""What crosses the process boundary between the manager and a worker.

The manager builds a :class:`TaskSpec` from a manifest job plus journal state and sends it to a
worker; the worker answers with a :class:`TaskResult`. While a task runs, the worker also sends
events ``(kind, task_id, payload)`` on the event channel (channels.py) so the manager can journal
them at once: the worker's pid, steps, finished uploads, each generate request (daily quota),
the context plan, each clip's partial lesson, and finally the result itself — so a result
survives even when the executor that carried the task was torn down (a sibling worker died).

Everything here is plain, picklable and JSON-ready; nothing ever holds an API key. Event
payloads are checked by :func:`check_event` before the manager trusts them: a malformed or
forged event is dropped, never fatal.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class UploadRef:
    """A video the Files API holds for us (reused by every task of the same video until it expires)."""

    name: str  # "files/abc123"
    uri: str
    mime_type: str
    expires_at: str | None = None  # ISO-8601 UTC, from the API's expirationTime
    size_bytes: int | None = None
    source_sha256: str | None = None  # of the local file that was uploaded
    source: str | None = None  # the local path it was read from (identity for the next lookup)
    source_size: int | None = None
    source_mtime_ns: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> UploadRef | None:
        if not d:
            return None
        return cls(**{k: v for k, v in d.items() if k in _UPLOAD_FIELDS})


_UPLOAD_FIELDS = frozenset(f.name for f in dataclasses.fields(UploadRef))


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
    attempt_id: str = ""  # nonce of this attempt: the output carries it (adoption after a crash)
    fingerprint: str = ""  # what the job asks for (Session.fingerprints): the output carries it too
    templates_dirs: tuple[str, ...] = ()
    reuse_upload: UploadRef | None = None  # a live upload of the same video, if the journal knows one
    # Live uploads of other files of the same size (a copy of this video under another name shares
    # their upload): the worker hashes its file anyway and reuses the one whose sha256 matches.
    same_size_uploads: tuple[UploadRef, ...] = ()
    max_duration: float | None = None  # seconds; longer videos are skipped
    backend: str = "gemini"  # "gemini" | "sandbox" (goes into the output's front matter)
    max_download_bytes: int = 2 * 1024**3
    download_dir: str | None = None  # where http(s) sources are downloaded (the state folder: cleaned after a crash)
    # Context strategy (long videos): what was journaled, what the model allows, what the user asked.
    plan: dict[str, Any] | None = None  # journaled context.Plan record of an earlier attempt
    partials: dict[str, dict[str, Any]] = field(default_factory=dict)  # clip → {path, sha256, …} already paid
    partials_dir: str | None = None  # where clip partials are written (state folder)
    context: str = "auto"  # auto | full | low | clips
    clip_minutes: float | None = None
    allow_low: bool = True
    fps: float | None = None  # frames a second sent (VideoMetadata.fps); None: the API's default, 1
    input_limit: int | None = None  # the model's input window (models.get), None: built-in table
    output_limit: int | None = None  # the model's output cap, for the one MAX_TOKENS retry
    tpm: float | None = None  # per-minute token quota: a request larger than it can never be admitted


@dataclass
class TaskResult:
    """What a worker returns. ``ok`` False means ``error`` (an ErrorRecord dict) says why."""

    task_id: str
    ok: bool
    attempt_id: str = ""
    output_path: str | None = None
    sha256: str | None = None
    bytes_written: int | None = None
    usage: dict[str, int] = field(default_factory=dict)  # of the answer that became the output
    billed: list[dict[str, Any]] = field(default_factory=list)  # usage of every paid answer not reported as a clip
    lost_calls: int = 0  # generate calls whose answer was lost after they may have been billed
    model_version: str | None = None
    video_duration: float | None = None
    elapsed: float = 0.0
    upload: UploadRef | None = None
    plan: dict[str, Any] | None = None
    truncated: bool = False
    skipped_reason: str | None = None  # set when the task was skipped (e.g. too long)
    error: dict[str, Any] | None = None  # errors.ErrorRecord.to_dict()
    api_calls: dict[str, int] = field(default_factory=dict)  # e.g. {"generate": 1, "upload": 1}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["upload"] = self.upload.to_dict() if self.upload else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskResult:
        known = {k: v for k, v in d.items() if k in _RESULT_FIELDS}
        known["upload"] = UploadRef.from_dict(known.get("upload"))
        return cls(**known)


_RESULT_FIELDS = frozenset(f.name for f in dataclasses.fields(TaskResult))

# Events: (kind, task_id, payload). Every payload also carries "attempt_id".
EVENT_STARTED = "started"  # {"pid": int, "ppid": int} (the worker's and its parent's)
EVENT_STEP = "step"  # {"step": "resolving"|"downloading"|"uploading"|"processing"|"generating"|"merging"|"writing"}
EVENT_UPLOAD = "upload"  # UploadRef.to_dict()
EVENT_REQUEST = "request"  # {"model": str, "youtube_seconds": float?} one per generate request (daily quota)
EVENT_PLAN = "plan"  # {"plan": Plan record, "duration": float | None}
EVENT_PARTIAL = "partial"  # {"clip", "start", "end", "path", "sha256", "usage", "model_version"}
EVENT_RESULT = "result"  # TaskResult.to_dict()
Event = tuple[str, str, dict[str, Any]]

_NUM = (int, float)
_SCHEMAS: dict[str, dict[str, tuple[type, ...]]] = {
    EVENT_STARTED: {"pid": (int,)},
    EVENT_STEP: {"step": (str,)},
    EVENT_UPLOAD: {"name": (str,), "uri": (str,), "mime_type": (str,)},
    EVENT_REQUEST: {"model": (str,)},
    EVENT_PLAN: {"plan": (dict,)},
    EVENT_PARTIAL: {"clip": (int,), "start": _NUM, "end": _NUM, "path": (str,), "sha256": (str,), "usage": (dict,)},
    EVENT_RESULT: {"task_id": (str,), "ok": (bool,)},
}
_STEPS = frozenset({"resolving", "downloading", "uploading", "processing", "generating", "merging", "writing",
                    "queued"})


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 10**9


def _usage_ok(usage: Any) -> bool:
    """Token counts are small non-negative ints (a forged count must not fake a bill)."""
    if not isinstance(usage, dict):
        return False
    for key, value in usage.items():
        if key.endswith("_tokens_details"):  # prompt_tokens_details, cache_tokens_details, …
            if not isinstance(value, list) or not all(isinstance(d, dict) and _count(d.get("token_count", 0))
                                                      for d in value):
                return False
        elif not _count(value):
            return False
    return True


def check_event(event: Any) -> Event | None:
    """The event if its shape is what a worker sends, else None (the caller logs and drops it).

    Checked: the kind, the types of every required field, numbers that must be small (a forged
    ``youtube_seconds`` of a million must not spend a day's quota), token counts that are ints.
    """
    if not (isinstance(event, (list, tuple)) and len(event) == 3):
        return None
    kind, task_id, payload = event
    if not isinstance(kind, str) or not isinstance(task_id, str) or not isinstance(payload, dict):
        return None
    schema = _SCHEMAS.get(kind)
    if schema is None or not isinstance(payload.get("attempt_id", ""), str):
        return None
    for key, types in schema.items():
        value = payload.get(key)
        if not isinstance(value, types) or (types == _NUM and isinstance(value, bool)):
            return None
    if kind == EVENT_STEP and payload["step"] not in _STEPS:
        return None
    if kind == EVENT_STARTED:
        if not 1 < payload["pid"] < 2**22:  # the manager signals this pid later
            return None
        ppid = payload.get("ppid")
        if ppid is not None and (type(ppid) is not int or not 1 < ppid < 2**22):
            payload = {k: v for k, v in payload.items() if k != "ppid"}  # the pid still counts
    if kind == EVENT_REQUEST:
        yt = payload.get("youtube_seconds", 0)
        if isinstance(yt, bool) or not isinstance(yt, _NUM) or not 0 <= yt <= 24 * 3600:
            return None
    if kind in (EVENT_PARTIAL, EVENT_RESULT):
        if not _usage_ok(payload.get("usage") or {}):
            return None
        if kind == EVENT_RESULT and not all(_usage_ok(u) for u in payload.get("billed") or []):
            return None
    if kind == EVENT_RESULT and payload.get("task_id") != task_id:
        return None
    return kind, task_id, payload
