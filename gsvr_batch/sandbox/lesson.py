"""The answer the sandbox "generates": a lesson skeleton that follows the prompt's headings.

There is no model here, so the text is built from the prompt's structure and the video's
real duration. It says plainly that it was produced offline without watching the video,
so nobody mistakes sandbox output for a real lesson plan. Same input, same text.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass

ASSUMED_DURATION = 600.0  # seconds, for YouTube links and anything PyAV cannot open
TOKENS_PER_SECOND = 300  # Gemini's default media resolution
TOKENS_PER_SECOND_LOW = 100  # mediaResolution MEDIA_RESOLUTION_LOW
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


def format_ts(seconds: float) -> str:
    """``MM:SS`` (minutes may exceed 59 for long videos, so the format stays one shape)."""
    s = max(0, int(seconds))
    return f"{s // 60:02d}:{s % 60:02d}"


def build_lesson(prompt: str, duration: float | None, *, model: str, source: str = "") -> str:
    """The lesson text for a prompt and a video of ``duration`` seconds (None: assumed)."""
    chinese = wants_chinese(prompt)
    assumed = duration is None or duration <= 0
    seconds = ASSUMED_DURATION if assumed else float(duration)
    sections = parse_headings(prompt) or (DEFAULT_SECTIONS_ZH if chinese else DEFAULT_SECTIONS_EN)
    digest = hashlib.sha256(f"{prompt}\0{source}\0{seconds}".encode()).digest()
    phrases = _PHRASES_ZH if chinese else _PHRASES_EN

    if chinese:
        how_long = (f"视频时长按 {seconds:.0f} 秒估计（无法测量）" if assumed
                    else f"视频实测时长 {seconds:.1f} 秒")
        out = ["# 课程教案（沙盒）", "",
               f"> 本文由 gsvr-batch 沙盒离线生成，未观看视频。{OFFLINE_NOTE}",
               f"> {how_long}；模型 {model}。", ""]
    else:
        how_long = (f"The video duration is assumed to be {seconds:.0f} s (it could not be measured)"
                    if assumed else f"The video is {seconds:.1f} s long (measured)")
        out = ["# Lesson plan (sandbox)", "", f"> {OFFLINE_NOTE}", f"> {how_long}; model {model}.", ""]

    n = len(sections)
    for i, name in enumerate(sections):
        start = seconds * i / n
        end = seconds * (i + 1) / n
        # Keep every timestamp strictly inside the video, even for very short clips.
        ts_end = min(end, max(0.0, seconds - 1))
        phrase = phrases[digest[i % len(digest)] % len(phrases)]
        out.append(f"## {name}")
        out.append("")
        out.append(f"- [{format_ts(start)}–{format_ts(ts_end)}] {phrase}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    text_tokens: int
    media_tokens: int


def prompt_usage(text: str, media_seconds: float, *, low_resolution: bool = False) -> Usage:
    """Prompt tokens: 300 per video second (100 at low resolution) + one per 4 text chars."""
    rate = TOKENS_PER_SECOND_LOW if low_resolution else TOKENS_PER_SECOND
    media = round(rate * media_seconds)
    text_tokens = math.ceil(len(text) / 4)
    return Usage(media + text_tokens, text_tokens, media)


def answer_tokens(answer: str) -> int:
    return math.ceil(len(answer) / 4)
