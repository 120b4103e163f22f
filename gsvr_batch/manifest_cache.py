"""A cache of built manifests: a cron run over an unchanged 10,000-job manifest skips parsing and
building it again (issue 12: start-up of a 10,000-task batch in half a second).

Building a manifest is mostly pure: the same bytes, command-line values, folder and code give the
same jobs, ids, output names and warnings. That part is cached, keyed by all of it (:func:`key`).
What depends on the file system is checked again on every load, by the very functions the full
build uses (``manifest._cache_still_holds``):

* each local video: still a file, not a folder; with file checks on (as ``run`` has them), also a
  regular video file, not empty, under 2 GB, with a container signature (``_check_local``: one
  ``stat`` and one 192-byte read, as without the cache);
* each output name: inside the output root (symlinks followed) and not a file the batch owns;
* the output root and the journal resolve where they did; the templates folders still exist and
  every job's template and params still check out;
* ``{date}``: the batch's creation date read from the journal is still the one used.

When any of those has anything to say, or the entry is missing, damaged or from other code, the
cache is ignored and the full build runs: every message comes from the one place that writes it,
and the cache can only make a load faster, never different. Only manifest files whose jobs each
name one video or link are cached (a folder or list-file job depends on what the folder or list
holds now), and none that holds what looks like a secret (the cache would be one more copy of it).

Where: ``$GSVR_BATCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/gsvr-batch``, else
``~/.cache/gsvr-batch``; ``GSVR_BATCH_CACHE_DIR=off`` turns it off. Deleting it is always safe.

An entry is a pickle, and unpickling runs code: so the folder is used only when it belongs to this
user and nobody else can write to it (as ssh treats ``~/.ssh``), and an entry is read only when it
is a regular file of this user's, opened without following a symlink; its key and sha256 are
compared before anything is unpickled. At most :data:`MAX_ENTRIES` entries and :data:`MAX_BYTES`
are kept (least recently used go first), none unused for :data:`MAX_AGE_DAYS`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import pickle
import re
import stat
import sys
import tempfile
import time
from pathlib import Path, PurePath
from typing import Any

from .manifest_types import Manifest

FORMAT = b"gsvr-batch manifest cache 2\n"
MAX_AGE_DAYS = 30
MAX_ENTRIES = 32
MAX_BYTES = 256 * 1024 * 1024  # all entries together (a 10,000-job entry is ~2 MB)
MAX_ENTRY_BYTES = 128 * 1024 * 1024
_ENV = "GSVR_BATCH_CACHE_DIR"
_PACKAGE = Path(__file__).resolve().parent
_ENTRY = re.compile(r"^[0-9a-f]{32}\.pickle$")
_TMP_PREFIX = ".gsvr-cache-tmp-"


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


def _private(st: os.stat_result) -> bool:
    """Owned by this user and writable by nobody else: nothing in it was planted by another user."""
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _usable_dir(create: bool) -> Path | None:
    folder = cache_dir()
    if folder is None:
        return None
    try:
        if create:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = os.stat(folder)
    except (OSError, ValueError):
        return None
    return folder if stat.S_ISDIR(st.st_mode) and _private(st) else None


_CODE: str | None = None


def code_signature() -> str:
    """What the build's code is: the content of every module of this package (an upgrade, an edit of
    a checkout, a deployment that resets mtimes), where it is, and the YAML library that parses."""
    global _CODE
    if _CODE is None:
        import yaml

        h = hashlib.sha256(repr((sys.version_info[:2], str(_PACKAGE), yaml.__version__,
                                 hasattr(yaml, "CSafeLoader"))).encode())
        for folder in (_PACKAGE, _PACKAGE / "runner"):
            for name in sorted(os.listdir(folder)):
                if name.endswith(".py"):
                    with open(folder / name, "rb") as fh:
                        h.update(f"{folder.name}/{name}\n".encode() + hashlib.sha256(fh.read()).digest())
        _CODE = h.hexdigest()
    return _CODE


def _plain(value: Any) -> Any:
    """A command-line value as the key holds it: a path and a date are tagged (never equal to a text
    that reads the same), anything else that is not JSON means no cache (TypeError)."""
    if isinstance(value, PurePath):
        return {"path": os.fspath(value)}
    if isinstance(value, (_dt.date, _dt.datetime)):
        return {type(value).__name__: value.isoformat()}
    if isinstance(value, tuple):
        return {"tuple": list(value)}
    raise TypeError(f"no cache key for {type(value).__name__}")


def key(resolved: str, path: Path, display: str, data: bytes, overrides: dict, date: Any, check_files: bool) -> str:
    """Everything the pure part of a build depends on: the code, the file's bytes and where it is
    (as named and resolved), how it was named (messages show it), the command-line values, the date
    asked for, whether files are checked, and the folder and home that relative command-line paths
    and ``~`` resolve against. Raises (TypeError, ValueError, OSError) when one cannot be had."""
    parts = [FORMAT.decode(), code_signature(), resolved, str(path.absolute()), display,
             hashlib.sha256(data).hexdigest(), overrides, date, check_files, os.getcwd(), os.path.expanduser("~")]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=_plain).encode("utf-8")).hexdigest()


def _entry_name(cache_key: str) -> str:
    return cache_key[:32] + ".pickle"


def load(cache_key: str) -> tuple[Manifest, dict[str, Any]] | None:
    """(the cached manifest, the facts its checks need) if there is an intact entry for ``cache_key``."""
    folder = _usable_dir(create=False)
    if folder is None:
        return None
    try:
        # O_NOFOLLOW: not a symlink planted to somewhere else; O_NONBLOCK: a FIFO cannot hang the run.
        fd = os.open(folder / _entry_name(cache_key), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or not _private(st) or st.st_size > MAX_ENTRY_BYTES:
                return None
            blob = fh.read()
        head, stored_key, digest, payload = blob.split(b"\n", 3)
        # Compared before anything is unpickled: an entry of another manifest, another version of
        # it, or other code is never even decoded.
        if head + b"\n" != FORMAT or stored_key != cache_key.encode() or \
                hashlib.sha256(payload).hexdigest().encode() != digest:
            return None
        doc = pickle.loads(payload)
        if not isinstance(doc, dict) or not isinstance(doc.get("manifest"), Manifest):
            return None
        with contextlib.suppress(OSError):
            os.utime(folder / _entry_name(cache_key))  # recently used: pruned last
        return doc["manifest"], doc["facts"]
    except Exception:  # noqa: BLE001 - unreadable, torn or foreign: the full build runs
        return None


def store(cache_key: str, manifest: Manifest, facts: dict[str, Any]) -> None:
    """Keep ``manifest`` for the next load. Best effort: a cache that cannot be written is no cache."""
    folder = _usable_dir(create=True)  # first: no pickling for a folder that cannot take it
    if folder is None:
        return
    try:
        payload = pickle.dumps({"manifest": manifest, "facts": facts}, protocol=pickle.HIGHEST_PROTOCOL)
        if len(payload) > MAX_ENTRY_BYTES:
            return
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=folder)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(b"%s%s\n%s\n" % (FORMAT, cache_key.encode(), hashlib.sha256(payload).hexdigest().encode())
                         + payload)
            # No fsync: an entry torn by a power cut fails its checksum and is rebuilt.
            os.replace(tmp, folder / _entry_name(cache_key))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        prune(folder)
    except Exception:  # noqa: BLE001 - full disk, unpicklable value: run without it
        return


def prune(folder: Path, now: float | None = None) -> None:
    """Only this cache's own files: entries unused for MAX_AGE_DAYS, then the least recently used
    beyond MAX_ENTRIES or MAX_BYTES, and temp files a killed writer left more than an hour ago."""
    now = time.time() if now is None else now
    entries = []
    with os.scandir(folder) as it:
        for entry in it:
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if _ENTRY.match(entry.name):
                    if now - st.st_mtime > MAX_AGE_DAYS * 86400:
                        os.unlink(entry.path)
                    else:
                        entries.append((st.st_mtime, st.st_size, entry.path))
                elif entry.name.startswith(_TMP_PREFIX) and now - st.st_mtime > 3600:
                    os.unlink(entry.path)
    entries.sort(reverse=True)  # newest first
    total = 0
    for i, (_mtime, size, path) in enumerate(entries):
        total += size
        if i > 0 and (i >= MAX_ENTRIES or total > MAX_BYTES):  # never the entry just written
            with contextlib.suppress(OSError):
                os.unlink(path)
