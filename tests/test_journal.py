"""Journal on real files: checksums, torn tails, mid-file corruption, repair, snapshots."""

from __future__ import annotations

import json

import pytest

from gsvr_batch import journal as jr
from gsvr_batch.errors import JournalCorrupt
from gsvr_batch.lifecycle import BatchLog, replay


def _batch(path, n=5, complete=True):
    bl, _ = BatchLog.open(path)
    bl.create_batch(manifest="m.yaml", manifest_identity="id", manifest_hash="h", settings={}, version="t")
    bl.run_started()
    for i in range(n):
        bl.add_task(task_id=f"t{i}", source=f"v{i}.mp4")
    if complete:
        for i in range(n):
            bl.start_task(f"t{i}", attempt_id=f"a{i}", model="gemini-2.5-flash")
            bl.complete_task(f"t{i}", output=f"o{i}.md", sha256="ab" * 32, bytes_=10, usage={"total_tokens": 5},
                             cost_usd=0.25, model_version="m", video_duration=6.0, elapsed=1.0)
    bl.close()
    return path


def test_record_roundtrip_and_checksum():
    rec = {"seq": 1, "ts": "2026-01-01T00:00:00.000Z", "type": "task_added", "task_id": "讲座", "x": [1, 2]}
    line = jr.encode_record(rec)
    assert line.endswith(b"}\n")
    assert jr.decode_line(line[:-1]) == rec
    flipped = bytearray(line[:-1])
    flipped[20] ^= 0x01
    assert jr.decode_line(bytes(flipped)) is None


def test_replay_folds_the_whole_history(tmp_path):
    p = _batch(tmp_path / "j.jsonl")
    rp = replay(p, use_snapshot=False)
    assert rp.state.counts()["completed"] == 5
    assert rp.state.total_cost_usd == pytest.approx(1.25)
    assert rp.torn_bytes == 0


def test_torn_tail_is_cut_with_a_copy_kept(tmp_path):
    p = _batch(tmp_path / "j.jsonl")
    good = p.read_bytes()
    # a crash in the middle of appending the next record
    p.write_bytes(good + b'{"seq":23,"ts":"2026-01-01T00:00:00.000Z","type":"task_st')
    rp = replay(p)
    assert rp.torn_bytes > 0 and rp.state.counts()["completed"] == 5  # read-only replay cuts nothing
    warnings = []
    bl, _ = BatchLog.open(p, warn=warnings.append)
    bl.close()
    assert p.read_bytes() == good
    assert len(warnings) == 1 and "torn" in warnings[0]
    backups = list(tmp_path.glob("j.jsonl.torn-*"))
    assert len(backups) == 1 and backups[0].read_bytes().startswith(good)


def test_truncated_mid_record_at_the_end(tmp_path):
    p = _batch(tmp_path / "j.jsonl")
    data = p.read_bytes()
    p.write_bytes(data[:-7])  # last record loses its tail (including the newline)
    bl, rp = BatchLog.open(p, warn=lambda m: None)
    assert bl.state.counts()["completed"] == 4
    assert bl.state.tasks["t4"].status.value == "running"
    bl.close()


def test_flipped_byte_mid_file_stops_replay_with_line_and_repair_command(tmp_path):
    p = _batch(tmp_path / "j.jsonl")
    data = bytearray(p.read_bytes())
    lines = data.split(b"\n")
    offset = sum(len(x) + 1 for x in lines[:4]) + 30  # inside line 5
    data[offset] ^= 0x20
    p.write_bytes(bytes(data))
    with pytest.raises(JournalCorrupt) as ei:
        replay(p)
    assert ei.value.line == 5
    # the hint is a command that works without a terminal (no prompt left to answer)
    assert "line 5" in str(ei.value) and f"gsvr-batch repair {p} --yes" in str(ei.value)
    kept, backup, dropped = jr.repair(p)
    assert kept == 4 and backup.exists() and dropped > 0
    assert replay(p).state.last_seq == 4


