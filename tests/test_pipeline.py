"""pipeline.run_task end to end: the real google-genai SDK over real HTTP against the sandbox.

init_worker + run_task are called in-process (a queue.Queue stands in for the manager's event
channel); no fake client anywhere.
"""

from __future__ import annotations

import functools
import http.server
import os
import queue
import shutil
import threading
from pathlib import Path

import pytest

from gsvr_batch import fsutil, pipeline
from gsvr_batch.sandbox import SandboxConfig, SandboxServer
from gsvr_batch.tasks import EVENT_PLAN, EVENT_REQUEST, EVENT_RESULT, EVENT_STARTED, EVENT_STEP, EVENT_UPLOAD, TaskSpec

VIDEO = Path(__file__).resolve().parent.parent / "jobs" / "videos" / "lecture-01-introduction.mp4"
KEY = "test-key-not-real-pipeline-7f3a"
MODEL = "gemini-2.5-flash"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sandbox():
    srv = SandboxServer(SandboxConfig(processing_delay=0.2))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def worker(sandbox, monkeypatch):
    """Returns start(**cfg_overrides) → the event queue; the worker talks to the sandbox."""
    monkeypatch.setenv("GSVR_TEST_KEY", KEY)
    monkeypatch.delenv("GOOGLE_GEMINI_BASE_URL", raising=False)

    def start(**overrides) -> queue.Queue:
        cfg = dict(
            base_url=sandbox.base_url,
            api_version=None,
            api_key_env="GSVR_TEST_KEY",
            request_timeout=10,
            limiter_path=None,
            poll_interval=0.05,
            active_timeout=5,
            max_call_retries=2,
            backend="sandbox",
        )
        cfg.update(overrides)
        q: queue.Queue = queue.Queue()
        pipeline.init_worker(pipeline.WorkerConfig(**cfg), q)
        return q

    return start


def make_spec(tmp_path: Path, source: Path | str, *, kind: str = "local", task_id: str = "t1", **kw) -> TaskSpec:
    root = tmp_path / "out"
    fields = dict(
        task_id=task_id,
        source=str(source),
        source_kind=kind,
        title="Introduction",
        template="comprehensive_lesson",
        params={},
        model=MODEL,
        output_path=str(root / f"{task_id}.md"),
        output_root=str(root),
        backend="sandbox",
        attempt_id="nonce-" + task_id,
    )
    fields.update(kw)
    return TaskSpec(**fields)


def video_named(tmp_path: Path, name: str) -> Path:
    target = tmp_path / "in" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(VIDEO, target)
    return target


def drain(q: queue.Queue) -> list[tuple]:
    items = []
    while not q.empty():
        items.append(q.get_nowait())
    return items


def log_of(srv: SandboxServer, kind: str, task_id: str | None = None) -> list[dict]:
    return [e for e in srv.requests if e["kind"] == kind and (task_id is None or e.get("task_id") == task_id)]


# --------------------------------------------------------------------------- happy paths


def test_local_video_end_to_end(tmp_path, sandbox, worker):
    q = worker()
    spec = make_spec(tmp_path, VIDEO)
    result = pipeline.run_task(spec)

    assert result.ok, result.error
    out = Path(result.output_path)
    data = out.read_bytes()
    assert result.sha256 == fsutil.sha256_file(out)
    assert result.bytes_written == len(data)
    text = data.decode()
    assert "backend: sandbox" in text
    assert result.video_duration == pytest.approx(6.0, abs=0.5)
    assert result.usage["total_tokens"] > 0 and result.model_version
    assert result.upload is not None and result.upload.source_sha256 == fsutil.sha256_file(VIDEO)
    assert result.upload.source == str(VIDEO) and result.upload.source_size == VIDEO.stat().st_size
    # The worker never deletes: between the answer and the journal there is no blocking step.
    assert not log_of(sandbox, "files_delete")
    assert result.api_calls["upload"] == 1 and result.api_calls["generate"] == 1
    assert "attempt_id: nonce-t1" in text and "task_id: t1" in text  # what a crashed run adopts

    events = drain(q)
    kinds = [e[0] for e in events]
    assert kinds[0] == EVENT_STARTED and kinds[-1] == EVENT_RESULT
    assert kinds.index(EVENT_UPLOAD) < kinds.index(EVENT_PLAN) < kinds.index(EVENT_REQUEST)
    assert [e[2] for e in events if e[0] == EVENT_REQUEST] == [{"model": MODEL, "attempt_id": "nonce-t1"}]
    assert all(e[2]["attempt_id"] == "nonce-t1" for e in events)
    assert events[-1][2]["ok"] is True and events[-1][2]["sha256"] == result.sha256
    steps = [e[2]["step"] for e in events if e[0] == EVENT_STEP]
    assert steps == ["uploading", "processing", "generating"]  # the steps that take time
    # Every API request carried the task id header, except the upload ones: the SDK's
    # prepare_resumable_upload replaces per-request headers with its own.
    tagged = [e for e in sandbox.requests if not e["kind"].startswith(("control", "upload"))]
    assert tagged and all(e.get("task_id") == "t1" for e in tagged)
    # The key never reaches the output, the result or the events.
    assert KEY not in text and KEY not in repr(result) and KEY not in repr(events)


