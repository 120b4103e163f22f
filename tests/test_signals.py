"""Signals and a closed stdout, as systemd, `timeout`, a terminal and `| head` deliver them (issue 11,
"Why" 4 and 8): real processes in their own process group, real HTTP, checked from outside.

* SIGTERM to the whole process group is the same graceful stop as a SIGTERM to the manager: running
  tasks finish and are journaled, nothing is charged, no generate is paid twice on the rerun;
* a second SIGTERM stops at once (running tasks go back to pending, uncharged) and nothing new starts;
* Ctrl-C while paused unpauses, so running tasks can finish;
* ``run … | head -1``: the run goes quiet and ends cleanly (``run_finished``, no crash file).
"""

from __future__ import annotations

import os
import signal
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import GSVR, env_for, journal_of, make_batch, records, run_cli, wait_for
from procs import charged, generates_by_task, process_group, start_run

pytestmark = pytest.mark.slow


def steps(journal, step: str) -> set[str]:
    return {r["task_id"] for r in records(journal) if r["type"] == "task_step" and r["step"] == step}


def test_sigterm_to_the_process_group_lets_running_tasks_finish_and_charges_nobody(tmp_path, sandbox):
    """systemd stop / `timeout` / `kill -- -PGID`: every process of the group gets SIGTERM at once.
    Workers ignore it; the manager stops dispatching and lets the running tasks end (exit 130)."""
    server = sandbox(latency=1.5)
    m = make_batch(tmp_path, 6)
    j = journal_of(tmp_path)
    with start_run(m, server, new_session=True) as run:
        in_flight = wait_for(lambda: (lambda g: g if len(g) >= 2 else None)(steps(j, "generating")), timeout=60)
        assert in_flight, run.output()[-2000:]
        os.killpg(run.pid, signal.SIGTERM)  # the manager leads its own group: this is `kill -- -PGID`
        assert run.wait(timeout=90) == 130, run.output()[-3000:]
    recs = records(j)
    stop = next(r for r in recs if r["type"] == "batch_stopped" and r["kind"] == "interrupted")
    done = {r["task_id"] for r in recs if r["type"] == "task_completed"}
    assert in_flight <= done, "a task running at the SIGTERM was not allowed to finish"
    assert not [r for r in recs if r["type"] == "task_started" and r["seq"] > stop["seq"]]
    assert not [r for r in recs if r["type"] in ("task_failed", "retry_scheduled")]
    assert charged(recs) == []
    assert recs[-1]["type"] == "run_finished" and recs[-1]["exit_code"] == 130
    # Nothing of the run outlives it (its forkserver, if any, goes when the manager has gone).
    assert wait_for(lambda: process_group(run.pid) == [], timeout=5), process_group(run.pid)
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    assert len({x["task_id"] for x in records(j) if x["type"] == "task_completed"}) == 6
    calls = generates_by_task(server)
    assert sorted(calls.values()) == [1] * 6, calls  # no generate paid twice


def test_second_sigterm_stops_at_once_and_nothing_new_starts(tmp_path, sandbox):
    """The first SIGTERM waits for running tasks (up to the 120 s grace); the second must not. The
    answers here take 30 s, so a run that waited for them could not end within the bound below."""
    server = sandbox(latency=30.0)
    m = make_batch(tmp_path, 4)
    j = journal_of(tmp_path)
    with start_run(m, server, new_session=True) as run:
        in_flight = wait_for(lambda: (lambda g: g if len(g) >= 2 else None)(steps(j, "generating")), timeout=60)
        assert in_flight, run.output()[-2000:]
        os.killpg(run.pid, signal.SIGTERM)
        stop = wait_for(lambda: next((r for r in records(j) if r["type"] == "batch_stopped"), None), timeout=10)
        assert stop and stop["kind"] == "interrupted", "the first SIGTERM was not handled"
        t0 = time.monotonic()
        os.killpg(run.pid, signal.SIGTERM)
        rc = run.wait(timeout=60)
        elapsed = time.monotonic() - t0
    assert rc == 130, run.output()[-3000:]
    # The manager notices a signal within one 0.2 s loop turn and then kills its workers; 5 s is
    # a generous bound for a loaded 2-core machine and still far below the 30 s answers.
    assert elapsed < 5.0, elapsed
    recs = records(j)
    assert not [r for r in recs if r["type"] == "task_started" and r["seq"] > stop["seq"]]
    requeued = {r["task_id"] for r in recs if r["type"] == "task_requeued" and r.get("interrupted")}
    assert in_flight <= requeued  # put back, for the next run
    assert not [r for r in recs if r["type"] in ("task_failed", "retry_scheduled", "task_completed")]
    assert charged(recs) == []
    assert recs[-1]["type"] == "run_finished" and recs[-1]["exit_code"] == 130
    assert wait_for(lambda: process_group(run.pid) == [], timeout=5), "workers outlived a stop-at-once"
    from gsvr_batch.lifecycle import replay

    st = replay(j).state
    assert all(st.tasks[t].status.value == "pending" and st.tasks[t].failures == 0 for t in in_flight)


