"""Actual cost per task and --cost-limit, end to end against the sandbox (deterministic token counts:
promptTokenCount = round(300 x seconds) + ceil(len(prompt)/4), candidatesTokenCount = ceil(len(answer)/4))."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from conftest import env_for, make_batch, records, run_cli


def generate_calls(server) -> int:
    return sum(1 for q in server.requests if q.get("kind") == "generate" and q.get("status") == 200)


def run_one(tmp_path: Path, server) -> dict:
    """Calibration: one task, its journaled completion."""
    m = tmp_path / "calib" / "manifest.yaml"
    if not m.exists():
        m = make_batch(tmp_path / "calib", 1)
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "cost $0.0000" not in r.stdout  # the running total is shown and non-zero
    return next(x for x in records(tmp_path / "calib" / "out" / ".gsvr" / "journal.jsonl")
                if x["type"] == "task_completed")


@pytest.mark.slow
def test_actual_cost_is_journaled_from_usage_and_priced(tmp_path, sandbox):
    from gsvr_batch.pricing import load_pricing

    server = sandbox()
    done = run_one(tmp_path, server)
    usage = done["usage"]
    assert usage["prompt_tokens"] > 1800 and usage["candidates_tokens"] > 0  # 6 s x 300 + prompt
    expected = load_pricing(None).cost("gemini-2.5-flash", usage, mode="online")
    assert done["cost_usd"] > 0
    assert abs(done["cost_usd"] - expected) < 1e-9


@pytest.mark.slow
def test_cost_limit_stops_dispatching_journals_why_and_exits_75(tmp_path, sandbox):
    from gsvr_batch.costs import estimate_job
    from gsvr_batch.manifest import load_manifest
    from gsvr_batch.pricing import load_pricing

    # No implicit cache: the five videos are copies of one file, so they share one upload, and
    # cached input would make every task after the first cheaper; the arithmetic below needs
    # every task to cost the same.
    server = sandbox(cache_ttl=0)
    n = 5
    # A template whose max output is close to what the sandbox answers, so the first estimate
    # (half the max, no history yet) is of the same size as the real cost.
    tpl = tmp_path / "tpl"
    tpl.mkdir()
    (tpl / "small.yaml").write_text(
        "templates:\n  small_summary:\n    name: Small summary\n    version: '1'\n"
        "    description: short\n    parameters: []\n    model_config: {temperature: 0.2, max_tokens: 600}\n"
        "    prompt: |\n      Summarise the video.\n      # Summary\n      ## Key points\n", encoding="utf-8")
    m = make_batch(tmp_path, n, extra_settings=f"workers: 1\ntemplates_dir: [{tpl}]\n")
    m.write_text(m.read_text().replace("template: summary_report", "template: small_summary"))
    calib = make_batch(tmp_path / "calib", 1, extra_settings=f"templates_dir: [{tpl}]\n")
    calib.write_text(calib.read_text().replace("template: summary_report", "template: small_summary"))
    actual = run_one(tmp_path, server)["cost_usd"]  # every task of this batch costs the same
    pricing = load_pricing(None)
    man = load_manifest(m)
    first = estimate_job(man.jobs[0], templates_dirs=man.templates_dirs, pricing=pricing).cost()  # no history yet
    # After one completes, estimates use the journal (same video, same output size) = the actual cost.
    # Half-way between two multiples of the task cost: the dispatch decisions fall at whole multiples
    # (k tasks spent + one estimated), and the sandbox's answers differ by a few tokens from task to
    # task, so a limit near a multiple (first ≈ 2.5 × actual made it 2.99 ×) decided by noise.
    limit = (math.floor(max(first, 2 * actual) / actual) + 1.5) * actual
    spent, expected_done = 0.0, 0
    for i in range(n):  # the documented rule, step by step
        est = first if i == 0 else actual
        if spent + est > limit:
            break
        spent += actual
        expected_done += 1
    assert 0 < expected_done < n, (first, actual, limit)  # the test would prove nothing otherwise

    r = run_cli(["run", m, "--cost-limit", f"{limit:.6f}", "--progress", "log"], env=env_for(server))
    assert r.returncode == 75, r.stdout + r.stderr
    recs = records(tmp_path / "out" / ".gsvr" / "journal.jsonl")
    assert sum(x["type"] == "task_completed" for x in recs) == expected_done
    stop = next(x for x in recs if x["type"] == "batch_stopped")
    assert stop["kind"] == "cost_limit" and "cost limit" in stop["reason"]
    assert re.search(r"spent \$[0-9.]+, \$[0-9.]+ left", r.stdout)
    spent_journaled = sum(x["cost_usd"] for x in recs if x["type"] == "task_completed")
    assert abs(stop["spent_usd"] - spent_journaled) < 1e-6 and spent_journaled <= limit
    calls = generate_calls(server)
    # rerunning with the same limit stops again at once: nothing more is sent
    r2 = run_cli(["run", m, "--cost-limit", f"{limit:.6f}", "--progress", "log"], env=env_for(server))
    assert r2.returncode == 75 and generate_calls(server) == calls
    # a higher limit continues the same batch to the end
    r3 = run_cli(["run", m, "--cost-limit", "100", "--progress", "log"], env=env_for(server))
    assert r3.returncode == 0, r3.stdout + r3.stderr
    assert sum(x["type"] == "task_completed" for x in records(tmp_path / "out" / ".gsvr" / "journal.jsonl")) == n
