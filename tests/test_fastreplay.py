"""Replay on two cores (fastreplay) ends where the reference replay ends: the same state, the same
offsets and digest, or the same error — on random legal histories, on damaged journals, from a
snapshot, with records appended while it runs, and when its checker cannot help.

The checker is a real second process (``python -c``) in every test here that replays a file.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
from test_journal import damage_a_line
from test_state import _history, _random_record

from gsvr_batch import fastreplay
from gsvr_batch import journal as jr
from gsvr_batch.lifecycle import replay
from gsvr_batch.state import BatchState, apply

pytestmark = pytest.mark.skipif(fastreplay.msgspec is None, reason="msgspec is not installed")


def _write(path: Path, records: list[dict]) -> bytes:
    data = b"".join(jr.encode_record(r) for r in records)
    path.write_bytes(data)
    return data


def _outcome(path: Path, fast: bool, monkeypatch, *, use_snapshot: bool = False):
    """What replay gives, comparable: (state, its orders, offsets, digest...) or (error, message, line)."""
    with monkeypatch.context() as m:
        m.setattr(fastreplay, "usable", (lambda n: n > 0) if fast else (lambda n: False))
        try:
            rp = replay(path, use_snapshot=use_snapshot)
        except Exception as exc:  # noqa: BLE001 - compared, whatever it is
            return ("error", type(exc).__name__, str(exc), getattr(exc, "line", None))
    st = rp.state
    # json, not ==: NaN is not equal to itself; the orders of tasks and uploads are part of the state
    return (json.dumps(st.to_dict(), sort_keys=True), list(st.tasks), list(st.uploads), list(st.sources),
            {k: sorted(vars(t)) for k, t in st.tasks.items()}, st.last_seq, st.last_ts,
            rp.end_offset, rp.torn_bytes, rp.used_snapshot, rp.records_read, rp.last_crc, rp.prefix_crc)


@pytest.fixture
def taken(monkeypatch):
    """The results fastreplay.replay returned (None: it could not vouch, the reference replayed)."""
    seen: list = []
    real = fastreplay.replay

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        seen.append(result)
        return result

    monkeypatch.setattr(fastreplay, "replay", spy)
    return seen


def _legal_journal(rng: random.Random, n_tasks: int | None = None) -> list[dict]:
    """A random legal history (test_state's), mostly the record types the structs fold."""
    recs, _tids = _history(rng)
    return recs


@pytest.mark.parametrize("seed", range(40))
def test_the_same_replay_as_the_reference_on_random_legal_histories(tmp_path, monkeypatch, taken, seed):
    rng = random.Random(seed)
    p = tmp_path / "j.jsonl"
    _write(p, _legal_journal(rng))
    monkeypatch.setattr(fastreplay, "_CHUNK", rng.choice([64, 700, 4096, 1 << 16]))
    want = _outcome(p, False, monkeypatch)
    assert _outcome(p, True, monkeypatch) == want
    assert taken and taken[-1] is not None  # vouched for by the checker, not replayed again


@pytest.mark.parametrize("seed", range(40))
def test_fold_structs_is_apply_record_by_record(seed):
    """Without files: the structs of a legal history and then one more record that may be
    anything (illegal, a gap, a missing key); fold_structs leaves apply's state, or raises where
    apply raises (fastreplay then lets the reference decide)."""
    import copy

    rng = random.Random(seed)
    recs, tids = _history(rng)
    typ, fields = _random_record(rng, tids + ["zz"])
    n = len(recs) + 1
    last = rng.choice([{"seq": n, "ts": "x", "type": typ, **fields}, {"seq": n + 1, "ts": "x", "type": typ, **fields},
                       {"seq": n, "type": typ, **fields}, {"ts": "x", "type": typ, **fields}])
    records = recs + [last]
    want = BatchState()
    want_err = None
    for r in copy.deepcopy(records):
        try:
            apply(want, r)
        except Exception as exc:  # noqa: BLE001
            want_err = type(exc)
            break
    got = BatchState()
    got_err = None
    data = b"".join(jr.encode_record(r) for r in records)
    try:
        for line in data.splitlines(keepends=True):
            try:
                structs = fastreplay._STRUCTS.decode_lines(line)
            except fastreplay.msgspec.ValidationError:  # not a struct type: as the block path does
                structs = None
            if structs is None:
                rec = jr.decode_line(line[:-1])
                apply(got, rec)
            else:
                fastreplay.fold_structs(structs, got)
    except Exception as exc:  # noqa: BLE001
        got_err = type(exc)
    assert (got_err is None) == (want_err is None)
    if want_err is None:
        assert json.dumps(got.to_dict(), sort_keys=True) == json.dumps(want.to_dict(), sort_keys=True)
        assert list(got.tasks) == list(want.tasks) and list(got.uploads) == list(want.uploads)


def _damage(rng: random.Random, data: bytes) -> bytes:
    """One kind of damage (test_journal's kinds), or a value only json reads, or a torn tail."""
    lines = data.split(b"\n")[:-1]
    how = rng.randrange(5)
    if how == 0:  # a value msgspec refuses and json reads (the writer's json can write NaN)
        i = rng.randrange(len(lines))
        rec = jr.decode_line(lines[i])
        rec["cost_usd"] = float("nan")
        lines[i] = jr.encode_record(rec)[:-1]
    elif how == 1:  # an integer beyond 64 bits (exact in both readers)
        i = rng.randrange(len(lines))
        rec = jr.decode_line(lines[i])
        rec["bytes"] = 2**70 + 1
        lines[i] = jr.encode_record(rec)[:-1]
    elif how == 2:  # a torn tail: the last line cut short, no newline
        return b"\n".join(lines[:-1]) + b"\n" + lines[-1][: rng.randrange(1, len(lines[-1]))]
    else:
        damage_a_line(rng, lines)
    return b"\n".join(lines) + b"\n"


@pytest.mark.parametrize("seed", range(60))
def test_a_damaged_journal_replays_exactly_as_the_reference_says(tmp_path, monkeypatch, seed):
    rng = random.Random(1000 + seed)
    p = tmp_path / "j.jsonl"
    data = _damage(rng, _write(p, _legal_journal(rng)))
    p.write_bytes(data)
    monkeypatch.setattr(fastreplay, "_CHUNK", rng.choice([64, 700, 1 << 16]))
    assert _outcome(p, True, monkeypatch) == _outcome(p, False, monkeypatch)


def test_damage_the_structs_cannot_see_is_found_by_the_checker(tmp_path, monkeypatch, taken):
    """A digit changed inside a value: the line still decodes (and folds) fine; only its checksum
    says it is not what was written. The checker's verdict sends replay to the reference, which
    stops at that line."""
    rng = random.Random(7)
    recs = _legal_journal(rng)
    while len(recs) < 20:
        recs = _legal_journal(rng)
    p = tmp_path / "j.jsonl"
    lines = _write(p, recs).split(b"\n")
    k = len(lines) // 2
    lines[k] = lines[k].replace(b'"ts":"t', b'"ts":"T', 1)
    p.write_bytes(b"\n".join(lines))
    got = _outcome(p, True, monkeypatch)
    assert got == _outcome(p, False, monkeypatch)
    assert got[0] == "error" and got[1] == "JournalCorrupt" and got[3] == k + 1
    assert taken == [None]


def test_from_a_snapshot_it_folds_only_the_tail(tmp_path, monkeypatch, taken):
    rng = random.Random(3)
    recs = _legal_journal(rng)
    while len(recs) < 30:
        recs = _legal_journal(rng)
    p = tmp_path / "j.jsonl"
    data = _write(p, recs)
    k = len(recs) // 3
    head = BatchState()
    for r in recs[:k]:
        apply(head, dict(r))
    offset = sum(len(jr.encode_record(r)) for r in recs[:k])
    jr.write_snapshot(p, head.to_dict(), k, offset, data[offset - 11:offset - 3].decode(), jr.zlib.crc32(data[:offset]))
    want = _outcome(p, False, monkeypatch, use_snapshot=True)
    assert want[9] is True and want[10] == len(recs) - k  # the snapshot was used
    assert _outcome(p, True, monkeypatch, use_snapshot=True) == want
    assert taken[-1] is not None and taken[-1][0] == len(recs) - k


def test_records_appended_while_it_runs_are_read_after_it(tmp_path, monkeypatch, taken):
    """A live run appends while `status` replays: what fastreplay did not see, the reference reads
    on from where it stopped (as from a snapshot), and the result is a replay of the whole file."""
    rng = random.Random(5)
    recs = _legal_journal(rng)
    while len(recs) < 30:
        recs = _legal_journal(rng)
    p = tmp_path / "j.jsonl"
    k = 2 * len(recs) // 3
    _write(p, recs[:k])
    tail = b"".join(jr.encode_record(r) for r in recs[k:])
    inner = fastreplay.replay

    def appending(*args, **kwargs):
        result = inner(*args, **kwargs)
        with open(p, "ab") as fh:
            fh.write(tail + b'{"seq":')  # and a torn tail after them
        return result

    monkeypatch.setattr(fastreplay, "replay", appending)
    got = _outcome(p, True, monkeypatch)
    monkeypatch.setattr(fastreplay, "replay", inner)
    assert _outcome(p, False, monkeypatch) == got
    assert got[10] == len(recs) and got[8] == len(b'{"seq":')  # every record; the torn tail reported
    assert taken[-1] is not None and taken[-1][0] == k


@pytest.mark.parametrize("python", ["no-such-python", "", None])
def test_without_its_checker_the_reference_replays(tmp_path, monkeypatch, taken, python):
    rng = random.Random(11)
    p = tmp_path / "j.jsonl"
    _write(p, _legal_journal(rng))
    want = _outcome(p, False, monkeypatch)
    monkeypatch.setattr(sys, "executable", str(tmp_path / python) if python else python)
    assert _outcome(p, True, monkeypatch) == want
    assert taken == [None]


def test_a_checker_that_disagrees_sends_replay_to_the_reference(tmp_path, monkeypatch, taken):
    rng = random.Random(12)
    p = tmp_path / "j.jsonl"
    _write(p, _legal_journal(rng))
    want = _outcome(p, False, monkeypatch)
    real = fastreplay.checker_verdict
    monkeypatch.setattr(fastreplay, "checker_verdict",
                        lambda proc, **kw: (lambda v: (v[0] - 1, v[1], v[2]))(real(proc, **kw)))
    assert _outcome(p, True, monkeypatch) == want
    assert taken == [None]


@pytest.mark.parametrize("seed", range(40))
def test_check_lines_is_the_readers_verdict(tmp_path, monkeypatch, seed):
    """The checker's half: the lines whose checksums are right and that begin as the writer begins a
    record, from the start on, their end and digest, in any block size. (Whether they are records
    is the decoding process's half.)"""
    rng = random.Random(2000 + seed)
    p = tmp_path / "j.jsonl"
    data = _damage(rng, _write(p, _legal_journal(rng)))
    p.write_bytes(data)
    monkeypatch.setattr(jr, "_CHUNK", rng.choice([16, 300, 1 << 18]))
    start = 0 if rng.random() < 0.5 else data.index(b"\n") + 1
    end = data.rfind(b"\n") + 1
    lines, good_end, crc = jr.check_lines(p, start, end, 99)
    want_lines, want_end = 0, start
    for line in data[start:end].split(b"\n")[:-1]:
        if not (jr.checksum_ok(line) and line.startswith(jr.RECORD_START)):
            break
        want_lines += 1
        want_end += len(line) + 1
    assert (lines, good_end) == (want_lines, want_end)
    assert crc == jr.zlib.crc32(data[start:want_end], 99)


def test_it_is_used_only_for_long_journals_on_two_cores(monkeypatch):
    monkeypatch.setattr(fastreplay.os, "sched_getaffinity", lambda pid: {0, 1})
    assert fastreplay.usable(fastreplay.MIN_BYTES) and not fastreplay.usable(fastreplay.MIN_BYTES - 1)
    monkeypatch.setattr(fastreplay.os, "sched_getaffinity", lambda pid: {0})
    assert not fastreplay.usable(10 * fastreplay.MIN_BYTES)


def test_the_writers_own_records_are_folded_as_structs(tmp_path, monkeypatch, taken):
    """A journal as BatchLog writes it (every record type of a task's usual life): the same replay
    as the reference, and after the first block not one record needs apply or the dict path —
    the structs fit what the writer writes (else the speed is lost, silently)."""
    from gsvr_batch.lifecycle import BatchLog

    p = tmp_path / "j.jsonl"
    bl, _ = BatchLog.open(p)
    bl.create_batch(manifest="m.yaml", manifest_identity="id", manifest_hash="h", settings={}, version="t")
    bl.run_started()
    n = 60
    for i in range(n):
        bl.add_task(task_id=f"t{i}", source=f"v{i}.mp4", source_kind="local", title=f"T{i}", template="summary",
                    model="gemini-2.5-flash", output=f"out/{i}.md", output_format="md", origin=f"m.yaml:{i}")
    for i in range(n):
        tid = f"t{i}"
        bl.start_task(tid, attempt_id=f"a{i}", model="gemini-2.5-flash", fingerprint=f"fp{i}", output=f"out/{i}b.md")
        bl.step(tid, "uploading", worker=4000 + i)
        bl.upload_finished({"name": f"files/{i}", "uri": "u", "mime_type": "video/mp4", "source": f"v{i}.mp4",
                            "source_sha256": f"{i:064x}", "source_size": 5, "source_mtime_ns": 7}, task_id=tid)
        bl.step(tid, "generating")
        bl.charge_requests("gemini-2.5-flash", 2, "2026-12-02")
        bl.complete_task(tid, output=f"out/{i}b.md", sha256="ab" * 32, bytes_=10, usage={"total_tokens": 5},
                         cost_usd=0.25, model_version="m", video_duration=6.0, elapsed=1.0, calls=1,
                         fingerprint=f"fp{i}", plan={"strategy": "full", "requests": 1})
        bl.upload_deleted(f"files/{i}", reason="no pending task needs it")
    bl.close()
    data = p.read_bytes()
    first_block = data.index(b"\n", data.index(b'"type":"task_added"')) + 1  # batch_created, run_started, one task
    monkeypatch.setattr(fastreplay, "_CHUNK", first_block)
    applied, dict_blocks = [], []
    real_apply, real_fold = fastreplay.apply, fastreplay.fold
    monkeypatch.setattr(fastreplay, "apply", lambda st, r: (applied.append(r["type"]), real_apply(st, r))[1])
    monkeypatch.setattr(fastreplay, "fold", lambda rs, st: (dict_blocks.append(len(rs)), real_fold(rs, st))[1])
    got = _outcome(p, True, monkeypatch)
    assert taken[-1] is not None and taken[-1][0] == data.count(b"\n") > 8 * n
    assert applied == [] and dict_blocks == [3]  # only the first block, which holds batch_created
    assert got == _outcome(p, False, monkeypatch)


def test_a_checker_that_hangs_is_not_waited_for(tmp_path, monkeypatch, taken):
    """A "python" that never answers (a stalled disk, a frozen binary that is not python): replay
    waits about as long again as its own work, then kills it and the reference replays."""
    import os
    import time

    rng = random.Random(13)
    p = tmp_path / "j.jsonl"
    _write(p, _legal_journal(rng))
    want = _outcome(p, False, monkeypatch)
    hang = tmp_path / "hang"
    hang.write_text("#!/bin/sh\necho $$ > \"$(dirname \"$0\")/pid\"\nexec sleep 600\n")
    hang.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(hang))
    monkeypatch.setattr(fastreplay, "CHECKER_GRACE", 0.5)
    t0 = time.monotonic()
    assert _outcome(p, True, monkeypatch) == want
    assert time.monotonic() - t0 < 30 and taken == [None]
    pid = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left behind
        os.kill(pid, 0)


