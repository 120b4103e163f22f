"""Context strategy: make every request fit by construction (DESIGN invariant 13).

Pure functions, no I/O and no SDK calls. The pipeline asks :func:`choose` for a :class:`Plan`
before it sends anything, journals ``plan.to_record()``, and follows it:

``full``   one call, at the template's own media resolution (``media_resolution`` None);
``low``    the same one call at ``MEDIA_RESOLUTION_LOW`` (66 instead of 258 tokens a frame);
``clips``  the one uploaded file (or YouTube URL) sent in consecutive segments, each through
           ``types.VideoMetadata(**clip_offsets(clip, plan.fps))`` on the video Part and the
           prompt from :func:`segment_prompt`; each answer is a *partial*; then one text-only
           call with :func:`merge_prompt` turns the partials into the final lesson.

How the choice is made (:func:`choose`, ``forced="auto"``), in order of fidelity:

1. ``full`` when the whole request fits the ceiling;
2. ``low`` when that fits and the template allows it (``context: allow_low_resolution``) and
   is not already at low resolution;
3. ``clips`` otherwise: at most :data:`DEFAULT_CLIP_MINUTES` (or the template's / job's
   ``clip_minutes``) each, shorter when a clip that long would not fit. Clips are sent at low
   resolution only when that is allowed *and* makes them fewer; otherwise the template's
   resolution is kept (same number of requests, more detail per frame).

The ceiling (:func:`request_ceiling`) is ``min(input window, TPM) × (1 − SAFETY_MARGIN)``: a
request larger than the model's window is refused with a 400, and one larger than the project's
per-minute token quota can never be admitted by the rate limiter (nor by the API), so with the
free tier's 250,000 TPM even a 40-minute lecture (≈ 720,000 tokens at default resolution) has
to be cut. Clips are sized under that same ceiling, so every clip is admissible.

Estimates (:func:`video_tokens`): Gemini samples 1 frame a second (``fps``, up to 24) at 258
tokens (66 at ``MEDIA_RESOLUTION_LOW``), adds 32 audio tokens a second at any resolution and a
few tokens of timestamp per frame. We count :data:`TIMESTAMP_TOKENS_PER_FRAME` = 10 of those,
which makes the default 300 tokens/s: Google's published round figure and the one
``pricing.estimate_tokens`` and the sandbox use; at low resolution that rule gives 108 tokens/s,
8 % above Google's "about 100" (so a low-resolution plan errs on the safe side). Prompt text
counts 4 characters a token (:data:`PROMPT_CHARS_PER_TOKEN`); :func:`text_tokens` counts a CJK
character as a whole token for the merge prompt, whose partials may be long Chinese text.
Media resolution MEDIUM / HIGH cost what the default costs on the 2.5 models (258 a frame).

Forcing (``forced="full" | "low" | "clips"``, from the template's ``context:`` or the job):
the forced plan is always returned, never silently replaced. When it cannot fit,
``plan.fits`` is False and ``plan.reason`` says it will be refused (window) or can never be
admitted (TPM); the caller decides (validate / dry-run warn, run fails the task or calls
:func:`after_overflow`). Only *contradictory* arguments raise :class:`ContextError` (a
``UsageError``): ``forced="low"`` with ``allow_low=False`` on a template that is not low already,
an unknown strategy, ``clip_minutes`` ≤ 0, ``fps`` outside (0, 24].

Unknown length (a YouTube link: no file to read before the call). ``choose(None, …)`` returns a
``full`` *probe* plan with ``duration_known=False`` and ``duration=None``: one call at the
template's resolution. If the video is too long, the API answers ``400 INVALID_ARGUMENT: The
input token count (N) exceeds the maximum number of tokens allowed (L)``; that probe costs no
output tokens, and :func:`after_overflow` reads the length from N (at the resolution sent) and
returns the next plan (low resolution, or clips of the URL). So a YouTube link may cost **one
probing 400**, never more. Caveat: when the TPM is below the window (free tier: 250,000 vs
1,048,576), a probe between the two is answered with a 429 for the per-minute token quota,
which carries no N. Callers that can, therefore measure first: ``models.count_tokens`` on the
same contents (no generation, no TPM charge) and :func:`from_count` with its total gives the
plan without any refused call. A length derived from a token count is an upper bound (it uses
the rate without timestamp tokens), and the last clip of such a plan is ``open_end``: sent
without ``end_offset``, so the end of the video is never cut off.

Wrong guesses are corrected from the API's own numbers (:func:`after_overflow`): a 400 with N
and L is never final. The next plan is sized with ``token_scale`` = N ÷ our estimate of what
was sent, so a rule that under-counts is corrected for the rest of the task. For a clips plan
that fails at clip ``completed``, the clips already answered are kept unchanged (their partials
are journaled and paid: never re-split them) and only the rest is cut again.

The merge call is text only: its size is the prompt plus the partials, which are bounded by
the template's ``max_output_tokens`` each; check ``text_tokens(merge_prompt(...))`` against
``plan.ceiling`` before sending (:func:`merge_tokens`).
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

from .errors import UsageError

STRATEGIES = ("auto", "full", "low", "clips")
PLAN_STRATEGIES = ("full", "low", "clips")

LOW = "MEDIA_RESOLUTION_LOW"

# ---------------------------------------------------------------- token rules

FRAME_TOKENS = 258  # one frame at the default (medium / high on 2.5) media resolution
FRAME_TOKENS_LOW = 66  # one frame at MEDIA_RESOLUTION_LOW
AUDIO_TOKENS_PER_SECOND = 32  # the sound track, the same at every resolution and fps
TIMESTAMP_TOKENS_PER_FRAME = 10  # "a few" for each frame's timestamp; 258 + 32 + 10 = 300 / s
DEFAULT_FPS = 1.0  # the API samples 1 frame a second unless VideoMetadata.fps says otherwise
MAX_FPS = 24.0  # VideoMetadata.fps is accepted in (0, 24]
PROMPT_CHARS_PER_TOKEN = 4  # Google's rule of thumb for text; the margin absorbs CJK prompts
#: Upper bound of the tokens :func:`segment_prompt` adds to the template's prompt (checked by a
#: test for both languages and 5-digit clip counts).
SEGMENT_PROMPT_TOKENS = 400

#: Fraction of the ceiling kept free. Our video rule is within a few per cent of what the API
#: counts (300 vs ≈ 295 tokens/s; 108 vs ≈ 100 at low resolution), the prompt rule is off by up
#: to 4× for Chinese text (a 1,500-character prompt: ≈ 1,100 tokens under), and the API's own
#: count moves between model versions. 10 % is 104,857 tokens of the 1,048,576 window and 25,000
#: of the free tier's 250,000 TPM: more than all of those errors together, while costing at most
#: one extra clip. (The 10 % is also the example in the issue: 943,718 = 90 % of 1,048,576.)
SAFETY_MARGIN = 0.10

#: Longest clip :func:`choose` makes on its own (a template or job may ask for another length).
#: 45 minutes is one class period: a segment a lesson plan can cover in depth within the built-in
#: templates' 8,192 output tokens, and at default resolution (≈ 810,000 tokens) it fits the 2.5
#: models' 943,718-token ceiling with room, so on tier 1 and above (TPM ≥ 1,000,000) clips keep
#: the template's full resolution. Where the quota is tight (free tier: 225,000-token ceiling)
#: the ceiling, not this number, sets the clip length, so it never adds requests there, where the
#: 20–250 requests a day are scarce.
DEFAULT_CLIP_MINUTES = 45.0

#: With an explicit ``clip_minutes``, a last clip shorter than this is folded into the one
#: before it when the two still fit (no 10-second partial to merge).
MIN_TAIL_SECONDS = 60.0

DEFAULT_INPUT_LIMIT = 1_048_576
#: Input token limits (``models.get(...).input_token_limit``) of the models gsvr-batch prices,
#: as published on ai.google.dev/gemini-api/docs/models; a fallback when models.get was not
#: asked (dry run, offline). An unknown model counts as :data:`DEFAULT_INPUT_LIMIT`: a wrong
#: guess costs one 400 whose L :func:`after_overflow` then uses.
MODEL_INPUT_LIMITS: dict[str, int] = {
    "gemini-2.5-pro": 1_048_576,
    "gemini-2.5-flash": 1_048_576,
    "gemini-2.5-flash-lite": 1_048_576,
    "gemini-2.0-flash": 1_048_576,
    "gemini-2.0-flash-lite": 1_048_576,
    "gemini-3-pro-preview": 1_048_576,
    "gemini-flash-latest": 1_048_576,
    "gemini-flash-lite-latest": 1_048_576,
    "gemini-pro-latest": 1_048_576,
}

# One version suffix at a time, stripped from the right until a table name remains (the same
# rule as the sandbox's model table): "-001", "-latest", "-preview", "-exp", "-09-2025", "-05-20".
_VERSION_SUFFIX = re.compile(r"-(\d{3}|latest|preview|exp|\d{2}-\d{4}|\d{2}-\d{2}|\d{4})$")


class ContextError(UsageError):
    """Contradictory or invalid context options (exit 2, like any usage error)."""


class ContextOptionError(ContextError, ValueError):
    """One bad ``context:`` option; ``key`` names it so a caller can point at its line."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


