"""Pricing: known token counts give exact costs; tiers, audio, overrides, estimates, the dry-run table."""

from __future__ import annotations

import json

import pytest
from google.genai import types

from gsvr_batch.errors import UsageError
from gsvr_batch.costs import DEFAULT_OUTPUT_TOKENS, estimate_output, plan_for, plan_tokens
from gsvr_batch.pricing import estimate_cost, load_pricing, usage_from_metadata

REQUIRED = ("gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.0-flash",
            "gemini-2.0-flash-lite", "gemini-3-pro-preview")


def test_builtin_table_names_its_source_and_models():
    p = load_pricing()
    assert p.source == "https://ai.google.dev/gemini-api/docs/pricing" and p.read_on[:4] == "2026"
    assert set(REQUIRED) <= set(p.known()) and p.batch_discount == 0.5 and p.long_context_threshold == 200_000


def test_flash_exact_cost_online_and_batch_thinking_billed_as_output():
    p = load_pricing()
    usage = {"prompt_tokens": 1_000_000, "candidates_tokens": 200_000, "thoughts_tokens": 100_000}
    # 1M x $0.30 + (200k + 100k) x $2.50
    assert p.cost("gemini-2.5-flash", usage) == pytest.approx(0.30 + 0.75, rel=1e-12)
    assert p.cost("gemini-2.5-flash", usage, mode="batch") == pytest.approx((0.30 + 0.75) / 2, rel=1e-12)
    assert p.cost("gemini-2.5-flash-lite", usage) == pytest.approx(0.10 + 0.3 * 0.40, rel=1e-12)
    with pytest.raises(UsageError, match="online or batch"):
        p.cost("gemini-2.5-flash", usage, mode="flex")


def test_versioned_names_use_their_family_price_but_other_products_do_not():
    p = load_pricing()
    u = {"prompt_tokens": 10_000, "candidates_tokens": 1_000}
    base = p.cost("gemini-2.5-flash", u)
    assert p.cost("models/gemini-2.5-flash", u) == base
    assert p.cost("gemini-2.5-flash-001", u) == base
    assert p.cost("gemini-2.5-flash-preview-09-2025", u) == base
    assert p.cost("gemini-2.5-flash-lite-001", u) == p.cost("gemini-2.5-flash-lite", u)  # longest family wins
    with pytest.raises(UsageError):
        p.cost("gemini-2.5-flash-image", u)  # image output is a different product and price


def test_long_context_tier_switches_input_and_output_rates():
    p = load_pricing()
    short = p.cost("gemini-2.5-pro", {"prompt_tokens": 200_000, "candidates_tokens": 10_000})
    long = p.cost("gemini-2.5-pro", {"prompt_tokens": 200_001, "candidates_tokens": 10_000})
    assert short == pytest.approx(0.2 * 1.25 + 0.01 * 10.0, rel=1e-12)
    assert long == pytest.approx(0.200001 * 2.50 + 0.01 * 15.0, rel=1e-12)
    g3 = p.cost("gemini-3-pro-preview", {"prompt_tokens": 300_000, "candidates_tokens": 0}, mode="batch")
    assert g3 == pytest.approx(0.3 * 4.0 / 2, rel=1e-12)


def test_audio_tokens_are_billed_at_the_audio_rate_when_broken_down():
    p = load_pricing()
    with_audio = {"prompt_tokens": 1_000_000, "candidates_tokens": 0,
                  "prompt_tokens_details": [{"modality": "VIDEO", "token_count": 890_000},
                                            {"modality": "AUDIO", "token_count": 100_000},
                                            {"modality": "TEXT", "token_count": 10_000}]}
    assert p.cost("gemini-2.5-flash", with_audio) == pytest.approx(0.9 * 0.30 + 0.1 * 1.00, rel=1e-12)
    # no breakdown: everything at the video rate (the documented approximation)
    assert p.cost("gemini-2.5-flash", {"prompt_tokens": 1_000_000}) == pytest.approx(0.30, rel=1e-12)
    # Pro bills audio like video, so a long prompt's audio follows the long tier
    long_audio = dict(with_audio, prompt_tokens=1_000_000)
    assert p.cost("gemini-2.5-pro", long_audio) == pytest.approx(1.0 * 2.50, rel=1e-12)