def _long_journal(path: Path, min_bytes: int) -> int:
    """A journal of one-call tasks, at least ``min_bytes`` long; returns its records."""
    seq = 0
    ts = "2026-12-02T06:00:00.000Z"

    def rec(type_: str, **fields) -> bytes:
        nonlocal seq
        seq += 1
        return jr.encode_record({"seq": seq, "ts": ts, "type": type_, **fields})

    size = 0
    with open(path, "wb") as fh:
        fh.write(rec("batch_created", batch_id="b", manifest="m.yaml", settings={}))
        i = 0
        while size < min_bytes:
            tid = f"{i:016x}"
            chunk = b"".join([
                rec("task_added", task_id=tid, source=f"/v/{i}.mp4", title=f"Lecture {i}", template="summary",
                    model="gemini-2.5-flash", output=f"/o/{i}.md", output_format="md", origin=f"m.yaml:{i}"),
                rec("task_started", task_id=tid, attempt=1, attempt_id=tid, model="gemini-2.5-flash"),
                rec("task_completed", task_id=tid, output=f"/o/{i}.md", sha256=f"{i:064x}", bytes=10,
                    usage={"prompt_tokens": 100}, cost_usd=0.001, model_version="m", video_duration=60.0,
                    elapsed=1.0, calls=1)])
            fh.write(chunk)
            size += len(chunk)
            i += 1
    return seq


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _gone(pid: int, within: float) -> bool:
    import os
    import time

    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie of a dead parent is reaped by init; ours would show as Z
            if (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
@pytest.mark.parametrize("how", ["sigterm-group", "sigkill-replay-alone"])
def test_a_killed_replay_leaves_no_checker_behind(tmp_path, how):
    """`gsvr-batch replay` of a journal long enough for two cores, killed while its checker runs:
    SIGTERM to the whole process group (systemd, `timeout`), or SIGKILL to the replaying process
    alone. Either way the checker is gone within seconds, and nothing was written."""
    import os
    import signal
    import subprocess
    import time

    p = tmp_path / "journal.jsonl"
    _long_journal(p, fastreplay.MIN_BYTES + (8 << 20))
    before = sorted(os.listdir(tmp_path)), p.stat().st_size
    proc = subprocess.Popen([sys.executable, "-m", "gsvr_batch", "replay", str(p)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        kids: list[int] = []
        while not kids and proc.poll() is None and time.monotonic() < deadline:
            kids = _children(proc.pid)
            time.sleep(0.005)
        if not kids:
            pytest.skip("the replay ended before its checker was seen (a very fast machine)")
        if how == "sigterm-group":
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert all(_gone(k, within=30) for k in kids)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert (sorted(os.listdir(tmp_path)), p.stat().st_size) == before


@pytest.mark.slow
def test_the_command_line_replay_of_a_long_journal_is_the_references(tmp_path):
    """`gsvr-batch replay --json` of a journal past the two-core threshold prints what the same
    command prints with two-core replay off (in real processes, as users run it)."""
    import subprocess

    p = tmp_path / "journal.jsonl"
    records = _long_journal(p, fastreplay.MIN_BYTES + (1 << 20))
    code = ("import sys; from gsvr_batch import fastreplay; fastreplay.MIN_BYTES = {}; "
            "from gsvr_batch.cli import cli; cli(sys.argv[1:])")
    outs = []
    for min_bytes in (fastreplay.MIN_BYTES, 1 << 62):
        r = subprocess.run([sys.executable, "-c", code.format(min_bytes), "replay", str(p), "--json"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        outs.append(json.loads(r.stdout))
    assert outs[0] == outs[1]
    assert outs[0]["records"] == records and outs[0]["counts"]["completed"] == (records - 1) // 3


def test_the_environment_turns_it_off_or_on_for_any_length(monkeypatch):
    monkeypatch.setattr(fastreplay.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setenv(fastreplay.ENV, "off")
    assert not fastreplay.usable(10 * fastreplay.MIN_BYTES)
    monkeypatch.setenv(fastreplay.ENV, "always")
    assert fastreplay.usable(1) and not fastreplay.usable(0)
    monkeypatch.setenv(fastreplay.ENV, "auto")
    assert fastreplay.usable(fastreplay.MIN_BYTES) and not fastreplay.usable(1)


def _forged(body: bytes) -> bytes:
    """``body`` (the line without its closing brace) with a checksum that matches it, as a line:
    what only a hand, not the writer, makes — the reader must still judge it as the reference does."""
    return body + b',"crc":"%08x"}\n' % jr.zlib.crc32(body + b"}")


def _with_head(tmp_path: Path, tail: list[bytes], n: int = 40) -> Path:
    recs = [{"seq": 1, "ts": "t", "type": "batch_created", "batch_id": "b", "settings": {}}]
    for i in range(2, n):
        recs.append({"seq": i, "ts": "t", "type": "upload_finished", "upload": {"name": f"files/{i}"}})
    p = tmp_path / "j.jsonl"
    p.write_bytes(b"".join(jr.encode_record(r) for r in recs) + b"".join(tail))
    return p


@pytest.mark.parametrize("case", ["spread-over-two-lines", "two-on-one-line", "bad-utf8-unread-field",
                                  "long-int-unread-field", "bad-utf8-last", "bad-utf8-declared-field",
                                  "a-reordered-record"])
def test_lines_only_a_hand_makes_are_judged_as_the_reference_judges_them(tmp_path, monkeypatch, taken, case):
    """Found by review: msgspec reads values across newlines and several on a line, and would skip
    a field no struct declares without checking its bytes. Lines with forged checksums of each kind
    give the reference's replay (which calls them damage, or a torn tail when last)."""
    n = 40

    def more(seq: int) -> bytes:  # a good record after the odd ones, numbered on from what they claim
        return jr.encode_record({"seq": seq, "ts": "t", "type": "upload_deleted", "name": "files/3"})

    tail = {
        "spread-over-two-lines": [
            _forged(b'{"seq":%d,"ts":"t","type":"upload_deleted","name":"files/2","junk":{"k":1' % n),
            _forged(b' '),
            _forged(b'{"seq":%d,"ts":"t","type":"upload_deleted","name":"a","crc":"00000000"} '
                    b'{"seq":%d,"ts":"t","type":"upload_deleted","name":"b"' % (n + 1, n + 2)), more(n + 3)],
        "two-on-one-line": [
            _forged(b'{"seq":%d,"ts":"t","type":"upload_deleted","name":"a","crc":"00000000"} '
                    b'{"seq":%d,"ts":"t","type":"upload_deleted","name":"b"' % (n, n + 1)), more(n + 2)],
        "bad-utf8-unread-field": [_forged(b'{"seq":%d,"ts":"t","type":"upload_deleted","name":"x","junk":"\xff"' % n),
                                  more(n + 1)],
        "long-int-unread-field": [_forged(b'{"seq":%d,"ts":"t","type":"upload_deleted","name":"x","junk":%s'
                                          % (n, b"1" * 5000)), more(n + 1)],
        "bad-utf8-last": [_forged(b'{"seq":%d,"ts":"t","type":"upload_deleted","name":"x","junk":"\xff"' % n)],
        "bad-utf8-declared-field": [_forged(b'{"seq":%d,"ts":"t","type":"upload_deleted","name":"x","reason":"\xff"'
                                            % n), more(n + 1)],
        "a-reordered-record": [_forged(b'{"ts":"t","seq":%d,"type":"upload_deleted","name":"files/2"' % n)],
    }[case]
    p = _with_head(tmp_path, tail, n)
    # The first block holds batch_created alone (it is no struct): the odd lines meet the structs.
    monkeypatch.setattr(fastreplay, "_CHUNK", p.read_bytes().index(b"\n") + 1)
    assert _outcome(p, True, monkeypatch) == _outcome(p, False, monkeypatch)
    assert taken == [None]  # not vouched for: the reference replayed


def test_a_snapshot_that_does_not_end_where_it_says_is_the_references_to_report(tmp_path, monkeypatch, taken):
    p = _with_head(tmp_path, [], 60)
    data = p.read_bytes()
    k = 30
    offset = sum(len(line) + 1 for line in data.split(b"\n")[:k])
    head = BatchState()
    for line in data.split(b"\n")[:k]:
        apply(head, jr.decode_line(line))
    head.last_seq = 0  # the snapshot's state says nothing was folded; its seq says k
    jr.write_snapshot(p, head.to_dict(), k, offset, data[offset - 11:offset - 3].decode(), jr.zlib.crc32(data[:offset]))
    want = _outcome(p, False, monkeypatch, use_snapshot=True)
    assert _outcome(p, True, monkeypatch, use_snapshot=True) == want
    assert taken == []  # not even tried


def test_the_checker_runs_no_code_from_where_replay_is_run(tmp_path, monkeypatch, taken):
    """A json.py (or any module) in the working directory must not run in the checker (`-I`)."""
    rng = random.Random(21)
    p = tmp_path / "j.jsonl"
    _write(p, _legal_journal(rng))
    work = tmp_path / "work"
    work.mkdir()
    for name in ("json", "zlib", "struct", "gsvr_batch"):
        (work / f"{name}.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'a').write({name!r})\n")
    monkeypatch.chdir(work)
    want = _outcome(p, False, monkeypatch)
    assert _outcome(p, True, monkeypatch) == want
    assert taken[-1] is not None and not (tmp_path / "ran").exists()


@pytest.mark.parametrize("seed", range(20))
def test_damage_after_a_snapshot_replays_as_the_reference_says(tmp_path, monkeypatch, seed):
    """Damage in the tail a snapshot does not cover, with the snapshot present: the attempt (which
    changed the state built from the snapshot: uploads, sources, request counts) is thrown away and
    the reference starts again from the snapshot as it is on disk."""
    rng = random.Random(3000 + seed)
    recs = _legal_journal(rng)
    while len(recs) < 40:
        recs = _legal_journal(rng)
    p = tmp_path / "j.jsonl"
    data = _write(p, recs)
    k = len(recs) // 3
    head = BatchState()
    for r in recs[:k]:
        apply(head, dict(r))
    offset = sum(len(jr.encode_record(r)) for r in recs[:k])
    jr.write_snapshot(p, head.to_dict(), k, offset, data[offset - 11:offset - 3].decode(), jr.zlib.crc32(data[:offset]))
    tail = _damage(rng, data[offset:])
    p.write_bytes(data[:offset] + tail)
    monkeypatch.setattr(fastreplay, "_CHUNK", rng.choice([64, 700, 1 << 16]))
    want = _outcome(p, False, monkeypatch, use_snapshot=True)
    assert _outcome(p, True, monkeypatch, use_snapshot=True) == want