# ---------------------------------------------------------------- limits


def _bare(model: str) -> str:
    name = str(model or "").strip().lower()
    return name.split("models/", 1)[1] if name.startswith("models/") else name


def _lookup(name: str, table: Mapping[str, int]) -> int | None:
    while True:
        if name in table:
            return int(table[name])
        stripped = _VERSION_SUFFIX.sub("", name)
        if stripped == name:
            return None
        name = stripped


def input_limit_for(model: str, known: Mapping[str, int] | None = None) -> int:
    """The input token limit of ``model``.

    ``known``: limits read from ``models.get`` during this run (keys as the API names models,
    ``models/…`` or bare); they win over :data:`MODEL_INPUT_LIMITS`. ``"models/"`` prefixes and
    version suffixes (``-001``, ``-preview-09-2025`` …) resolve to the base model. Unknown:
    :data:`DEFAULT_INPUT_LIMIT`.
    """
    name = _bare(model)
    if known:
        table = {_bare(k): int(v) for k, v in known.items() if v}
        found = _lookup(name, table)
        if found:
            return found
    found = _lookup(name, MODEL_INPUT_LIMITS)
    return found if found else DEFAULT_INPUT_LIMIT


def request_ceiling(input_limit: int, tpm: float | None) -> int:
    """Largest request a plan may make: ``min(input_limit, tpm) × (1 − SAFETY_MARGIN)``, floored.

    ``tpm`` None: no per-minute token quota known (only the window counts).
    """
    if input_limit is None or int(input_limit) <= 0:
        raise ContextError(f"input token limit must be positive, got {input_limit!r}")
    bound = float(input_limit)
    if tpm is not None:
        if float(tpm) <= 0:
            raise ContextError(f"tokens per minute must be positive, got {tpm!r}")
        bound = min(bound, float(tpm))
    return int(math.floor(bound * (1.0 - SAFETY_MARGIN) + 1e-9))


# ---------------------------------------------------------------- estimates


def _is_low(resolution: Any) -> bool:
    value = getattr(resolution, "value", resolution)
    return str(value or "").strip().upper() in ("LOW", LOW)


def _check_fps(fps: float | None) -> float:
    if fps is None:
        return DEFAULT_FPS
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < float(fps) <= MAX_FPS:
        raise ContextError(f"fps must be a number in (0, {MAX_FPS:g}], got {fps!r}")
    return float(fps)


def _ceil(x: float) -> int:
    return int(math.ceil(x - 1e-9))


def video_tokens(seconds: float, *, low: bool = False, fps: float | None = None) -> int:
    """Tokens of ``seconds`` of video: frames × (258 or 66, + 10 timestamp) + 32 audio a second.

    ``frames = ceil(seconds × fps)`` (fps None = 1). 1 h at default resolution: 3600 × 268 +
    3600 × 32 = 1,080,000; at low: 3600 × 76 + 115,200 = 388,800.
    """
    seconds = max(0.0, float(seconds or 0.0))
    rate = _check_fps(fps)
    frame = (FRAME_TOKENS_LOW if low else FRAME_TOKENS) + TIMESTAMP_TOKENS_PER_FRAME
    return _ceil(seconds * rate) * frame + _ceil(seconds * AUDIO_TOKENS_PER_SECOND)


def prompt_tokens(prompt_chars: int) -> int:
    """Tokens of a prompt of ``prompt_chars`` characters (4 a token, rounded up)."""
    return _ceil(max(0, int(prompt_chars)) / PROMPT_CHARS_PER_TOKEN)


