"""Several runs in one Python process (a library caller, a notebook, a test): each run's workers see
that run's environment, not the environment of whenever the process first started its forkserver."""

from __future__ import annotations

from conftest import make_batch, records


def test_a_second_run_in_one_process_uses_its_own_base_url_and_key(tmp_path, sandbox, monkeypatch):
    from gsvr_batch.runner import RunOptions, run_batch

    first = sandbox(api_key="first-key-not-real")
    second = sandbox(api_key="second-key-not-real")
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)

    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", first.base_url)
    monkeypatch.setenv("GEMINI_API_KEY", "first-key-not-real")
    m1 = make_batch(tmp_path / "one", 1)
    res = run_batch(RunOptions(manifest=str(m1), progress="quiet"), echo=lambda s: None)
    assert res.exit_code == 0, res.message

    # Another server that accepts only another key: a worker still on the first run's environment
    # would send its requests to the first server (or the wrong key to this one: exit 3).
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", second.base_url)
    monkeypatch.setenv("GEMINI_API_KEY", "second-key-not-real")
    m2 = make_batch(tmp_path / "two", 2)
    before = len(first.requests)
    res = run_batch(RunOptions(manifest=str(m2), progress="quiet"), echo=lambda s: None)
    assert res.exit_code == 0, res.message
    assert len(first.requests) == before
    assert sum(r.get("kind") == "generate" and r.get("status") == 200 for r in second.requests) == 2
    done = [x for x in records(tmp_path / "two" / "out" / ".gsvr" / "journal.jsonl") if x["type"] == "task_completed"]
    assert len(done) == 2
