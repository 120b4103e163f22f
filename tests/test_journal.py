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
    from gsvr_batch.lifecycle import SNAPSHOT_EVERY_COMPLETIONS

    for i in range(SNAPSHOT_EVERY_COMPLETIONS + 5):  # one snapshot on the way, then a short tail
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


# -- the fast read path (issue 12): same meaning, same errors, whichever decoder reads a line ------


def test_encoding_is_byte_for_byte_what_json_dumps_writes():
    rec = {"seq": 7, "ts": "2026-01-01T00:00:00.000Z", "type": "task_added", "task_id": "讲座 ✓", "f": 0.1,
           "n": None, "big": 2**70, "nested": {"a": [1, 2.5e-07, True]}}
    body = json.dumps(rec, ensure_ascii=False, separators=(",", ":")).encode()
    assert jr.encode_record(rec) == body[:-1] + b',"crc":"%08x"}\n' % (jr.zlib.crc32(body) & 0xFFFFFFFF)


def test_values_msgspec_refuses_are_decoded_by_json_the_same_as_before(monkeypatch):
    # json writes NaN; msgspec refuses it: the line is not "damaged". Integers beyond 64 bits stay
    # exact (orjson, the decoder before, read 2**70 + 1 as the float 2**70).
    rec = {"seq": 1, "ts": "t", "type": "task_step", "cost_usd": float("nan"), "big": 2**70 + 1, "s": "é"}
    line = jr.encode_record(rec)[:-1]
    got = jr.decode_line(line)
    assert got is not None and got["big"] == 2**70 + 1 and got["cost_usd"] != got["cost_usd"] and "crc" not in got
    monkeypatch.setattr(jr, "_fast_loads", jr._no_fast_loads)  # the reference decoder alone gives the same record
    ref = jr.decode_line(line)
    assert ref["big"] == got["big"] and ref["s"] == "é" and set(ref) == set(got)


def test_an_integer_beyond_64_bits_is_read_exactly_in_a_batch_too(tmp_path):
    p = tmp_path / "j.jsonl"
    p.write_bytes(b"".join(jr.encode_record({"seq": i, "ts": "t", "type": "task_step", "n": 2**70 + i})
                           for i in range(1, 4)))
    [(records, _ends)] = list(jr.iter_batches(p, expect_seq=1))
    assert [r["n"] for r in records] == [2**70 + 1, 2**70 + 2, 2**70 + 3]
    assert all(type(r["n"]) is int for r in records)


def test_nesting_deeper_than_any_writer_makes_is_damage_not_a_traceback():
    body = b'{"seq":1,"type":"x","v":' + b"[" * 5000 + b"]" * 5000 + b"}"
    line = body[:-1] + b',"crc":"%08x"}' % jr.zlib.crc32(body)
    assert jr.decode_line(line) is None
    assert jr._decode_group([line], None) is None


def test_fast_and_reference_decoders_agree_on_a_real_journal(tmp_path, monkeypatch):
    p = _batch(tmp_path / "j.jsonl", n=7)
    fast = [r for _, _, r in jr.iter_records(p, expect_seq=1)]
    monkeypatch.setattr(jr, "_fast_loads", jr._no_fast_loads)
    ref = [r for _, _, r in jr.iter_records(p, expect_seq=1)]
    assert fast == ref and all("crc" not in r for r in fast)


def test_a_line_that_is_json_but_not_a_record_is_damage():
    for body in (b'[1,2]', b'{"seq":1}', b'"x"'):
        crc = jr.zlib.crc32(body[:-1] + b"}") if body.endswith(b"}") else 0
        line = body[:-1] + b',"crc":"%08x"}' % crc if body.endswith(b"}") else body
        assert jr.decode_line(line) is None


@pytest.mark.parametrize("batch", [1, 3, 4096])
def test_batches_hand_out_every_good_record_before_mid_file_damage(tmp_path, batch):
    p = _batch(tmp_path / "j.jsonl", n=6)
    lines = p.read_bytes().split(b"\n")
    bad = 9  # a line in the middle (1-based)
    damaged = bytearray(lines[bad - 1])
    damaged[25] ^= 0x01
    lines[bad - 1] = bytes(damaged)
    p.write_bytes(b"\n".join(lines))
    got = []
    digest = {"crc": 0}
    with pytest.raises(JournalCorrupt) as err:
        for records, ends in jr.iter_batches(p, expect_seq=1, digest=digest, batch=batch):
            got += records
            assert len(records) == len(ends) and ends == sorted(ends)
    assert err.value.line == bad and len(got) == bad - 1
    good_prefix = b"\n".join(lines[: bad - 1]) + b"\n"
    assert digest["crc"] == jr.zlib.crc32(good_prefix)  # the digest covers exactly what was handed out
    with pytest.raises(JournalCorrupt):
        replay(p, use_snapshot=False)


