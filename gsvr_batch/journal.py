"""The append-only JSONL journal: the single source of truth of a batch (DESIGN invariant 1).

One record per line::

    {"seq":17,"ts":"2026-11-28T15:00:00.123Z","type":"task_completed",...,"crc":"89abcdef"}

``crc`` is the CRC-32 of the line's bytes with the ``,"crc":"…"`` suffix removed (i.e. of the
compact JSON of the record without ``crc``). Because the checksum is always the last 18 bytes of
the line, verifying a record needs no re-serialisation, which keeps replay of a million records
to a few seconds.

Durability: records are written with one ``os.write`` each (O_APPEND). ``append(durable=True)``
fsyncs before returning — used for terminal records (completed / failed / skipped) and batch-level
stops, so the manager never moves on before they are on disk (invariant 2). Other records are
group-committed: fsynced at most ``group_commit_interval`` seconds later, or at the next durable
record, whichever comes first.

Reading (invariant 3): a partial or bad *last* record is a torn tail — a crash mid-append. The
writer cuts it off (after copying the original file aside) with a warning. A bad record anywhere
else means the file was damaged after it was written: replay stops with the line number and the
command that repairs it (``gsvr-batch repair``), never silently skipping records.

Snapshots: the manager periodically writes ``<journal>.snapshot`` atomically (state at ``seq``,
byte ``offset``, and the CRC of the record that ends there). Replay loads it and folds only the
tail; a snapshot that is missing, unreadable or does not match the journal is ignored.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from .errors import JournalCorrupt, JournalError, JournalWriteFailed
from .fsutil import atomic_write_bytes, fsync_dir
from .timeutil import iso_utc_ms

_DECODER = json.JSONDecoder()
CRC_SUFFIX_LEN = len(',"crc":"00000000"}')  # 18
SNAPSHOT_SUFFIX = ".snapshot"
SNAPSHOT_VERSION = 2  # 2: prefix_crc (a digest of the whole prefix it covers)


utc_now_iso = iso_utc_ms


def encode_record(rec: dict[str, Any]) -> bytes:
    """Compact JSON line with the checksum appended as the last field."""
    body = json.dumps(rec, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    crc = zlib.crc32(body) & 0xFFFFFFFF
    return body[:-1] + b',"crc":"%08x"}\n' % crc


def decode_line(line: bytes) -> dict[str, Any] | None:
    """The record in ``line`` (without its newline), or None if it is damaged."""
    if len(line) <= CRC_SUFFIX_LEN or not line.endswith(b'"}') or line[-CRC_SUFFIX_LEN:-10] != b',"crc":"':
        return None
    body = line[:-CRC_SUFFIX_LEN] + b"}"
    try:
        want = int(line[-10:-2], 16)
    except ValueError:
        return None
    if zlib.crc32(body) & 0xFFFFFFFF != want:
        return None
    try:
        # One shared decoder on str: json.loads(bytes) re-detects the encoding and builds the
        # call chain anew for every line, ~1.5 s of a 1M-record replay. The CRC already proved
        # the line is what the writer wrote, so raw_decode's end must be the end of the body.
        text = body.decode("utf-8")
        rec, end = _DECODER.raw_decode(text)
        if end != len(text):
            return None
    except ValueError:  # includes UnicodeDecodeError and JSONDecodeError
        return None
    if not isinstance(rec, dict) or "seq" not in rec or "type" not in rec:
        return None
    return rec


@dataclass
class ReadResult:
    records: list[dict[str, Any]] = field(default_factory=list)
    end_offset: int = 0  # byte offset just after the last good record
    torn_tail: bytes = b""  # the bytes after end_offset that did not form a good record
    last_crc: str | None = None


def iter_records(path: str | os.PathLike[str], start_offset: int = 0, first_line: int = 1,
                 expect_seq: int | None = None, digest: dict[str, int] | None = None
                 ) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """Yield ``(line_no, end_offset, record)`` for every good record from ``start_offset``.

    Raises JournalCorrupt for a bad record followed by more data (mid-file damage). A bad or
    partial *last* line is not yielded; callers learn about it by comparing the last
    ``end_offset`` with the file size (see :func:`read_journal`). When the iteration ends,
    ``digest`` (if given) receives ``crc``: the CRC-32 of the good bytes read, chained onto
    ``digest["crc"]`` (the prefix before ``start_offset``), so replay learns the whole good
    prefix's digest without reading the file twice.
    """
    with open(path, "rb") as fh:
        fh.seek(start_offset)
        data = fh.read()
    pos = 0
    line_no = first_line
    n = len(data)
    try:
        while pos < n:
            nl = data.find(b"\n", pos)
            if nl == -1:
                return  # partial last line (torn tail)
            rec = decode_line(data[pos:nl])
            if rec is None or (expect_seq is not None and rec.get("seq") != expect_seq):
                if nl + 1 >= n or not data[nl + 1 :].strip():
                    return  # bad last record: torn tail
                why = "bad checksum or malformed JSON" if rec is None else (
                    f"sequence number {rec.get('seq')} where {expect_seq} was expected")
                raise JournalCorrupt(
                    f"{path}: record at line {line_no} is damaged ({why}) and is followed by more records; "
                    f"refusing to guess. Inspect it, then run `gsvr-batch repair {path} --yes` to keep the "
                    f"{line_no - 1} good records before it (the original is copied aside)",
                    line=line_no,
                )
            pos = nl + 1
            yield line_no, start_offset + pos, rec
            if expect_seq is not None:
                expect_seq += 1
            line_no += 1
    finally:
        if digest is not None:
            digest["crc"] = zlib.crc32(memoryview(data)[:pos], digest.get("crc", 0))


def read_journal(path: str | os.PathLike[str]) -> ReadResult:
    """Read every good record; report (but do not cut) a torn tail."""
    res = ReadResult()
    expect = None
    for _line, end, rec in iter_records(path):
        if expect is None:
            expect = rec["seq"]
        res.records.append(rec)
        res.end_offset = end
    size = os.path.getsize(path)
    if res.end_offset < size:
        with open(path, "rb") as fh:
            fh.seek(res.end_offset)
            res.torn_tail = fh.read()
    return res


def cut_torn_tail(path: str | os.PathLike[str], end_offset: int, now: float | None = None) -> Path:
    """Copy the journal aside, then truncate it to ``end_offset``. Returns the copy's path."""
    path = Path(path)
    stamp = datetime.fromtimestamp(time.time() if now is None else now, tz=timezone.utc).strftime("%Y%m%dT%H%M%S")
    backup = path.with_name(f"{path.name}.torn-{stamp}")
    shutil.copy2(path, backup)
    with open(path, "r+b") as fh:
        fh.truncate(end_offset)
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(path.parent)
    return backup


