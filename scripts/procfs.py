"""What ``/proc`` says about a run's processes (Linux): children, pool workers, process groups.

Read from outside, never through the program: the torture script and the real-process tests
use it to find the workers to kill and to check that nothing outlived a run.
"""

from __future__ import annotations

from pathlib import Path


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's children: a child belongs to the thread that forked it)."""
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


def _state_and_group(pid_dir: Path) -> tuple[bytes, int] | None:
    try:
        stat = (pid_dir / "stat").read_bytes()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[2])


def process_group(pgid: int) -> list[int]:
    """Live processes (not zombies) whose process group is ``pgid``."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            found = _state_and_group(d)
            if found is not None and found[1] == pgid and found[0] != b"Z":
                out.append(int(d.name))
    return out


def gone(pid: int) -> bool:
    """The process has exited (no longer exists, or is a zombie waiting to be reaped)."""
    found = _state_and_group(Path(f"/proc/{pid}"))
    return found is None or found[0] == b"Z"