def request_tokens(seconds: float | None, prompt_chars: int, *, low: bool = False, fps: float | None = None) -> int:
    """Input tokens of one request: :func:`video_tokens` + :func:`prompt_tokens`.

    ``seconds`` None or 0: no video part (a text-only call such as the merge).
    """
    return video_tokens(seconds or 0.0, low=low, fps=fps) + prompt_tokens(prompt_chars)


_CJK = re.compile(r"[\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
                  r"\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")
_LATIN = re.compile(r"[A-Za-z]")


def text_tokens(text: str) -> int:
    """Tokens of ``text``: each CJK character one token, the rest 4 characters a token.

    Errs high for Chinese (Gemini packs about 1–1.5 characters a token); use it for texts that
    are not prompts of known shape, such as a merge prompt full of partials.
    """
    text = text or ""
    cjk = len(_CJK.findall(text))
    return cjk + _ceil((len(text) - cjk) / PROMPT_CHARS_PER_TOKEN)


def merge_tokens(merge_prompt_text: str) -> int:
    """Tokens of the merge call (text only). Compare with ``plan.ceiling`` before sending it."""
    return text_tokens(merge_prompt_text)


def duration_from_tokens(video_token_count: int, *, low: bool = False, fps: float | None = None) -> float:
    """Seconds of video behind ``video_token_count`` tokens (the prompt already taken off).

    Divides by the rate *without* timestamp tokens (290 / s default, 98 / s low at 1 fps), so the
    result is an upper bound of the real length: clips planned from it cover the whole video.
    """
    rate = _check_fps(fps) * (FRAME_TOKENS_LOW if low else FRAME_TOKENS) + AUDIO_TOKENS_PER_SECOND
    return max(0.0, float(video_token_count)) / rate


