"""The journal under damage and a full disk (issue 11, "Why" 7 and 8), through real runs.

* a flipped byte mid-journal is refused by ``run`` and ``replay`` even with a snapshot covering it;
* a journal append that fails (its file may grow no more: ``RLIMIT_FSIZE`` lowered on the live
  manager with ``prlimit``, the same EFBIG a full quota gives) ends the run with exit 75, the journal
  replays clean, and the rerun adopts what the workers wrote instead of paying for it again;
* ``repair`` refuses to cut a journal a run is appending to (it takes the run lock; exit 75).
"""

from __future__ import annotations

import os
import resource
import subprocess

import pytest

from conftest import GSVR, env_for, journal_of, make_batch, records, run_cli, wait_for
from procs import generates_by_task, start_run

pytestmark = pytest.mark.slow


def flip_mid_journal(j) -> int:
    """Flip one bit of a record in the middle of the journal; returns its 1-based line number."""
    lines = j.read_bytes().splitlines(keepends=True)
    k = len(lines) // 2
    bad = bytearray(lines[k])
    i = bad.index(b'"type"') + 2
    bad[i] ^= 0x01  # "type" -> "uype": still JSON, wrong checksum
    lines[k] = bytes(bad)
    j.write_bytes(b"".join(lines))
    return k + 1


def test_flipped_byte_under_a_snapshot_is_refused_by_run_and_replay(tmp_path, sandbox):
    """Issue 11 (7): the snapshot (which lets `run` skip re-reading the prefix it covers) must not
    hide damage in that prefix: both commands exit 2 naming the line and the repair command, and
    `run` appends nothing after the damage."""
    server = sandbox()
    m = make_batch(tmp_path, 3)
    assert run_cli(["run", m], env=env_for(server)).returncode == 0
    j = journal_of(tmp_path)
    snap = j.with_name(j.name + ".snapshot")
    assert snap.exists(), "no snapshot was written: this test would not test what it says"
    line = flip_mid_journal(j)
    before, snap_before = j.read_bytes(), snap.read_bytes()
    for cmd in (["run", m, "--progress", "log"], ["replay", j]):
        r = run_cli(cmd, env=env_for(server))
        assert r.returncode == 2, (cmd, r.stdout + r.stderr)
        assert f"line {line}" in r.stderr, r.stderr
        assert "gsvr-batch repair" in r.stderr and "--yes" in r.stderr, r.stderr
        assert j.read_bytes() == before  # nothing appended after the damage, nothing cut
    assert snap.read_bytes() == snap_before
    assert len([q for q in server.requests if q["kind"] == "generate"]) == 3  # nothing sent again


def test_failed_journal_append_exits_75_replays_clean_and_rerun_pays_nothing_twice(tmp_path, sandbox):
    """Issue 11 (8): while two tasks are generating, the manager's journal may grow by only a few
    bytes more. The next append fails (EFBIG, as a full disk or quota fails it): exit 75 (not 2),
    the journal replays clean, and the rerun completes everything without paying for an answer a
    worker had already written."""
    server = sandbox(latency=1.5)
    m = make_batch(tmp_path, 4)
    j = journal_of(tmp_path)
    with start_run(m, server) as run:
        assert wait_for(lambda: sum(r["type"] == "task_step" and r["step"] == "generating"
                                    for r in records(j)) >= 2, timeout=60), run.output()[-2000:]
        limit = j.stat().st_size + 64  # room for a torn piece of the next record, not for a whole one
        # Only the manager's limit changes (its workers keep theirs and write their outputs).
        resource.prlimit(run.pid, resource.RLIMIT_FSIZE, (limit, limit))
        rc = run.wait(timeout=90)
        out = run.output()
    assert rc == 75, out[-3000:]
    assert "Traceback" not in out
    assert j.stat().st_size <= limit
    rp = run_cli(["replay", j])
    assert rp.returncode == 0, rp.stdout + rp.stderr
    assert "Traceback" not in rp.stderr
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    recs = records(j)
    done = {x["task_id"]: x for x in recs if x["type"] == "task_completed"}
    assert len(done) == 4 and not [x for x in recs if x["type"] == "task_failed"]
    calls = generates_by_task(server)
    adopted = [t for t, d in done.items() if d.get("adopted")]
    for tid in adopted:
        assert calls[tid] == 1, (tid, calls)  # its answer was written before the failure: kept, not re-paid
    # Every generate beyond one per task was in flight when the journal failed (at most two).
    assert sum(calls.values()) - 4 <= 2, calls
    v = run_cli(["replay", j, "--verify"])
    assert v.returncode == 0, v.stdout + v.stderr


def test_repair_refuses_while_a_run_holds_the_journal(tmp_path, sandbox):
    """Issue 11 (8): `repair` cuts the file; doing that under a live appender would lose records.
    It takes the run lock like a second run would, and exits 75 touching nothing."""
    server = sandbox(latency=1.0)
    m = make_batch(tmp_path, 3)
    j = journal_of(tmp_path)
    with start_run(m, server) as run:
        assert wait_for(lambda: any(r["type"] == "task_started" for r in records(j)), timeout=60)
        r = run_cli(["repair", j, "--yes"])
        assert r.returncode == 75, r.stdout + r.stderr
        assert "a run is using" in r.stderr
        assert not list(j.parent.glob(j.name + ".corrupt-*"))  # no copy made, nothing cut
        assert run.wait(timeout=90) == 0, run.output()[-2000:]
    v = run_cli(["replay", j, "--verify"])
    assert v.returncode == 0, v.stdout + v.stderr
    assert os.path.getsize(j) > 0


def flock_holders(path) -> set[int]:
    """Pids holding an flock on ``path``, from /proc/locks (read without touching the lock)."""
    ino = os.stat(path).st_ino
    pids = set()
    for line in open("/proc/locks", encoding="ascii", errors="replace"):
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(ino):
            pids.add(int(parts[4]))
    return pids


def test_repair_holds_the_run_lock_while_it_cuts(tmp_path):
    """Checking the lock first is not enough: a run starting between that check and the cut would
    append to a file being truncated. `repair` must *hold* the lock while it copies and cuts. A
    30 MB journal keeps it busy long enough to look at /proc/locks (which does not touch the lock)
    once the copy of the original has appeared."""
    from gsvr_batch.journal import encode_record

    j = tmp_path / "journal.jsonl"
    n = 300_000
    with open(j, "wb") as fh:
        for start in range(1, n + 1, 10_000):
            fh.write(b"".join(encode_record({"seq": i, "ts": "2026-01-01T00:00:00.000Z", "type": "task_step",
                                             "task_id": f"{i % 97:016x}", "step": "uploading"})
                              for i in range(start, min(n, start + 9_999) + 1)))
        fh.write(b'{"seq": 300001, "type": "damaged"}\n' + encode_record({"seq": n + 2, "type": "x"}))
    lock = j.with_name(j.name + ".lock")
    lock.touch()
    p = subprocess.Popen(GSVR + ["repair", str(j), "--yes"], env=env_for(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    samples, held = 0, 0
    while p.poll() is None:
        if list(tmp_path.glob("journal.jsonl.corrupt-*")):  # copying the original, then cutting
            samples += 1
            held += p.pid in flock_holders(lock)
    out, err = p.communicate()
    assert p.returncode == 0, out + err
    assert f"Kept {n} good records" in out, out
    assert samples, "repair ended before it could be observed; make the journal bigger"
    assert held, f"repair did not hold the run lock while it copied and cut ({samples} looks)"
