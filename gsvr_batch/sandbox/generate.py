"""generateContent / countTokens semantics shared by the online endpoint and batch jobs.

``prepare`` validates a request body the way the real API does (files must exist and be
ACTIVE) and works out the prompt, the media duration and the usage; ``respond`` builds the
GenerateContentResponse JSON. Neither does I/O on the socket, neither sleeps.
"""

from __future__ import annotations

import base64
import io
import re
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlparse

from . import lesson, rpc
from .store import FileStore

BLOCK = "sandbox-block"
BLOCK_PROMPT = "sandbox-block-prompt"
HANG = "sandbox-hang"
_YOUTUBE_HOSTS = {"youtube.com", "www.youtube.com", "m.youtube.com", "youtu.be", "music.youtube.com"}
_FILE_ID = re.compile(r"files/([a-z0-9][a-z0-9-]*)")
_SAFETY = [
    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True},
    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
]


@dataclass
class Prepared:
    model: str
    text: str = ""
    media_seconds: float = 0.0
    durations: list[float | None] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    file_names: list[str] = field(default_factory=list)
    display_names: list[str] = field(default_factory=list)
    low_res: bool = False
    max_tokens: int | None = None
    usage: lesson.Usage | None = None

    @property
    def trigger_text(self) -> str:
        return " ".join([self.text, *self.sources, *self.display_names])

    @property
    def duration(self) -> float | None:
        """Duration the answer talks about: the first media part's (None: assumed)."""
        return self.durations[0] if self.durations else None


def is_youtube(uri: str) -> bool:
    try:
        return (urlparse(uri).hostname or "").lower() in _YOUTUBE_HOSTS
    except ValueError:
        return False


def _probe_bytes(data: bytes) -> float | None:
    try:
        import av

        with av.open(io.BytesIO(data)) as c:
            return c.duration / av.time_base if c.duration else None
    except Exception:  # noqa: BLE001 - unreadable inline media counts as "unknown duration"
        return None


def prepare(model: str, body: dict, store: FileStore, now: float, processing_delay: float) -> Prepared:
    """Check a GenerateContentRequest body; raises rpc.ApiError like the real API would."""
    if not isinstance(body, dict):
        raise rpc.bad_request("Invalid JSON payload received.")
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise rpc.bad_request("* GenerateContentRequest.contents: contents is not specified\n")
    prep = Prepared(model=model)
    texts: list[str] = []
    system = body.get("systemInstruction") or body.get("system_instruction")
    all_contents = list(contents) + ([system] if isinstance(system, dict) else [])
    for content in all_contents:
        parts = content.get("parts") if isinstance(content, dict) else None
        if not isinstance(parts, list):
            raise rpc.bad_request("* GenerateContentRequest.contents.parts: contents.parts must not be empty.\n")
        for part in parts:
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            fd = part.get("fileData") or part.get("file_data")
            if isinstance(fd, dict):
                _add_file(prep, str(fd.get("fileUri") or fd.get("file_uri") or ""), store, now, processing_delay)
            inline = part.get("inlineData") or part.get("inline_data")
            if isinstance(inline, dict) and inline.get("data"):
                try:
                    raw = base64.b64decode(inline["data"])
                except (ValueError, TypeError) as exc:
                    raise rpc.bad_request("Invalid value at 'contents.parts.inline_data.data' (TYPE_BYTES)") from exc
                prep.durations.append(_probe_bytes(raw))
                prep.sources.append(f"inline:{len(raw)}")
    prep.text = "\n".join(texts)
    gen = body.get("generationConfig") or body.get("generation_config") or {}
    resolution = gen.get("mediaResolution") or gen.get("media_resolution")
    prep.low_res = resolution == "MEDIA_RESOLUTION_LOW"
    max_tokens = gen.get("maxOutputTokens", gen.get("max_output_tokens"))
    if max_tokens is not None:
        prep.max_tokens = int(max_tokens)
    prep.media_seconds = sum(d if d else lesson.ASSUMED_DURATION for d in prep.durations)
    prep.usage = lesson.prompt_usage(prep.text, prep.media_seconds, low_resolution=prep.low_res)
    return prep


def _add_file(prep: Prepared, uri: str, store: FileStore, now: float, processing_delay: float) -> None:
    if is_youtube(uri):
        prep.durations.append(None)  # cannot probe a YouTube video offline: assumed length
        prep.sources.append(uri)
        return
    m = _FILE_ID.search(uri)
    if not m:
        raise rpc.bad_request(f"Unsupported file uri: {uri}")
    file_id = m.group(1)
    rec = store.files.get(file_id)
    if rec is None:
        raise rpc.file_not_found(file_id)
    if rec.state(now, processing_delay) != "ACTIVE":
        raise rpc.file_not_active(file_id)
    prep.durations.append(store.probe_duration(rec))
    prep.sources.append(uri)
    prep.file_names.append(rec.name)
    if rec.display_name:
        prep.display_names.append(rec.display_name)


def _usage_json(prep: Prepared, candidates_tokens: int | None) -> dict:
    u = prep.usage
    assert u is not None
    details = [{"modality": "TEXT", "tokenCount": u.text_tokens}]
    if u.media_tokens:
        details.append({"modality": "VIDEO", "tokenCount": u.media_tokens})
    d: dict = {"promptTokenCount": u.prompt_tokens, "totalTokenCount": u.prompt_tokens + (candidates_tokens or 0),
               "promptTokensDetails": details}
    if candidates_tokens is not None:
        d["candidatesTokenCount"] = candidates_tokens
    return d


def respond(prep: Prepared) -> tuple[dict, int, str]:
    """(GenerateContentResponse JSON, candidates tokens, what happened: "ok"/"max_tokens"/"blocked")."""
    base = {"modelVersion": f"{prep.model}-sandbox-001", "responseId": secrets.token_urlsafe(16)}
    trig = prep.trigger_text
    if BLOCK_PROMPT in trig:
        return {"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": _SAFETY},
                "usageMetadata": _usage_json(prep, None), **base}, 0, "blocked_prompt"
    if BLOCK in trig:
        return {"candidates": [{"finishReason": "SAFETY", "index": 0, "safetyRatings": _SAFETY}],
                "usageMetadata": _usage_json(prep, None), **base}, 0, "blocked"
    answer = lesson.build_lesson(prep.text, prep.duration, model=prep.model, source=" ".join(prep.sources))
    tokens = lesson.answer_tokens(answer)
    finish, outcome = "STOP", "ok"
    if prep.max_tokens is not None and tokens > prep.max_tokens:
        answer = answer[: max(0, prep.max_tokens) * 4]
        tokens, finish, outcome = max(0, prep.max_tokens), "MAX_TOKENS", "max_tokens"
    cand = {"content": {"parts": [{"text": answer}], "role": "model"}, "finishReason": finish, "index": 0}
    return {"candidates": [cand], "usageMetadata": _usage_json(prep, tokens), **base}, tokens, outcome


def count_tokens_body(body: dict) -> dict:
    """countTokens accepts ``contents`` or a whole ``generateContentRequest``."""
    if isinstance(body, dict) and isinstance(body.get("generateContentRequest"), dict):
        return body["generateContentRequest"]
    return body
