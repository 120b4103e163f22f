"""generateContent / countTokens semantics shared by the online endpoint and batch jobs.

``prepare`` validates a request body the way the real API does (files must exist and be
ACTIVE, ``videoMetadata`` offsets must fall inside the video) and works out the prompt, each
media part's counted stretch and tokens; ``respond`` builds the GenerateContentResponse JSON.
Neither does I/O on the socket, neither sleeps.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import secrets
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlparse

from . import lesson, rpc
from .models import ModelInfo, too_many_tokens
from .store import FileStore

BLOCK = "sandbox-block"
BLOCK_PROMPT = "sandbox-block-prompt"
HANG = "sandbox-hang"
_YOUTUBE_HOSTS = {"youtube.com", "www.youtube.com", "m.youtube.com", "youtu.be", "music.youtube.com"}
_FILE_ID = re.compile(r"files/([a-z0-9][a-z0-9-]*)")
_DURATION = re.compile(r"-?\d+(\.\d{0,9})?s")
LOW = "MEDIA_RESOLUTION_LOW"
RESOLUTIONS = ("MEDIA_RESOLUTION_UNSPECIFIED", LOW, "MEDIA_RESOLUTION_MEDIUM", "MEDIA_RESOLUTION_HIGH")
MAX_FPS = 24.0  # videoMetadata.fps must be in (0, 24]
_SAFETY = [
    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True},
    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
]


@dataclass
class Media:
    """One media part of a request and what it costs in tokens."""

    source: str  # the fileUri / YouTube URL, or "inline:<bytes>"
    key: str  # what identifies the media for the implicit cache ("files/x", "youtube:<id>", …)
    youtube: bool
    duration: float | None  # measured (file) or declared (YouTube config) seconds; None: unknown
    has_audio: bool
    start: float = 0.0  # the counted stretch (videoMetadata offsets, clamped to the video)
    end: float = 0.0
    clipped: bool = False  # videoMetadata gave an offset
    fps: float = lesson.DEFAULT_FPS
    low_res: bool = False
    resolution: str | None = None  # as requested (part level, else generationConfig)
    video_tokens: int = 0
    audio_tokens: int = 0

    @property
    def length(self) -> float:
        return self.duration if self.duration else lesson.ASSUMED_DURATION

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)

    @property
    def tokens(self) -> int:
        return self.video_tokens + self.audio_tokens

    @property
    def clip(self) -> list[float] | None:
        return [self.start, self.end] if self.clipped else None

    def cache_key(self) -> tuple:
        """Two requests share a cached prefix when this (and the model) is the same."""
        return (self.key, self.low_res, round(self.start, 3), round(self.end, 3), self.fps)

    def span(self) -> lesson.Span:
        kind = "measured" if self.duration and not self.youtube else ("declared" if self.duration else "assumed")
        return lesson.Span(self.start, self.end, self.length, kind)


@dataclass
class Prepared:
    model: str
    text: str = ""
    media: list[Media] = field(default_factory=list)
    file_names: list[str] = field(default_factory=list)
    display_names: list[str] = field(default_factory=list)
    resolution: str | None = None  # generationConfig.mediaResolution
    max_tokens: int | None = None
    usage: lesson.Usage | None = None

    @property
    def sources(self) -> list[str]:
        return [m.source for m in self.media]

    @property
    def trigger_text(self) -> str:
        return " ".join([self.text, *self.sources, *self.display_names])

    @property
    def merge(self) -> bool:
        """A text-only request (e.g. one that merges partial lessons)."""
        return not self.media

    @property
    def youtube(self) -> bool:
        return any(m.youtube for m in self.media)

    @property
    def youtube_seconds(self) -> float:
        return sum(m.seconds for m in self.media if m.youtube)

    def span(self) -> lesson.Span | None:
        """The stretch the answer talks about: the first media part's, else the prompt's timestamps."""
        if self.media:
            return self.media[0].span()
        return lesson.merge_span(self.text)

    def log_fields(self) -> dict:
        """What the request log records about the request's media (see the package docstring)."""
        first = self.media[0] if self.media else None
        return {
            "media_resolution": first.resolution if first else self.resolution,
            "clip": first.clip if first else None,
            "fps": first.fps if first else None,
            "youtube": self.youtube,
            "merge": self.merge,
        }


