"""Turn a task's source into something Gemini can read: a checked local video or a YouTube URL.

http(s) links are streamed to a temporary folder (size-capped, disk checked first) and then
handled exactly like a local file; the folder is removed whatever happens, because
:func:`resolve_input` is a context manager. YouTube links are not downloaded: Gemini reads
them itself (``file_data.file_uri`` = the URL).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import unquote, urlsplit

from . import fsutil, media
from .errors import DiskFull, InputError, NetworkError, ServerError

log = logging.getLogger("gsvr_batch.inputs")

# Room left on the temp disk after a download, so the system keeps working.
DOWNLOAD_DISK_MARGIN = 64 * 1024**2
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ResolvedInput:
    kind: str  # "local" (a file on disk, maybe downloaded) | "youtube"
    display_name: str  # file name sent to the Files API (the sandbox's fault triggers read it)
    path: str | None = None
    uri: str | None = None  # the YouTube URL
    mime_type: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    duration: float | None = None  # seconds; None when unknown (YouTube, unprobeable file)
    downloaded: bool = False


def check_local_video(path: str | os.PathLike[str], max_bytes: int = media.MAX_VIDEO_BYTES) -> tuple[str, int]:
    """``(mime_type, size)`` of a usable local video, or :class:`InputError` saying why not."""
    p = Path(path)
    mime = media.mime_type_for(p)
    if mime is None:
        raise InputError(
            f"{p}: unsupported file type {p.suffix or '(no extension)'!r}; "
            f"supported: {', '.join(media.VIDEO_EXTENSIONS)}"
        )
    try:
        st = p.stat()
    except FileNotFoundError as exc:
        raise InputError(f"{p}: file not found") from exc
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror})") from exc
    if not p.is_file():
        raise InputError(f"{p}: not a regular file")
    if st.st_size == 0:
        raise InputError(f"{p}: file is empty")
    if st.st_size > max_bytes:
        raise InputError(
            f"{p}: file is {st.st_size / 1024**3:.2f} GB, over the Files API limit of {max_bytes / 1024**3:.0f} GB"
        )
    try:
        head = media.read_head(p)
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc.strerror})") from exc
    if media.sniff_container(head) is None:
        raise InputError(f"{p}: does not look like a video (unknown content; a renamed or truncated file?)")
    return mime, st.st_size


def probe_duration(path: str | os.PathLike[str]) -> float | None:
    """Duration in seconds from the container (PyAV), or None when it cannot be read."""
    try:
        import av

        with av.open(str(path)) as container:
            if container.duration is not None:
                return container.duration / 1e6
            streams = [s for s in container.streams if s.duration is not None and s.time_base is not None]
            if streams:
                s = streams[0]
                return float(s.duration * s.time_base)
    except Exception as exc:  # PyAV raises many kinds (InvalidDataError, OSError...)
        log.debug("cannot probe duration of %s: %s", path, exc)
    return None


def _url_file_name(url: str, content_type: str | None) -> str:
    name = Path(unquote(urlsplit(url).path)).name or "download"
    name = "".join(c for c in name if c not in '/\\\0') or "download"
    if media.mime_type_for(name) is None and content_type:
        ct = content_type.split(";")[0].strip().lower()
        for ext, mime in media.VIDEO_MIME_TYPES.items():
            if mime == ct or (ct == "video/quicktime" and ext == ".mov"):
                return Path(name).stem + ext
    return name


def download(url: str, dest_dir: str, *, max_bytes: int, timeout: float) -> str:
    """Stream ``url`` into ``dest_dir``; return the file path. Errors are ours, never httpx's."""
    try:
        import httpx2 as httpx  # the SDK's preferred HTTP client
    except ImportError:  # pragma: no cover - depends on the SDK's dependencies
        import httpx  # type: ignore[no-redef]

    from .gemini import classify

    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=timeout) as resp:
            if resp.status_code >= 400:
                msg = f"download of {url} failed: HTTP {resp.status_code} {resp.reason_phrase}"
                if resp.status_code in (408, 429) or resp.status_code >= 500:
                    raise ServerError(msg)
                raise InputError(msg)
            length = resp.headers.get("content-length")
            expected = int(length) if length and length.isdigit() else None
            if expected is not None and expected > max_bytes:
                raise InputError(f"download of {url} is {expected} bytes, over the limit of {max_bytes} bytes")
            free = fsutil.free_bytes(dest_dir)
            need = (expected or 0) + DOWNLOAD_DISK_MARGIN
            if free < need:
                raise DiskFull(f"not enough free space in {dest_dir} to download {url}: {free} bytes free, {need} needed")
            target = Path(dest_dir) / _url_file_name(str(resp.url), resp.headers.get("content-type"))
            written = 0
            with open(target, "wb") as fh:
                for block in resp.iter_bytes(_CHUNK):
                    written += len(block)
                    if written > max_bytes:
                        raise InputError(f"download of {url} exceeded the limit of {max_bytes} bytes")
                    fh.write(block)
            return str(target)
    except (InputError, ServerError, DiskFull, NetworkError):
        raise
    except Exception as exc:
        err = classify(exc)
        raise err from exc


@contextlib.contextmanager
def resolve_input(
    source: str,
    source_kind: str,
    *,
    max_download_bytes: int = media.MAX_VIDEO_BYTES,
    timeout: float = 600,
    on_step: Callable[[str], None] | None = None,
    temp_root: str | None = None,
) -> Iterator[ResolvedInput]:
    """Yield a :class:`ResolvedInput`; temporary downloads are removed on exit, whatever happens."""
    if source_kind == "youtube":
        yield ResolvedInput(kind="youtube", display_name=source, uri=source)
        return
    tmp_dir: str | None = None
    try:
        path = source
        downloaded = False
        if source_kind == "url":
            if on_step:
                on_step("downloading")
            if temp_root:
                os.makedirs(temp_root, exist_ok=True)
            # The pid in the name lets the next run remove what a killed worker left (reconcile).
            tmp_dir = tempfile.mkdtemp(prefix=f"gsvr-dl-{os.getpid()}-", dir=temp_root)
            path = download(source, tmp_dir, max_bytes=min(max_download_bytes, media.MAX_VIDEO_BYTES), timeout=timeout)
            downloaded = True
        elif source_kind != "local":
            raise InputError(f"unknown source kind {source_kind!r} for {source}")
        mime, size = check_local_video(path)
        yield ResolvedInput(
            kind="local",
            display_name=Path(path).name,
            path=str(path),
            mime_type=mime,
            size_bytes=size,
            sha256=fsutil.sha256_file(path),
            duration=probe_duration(path),
            downloaded=downloaded,
        )
    finally:
        if tmp_dir is not None:
            shutil.rmtree(tmp_dir, ignore_errors=True)
