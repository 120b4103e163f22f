"""pause / resume / cancel from another terminal reach the running manager.

The response time (command sent → `batch_paused` / `batch_resumed` / `batch_cancelled` journaled)
is printed and quoted in docs/RELIABILITY.md; it is not asserted as a tight timing (noisy machines).
"""

from __future__ import annotations

import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from conftest import GSVR, env_for, make_batch, records, run_cli, wait_for

pytestmark = pytest.mark.slow


def ts(rec: dict) -> float:
    return datetime.fromisoformat(rec["ts"].replace("Z", "+00:00")).timestamp()


def send(command: str, journal: Path) -> tuple[float, subprocess.CompletedProcess]:
    sent = time.time()
    r = run_cli([command, journal], env=env_for())
    assert r.returncode == 0, r.stdout + r.stderr
    return sent, r


def first(journal: Path, rtype: str, after_seq: int = -1):
    return wait_for(lambda: next((r for r in records(journal) if r["type"] == rtype and r["seq"] > after_seq), None),
                    timeout=30)


def start_run(m: Path, server) -> subprocess.Popen:
    return subprocess.Popen(GSVR + ["run", str(m), "--progress", "log"], env=env_for(server), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def test_pause_holds_dispatch_resume_continues_and_both_are_journaled_quickly(tmp_path, sandbox):
    server = sandbox(latency=0.4)
    m = make_batch(tmp_path, 8)
    j = tmp_path / "out" / ".gsvr" / "journal.jsonl"
    p = start_run(m, server)
    assert first(j, "task_started"), "the run never started a task"
    sent, r = send("pause", j)
    assert "Sent pause" in r.stdout
    paused = first(j, "batch_paused")
    assert paused is not None and paused["reason"] == "gsvr-batch pause"
    time.sleep(1.5)  # while paused: nothing new may start
    sent2, _ = send("resume", j)
    resumed = first(j, "batch_resumed", paused["seq"])
    assert resumed is not None
    between = [x for x in records(j) if paused["seq"] < x["seq"] < resumed["seq"]]
    assert not [x for x in between if x["type"] == "task_started"]
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, out + err
    assert "Paused" in out and "Resumed." in out
    assert sum(x["type"] == "task_completed" for x in records(j)) == 8
    print(f"\npause → batch_paused {ts(paused) - sent:.3f} s; resume → batch_resumed {ts(resumed) - sent2:.3f} s")


def test_cancel_stops_dispatch_lets_running_end_and_exits_4_then_rerun_continues(tmp_path, sandbox):
    server = sandbox(latency=0.6)
    m = make_batch(tmp_path, 8)
    j = tmp_path / "out" / ".gsvr" / "journal.jsonl"
    p = start_run(m, server)
    assert first(j, "task_started")
    sent, _ = send("cancel", j)
    cancelled = first(j, "batch_cancelled")
    assert cancelled is not None
    out, err = p.communicate(timeout=120)
    assert p.returncode == 4, out + err
    recs = records(j)
    assert not [x for x in recs if x["type"] == "task_started" and x["seq"] > cancelled["seq"]]
    started = {x["task_id"] for x in recs if x["type"] == "task_started"}
    ended = {x["task_id"] for x in recs if x["type"] in ("task_completed", "task_requeued", "task_failed")}
    assert started <= ended  # nothing left "running" in the journal
    assert recs[-1]["type"] == "run_finished" and recs[-1]["exit_code"] == 4
    assert sum(x["type"] == "task_completed" for x in recs) < 8
    r = run_cli(["run", m], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    assert sum(x["type"] == "task_completed" for x in records(j)) == 8
    print(f"\ncancel → batch_cancelled {ts(cancelled) - sent:.3f} s")


def test_control_command_for_a_missing_journal_exits_2_with_the_path(tmp_path):
    j = tmp_path / "nowhere" / "journal.jsonl"
    r = run_cli(["pause", j], env=env_for())
    assert r.returncode == 2
    assert "journal not found" in r.stderr and str(j) in r.stderr
    assert "Traceback" not in r.stderr
    assert not j.parent.exists()  # nothing created
