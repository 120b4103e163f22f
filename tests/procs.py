"""Helpers for the real-process tests: start a run, find its workers, read the sandbox's request log.

Nothing here stands in for the program: runs are ``python -m gsvr_batch`` subprocesses talking
real HTTP to a real sandbox server, and everything is checked from outside (journal, request log,
files, ``/proc``).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

from conftest import GSVR, env_for, records

END_TYPES = {"task_completed", "task_failed", "task_requeued", "retry_scheduled", "task_skipped"}


class Run:
    """A ``gsvr-batch run`` in the background; its stdout+stderr go to a file (a pipe nobody reads
    while the test waits could fill up and stall the manager)."""

    def __init__(self, args: list, *, env: dict, log: Path, new_session: bool = False, cwd=None) -> None:
        self.log = log
        with open(log, "ab") as fh:
            self.proc = subprocess.Popen(GSVR + [str(a) for a in args], env=env, stdout=fh, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=new_session, cwd=cwd)
        self.pid = self.proc.pid

    def wait(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the manager (only it: its workers die with it, PR_SET_PDEATHSIG) and reap it."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill()


def start_run(manifest: Path, server, *extra, log: Path | None = None, new_session: bool = False, env=None) -> Run:
    log = log or manifest.parent / "run.log"
    return Run(["run", manifest, "--progress", "log", *extra], env=env or env_for(server), log=log,
               new_session=new_session)


def children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []
    for task in tasks:
        try:
            kids += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def worker_pids(manager: int) -> list[int]:
    """Pool workers of a manager: its spawned children (``spawn_main``; the resource tracker is not
    one), or the children of its forkserver (a forked worker keeps the forkserver's command line)."""
    out = []
    for k in children(manager):
        line = cmdline(k)
        if "spawn_main" in line:
            out.append(k)
        elif "forkserver" in line:
            out += children(k)
    return out


def process_group(pgid: int) -> list[int]:
    """Live processes (not zombies) whose process group is ``pgid``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != b"Z":
            out.append(int(d.name))
    return out


def generates(server, task_id: str | None = None, *, ok: bool = False) -> list[dict]:
    """Generate requests the sandbox received (logged whether or not the client was still there)."""
    return [r for r in server.requests if r.get("kind") == "generate"
            and (task_id is None or r.get("task_id") == task_id) and (not ok or r.get("status") == 200)]


def generates_by_task(server) -> Counter:
    return Counter(r.get("task_id") for r in generates(server))


def running(recs: list[dict]) -> set[str]:
    """Tasks the journal shows started and not yet ended."""
    out: set[str] = set()
    for r in recs:
        if r.get("type") == "task_started":
            out.add(r["task_id"])
        elif r.get("type") in END_TYPES:
            out.discard(r.get("task_id"))
    return out


def since(journal: Path, seq: int) -> list[dict]:
    return [r for r in records(journal) if r.get("seq", 0) > seq]


def last_seq(journal: Path) -> int:
    recs = records(journal)
    return recs[-1]["seq"] if recs else 0


def task_ids(journal: Path) -> list[str]:
    return [r["task_id"] for r in records(journal) if r["type"] == "task_added"]


def charged(recs: list[dict]) -> list[dict]:
    """Records that charge a task an attempt or a crash."""
    return [r for r in recs if r.get("charge")]