def is_youtube(uri: str) -> bool:
    try:
        return (urlparse(uri).hostname or "").lower() in _YOUTUBE_HOSTS
    except ValueError:
        return False


def youtube_id(uri: str) -> str | None:
    """The video id of a YouTube link (watch?v=, youtu.be/, /shorts/, /embed/, /live/), or None."""
    try:
        u = urlparse(uri)
    except ValueError:
        return None
    host = (u.hostname or "").lower()
    if host == "youtu.be":
        vid = u.path.strip("/").split("/", 1)[0]
        return vid or None
    vid = (parse_qs(u.query).get("v") or [""])[0]
    if vid:
        return vid
    m = re.match(r"/(?:shorts|embed|live|v)/([^/?#]+)", u.path)
    return m.group(1) if m else None


def _probe_bytes(data: bytes) -> tuple[float | None, bool]:
    """(duration, has an audio track) of inline media; (None, True) when unreadable."""
    try:
        import av

        with av.open(io.BytesIO(data)) as c:
            audio = any(s.type == "audio" for s in c.streams)
            return (c.duration / av.time_base if c.duration else None), audio
    except Exception:  # noqa: BLE001 - unreadable inline media counts as "unknown duration"
        return None, True


def parse_duration(value: object, where: str) -> float:
    """A protobuf Duration in JSON (``"1200s"``, ``"1200.5s"``) or ``{seconds, nanos}``."""
    if isinstance(value, dict):
        try:
            return float(value.get("seconds") or 0) + float(value.get("nanos") or 0) / 1e9
        except (TypeError, ValueError):
            pass
    elif isinstance(value, str) and _DURATION.fullmatch(value.strip()):
        return float(value.strip()[:-1])
    raise rpc.bad_request(
        f"Invalid value at '{where}' (type.googleapis.com/google.protobuf.Duration), "
        f"Field '{where.rsplit('.', 1)[-1]}', Illegal duration format; duration must end with 's': {value!r}")


def _resolution(value: object, where: str) -> str | None:
    if value in (None, ""):
        return None
    if value not in RESOLUTIONS:
        raise rpc.bad_request(f"Invalid value at '{where}' (type.googleapis.com/google.ai.generativelanguage."
                              f"v1beta.GenerationConfig.MediaResolution), {json.dumps(value)}")
    return str(value)