def test_file_crc_matches_a_whole_file_crc_in_any_chunking(tmp_path):
    p = tmp_path / "f"
    data = bytes(range(256)) * 9000  # > 2 MiB: several 1 MiB blocks
    p.write_bytes(data)
    assert jr.file_crc(p, len(data)) == jr.zlib.crc32(data)
    assert jr.file_crc(p, 1_500_000, start=100, crc=jr.zlib.crc32(data[:100])) == jr.zlib.crc32(data[:1_500_000])
    assert jr.file_crc(p, 0) == 0


def test_replay_gives_the_same_state_as_applying_each_record(tmp_path):
    from gsvr_batch.state import BatchState, apply

    p = _batch(tmp_path / "j.jsonl", n=9)
    one_by_one = BatchState()
    for _, _, rec in jr.iter_records(p):
        apply(one_by_one, rec)
    assert replay(p, use_snapshot=False).state.to_dict() == one_by_one.to_dict()


def test_group_commit_makes_one_fsync_for_the_durable_records_of_a_block(tmp_path, monkeypatch):
    p = _batch(tmp_path / "j.jsonl", n=4, complete=False)
    bl, _ = BatchLog.open(p)
    syncs = []
    real = jr.os.fsync
    monkeypatch.setattr(jr.os, "fsync", lambda fd: (syncs.append(fd), real(fd))[1])
    for i in range(4):
        bl.start_task(f"t{i}", attempt_id=f"a{i}", model="m")
    with bl.group_commit():
        with bl.group_commit():  # nested: only the outermost block syncs
            for i in range(3):
                bl.complete_task(f"t{i}", output=f"o{i}.md", sha256="ab" * 32, bytes_=1, usage={}, cost_usd=0.0,
                                 model_version=None, video_duration=None, elapsed=None)
        assert syncs == [] and bl.writer._dirty  # written, not yet durable
    assert len(syncs) == 1 and not bl.writer._dirty
    bl.complete_task("t3", output="o3.md", sha256="ab" * 32, bytes_=1, usage={}, cost_usd=0.0, model_version=None,
                     video_duration=None, elapsed=None)
    assert len(syncs) == 2  # outside a block a durable record is fsynced at once, as before
    bl.close()
    assert replay(p).state.counts()["completed"] == 4


# -- issue 12: the batched reader against the line-by-line rules it replaces ----------------------


def _reference_read(data: bytes, expect_seq: int | None) -> tuple[list, list[int], int | None, str | None]:
    """The reading rules, one line at a time through decode_line (the reference): the good records,
    their end offsets, and the line (with why) of mid-file damage, or None."""
    records, ends, pos, line = [], [], 0, 1
    while True:
        nl = data.find(b"\n", pos)
        if nl == -1:
            return records, ends, None, None  # the end, or a partial last line (torn tail)
        rec = jr.decode_line(data[pos:nl])
        if rec is None or (expect_seq is not None and rec["seq"] != expect_seq):
            if not data[nl + 1:].strip():
                return records, ends, None, None  # a bad last record: torn tail
            why = "bad checksum" if rec is None else f"sequence number {rec.get('seq')} where {expect_seq}"
            return records, ends, line, why
        records.append(rec)
        pos = nl + 1
        ends.append(pos)
        line += 1
        if expect_seq is not None:
            expect_seq += 1


def damage_a_line(rng, lines: list[bytes]) -> None:
    """One kind of damage to one of ``lines`` (without their newlines), in place: a flipped bit, a
    byte gone, upper-case checksum digits (not damage), a blank or white line, two lines swapped, a
    line twice, JSON with a good checksum that is no record, a checksum under another key, a CR."""
    i = rng.randrange(len(lines))
    line = bytearray(lines[i])
    how = rng.randrange(10)
    if how == 0 and line:
        line[rng.randrange(len(line))] ^= 1 << rng.randrange(8)
    elif how == 1 and line:
        del line[rng.randrange(len(line))]
    elif how == 2:
        line[-10:-2] = line[-10:-2].upper()  # int(hex, 16) still reads it: not damage
    elif how == 3:
        line = bytearray()  # a blank line
    elif how == 4:
        line = bytearray(b"  \t ")
    elif how == 5:
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]  # out of sequence
    elif how == 6:
        lines.insert(i, lines[i])  # a record twice
    elif how == 7:  # JSON with a good checksum, but not a record
        body = b'{"seq":%d}' % (i + 1)
        line = bytearray(body[:-1] + b',"crc":"%08x"}' % jr.zlib.crc32(body))
    elif how == 8:  # a good checksum under another key (and a "crc" inside the body)
        body = bytes(line[:-18]) + b',"crc":"x"}'
        line = bytearray(body[:-1] + b',"crd":"%08x"}' % jr.zlib.crc32(body))
    else:
        line = line + b"\r"
    if how not in (5, 6):
        lines[i] = bytes(line)


