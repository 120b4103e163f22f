"""Who can talk to a running manager (issue 13): nobody but the run's own processes.

* no socket of a run is in Linux's abstract namespace (which has no permissions: any local user
  could write to it); the event socket is a file in the run's 0700 folder;
* events forged by an unrelated process (a datagram sent to that socket file — possible here,
  as the same user or as root) are dropped, never fatal, and change nothing in the journal:
  not the daily request count, not a task's completion;
* malformed payloads (``"requests": "x"``, wrong types, huge numbers, not JSON) from a process the
  receiver does trust are dropped one by one, never raised.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from conftest import env_for, journal_of, make_batch, records, run_cli, wait_for
from procs import children, generates, start_run


def unix_sockets() -> list[tuple[int, str]]:
    """(inode, path) of every Unix socket in this network namespace; abstract names start with '@'."""
    out = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 7:
            out.append((int(parts[6]), parts[7] if len(parts) > 7 else ""))
    return out


def socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return inodes
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


@pytest.mark.slow
def test_no_socket_of_a_run_is_in_the_abstract_namespace(tmp_path, sandbox):
    server = sandbox(latency=1.5)
    m = make_batch(tmp_path, 3)
    j = journal_of(tmp_path)
    with start_run(m, server) as run:
        assert wait_for(lambda: any(r["type"] == "task_step" and r["step"] == "generating" for r in records(j)),
                        timeout=60), run.output()[-2000:]
        mine = socket_inodes(run.pid)
        for kid in children(run.pid):
            mine |= socket_inodes(kid)
        table = unix_sockets()
        abstract = [p for _, p in table if p.startswith("@gsvr")]
        ours = [(i, p) for i, p in table if i in mine]
        assert run.wait(timeout=90) == 0, run.output()[-2000:]
    assert abstract == [], abstract
    assert [p for _, p in ours if p.startswith("@")] == [], ours
    # Positive control (the table read is the right one): the run's event socket is there, bound
    # to a file in a private folder (``<journal>.run/``, or a per-journal folder in the temp dir
    # when that path is too long for a socket name).
    # (A forkserver's listener, when workers are forked from one, is also a socket file, in a private
    # folder multiprocessing makes: allowed; what matters is that nothing is abstract.)
    events = [Path(p) for _, p in ours if p and Path(p).name.startswith("ev-")]
    assert len(events) == 1, ours
    assert events[0].parent.name == j.name + ".run" or events[0].parent.name.startswith("gsvr-"), ours


def event_socket(pid: int) -> Path | None:
    """The path of the Unix socket file the process ``pid`` has bound (its event receiver)."""
    mine = socket_inodes(pid)
    paths = [p for i, p in unix_sockets() if i in mine and p and Path(p).name.startswith("ev-")]
    return Path(paths[0]) if paths else None


FORGER = textwrap.dedent("""
    import json, socket, sys
    address, task_id, attempt_id, model = sys.argv[1:5]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    events = [
        ["request", task_id, {"model": model, "attempt_id": attempt_id}],          # spend the daily quota
        ["result", task_id, {"task_id": task_id, "ok": True, "attempt_id": attempt_id, "output_path": "/x",
                             "sha256": "0" * 64, "usage": {"prompt_tokens": 1}}],  # fake a completion
        ["step", task_id, {"requests": "x", "attempt_id": attempt_id}],            # malformed
        ["request", task_id, {"requests": "x"}],
        ["started", task_id, {"pid": 1, "attempt_id": attempt_id}],
    ]
    sent = 0
    for ev in events * 200:
        s.sendto(json.dumps(ev).encode(), address)
        sent += 1
    for raw in (b"not json", b"[1, 2", b"{}", b"[]", b"x" * 60000):
        s.sendto(raw, address)
        sent += 1
    print(sent)
""")


@pytest.mark.slow
def test_events_forged_by_an_unrelated_process_are_dropped_and_change_nothing(tmp_path, sandbox):
    server = sandbox(latency=2.0)
    m = make_batch(tmp_path, 3, extra_settings="rpd: 50")  # 1000 forged requests would spend it 20 times
    j = journal_of(tmp_path)
    with start_run(m, server) as run:
        started = wait_for(lambda: next((r for r in records(j) if r["type"] == "task_started"), None), timeout=60)
        assert started, run.output()[-2000:]
        sock = wait_for(lambda: event_socket(run.pid), timeout=10)
        assert sock, "no event socket file found"
        folder = sock.parent
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.geteuid()
        # A process that is not the manager's child (the test's own child), with the same uid.
        f = subprocess.run([sys.executable, "-c", FORGER, str(sock), started["task_id"],
                            started["attempt_id"], started["model"]], capture_output=True, text=True, timeout=60)
        assert f.returncode == 0, f.stderr  # the datagrams reached the socket
        assert int(f.stdout) == 1005
        assert run.wait(timeout=90) == 0, run.output()[-3000:]
    recs = records(j)
    charged = sum(r["count"] for r in recs if r["type"] == "requests_charged")
    assert charged == len(generates(server)) == 3  # the journal's daily count is the real one
    assert sum(r["type"] == "task_completed" for r in recs) == 3
    v = run_cli(["replay", j, "--verify"])
    assert v.returncode == 0, v.stdout  # every completion is a real output with its real sha256
    again = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert again.returncode == 0, again.stdout + again.stderr  # no forged quota stop


SENDER = textwrap.dedent("""
    import json, socket, sys
    address = sys.argv[1]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    for line in sys.stdin.read().split("\\n"):
        if line:
            s.sendto(bytes.fromhex(line), address)
