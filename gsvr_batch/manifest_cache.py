"""A cache of built manifests: a cron run over an unchanged 10,000-job manifest skips parsing and
building it again (issue 12: start-up of a 10,000-task batch in half a second).

Building a manifest is mostly pure: the same bytes, command-line values, folder and code give the
same jobs, ids, output names and warnings. That part is cached, one file per manifest, keyed by
all of it (:func:`key`). What depends on the file system is checked again on every load, by the
very functions the full build uses (``manifest._cache_still_holds``):

* each local video: exists, is a regular video file, not empty, under 2 GB, has a container
  signature (``_check_local``: one ``stat`` and one 192-byte read, as without the cache);
* each output name: inside the output root (symlinks followed) and not a file the batch owns;
* the output root and the journal resolve where they did; the templates folders still exist and
  every job's template and params still check out;
* ``{date}``: the batch's creation date read from the journal is still the one used.

When any of those has anything to say, or the file is missing, damaged or from another version,
the cache is ignored and the full build runs: every message comes from the one place that writes
it, and the cache can only ever make a load faster, never different. Only manifest files whose
jobs each name one video or link are cached (a folder or list-file job depends on what the folder
or list holds now).

Where: ``$GSVR_BATCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/gsvr-batch``, else
``~/.cache/gsvr-batch``; ``GSVR_BATCH_CACHE_DIR=off`` turns it off. Deleting it is always safe.
Files are the user's own (mode 0600), checksummed, replaced atomically, and files unused for 30
days are removed when a new one is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .manifest_types import Manifest

FORMAT = b"gsvr-batch manifest cache 1\n"
MAX_AGE_DAYS = 30
_ENV = "GSVR_BATCH_CACHE_DIR"
_PACKAGE = Path(__file__).resolve().parent


def cache_dir() -> Path | None:
    """The cache folder, or None when the cache is off (``GSVR_BATCH_CACHE_DIR=off``) or there is no
    home folder to keep it in (a service account without one simply runs without it)."""
    given = os.environ.get(_ENV)
    if given is not None:
        if given.strip().lower() in ("", "off", "0", "no", "false"):
            return None
        return Path(given).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "gsvr-batch"
    home = os.path.expanduser("~")
    if home == "~" or not os.path.isabs(home):
        return None
    return Path(home) / ".cache" / "gsvr-batch"


_CODE: str | None = None


def code_signature() -> str:
    """Name, size and mtime of every module of this package: a cache written by other code (an
    upgrade, or an edit of a checkout) is never read back."""
    global _CODE
    if _CODE is None:
        h = hashlib.sha256(repr(sys.version_info[:2]).encode())
        for folder in (_PACKAGE, _PACKAGE / "runner"):
            for entry in sorted(os.scandir(folder), key=lambda e: e.name):
                if entry.name.endswith(".py"):
                    st = entry.stat()
                    h.update(f"{folder.name}/{entry.name} {st.st_size} {st.st_mtime_ns}\n".encode())
        _CODE = h.hexdigest()
    return _CODE


def key(path: Path, display: str, data: bytes, overrides: dict, date: str | None, check_files: bool) -> str:
    """Everything the pure part of a build depends on: the code, the file's bytes and where it is,
    how it was named (messages show it), the command-line values, the date asked for, whether
    files are checked, and the folder and home relative command-line paths and ``~`` resolve against."""
    parts = [FORMAT.decode(), code_signature(), str(path.absolute()), display,
             hashlib.sha256(data).hexdigest(), json.dumps(overrides, sort_keys=True, default=repr),
             date, check_files, os.getcwd(), os.path.expanduser("~")]
    return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()


def _file_for(folder: Path, path: Path) -> Path:
    # One file per manifest (its resolved path): a changed manifest replaces its own entry.
    return folder / (hashlib.sha256(str(path.resolve()).encode("utf-8")).hexdigest()[:32] + ".pickle")


def load(path: Path, cache_key: str) -> tuple[Manifest, dict[str, Any]] | None:
    """(the cached manifest, the facts its checks need) if there is an intact entry for ``cache_key``."""
    folder = cache_dir()
    if folder is None:
        return None
    try:
        file = _file_for(folder, path)
        with open(file, "rb") as fh:
            blob = fh.read()
        head, stored_key, digest, payload = blob.split(b"\n", 3)
        # The key is compared before anything is unpickled: an entry of another version of the
        # manifest (or of this code) is never even decoded.
        if head + b"\n" != FORMAT or stored_key != cache_key.encode() or \
                hashlib.sha256(payload).hexdigest().encode() != digest:
            return None
        doc = pickle.loads(payload)
        if not isinstance(doc.get("manifest"), Manifest):
            return None
        with contextlib.suppress(OSError):
            os.utime(file)  # in use: not pruned (_prune)
        return doc["manifest"], doc["facts"]
    except Exception:  # noqa: BLE001 - missing, unreadable, torn or foreign: the full build runs
        return None


def store(path: Path, cache_key: str, manifest: Manifest, facts: dict[str, Any]) -> None:
    """Keep ``manifest`` for the next load. Best effort: a cache that cannot be written is no cache."""
    folder = cache_dir()
    if folder is None:
        return
    try:
        payload = pickle.dumps({"manifest": manifest, "facts": facts}, protocol=pickle.HIGHEST_PROTOCOL)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(b"%s%s\n%s\n" % (FORMAT, cache_key.encode(), hashlib.sha256(payload).hexdigest().encode())
                         + payload)
            # No fsync: a cache torn by a power cut fails its checksum and is rebuilt.
            os.replace(tmp, _file_for(folder, path))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _prune(folder)
    except Exception:  # noqa: BLE001 - read-only home, full disk, unpicklable value: run without it
        return


def _prune(folder: Path, now: float | None = None) -> None:
    """Entries not written for MAX_AGE_DAYS (manifests moved or deleted), and temp files a killed
    writer left behind more than an hour ago."""
    now = time.time() if now is None else now
    with os.scandir(folder) as it:
        for entry in it:
            with contextlib.suppress(OSError):
                age = now - entry.stat(follow_symlinks=False).st_mtime
                if (entry.name.endswith(".pickle") and age > MAX_AGE_DAYS * 86400) or \
                        (entry.name.startswith(".tmp-") and age > 3600):
                    os.unlink(entry.path)