def _damaged_journal(rng) -> bytes:
    """A journal of every shape of value the writer can write, then a few kinds of damage."""
    recs = []
    for seq in range(1, rng.randint(2, 60)):
        rec = {"seq": seq, "ts": "2026-01-01T00:00:00.000Z", "type": rng.choice(["task_step", "task_added"]),
               "task_id": f"t{rng.randint(0, 9)}"}
        kind = rng.random()
        if kind < 0.05:
            rec["cost_usd"] = float("nan")  # json writes it, msgspec refuses it
        elif kind < 0.1:
            rec["big"] = 2**70 + 1  # exact: orjson made it a float
        elif kind < 0.15:
            rec["text"] = "讲座 ✓ \\ \" é" * rng.randint(1, 3)
        elif kind < 0.2:
            rec["long"] = "x" * rng.randint(300, 3000)  # longer than the smallest blocks below
        elif kind < 0.25:
            rec["nested"] = {"a": [1, 2.5, None, True], "b": {"c": "d"}}
        recs.append(jr.encode_record(rec))
    lines = [line[:-1] for line in recs]
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        damage_a_line(rng, lines)
    data = b"\n".join(lines) + b"\n"
    tail = rng.randrange(6)
    if tail == 0:
        data = data[: rng.randrange(len(data) + 1)]  # cut anywhere, e.g. mid-record
    elif tail == 1:
        data += b" \n\n "
    elif tail == 2:
        data += b'{"seq":999,"ts":"x","type":"task_st'
    elif tail == 3:  # a damaged last record, then the start of another: not a torn tail
        data = data[:-3] + b'X"}\n{"seq":'
    return data


@pytest.mark.parametrize("seed", range(150))
def test_batched_reading_is_the_line_by_line_reading(tmp_path, monkeypatch, seed):
    """Whatever the damage, iter_batches hands out exactly the records, end offsets and digest of
    the line-by-line rules, and stops at the same line with the same reason; in any batch size and
    block size (lines longer than a block, lines cut by block boundaries)."""
    import random

    rng = random.Random(seed)
    data = _damaged_journal(rng)
    p = tmp_path / "j.jsonl"
    p.write_bytes(data)
    monkeypatch.setattr(jr, "_CHUNK", rng.choice([16, 100, 1000, 1 << 18]))
    # from the start, or from a line boundary (as after a snapshot)
    starts = [0] + [i + 1 for i, c in enumerate(data) if c == 0x0A and rng.random() < 0.1][:1]
    for start in starts:
        for expect in (None, 1):
            ref, ref_ends, bad, why = _reference_read(data[start:], expect if not start else None)
            for batch in (1, 7, 4096):
                got, ends, err = [], [], None
                digest = {"crc": 12345}
                try:
                    for records, batch_ends in jr.iter_batches(p, start_offset=start, first_line=10,
                                                               expect_seq=expect if not start else None,
                                                               digest=digest, batch=batch):
                        assert 0 < len(records) <= batch and len(records) == len(batch_ends)
                        got += records
                        ends += batch_ends
                except JournalCorrupt as exc:
                    err = exc
                # json, not ==: NaN is not equal to itself
                assert json.dumps(got) == json.dumps(ref)
                assert ends == [start + e for e in ref_ends]
                assert digest["crc"] == jr.zlib.crc32(data[start:start + (ref_ends[-1] if ref_ends else 0)], 12345)
                if bad is None:
                    assert err is None
                else:
                    assert err is not None and err.line == bad + 9 and why in str(err)


def test_a_reader_that_stops_early_gets_a_digest_of_what_it_was_handed(tmp_path):
    p = _batch(tmp_path / "j.jsonl", n=6)
    data = p.read_bytes()
    digest = {"crc": 0}
    it = jr.iter_batches(p, digest=digest, batch=5)
    _records, ends = next(it)
    it.close()
    assert ends[-1] < len(data) and digest["crc"] == jr.zlib.crc32(data[: ends[-1]])