def repair(path: str | os.PathLike[str], now: float | None = None) -> tuple[int, Path, int]:
    """Keep the good records before the first damaged one; copy the original aside.

    Returns (records kept, backup path, bytes dropped). Used by ``gsvr-batch repair``.
    """
    path = Path(path)
    end = 0
    kept = 0
    expect = None
    with open(path, "rb") as fh:
        data = fh.read()
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl == -1:
            break
        rec = decode_line(data[pos:nl])
        if rec is None or (expect is not None and rec["seq"] != expect):
            break
        expect = rec["seq"] + 1
        kept += 1
        pos = nl + 1
        end = pos
    stamp = datetime.fromtimestamp(time.time() if now is None else now, tz=timezone.utc).strftime("%Y%m%dT%H%M%S")
    backup = path.with_name(f"{path.name}.corrupt-{stamp}")
    shutil.copy2(path, backup)
    with open(path, "r+b") as fh:
        fh.truncate(end)
        os.fsync(fh.fileno())
    snap = snapshot_path(path)
    if snap.exists():
        snap.unlink()  # it may describe records we just dropped
    return kept, backup, len(data) - end


class JournalWriter:
    """Appends records. Only the manager (the run-lock holder) ever has one (invariant 1).

    ``prefix_crc`` is the running CRC-32 of every byte of the file up to ``offset``; a snapshot
    stores it, so a later open can tell whether the prefix the snapshot covers is still intact
    (invariant 14: a cache never makes a damaged journal look whole).
    """

    def __init__(self, path: str | os.PathLike[str], next_seq: int, *, group_commit_interval: float = 0.5,
                 clock=time.monotonic, wallclock=time.time, prefix_crc: int | None = None) -> None:
        self.path = Path(path)
        self.next_seq = next_seq
        self.group_commit_interval = group_commit_interval
        self._clock = clock
        self._wallclock = wallclock
        new = not self.path.exists()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc.strerror or exc}") from exc
        if new:
            fsync_dir(self.path.parent)  # the journal's own directory entry must survive a crash
        self._dirty = False
        self._last_sync = clock()
        self.offset = os.fstat(self._fd).st_size
        self.last_crc: str | None = None
        self.prefix_crc = prefix_crc if prefix_crc is not None else file_crc(self.path, self.offset)
        self.broken: str | None = None  # set after a failed append: nothing more may be written

    def make(self, type_: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Build the next record (not yet written): ``seq``, ``ts``, ``type`` first."""
        rec: dict[str, Any] = {"seq": self.next_seq, "ts": utc_now_iso(self._wallclock()), "type": type_}
        rec.update(fields)
        return rec

    def write(self, rec: dict[str, Any], *, durable: bool = False) -> None:
        """Append one record (one ``write`` call). Raises JournalWriteFailed (exit 75) when the
        disk refuses it; the writer is then broken for good, so memory never runs ahead of disk
        by more than the record that failed (the caller rebuilds its state from the file)."""
        if self.broken:
            raise JournalWriteFailed(self.broken)
        line = encode_record(rec)
        try:
            written = os.write(self._fd, line)
            if written != len(line):  # a short write on a regular file means the disk is full
                raise OSError(28, "short write (disk full?)")
        except OSError as exc:
            self.broken = (f"cannot append to journal {self.path}: {exc.strerror or exc}. Free some space and "
                           f"run the same command again; nothing already recorded is lost")
            raise JournalWriteFailed(self.broken) from exc
        self.next_seq = rec["seq"] + 1
        self.offset += len(line)
        self.prefix_crc = zlib.crc32(line, self.prefix_crc)
        self.last_crc = line[-11:-3].decode()  # the 8 hex digits before `"}\n`
        self._dirty = True
        if durable:
            self.sync()
        else:
            self.maybe_sync()

    def maybe_sync(self) -> None:
        if self._dirty and self._clock() - self._last_sync >= self.group_commit_interval:
            self.sync()

    def sync(self) -> None:
        if self._dirty:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self.broken = f"cannot fsync journal {self.path}: {exc.strerror or exc}"
                raise JournalWriteFailed(self.broken) from exc
            self._dirty = False
        self._last_sync = self._clock()

    def close(self) -> None:
        if self._fd >= 0:
            try:
                if not self.broken:
                    self.sync()
            finally:
                os.close(self._fd)
                self._fd = -1


def file_crc(path: str | os.PathLike[str], end: int, *, start: int = 0, crc: int = 0) -> int:
    """CRC-32 of bytes [start, end) of a file (chunked: a million-record journal is ~250 MB)."""
    if end <= start:
        return crc
    with open(path, "rb") as fh:
        fh.seek(start)
        left = end - start
        while left > 0:
            block = fh.read(min(left, 8 * 1024 * 1024))
            if not block:
                break
            crc = zlib.crc32(block, crc)
            left -= len(block)
    return crc


# ---------------------------------------------------------------------------------------------
# Snapshots


def snapshot_path(journal_path: str | os.PathLike[str]) -> Path:
    p = Path(journal_path)
    return p.with_name(p.name + SNAPSHOT_SUFFIX)


def write_snapshot(journal_path: str | os.PathLike[str], state_dict: dict[str, Any], seq: int, offset: int,
                   last_crc: str | None, prefix_crc: int) -> None:
    doc = {"version": SNAPSHOT_VERSION, "seq": seq, "offset": offset, "last_crc": last_crc,
           "prefix_crc": prefix_crc, "state": state_dict}
    body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    crc = zlib.crc32(body) & 0xFFFFFFFF
    atomic_write_bytes(snapshot_path(journal_path), b"%08x\n" % crc + body)


def load_snapshot(journal_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The snapshot document if it is intact and still describes a prefix of the journal.

    "Describes" is checked byte for byte: the CRC-32 of the journal's first ``offset`` bytes must
    equal the one the snapshot recorded. A flipped byte anywhere in that prefix makes the snapshot
    unusable, so replay reads the whole journal and stops at the damaged line (invariant 14).
    """
    sp = snapshot_path(journal_path)
    try:
        raw = sp.read_bytes()
        crc_hex, body = raw.split(b"\n", 1)
        if zlib.crc32(body) & 0xFFFFFFFF != int(crc_hex, 16):
            return None
        doc = json.loads(body)
        if doc.get("version") != SNAPSHOT_VERSION:
            return None
        offset = int(doc["offset"])
        if os.path.getsize(journal_path) < offset or offset < 20:
            return None
        if file_crc(journal_path, offset) != int(doc["prefix_crc"]):
            return None
        return doc
    except (OSError, ValueError, KeyError, TypeError):
        return None