def test_usage_from_sdk_metadata_keeps_thoughts_and_modalities():
    meta = types.GenerateContentResponseUsageMetadata(
        prompt_token_count=29_000, candidates_token_count=1_500, thoughts_token_count=800, total_token_count=31_300,
        prompt_tokens_details=[types.ModalityTokenCount(modality=types.MediaModality.VIDEO, token_count=25_800),
                               types.ModalityTokenCount(modality=types.MediaModality.AUDIO, token_count=3_200)])
    usage = usage_from_metadata(meta)
    assert usage["prompt_tokens"] == 29_000 and usage["thoughts_tokens"] == 800 and usage["total_tokens"] == 31_300
    assert {"modality": "AUDIO", "token_count": 3_200} in usage["prompt_tokens_details"]
    expected = (25_800 * 0.30 + 3_200 * 1.00 + (1_500 + 800) * 2.50) / 1e6
    assert load_pricing().cost("gemini-2.5-flash", usage) == pytest.approx(expected, rel=1e-12)
    # the REST (camelCase) form gives the same
    rest = {"promptTokenCount": 29_000, "candidatesTokenCount": 1_500, "thoughtsTokenCount": 800,
            "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 3_200}]}
    assert load_pricing().cost("gemini-2.5-flash", usage_from_metadata(rest)) == pytest.approx(expected, rel=1e-12)
    assert usage_from_metadata(None) == {}


def test_override_file_replaces_listed_models_and_keeps_the_rest(tmp_path):
    f = tmp_path / "prices.json"
    f.write_text(json.dumps({"_comment": "ours", "batch_discount": 0.4, "models": {
        "gemini-2.5-flash": {"input": 1, "output": 2},
        "my-tuned-model": {"input": 3, "output": 4, "note": "negotiated"}}}))
    p = load_pricing(f)
    assert p.cost("gemini-2.5-flash", {"prompt_tokens": 1_000_000}) == pytest.approx(1.0)
    # the overridden entry is replaced whole: no audio rate left over from the built-in one
    assert p.cost("gemini-2.5-flash", {"prompt_tokens": 1_000_000, "prompt_tokens_details": [
        {"modality": "AUDIO", "token_count": 1_000_000}]}) == pytest.approx(1.0)
    assert p.cost("my-tuned-model", {"candidates_tokens": 1_000_000}, mode="batch") == pytest.approx(4.0 * 0.4)
    assert p.cost("gemini-2.5-pro", {"prompt_tokens": 100_000}) == pytest.approx(0.125)  # built-in kept
    assert p.files[-1] == str(f)


def test_override_file_named_with_a_quoted_tilde(tmp_path, monkeypatch):
    """`--pricing '~/prices.json'` (quoted, or `--pricing=~/…`, which the shell leaves alone)."""
    (tmp_path / "prices.json").write_text(json.dumps({"models": {"my-model": {"input": 3, "output": 4}}}))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_pricing("~/prices.json").cost("my-model", {"candidates_tokens": 1_000_000}) == pytest.approx(4.0)

    only = tmp_path / "only.json"
    only.write_text(json.dumps({"replace": True, "models": {"m": {"input": 1, "output": 1}}}))
    assert load_pricing(only).known() == ["m"]


@pytest.mark.parametrize("content,message", [
    ("not json", "is not valid JSON"),
    ('{"prices": {}}', "a JSON object with a 'models' object"),
    ('{"models": {"m": {"input": 1}}}', "needs at least 'input' and 'output'"),
    ('{"models": {"m": {"input": 1, "output": 1, "inptu_audio": 2}}}', "unknown field(s) inptu_audio"),
    ('{"models": {"m": {"input": "cheap", "output": 1}}}', "input must be a number"),
    ('{"models": {"m": {"input": 1, "output": -2}}}', "output cannot be negative"),
    ('{"batch_discount": 2, "models": {}}', "batch_discount must be a number in (0, 1]"),
    ('{"modles": {}, "models": {}}', "unknown key(s) modles"),
])
def test_bad_override_file_says_what_is_wrong_and_where(tmp_path, content, message):
    f = tmp_path / "bad.json"
    f.write_text(content)
    with pytest.raises(UsageError) as ei:
        load_pricing(f)
    assert message in str(ei.value) and str(f) in str(ei.value)


def test_missing_override_file(tmp_path):
    with pytest.raises(UsageError, match="cannot read pricing file .*nope.json"):
        load_pricing(tmp_path / "nope.json")


def test_unknown_models_are_listed_with_the_known_ones_at_validation():
    p = load_pricing()
    p.check_models(["gemini-2.5-flash", "models/gemini-2.5-pro"])  # no error
    with pytest.raises(UsageError) as ei:
        p.check_models(["gemini-2.5-flash", "gpt-5", "gemini-9-ultra", "gpt-5"])
    text = str(ei.value)
    assert "'gemini-9-ultra', 'gpt-5'" in text and "known models: gemini-2.0-flash" in text
    assert "gemini-2.5-flash" in text and "--pricing FILE" in text


def test_output_estimates_median_of_the_past_else_a_lesson_never_more_than_the_cap():
    assert estimate_output(8192, [1_000, 3_000, 2_000, 9_000]) == 2_500  # median of the template's past
    assert estimate_output(8192, [1_000]) == 1_000  # one finished lesson beats any default
    # no history: a long lesson's 2,048, not half the cap (65,536 / 2 made estimates ~8x too high)
    assert estimate_output(65_536, []) == DEFAULT_OUTPUT_TOKENS
    assert estimate_output(600, []) == 600 and estimate_output(None, []) == DEFAULT_OUTPUT_TOKENS


def test_a_plan_prices_every_request_it_makes():
    one = plan_for(600, 4_000, model="gemini-2.5-flash", media_resolution=None, tpm=None)
    tin, tout, audio = plan_tokens(one, 600, 4_000, 2_048)
    assert one.label() == "1 call" and one.requests == 1 and tout == 2_048 and audio == 600 * 32
    long = plan_for(4 * 3600, 4_000, model="gemini-2.5-flash", media_resolution=None, tpm=250_000)
    tin4, tout4, _ = plan_tokens(long, 4 * 3600, 4_000, 2_048)
    n = len(long.clips)
    assert long.strategy == "clips" and long.requests == n + 1 and n >= 2
    assert tout4 == (n + 1) * 2_048  # a partial per clip, then the merged lesson
    assert tin4 > tin * 4  # every clip pays its prompt, and the merge reads every partial


def test_estimate_cost_prices_the_audio_share():
    tin, audio, tout = 600 * 300 + 1_000, 600 * 32, 4_096
    expected = ((tin - audio) * 0.30 + audio * 1.00 + tout * 2.50) / 1e6
    assert estimate_cost("gemini-2.5-flash", tin, tout, "online", audio_tokens=audio) == pytest.approx(expected)
    assert estimate_cost("gemini-2.5-flash", tin, tout, "batch", audio_tokens=audio) == pytest.approx(expected / 2)
    assert estimate_cost("gemini-2.5-flash", tin, tout) == pytest.approx((tin * 0.30 + tout * 2.50) / 1e6)




# -- cached tokens (issue 12) ------------------------------------------------------------------


def test_cached_tokens_are_read_from_sdk_metadata_and_priced_at_the_cached_rate():
    meta = types.GenerateContentResponseUsageMetadata(
        prompt_token_count=100_000, candidates_token_count=1_000, total_token_count=101_000,
        cached_content_token_count=90_000,
        prompt_tokens_details=[types.ModalityTokenCount(modality=types.MediaModality.VIDEO, token_count=89_000),
                               types.ModalityTokenCount(modality=types.MediaModality.AUDIO, token_count=10_000),
                               types.ModalityTokenCount(modality=types.MediaModality.TEXT, token_count=1_000)],
        cache_tokens_details=[types.ModalityTokenCount(modality=types.MediaModality.VIDEO, token_count=81_000),
                              types.ModalityTokenCount(modality=types.MediaModality.AUDIO, token_count=9_000)])
    usage = usage_from_metadata(meta)
    assert usage["cached_tokens"] == 90_000
    assert {"modality": "AUDIO", "token_count": 9_000} in usage["cache_tokens_details"]
    p = load_pricing()
    flash = p.price("gemini-2.5-flash")
    assert flash.input_cached is not None and flash.input_cached < flash.input  # a discount, whatever its size
    expected = (9_000 * flash.input + 1_000 * flash.input_audio + 81_000 * flash.input_cached
                + 9_000 * flash.input_audio_cached + 1_000 * flash.output) / 1e6
    assert p.cost("gemini-2.5-flash", usage) == pytest.approx(expected, rel=1e-12)
    full = (90_000 * flash.input + 10_000 * flash.input_audio + 1_000 * flash.output) / 1e6
    assert p.cache_saving("gemini-2.5-flash", usage) == pytest.approx(full - expected, rel=1e-9)
    assert p.cache_saving("gemini-2.5-flash", usage, mode="batch") == pytest.approx((full - expected) / 2, rel=1e-9)


def test_cached_tokens_without_a_breakdown_or_a_cached_price():
    p = load_pricing()
    u = {"prompt_tokens": 10_000, "candidates_tokens": 0, "cached_tokens": 4_000}
    assert p.cost("gemini-2.5-flash", u) == pytest.approx((6_000 * 0.30 + 4_000 * p.price("gemini-2.5-flash").input_cached)
                                                          / 1e6, rel=1e-12)
    # more cached than prompt (a malformed answer): never a negative part
    assert p.cost("gemini-2.5-flash", dict(u, cached_tokens=50_000)) >= 0
    # a model the table has no cached price for bills them at the full rate: a bill is never under-stated
    assert p.price("gemini-2.0-flash-lite").input_cached is None
    assert p.cost("gemini-2.0-flash-lite", u) == p.cost("gemini-2.0-flash-lite", {"prompt_tokens": 10_000})
    assert p.cache_saving("gemini-2.0-flash-lite", u) == 0.0
    # long prompts of Pro use the long cached rate
    pro = p.price("gemini-2.5-pro")
    long = {"prompt_tokens": 300_000, "cached_tokens": 300_000}
    assert p.cost("gemini-2.5-pro", long) == pytest.approx(300_000 * pro.input_cached_long / 1e6, rel=1e-12)


def test_every_cached_price_names_where_it_came_from():
    doc = json.loads(__import__("gsvr_batch.pricing", fromlist=["BUILTIN"]).BUILTIN.read_text())
    for name, row in doc["models"].items():
        if "input_cached" in row:
            assert row["input_cached"] < row["input"] and "input_cached" in row["note"], name


def test_cache_totals_count_tasks_and_their_clips():
    from types import SimpleNamespace

    from gsvr_batch.pricing import cache_totals

    p = load_pricing()
    u = {"prompt_tokens": 10_000, "cached_tokens": 8_000}
    tasks = [SimpleNamespace(model="gemini-2.5-flash", usage=u, partials={"0": {"usage": u}, "1": {"usage": {}}}),
             SimpleNamespace(model="no-such-model", usage=u, partials={}),
             SimpleNamespace(model="gemini-2.5-flash", usage={}, partials={})]
    tokens, saved = cache_totals(tasks, p)
    assert tokens == 24_000  # the unknown model's tokens are counted, its saving is not known
    assert saved == pytest.approx(2 * p.cache_saving("gemini-2.5-flash", u), rel=1e-12)


def test_status_replay_and_report_show_cached_tokens_and_their_saving(tmp_path):
    from gsvr_batch.lifecycle import BatchLog
    from gsvr_batch.report import build_report, render_markdown
    from gsvr_batch.summary import batch_document, render_replay

    j = tmp_path / "journal.jsonl"
    bl, _ = BatchLog.open(j)
    bl.create_batch(manifest="m.yaml", manifest_identity="id", manifest_hash="h", settings={}, version="t")
    bl.run_started()
    usage = {"prompt_tokens": 100_000, "candidates_tokens": 1_000, "cached_tokens": 90_000}
    table = load_pricing()
    for i in range(2):
        bl.add_task(task_id=f"t{i}", source=f"v{i}.mp4", model="gemini-2.5-flash", template="summary_report")
        bl.start_task(f"t{i}", attempt_id=f"a{i}", model="gemini-2.5-flash")
        bl.complete_task(f"t{i}", output=f"o{i}.md", sha256="ab" * 32, bytes_=10, usage=usage,
                         cost_usd=table.cost("gemini-2.5-flash", usage), model_version="m", video_duration=6.0,
                         elapsed=1.0)
    bl.close()
    saving = 2 * table.cache_saving("gemini-2.5-flash", usage)
    doc = batch_document(j)
    assert doc["cached_tokens"] == 180_000 and doc["cache_saving_usd"] == pytest.approx(saving, abs=1e-6)
    assert "cached input 180,000 tokens saved $" in render_replay(doc)
    rep = build_report(j)
    assert rep["cached_tokens"] == 180_000 and rep["by_model"][0]["cached_tokens"] == 180_000
    md = render_markdown(rep)
    assert "Cached tokens" in md and "Cache saving (USD)" in md and f"${saving:.4f}" in md
