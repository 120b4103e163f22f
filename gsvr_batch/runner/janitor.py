"""Deleting uploads off the critical path: one thread in the manager, with its own client.

An upload serves every task of its video (one upload per distinct video, issue 12), so it may be
deleted only when no pending or running task needs it any more — and never on the path between
a model's answer and its ``task_completed`` record (invariant 12): a delete can wait on the rate
limiter, a pause or retries. So the manager hands names to this thread and journals what the
thread reports back (it never writes the journal itself: single writer, invariant 1). A delete
that does not happen before the run ends is simply done by a later run, or the file expires
after 48 h at Google.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable

from ..calls import call_api
from ..errors import GsvrError, RequestRejected
from ..policy import RetryPolicy

log = logging.getLogger("gsvr_batch.janitor")


class Janitor:
    def __init__(self, client_factory: Callable[[], Any], limiter: Any, model: str) -> None:
        self._client_factory = client_factory
        self._limiter = limiter
        self._model = model
        self._todo: queue.Queue[str | None] = queue.Queue()
        self._done: queue.Queue[tuple[str, bool, str]] = queue.Queue()
        self._queued: set[str] = set()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._busy = threading.Event()

    def delete(self, name: str) -> None:
        """Ask for ``name`` to be deleted (once; the answer comes back through :meth:`results`)."""
        if name in self._queued:
            return
        self._queued.add(name)
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="gsvr-janitor", daemon=True)
            self._thread.start()
        self._todo.put(name)

    def results(self) -> list[tuple[str, bool, str]]:
        """``(name, deleted, why)`` for every delete finished since the last call (manager thread)."""
        out = []
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                return out

    @property
    def pending(self) -> int:
        return self._todo.qsize() + (1 if self._busy.is_set() else 0)

    def close(self, timeout: float = 10.0) -> list[tuple[str, bool, str]]:
        """Finish what is queued within ``timeout`` seconds, then stop; returns the last results.

        A daemon thread: whatever is left when the run exits is deleted by a later run."""
        if self._thread is not None:
            self._todo.put(None)
            self._thread.join(timeout)
            self._stop.set()
        return self.results()

    def _loop(self) -> None:
        client = None
        policy = RetryPolicy(max_call_retries=3, max_call_wait=30.0)
        while not self._stop.is_set():
            name = self._todo.get()
            if name is None:
                return
            self._busy.set()
            try:
                if client is None:
                    client = self._client_factory()
                call_api(self._limiter, "file", self._model, lambda: client.files.delete(name=name), policy=policy,
                         label="file_delete")
                self._done.put((name, True, "deleted"))
            except RequestRejected as err:  # already gone (expired, deleted elsewhere): nothing left to do
                self._done.put((name, True, f"already gone ({err})"))
            except GsvrError as err:
                log.info("could not delete upload %s: %s (it expires within 48 h)", name, err)
                self._done.put((name, False, str(err)))
            except Exception as exc:  # noqa: BLE001 - a delete must never take the run down
                log.warning("could not delete upload %s: %s", name, exc)
                self._done.put((name, False, f"{type(exc).__name__}: {exc}"))
            finally:
                self._busy.clear()
