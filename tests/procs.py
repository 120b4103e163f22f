"""Helpers for the real-process tests: start a run, find its workers, read the sandbox's request log.

Nothing here stands in for the program: runs are ``python -m gsvr_batch`` subprocesses talking
real HTTP to a real sandbox server, and everything is checked from outside (journal, request log,
files, ``/proc``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from conftest import GSVR, REPO, env_for, records

sys.path.insert(0, str(REPO / "scripts"))
from procfs import children, cmdline, gone, process_group, worker_pids  # noqa: E402,F401  (re-exported)

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