def prepare(model: str, body: dict, store: FileStore, now: float, processing_delay: float, *,
            youtube_durations: dict[str, float] | None = None) -> Prepared:
    """Check a GenerateContentRequest body; raises rpc.ApiError like the real API would."""
    if not isinstance(body, dict):
        raise rpc.bad_request("Invalid JSON payload received.")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise rpc.bad_request("* GenerateContentRequest.contents: contents is not specified\n")
    prep = Prepared(model=model)
    gen = body.get("generationConfig") or body.get("generation_config") or {}
    if not isinstance(gen, dict):
        raise rpc.bad_request("Invalid value at 'generation_config': expected an object")
    prep.resolution = _resolution(gen.get("mediaResolution") or gen.get("media_resolution"),
                                  "generation_config.media_resolution")
    max_tokens = gen.get("maxOutputTokens", gen.get("max_output_tokens"))
    if max_tokens is not None:
        prep.max_tokens = int(max_tokens)
    texts: list[str] = []
    system = body.get("systemInstruction") or body.get("system_instruction")
    all_contents = list(contents) + ([system] if isinstance(system, dict) else [])
    for ci, content in enumerate(all_contents):
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list):
            raise rpc.bad_request("* GenerateContentRequest.contents.parts: contents.parts must not be empty.\n")
        for pi, part in enumerate(parts):
            if not isinstance(part, dict):
                continue
            where = f"contents[{ci}].parts[{pi}]"
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            fd = part.get("fileData") or part.get("file_data")
            inline = part.get("inlineData") or part.get("inline_data")
            media: Media | None = None
            if isinstance(fd, dict):
                media = _file_media(prep, str(fd.get("fileUri") or fd.get("file_uri") or ""), store, now,
                                    processing_delay, youtube_durations)
            elif isinstance(inline, dict) and inline.get("data"):
                try:
                    raw = base64.b64decode(inline["data"])
                except (ValueError, TypeError) as exc:
                    raise rpc.bad_request("Invalid value at 'contents.parts.inline_data.data' (TYPE_BYTES)") from exc
                duration, audio = _probe_bytes(raw)
                media = Media(f"inline:{len(raw)}", "inline:" + hashlib.sha256(raw).hexdigest(), False,
                              duration, audio)
            if media is not None:
                part_res = part.get("mediaResolution") or part.get("media_resolution")
                level = part_res.get("level") if isinstance(part_res, dict) else part_res
                media.resolution = _resolution(level, f"{where}.media_resolution") or prep.resolution
                media.low_res = media.resolution == LOW
                _clip(media, part.get("videoMetadata") or part.get("video_metadata"), f"{where}.video_metadata")
                media.video_tokens, media.audio_tokens = lesson.video_tokens(
                    media.seconds, fps=media.fps, low_resolution=media.low_res, audio=media.has_audio)
                prep.media.append(media)
    prep.text = "\n".join(texts)
    prep.usage = lesson.Usage(text_tokens=lesson.text_tokens(prep.text),
                              video_tokens=sum(m.video_tokens for m in prep.media),
                              audio_tokens=sum(m.audio_tokens for m in prep.media))
    return prep


def _clip(media: Media, meta: object, where: str) -> None:
    """Apply ``videoMetadata`` (start/end offsets, fps) to a media part, checking it like the API."""
    media.start, media.end = 0.0, media.length
    if not isinstance(meta, dict):
        return
    fps = meta.get("fps")
    if fps is not None:
        try:
            fps = float(fps)
        except (TypeError, ValueError):
            fps = -1.0
        if not 0 < fps <= MAX_FPS:
            raise rpc.bad_request(f"Invalid value at '{where}.fps': fps must be greater than 0 and at most "
                                  f"{MAX_FPS:g}, got {meta.get('fps')!r}.")
        media.fps = fps
    raw_start = meta.get("startOffset", meta.get("start_offset"))
    raw_end = meta.get("endOffset", meta.get("end_offset"))
    if raw_start is None and raw_end is None:
        return
    media.clipped = True
    start = parse_duration(raw_start, f"{where}.start_offset") if raw_start is not None else 0.0
    end = parse_duration(raw_end, f"{where}.end_offset") if raw_end is not None else media.length
    if start < 0 or end < 0:
        raise rpc.bad_request(f"Invalid video metadata at '{where}': offsets must not be negative.")
    if start >= media.length:
        raise rpc.bad_request(
            f"Invalid video metadata at '{where}': start_offset ({start:g}s) is beyond the end of the "
            f"video ({media.length:g}s).")
    end = min(end, media.length)  # an end past the video means "to the end"
    if end <= start:
        raise rpc.bad_request(
            f"Invalid video metadata at '{where}': end_offset ({end:g}s) must be after start_offset ({start:g}s).")
    media.start, media.end = start, end


def _file_media(prep: Prepared, uri: str, store: FileStore, now: float, processing_delay: float,
                youtube_durations: dict[str, float] | None) -> Media:
    if is_youtube(uri):
        vid = youtube_id(uri)
        declared = (youtube_durations or {}).get(vid or "")
        # Offline the length of a YouTube video is unknown unless the config declares it.
        return Media(uri, f"youtube:{vid or uri}", True, float(declared) if declared else None, True)
    m = _FILE_ID.search(uri)
    if not m:
        raise rpc.bad_request(f"Unsupported file uri: {uri}")
    file_id = m.group(1)
    rec = store.files.get(file_id)
    if rec is None:
        raise rpc.file_not_found(file_id)
    if rec.state(now, processing_delay) != "ACTIVE":
        raise rpc.file_not_active(file_id)
    duration = store.probe_duration(rec)
    prep.file_names.append(rec.name)
    if rec.display_name:
        prep.display_names.append(rec.display_name)
    # Something PyAV cannot read is counted as an assumed-length video with sound.
    return Media(uri, rec.name, False, duration, bool(rec.has_audio) if duration else True)