def test_snapshot_is_used_and_agrees_with_full_replay(tmp_path):
    p = tmp_path / "j.jsonl"
    bl, _ = BatchLog.open(p)
    bl.create_batch(manifest="m", manifest_identity="i", manifest_hash="h", settings={}, version="t")
    for i in range(25):
        bl.add_task(task_id=f"t{i}", source="s")
        bl.start_task(f"t{i}", attempt_id=f"a{i}", model="gemini-2.5-flash")
        bl.complete_task(f"t{i}", output="o", sha256="x", bytes_=1, usage={}, cost_usd=0.0, model_version=None,
                         video_duration=None, elapsed=None)
        bl.maybe_snapshot()
    bl.close()
    fast, full = replay(p), replay(p, use_snapshot=False)
    assert fast.used_snapshot and fast.records_read < full.records_read
    assert fast.state.to_dict() == full.state.to_dict()


def test_stale_or_damaged_snapshot_falls_back_to_the_journal(tmp_path):
    p = tmp_path / "j.jsonl"
    _batch(p, n=12)
    bl, _ = BatchLog.open(p)
    bl.maybe_snapshot(force=True) or jr.write_snapshot(p, bl.state.to_dict(), bl.state.last_seq, bl.writer.offset,
                                                       bl.writer.last_crc, bl.writer.prefix_crc)
    bl.close()
    snap = jr.snapshot_path(p)
    assert jr.load_snapshot(p) is not None
    # journal cut back below the snapshot's offset (e.g. restored from a backup): snapshot is stale
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2].rsplit(b"\n", 1)[0] + b"\n")
    assert jr.load_snapshot(p) is None
    assert not replay(p).used_snapshot
    # damaged snapshot file
    p.write_bytes(data)
    raw = bytearray(snap.read_bytes())
    raw[-5] ^= 0xFF
    snap.write_bytes(bytes(raw))
    assert jr.load_snapshot(p) is None
    assert replay(p).state.counts()["completed"] == 12


def test_records_are_json_lines_with_seq_ts_type_crc(tmp_path):
    p = _batch(tmp_path / "j.jsonl", n=1)
    for i, line in enumerate(p.read_text().splitlines(), start=1):
        rec = json.loads(line)
        assert rec["seq"] == i and rec["ts"].endswith("Z") and rec["type"] and len(rec["crc"]) == 8


def test_damage_the_snapshot_covers_is_never_hidden(tmp_path):
    """A flipped byte anywhere, snapshot present: replay (so run, status and replay) stops at the
    line, with the repair command — the snapshot's prefix digest no longer matches."""
    from gsvr_batch.summary import batch_document

    p = tmp_path / "j.jsonl"
    bl, _ = BatchLog.open(p)
    bl.create_batch(manifest="m", manifest_identity="i", manifest_hash="h", settings={}, version="t")
    for i in range(12):
        bl.add_task(task_id=f"t{i}", source="s")
    bl.maybe_snapshot(force=True)
    bl.close()
    data = bytearray(p.read_bytes())
    data[data.index(b"\n") + 30] ^= 0x04  # inside record 2, which the snapshot covers
    p.write_bytes(bytes(data))
    assert jr.load_snapshot(p) is None  # the digest of the prefix it covers no longer matches
    with pytest.raises(JournalCorrupt) as ei:
        replay(p)
    assert ei.value.line == 2 and "repair" in str(ei.value)
    with pytest.raises(JournalCorrupt):
        batch_document(p, verify=True)
    with pytest.raises(JournalCorrupt):
        BatchLog.open(p)  # a run refuses it too, and appends nothing after the damage


def test_a_failed_append_leaves_memory_and_disk_in_step(tmp_path, monkeypatch):
    from gsvr_batch.errors import JournalWriteFailed
    import os as _os

    p = _batch(tmp_path / "j.jsonl", n=2, complete=False)
    bl, _ = BatchLog.open(p)
    before = p.read_bytes()
    real_write = _os.write

    def full(fd, data):
        if fd == bl.writer._fd:
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(_os, "write", full)
    with pytest.raises(JournalWriteFailed) as ei:
        bl.start_task("t0", attempt_id="n", model="m")
    assert ei.value.exit_code == 75 and "No space left" in str(ei.value)
    assert bl.state.tasks["t0"].status.value == "pending"  # rebuilt from the file, not ahead of it
    with pytest.raises(JournalWriteFailed):  # nothing more is attempted after a failed append
        bl.add_task(task_id="t9", source="x")
    monkeypatch.setattr(_os, "write", real_write)
    bl.close()
    assert p.read_bytes() == before
