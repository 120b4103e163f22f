"""Several runs in one Python process (a library caller, a notebook, a test): each run's workers see
that run's environment, not the environment of whenever the process first started its forkserver."""

from __future__ import annotations

from pathlib import Path

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


def test_workers_that_cannot_start_stop_the_run_instead_of_rebuilding_forever(tmp_path, sandbox):
    """Every worker imports the main script first; here the script is gone (a cron job's script
    removed mid-run), so every worker dies before any task reaches it. The manager stops after a few
    such pools (exit 70, a message that says why) instead of rebuilding pools and journaling
    requeues forever; nothing is charged and the tasks stay pending."""
    import os
    import subprocess
    import sys
    import textwrap

    from conftest import env_for

    server = sandbox()
    script = tmp_path / "vanishing.py"
    script.write_text(textwrap.dedent(f"""
        import os
        from pathlib import Path

        if __name__ == "__main__":
            from conftest import make_batch
            from gsvr_batch.runner import RunOptions, run_batch

            m = make_batch(Path({str(tmp_path)!r}) / "batch", 3)
            os.unlink(__file__)
            res = run_batch(RunOptions(manifest=str(m), progress="quiet"), echo=lambda s: None)
            print("RESULT", res.exit_code, res.message, flush=True)
    """), encoding="utf-8")
    env = env_for(server)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=240)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT")]
    assert r.returncode == 0 and len(lines) == 1, r.stdout + r.stderr
    code, _, message = lines[0][len("RESULT "):].partition(" ")
    assert code == "70", message
    assert message.startswith("the worker processes died before any task reached them, 3 pools in a row; "
                              "nothing was charged. Workers import gsvr_batch and the main script"), message
    assert "0 completed, 0 skipped, 0 failed, 3 pending of 3" in message
    recs = records(tmp_path / "batch" / "out" / ".gsvr" / "journal.jsonl")
    assert not [x for x in recs if x["type"] in ("task_completed", "task_failed", "requests_charged")]
    assert all(x.get("interrupted") for x in recs if x["type"] == "task_requeued")
    assert sum(x["type"] == "task_requeued" for x in recs) <= 3 * 2  # 3 pools of 2 workers, no more
    assert [x["kind"] for x in recs if x["type"] == "batch_stopped"] == ["workers"]
    assert recs[-1]["type"] == "run_finished" and recs[-1]["exit_code"] == 70