def hms(seconds: float | None) -> str:
    """``7200`` → ``"2:00:00"``; ``754.4`` → ``"0:12:34"`` (always H:MM:SS, rounded to seconds)."""
    if seconds is None:
        return "?"
    total = int(round(max(0.0, float(seconds))))
    h, rem = divmod(total, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _mmss(seconds: float) -> str:
    total = int(round(seconds))
    if total >= 3600:
        return hms(total)
    return f"{total // 60}:{total % 60:02d}"


# ---------------------------------------------------------------- plans


@dataclass(frozen=True)
class Clip:
    """One segment, in absolute seconds of the whole video: [start, end)."""

    index: int
    start: float
    end: float
    #: Sent without ``end_offset`` (to the end of the video): the last clip of a plan whose
    #: length was derived from a token count, where ``end`` is only an upper bound.
    open_end: bool = False

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def to_record(self) -> dict:
        rec: dict[str, Any] = {"index": self.index, "start": self.start, "end": self.end}
        if self.open_end:
            rec["open_end"] = True
        return rec

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> "Clip":
        return cls(index=int(d["index"]), start=float(d["start"]), end=float(d["end"]),
                   open_end=bool(d.get("open_end", False)))


def _offset(seconds: float) -> str:
    text = f"{float(seconds):.3f}".rstrip("0").rstrip(".")
    return f"{text}s"


def clip_offsets(clip: Clip, fps: float | None = None) -> dict:
    """Keyword arguments for ``types.VideoMetadata`` for one clip: ``{"start_offset": "1800s",
    "end_offset": "3600s"}`` (+ ``"fps"`` when set; no ``end_offset`` for an ``open_end`` clip)."""
    out: dict[str, Any] = {"start_offset": _offset(clip.start)}
    if not clip.open_end:
        out["end_offset"] = _offset(clip.end)
    if fps is not None:
        out["fps"] = float(fps)
    return out


def plan_label(strategy: str, n_clips: int = 0) -> str:
    """How a plan is shown everywhere (dry run, status, replay, report): ``"1 call"`` | ``"low res"`` |
    ``"7 clips + merge"``."""
    if strategy == "clips":
        return f"{n_clips} clip{'s' if n_clips != 1 else ''} + merge"
    return "low res" if strategy == "low" else "1 call"


@dataclass(frozen=True)
class Plan:
    """How one task is sent. ``to_record`` / ``from_record`` round-trip through JSON."""

    strategy: str  # "full" | "low" | "clips"
    media_resolution: str | None  # None: the template's own; "MEDIA_RESOLUTION_LOW": override
    clips: tuple[Clip, ...]  # () unless strategy == "clips"
    fps: float | None  # None: the API's default (1 frame a second)
    tokens_per_request: int  # estimate of the largest video request (the merge not counted)
    requests: int  # generate calls, the merge included
    ceiling: int
    reason: str
    duration_known: bool  # the length was known before sending (a file), not measured or unknown
    #: Effective resolution of the video requests (True also when the template itself is low).
    low_resolution: bool = False
    #: Seconds the plan was sized for: the known length, an upper bound derived from a token
    #: count, or None for a probe of unknown length.
    duration: float | None = None
    #: Factor applied to :func:`video_tokens` after the API counted more than we estimated.
    token_scale: float = 1.0

    def label(self) -> str:
        """``"1 call"`` | ``"low res"`` | ``"7 clips + merge"``."""
        return plan_label(self.strategy, len(self.clips))

    @property
    def fits(self) -> bool:
        """Every request is estimated within the ceiling. For a probe of unknown length this only
        says the prompt fits; the video's share is learnt from the API (see the module doc)."""
        return self.tokens_per_request <= self.ceiling

    @property
    def probe(self) -> bool:
        """A first call whose video length is unknown (a YouTube link before any answer)."""
        return self.duration is None and not self.duration_known

    def to_record(self) -> dict:
        return {
            "strategy": self.strategy,
            "media_resolution": self.media_resolution,
            "clips": [c.to_record() for c in self.clips],
            "fps": self.fps,
            "tokens_per_request": self.tokens_per_request,
            "requests": self.requests,
            "ceiling": self.ceiling,
            "reason": self.reason,
            "duration_known": self.duration_known,
            "low_resolution": self.low_resolution,
            "duration": self.duration,
            "token_scale": self.token_scale,
        }

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> "Plan":
        strategy = str(d["strategy"])
        if strategy not in PLAN_STRATEGIES:
            raise ValueError(f"unknown context strategy in record: {strategy!r}")
        media = d.get("media_resolution")
        return cls(
            strategy=strategy,
            media_resolution=media,
            clips=tuple(Clip.from_record(c) for c in d.get("clips") or ()),
            fps=None if d.get("fps") is None else float(d["fps"]),
            tokens_per_request=int(d["tokens_per_request"]),
            requests=int(d["requests"]),
            ceiling=int(d["ceiling"]),
            reason=str(d.get("reason") or ""),
            duration_known=bool(d.get("duration_known", True)),
            low_resolution=bool(d.get("low_resolution", _is_low(media))),
            duration=None if d.get("duration") is None else float(d["duration"]),
            token_scale=float(d.get("token_scale", 1.0)),
        )


# ---------------------------------------------------------------- choosing


def _ceiling_text(ceiling: int, input_limit: int, tpm: float | None) -> str:
    pct = f"{SAFETY_MARGIN:.0%}"
    if tpm is not None and float(tpm) < input_limit:
        return f"{ceiling:,} ceiling (TPM {int(tpm):,} − {pct})"
    return f"{ceiling:,} ceiling (input window {int(input_limit):,} − {pct})"


def _res_name(low: bool) -> str:
    return "low resolution" if low else "default resolution"


def _scaled(seconds: float, low: bool, fps: float | None, scale: float) -> int:
    base = video_tokens(seconds, low=low, fps=fps)
    return base if scale == 1.0 else _ceil(base * scale)


def _max_clip_seconds(ceiling: int, ptok: int, low: bool, fps: float | None, scale: float) -> int:
    """Longest whole number of seconds whose request fits ``ceiling`` (0: not even one second)."""
    room = ceiling - ptok
    if room <= 0:
        return 0
    per_second = (_check_fps(fps) * ((FRAME_TOKENS_LOW if low else FRAME_TOKENS) + TIMESTAMP_TOKENS_PER_FRAME)
                  + AUDIO_TOKENS_PER_SECOND) * scale
    s = int(room // per_second) + 1
    while s > 0 and ptok + _scaled(s, low, fps, scale) > ceiling:
        s -= 1
    return s


def _split(start: float, end: float, length: int, first_index: int, *, open_end: bool) -> list[Clip]:
    """Consecutive clips of ``length`` seconds from ``start``; the last ends at ``end`` exactly."""
    clips: list[Clip] = []
    t = float(start)
    i = first_index
    while True:
        nxt = t + length
        if nxt >= end - 1e-9:
            clips.append(Clip(i, t, float(end), open_end))
            return clips
        clips.append(Clip(i, t, nxt))
        t = nxt
        i += 1


def _cut(start: float, end: float, max_fit: int, target: float | None, first_index: int, *,
         open_end: bool) -> tuple[list[Clip], bool]:
    """Clips over [start, end] no longer than ``max_fit``. ``target``: the asked clip length
    (explicit ``clip_minutes`` in seconds) kept as is when it fits; None: balanced clips of at
    most ``min(DEFAULT_CLIP_MINUTES, max_fit)``. Returns (clips, shrunk)."""
    span = max(0.0, end - start)
    if target is not None and target <= max_fit:
        length = max(1, int(round(target)))
        clips = _split(start, end, length, first_index, open_end=open_end)
        if len(clips) >= 2 and clips[-1].seconds < MIN_TAIL_SECONDS and clips[-2].seconds + clips[-1].seconds <= max_fit:
            last = clips.pop()
            clips[-1] = Clip(clips[-1].index, clips[-1].start, last.end, last.open_end)
        return clips, False
    shrunk = target is not None
    cap = max_fit if target is not None else min(max_fit, int(DEFAULT_CLIP_MINUTES * 60))
    n = max(1, _ceil(span / cap))
    length = max(1, _ceil(span / n))
    return _split(start, end, length, first_index, open_end=open_end), shrunk


@dataclass
class _Ctx:
    """Everything a plan is sized from (internal)."""

    duration: float
    ptok: int
    ceiling: int
    input_limit: int
    tpm: float | None
    allow_low: bool
    tmpl_low: bool
    fps: float | None
    scale: float
    clip_minutes: float | None
    duration_known: bool
    open_end: bool  # the length is an upper bound from a token count
    notes: list[str] = field(default_factory=list)

    def tokens(self, seconds: float, low: bool, extra: int = 0) -> int:
        return self.ptok + extra + _scaled(seconds, low, self.fps, self.scale)

    def ceiling_text(self) -> str:
        return _ceiling_text(self.ceiling, self.input_limit, self.tpm)

    def plan(self, strategy: str, low: bool, clips: tuple[Clip, ...], tokens: int, requests: int,
             reason: str) -> Plan:
        media = LOW if (low and not self.tmpl_low) or (strategy == "low") else None
        return Plan(strategy=strategy, media_resolution=media, clips=clips, fps=self.fps,
                    tokens_per_request=tokens, requests=requests, ceiling=self.ceiling,
                    reason="; ".join(self.notes + [reason]), duration_known=self.duration_known,
                    low_resolution=low, duration=self.duration, token_scale=self.scale)


def _refusal(tokens: int, c: _Ctx) -> str:
    if tokens > c.input_limit:
        return f"the API will refuse it (400: over the {c.input_limit:,}-token input window)"
    if c.tpm is not None and tokens > c.tpm:
        return f"it can never be admitted (over the {int(c.tpm):,} tokens-per-minute quota)"
    return f"it is inside the {SAFETY_MARGIN:.0%} safety margin and may be refused"


def _whole(c: _Ctx, strategy: str, low: bool, *, forced: bool) -> Plan:
    tok = c.tokens(c.duration, low)
    head = f"{hms(c.duration)} at {_res_name(low)} ≈ {tok:,} tokens"
    if tok <= c.ceiling:
        reason = f"{head} ≤ {c.ceiling_text()}"
    else:
        reason = f"{head} > {c.ceiling_text()} — {_refusal(tok, c)}"
    if forced:
        reason = f"forced {strategy}: {reason}"
    return c.plan(strategy, low, (), tok, 1, reason)


def _clips_plan(c: _Ctx, *, start: float = 0.0, keep: tuple[Clip, ...] = (), low_only: bool | None = None,
                lead: str = "") -> Plan:
    """Clips over [start, duration], after the ``keep`` clips (already answered)."""
    seg = SEGMENT_PROMPT_TOKENS
    target = None if c.clip_minutes is None else float(c.clip_minutes) * 60.0
    options: list[tuple[bool, list[Clip], bool, int]] = []
    resolutions = [low_only] if low_only is not None else (
        [c.tmpl_low] + ([True] if c.allow_low and not c.tmpl_low else []))
    for low in resolutions:
        max_fit = _max_clip_seconds(c.ceiling, c.ptok + seg, low, c.fps, c.scale)
        if max_fit < 1:
            continue
        clips, shrunk = _cut(start, c.duration, max_fit, target, len(keep), open_end=c.open_end)
        options.append((low, clips, shrunk, max_fit))
    if not options:
        tok = c.tokens(min(1.0, c.duration), c.tmpl_low, seg)
        plan = _whole(c, "full", c.tmpl_low, forced=False)
        return replace(plan, reason=plan.reason + f"; clips cannot help either: the prompt alone is ≈ {c.ptok + seg:,} "
                                                  f"tokens (one second of video: {tok:,})")
    # Template resolution unless low resolution makes the clips fewer.
    low, clips, shrunk, max_fit = options[0]
    if len(options) > 1 and len(options[1][1]) < len(clips):
        low, clips, shrunk, max_fit = options[1]
    all_clips = tuple(keep) + tuple(clips)
    biggest = max(clips, key=lambda k: k.seconds)
    tok = c.tokens(biggest.seconds, low, seg)
    parts = [lead] if lead else []
    if shrunk:
        asked = c.tokens(target or 0.0, low, seg)
        parts.append(f"clip_minutes {c.clip_minutes:g} would be ≈ {asked:,} tokens a clip at {_res_name(low)}: "
                     f"shrunk to {_mmss(max_fit)} to fit")
    kept = f"{len(keep)} answered clip{'s' if len(keep) != 1 else ''} kept, " if keep else ""
    n = len(clips)
    parts.append(f"{kept}{n} clip{'s' if n != 1 else ''} of ≤ {_mmss(biggest.seconds)} at {_res_name(low)} "
                 f"≈ {tok:,} tokens each + merge")
    if tok > c.ceiling:  # only when forced onto something impossible; kept for the record
        parts.append(_refusal(tok, c))
    return c.plan("clips", low, all_clips, tok, len(all_clips) + 1, "; ".join(parts))


def _auto(c: _Ctx, *, first: str = "full", skip_low: bool = False) -> Plan:
    """full → low → clips, starting at ``first``."""
    lead: list[str] = []
    if first == "full":
        full = _whole(c, "full", c.tmpl_low, forced=False)
        if full.fits:
            return full
        lead.append(f"{hms(c.duration)} at {_res_name(c.tmpl_low)} ≈ {full.tokens_per_request:,} tokens "
                    f"> {c.ceiling_text()}")
    if first in ("full", "low"):
        if c.tmpl_low:
            pass  # the template is at low resolution already: nothing lower to try
        elif skip_low:
            lead.append("low resolution skipped (clips forced)")
        elif not c.allow_low:
            lead.append("low resolution not allowed by the template")
        else:
            tok = c.tokens(c.duration, True)
            if tok <= c.ceiling:
                lead.append(f"low resolution ≈ {tok:,} fits")
                return c.plan("low", True, (), tok, 1, "; ".join(lead))
            lead.append(f"low resolution ≈ {tok:,} too")
    return _clips_plan(c, lead="; ".join(lead))


def _validate(forced: str, clip_minutes: float | None, fps: float | None, allow_low: bool, tmpl_low: bool) -> None:
    if forced not in STRATEGIES:
        raise ContextError(f"context strategy must be one of {', '.join(STRATEGIES)}, got {forced!r}")
    if clip_minutes is not None and (isinstance(clip_minutes, bool) or not isinstance(clip_minutes, (int, float))
                                     or not clip_minutes > 0 or math.isinf(clip_minutes)):
        raise ContextError(f"clip_minutes must be a number > 0, got {clip_minutes!r}")
    _check_fps(fps)
    if forced == "low" and not allow_low and not tmpl_low:
        raise ContextError("context strategy 'low' contradicts allow_low_resolution: false")


def choose(duration: float | None, prompt_chars: int, *, input_limit: int, tpm: float | None = None,
           forced: str = "auto", clip_minutes: float | None = None, allow_low: bool = True,
           template_resolution: str | None = None, fps: float | None = None,
           token_scale: float = 1.0) -> Plan:
    """The plan for one task (see the module doc for the rules).

    ``duration``: seconds, None when unknown (YouTube: a probe plan). ``prompt_chars``: length of
    the rendered prompt. ``input_limit``: :func:`input_limit_for` the model. ``tpm``: the
    model's tokens-per-minute quota (None: unknown). ``template_resolution``: the template's
    ``media_resolution`` ("low" / "MEDIA_RESOLUTION_LOW" / … / None). ``token_scale``: factor on
    the video estimate learnt from the API (:func:`after_overflow` sets it).
    Raises :class:`ContextError` only for invalid or contradictory options.
    """
    tmpl_low = _is_low(template_resolution)
    _validate(forced, clip_minutes, fps, allow_low, tmpl_low)
    ceiling = request_ceiling(input_limit, tpm)
    ptok = prompt_tokens(prompt_chars)
    scale = max(1.0, float(token_scale or 1.0))
    if duration is None:
        low = tmpl_low or forced == "low"
        strategy = "low" if forced == "low" else "full"
        why = (f"length unknown (YouTube link): one call at {_res_name(low)} probes it; "
               "a 400 'input token count (N) exceeds … (L)' or a count_tokens total sizes the next plan "
               "(after_overflow / from_count)")
        if forced == "clips":
            why = "clips forced but the length is unknown: " + why
        media = LOW if strategy == "low" else None
        return Plan(strategy=strategy, media_resolution=media, clips=(), fps=fps, tokens_per_request=ptok,
                    requests=1, ceiling=ceiling, reason=why, duration_known=False, low_resolution=low,
                    duration=None, token_scale=scale)
    if float(duration) < 0 or math.isnan(float(duration)):
        raise ContextError(f"duration must be ≥ 0 seconds, got {duration!r}")
    c = _Ctx(duration=float(duration), ptok=ptok, ceiling=ceiling, input_limit=int(input_limit), tpm=tpm,
             allow_low=allow_low, tmpl_low=tmpl_low, fps=fps, scale=scale, clip_minutes=clip_minutes,
             duration_known=True, open_end=False)
    return _decide(c, forced)


def _decide(c: _Ctx, forced: str, *, first: str = "full") -> Plan:
    if forced == "full":
        return _whole(c, "full", c.tmpl_low, forced=True)
    if forced == "low":
        return _whole(c, "low", True, forced=True)
    if forced == "clips":
        plan = _clips_plan(c)
        return replace(plan, reason="forced clips: " + plan.reason)
    return _auto(c, first=first)


# ---------------------------------------------------------------- learning from the API

_OVERFLOW_PATTERNS = (
    # Gemini API: "The input token count (1165786) exceeds the maximum number of tokens allowed (1048576)."
    re.compile(r"input\s+token\s+count\s*(?:\(|is\s+|of\s+|:\s*)?\s*([\d][\d,_]*)\s*\)?.{0,80}?"
               r"exceeds?.{0,80}?(?:maximum|limit).{0,80}?\(?\s*([\d][\d,_]*)", re.I | re.S),
    # Vertex AI: "...the input token count is 1165786 but model only supports up to 1048576."
    re.compile(r"input\s+token\s+count\s+is\s+([\d][\d,_]*).{0,80}?supports\s+up\s+to\s+([\d][\d,_]*)", re.I | re.S),
)


def parse_token_overflow(message: str) -> tuple[int, int] | None:
    """``(N, L)`` from a 400 "The input token count (N) exceeds the maximum number of tokens
    allowed (L)", wherever it sits: the bare message, ``str()`` of a google-genai
    ``ClientError`` (the JSON body as a dict repr), our ``RequestRejected`` text, or Vertex AI's
    "input token count is N but model only supports up to L". None for anything else."""
    if not message:
        return None
    text = str(message)
    for pattern in _OVERFLOW_PATTERNS:
        m = pattern.search(text)
        if m:
            n, limit = (int(re.sub(r"[,_]", "", g)) for g in m.groups())
            if n > 0 and limit > 0:
                return n, limit
    return None


def _resize(plan: Plan, n_tokens: int, input_limit: int, *, duration: float | None, prompt_chars: int,
            tpm: float | None, allow_low: bool, clip_minutes: float | None, forced: str, completed: int,
            refused: bool) -> Plan:
    if n_tokens is None or int(n_tokens) < 0:
        raise ContextError(f"token count must be ≥ 0, got {n_tokens!r}")
    tmpl_low = plan.low_resolution and plan.media_resolution is None
    _validate(forced, clip_minutes, plan.fps, allow_low, tmpl_low)
    ceiling = request_ceiling(input_limit, tpm)
    ptok = prompt_tokens(prompt_chars)
    n = int(n_tokens)
    if refused:
        n = max(n, ceiling + 1)  # whatever the numbers say, the refused request must not come back
    low_sent = plan.low_resolution
    fps = plan.fps
    what = "a clip" if plan.strategy == "clips" else "the whole video"
    head = (f"API refused {int(n_tokens):,} tokens for {what} at {_res_name(low_sent)} (limit {input_limit:,})"
            if refused else f"API counted {int(n_tokens):,} tokens for {what} at {_res_name(low_sent)}")

    if plan.strategy == "clips" and plan.clips:
        if not 0 <= completed < len(plan.clips):
            raise ContextError(f"completed must be in 0..{len(plan.clips) - 1}, got {completed!r}")
        sent = plan.clips[completed]
        video_n = max(0, n - ptok - SEGMENT_PROMPT_TOKENS)
        est = video_tokens(sent.seconds, low=low_sent, fps=fps)
        total = duration if duration is not None else plan.duration
        if total is None:
            total = plan.clips[-1].end
        scale = max(plan.token_scale, video_n / est) if est else plan.token_scale
        open_end = duration is None and plan.clips[-1].open_end
        c = _Ctx(duration=float(total), ptok=ptok, ceiling=ceiling, input_limit=input_limit, tpm=tpm,
                 allow_low=allow_low, tmpl_low=tmpl_low, fps=fps, scale=scale, clip_minutes=clip_minutes,
                 duration_known=duration is not None or plan.duration_known, open_end=open_end)
        c.notes.append(head + (f"; estimates scaled ×{scale:.3g}" if scale > plan.token_scale else ""))
        if completed == 0:
            return _clips_plan(c)
        return _clips_plan(c, start=sent.start, keep=plan.clips[:completed], low_only=low_sent)

    # The whole video was sent (full or low, or a probe of unknown length).
    video_n = max(0, n - ptok)
    derived = False
    if duration is not None:
        total, known = float(duration), True
    elif plan.duration is not None:
        total, known = float(plan.duration), plan.duration_known
    else:
        total, known, derived = duration_from_tokens(video_n, low=low_sent, fps=fps), False, True
    if derived:
        scale = plan.token_scale
    else:
        est = video_tokens(total, low=low_sent, fps=fps)
        scale = max(plan.token_scale, video_n / est) if est else plan.token_scale
    c = _Ctx(duration=total, ptok=ptok, ceiling=ceiling, input_limit=input_limit, tpm=tpm, allow_low=allow_low,
             tmpl_low=tmpl_low, fps=fps, scale=scale, clip_minutes=clip_minutes, duration_known=known,
             open_end=not known)
    if derived:
        tail = f"length ≤ {hms(total)} from the count"
    elif scale > plan.token_scale:
        tail = f"estimates scaled ×{scale:.3g}"
    else:
        tail = ""
    if not refused and int(n_tokens) <= ceiling and forced in ("auto", plan.strategy):
        # The API's own count of exactly this request: it fits, keep it as it is.
        reason = f"{head} ≤ {c.ceiling_text()}: one call as planned" + (f"; {tail}" if tail else "")
        return replace(plan, tokens_per_request=int(n_tokens), ceiling=ceiling, duration=total,
                       duration_known=known, token_scale=scale, reason=reason)
    c.notes.append(head + (f"; {tail}" if tail else ""))
    if not refused:
        return _decide(c, forced)
    # Refused: move on from what was sent, never back to it.
    if low_sent:
        return _auto(c, first="clips")
    return _auto(c, first="low", skip_low=forced == "clips")


def after_overflow(plan: Plan, n_tokens: int, limit: int, *, duration: float | None, prompt_chars: int,
                   tpm: float | None = None, allow_low: bool = True, clip_minutes: float | None = None,
                   forced: str = "auto", completed: int = 0) -> Plan:
    """The next plan after a 400 "input token count (N) exceeds … (L)" for ``plan``.

    Never final: a ``full`` plan goes to low resolution (when allowed and it fits) or clips, a
    ``low`` plan to clips, a ``clips`` plan to shorter clips. Sized from the API's numbers: L is
    the input limit from now on, and N ÷ our estimate of what was sent scales every later
    estimate (``token_scale``). ``duration`` None (YouTube): the length is derived from N at the
    resolution sent (an upper bound; the last clip is ``open_end``). ``completed``: for a clips
    plan, how many leading clips were already answered; the refused one is ``plan.clips[completed]``;
    answered clips are kept as they are and only the rest is cut again. ``forced="clips"`` skips
    the low-resolution step. ``prompt_chars``: the template's rendered prompt, as for :func:`choose`.
    """
    return _resize(plan, n_tokens, int(limit), duration=duration, prompt_chars=prompt_chars, tpm=tpm,
                   allow_low=allow_low, clip_minutes=clip_minutes, forced=forced, completed=completed,
                   refused=True)


def from_count(plan: Plan, n_tokens: int, *, input_limit: int, duration: float | None, prompt_chars: int,
               tpm: float | None = None, allow_low: bool = True, clip_minutes: float | None = None,
               forced: str = "auto", completed: int = 0) -> Plan:
    """The plan re-sized from the API's own count of ``plan``'s request (``models.count_tokens``
    total, or a probe's ``usage_metadata.prompt_token_count``) that was *not* refused.

    Unlike :func:`after_overflow` the result may keep the same strategy (the count says it fits);
    the way to plan a YouTube link under a TPM smaller than the window without a refused call.
    """
    return _resize(plan, n_tokens, int(input_limit), duration=duration, prompt_chars=prompt_chars, tpm=tpm,
                   allow_low=allow_low, clip_minutes=clip_minutes, forced=forced, completed=completed,
                   refused=False)


# ---------------------------------------------------------------- prompts

_ZH_NAMES = ("zh", "chinese", "中文", "简体中文", "繁體中文", "汉语", "漢語")


def prompt_language(text: str, language_hint: str | None = None) -> str:
    """``"zh"`` or ``"en"``: the language the added instructions are written in.

    ``language_hint`` wins ("zh", "zh-CN", "Chinese", "中文" → zh; anything else → en). Else the
    text is Chinese when CJK characters are at least 30 % of its letters (an English template
    with a Chinese video title stays English).
    """
    if language_hint:
        hint = language_hint.strip().lower()
        return "zh" if hint.startswith(_ZH_NAMES) or hint in _ZH_NAMES else "en"
    cjk = len(_CJK.findall(text or ""))
    latin = len(_LATIN.findall(text or ""))
    return "zh" if cjk and cjk >= 0.3 * (cjk + latin) else "en"


def segment_prompt(rendered_prompt: str, clip: Clip, total_clips: int, duration: float | None, *,
                   language_hint: str | None = None) -> str:
    """The template's prompt for one clip: the prompt as rendered, then a short note that this is
    part i/n covering [start–end] of a longer video, to answer with the same headings and
    language and to write timestamps as absolute H:MM:SS times in the whole video."""
    i = clip.index + 1
    start = hms(clip.start)
    example = hms(clip.start + (65 if clip.open_end else min(65.0, clip.seconds / 2)))
    whole = hms(duration) if duration is not None else None
    lang = prompt_language(rendered_prompt, language_hint)
    if lang == "zh":
        rng = f"从 {start} 到视频结尾" if clip.open_end else f"从 {start} 到 {hms(clip.end)}"
        within = f"即不早于 {start}" if clip.open_end else f"即介于 {start} 与 {hms(clip.end)} 之间"
        total = f"（整段视频时长 {whole}）" if whole else ""
        note = (
            f"【分段说明】这次只提供一段较长视频的第 {i}/{total_clips} 部分：{rng}{total}。"
            "上面的任务说的是整段视频；请只根据这一部分完成它，使用与上面要求完全相同的标题、顺序和语言，"
            "各部分的结果之后会合并成一份完整的文档。"
            f"所有时间戳都写成在整段视频中的绝对时间（H:MM:SS，例如 {example}），"
            f"{within}，不要从本部分开头重新计时。"
            "如果本部分在某个话题中间开始或结束，照实写出这一部分的内容即可，不要补写其他部分。"
        )
    else:
        rng = f"from {start} to the end of the video" if clip.open_end else f"from {start} to {hms(clip.end)}"
        within = (f"never earlier than {start}" if clip.open_end
                  else f"between {start} and {hms(clip.end)}")
        total = f" (the whole video is {whole} long)" if whole else ""
        note = (
            f"NOTE — PART {i} OF {total_clips}: you are given only part {i} of {total_clips} of a longer "
            f"video, {rng}{total}. The task above speaks of the whole video; do it for this part only, "
            "with exactly the same headings, order and language it asks for. The parts will be merged "
            "into one document afterwards. Write every timestamp as an ABSOLUTE time in the whole video, "
            f"as H:MM:SS (for example {example}), {within}: do not count from the start of "
            "this part. If this part begins or ends in the middle of a topic, cover "
            "what it shows and do not invent the rest."
        )
    return f"{rendered_prompt.rstrip()}\n\n---\n{note}\n"


def merge_prompt(rendered_prompt: str, partials: Iterable[tuple[Clip, str]], duration: float | None, *,
                 language_hint: str | None = None) -> str:
    """Text-only prompt that turns the partial answers into one answer in the template's shape.

    The original task first, then each partial labelled with its time range (in clip order),
    then the instruction: ONE answer with the same headings, order and language; timestamps kept
    as they are (already absolute); duplicated material removed; the task's counts apply to the
    whole video.
    """
    items = sorted(partials, key=lambda p: p[0].index)
    if not items:
        raise ContextError("merge_prompt needs at least one partial answer")
    indices = [c.index for c, _ in items]
    if len(set(indices)) != len(indices):
        raise ContextError(f"merge_prompt got the same clip twice: {indices}")
    n = len(items)
    whole = hms(duration) if duration is not None else None
    lang = prompt_language(rendered_prompt, language_hint)
    blocks = []
    for clip, text in items:
        end = "结尾" if (clip.open_end and lang == "zh") else ("end" if clip.open_end else hms(clip.end))
        label = f"{clip.index + 1}/{n} ({hms(clip.start)}–{end})"
        head = f"=== 第 {label} 部分 ===" if lang == "zh" else f"=== PART {label} ==="
        blocks.append(f"{head}\n{(text or '').strip()}")
    parts_text = "\n\n".join(blocks)
    if lang == "zh":
        length = f"（时长 {whole}）" if whole else ""
        intro = (f"下面的任务针对一段较长的视频{length}。因为视频太长，它被分成 {n} 个连续的部分分别完成，"
                 "每部分的结果附在任务之后，并标明了时间范围。这次没有视频，只有这些文字。")
        outro = (f"请把这 {n} 个部分的结果合并成一份完整的回答，严格按照任务要求的格式：相同的标题、相同的顺序、相同的语言，"
                 "第一个标题之前和最后一节之后不要有任何文字。时间戳保持原样（它们已经是整段视频中的绝对时间），"
                 "列表和表格按时间顺序排列；去掉各部分之间重复的内容（例如每部分各写一次的基本信息或概述），"
                 "任务中规定的数量（如“三到六条”）针对整段视频，择其最重要者。不要添加各部分中没有的内容。")
        return (f"{intro}\n\n=== 任务 ===\n{rendered_prompt.strip()}\n\n{parts_text}\n\n=== 结束 ===\n\n{outro}\n")
    length = f" ({whole} long)" if whole else ""
    intro = (f"The task below is about a long video{length}. Because the video is too long for one request, "
             f"the task was done in {n} consecutive parts; each part's answer follows the task, labelled with "
             "its time range. There is no video in this request, only these texts.")
    outro = (f"Combine the {n} partial answers into ONE answer to the task, in exactly the shape the task asks "
             "for: the same headings in the same order, the same language, and no text before the first "
             "heading or after the last section. Keep every timestamp as it is (they are already absolute "
             "times in the whole video); keep lists and tables in time order across the parts; remove "
             "duplication (an overview or basic information written once per part becomes one); counts the "
             "task gives (such as \"three to six objectives\") apply to the whole video, so keep the most "
             "important items. Do not add anything that is not in the parts.")
    return (f"{intro}\n\n=== TASK ===\n{rendered_prompt.strip()}\n\n{parts_text}\n\n=== END OF PARTS ===\n\n"
            f"{outro}\n")


# ---------------------------------------------------------------- template / job options

CONTEXT_KEYS = ("strategy", "clip_minutes", "allow_low_resolution", "fps")
CONTEXT_DEFAULTS: dict[str, Any] = {"strategy": "auto", "clip_minutes": None, "allow_low_resolution": True,
                                    "fps": None}


def parse_context_options(raw: Any = None) -> dict:
    """Validate a ``context:`` value (template or job) into a full dict with defaults.

    Accepts None (defaults), a bare strategy name (``context: clips``) or a mapping with
    :data:`CONTEXT_KEYS`. Raises :class:`ContextOptionError` (``key`` = the bad option).
    """
    out = dict(CONTEXT_DEFAULTS)
    if raw is None:
        return out
    if isinstance(raw, str):
        raw = {"strategy": raw}
    if not isinstance(raw, Mapping):
        raise ContextOptionError(
            f"context: must be a strategy name ({', '.join(STRATEGIES)}) or a mapping with "
            f"{', '.join(CONTEXT_KEYS)}, got {raw!r}")
    for key in raw:
        if key not in CONTEXT_KEYS:
            close = difflib.get_close_matches(str(key), CONTEXT_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ContextOptionError(f"context: unknown option '{key}'{hint}; known: {', '.join(CONTEXT_KEYS)}",
                                     key=str(key))
    if raw.get("strategy") is not None:
        s = raw["strategy"]
        if not isinstance(s, str) or s.strip().lower() not in STRATEGIES:
            raise ContextOptionError(f"context: strategy must be one of {', '.join(STRATEGIES)}, got {s!r}",
                                     key="strategy")
        out["strategy"] = s.strip().lower()
    if raw.get("clip_minutes") is not None:
        v = raw["clip_minutes"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or math.isinf(v):
            raise ContextOptionError(f"context: clip_minutes must be a number of minutes > 0, got {v!r}",
                                     key="clip_minutes")
        out["clip_minutes"] = float(v)
    if raw.get("allow_low_resolution") is not None:
        v = raw["allow_low_resolution"]
        if not isinstance(v, bool):
            raise ContextOptionError(f"context: allow_low_resolution must be true or false, got {v!r}",
                                     key="allow_low_resolution")
        out["allow_low_resolution"] = v
    if raw.get("fps") is not None:
        v = raw["fps"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= MAX_FPS:
            raise ContextOptionError(f"context: fps must be a number in (0, {MAX_FPS:g}], got {v!r}", key="fps")
        out["fps"] = float(v)
    if out["strategy"] == "low" and not out["allow_low_resolution"]:
        raise ContextOptionError("context: strategy 'low' contradicts allow_low_resolution: false",
                                 key="allow_low_resolution")
    return out


def effective_options(template_ctx: Mapping[str, Any] | None, job_ctx: Mapping[str, Any] | None = None, *,
                      strategy: str | None = None, clip_minutes: float | None = None) -> dict:
    """The ``context:`` options a task runs with (full dict, :data:`CONTEXT_KEYS`), decided in one place
    for the run (session), the estimate (costs / ``--dry-run``) and batch mode alike.

    Most specific first: the job's own ``context:`` / ``clip_minutes:`` (manifest), then the run's
    ``--context`` / ``--clip-minutes`` (or ``settings:``), then the template's ``context:``, then
    the defaults. ``strategy="auto"`` from the run means "no preference" (it is the setting's
    default), so it never overrides a template that asks for something. ``allow_low_resolution``
    and ``fps`` belong to the template unless the job sets them: they say what the template's
    answers need, not how this run wants to spend.
    """
    out = dict(CONTEXT_DEFAULTS)
    for key, value in (template_ctx or {}).items():
        if key in CONTEXT_KEYS and value is not None:
            out[key] = value
    if strategy and strategy != "auto":
        out["strategy"] = strategy
    if clip_minutes is not None:
        out["clip_minutes"] = float(clip_minutes)
    for key, value in (job_ctx or {}).items():
        if key in CONTEXT_KEYS and value is not None:
            out[key] = value
    if out["strategy"] == "low" and not out["allow_low_resolution"]:
        # --context low (or a job's) over a template that forbids it: the template knows its answers
        # need the detail, so the wish gives way to auto (clips at full detail), never to a refusal.
        out["strategy"] = "auto"
    return out