""")

MALFORMED = [
    ["request", "t1", {"requests": "x"}],  # the old payload shape, with a string
    ["request", "t1", {"model": 5}],
    ["request", "t1", {"model": "m", "youtube_seconds": 10**9}],
    ["request", "t1", {"model": "m", "youtube_seconds": True}],
    ["started", "t1", {"pid": "1"}],
    ["step", "t1", {"step": "rm -rf"}],
    ["upload", "t1", {"name": 1, "uri": "u", "mime_type": "video/mp4"}],
    ["partial", "t1", {"clip": 0, "start": 0, "end": 1, "path": "p", "sha256": "s", "usage": {"prompt_tokens": -5}}],
    ["result", "t1", {"task_id": "t2", "ok": True}],  # names another task
    ["result", "t1", {"task_id": "t1", "ok": "yes"}],
    ["result", "t1", {"task_id": "t1", "ok": True, "usage": {"prompt_tokens": 10**12}}],
    ["result", "t1", {"task_id": "t1", "ok": True, "billed": [{"prompt_tokens": "x"}]}],
    ["nonsense", "t1", {}],
    ["request", 7, {"model": "m"}],
    ["request", "t1", ["model"]],
    ["request", "t1"],
    {"kind": "request"},
    "request",
    None,
]
GOOD = ["request", "t1", {"model": "gemini-2.5-flash", "attempt_id": "a1"}]


@pytest.mark.parametrize("ppid", ["1", 2**40, 0, 1, True])
def test_a_bad_parent_pid_drops_only_that_field(ppid):
    """The worker's pid still counts (the manager signals it later); only the parent's is ignored."""
    from gsvr_batch.tasks import check_event

    kind, tid, payload = check_event(["started", "t1", {"pid": 100, "ppid": ppid, "attempt_id": "a1"}])
    assert (kind, tid, payload) == ("started", "t1", {"pid": 100, "attempt_id": "a1"})
    assert check_event(["started", "t1", {"pid": 100, "ppid": 4242}])[2]["ppid"] == 4242


def test_malformed_payloads_from_a_trusted_sender_are_dropped_one_by_one(tmp_path):
    """The receiver's end, in this process; the sender is its child (so it is trusted and the
    payload check is what is tested). Each bad datagram is dropped; the good ones get through."""
    from gsvr_batch.channels import EventReceiver

    rx = EventReceiver(tmp_path / "journal.jsonl")
    try:
        raw = [json.dumps(e).encode() for e in MALFORMED] + [b"not json", b"\xff\xfe", b"[" * 5000 + b"]" * 5000]
        datagrams = [json.dumps(GOOD).encode()] + raw + [json.dumps(GOOD).encode()]
        # Drained while it sends: the kernel queues only a few datagrams per socket, then the
        # sender blocks until the receiver reads (back-pressure, as between workers and manager).
        sender = subprocess.Popen([sys.executable, "-c", SENDER, rx.address], stdin=subprocess.PIPE, text=True)
        sender.stdin.write("\n".join(d.hex() for d in datagrams))
        sender.stdin.close()
        got = []
        end = time.monotonic() + 30
        while (sender.poll() is None or len(got) < 2) and time.monotonic() < end:
            got += rx.drain()
            time.sleep(0.01)
        got += rx.drain()
        assert sender.wait(timeout=10) == 0
    finally:
        rx.close()
    assert [list(e) for e in got] == [GOOD, GOOD]
    assert rx.dropped == len(raw)


@pytest.mark.slow
def test_a_long_journal_path_and_a_long_tmpdir_still_run(tmp_path, sandbox):
    server = sandbox()
    deep = tmp_path / ("d" * 60)
    m = make_batch(deep, 1)
    tmpdir = tmp_path / ("t" * 80)
    tmpdir.mkdir()
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server, TMPDIR=str(tmpdir)))
    assert r.returncode == 0, r.stdout + r.stderr


def test_only_the_events_the_loop_acts_on_wake_it(tmp_path):
    """``wake_on``: a step or a request count is kept for the next turn without waking the
    manager's loop; a result wakes it, and the step is handed out with it."""
    from gsvr_batch.channels import EventReceiver

    rx = EventReceiver(tmp_path / "journal.jsonl", wake_on={"result"})
    rx.start_reader()
    try:
        tx = rx.sender()
        tx.put(("step", "t1", {"step": "uploading", "attempt_id": "a1"}))
        later = threading.Timer(0.3, lambda: tx.put(("result", "t1", {"attempt_id": "a1", "task_id": "t1", "ok": True})))
        later.start()
        t0 = time.monotonic()
        rx.wait(60)
        woke = time.monotonic() - t0
        later.join()
        got = [e[0] for e in rx.take()]
        # Woken by the result, not by the step (else wait returns at once and the result is not in yet).
        assert woke < 60 and got == ["step", "result"], (woke, got)
    finally:
        rx.close()
