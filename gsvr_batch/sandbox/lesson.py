"""The answer the sandbox "generates": a lesson skeleton that follows the prompt's headings.

There is no model here, so the text is built from the prompt's structure and the stretch of
video the request covers (the whole video, a ``videoMetadata`` clip, or — for a text-only
merge request — the range of the timestamps in the prompt). It says plainly that it was produced offline without watching the video,
so nobody mistakes sandbox output for a real lesson plan. Same input, same text.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

ASSUMED_DURATION = 600.0  # seconds, for YouTube links and anything PyAV cannot open
# Google's video tokenizer (ai.google.dev/gemini-api/docs/video-understanding, media-resolution):
TOKENS_PER_FRAME = 258  # default (and MEDIUM / HIGH) media resolution
TOKENS_PER_FRAME_LOW = 66  # mediaResolution MEDIA_RESOLUTION_LOW
AUDIO_TOKENS_PER_SECOND = 32  # the sound track, at every resolution
DEFAULT_FPS = 1.0  # frames sampled per second unless videoMetadata.fps says otherwise
OFFLINE_NOTE = "Produced offline by the gsvr-batch sandbox without watching the video."

DEFAULT_SECTIONS_EN = ["Overview", "Learning Objectives", "Key Concepts", "Timeline",
                       "Activities", "Assessment", "Summary"]
DEFAULT_SECTIONS_ZH = ["概述", "学习目标", "核心概念", "时间线", "课堂活动", "评估", "总结"]

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")
_NUMBERED = re.compile(r"^\s*\d{1,2}[.)、]\s+(.+)$")
_BULLET = re.compile(r"^\s*[-*+•]\s+(.+)$")
_PHRASES_EN = [
    "Introduce the idea and connect it to what students already know.",
    "Work through one example step by step and check understanding.",
    "Pause for a short question to the class before moving on.",
    "Summarise the point in one sentence students can copy down.",
    "Point out a common misconception and how to correct it.",
]
_PHRASES_ZH = [
    "引入主题，并与学生已有的知识建立联系。",
    "逐步讲解一个例子，并检查学生的理解。",
    "在继续之前向全班提一个简短的问题。",
    "用一句学生可以记下的话总结要点。",
    "指出一个常见误解以及如何纠正。",
]


def wants_chinese(prompt: str) -> bool:
    return bool(_CJK.search(prompt))


def _clean(item: str) -> str:
    """A heading name from a prompt line: no markup, no trailing explanation."""
    item = re.sub(r"[*_`]+", "", item).strip()
    for sep in (":", "：", " - ", " — ", "（", "("):
        if sep in item:
            head = item.split(sep, 1)[0].strip()
            if head:
                item = head
    return item[:80].strip()


def parse_headings(prompt: str) -> list[str]:
    """Section names the prompt asks for: Markdown headings, else numbered, else bulleted items.

    At least two items are needed to count as a structure (a single heading is usually the
    prompt's own title). Returns ``[]`` when the prompt shows no structure.
    """
    lines = prompt.splitlines()
    for pattern in (_MD_HEADING, _NUMBERED, _BULLET):
        found: list[str] = []
        for line in lines:
            m = pattern.match(line)
            if m:
                name = _clean(m.group(1))
                if name and name not in found:
                    found.append(name)
        if len(found) >= 2:
            return found[:15]
    return []


def format_ts(seconds: float, *, hours: bool = False) -> str:
    """``MM:SS``, or ``H:MM:SS`` when ``hours`` (a lesson reaching past the first hour)."""
    s = max(0, int(seconds))
    if hours:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60:02d}:{s % 60:02d}"


# Timestamps in a merge prompt: ``H:MM:SS`` or ``MM:SS`` (minutes may pass 59), not glued to
# other digits, colons or letters — the shapes this module and real lessons write.
_TIMESTAMP = re.compile(r"(?<![\w:])(?:(\d{1,2}):([0-5]\d):([0-5]\d)|(\d{1,3}):([0-5]\d))(?![\w:])")


def find_timestamps(text: str) -> list[int]:
    """Seconds of every timestamp written in ``text`` (in order of appearance)."""
    out = []
    for m in _TIMESTAMP.finditer(text):
        if m.group(1) is not None:
            out.append(int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3)))
        else:
            out.append(int(m.group(4)) * 60 + int(m.group(5)))
    return out


@dataclass(frozen=True)
class Span:
    """The stretch of video an answer talks about, in absolute seconds of the video.

    ``kind``: ``measured`` (probed file), ``declared`` (YouTube length from the config),
    ``assumed`` (unknown length: ``ASSUMED_DURATION``), ``merge`` (a text-only request: the
    range of the timestamps found in the prompt). ``total`` is the whole video's length;
    ``start``/``end`` differ from 0/total for a clipped request (``videoMetadata``).
    """

    start: float
    end: float
    total: float
    kind: str = "measured"

    @property
    def clipped(self) -> bool:
        return self.kind != "merge" and (self.start > 0 or self.end < self.total)


def merge_span(prompt: str) -> Span | None:
    """What a text-only (merge) request covers: from its first to its last timestamp, or None."""
    found = find_timestamps(prompt)
    if not found:
        return None
    # +1: the skeleton keeps its timestamps strictly before ``end``, so the latest one is written.
    return Span(float(min(found)), float(max(found)) + 1, float(max(found)) + 1, "merge")


def _how_long(span: Span, chinese: bool) -> str:
    long = span.end >= 3600
    a, b, total = (format_ts(span.start, hours=long), format_ts(span.end, hours=long),
                   format_ts(span.total, hours=span.total >= 3600))
    if chinese:
        if span.kind == "merge":
            return f"由覆盖 {a}–{format_ts(span.end - 1, hours=long)} 的分段教案合并而成"
        what = {"measured": f"视频实测时长 {span.total:.1f} 秒",
                "declared": f"视频时长 {span.total:.0f} 秒（沙盒配置中声明）",
                "assumed": f"视频时长按 {span.total:.0f} 秒估计（无法测量）"}[span.kind]
        return what + (f"；本段覆盖 {a}–{b}（共 {total}）" if span.clipped else "")
    if span.kind == "merge":
        return f"Merged from partial lessons covering {a}–{format_ts(span.end - 1, hours=long)}"
    what = {"measured": f"The video is {span.total:.1f} s long (measured)",
            "declared": f"The video is {span.total:.0f} s long (declared in the sandbox config)",
            "assumed": f"The video duration is assumed to be {span.total:.0f} s (it could not be measured)"}[span.kind]
    return what + (f"; this part covers {a}–{b} of {total}" if span.clipped else "")


def build_lesson(prompt: str, span: Span | float | None, *, model: str, source: str = "") -> str:
    """The lesson text for a prompt and the video stretch ``span`` talks about.

    A number (or None: assumed length) is a whole video of that many seconds, as before.
    Timestamps are absolute (a clip of 20:00–40:00 writes 20:00…39:59) and take the
    ``H:MM:SS`` shape when the stretch reaches past the first hour.
    """
    if not isinstance(span, Span):
        if span is None or span <= 0:
            span = Span(0.0, ASSUMED_DURATION, ASSUMED_DURATION, "assumed")
        else:
            span = Span(0.0, float(span), float(span), "measured")
    chinese = wants_chinese(prompt)
    sections = parse_headings(prompt) or (DEFAULT_SECTIONS_ZH if chinese else DEFAULT_SECTIONS_EN)
    digest = hashlib.sha256(f"{prompt}\0{source}\0{span.start}\0{span.end}".encode()).digest()
    phrases = _PHRASES_ZH if chinese else _PHRASES_EN
    how_long = _how_long(span, chinese)

    if chinese:
        out = ["# 课程教案（沙盒）", "",
               f"> 本文由 gsvr-batch 沙盒离线生成，未观看视频。{OFFLINE_NOTE}",
               f"> {how_long}；模型 {model}。", ""]
    else:
        out = ["# Lesson plan (sandbox)", "", f"> {OFFLINE_NOTE}", f"> {how_long}; model {model}.", ""]

    n = len(sections)
    first, last = span.start, span.end
    long = last >= 3600
    for i, name in enumerate(sections):
        start = first + (last - first) * i / n
        end = first + (last - first) * (i + 1) / n
        # Keep every timestamp strictly inside the stretch, even for very short clips.
        ts_end = min(end, max(first, last - 1))
        phrase = phrases[digest[i % len(digest)] % len(phrases)]
        out.append(f"## {name}")
        out.append("")
        out.append(f"- [{format_ts(start, hours=long)}–{format_ts(ts_end, hours=long)}] {phrase}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


@dataclass(frozen=True)
class Usage:
    """Prompt tokens by modality (``cached`` is the part served from the implicit cache)."""

    text_tokens: int
    video_tokens: int = 0
    audio_tokens: int = 0
    cached_video: int = 0
    cached_audio: int = 0

    @property
    def media_tokens(self) -> int:
        return self.video_tokens + self.audio_tokens

    @property
    def prompt_tokens(self) -> int:
        return self.text_tokens + self.media_tokens

    @property
    def cached_tokens(self) -> int:
        return self.cached_video + self.cached_audio


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def video_tokens(seconds: float, *, fps: float = DEFAULT_FPS, low_resolution: bool = False,
                 audio: bool = True) -> tuple[int, int]:
    """(frame tokens, audio tokens) for ``seconds`` of video: Google's documented tokenizer.

    ``ceil(seconds × fps)`` frames at 258 tokens (66 at MEDIA_RESOLUTION_LOW) + 32 tokens per
    second of sound (any resolution; none for a file without an audio track).
    """
    if seconds <= 0:
        return 0, 0
    frames = max(1, math.ceil(seconds * fps - 1e-9))  # 1e-9: 6.000000001 s is still 6 frames
    per_frame = TOKENS_PER_FRAME_LOW if low_resolution else TOKENS_PER_FRAME
    sound = math.ceil(seconds * AUDIO_TOKENS_PER_SECOND - 1e-9) if audio else 0
    return frames * per_frame, sound


def answer_tokens(answer: str) -> int:
    return math.ceil(len(answer) / 4)
