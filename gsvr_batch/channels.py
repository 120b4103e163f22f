"""How processes talk without sharing a lock: worker events, run lock, control commands.

Worker → manager events go over a Unix *datagram* socket. Why not a ``multiprocessing.Queue``:
its writers share one cross-process lock, and a worker ``kill -9``'d while holding it wedges
every other worker forever (CPython #88304). A datagram is sent with one system call and no
lock; a killed worker can lose at most its own event.

Who may talk: the socket is a *file* inside a folder only the run's user can enter (mode 0700:
``<journal>.run/`` next to the journal, or a private temporary folder when that path is too
long for a socket name), never Linux's abstract namespace, which any local user can reach. The
manager also asks the kernel who sent each datagram (``SO_PASSCRED``): only processes of the
same user that descend from the manager are heard. Every payload is then type-checked
(``tasks.check_event``); a malformed event is logged and dropped, never fatal.

The run lock (invariant 5) is ``filelock`` on ``<journal>.lock`` — an ``flock`` the kernel drops
when the holder dies, never a PID file. ``<journal>.owner`` says who holds it, for humans only.

Control (``gsvr-batch pause|resume|cancel``) writes ``<journal>.control`` atomically; the
manager polls it every loop turn (≤ 0.2 s) and acts on each command id once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import select
import shutil
import socket
import struct
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection

import filelock

from .errors import LockHeld, UsageError
from .fsutil import atomic_write_bytes
from .tasks import Event, check_event

log = logging.getLogger("gsvr_batch.channels")

# -- events ------------------------------------------------------------------------------------

try:  # the decoder the journal uses; the standard library's when it is not installed
    from msgspec.json import decode as _loads
except ImportError:  # pragma: no cover
    _loads = json.loads

_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}
_MAX_SOCKET_PATH = 100  # sockaddr_un.sun_path is 108 bytes on Linux; keep a margin
MAX_EVENT_BYTES = 65536


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

    def put(self, event: Event) -> None:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        data = json.dumps(list(event), ensure_ascii=False).encode("utf-8")
        try:
            self._sock.sendto(data, self.address)
        except OSError:
            # Manager gone: nothing to tell. (A busy manager makes sendto block briefly once the
            # kernel's datagram queue is full — back-pressure, not loss, which the RPD count needs.)
            pass


def parent_pid_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        # "pid (comm) state ppid ..." — comm may hold spaces and parentheses: split after the last ')'
        return int(stat[stat.rindex(b")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def run_dir(journal: str | os.PathLike[str]) -> Path:
    """``<journal>.run/``: the run's private folder (event socket), mode 0700."""
    p = Path(journal)
    return p.with_name(p.name + ".run")