def test_ctrl_c_while_paused_lets_running_tasks_finish(tmp_path, sandbox):
    """Paused, the running tasks hold at their next API call (here: polling their upload until it
    is ACTIVE). Ctrl-C (SIGINT to the group, as a terminal sends it) must unpause so they can end;
    otherwise they would hold until the 120 s grace is over and be thrown away."""
    from videos import make_video

    server = sandbox(processing_delay=3.0)
    names = ["one.mp4", "two.mp4", "three.mp4"]
    m = make_batch(tmp_path, 3, names=names)
    for i, name in enumerate(names):  # distinct videos: both workers upload at once
        make_video(tmp_path / "videos" / name, 6 + i / 100, audio=False)
    j = journal_of(tmp_path)
    with start_run(m, server, new_session=True) as run:
        held = wait_for(lambda: (lambda g: g if len(g) >= 2 else None)(steps(j, "processing")), timeout=60)
        assert held, run.output()[-2000:]
        p = run_cli(["pause", j], env=env_for())
        assert p.returncode == 0, p.stdout + p.stderr
        paused = wait_for(lambda: next((r for r in records(j) if r["type"] == "batch_paused"), None), timeout=10)
        assert paused, "pause was not journaled"
        time.sleep(0.5)
        t0 = time.monotonic()
        os.killpg(run.pid, signal.SIGINT)
        rc = run.wait(timeout=100)
        elapsed = time.monotonic() - t0
    assert rc == 130, run.output()[-3000:]
    recs = records(j)
    done = {r["task_id"] for r in recs if r["type"] == "task_completed" and r["seq"] > paused["seq"]}
    assert held <= done, "tasks running at the Ctrl-C did not finish"
    assert any(r["type"] == "batch_resumed" and r["seq"] > paused["seq"] for r in recs)
    assert not [r for r in recs if r["type"] == "task_started" and r["seq"] > paused["seq"]]
    assert charged(recs) == []
    # The tasks need ~3 s more of processing and a generate; holding until the grace ran out would
    # take 120 s. 60 s leaves a wide margin for a loaded machine and still tells the two apart.
    assert elapsed < 60, elapsed


def test_run_piped_into_head_ends_cleanly_with_run_finished_and_no_crash_file(tmp_path, sandbox):
    """`gsvr-batch run … | head -1`: head exits after one line; every later write gets EPIPE. The run
    must carry on quietly to its normal end (exit 0, run_finished journaled), never crash."""
    server = sandbox(latency=0.3)
    m = make_batch(tmp_path, 4)
    # Where an internal error would leave its report. A short folder (not under tmp_path): with a
    # long TMPDIR the run cannot make its event socket at all (see test_channels.py).
    crash_dir = Path(tempfile.mkdtemp(prefix="gsvr-crash-"))
    env = env_for(server, TMPDIR=str(crash_dir))
    cmd = f"{shlex.join(GSVR)} run {shlex.quote(str(m))} --progress log | head -1; echo manager-exit=${{PIPESTATUS[0]}} >&2"
    p = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert len(p.stdout.splitlines()) == 1
    assert "manager-exit=0" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and "internal error" not in p.stderr
    recs = records(journal_of(tmp_path))
    assert recs[-1]["type"] == "run_finished" and recs[-1]["exit_code"] == 0
    assert sum(r["type"] == "task_completed" for r in recs) == 4
    crashes = list(crash_dir.glob("gsvr-batch-crash-*"))
    shutil.rmtree(crash_dir, ignore_errors=True)
    assert not crashes, "an internal-error report was written"
