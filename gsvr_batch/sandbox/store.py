"""Files API state: resumable upload sessions and stored files, bytes kept on disk.

A file's state is computed from the clock (created + ``processing_delay`` → ACTIVE) rather
than by timers, so an injected clock moves files along and nothing needs cleaning up.
Callers hold the server lock for the dict operations; chunk bytes are written outside it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

EXPIRY = 48 * 3600.0
FAIL_PROCESSING = "sandbox-fail-processing"
NEVER_ACTIVE = "sandbox-never-active"


def rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_id() -> str:
    # Lowercase alphanumerics only: the SDK extracts ids from URIs with ``[a-z0-9]+``.
    return secrets.token_hex(6)


@dataclass
class FileRecord:
    file_id: str
    display_name: str | None
    mime_type: str
    size_bytes: int
    path: Path
    sha256_hex: str
    create_time: float
    source: str = "UPLOADED"  # or GENERATED (batch results, downloadable)
    duration: float | None = None  # probed lazily; -1.0 means "tried, not a video"
    has_audio: bool | None = None  # probed with the duration: does the file have a sound track?

    @property
    def name(self) -> str:
        return f"files/{self.file_id}"

    def trigger_text(self) -> str:
        return f"{self.display_name or ''} {self.path.name}"

    def state(self, now: float, processing_delay: float) -> str:
        if self.source == "GENERATED":
            return "ACTIVE"
        if NEVER_ACTIVE in self.trigger_text():
            return "PROCESSING"
        if now < self.create_time + processing_delay:
            return "PROCESSING"
        if FAIL_PROCESSING in self.trigger_text():
            return "FAILED"
        return "ACTIVE"

    def to_json(self, base_url: str, now: float, processing_delay: float) -> dict:
        state = self.state(now, processing_delay)
        update = self.create_time if state == "PROCESSING" else self.create_time + processing_delay
        d = {
            "name": self.name,
            "mimeType": self.mime_type,
            "sizeBytes": str(self.size_bytes),
            "createTime": rfc3339(self.create_time),
            "updateTime": rfc3339(update),
            "expirationTime": rfc3339(self.create_time + EXPIRY),
            # The real API sends base64 of the lowercase hex digest (not of the raw digest).
            "sha256Hash": base64.b64encode(self.sha256_hex.encode()).decode(),
            "uri": f"{base_url}/v1beta/files/{self.file_id}",
            "state": state,
            "source": self.source,
        }
        if self.display_name:
            d["displayName"] = self.display_name
        if self.source == "GENERATED":
            d["downloadUri"] = f"{base_url}/download/v1beta/files/{self.file_id}:download?alt=media"
        if state == "FAILED":
            d["error"] = {"code": 3, "message": "The video could not be processed (sandbox-fail-processing)."}
        return d


@dataclass
class UploadSession:
    upload_id: str
    file_id: str
    display_name: str | None
    mime_type: str
    size_bytes: int
    path: Path
    received: int = 0
    hasher: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    busy: bool = False  # a chunk is being written; a second concurrent chunk is refused


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, FileRecord] = {}
        self.sessions: dict[str, UploadSession] = {}
        # upload id -> file id of finalized sessions: a late chunk on one gets FAILED_PRECONDITION.
        self.finalized: dict[str, str] = {}

    def start_upload(self, display_name: str | None, mime_type: str, size_bytes: int,
                     file_id: str | None = None) -> UploadSession:
        fid = file_id or new_id()
        upload_id = secrets.token_hex(12)
        path = self.root / f"{fid}.bin"
        path.touch()
        s = UploadSession(upload_id, fid, display_name, mime_type, size_bytes, path)
        self.sessions[upload_id] = s
        return s

    def finish_upload(self, s: UploadSession, now: float) -> FileRecord:
        del self.sessions[s.upload_id]
        self.finalized[s.upload_id] = s.file_id
        rec = FileRecord(s.file_id, s.display_name, s.mime_type, s.received, s.path,
                         s.hasher.hexdigest(), now)
        self.files[s.file_id] = rec
        return rec

    def add_generated(self, data: bytes, display_name: str, mime_type: str, now: float) -> FileRecord:
        fid = new_id()
        path = self.root / f"{fid}.bin"
        path.write_bytes(data)
        rec = FileRecord(fid, display_name, mime_type, len(data), path, hashlib.sha256(data).hexdigest(),
                         now, source="GENERATED")
        self.files[fid] = rec
        return rec

    def delete(self, file_id: str) -> bool:
        rec = self.files.pop(file_id, None)
        if rec is None:
            return False
        try:
            os.unlink(rec.path)
        except OSError:
            pass  # already gone; the record is what matters
        return True

    def probe_duration(self, rec: FileRecord) -> float | None:
        """Real duration in seconds via PyAV, cached; None when it is not a readable video."""
        if rec.duration is None:
            rec.duration, rec.has_audio = _probe(rec.path)
        return rec.duration if rec.duration and rec.duration > 0 else None


def _probe(path: Path) -> tuple[float, bool]:
    """(duration, has an audio stream); (-1.0, False) when PyAV cannot read it as media."""
    try:
        import av

        with av.open(str(path)) as container:
            audio = any(s.type == "audio" for s in container.streams)
            if container.duration:
                return container.duration / av.time_base, audio
            streams = [s for s in container.streams if s.duration and s.time_base]
            if streams:
                return max(float(s.duration * s.time_base) for s in streams), audio
    except Exception:  # noqa: BLE001 - anything PyAV cannot read is "not a video" here
        pass
    return -1.0, False
