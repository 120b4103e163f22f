"""Exactly once under crashes (issue 11, "Why" 1, 2, 3 and 10): real processes, real HTTP, no mocks.

* a manager ``kill -9``'d again and again with the same tasks in flight charges nobody;
* a killed worker is charged to its own task only; its siblings finish and are not sent again;
* a manager killed between a model's answer and its journal record: the output is adopted;
* uploads whose last answer is lost (20 % of them) never fail a task.

Each test reads the outcome from outside: the journal, the sandbox's request log (one entry per
HTTP request, with the ``x-gsvr-task-id`` header the workers send), the files and ``/proc``.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path

import pytest

from conftest import env_for, journal_of, make_batch, records, run_cli, wait_for
from procs import charged, generates, generates_by_task, last_seq, since, start_run, task_ids, worker_pids

pytestmark = pytest.mark.slow


def completed(recs: list[dict]) -> dict[str, dict]:
    return {r["task_id"]: r for r in recs if r["type"] == "task_completed"}


# -- 1. a manager crash charges nobody ------------------------------------------------------------


def test_twelve_manager_kills_with_the_same_tasks_in_flight_charge_nobody(tmp_path, sandbox):
    """Issue 11 (1): 12 × kill -9 of the manager while the first two tasks are in flight.

    max_attempts is 3 and the default crash budget 6: charging a manager crash to the tasks in
    flight (as the old runner did, by counting every start as an attempt) leaves them nothing for a
    real failure. So the final run answers the first generate with one 503 (no call-level retry):
    that task must be charged that one attempt and retried, not failed "after 13 attempts"."""
    server = sandbox(latency=5.0)  # no answer can arrive between a task's start and the kill
    m = make_batch(tmp_path, 4, extra_settings="max_attempts: 3\nmax_call_retries: 0\nretry_base_delay: 0.1")
    j = journal_of(tmp_path)
    first_two: set[str] = set()
    for k in range(12):
        seq = last_seq(j)
        with start_run(m, server, log=tmp_path / f"run-{k}.log") as run:
            started = wait_for(lambda: [r["task_id"] for r in since(j, seq) if r["type"] == "task_started"][:2]
                               if sum(r["type"] == "task_started" for r in since(j, seq)) >= 2 else None,
                               timeout=60)
            assert started, f"run {k} started no two tasks: {run.output()[-2000:]}"
            run.kill()
        first_two |= set(started)
        assert len(first_two) == 2, "the same two tasks must be the ones in flight every time"
    seq = last_seq(j)
    server.update_config(latency=0.1)
    server.inject_errors(1, status=503)
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    recs = records(j)
    done = completed(recs)
    assert set(done) == set(task_ids(j)) and len(done) == 4
    assert sum(x["type"] == "task_completed" for x in recs) == 4  # once each
    assert not [x for x in recs if x["type"] == "task_failed"]
    # The only charge in the whole journal is the one real failure, made in the last run.
    (retry,) = charged(recs)
    assert retry["type"] == "retry_scheduled" and retry["charge"] == "attempt" and retry["seq"] > seq
    assert retry["task_id"] in first_two
    from gsvr_batch.lifecycle import replay

    st = replay(j).state
    for tid in first_two:
        t = st.tasks[tid]
        assert t.interruptions == 12 and t.crashes == 0, (tid, t)
        assert t.failures == (1 if tid == retry["task_id"] else 0), (tid, t)


# -- 2. one dead worker is charged to its own task only ------------------------------------------


def test_a_killed_worker_charges_only_its_task_and_siblings_are_not_sent_again(tmp_path, sandbox):
    """Issue 11 (2): kill one worker while its two siblings are inside their generate call."""
    server = sandbox(latency=2.5)
    m = make_batch(tmp_path, 5, extra_settings="workers: 3")
    j = journal_of(tmp_path)

    def three_generating():
        gen = {}
        for r in records(j):
            if r["type"] == "task_step" and r.get("worker"):
                gen.setdefault(r["task_id"], {})["pid"] = r["worker"]
            if r["type"] == "task_step" and r["step"] == "generating":
                gen.setdefault(r["task_id"], {})["generating"] = True
        busy = {t: v["pid"] for t, v in gen.items() if v.get("generating") and v.get("pid")}
        return busy if len(busy) >= 3 else None

    with start_run(m, server) as run:
        busy = wait_for(three_generating, timeout=60)
        assert busy, run.output()[-2000:]
        victim, pid = sorted(busy.items())[0]
        assert pid in worker_pids(run.pid), "the journaled worker pid is not one of the manager's pool workers"
        os.kill(pid, signal.SIGKILL)
        assert run.wait() == 0, run.output()[-3000:]
    recs = records(j)
    siblings = set(busy) - {victim}
    retries = [x for x in recs if x["type"] == "retry_scheduled"]
    assert [(x["task_id"], x["charge"], x["error_class"]) for x in retries] == [(victim, "crash", "WorkerDied")]
    assert [x for x in charged(recs) if x["task_id"] != victim] == []
    assert not [x for x in recs if x["type"] in ("task_failed",)]
    assert len(completed(recs)) == 5
    calls = generates_by_task(server)
    for tid in siblings:
        # finished in the broken pool (its answer was paid at the server) and handed in, never re-sent
        assert calls[tid] == 1, (tid, calls)
        assert sum(x["type"] == "task_started" and x["task_id"] == tid for x in recs) == 1
        assert not [x for x in recs if x["type"] == "task_requeued" and x["task_id"] == tid]


def test_a_killed_worker_charges_only_its_task_also_when_the_siblings_answers_come_from_the_cache(tmp_path, sandbox):
    """The same as above, on the tasks' second attempt: they reuse their uploads, so the model serves
    the video from its (implicit) cache and the answers' usage carries ``cache_tokens_details``.
    A manager kill first puts the three tasks back in flight with their uploads journaled."""
    server = sandbox(latency=2.5)
    m = make_batch(tmp_path, 3, extra_settings="workers: 3")
    j = journal_of(tmp_path)

    def generating(after: int):
        gen, pids = set(), {}
        for r in records(j):
            if r["seq"] <= after or r["type"] != "task_step":
                continue
            if r.get("worker"):
                pids[r["task_id"]] = r["worker"]
            if r["step"] == "generating":
                gen.add(r["task_id"])
        return {t: pids[t] for t in gen if t in pids} if len(gen) == 3 else None

    with start_run(m, server, log=tmp_path / "first.log") as run:
        assert wait_for(lambda: generating(0), timeout=60), run.output()[-2000:]
        run.kill()
    seq = last_seq(j)
    with start_run(m, server) as run:
        busy = wait_for(lambda: generating(seq), timeout=60)
        assert busy, run.output()[-2000:]
        victim, pid = sorted(busy.items())[0]
        os.kill(pid, signal.SIGKILL)
        assert run.wait() == 0, run.output()[-3000:]
    recs = records(j)
    cached = [g for g in generates(server, ok=True) if (g.get("tokens") or {}).get("cached")]
    assert len(cached) >= 3, "the answers did not come from the cache: this test would test nothing"
    assert [(x["task_id"], x["charge"]) for x in charged(recs)] == [(victim, "crash")]
    done = completed(recs)
    assert len(done) == 3 and not [x for x in recs if x["type"] == "task_failed"]
    for tid in set(busy) - {victim}:
        assert generates_by_task(server)[tid] == 2, tid  # one per run: the second was answered and kept


# -- 3. between the answer and the journal --------------------------------------------------------


def test_manager_killed_between_answer_and_journal_adopts_the_output_not_paying_again(tmp_path, sandbox):
    """Issue 11 (3): the workers have the answers and write the outputs while the manager is stopped
    (SIGSTOP), then the manager is killed before it could journal anything. The rerun adopts both
    outputs (``adopted: true``) and the sandbox sees exactly one generate request per task."""
    # Two videos of their own sizes: both in flight at once, neither waiting for the other's upload.
    # Answers take 2 s: steps are journaled once a second, so both "generating" records are on disk
    # well before either answer is back, even on a loaded host.
    server = sandbox(latency=2.0)
    m = make_batch(tmp_path, 2, distinct=True)
    j = journal_of(tmp_path)
    out = tmp_path / "out"
    with start_run(m, server) as run:
        assert wait_for(lambda: sum(r["type"] == "task_step" and r["step"] == "generating"
                                    for r in records(j)) >= 2, timeout=60), run.output()[-2000:]
        os.kill(run.pid, signal.SIGSTOP)
        try:
            assert wait_for(lambda: len(list(out.glob("*.md"))) == 2, timeout=30), "the workers wrote no output"
            time.sleep(0.3)  # let them hand in their results (to a manager that will never read them)
        finally:
            run.kill()  # SIGKILL ends a stopped process too
    recs = records(j)
    assert not completed(recs), "the stopped manager journaled a completion; the test timed nothing"
    assert sum(generates_by_task(server).values()) == 2
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Adopted" in r.stdout
    done = completed(records(j))
    assert len(done) == 2 and all(d.get("adopted") for d in done.values()), done
    for tid, d in done.items():
        assert hashlib.sha256(Path(d["output"]).read_bytes()).hexdigest() == d["sha256"]
        assert generates_by_task(server)[tid] == 1  # paid once, counted once
        assert d["usage"].get("prompt_tokens"), "the adopted record lost the usage (cost) of the answer"
        assert d["cost_usd"] > 0
    v = run_cli(["replay", j, "--verify"])
    assert v.returncode == 0, v.stdout + v.stderr


# -- 10. uploads whose last answer is lost ---------------------------------------------------------


def test_forty_tasks_complete_when_a_fifth_of_upload_answers_are_lost(tmp_path, sandbox):
    """Issue 11 (10): finalize takes effect at the server but its answer is lost (503 without an
    upload status; the SDK re-sends the chunk and gets 400 "already finalized"). 40 distinct videos,
    so 40 uploads; none may fail its task."""
    from videos import make_video

    server = sandbox(upload_lost_answer_rate=0.2, seed=3)
    names = [f"talk-{i:02d}.mp4" for i in range(40)]
    m = make_batch(tmp_path, 40, names=names, extra_settings="workers: 4")
    for i, name in enumerate(names):  # distinct bytes: one upload per video
        make_video(tmp_path / "videos" / name, 6 + i / 1000, audio=False)
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server), timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    recs = records(journal_of(tmp_path))
    assert len(completed(recs)) == 40
    assert not [x for x in recs if x["type"] == "task_failed"]
    lost = [q for q in server.requests if q.get("injected") == "upload_lost_answer"]
    assert len(lost) >= 3, "the sandbox lost too few upload answers for this test to mean anything"
    assert len(generates(server, ok=True)) == 40


@pytest.mark.parametrize("trigger", ["sandbox-upload-lost", "sandbox-upload-lost-drop"])
def test_an_upload_whose_answer_is_lost_is_found_not_failed(tmp_path, sandbox, trigger):
    """The display-name triggers: the first finalize of that file loses its answer (503, or the
    connection drops). The task completes; the file the server finalized is used (found by display
    name and sha256) or uploaded again in a new session — never failed as permanent."""
    server = sandbox()
    m = make_batch(tmp_path, 2, names=[f"a-{trigger}.mp4", "b.mp4"])
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    recs = records(journal_of(tmp_path))
    assert len(completed(recs)) == 2 and not [x for x in recs if x["type"] == "task_failed"]
    assert any(q.get("injected", "") and q["injected"].startswith("upload_lost_answer") for q in server.requests)


def test_a_lost_upload_answer_leaves_no_orphan_file_at_the_server(tmp_path, sandbox):
    """A finished batch keeps no upload at the server. The file whose finalize answer was lost exists
    there all the same (the server finalized it): it must be found and used, or deleted."""
    server = sandbox()
    m = make_batch(tmp_path, 1, names=["a-sandbox-upload-lost.mp4"])
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    assert any(q.get("injected") == "upload_lost_answer" for q in server.requests)
    assert server.stats()["files"] == 0, [q for q in server.requests if q["kind"].startswith(("upload", "files"))]