def test_youtube_url_is_passed_without_upload(tmp_path, sandbox, worker):
    worker()
    url = "https://www.youtube.com/watch?v=dQw4w9WgXcQ"
    result = pipeline.run_task(make_spec(tmp_path, url, kind="youtube"))
    assert result.ok, result.error
    assert not log_of(sandbox, "upload_start")
    # Nothing to probe before the call: the length is learnt from the API's own token count.
    assert result.upload is None and result.video_duration == pytest.approx(600, rel=0.05)
    assert url in Path(result.output_path).read_text()


def test_multi_chunk_upload(tmp_path, sandbox, worker):
    worker()
    big = tmp_path / "in" / "big-lecture.mp4"
    big.parent.mkdir()
    with open(big, "wb") as fh:  # an ftyp box is what media sniffing needs; padding makes it > 8 MiB
        fh.write(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2")
        fh.write(b"\x00" * (9 * 1024 * 1024))
    result = pipeline.run_task(make_spec(tmp_path, big))
    assert result.ok, result.error
    chunks = log_of(sandbox, "upload_chunk") + log_of(sandbox, "upload_finalize")
    assert len(chunks) >= 2
    assert result.upload.size_bytes == big.stat().st_size


@pytest.mark.slow
def test_waits_while_processing(tmp_path, sandbox, worker):
    sandbox.update_config(processing_delay=0.6)
    worker(poll_interval=0.1)
    result = pipeline.run_task(make_spec(tmp_path, VIDEO))
    assert result.ok, result.error
    assert len(log_of(sandbox, "files_get")) >= 2  # polled until ACTIVE
    gen = log_of(sandbox, "generate")
    assert [e["status"] for e in gen] == [200]  # never sent a PROCESSING file to generate


def test_http_url_is_downloaded_and_cleaned_up(tmp_path, sandbox, worker):
    worker()
    served = tmp_path / "www"
    served.mkdir()
    shutil.copyfile(VIDEO, served / "talk.mp4")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    downloads = tmp_path / "dl"
    downloads.mkdir()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/talk.mp4"
        result = pipeline.run_task(make_spec(tmp_path, url, kind="url", download_dir=str(downloads)))
        missing = pipeline.run_task(
            make_spec(tmp_path, url.replace("talk", "nope"), kind="url", task_id="t2", download_dir=str(downloads))
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert result.ok, result.error
    assert log_of(sandbox, "upload_start")[0]["display_name"] == "talk.mp4"
    assert missing.error["disposition"] == "fail_task" and "HTTP 404" in missing.error["message"]
    assert list(downloads.iterdir()) == []  # temp folders removed, success or not


def test_reuses_existing_upload(tmp_path, sandbox, worker):
    worker()
    first = pipeline.run_task(make_spec(tmp_path, VIDEO, task_id="a"))
    assert first.ok
    second = pipeline.run_task(make_spec(tmp_path, VIDEO, task_id="b", reuse_upload=first.upload))
    assert second.ok, second.error
    assert len(log_of(sandbox, "upload_start")) == 1  # only the first run uploaded
    assert log_of(sandbox, "generate", "b")
    assert second.upload.name == first.upload.name
    assert "upload" not in second.api_calls


def test_a_reused_upload_deleted_after_its_check_is_uploaded_again(tmp_path, sandbox, worker, monkeypatch):
    """The race a copy under another name can meet: the upload it reuses is checked ACTIVE, then
    deleted (another run's janitor, or it expired) before the generate call, which gets 403 "… may
    not exist". Nothing was billed: the task uploads the video itself and sends the request again."""
    worker()
    first = pipeline.run_task(make_spec(tmp_path, VIDEO, task_id="a"))
    assert first.ok
    checked = pipeline._usable

    def check_then_delete(task, ref, src, now):
        got = checked(task, ref, src, now)
        assert got is not None and sandbox.store.delete(ref.name.split("/", 1)[1])  # gone after the check
        return got

    monkeypatch.setattr(pipeline, "_usable", check_then_delete)
    second = pipeline.run_task(make_spec(tmp_path, VIDEO, task_id="b", reuse_upload=first.upload))
    assert second.ok, second.error
    refused = [g for g in log_of(sandbox, "generate", "b") if g["status"] == 403]
    assert len(refused) == 1 and len(log_of(sandbox, "generate", "b")) == 2
    assert len(log_of(sandbox, "upload_start")) == 2 and second.upload.name != first.upload.name


def test_too_long_video_is_skipped_before_any_call(tmp_path, sandbox, worker):
    worker()
    result = pipeline.run_task(make_spec(tmp_path, VIDEO, max_duration=3))
    assert not result.ok and result.error is None
    assert result.skipped_reason == "video is 6 s long, longer than max_duration 3 s"
    assert not log_of(sandbox, "upload_start") and not log_of(sandbox, "generate")


# --------------------------------------------------------------------------- task errors


def test_processing_failed(tmp_path, sandbox, worker):
    worker()
    result = pipeline.run_task(make_spec(tmp_path, video_named(tmp_path, "sandbox-fail-processing.mp4")))
    assert result.error["error_class"] == "FileProcessingFailed" and result.error["disposition"] == "fail_task"
    assert not log_of(sandbox, "generate")


def test_never_active(tmp_path, sandbox, worker):
    worker(active_timeout=0.5)
    result = pipeline.run_task(make_spec(tmp_path, video_named(tmp_path, "sandbox-never-active.mp4")))
    assert result.error["error_class"] == "FileProcessingFailed"
    assert "still PROCESSING after" in result.error["message"]


def test_safety_block(tmp_path, sandbox, worker):
    worker()
    result = pipeline.run_task(make_spec(tmp_path, video_named(tmp_path, "sandbox-block.mp4")))
    assert result.error["error_class"] == "ContentBlocked" and result.error["disposition"] == "fail_task"
    assert "finishReason SAFETY" in result.error["message"]
    assert not Path(make_spec(tmp_path, VIDEO).output_path).exists()


def test_unusable_input(tmp_path, sandbox, worker):
    worker()
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video")
    result = pipeline.run_task(make_spec(tmp_path, fake))
    assert result.error["error_class"] == "InputError" and "does not look like a video" in result.error["message"]
    missing = pipeline.run_task(make_spec(tmp_path, tmp_path / "gone.mp4"))
    assert "file not found" in missing.error["message"]


def test_output_outside_root_refused_before_any_call(tmp_path, sandbox, worker):
    worker()
    root = tmp_path / "out"
    spec = make_spec(tmp_path, VIDEO, output_path=str(root / ".." / "escape.md"))
    result = pipeline.run_task(spec)
    assert result.error["error_class"] == "OutputError" and "outside the output root" in result.error["message"]
    assert not (tmp_path / "escape.md").exists()
    assert not log_of(sandbox, "generate")


def test_unwritable_output_folder(tmp_path, sandbox, worker):
    # Root ignores permission bits, so the folder is made impossible another way: its
    # "parent" is a regular file.
    worker()
    root = tmp_path / "out"
    root.mkdir()
    (root / "blocker").write_text("a file, not a folder")
    result = pipeline.run_task(make_spec(tmp_path, VIDEO, output_path=str(root / "blocker" / "t1.md")))
    assert result.error["error_class"] == "OutputError" and result.error["disposition"] == "fail_task"
    assert "Not a directory" in result.error["message"] or "File exists" in result.error["message"]


def test_disk_full_before_write(tmp_path, sandbox, worker, monkeypatch):
    worker()
    monkeypatch.setattr(fsutil, "free_bytes", lambda path: 1024)
    result = pipeline.run_task(make_spec(tmp_path, VIDEO))
    assert result.error["disposition"] == "pause" and result.error["error_class"] == "DiskFull"
    assert not Path(make_spec(tmp_path, VIDEO).output_path).exists()


# --------------------------------------------------------------------------- retries and batch errors


@pytest.mark.slow
def test_429_retry_delay_is_honoured(tmp_path, sandbox, worker):
    q = worker()
    sandbox.inject_429(1, retry_delay=2.0)
    result = pipeline.run_task(make_spec(tmp_path, VIDEO))
    assert result.ok, result.error
    gen = log_of(sandbox, "generate")
    assert [e["status"] for e in gen] == [429, 200]
    assert gen[1]["ts"] - gen[0]["ts"] >= 2.0  # behaviour: the retry came after retryDelay
    assert result.api_calls["generate"] == 2
    assert len([e for e in drain(q) if e[0] == EVENT_REQUEST]) == 2  # both requests count for RPD


def test_daily_quota_ends_task_with_quota_day(tmp_path, sandbox, worker):
    worker()
    sandbox.inject_429(1, retry_delay=1.0, per="day")
    result = pipeline.run_task(make_spec(tmp_path, VIDEO))
    assert result.error["disposition"] == "pause_until" and result.error["resets_at"].endswith("Z")
    assert len(log_of(sandbox, "generate")) == 1  # no retry burnt on a spent daily quota


@pytest.mark.slow
def test_503_is_retried(tmp_path, sandbox, worker):
    worker()
    sandbox.inject_errors(1, 503)
    result = pipeline.run_task(make_spec(tmp_path, VIDEO))
    assert result.ok, result.error
    assert [e["status"] for e in log_of(sandbox, "generate")] == [503, 200]


@pytest.mark.slow
def test_transient_after_retries_exhausted(tmp_path, sandbox, worker):
    worker(max_call_retries=1)
    sandbox.inject_errors(2, 500)
    result = pipeline.run_task(make_spec(tmp_path, VIDEO))
    assert result.error["disposition"] == "retry" and result.error["error_class"] == "ServerError"
    assert "Gemini answered 500 INTERNAL" in result.error["message"]


def test_invalid_key_is_fatal(tmp_path, sandbox, worker):
    worker()
    sandbox.update_config(api_key="another-test-key-not-real")
    result = pipeline.run_task(make_spec(tmp_path, VIDEO))
    assert result.error["disposition"] == "stop_batch" and result.error["error_class"] == "FatalAPIError"
    assert "API key not valid" in result.error["message"]
    assert KEY not in repr(result)


@pytest.mark.slow
def test_hung_request_is_a_lost_call_not_a_free_retry(tmp_path, sandbox, worker):
    # The request reached the model; its answer never came back. It may have been billed, so it
    # is not retried inside the task (call retries would multiply the bill): the attempt ends,
    # the lost call is counted, and the task-level policy decides.
    worker(request_timeout=1, max_call_retries=3)
    result = pipeline.run_task(make_spec(tmp_path, video_named(tmp_path, "sandbox-hang.mp4")))
    assert result.error["disposition"] == "retry" and result.error["error_class"] == "CallLost"
    assert "timed out" in result.error["message"] and "may have been billed" in result.error["message"]
    assert result.lost_calls == 1 and len(log_of(sandbox, "generate")) == 1


def test_worker_refuses_to_write_after_manager_died(tmp_path, sandbox, worker, monkeypatch):
    worker()
    # Simulate re-parenting (the manager was kill -9'd and init adopted the worker).
    monkeypatch.setattr(pipeline._STATE, "parent_pid", os.getppid() + 1)
    result = pipeline.run_task(make_spec(tmp_path, VIDEO))
    assert result.error["disposition"] == "requeue"
    out_dir = tmp_path / "out"
    assert not Path(make_spec(tmp_path, VIDEO).output_path).exists()
    assert not [p for p in out_dir.iterdir() if p.name.startswith(fsutil.TMP_PREFIX)]


@pytest.mark.slow
def test_shared_limiter_learns_from_429_and_daily_quota(tmp_path, sandbox, worker):
    from gsvr_batch.quota import Limits
    from gsvr_batch.ratelimit import RateLimiter

    path = tmp_path / "limiter.bin"
    manager_view = RateLimiter.create(path, {MODEL: Limits(rpm=600, tpm=None, rpd=100)})
    worker(limiter_path=str(path))
    sandbox.inject_429(1, retry_delay=1.0)
    ok = pipeline.run_task(make_spec(tmp_path, VIDEO, task_id="r1"))
    assert ok.ok, ok.error
    assert manager_view.requests_today(MODEL) == 2  # both generate requests charged
    assert manager_view.snapshot()  # the held, slowed bucket is visible to the manager

    sandbox.inject_429(1, retry_delay=1.0, per="day")
    spent = pipeline.run_task(make_spec(tmp_path, VIDEO, task_id="r2"))
    assert spent.error["disposition"] == "pause_until"
    # Every worker now stops before sending: the next task ends without a generate request.
    before = len(log_of(sandbox, "generate"))
    third = pipeline.run_task(make_spec(tmp_path, VIDEO, task_id="r3"))
    assert third.error["disposition"] == "pause_until"
    assert len(log_of(sandbox, "generate")) == before


def test_an_answer_cut_at_max_tokens_is_asked_once_more_then_kept_as_truncated(tmp_path, sandbox, worker):
    worker()
    tdir = tmp_path / "tpl"
    tdir.mkdir()
    (tdir / "tiny.yaml").write_text("""templates:
  tiny:
    name: Tiny
    version: "1"
    model_config: {max_tokens: 8}
    prompt: |
      ## Overview
      ## Summary
      Write a lesson.
""")
    spec = make_spec(tmp_path, VIDEO, template="tiny", templates_dirs=(str(tdir),), output_limit=16)
    result = pipeline.run_task(spec)
    assert result.ok, result.error
    gen = log_of(sandbox, "generate")
    assert len(gen) == 2  # once at 8, once at 16 (the model's cap here): never a third time
    assert result.truncated and len(result.billed) == 1  # the first, cut answer was paid too
    assert "truncated: true" in Path(result.output_path).read_text()
