"""Context strategy (gsvr_batch.context): pure functions, checked by hand-computable numbers.

Hand rules used below (module doc of gsvr_batch.context):
  video at 1 fps: default 258 + 10 (timestamp) per frame + 32 audio = 300 tokens / s
                  low      66 + 10                  + 32       = 108 tokens / s
  prompt: 4 characters a token, so PROMPT = 4,000 characters = 1,000 tokens
  a clip request adds SEGMENT_PROMPT_TOKENS = 400 → 1,400 tokens of prompt per clip
  ceiling = min(window, TPM) × 0.9: free tier 225,000; tier 1 (1,000,000 TPM) 900,000;
            no TPM 943,718 (1,048,576 × 0.9)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from google.genai import errors as genai_errors
from google.genai import types

from gsvr_batch import context as ctx
from gsvr_batch.context import (
    DEFAULT_CLIP_MINUTES,
    LOW,
    SAFETY_MARGIN,
    SEGMENT_PROMPT_TOKENS,
    STRATEGIES,
    Clip,
    ContextError,
    ContextOptionError,
    Plan,
    after_overflow,
    choose,
    clip_offsets,
    duration_from_tokens,
    from_count,
    hms,
    input_limit_for,
    merge_prompt,
    parse_context_options,
    parse_token_overflow,
    prompt_language,
    request_ceiling,
    request_tokens,
    segment_prompt,
    text_tokens,
    video_tokens,
)
from gsvr_batch.errors import TemplateError, UsageError

WINDOW = 1_048_576
FREE = 250_000
TIER1 = 1_000_000
PROMPT = 4_000  # characters → 1,000 tokens
REAL_400 = "The input token count (1165786) exceeds the maximum number of tokens allowed (1048576)."


def plan_for(duration, tpm, **kw) -> Plan:
    return choose(duration, PROMPT, input_limit=WINDOW, tpm=tpm, **kw)


def bounds(plan: Plan) -> list[float]:
    return [plan.clips[0].start] + [c.end for c in plan.clips] if plan.clips else []


def clip_request(plan: Plan, clip: Clip, prompt_chars: int = PROMPT) -> int:
    """What one clip request is estimated at (with the plan's learnt scale)."""
    video = video_tokens(clip.seconds, low=plan.low_resolution, fps=plan.fps)
    video = video if plan.token_scale == 1.0 else math.ceil(video * plan.token_scale - 1e-9)
    return video + ctx.prompt_tokens(prompt_chars) + SEGMENT_PROMPT_TOKENS


def assert_clips_cover(plan: Plan, start: float, end: float, *, first_index: int = 0) -> None:
    clips = plan.clips
    assert clips, plan
    assert clips[0].start == start and clips[-1].end == end
    assert [c.index for c in clips] == list(range(first_index, first_index + len(clips)))
    for a, b in zip(clips, clips[1:]):
        assert a.end == b.start, (a, b)  # consecutive, no gap, no overlap
        assert a.seconds > 0
    assert clips[-1].seconds >= 0


# ---------------------------------------------------------------- constants


def test_constants_are_what_the_doc_says() -> None:
    assert STRATEGIES == ("auto", "full", "low", "clips")
    assert SAFETY_MARGIN == 0.10
    assert request_ceiling(WINDOW, None) == 943_718  # the issue's example ceiling
    # 45-minute clips at default resolution fit the 2.5 window with room (tier 1 keeps detail).
    assert request_tokens(DEFAULT_CLIP_MINUTES * 60, PROMPT) + SEGMENT_PROMPT_TOKENS == 811_400 < 943_718
    assert ctx.MODEL_INPUT_LIMITS["gemini-2.5-pro"] == ctx.MODEL_INPUT_LIMITS["gemini-2.5-flash"] == WINDOW


# ---------------------------------------------------------------- limits


@pytest.mark.parametrize("model, known, expected", [
    ("gemini-2.5-flash", None, WINDOW),
    ("models/gemini-2.5-pro", None, WINDOW),
    ("gemini-2.5-flash-lite", None, WINDOW),
    ("gemini-2.0-flash", None, WINDOW),
    ("gemini-2.0-flash-lite", None, WINDOW),
    ("Gemini-2.5-Flash", None, WINDOW),
    ("gemini-2.5-flash-001", None, WINDOW),
    ("gemini-2.5-flash-preview-09-2025", None, WINDOW),
    ("gemini-2.5-flash-lite-preview-06-17", None, WINDOW),
    ("some-future-model", None, ctx.DEFAULT_INPUT_LIMIT),
    # models.get answers win, under either spelling, for version suffixes too
    ("gemini-2.5-flash", {"models/gemini-2.5-flash": 500_000}, 500_000),
    ("models/gemini-2.5-flash-001", {"gemini-2.5-flash": 500_000}, 500_000),
    ("gemma-3-27b-it", {"models/gemma-3-27b-it": 131_072}, 131_072),
    ("gemini-2.5-pro", {"models/gemini-2.5-flash": 500_000}, WINDOW),  # another model's answer
    ("gemini-2.5-pro", {"models/gemini-2.5-pro": 0}, WINDOW),  # a useless answer is ignored
])
def test_input_limit_for(model, known, expected) -> None:
    assert input_limit_for(model, known) == expected


@pytest.mark.parametrize("limit, tpm, expected", [
    (WINDOW, None, 943_718),
    (WINDOW, FREE, 225_000),
    (WINDOW, TIER1, 900_000),
    (WINDOW, 2_000_000, 943_718),  # 2.5 Pro tier 1: the window is the smaller
    (WINDOW, 125_000.0, 112_500),
    (32_768, FREE, 29_491),
])
def test_request_ceiling(limit, tpm, expected) -> None:
    assert request_ceiling(limit, tpm) == expected


@pytest.mark.parametrize("limit, tpm", [(0, None), (-1, FREE), (WINDOW, 0), (WINDOW, -5)])
def test_request_ceiling_rejects_nonsense(limit, tpm) -> None:
    with pytest.raises(ContextError):
        request_ceiling(limit, tpm)


# ---------------------------------------------------------------- estimates


@pytest.mark.parametrize("seconds, low, fps, expected", [
    (0, False, None, 0),
    (1, False, None, 300),
    (1, True, None, 108),
    (3600, False, None, 1_080_000),
    (3600, True, None, 388_800),
    (7200, False, None, 2_160_000),
    (7200, True, None, 777_600),
    (2400, False, None, 720_000),
    (10, False, 0.5, 5 * 268 + 320),  # 5 frames, audio unchanged
    (10, False, 2, 20 * 268 + 320),
    (10, True, 0.25, 3 * 76 + 320),  # ceil(2.5) = 3 frames
    (0.5, False, None, 268 + 16),  # a started frame counts
])
def test_video_tokens(seconds, low, fps, expected) -> None:
    assert video_tokens(seconds, low=low, fps=fps) == expected


@pytest.mark.parametrize("seconds, chars, low, expected", [
    (7200, 4000, False, 2_161_000),
    (7200, 4000, True, 778_600),
    (None, 4000, False, 1_000),  # text only (the merge)
    (0, 4001, False, 1_001),
    (2400, 0, False, 720_000),
])
def test_request_tokens(seconds, chars, low, expected) -> None:
    assert request_tokens(seconds, chars, low=low) == expected


@pytest.mark.parametrize("fps", [0, -1, 25, True, "1"])
def test_bad_fps(fps) -> None:
    with pytest.raises(ContextError, match="fps"):
        video_tokens(10, fps=fps)


@pytest.mark.parametrize("text, expected", [("", 0), ("abcd", 1), ("abcde", 2), ("中文", 2), ("中文abcd", 3),
                                            ("光合作用。", 5)])
def test_text_tokens(text, expected) -> None:
    assert text_tokens(text) == expected
    assert ctx.merge_tokens(text) == expected


@pytest.mark.parametrize("tokens, low, fps, seconds", [
    (2_088_000, False, None, 7200.0),  # 290 / s without timestamps: an upper bound of the length
    (705_600, True, None, 7200.0),  # 98 / s
    (0, False, None, 0.0),
    (1_000, False, 0.5, 1000 / 161),
])
def test_duration_from_tokens(tokens, low, fps, seconds) -> None:
    assert duration_from_tokens(tokens, low=low, fps=fps) == pytest.approx(seconds)


@pytest.mark.parametrize("seconds, text", [(0, "0:00:00"), (754.4, "0:12:34"), (7200, "2:00:00"),
                                           (14399.6, "4:00:00"), (None, "?")])
def test_hms(seconds, text) -> None:
    assert hms(seconds) == text


# ---------------------------------------------------------------- choose: the scenarios of the issue


# (duration, tpm) → label, media_resolution, boundaries, tokens_per_request, requests
SCENARIOS = [
    # free tier (225,000 ceiling): 40 min ≈ 721,000 tokens at default, ≈ 260,200 at low: clips.
    # Longest clip at low = floor((225,000 − 1,400) / 108) = 2,070 s; at default 745 s.
    (2400, FREE, "2 clips + merge", LOW, [0, 1200, 2400], 1200 * 108 + 1400, 3),
    (7200, FREE, "4 clips + merge", LOW, [0, 1800, 3600, 5400, 7200], 1800 * 108 + 1400, 5),
    # 14,400 / 2,070 → 7 clips; ceil(14,400 / 7) = 2,058 s each, the last 2,052 s.
    (14400, FREE, "7 clips + merge", LOW, [0, 2058, 4116, 6174, 8232, 10290, 12348, 14400], 223_664, 8),
    # tier 1 (900,000 ceiling)
    (2400, TIER1, "1 call", None, [], 721_000, 1),
    (7200, TIER1, "low res", LOW, [], 778_600, 1),
    # 4 h: 45-min cap → 6 clips either way, so the template's resolution is kept (40 min each).
    (14400, TIER1, "6 clips + merge", None, [0, 2400, 4800, 7200, 9600, 12000, 14400], 721_400, 7),
    # no TPM known: only the window (943,718)
    (3000, None, "1 call", None, [], 901_000, 1),
    (7200, None, "low res", LOW, [], 778_600, 1),
]


@pytest.mark.parametrize("duration, tpm, label, media, edges, tokens, requests", SCENARIOS)
def test_choose_scenarios(duration, tpm, label, media, edges, tokens, requests) -> None:
    p = plan_for(duration, tpm)
    assert p.label() == label
    assert p.media_resolution == media
    assert bounds(p) == edges
    assert p.tokens_per_request == tokens
    assert p.requests == requests
    assert p.ceiling == request_ceiling(WINDOW, tpm)
    assert p.fits and p.duration_known and p.duration == duration
    assert p.strategy == {"1 call": "full", "low res": "low"}.get(label, "clips")
    if p.strategy == "clips":
        assert all(clip_request(p, c) <= p.ceiling for c in p.clips)
        assert p.tokens_per_request == max(clip_request(p, c) for c in p.clips)


@pytest.mark.parametrize("tpm", [FREE, TIER1])
def test_unknown_length_is_a_probe(tpm) -> None:
    p = plan_for(None, tpm)
    assert (p.strategy, p.label(), p.requests, p.clips, p.media_resolution) == ("full", "1 call", 1, (), None)
    assert p.duration_known is False and p.duration is None and p.probe
    assert p.tokens_per_request == 1_000  # only the prompt is known
    assert "length unknown" in p.reason and "after_overflow" in p.reason


def test_reasons_read_like_the_issue() -> None:
    assert plan_for(7200, None).reason == (
        "2:00:00 at default resolution ≈ 2,161,000 tokens > 943,718 ceiling (input window 1,048,576 − 10%); "
        "low resolution ≈ 778,600 fits")
    assert plan_for(14400, FREE).reason == (
        "4:00:00 at default resolution ≈ 4,321,000 tokens > 225,000 ceiling (TPM 250,000 − 10%); "
        "low resolution ≈ 1,556,200 too; 7 clips of ≤ 34:18 at low resolution ≈ 223,664 tokens each + merge")
    assert plan_for(2400, TIER1).reason == (
        "0:40:00 at default resolution ≈ 721,000 tokens ≤ 900,000 ceiling (TPM 1,000,000 − 10%)")


@pytest.mark.parametrize("duration", [0, 1, 59, 61, 754.4, 3499, 3599.9, 3600, 3600.4, 5400, 7201, 10800,
                                      14400, 36000.5])
@pytest.mark.parametrize("tpm", [None, FREE, TIER1, 30_000])
@pytest.mark.parametrize("clip_minutes", [None, 10, 40, 0.5])
@pytest.mark.parametrize("allow_low, tmpl", [(True, None), (False, None), (True, "low"), (False, "MEDIA_RESOLUTION_HIGH")])
def test_every_auto_plan_fits_and_covers(duration, tpm, clip_minutes, allow_low, tmpl) -> None:
    p = choose(duration, PROMPT, input_limit=WINDOW, tpm=tpm, clip_minutes=clip_minutes, allow_low=allow_low,
               template_resolution=tmpl)
    tmpl_low = tmpl == "low"
    assert p.fits and p.tokens_per_request <= p.ceiling
    full = request_tokens(duration, PROMPT, low=tmpl_low)
    if full <= p.ceiling:  # fidelity first: one call at the template's resolution when it fits
        assert p.strategy == "full" and p.tokens_per_request == full and p.requests == 1
        return
    low = request_tokens(duration, PROMPT, low=True)
    if allow_low and not tmpl_low and low <= p.ceiling:
        assert p.strategy == "low" and p.media_resolution == LOW and p.tokens_per_request == low
        return
    assert p.strategy == "clips" and p.requests == len(p.clips) + 1
    assert_clips_cover(p, 0.0, float(duration))
    assert all(clip_request(p, c) <= p.ceiling for c in p.clips)
    if not allow_low and not tmpl_low:
        assert p.media_resolution is None and not p.low_resolution
    if tmpl_low:
        assert p.media_resolution is None and p.low_resolution  # the template's own low resolution
    cap = (clip_minutes or DEFAULT_CLIP_MINUTES) * 60
    assert all(c.seconds <= max(cap, 1) + ctx.MIN_TAIL_SECONDS for c in p.clips)
    if clip_minutes is None or "shrunk" in p.reason:
        assert all(c.seconds <= max(cap, 1) for c in p.clips)
    else:  # the asked length, the last one shorter (or a short tail folded into it)
        assert all(c.seconds == max(1, round(cap)) for c in p.clips[:-1])


def test_low_resolution_clips_only_when_fewer() -> None:
    # 10-minute clips fit at default resolution on the free tier (600 s ≤ 745 s): 12 either way.
    p = plan_for(7200, FREE, clip_minutes=10)
    assert p.label() == "12 clips + merge" and p.media_resolution is None and not p.low_resolution
    assert {c.seconds for c in p.clips} == {600.0}
    # Without the explicit length, low resolution makes them fewer (4 instead of 10).
    assert plan_for(7200, FREE).label() == "4 clips + merge"


def test_clip_minutes_kept_shrunk_and_tail_folded() -> None:
    # 40 min at low ≈ 2,400 × 108 + 1,400 = 260,600 > 225,000: shrunk to 2,070 s, then balanced.
    p = plan_for(7200, FREE, clip_minutes=40)
    assert "clip_minutes 40 would be ≈ 260,600 tokens a clip at low resolution: shrunk to 34:30" in p.reason
    assert bounds(p) == [0, 1800, 3600, 5400, 7200]
    # Fits: kept exactly.
    p = plan_for(7200, None, clip_minutes=40, allow_low=False)
    assert bounds(p) == [0, 2400, 4800, 7200] and "low resolution not allowed by the template" in p.reason
    # A 30-second tail is folded into the clip before it (2,430 s still fits: max 3,140 s).
    assert bounds(plan_for(7230, None, clip_minutes=40, allow_low=False)) == [0, 2400, 4800, 7230]
    # A 100-second tail stays a clip of its own: the last may be shorter.
    assert bounds(plan_for(7300, None, clip_minutes=40, allow_low=False)) == [0, 2400, 4800, 7200, 7300]


def test_template_resolution() -> None:
    p = plan_for(7200, TIER1, template_resolution="low")
    assert (p.strategy, p.media_resolution, p.low_resolution, p.tokens_per_request) == ("full", None, True, 778_600)
    p = plan_for(7200, FREE, template_resolution="MEDIA_RESOLUTION_LOW")
    assert p.strategy == "clips" and p.media_resolution is None and p.low_resolution
    p = plan_for(7200, TIER1, template_resolution=types.MediaResolution.MEDIA_RESOLUTION_HIGH)
    assert p.strategy == "low" and p.media_resolution == LOW  # high costs what default costs on 2.5


def test_fps_is_carried_and_counted() -> None:
    # 0.5 fps: 134 + 32 = 166 tokens / s at default; 2 h = 3,600 × 268 + 230,400 + 1,000 = 1,196,200.
    p = plan_for(7200, TIER1, fps=0.5, allow_low=False)
    assert p.fps == 0.5 and p.strategy == "clips"
    assert p.tokens_per_request == max(clip_request(p, c) for c in p.clips) <= 900_000
    assert clip_offsets(p.clips[0], p.fps)["fps"] == 0.5


# ---------------------------------------------------------------- forcing


def test_forced_plans_are_returned_and_say_when_they_cannot_fit() -> None:
    p = plan_for(7200, None, forced="full")
    assert p.strategy == "full" and not p.fits and p.tokens_per_request == 2_161_000
    assert p.reason.startswith("forced full:") and "the API will refuse it (400" in p.reason
    p = plan_for(7200, FREE, forced="low")
    assert p.strategy == "low" and p.media_resolution == LOW and not p.fits
    assert "can never be admitted (over the 250,000 tokens-per-minute quota)" in p.reason
    p = plan_for(3300, None, forced="full")  # 991,000: over the ceiling, under the window
    assert not p.fits and "inside the 10% safety margin" in p.reason
    p = plan_for(2400, TIER1, forced="full")
    assert p.fits and p.label() == "1 call"
    # Clips forced on a video that would fit in one call.
    p = plan_for(2400, TIER1, forced="clips")
    assert p.label() == "1 clip + merge" and p.requests == 2 and bounds(p) == [0, 2400]
    p = plan_for(2400, TIER1, forced="clips", clip_minutes=10)
    assert p.label() == "4 clips + merge" and p.reason.startswith("forced clips:")
    # Forced on an unknown length: still a probe, saying so.
    p = plan_for(None, FREE, forced="clips")
    assert p.probe and p.strategy == "full" and p.reason.startswith("clips forced but the length is unknown")
    p = plan_for(None, FREE, forced="low")
    assert p.probe and p.strategy == "low" and p.media_resolution == LOW


@pytest.mark.parametrize("kw, match", [
    ({"forced": "fast"}, "strategy must be one of"),
    ({"forced": "low", "allow_low": False}, "contradicts allow_low_resolution"),
    ({"clip_minutes": 0}, "clip_minutes"),
    ({"clip_minutes": -3}, "clip_minutes"),
    ({"clip_minutes": True}, "clip_minutes"),
    ({"fps": 30}, "fps"),
])
def test_contradictory_options_raise_usage_errors(kw, match) -> None:
    with pytest.raises(ContextError, match=match) as info:
        plan_for(7200, FREE, **kw)
    assert isinstance(info.value, UsageError)


def test_forced_low_on_a_low_template_is_no_contradiction() -> None:
    p = plan_for(7200, TIER1, forced="low", allow_low=False, template_resolution="low")
    assert p.strategy == "low" and p.fits


def test_negative_duration() -> None:
    with pytest.raises(ContextError):
        plan_for(-1, FREE)


def test_prompt_alone_too_big_is_reported_not_looped() -> None:
    p = choose(600, 1_000_000, input_limit=WINDOW, tpm=FREE)  # 250,000 prompt tokens
    assert not p.fits and p.strategy == "full" and "clips cannot help either" in p.reason


# ---------------------------------------------------------------- records and labels


@pytest.mark.parametrize("duration, tpm", [(2400, TIER1), (7200, TIER1), (14400, FREE), (None, FREE)])
def test_record_round_trip(duration, tpm) -> None:
    p = plan_for(duration, tpm)
    rec = json.loads(json.dumps(p.to_record()))
    assert Plan.from_record(rec) == p
    assert Plan.from_record(rec).label() == p.label()


def test_record_from_an_older_writer_and_bad_records() -> None:
    rec = {"strategy": "low", "media_resolution": LOW, "clips": [], "fps": None, "tokens_per_request": 5,
           "requests": 1, "ceiling": 10, "reason": "r", "duration_known": True}
    p = Plan.from_record(rec)
    assert p.low_resolution and p.token_scale == 1.0 and p.duration is None
    clip_rec = {**rec, "strategy": "clips", "clips": [{"index": 0, "start": 0, "end": 9, "open_end": True}]}
    assert Plan.from_record(clip_rec).clips == (Clip(0, 0.0, 9.0, True),)
    with pytest.raises(ValueError):
        Plan.from_record({**rec, "strategy": "auto"})


# ---------------------------------------------------------------- the 400 parser


SDK_ERROR = genai_errors.ClientError(400, {"error": {"code": 400, "message": REAL_400, "status": "INVALID_ARGUMENT"}})


@pytest.mark.parametrize("message, expected", [
    (REAL_400, (1_165_786, 1_048_576)),
    (str(SDK_ERROR), (1_165_786, 1_048_576)),  # "400 INVALID_ARGUMENT. {'error': {...}}"
    (SDK_ERROR.message, (1_165_786, 1_048_576)),
    (f"400 INVALID_ARGUMENT: {REAL_400}", (1_165_786, 1_048_576)),  # our RequestRejected text
    (json.dumps({"error": {"code": 400, "message": REAL_400}}), (1_165_786, 1_048_576)),
    ("The input token count (2,089,000) exceeds the maximum number of tokens allowed (1,048,576).",
     (2_089_000, 1_048_576)),
    ("the INPUT TOKEN COUNT (300001)\nexceeds the maximum number of tokens allowed (300000)", (300_001, 300_000)),
    ("Unable to submit request because the input token count is 1165786 but model only supports up to 1048576. "
     "Reduce the input token count and try again.", (1_165_786, 1_048_576)),  # Vertex AI wording
    ("429 RESOURCE_EXHAUSTED: You exceeded your current quota, limit: 250000", None),
    ("400 INVALID_ARGUMENT: Request contains an invalid argument.", None),
    ("The input token count is fine", None),
    ("", None),
    (None, None),
])
def test_parse_token_overflow(message, expected) -> None:
    assert parse_token_overflow(message) == expected


# ---------------------------------------------------------------- after a 400


def test_full_refused_goes_to_low_or_clips_sized_from_n() -> None:
    # A real 2 h lecture counted at ≈ 295 / s: N = 2,125,000, below our 2,161,000 → no rescaling.
    sent = plan_for(7200, None, forced="full")
    p = after_overflow(sent, 2_125_000, WINDOW, duration=7200, prompt_chars=PROMPT, tpm=TIER1)
    assert p.label() == "low res" and p.tokens_per_request == 778_600 and p.token_scale == 1.0
    assert p.reason.startswith("API refused 2,125,000 tokens for the whole video at default resolution "
                               "(limit 1,048,576)")
    p = after_overflow(sent, 2_125_000, WINDOW, duration=7200, prompt_chars=PROMPT, tpm=FREE)
    assert p.label() == "4 clips + merge" and bounds(p) == [0, 1800, 3600, 5400, 7200]
    p = after_overflow(sent, 2_125_000, WINDOW, duration=7200, prompt_chars=PROMPT, tpm=TIER1, allow_low=False)
    assert p.strategy == "clips" and p.media_resolution is None


def test_under_estimate_is_corrected_for_the_rest_of_the_task() -> None:
    # 50 min: we estimate 901,000 (fits 943,718); the API counts 1,100,000 → ×1,099,000 / 900,000.
    sent = plan_for(3000, None)
    assert sent.label() == "1 call"
    p = after_overflow(sent, 1_100_000, WINDOW, duration=3000, prompt_chars=PROMPT)
    assert p.token_scale == pytest.approx(1_099_000 / 900_000)
    assert p.label() == "low res" and "estimates scaled ×1.22" in p.reason
    assert p.tokens_per_request == math.ceil(324_000 * 1_099_000 / 900_000) + 1_000  # 396,700


def test_low_refused_goes_to_clips_and_the_window_comes_from_l() -> None:
    sent = plan_for(7200, TIER1)
    assert sent.label() == "low res"
    # The model's window turns out to be 500,000 (L), not the table's 1,048,576.
    p = after_overflow(sent, 790_000, 500_000, duration=7200, prompt_chars=PROMPT, tpm=TIER1)
    assert p.strategy == "clips" and p.ceiling == 450_000
    assert_clips_cover(p, 0.0, 7200.0)
    assert all(clip_request(p, c) <= 450_000 for c in p.clips)


def test_clip_refused_keeps_answered_clips_and_cuts_the_rest() -> None:
    sent = choose(14400, PROMPT, input_limit=200_000, tpm=None)  # a model thought to take 200,000
    assert sent.strategy == "clips" and sent.ceiling == 180_000
    failed = sent.clips[2]
    p = after_overflow(sent, 170_000, 150_000, duration=14400, prompt_chars=PROMPT, completed=2)
    assert p.clips[:2] == sent.clips[:2]  # answered, journaled, paid: untouched
    assert p.clips[2].start == failed.start and p.clips[2].seconds < failed.seconds
    assert_clips_cover(p, 0.0, 14400.0)
    assert p.ceiling == 135_000 and p.low_resolution == sent.low_resolution
    assert all(clip_request(p, c) <= 135_000 for c in p.clips[2:])
    assert p.requests == len(p.clips) + 1 and "2 answered clips kept" in p.reason
    with pytest.raises(ContextError, match="completed"):
        after_overflow(sent, 170_000, 150_000, duration=14400, prompt_chars=PROMPT, completed=len(sent.clips))


def test_first_clip_refused_replans_everything() -> None:
    sent = plan_for(14400, FREE)
    n = clip_request(sent, sent.clips[0]) * 2  # the API counts twice what we thought
    p = after_overflow(sent, n, 200_000, duration=14400, prompt_chars=PROMPT, tpm=FREE)
    assert p.token_scale > 1.9 and len(p.clips) > len(sent.clips)
    assert_clips_cover(p, 0.0, 14400.0)
    assert all(clip_request(p, c) <= p.ceiling for c in p.clips)


def test_a_refusal_always_moves_on_even_with_odd_numbers() -> None:
    sent = plan_for(600, None)  # fits by our estimate
    p = after_overflow(sent, 1_000, 2_000_000, duration=600, prompt_chars=PROMPT)
    assert p.strategy != "full"


# YouTube: length unknown; N at default resolution (290 / s without timestamps) gives it back.
# N = 290 × seconds + 1,000 prompt tokens.
@pytest.mark.parametrize("seconds, tpm, label, edges", [
    (7200, FREE, "4 clips + merge", [0, 1800, 3600, 5400, 7200]),
    (14400, FREE, "7 clips + merge", [0, 2058, 4116, 6174, 8232, 10290, 12348, 14400]),
    (7200, TIER1, "low res", []),
    (14400, TIER1, "6 clips + merge", [0, 2400, 4800, 7200, 9600, 12000, 14400]),
])
def test_youtube_probe_then_plan_from_n(seconds, tpm, label, edges) -> None:
    probe = plan_for(None, tpm)
    p = after_overflow(probe, 290 * seconds + 1_000, WINDOW, duration=None, prompt_chars=PROMPT, tpm=tpm)
    assert p.label() == label and bounds(p) == edges
    assert p.duration == pytest.approx(seconds) and p.duration_known is False and not p.probe
    assert f"length ≤ {hms(seconds)} from the count" in p.reason
    if p.clips:  # the length is an upper bound: the last clip runs to the real end
        assert p.clips[-1].open_end and not any(c.open_end for c in p.clips[:-1])
        assert "end_offset" not in clip_offsets(p.clips[-1])
    assert Plan.from_record(json.loads(json.dumps(p.to_record()))) == p


def test_youtube_low_refused_then_clips_of_the_estimated_length() -> None:
    probe = plan_for(None, TIER1)
    low = after_overflow(probe, 290 * 7200 + 1_000, WINDOW, duration=None, prompt_chars=PROMPT, tpm=TIER1)
    assert low.label() == "low res"
    p = after_overflow(low, 1_100_000, WINDOW, duration=None, prompt_chars=PROMPT, tpm=TIER1)
    assert p.strategy == "clips" and p.clips[-1].open_end
    assert_clips_cover(p, 0.0, 7200.0)


def test_youtube_forced_clips_skips_low() -> None:
    probe = plan_for(None, TIER1, forced="clips")
    p = after_overflow(probe, 290 * 7200 + 1_000, WINDOW, duration=None, prompt_chars=PROMPT, tpm=TIER1,
                       forced="clips")
    assert p.strategy == "clips" and "low resolution skipped (clips forced)" in p.reason


def test_from_count_plans_youtube_without_a_refused_call() -> None:
    probe = plan_for(None, FREE)
    n = 290 * 2400 + 1_000  # 697,000: under the window, over the free TPM (would be a 429, not a 400)
    p = from_count(probe, n, input_limit=WINDOW, duration=None, prompt_chars=PROMPT, tpm=FREE)
    assert p.label() == "2 clips + merge" and bounds(p) == [0, 1200, 2400] and p.clips[-1].open_end
    p = from_count(probe, n, input_limit=WINDOW, duration=None, prompt_chars=PROMPT, tpm=TIER1)
    assert p.label() == "1 call" and p.tokens_per_request == 697_000 and p.fits
    assert p.duration == pytest.approx(2400) and "one call as planned" in p.reason


# ---------------------------------------------------------------- prompts

LESSON = """You are an experienced teacher.

Watch the whole video "Photosynthesis" (length: 2:00:00) and turn it into a lesson plan.

# Photosynthesis — Lesson Plan

## Overview
Three to five sentences.

## Key Timestamps
A Markdown table with the columns Time | Moment | Why it matters.
"""
LESSON_ZH_TITLE = LESSON.replace("Photosynthesis", "光合作用")
TRANSCRIPT_ZH = """你是一名专业的中文字幕译者。请把整段视频《光合作用》（时长：2:00:00）转写并翻译为简体中文逐字稿。

# 光合作用 — 中文逐字稿

## 逐字稿
### [00:00] 讲者

## 重要时间节点
列表，五到十项，每项格式为"[MM:SS] 发生了什么"。
"""


@pytest.mark.parametrize("text, hint, lang", [
    (LESSON, None, "en"),
    (LESSON_ZH_TITLE, None, "en"),  # a Chinese title in an English template stays English
    (TRANSCRIPT_ZH, None, "zh"),
    (LESSON, "zh-CN", "zh"),
    (LESSON, "Chinese", "zh"),
    (TRANSCRIPT_ZH, "en", "en"),
    (TRANSCRIPT_ZH, "French", "en"),
    ("", None, "en"),
])
def test_prompt_language(text, hint, lang) -> None:
    assert prompt_language(text, hint) == lang


def test_segment_prompt_english() -> None:
    clip = Clip(2, 3600.0, 5400.0)
    out = segment_prompt(LESSON, clip, 4, 7200)
    assert out.startswith(LESSON.rstrip())  # the template's own prompt, unchanged, first
    tail = out[len(LESSON.rstrip()):]
    assert "PART 3 OF 4" in tail and "from 1:00:00 to 1:30:00" in tail and "whole video is 2:00:00" in tail
    assert "ABSOLUTE" in tail and "H:MM:SS" in tail and "1:01:05" in tail and "between 1:00:00 and 1:30:00" in tail
    assert "same headings, order and language" in tail
    out = segment_prompt(LESSON, Clip(3, 5400.0, 7300.0, open_end=True), 4, None)
    assert "from 1:30:00 to the end of the video" in out and "whole video is" not in out
    assert "never earlier than 1:30:00" in out


def test_segment_prompt_chinese() -> None:
    out = segment_prompt(TRANSCRIPT_ZH, Clip(0, 0.0, 1800.0), 4, 7200)
    tail = out[len(TRANSCRIPT_ZH.rstrip()):]
    assert "第 1/4 部分" in tail and "从 0:00:00 到 0:30:00" in tail and "整段视频时长 2:00:00" in tail
    assert "绝对时间" in tail and "H:MM:SS" in tail and "相同的标题" in tail and "介于 0:00:00 与 0:30:00 之间" in tail
    assert "PART" not in tail
    assert "第 1/4 部分" in segment_prompt(LESSON, Clip(0, 0.0, 1800.0), 4, 7200, language_hint="zh")
    assert "到视频结尾" in segment_prompt(TRANSCRIPT_ZH, Clip(3, 5400.0, 7300.0, True), 4, None)


@pytest.mark.parametrize("hint", ["en", "zh"])
def test_segment_instruction_stays_within_its_token_allowance(hint) -> None:
    clip = Clip(99_998, 359_000.0, 359_999.0)
    added = segment_prompt("", clip, 99_999, 360_000, language_hint=hint)
    assert text_tokens(added) <= SEGMENT_PROMPT_TOKENS


def test_merge_prompt_english() -> None:
    c0, c1 = Clip(0, 0.0, 3600.0), Clip(1, 3600.0, 7200.0, open_end=True)
    out = merge_prompt(LESSON, [(c1, "## Overview\nsecond half"), (c0, "## Overview\nfirst half")], 7200)
    assert out.index("=== TASK ===") < out.index(LESSON.strip()[:30])
    first, second = out.index("=== PART 1/2 (0:00:00–1:00:00) ==="), out.index("=== PART 2/2 (1:00:00–end) ===")
    assert first < out.index("first half") < second < out.index("second half")  # in time order
    assert "2:00:00 long" in out and "ONE answer" in out and "same headings in the same order" in out
    assert "already absolute" in out and "duplication" in out and "Do not add anything" in out
    assert text_tokens(out) == ctx.merge_tokens(out) > text_tokens(LESSON)


def test_merge_prompt_chinese_and_errors() -> None:
    out = merge_prompt(TRANSCRIPT_ZH, [(Clip(0, 0.0, 60.0), "甲"), (Clip(1, 60.0, 120.0), "乙")], 120)
    assert "=== 第 1/2 (0:00:00–0:01:00) 部分 ===" in out and "=== 任务 ===" in out
    assert "相同的标题" in out and "绝对时间" in out and "ONE answer" not in out
    with pytest.raises(ContextError):
        merge_prompt(LESSON, [], 100)
    with pytest.raises(ContextError, match="twice"):
        merge_prompt(LESSON, [(Clip(0, 0.0, 1.0), "a"), (Clip(0, 0.0, 1.0), "b")], 1)


@pytest.mark.parametrize("clip, fps, expected", [
    (Clip(0, 0.0, 1800.0), None, {"start_offset": "0s", "end_offset": "1800s"}),
    (Clip(1, 754.4, 1508.25), 0.5, {"start_offset": "754.4s", "end_offset": "1508.25s", "fps": 0.5}),
    (Clip(3, 5400.0, 7300.0, True), None, {"start_offset": "5400s"}),
])
def test_clip_offsets_build_sdk_video_metadata(clip, fps, expected) -> None:
    kw = clip_offsets(clip, fps)
    assert kw == expected
    vm = types.VideoMetadata(**kw)
    assert vm.start_offset == expected["start_offset"] and vm.end_offset == expected.get("end_offset")


# ---------------------------------------------------------------- context: options (templates, jobs)


@pytest.mark.parametrize("raw, expected", [
    (None, {"strategy": "auto", "clip_minutes": None, "allow_low_resolution": True, "fps": None}),
    ("clips", {"strategy": "clips", "clip_minutes": None, "allow_low_resolution": True, "fps": None}),
    ({"strategy": "LOW"}, {"strategy": "low", "clip_minutes": None, "allow_low_resolution": True, "fps": None}),
    ({"clip_minutes": 40, "allow_low_resolution": False, "fps": 0.5},
     {"strategy": "auto", "clip_minutes": 40.0, "allow_low_resolution": False, "fps": 0.5}),
    ({"strategy": "full", "clip_minutes": 7.5}, {"strategy": "full", "clip_minutes": 7.5,
                                                  "allow_low_resolution": True, "fps": None}),
])
def test_parse_context_options(raw, expected) -> None:
    assert parse_context_options(raw) == expected


@pytest.mark.parametrize("raw, key, match", [
    ({"strategy": "fast"}, "strategy", "strategy must be one of auto, full, low, clips"),
    ({"clip_minutes": 0}, "clip_minutes", "clip_minutes must be a number of minutes > 0"),
    ({"clip_minutes": "40"}, "clip_minutes", "clip_minutes"),
    ({"clip_minutes": True}, "clip_minutes", "clip_minutes"),
    ({"allow_low_resolution": "no"}, "allow_low_resolution", "true or false"),
    ({"fps": 0}, "fps", "fps"),
    ({"clip_minute": 40}, "clip_minute", "did you mean 'clip_minutes'"),
    ({"strategy": "low", "allow_low_resolution": False}, "allow_low_resolution", "contradicts"),
    (["clips"], None, "must be a strategy name"),
    (5, None, "must be a strategy name"),
])
def test_parse_context_options_errors(raw, key, match) -> None:
    with pytest.raises(ContextOptionError, match=match) as info:
        parse_context_options(raw)
    assert info.value.key == key and isinstance(info.value, UsageError)


def _write(path: Path, text: str) -> Path:  # the template loader reads files: tmp_path only
    path.write_text(text, encoding="utf-8")
    return path


def test_template_context_key_loads_and_old_files_are_unchanged(tmp_path: Path) -> None:
    from gsvr_batch.templates import load_template_file, load_templates

    for t in load_templates().values():  # built-ins have no context: → defaults
        assert t.context == parse_context_options(None) and "context" not in t.extra
    f = _write(tmp_path / "t.yaml", """
templates:
  long_lecture:
    model_config: {temperature: 0.3}
    context:
      strategy: clips
      clip_minutes: 30
      allow_low_resolution: false
    author: me
    prompt: "Lesson for {{video_title}}"
  short:
    context: low
    prompt: "x"
""")
    long_lecture, short = load_template_file(f)
    assert long_lecture.context == {"strategy": "clips", "clip_minutes": 30.0, "allow_low_resolution": False,
                                    "fps": None}
    assert long_lecture.extra == {"author": "me"}
    assert long_lecture.to_dict()["context"]["strategy"] == "clips"
    assert short.context["strategy"] == "low"
    # The options feed choose() directly.
    opts = long_lecture.context
    p = choose(7200, 1_000, input_limit=WINDOW, tpm=TIER1, forced=opts["strategy"],
               clip_minutes=opts["clip_minutes"], allow_low=opts["allow_low_resolution"], fps=opts["fps"])
    assert p.label() == "4 clips + merge" and p.media_resolution is None


@pytest.mark.parametrize("body, line, match", [
    ("    context:\n      strategy: fast\n", 5, "strategy must be one of"),
    ("    context:\n      strategy: clips\n      clip_minutes: -5\n", 6, "clip_minutes"),
    ("    context:\n      clip_minute: 40\n", 5, "did you mean 'clip_minutes'"),
    ("    context:\n      allow_low_resolution: maybe\n", 5, "true or false"),
    ("    context: [clips]\n", 4, "must be a strategy name"),
    ("    context: sometimes\n", 4, "strategy must be one of"),
])
def test_template_context_errors_name_file_and_line(tmp_path: Path, body: str, line: int, match: str) -> None:
    from gsvr_batch.templates import load_template_file

    f = _write(tmp_path / "bad.yaml", f"templates:\n  t:\n    prompt: x\n{body}")
    with pytest.raises(TemplateError, match=match) as info:
        load_template_file(f)
    assert str(info.value).startswith(f"{f}:{line}: template 't': context:")
