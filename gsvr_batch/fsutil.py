"""Durable file writes and output-path safety (DESIGN invariants 2 and 10)."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

from .errors import DiskFull, OutputError

TMP_PREFIX = ".gsvr-tmp-"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so a rename inside it survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, before_replace: Callable[[], None] | None = None
) -> str:
    """Write ``data`` to ``path`` so that it is either absent or complete; return its sha256.

    temp file in the same folder → write → flush → fsync → rename → fsync folder.
    A kill at any instant leaves at most a ``.gsvr-tmp-*`` file, never a partial file
    under the final name.

    ``before_replace`` runs after the fsync and just before the rename; if it raises, the
    temp file is removed and nothing appears under the final name (a worker uses it to
    check that its manager is still alive).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The writer's pid is in the name: the next run removes temp files of dead writers only.
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{os.getpid()}-", dir=path.parent)
    except OSError as exc:
        raise _translate(exc, path) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise _translate(exc, path) from exc
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return hashlib.sha256(data).hexdigest()


def _translate(exc: OSError, path: Path) -> Exception:
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(f"no space left on device writing {path}: {exc.strerror}")
    return OutputError(f"cannot write {path}: {exc.strerror or exc}")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1024 * 1024) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def is_inside(root: str | os.PathLike[str], candidate: str | os.PathLike[str]) -> bool:
    """True if ``candidate`` (after resolving symlinks of existing parts) lies inside ``root``."""
    root_r = Path(root).resolve()
    cand_r = Path(candidate).resolve()
    return cand_r == root_r or root_r in cand_r.parents


def free_bytes(path: str | os.PathLike[str]) -> int:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists and is not a zombie (a dead child not yet reaped)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        state = stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3]
    except ValueError:
        return True
    return state not in (b"Z", b"X")
