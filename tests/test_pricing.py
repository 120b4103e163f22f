"""Pricing: known token counts give exact costs; overrides; bad files give clear errors."""

from __future__ import annotations

import json

import pytest

from gsvr_batch.errors import UsageError
from gsvr_batch.pricing import load_pricing


def test_flash_online_and_batch_prices():
    p = load_pricing()
    usage = {"prompt_tokens": 1_800_000, "candidates_tokens": 400_000, "total_tokens": 2_200_000}
    assert p.cost("gemini-2.5-flash", usage) == pytest.approx(1.8 * 0.30 + 0.4 * 2.50)
    assert p.cost("gemini-2.5-flash", usage, mode="batch") == pytest.approx((1.8 * 0.30 + 0.4 * 2.50) / 2)
    assert p.cost("models/gemini-2.5-flash-001", usage) == p.cost("gemini-2.5-flash", usage)  # family price
    assert p.source.startswith("https://") and p.read_on


def test_long_context_tier_and_audio_tokens():
    p = load_pricing()
    short = p.cost("gemini-2.5-pro", {"prompt_tokens": 200_000, "candidates_tokens": 0})
    long = p.cost("gemini-2.5-pro", {"prompt_tokens": 200_001, "candidates_tokens": 0})
    assert short == pytest.approx(0.25) and long == pytest.approx(200_001 * 2.5 / 1e6)
    with_audio = {"prompt_tokens": 1_000_000, "candidates_tokens": 0,
                  "prompt_tokens_details": [{"modality": "VIDEO", "token_count": 900_000},
                                            {"modality": "AUDIO", "token_count": 100_000}]}
    assert p.cost("gemini-2.5-flash", with_audio) == pytest.approx(0.9 * 0.30 + 0.1 * 1.00)


def test_override_file_adds_and_replaces_models(tmp_path):
    f = tmp_path / "prices.json"
    f.write_text(json.dumps({"models": {"gemini-2.5-flash": {"input": 1, "output": 2},
                                        "my-tuned-model": {"input": 3, "output": 4}}}))
    p = load_pricing(f)
    assert p.cost("gemini-2.5-flash", {"prompt_tokens": 1_000_000, "candidates_tokens": 0}) == pytest.approx(1.0)
    assert p.cost("my-tuned-model", {"prompt_tokens": 0, "candidates_tokens": 1_000_000}) == pytest.approx(4.0)
    assert p.cost("gemini-2.5-pro", {"prompt_tokens": 100_000}) == pytest.approx(0.125)  # built-in kept


@pytest.mark.parametrize("content,message", [
    ("not json", "is not valid JSON"),
    ('{"prices": {}}', "a JSON object with a 'models' object"),
    ('{"models": {"m": {"input": 1}}}', "needs at least 'input' and 'output'"),
    ('{"models": {"m": {"input": 1, "output": 1, "inptu_audio": 2}}}', "unknown field(s) inptu_audio"),
    ('{"models": {"m": {"input": "cheap", "output": 1}}}', "prices must be numbers"),
])
def test_bad_override_file_says_what_is_wrong(tmp_path, content, message):
    f = tmp_path / "bad.json"
    f.write_text(content)
    with pytest.raises(UsageError, match=None) as ei:
        load_pricing(f)
    assert message in str(ei.value) and str(f) in str(ei.value)


def test_unknown_model_lists_known_ones():
    with pytest.raises(UsageError) as ei:
        load_pricing().cost("gpt-5", {"prompt_tokens": 1})
    assert "gemini-2.5-flash" in str(ei.value) and "--pricing" in str(ei.value)
