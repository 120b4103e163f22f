"""What a run prints, and how it survives the places it prints to.

One :class:`Console` per run. Its ``display`` is what ``--progress`` resolved to:

* ``bar``   a terminal: plain lines above tqdm's bar;
* ``log``   no terminal (cron, a log file, a pipe): every line starts with a local timestamp, so an
            appended cron log says when each run said what; one line per message (a title with a
            newline cannot break line-based tools);
* ``quiet`` only warnings and errors, and the final result when the run did not end with exit 0.

A closed stdout (``… | head -1``, a dead logger) is not an error: the console goes quiet, stdout
is pointed at /dev/null so the interpreter's last flush does not complain either, and the run
carries on to a clean end — the journal, not the terminal, is the record of the run.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from typing import Callable

DISPLAYS = ("bar", "log", "quiet")


def resolve_display(progress: str | None) -> str:
    kind = str(progress or "auto")
    if kind == "auto":
        try:
            return "bar" if sys.stderr.isatty() and sys.stdout.isatty() else "log"
        except (AttributeError, ValueError):
            return "log"
    return kind if kind in DISPLAYS else "log"


def one_line(text: object) -> str:
    return " ".join(str(text).split("\n")).replace("\r", " ")


class Console:
    def __init__(self, echo: Callable[[str], None] | None = None, display: str = "log") -> None:
        self._echo = echo or (lambda s: print(s, flush=True))
        self.display = display
        self.closed = False

    def __call__(self, text: str) -> None:
        self.say(text)

    def say(self, text: str, *, important: bool = False) -> None:
        """Print one message (``important``: shown even when quiet, like warnings and errors)."""
        if self.closed:
            return
        text = str(text)
        if self.display == "quiet" and not (important or text.startswith(("Warning:", "Error:"))):
            return
        if self.display == "log":
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            text = "\n".join(f"{stamp} {one_line(line)}" for line in text.split("\n") if line.strip()) or stamp
        try:
            self._echo(text)
        except (BrokenPipeError, ValueError):
            self.close_stdout()
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise
            self.close_stdout()

    def close_stdout(self) -> None:
        self.closed = True
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass
