"""What counts as a video, and what kind of source a manifest entry names.

One place for the extension → MIME type table (the manifest scans folders with it,
the pipeline uploads with it), the cheap content sniff that catches a text file renamed
``.mp4`` before it costs an upload, and YouTube URL normalisation.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

# Gemini's documented video MIME types (ai.google.dev "Video understanding": video/mp4,
# video/mpeg, video/mov, video/avi, video/x-flv, video/mpg, video/webm, video/wmv,
# video/3gpp). Matroska is not on that list; it is accepted because WebM is a Matroska
# profile and the Files API processes both, but it is the first suspect if uploads fail.
VIDEO_MIME_TYPES: dict[str, str] = {
    ".mp4": "video/mp4",
    ".mpeg": "video/mpeg",
    ".mpg": "video/mpg",
    ".mov": "video/mov",
    ".avi": "video/avi",
    ".flv": "video/x-flv",
    ".webm": "video/webm",
    ".wmv": "video/wmv",
    ".3gp": "video/3gpp",
    ".3gpp": "video/3gpp",
    ".mkv": "video/x-matroska",
}
VIDEO_EXTENSIONS: tuple[str, ...] = tuple(VIDEO_MIME_TYPES)

# Files API limit per file (DESIGN: 2 GB per file).
MAX_VIDEO_BYTES = 2 * 1024**3

_SNIFF_BYTES = 64


def mime_type_for(path: str | os.PathLike[str]) -> str | None:
    """MIME type for a video file name, or None if the extension is not a supported video."""
    return VIDEO_MIME_TYPES.get(Path(path).suffix.lower())


def is_video_name(path: str | os.PathLike[str]) -> bool:
    return mime_type_for(path) is not None


def sniff_container(head: bytes) -> str | None:
    """Name the container the first bytes of a file belong to, or None if none matches.

    Only magic numbers, no parsing: enough to tell a real video from a renamed text file,
    an HTML error page saved as .mp4, or an empty download.
    """
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return "iso-bmff"  # mp4, mov, 3gp
    if len(head) >= 8 and head[4:8] in (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"):
        return "quicktime"  # old QuickTime files without an ftyp box
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "ebml"  # mkv, webm
    if len(head) >= 12 and head.startswith(b"RIFF") and head[8:12] in (b"AVI ", b"AVIX"):
        return "avi"
    if head.startswith(b"FLV"):
        return "flv"
    if head.startswith(b"\x00\x00\x01\xba") or head.startswith(b"\x00\x00\x01\xb3"):
        return "mpeg-ps"  # program stream / raw video elementary stream
    if len(head) >= 189 and head[0] == 0x47 and head[188] == 0x47:
        return "mpeg-ts"
    if head.startswith(bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")):
        return "asf"  # wmv
    return None


def read_head(path: str | os.PathLike[str], size: int = 192) -> bytes:
    """First ``size`` bytes of a file (never reads more, so a sparse 3 GB file costs nothing)."""
    with open(path, "rb") as fh:
        return fh.read(size)


# --- sources ----------------------------------------------------------------------------

_YT_ID = re.compile(r"^[A-Za-z0-9_-]{11}$")
_YT_HOSTS = {"youtube.com", "www.youtube.com", "m.youtube.com", "music.youtube.com", "youtube-nocookie.com",
             "www.youtube-nocookie.com"}


def youtube_video_id(url: str) -> str | None:
    """The 11-character video id of a YouTube URL (watch, youtu.be, shorts, embed, live, m.), else None."""
    text = url.strip()
    if not re.match(r"^[a-z][a-z0-9+.-]*://", text, re.I):
        text = "https://" + text
    try:
        parts = urlsplit(text)
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    segs = [s for s in parts.path.split("/") if s]
    candidate: str | None = None
    if host in ("youtu.be", "www.youtu.be"):
        candidate = segs[0] if segs else None
    elif host in _YT_HOSTS:
        if parts.path.rstrip("/") == "/watch":
            values = parse_qs(parts.query).get("v")
            candidate = values[0] if values else None
        elif len(segs) >= 2 and segs[0] in ("shorts", "embed", "live", "v", "e"):
            candidate = segs[1]
    if candidate and _YT_ID.match(candidate):
        return candidate
    return None


def youtube_watch_url(video_id: str) -> str:
    return f"https://www.youtube.com/watch?v={video_id}"


def is_url(text: str) -> bool:
    return bool(re.match(r"^https?://", text.strip(), re.I))


def normalise_url(url: str) -> str:
    """Lower-case scheme and host, drop the fragment; the rest is kept as written."""
    parts = urlsplit(url.strip())
    netloc = parts.netloc
    if parts.hostname:
        # keep userinfo/port as written, lower-case only the host part
        netloc = netloc.replace(parts.hostname, parts.hostname.lower()) if parts.hostname in netloc else netloc.lower()
    return urlunsplit((parts.scheme.lower(), netloc, parts.path or "/", parts.query, ""))


def classify_source(text: str) -> tuple[str, str]:
    """``(kind, normalised)`` for a source string: kind is "youtube", "url" or "local".

    Local paths are returned as written (the manifest resolves them against its folder).
    A YouTube link without a scheme ("youtu.be/ID") is recognised too, since people paste those.
    """
    s = text.strip()
    vid = youtube_video_id(s) if (is_url(s) or re.match(r"^(www\.|m\.)?(youtube\.com|youtu\.be)/", s, re.I)) else None
    if vid:
        return "youtube", youtube_watch_url(vid)
    if is_url(s):
        return "url", normalise_url(s)
    return "local", s