def check_input_limit(prep: Prepared, info: ModelInfo) -> None:
    """400 INVALID_ARGUMENT when the prompt does not fit the model's input window (as Google says it)."""
    assert prep.usage is not None
    if prep.usage.prompt_tokens > info.input_token_limit:
        raise too_many_tokens(prep.usage.prompt_tokens, info.input_token_limit)


def usage_json(usage: lesson.Usage, candidates_tokens: int | None) -> dict:
    """usageMetadata: totals, the prompt by modality, and the implicitly cached part."""
    details = [{"modality": "TEXT", "tokenCount": usage.text_tokens}]
    if usage.video_tokens:
        details.append({"modality": "VIDEO", "tokenCount": usage.video_tokens})
    if usage.audio_tokens:
        details.append({"modality": "AUDIO", "tokenCount": usage.audio_tokens})
    d: dict = {"promptTokenCount": usage.prompt_tokens,
               "totalTokenCount": usage.prompt_tokens + (candidates_tokens or 0),
               "promptTokensDetails": details}
    if usage.cached_tokens:
        # promptTokenCount still includes them, as in the real API.
        d["cachedContentTokenCount"] = usage.cached_tokens
        cache = []
        if usage.cached_video:
            cache.append({"modality": "VIDEO", "tokenCount": usage.cached_video})
        if usage.cached_audio:
            cache.append({"modality": "AUDIO", "tokenCount": usage.cached_audio})
        d["cacheTokensDetails"] = cache
    if candidates_tokens is not None:
        d["candidatesTokenCount"] = candidates_tokens
    return d


def respond(prep: Prepared, usage: lesson.Usage | None = None) -> tuple[dict, int, str]:
    """(GenerateContentResponse JSON, candidates tokens, what happened: "ok"/"max_tokens"/"blocked").

    ``usage``: the prompt usage to report (defaults to the request's; the server passes one
    with the implicitly cached share filled in).
    """
    usage = usage or prep.usage
    assert usage is not None
    base = {"modelVersion": f"{prep.model}-sandbox-001", "responseId": secrets.token_urlsafe(16)}
    trig = prep.trigger_text
    if BLOCK_PROMPT in trig:
        return {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": _SAFETY},
                "usageMetadata": usage_json(usage, None), **base}, 0, "blocked_prompt"
    if BLOCK in trig:
        return {"candidates": [{"finishReason": "SAFETY", "index": 0, "safetyRatings": _SAFETY}],
                "usageMetadata": usage_json(usage, None), **base}, 0, "blocked"
    answer = lesson.build_lesson(prep.text, prep.span(), model=prep.model, source=" ".join(prep.sources))
    tokens = lesson.answer_tokens(answer)
    finish, outcome = "STOP", "ok"
    if prep.max_tokens is not None and tokens > prep.max_tokens:
        answer = answer[: max(0, prep.max_tokens) * 4]
        tokens, finish, outcome = max(0, prep.max_tokens), "MAX_TOKENS", "max_tokens"
    cand = {"content": {"parts": [{"text": answer}], "role": "model"}, "finishReason": finish, "index": 0}
    return {"candidates": [cand], "usageMetadata": usage_json(usage, tokens), **base}, tokens, outcome


def count_tokens_body(body: dict) -> dict:
    """countTokens accepts ``contents`` or a whole ``generateContentRequest``."""
    if isinstance(body, dict) and isinstance(body.get("generateContentRequest"), dict):
        return body["generateContentRequest"]
    return body
