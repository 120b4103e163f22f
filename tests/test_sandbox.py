"""The sandbox server, exercised with the real google-genai SDK over real HTTP."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2 as httpx  # the HTTP library google-genai 3.6 itself uses here
import pytest
from google import genai
from google.genai import errors, types

from gsvr_batch.sandbox import SandboxConfig, SandboxServer

VIDEO = Path(__file__).resolve().parents[1] / "jobs" / "videos" / "lecture-01-introduction.mp4"
MODEL = "gemini-2.5-flash"
KEY = "sandbox-key"


def make_client(srv: SandboxServer, key: str = KEY, **http: object) -> genai.Client:
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=srv.base_url, **http))


def wait_state(client: genai.Client, name: str, timeout: float = 5.0) -> types.File:
    deadline = time.monotonic() + timeout
    f = client.files.get(name=name)
    while f.state == types.FileState.PROCESSING and time.monotonic() < deadline:
        time.sleep(0.05)
        f = client.files.get(name=name)
    return f


def wait_batch(client: genai.Client, name: str, timeout: float = 10.0) -> types.BatchJob:
    deadline = time.monotonic() + timeout
    done = {types.JobState.JOB_STATE_SUCCEEDED, types.JobState.JOB_STATE_FAILED,
            types.JobState.JOB_STATE_EXPIRED, types.JobState.JOB_STATE_CANCELLED}
    job = client.batches.get(name=name)
    while job.state not in done and time.monotonic() < deadline:
        time.sleep(0.1)
        job = client.batches.get(name=name)
    return job


def timestamps(text: str) -> list[int]:
    """Seconds of the ``MM:SS`` / ``H:MM:SS`` timestamps in a text."""
    found = re.findall(r"(?<![\d:])(?:(\d{1,2}):(\d{2}):(\d{2})|(\d{2,3}):(\d{2}))(?![\d:])", text)
    return [int(h) * 3600 + int(m) * 60 + int(s) if h else int(mm) * 60 + int(ss) for h, m, s, mm, ss in found]


@pytest.fixture()
def srv(tmp_path):
    with SandboxServer(SandboxConfig(processing_delay=0.1, batch_duration=0.4,
                                     log_path=str(tmp_path / "requests.jsonl"))) as s:
        yield s


@pytest.fixture()
def client(srv):
    return make_client(srv)


@pytest.fixture()
def video(client):
    f = client.files.upload(file=VIDEO, config={"display_name": "lecture-01"})
    return wait_state(client, f.name)


def test_upload_small_and_multichunk_files(client, srv, tmp_path):
    big = tmp_path / "big.bin"
    data = os.urandom(9 * 1024 * 1024 + 123)  # > 8 MiB: the SDK sends two chunks
    big.write_bytes(data)
    f = client.files.upload(file=big, config={"display_name": "big one", "mime_type": "application/octet-stream"})
    assert f.name.startswith("files/") and f.state == types.FileState.PROCESSING
    assert f.size_bytes == len(data)
    assert base64.b64decode(f.sha256_hash).decode() == hashlib.sha256(data).hexdigest()
    assert f.expiration_time - f.create_time == datetime.timedelta(hours=48)
    chunks = [e for e in srv.requests if e["kind"] in ("upload_chunk", "upload_finalize")]
    assert len(chunks) == 2

    small = client.files.upload(file=VIDEO)
    assert small.size_bytes == VIDEO.stat().st_size and small.mime_type == "video/mp4"
    got = wait_state(client, f.name)
    assert got.state == types.FileState.ACTIVE and got.display_name == "big one"
    assert got.uri == f"{srv.base_url}/v1beta/files/{f.name.split('/')[1]}"

    names = [x.name for x in client.files.list(config={"page_size": 1})]  # pages through nextPageToken
    assert sorted(names) == sorted([f.name, small.name])
    client.files.delete(name=f.name)
    with pytest.raises(errors.ClientError) as exc:
        client.files.get(name=f.name)
    assert exc.value.code == 403 and exc.value.status == "PERMISSION_DENIED"


def test_generate_content_follows_prompt_and_real_duration(client, video, srv):
    prompt = "Write a lesson plan with these sections:\n## Warm-up\n## Main ideas\n## Exit ticket\n"
    r = client.models.generate_content(
        model=MODEL, contents=[types.Part.from_uri(file_uri=video.uri, mime_type=video.mime_type), prompt],
        config=types.GenerateContentConfig(http_options=types.HttpOptions(headers={"x-gsvr-task-id": "t-1"})))
    text = r.text
    assert [h for h in re.findall(r"^## (.+)$", text, re.M)] == ["Warm-up", "Main ideas", "Exit ticket"]
    assert "without watching the video" in text and "gsvr-batch sandbox" in text
    ts = timestamps(text)
    assert ts and all(0 <= t <= 6 for t in ts)
    assert r.candidates[0].finish_reason == types.FinishReason.STOP
    u = r.usage_metadata
    # 6 s with sound: 6 frames x 258 + 6 s x 32 audio tokens + the prompt at 4 chars a token.
    assert u.prompt_token_count == 6 * 258 + 6 * 32 + math.ceil(len(prompt) / 4)
    details = {d.modality.name: d.token_count for d in u.prompt_tokens_details}
    assert details == {"TEXT": math.ceil(len(prompt) / 4), "VIDEO": 6 * 258, "AUDIO": 6 * 32}
    assert u.candidates_token_count == math.ceil(len(text) / 4)
    assert u.total_token_count == u.prompt_token_count + u.candidates_token_count
    assert r.model_version == f"{MODEL}-sandbox-001" and r.response_id
    again = client.models.generate_content(
        model=MODEL, contents=[types.Part.from_uri(file_uri=video.uri, mime_type=video.mime_type), prompt])
    assert again.text == text  # deterministic
    gen = [e for e in srv.requests if e["kind"] == "generate"]
    assert gen[0]["task_id"] == "t-1" and gen[0]["tokens"]["prompt"] == u.prompt_token_count
    assert gen[0]["display_name"] == "lecture-01"


def test_generate_youtube_chinese_low_resolution(client):
    url = "https://www.youtube.com/watch?v=dQw4w9WgXcQ"
    prompt = "请为这个视频写一份教案。"
    r = client.models.generate_content(
        model=MODEL, contents=[types.Part.from_uri(file_uri=url, mime_type="video/*"), prompt],
        config=types.GenerateContentConfig(media_resolution=types.MediaResolution.MEDIA_RESOLUTION_LOW))
    assert "## 学习目标" in r.text and "600" in r.text
    assert all(t < 600 for t in timestamps(r.text)) and max(timestamps(r.text)) > 300
    assert r.usage_metadata.prompt_token_count == (66 + 32) * 600 + math.ceil(len(prompt) / 4)


def test_count_tokens_and_max_output_tokens(client, video):
    part = types.Part.from_uri(file_uri=video.uri, mime_type=video.mime_type)
    ct = client.models.count_tokens(model=MODEL, contents=[part, "abcdefgh"])
    assert ct.total_tokens == 6 * 258 + 6 * 32 + 2
    r = client.models.generate_content(model=MODEL, contents=[part, "plan"],
                                       config=types.GenerateContentConfig(max_output_tokens=10))
    assert r.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert r.usage_metadata.candidates_token_count == 10 and len(r.text) <= 40


def test_file_states_and_triggers(client):
    failing = client.files.upload(file=VIDEO, config={"display_name": "x sandbox-fail-processing"})
    f = wait_state(client, failing.name)
    assert f.state == types.FileState.FAILED and f.error and f.error.message
    stuck = client.files.upload(file=VIDEO, config={"display_name": "sandbox-never-active"})
    with pytest.raises(errors.ClientError) as exc:
        client.models.generate_content(model=MODEL, contents=[
            types.Part.from_uri(file_uri=stuck.uri, mime_type="video/mp4"), "plan"])
    assert exc.value.code == 400 and exc.value.status == "FAILED_PRECONDITION"
    assert client.files.get(name=stuck.name).state == types.FileState.PROCESSING
    with pytest.raises(errors.ClientError) as exc:
        client.models.generate_content(model=MODEL, contents=[
            types.Part.from_uri(file_uri="https://x.invalid/v1beta/files/nosuchfile", mime_type="video/mp4"), "p"])
    assert exc.value.code == 403
    blocked = client.models.generate_content(model=MODEL, contents=["sandbox-block this"])
    assert blocked.candidates[0].finish_reason == types.FinishReason.SAFETY and blocked.text is None
    pblocked = client.models.generate_content(model=MODEL, contents=["sandbox-block-prompt"])
    assert pblocked.prompt_feedback.block_reason == types.BlockedReason.SAFETY and not pblocked.candidates


def test_api_key_errors(tmp_path):
    with SandboxServer(SandboxConfig(api_key="test-key-not-real")) as s:
        good, bad = make_client(s, "test-key-not-real"), make_client(s, "wrong-key")  # keep clients alive
        assert good.models.count_tokens(model=MODEL, contents="hi").total_tokens == 1
        with pytest.raises(errors.ClientError) as exc:
            bad.models.generate_content(model=MODEL, contents="hi")
        assert exc.value.code == 400 and exc.value.status == "INVALID_ARGUMENT"
        assert "API_KEY_INVALID" in json.dumps(exc.value.details)
        resp = httpx.post(f"{s.base_url}/v1beta/models/{MODEL}:generateContent",
                          json={"contents": [{"parts": [{"text": "hi"}]}]})
        assert resp.status_code == 403 and resp.json()["error"]["status"] == "PERMISSION_DENIED"
        assert not any("test-key-not-real" in json.dumps(e) for e in s.requests)


def test_rpm_and_rpd_quotas_with_injected_clock():
    now = [1_000_000.0]
    with SandboxServer(SandboxConfig(rpm=2, rpd=3, day_reset=3600), clock=lambda: now[0]) as s:
        c = make_client(s)
        c.models.generate_content(model=MODEL, contents="a")
        now[0] += 10
        c.models.generate_content(model=MODEL, contents="b")
        with pytest.raises(errors.ClientError) as exc:
            c.models.generate_content(model=MODEL, contents="c")
        assert exc.value.code == 429 and exc.value.status == "RESOURCE_EXHAUSTED"
        details = {d["@type"].rsplit(".", 1)[1]: d for d in exc.value.details["error"]["details"]}
        v = details["QuotaFailure"]["violations"][0]
        assert v["quotaId"] == "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
        assert v["quotaDimensions"]["model"] == MODEL and v["quotaValue"] == "2"
        assert details["RetryInfo"]["retryDelay"] == "50s"  # the first call leaves the window in 50 s
        assert "Help" in details
        c.models.generate_content(model="gemini-2.5-pro", contents="other model has its own quota")
        now[0] += 51
        c.models.generate_content(model=MODEL, contents="c")  # third of the day
        now[0] += 61
        with pytest.raises(errors.ClientError) as exc:
            c.models.generate_content(model=MODEL, contents="d")
        assert "PerDay" in json.dumps(exc.value.details)
        s.reset_day()
        c.models.generate_content(model=MODEL, contents="d")
        assert s.stats()["generate_ok_by_model"][MODEL] == 4


def test_fail_rate_gives_server_and_connection_errors():
    with SandboxServer(SandboxConfig(fail_rate=1.0, seed=7)) as s:
        c = make_client(s)
        seen = set()
        for _ in range(40):
            if len(seen) == 3:
                break
            try:
                c.models.generate_content(model=MODEL, contents="x")
            except errors.ServerError as exc:
                seen.add(exc.code)
            except httpx.TransportError:
                seen.add("drop")
        assert seen == {500, 503, "drop"}
        with pytest.raises((errors.ServerError, httpx.TransportError)):
            c.files.upload(file=VIDEO)


def test_control_endpoint_bursts_and_config(srv, client):
    r = httpx.post(f"{srv.base_url}/_sandbox/config",
                   json={"latency": 0.0, "inject_429": {"count": 2, "retry_delay": 3}})
    assert r.status_code == 200 and r.json()["latency"] == 0.0
    for _ in range(2):
        with pytest.raises(errors.ClientError) as exc:
            client.models.generate_content(model=MODEL, contents="x")
        assert '"retryDelay": "3s"' in json.dumps(exc.value.details)
    client.models.generate_content(model=MODEL, contents="x")
    srv.inject_errors(1, 504)
    with pytest.raises(errors.ServerError) as exc:
        client.models.generate_content(model=MODEL, contents="x")
    assert exc.value.code == 504 and exc.value.status == "DEADLINE_EXCEEDED"
    stats = httpx.get(f"{srv.base_url}/_sandbox/stats").json()
    assert stats["by_kind"]["generate"] == {"429": 2, "200": 1, "504": 1}


def test_hang_is_released_by_stop():
    s = SandboxServer(SandboxConfig())
    s.start()
    c = make_client(s)
    outcome: list[object] = []

    def call() -> None:
        try:
            c.models.generate_content(model=MODEL, contents="sandbox-hang")
            outcome.append("answered")
        except Exception as exc:  # noqa: BLE001 - any failure is the expected outcome here
            outcome.append(exc)

    t = threading.Thread(target=call)
    t.start()
    deadline = time.monotonic() + 5
    while not any(e.get("injected") == "hang" for e in list(s.requests)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert t.is_alive()
    s.stop()
    t.join(5)
    assert not t.is_alive() and outcome and outcome[0] != "answered"


def test_batch_inline(client):
    reqs = [{"contents": [{"parts": [{"text": f"lesson {i}"}], "role": "user"}], "metadata": {"key": f"k{i}"}}
            for i in range(2)]
    reqs.append({"contents": [{"parts": [{"text": "sandbox-block"}], "role": "user"}], "metadata": {"key": "bad"}})
    job = client.batches.create(model=MODEL, src=reqs, config={"display_name": "inline"})
    assert job.state == types.JobState.JOB_STATE_PENDING and job.name.startswith("batches/")
    assert job.name in [j.name for j in client.batches.list()]
    job = wait_batch(client, job.name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    out = job.dest.inlined_responses
    assert [r.metadata["key"] for r in out] == ["k0", "k1", "bad"]
    assert "without watching the video" in out[0].response.text
    assert out[2].error is not None and out[2].response is None
    client.batches.delete(name=job.name)
    with pytest.raises(errors.ClientError):
        client.batches.get(name=job.name)


def test_batch_file_input_and_download(client, video, tmp_path):
    lines = [{"key": "a", "request": {"contents": [{"parts": [
        {"fileData": {"fileUri": video.uri, "mimeType": "video/mp4"}}, {"text": "## One\n## Two"}]}]}},
        {"key": "b", "request": {"contents": [{"parts": [{"text": "plain"}]}]}}]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    up = client.files.upload(file=src, config={"mime_type": "application/jsonl"})
    job = wait_batch(client, client.batches.create(model=MODEL, src=up.name).name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED and job.dest.file_name.startswith("files/")
    dest = tmp_path / "out.jsonl"
    client.files.download(file=job.dest.file_name, destination=str(dest))
    results = [json.loads(x) for x in dest.read_text().splitlines()]
    assert [r["key"] for r in results] == ["a", "b"]
    text = results[0]["response"]["candidates"][0]["content"]["parts"][0]["text"]
    assert "## One" in text and all(t <= 6 for t in timestamps(text))
    assert results[0]["response"]["usageMetadata"]["promptTokenCount"] >= 6 * 290


def test_batch_failure_injection_and_cancel(client):
    def one(text: str) -> list[dict]:
        return [{"contents": [{"parts": [{"text": text}], "role": "user"}]}]

    failed = client.batches.create(model=MODEL, src=one("sandbox-batch-fail"))
    expired = client.batches.create(model=MODEL, src=one("sandbox-batch-expire"))
    cancelled = client.batches.create(model=MODEL, src=one("fine"))
    client.batches.cancel(name=cancelled.name)
    assert wait_batch(client, failed.name).state == types.JobState.JOB_STATE_FAILED
    assert wait_batch(client, expired.name).state == types.JobState.JOB_STATE_EXPIRED
    assert client.batches.get(name=cancelled.name).state == types.JobState.JOB_STATE_CANCELLED


def test_request_log_file(client, srv, tmp_path):
    client.models.generate_content(model=MODEL, contents="x")
    with pytest.raises(errors.ClientError):
        client.files.get(name="files/nosuch")
    lines = [json.loads(x) for x in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert [(e["kind"], e["status"]) for e in lines] == [("generate", 200), ("files_get", 403)]
    assert lines[0]["model"] == MODEL and lines[0]["tokens"]["candidates"] > 0
    assert all(isinstance(e["ts"], float) and e["method"] in ("GET", "POST") for e in lines)


def test_cli_sandbox_help_and_run(tmp_path):
    exe = [str(Path(sys.executable).parent / "gsvr-batch")]
    out = subprocess.run([*exe, "sandbox", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "--fail-rate" in out.stdout
    log = tmp_path / "cli.jsonl"
    p = subprocess.Popen([*exe, "sandbox", "--rpm", "5", "--log", str(log), "--youtube-duration", "abcdefghijk=10800",
                          "--youtube-duration", "x=1.5", "--extra-model", "my-model=5000", "--input-token-limit",
                          "4000", "--cache-ttl", "10", "--upload-lost-answer-rate", "0.25",
                          "--youtube-seconds-per-day", "28800"], stdout=subprocess.PIPE, text=True)
    try:
        first = p.stdout.readline()
        hint = "".join(p.stdout.readline() for _ in range(2))
        url = first.strip().rsplit(" ", 1)[1]
        assert url.startswith("http://127.0.0.1:")
        stats = httpx.get(f"{url}/_sandbox/stats").json()
        assert stats["config"]["rpm"] == 5
        assert {k: stats["config"][k] for k in ("youtube_durations", "models", "input_token_limit", "cache_ttl",
                                                "upload_lost_answer_rate", "youtube_seconds_per_day")} == {
            "youtube_durations": {"abcdefghijk": 10800.0, "x": 1.5}, "models": {"my-model": 5000},
            "input_token_limit": 4000, "cache_ttl": 10.0, "upload_lost_answer_rate": 0.25,
            "youtube_seconds_per_day": 28800.0}
    finally:
        p.send_signal(signal.SIGTERM)
        rest, _ = p.communicate(timeout=10)
    assert p.returncode == 0 and f"export GOOGLE_GEMINI_BASE_URL={url}" in hint and "stopped" in rest
    assert log.read_text().strip()