class EventReceiver:
    """The manager's end: bind once in a private folder, drain without blocking."""

    def __init__(self, journal: str | os.PathLike[str] | None = None, *,
                 wake_on: Collection[str] | None = None) -> None:
        """``wake_on``: the event kinds that wake :meth:`wait` (None: every kind). Others are kept
        in the inbox for the next :meth:`take` without waking anyone."""
        self._wake_on = frozenset(wake_on) if wake_on is not None else None
        self._dir = self._private_dir(journal)
        self.address = str(self._dir / f"ev-{os.getpid()}-{uuid.uuid4().hex[:8]}.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock.bind(self.address)
        os.chmod(self.address, 0o600)
        self._sock.setblocking(False)
        self._me = os.getpid()
        self._uid = os.geteuid()
        self._trusted: set[int] = set()
        self.dropped = 0  # events refused (foreign sender or malformed payload)
        self._inbox: deque[Event] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()

    # The kernel queues only a handful of datagrams per socket (net.unix.max_dgram_qlen, 10 here)
    # and a worker's send blocks while the queue is full: a manager that reads between its own
    # turns (journal fsyncs, dispatch) stalls every worker. So a thread reads the socket as fast as
    # datagrams come, into an in-memory inbox, and wakes the manager's loop; it never touches the
    # journal (the manager stays its single writer).
    def start_reader(self) -> None:
        if self._reader is None:
            self._reader = threading.Thread(target=self._read_loop, name="gsvr-events", daemon=True)
            self._reader.start()

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._sock], [], [], 0.5)
            except (OSError, ValueError):
                return  # closed under us: the run is ending
            if not ready:
                continue
            events = self.drain()
            if events:
                self._inbox.extend(events)  # deque.extend is atomic under the GIL
                wake = self._wake_on
                if wake is not None and not any(ev[0] in wake for ev in events):
                    continue  # nothing the manager must act on now: it reads these at its next turn
                try:
                    os.write(self._wake_w, b"!")
                except OSError:  # the pipe is full: the manager is awake anyway
                    pass

    def wait(self, timeout: float) -> None:
        """Block until an event arrived (one of ``wake_on``'s kinds), or ``timeout`` seconds passed."""
        if self._inbox and self._wake_on is None:
            return  # with wake_on, the wake pipe alone says whether anything urgent came
        try:
            select.select([self._wake_r], [], [], timeout)
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, InterruptedError, OSError):
            pass

    def take(self) -> list[Event]:
        """Every event read so far (the reader thread's inbox; or the socket directly without it)."""
        if self._reader is None:
            return self.drain()
        out = []
        while self._inbox:
            out.append(self._inbox.popleft())
        return out

    @staticmethod
    def _private_dir(journal: str | os.PathLike[str] | None) -> Path:
        if journal is not None:
            d = run_dir(journal)
            if len(str(d)) + 40 < _MAX_SOCKET_PATH:
                d.mkdir(mode=0o700, exist_ok=True)
                os.chmod(d, 0o700)  # an existing folder may have been made with a looser umask
                return d
            # Too long a path for a socket name: a private folder named after the journal, so the
            # next run finds (and removes) what a killed run left behind.
            tag = hashlib.sha256(str(Path(journal).resolve()).encode()).hexdigest()[:12]
            base = EventReceiver._socket_base()
            d = Path(base) / f"gsvr-{os.geteuid()}-{tag}"
            d.mkdir(mode=0o700, exist_ok=True)
            if d.stat().st_uid != os.geteuid() or d.is_symlink():
                return Path(tempfile.mkdtemp(prefix="gsvr-", dir=base))
            os.chmod(d, 0o700)
            return d
        return Path(tempfile.mkdtemp(prefix="gsvr-", dir=EventReceiver._socket_base()))

    @staticmethod
    def _socket_base() -> str:
        """The temp folder, unless a long TMPDIR would not leave room for a socket name in sun_path
        (108 bytes): then /tmp."""
        base = tempfile.gettempdir()
        return base if len(base) + 60 <= _MAX_SOCKET_PATH else "/tmp"

    def sender(self) -> EventSender:
        return EventSender(self.address)

    def _trust(self, pid: int, uid: int) -> bool:
        if uid != self._uid:
            return False
        if pid in self._trusted or pid == self._me:
            return True
        # A pool worker is our child (spawn); allow one level more for a forkserver's children.
        parent = parent_pid_of(pid)
        if parent == self._me or (parent is not None and parent_pid_of(parent) == self._me):
            self._trusted.add(pid)
            return True
        return False

    def drain(self, limit: int = 10_000) -> list[Event]:
        out: list[Event] = []
        anc = socket.CMSG_SPACE(_UCRED.size)
        for _ in range(limit):
            try:
                data, ancdata, _flags, _addr = self._sock.recvmsg(MAX_EVENT_BYTES, anc)
            except (BlockingIOError, InterruptedError):
                break
            pid = uid = -1
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(cdata) >= _UCRED.size:
                    pid, uid, _gid = _UCRED.unpack(cdata[:_UCRED.size])
            if not self._trust(pid, uid):
                self.dropped += 1
                log.warning("dropped an event from pid %s (not one of this run's processes)", pid)
                continue
            try:
                event = check_event(_loads(data))
            except (ValueError, TypeError, RecursionError):  # msgspec.DecodeError is a ValueError
                event = None
            if event is None:
                self.dropped += 1
                log.warning("dropped a malformed event (%d bytes) from pid %s", len(data), pid)
                continue
            out.append(event)
        return out

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._stop.set()
        if self._reader is not None:
            self._reader.join(timeout=2)
        self._inbox.extend(self.drain())
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._sock.close()
        try:
            os.unlink(self.address)
        except OSError:
            pass
        try:
            self._dir.rmdir()  # only when empty: another live socket may still be there
        except OSError:
            pass


def clean_run_dir(journal: str | os.PathLike[str]) -> int:
    """Remove sockets a killed run left in its private folder (the caller holds the run lock)."""
    n = 0
    dirs = [run_dir(journal)]
    tag = hashlib.sha256(str(Path(journal).resolve()).encode()).hexdigest()[:12]
    dirs.append(Path(tempfile.gettempdir()) / f"gsvr-{os.geteuid()}-{tag}")
    dirs.append(Path("/tmp") / f"gsvr-{os.geteuid()}-{tag}")
    for d in dirs:
        if not d.is_dir() or d.is_symlink():
            continue
        for f in d.glob("ev-*.sock"):
            try:
                f.unlink()
                n += 1
            except OSError:
                pass
        shutil.rmtree(d, ignore_errors=True) if not any(d.iterdir()) else None
    return n


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
