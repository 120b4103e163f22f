"""Imported once, by the workers' forkserver only (``runner.online.FORKSERVER_PRELOAD``).

A SIGTERM sent to the whole process group (systemd stop, ``timeout``, ``kill -- -PGID``) reaches
the forkserver too. CPython's forkserver ignores SIGINT but not SIGTERM: it would die, and the
workers it forked — whose parent-death signal follows it — with it, killing the running tasks
the manager's graceful stop means to let finish. So the forkserver ignores SIGTERM as the workers
do; it still ends when the manager does (the workers watch the manager and exit, and CPython ends
a forkserver whose last client is gone).
"""

from __future__ import annotations

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
