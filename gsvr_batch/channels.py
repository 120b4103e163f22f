"""How processes talk without sharing a lock: worker events, run lock, control commands.

Worker → manager events go over a Unix *datagram* socket in Linux's abstract namespace.
Why not a ``multiprocessing.Queue``: its writers share one cross-process lock, and a worker
``kill -9``'d while holding it wedges every other worker forever (CPython #88304). A datagram
is sent with one system call and no lock; a killed worker can lose at most its own event.

The run lock (invariant 5) is ``filelock`` on ``<journal>.lock`` — an ``flock`` the kernel drops
when the holder dies, never a PID file. ``<journal>.owner`` says who holds it, for humans only.

Control (``gsvr-batch pause|resume|cancel``) writes ``<journal>.control`` atomically; the
manager polls it every loop turn (≤ 0.2 s) and acts on each command id once.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock

from .errors import LockHeld, UsageError
from .fsutil import atomic_write_bytes

# -- events ------------------------------------------------------------------------------------


class EventSender:
    """Picklable handle a worker uses to send ``(kind, task_id, payload)`` to the manager."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._sock: socket.socket | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"address": self.address}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.address = state["address"]
        self._sock = None

    def put(self, event: tuple[str, str, dict[str, Any]]) -> None:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        data = json.dumps(list(event), ensure_ascii=False).encode("utf-8")
        try:
            self._sock.sendto(data, "\0" + self.address)
        except OSError:
            # Manager gone: nothing to tell. (A busy manager makes sendto block briefly once the
            # kernel's datagram queue is full — back-pressure, not loss, which the RPD count needs.)
            pass


class EventReceiver:
    """The manager's end: bind once, drain without blocking."""

    def __init__(self) -> None:
        self.address = f"gsvr-batch-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self._sock.bind("\0" + self.address)
        self._sock.setblocking(False)

    def sender(self) -> EventSender:
        return EventSender(self.address)

    def drain(self, limit: int = 10_000) -> list[tuple[str, str, dict[str, Any]]]:
        out: list[tuple[str, str, dict[str, Any]]] = []
        for _ in range(limit):
            try:
                data = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            try:
                kind, task_id, payload = json.loads(data)
                out.append((kind, task_id, payload))
            except (ValueError, TypeError):
                continue
        return out

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()


# -- run lock ----------------------------------------------------------------------------------


def lock_path(journal: str | os.PathLike[str]) -> Path:
    p = Path(journal)
    return p.with_name(p.name + ".lock")


def owner_path(journal: str | os.PathLike[str]) -> Path:
    p = Path(journal)
    return p.with_name(p.name + ".owner")


def control_path(journal: str | os.PathLike[str]) -> Path:
    p = Path(journal)
    return p.with_name(p.name + ".control")


class RunLock:
    """One run per journal. ``acquire`` fails at once with LockHeld (exit 75)."""

    def __init__(self, journal: str | os.PathLike[str]) -> None:
        self.journal = Path(journal)
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        self._lock = filelock.UnixFileLock(str(lock_path(self.journal)), timeout=0)

    def acquire(self) -> None:
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout as exc:
            who = read_owner(self.journal)
            holder = f" (pid {who.get('pid')} on {who.get('host')}, since {who.get('since')})" if who else ""
            raise LockHeld(f"another gsvr-batch run is using {self.journal}{holder}; "
                           f"this run exits without touching it (try again later, or see "
                           f"`gsvr-batch status {self.journal}`)") from exc
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        atomic_write_bytes(owner_path(self.journal), json.dumps(info).encode())

    def release(self) -> None:
        try:
            owner_path(self.journal).unlink()
        except OSError:
            pass
        self._lock.release()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_is_held(journal: str | os.PathLike[str]) -> bool:
    """True if some process holds the run lock of ``journal`` right now."""
    lp = lock_path(journal)
    if not lp.exists():
        return False
    probe = filelock.UnixFileLock(str(lp), timeout=0)
    try:
        probe.acquire(timeout=0)
    except filelock.Timeout:
        return True
    probe.release()
    return False


def read_owner(journal: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        return json.loads(owner_path(journal).read_text())
    except (OSError, ValueError):
        return {}


# -- control commands --------------------------------------------------------------------------

COMMANDS = ("pause", "resume", "cancel")


@dataclass
class ControlCommand:
    id: str
    command: str
    ts: float


def send_command(journal: str | os.PathLike[str], command: str) -> ControlCommand:
    """Used by ``gsvr-batch pause|resume|cancel``: reach the running manager of ``journal``."""
    if command not in COMMANDS:
        raise UsageError(f"unknown command {command!r}; use one of {', '.join(COMMANDS)}")
    if not Path(journal).exists():
        raise UsageError(f"journal not found: {journal}")
    if not lock_is_held(journal):
        raise UsageError(f"no run is in progress on {journal}; nothing to {command}")
    cmd = ControlCommand(id=uuid.uuid4().hex, command=command, ts=time.time())
    atomic_write_bytes(control_path(journal), json.dumps(cmd.__dict__).encode())
    return cmd


class ControlWatcher:
    """The manager's side: returns each new command once."""

    def __init__(self, journal: str | os.PathLike[str]) -> None:
        self.path = control_path(journal)
        self._mtime: int | None = None
        self._seen: str | None = None
        # A command file left by an earlier run is stale: note it so it is never acted on.
        stale = self._read()
        if stale is not None:
            self._seen = stale.id

    def _read(self) -> ControlCommand | None:
        try:
            st = self.path.stat()
            if self._mtime == st.st_mtime_ns:
                return None
            self._mtime = st.st_mtime_ns
            doc = json.loads(self.path.read_text())
            return ControlCommand(id=doc["id"], command=doc["command"], ts=float(doc["ts"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def poll(self) -> ControlCommand | None:
        cmd = self._read()
        if cmd is None or cmd.id == self._seen:
            return None
        self._seen = cmd.id
        return cmd
