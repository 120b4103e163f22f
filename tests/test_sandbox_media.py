"""The sandbox's models, token accounting, clips, YouTube lengths and quota, merge answers and
implicit caching — each driven by the real google-genai SDK over HTTP against a started server."""

from __future__ import annotations

import json
import math
import re

import httpx2 as httpx
import pytest
from google import genai
from google.genai import errors, types
from videos import make_video

from gsvr_batch.sandbox import SandboxConfig, SandboxServer

MODEL = "gemini-2.5-flash"
KEY = "test-key-not-real"
YT_ID = "aaaaaaaaaaa"
YT = f"https://www.youtube.com/watch?v={YT_ID}"
HOUR = 3600
FRAME, FRAME_LOW, AUDIO = 258, 66, 32  # Google's documented tokens per frame / per second of sound


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def timestamps(text: str) -> list[int]:
    """Seconds of the ``MM:SS`` / ``H:MM:SS`` timestamps in a text."""
    found = re.findall(r"(?<![\d:])(?:(\d{1,2}):(\d{2}):(\d{2})|(\d{2,3}):(\d{2}))(?![\d:])", text)
    return [int(h) * 3600 + int(m) * 60 + int(s) if h else int(mm) * 60 + int(ss) for h, m, s, mm, ss in found]


@pytest.fixture()
def start():
    """Start sandboxes with a given config (files ACTIVE at once); all stopped at the end."""
    servers: list[SandboxServer] = []

    def run(clock=None, **cfg) -> tuple[SandboxServer, genai.Client]:
        cfg.setdefault("processing_delay", 0.0)
        s = SandboxServer(SandboxConfig(**cfg), clock=clock)
        s.start()
        servers.append(s)
        return s, genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=s.base_url))

    yield run
    for s in servers:
        s.stop()


def video_part(uri: str, *, start: str | None = None, end: str | None = None, fps: float | None = None,
               mime: str = "video/mp4") -> types.Part:
    meta = None
    if start is not None or end is not None or fps is not None:
        meta = types.VideoMetadata(start_offset=start, end_offset=end, fps=fps)
    return types.Part(file_data=types.FileData(file_uri=uri, mime_type=mime), video_metadata=meta)


def low() -> types.GenerateContentConfig:
    return types.GenerateContentConfig(media_resolution=types.MediaResolution.MEDIA_RESOLUTION_LOW)


def upload(client: genai.Client, tmp_path, seconds: float, name: str, **kw) -> types.File:
    f = client.files.upload(file=make_video(tmp_path / f"{name}.mp4", seconds, **kw), config={"display_name": name})
    assert client.files.get(name=f.name).state == types.FileState.ACTIVE
    return f


# ---------------------------------------------------------------- models


def test_model_table_answers_real_limits_for_known_names_and_versions(start):
    _, client = start()
    for name, out_limit in [("gemini-2.5-pro", 65536), ("models/gemini-2.5-flash", 65536),
                            ("gemini-2.5-flash-lite-001", 65536), ("gemini-2.5-flash-preview-09-2025", 65536),
                            ("gemini-2.5-flash-latest", 65536), ("gemini-2.0-flash-001", 8192),
                            ("gemini-2.0-flash-lite", 8192), ("gemini-3-pro-preview", 65536)]:
        m = client.models.get(model=name)
        assert m.name == "models/" + name.removeprefix("models/")
        assert (m.input_token_limit, m.output_token_limit) == (1_048_576, out_limit), name
        assert "generateContent" in m.supported_actions
    listed = {m.name for m in client.models.list()}
    assert {"models/gemini-2.5-pro", "models/gemini-2.5-flash", "models/gemini-2.5-flash-lite",
            "models/gemini-2.0-flash", "models/gemini-2.0-flash-lite", "models/gemini-3-pro-preview"} <= listed


def test_unknown_model_is_404_for_get_generate_count_and_batch(start):
    srv, client = start()
    bad = "gemini-9.9-flash"
    calls = {
        "generateContent": lambda: client.models.generate_content(model=bad, contents="x"),
        "countTokens": lambda: client.models.count_tokens(model=bad, contents="x"),
        "batchGenerateContent": lambda: client.batches.create(
            model=bad, src=[{"contents": [{"parts": [{"text": "x"}], "role": "user"}]}]),
    }
    for method, call in calls.items():
        with pytest.raises(errors.ClientError) as exc:
            call()
        assert (exc.value.code, exc.value.status) == (404, "NOT_FOUND")
        version = srv.requests[-1]["path"].split("/")[1]  # the API version the SDK used
        assert exc.value.message == (
            f"models/{bad} is not found for API version {version}, or is not supported for {method}. "
            "Call ListModels to see the list of available models and their supported methods.")
    with pytest.raises(errors.ClientError) as exc:
        client.models.get(model=bad)
    assert (exc.value.code, exc.value.status) == (404, "NOT_FOUND") and f"models/{bad}" in exc.value.message
    assert not list(client.batches.list())  # nothing was created
    # gemini-2.5-flash-image is a different product, not a version of 2.5 Flash.
    with pytest.raises(errors.ClientError):
        client.models.generate_content(model="gemini-2.5-flash-image", contents="x")


def test_config_adds_models_and_overrides_the_limit(start):
    srv, client = start(models={"my-tuned-model": 5000})
    assert client.models.get(model="my-tuned-model").input_token_limit == 5000
    assert client.models.get(model=MODEL).input_token_limit == 1_048_576
    srv.update_config(input_token_limit=1234)  # runtime change, as via POST /_sandbox/config
    assert client.models.get(model="my-tuned-model").input_token_limit == 1234
    assert client.models.get(model="gemini-2.5-pro").input_token_limit == 1234
    r = httpx.post(f"{srv.base_url}/_sandbox/config", json={"models": {"other-model": 7}, "input_token_limit": None})
    assert r.status_code == 200 and r.json()["models"] == {"other-model": 7}
    assert client.models.get(model="other-model").input_token_limit == 7
    with pytest.raises(errors.ClientError) as exc:
        client.models.get(model="my-tuned-model")  # replaced by the new mapping
    assert exc.value.code == 404


def test_prompt_over_the_input_window_is_400_like_google_but_count_tokens_answers(start, tmp_path):
    srv, client = start(input_token_limit=2000)
    f = upload(client, tmp_path, 10, "ten-seconds")
    prompt = "Write a lesson plan."
    expected = 10 * FRAME + 10 * AUDIO + tokens(prompt)  # 2,905 > 2,000
    with pytest.raises(errors.ClientError) as exc:
        client.models.generate_content(model=MODEL, contents=[video_part(f.uri), prompt])
    assert (exc.value.code, exc.value.status) == (400, "INVALID_ARGUMENT")
    assert exc.value.message == (
        f"The input token count ({expected}) exceeds the maximum number of tokens allowed (2000).")
    assert client.models.count_tokens(model=MODEL, contents=[video_part(f.uri), prompt]).total_tokens == expected
    # The same request at low resolution fits: 10 x 66 + 10 x 32 + 5.
    ok = client.models.generate_content(model=MODEL, contents=[video_part(f.uri), prompt], config=low())
    assert ok.usage_metadata.prompt_token_count == 10 * (FRAME_LOW + AUDIO) + tokens(prompt)
    gen = [e for e in srv.requests if e["kind"] == "generate"]
    assert [e["status"] for e in gen] == [400, 200] and gen[0]["tokens"]["prompt"] == expected
    assert srv.stats()["quotas"]["requests_last_minute"] == {MODEL: 1}  # the refused call used no quota

    # Inside a batch job the request gets the same error; the others are answered.
    job = client.batches.create(model=MODEL, src=[
        {"contents": [{"parts": [{"file_data": {"file_uri": f.uri, "mime_type": "video/mp4"}}, {"text": prompt}],
                       "role": "user"}]},
        {"contents": [{"parts": [{"text": "short"}], "role": "user"}]}])
    srv.update_config(batch_duration=0.0)
    job = client.batches.get(name=job.name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    first, second = job.dest.inlined_responses
    assert first.error.code == 3 and first.error.message == exc.value.message
    assert second.response.text


def test_a_four_hour_lecture_overflows_the_default_window_unless_clipped(start, tmp_path):
    _, client = start()
    f = upload(client, tmp_path, 4 * HOUR, "four-hours")
    whole = 4 * HOUR * (FRAME + AUDIO) + tokens("p")
    with pytest.raises(errors.ClientError) as exc:
        client.models.generate_content(model=MODEL, contents=[video_part(f.uri), "p"])
    assert f"The input token count ({whole}) exceeds the maximum number of tokens allowed (1048576)." \
        == exc.value.message
    # Low resolution alone is not enough for 4 h with sound (4 h x 98 = 1,411,200) ...
    with pytest.raises(errors.ClientError):
        client.models.generate_content(model=MODEL, contents=[video_part(f.uri), "p"], config=low())
    # ... one hour at default resolution, or two at low resolution, is.
    hour = client.models.generate_content(model=MODEL, contents=[video_part(f.uri, start="0s", end="3600s"), "p"])
    assert hour.usage_metadata.prompt_token_count == HOUR * (FRAME + AUDIO) + 1
    two = client.models.generate_content(
        model=MODEL, contents=[video_part(f.uri, start="7200s", end="14400s"), "p"], config=low())
    assert two.usage_metadata.prompt_token_count == 2 * HOUR * (FRAME_LOW + AUDIO) + 1


# ---------------------------------------------------------------- token accounting and clips


def test_tokens_follow_fps_resolution_and_offsets(start, tmp_path):
    srv, client = start()
    f = upload(client, tmp_path, 4 * HOUR, "four-hours")  # the same (cached) file as the other 4 h tests
    silent = upload(client, tmp_path, 100, "silent", audio=False)
    cases = [
        # (part, config, video tokens, audio tokens)
        (video_part(f.uri, start="1200s", end="2400s"), None, 1200 * FRAME, 1200 * AUDIO),
        (video_part(f.uri, start="1200.5s", end="1300s"), low(), 100 * FRAME_LOW, math.ceil(99.5 * AUDIO)),
        (video_part(f.uri, start="60s", end="70s", fps=2.5), None, 25 * FRAME, 10 * AUDIO),
        (video_part(f.uri, start="60s", end="70s", fps=0.25), None, 3 * FRAME, 10 * AUDIO),  # ceil(2.5)
        (video_part(f.uri, start="14300s", end="99999s"), None, 100 * FRAME, 100 * AUDIO),  # end clamped
        (video_part(f.uri, start="14300s"), None, 100 * FRAME, 100 * AUDIO),  # to the end
        (video_part(silent.uri), None, 100 * FRAME, 0),  # no audio track, no audio tokens
    ]
    for part, config, video, audio in cases:
        r = client.models.generate_content(model=MODEL, contents=[part, "plan"], config=config)
        details = {d.modality.name: d.token_count for d in r.usage_metadata.prompt_tokens_details}
        assert details.get("VIDEO") == video and details.get("AUDIO", 0) == audio, part.video_metadata
        assert r.usage_metadata.prompt_token_count == video + audio + 1
        counted = client.models.count_tokens(model=MODEL, contents=[part, "plan"])
        if config is None:  # countTokens has no generationConfig: default resolution
            assert counted.total_tokens == video + audio + 1
    gen = [e for e in srv.requests if e["kind"] == "generate"]
    assert [e["clip"] for e in gen] == [[1200, 2400], [1200.5, 1300], [60, 70], [60, 70], [14300, 14400],
                                        [14300, 14400], None]
    assert [e["fps"] for e in gen] == [1, 1, 2.5, 0.25, 1, 1, 1]
    assert [e["media_resolution"] for e in gen] == [None, "MEDIA_RESOLUTION_LOW"] + [None] * 5
    assert not any(e["youtube"] or e["merge"] for e in gen)


def test_bad_video_metadata_is_400(start, tmp_path):
    _, client = start()
    f = upload(client, tmp_path, 600, "ten-minutes")
    for part, words in [
        (video_part(f.uri, start="600s", end="700s"), "start_offset (600s) is beyond the end of the video (600s)"),
        (video_part(f.uri, start="300s", end="200s"), "end_offset (200s) must be after start_offset (300s)"),
        (video_part(f.uri, fps=30), "fps must be greater than 0 and at most 24"),
        (video_part(f.uri, fps=-1), "fps must be greater than 0 and at most 24"),
        (video_part(f.uri, start="ten minutes"), "Illegal duration format"),
        (video_part(YT, start="1200s", end="1300s", mime="video/*"), "beyond the end of the video (600s)"),
    ]:
        with pytest.raises(errors.ClientError) as exc:
            client.models.generate_content(model=MODEL, contents=[part, "plan"])
        assert (exc.value.code, exc.value.status) == (400, "INVALID_ARGUMENT")
        assert words in exc.value.message, exc.value.message


def test_youtube_lengths_come_from_the_config(start):
    # 3 h with sound is 1,058,400 tokens even at low resolution: widen the window for this test.
    srv, client = start(youtube_durations={YT_ID: 3 * HOUR}, input_token_limit=4_000_000)
    r = client.models.generate_content(model=MODEL, contents=[video_part(YT, mime="video/*"), "plan"], config=low())
    assert r.usage_metadata.prompt_token_count == 3 * HOUR * (FRAME_LOW + AUDIO) + 1
    assert "10800 s long (declared" in r.text
    short = f"https://youtu.be/{YT_ID}"  # the same video by another link shape
    clip = client.models.generate_content(
        model=MODEL, contents=[video_part(short, start="9000s", end="10800s", mime="video/*"), "plan"])
    assert clip.usage_metadata.prompt_token_count == 1800 * (FRAME + AUDIO) + 1
    other = client.models.generate_content(
        model=MODEL, contents=[video_part("https://www.youtube.com/watch?v=bbbbbbbbbbb", mime="video/*"), "p"])
    assert other.usage_metadata.prompt_token_count == 600 * (FRAME + AUDIO) + 1  # unknown id: 600 s assumed
    gen = [e for e in srv.requests if e["kind"] == "generate"]
    assert [e["youtube"] for e in gen] == [True, True, True] and gen[1]["clip"] == [9000, 10800]


def test_youtube_seconds_per_day_quota(start):
    now = [1_000_000.0]
    srv, client = start(clock=lambda: now[0], youtube_durations={YT_ID: 3 * HOUR},
                        youtube_seconds_per_day=8 * HOUR, day_reset=86400, input_token_limit=4_000_000)
    part = video_part(YT, mime="video/*")
    for _ in range(2):
        client.models.generate_content(model=MODEL, contents=[part, "p"], config=low())
    with pytest.raises(errors.ClientError) as exc:  # 6 h used, 3 more would make 9 h > 8 h
        client.models.generate_content(model=MODEL, contents=[part, "p"], config=low())
    assert (exc.value.code, exc.value.status) == (429, "RESOURCE_EXHAUSTED")
    details = {d["@type"].rsplit(".", 1)[1]: d for d in exc.value.details["error"]["details"]}
    quota_id = details["QuotaFailure"]["violations"][0]["quotaId"]
    assert "PerDay" in quota_id and "YouTube" in quota_id
    assert details["QuotaFailure"]["violations"][0]["quotaValue"] == str(8 * HOUR)
    # Two hours still fit; uploaded files and text do not count.
    client.models.generate_content(model=MODEL, contents=[video_part(YT, end="7200s", mime="video/*"), "p"],
                                   config=low())
    assert srv.stats()["quotas"]["youtube_seconds_today"] == 8 * HOUR
    client.models.generate_content(model=MODEL, contents="text only")
    now[0] += 86400  # the next quota day
    client.models.generate_content(model=MODEL, contents=[part, "p"], config=low())


# ---------------------------------------------------------------- the answer's timestamps


def test_clip_answers_cover_the_clip_with_absolute_timestamps(start, tmp_path):
    _, client = start()
    f = upload(client, tmp_path, 4 * HOUR, "four-hours")
    prompt = "Lesson plan:\n## Part A\n## Part B\n## Part C\n## Part D\n"
    partials = []
    for a in range(4):
        r = client.models.generate_content(
            model=MODEL, config=low(),
            contents=[video_part(f.uri, start=f"{a * HOUR}s", end=f"{(a + 1) * HOUR}s"), prompt])
        body = r.text.split("\n## ", 1)[1]  # the sections, not the header line
        ts = timestamps(body)
        assert min(ts) == a * HOUR and max(ts) == (a + 1) * HOUR - 1, (a, ts)
        assert re.search(r"\b\d:\d{2}:\d{2}\b", body)  # H:MM:SS past the first hour's start
        partials.append(r.text)
    # A short clip keeps the MM:SS shape.
    r = client.models.generate_content(model=MODEL, contents=[video_part(f.uri, start="1200s", end="2400s"), prompt])
    assert all(1200 <= t <= 2399 for t in timestamps(r.text.split("\n## ", 1)[1]))
    assert re.search(r"\[20:00–", r.text)

    # A text-only merge of the partials spans all four hours, with the prompt's headings.
    merged = client.models.generate_content(
        model=MODEL, contents="Merge these partial lessons into one.\n## Intro\n## Body\n## Wrap-up\n\n"
        + "\n\n".join(partials))
    assert re.findall(r"^## (.+)$", merged.text, re.M)[:3] == ["Intro", "Body", "Wrap-up"]
    ts = timestamps(merged.text.split("\n## ", 1)[1])
    assert min(ts) == 0 and max(ts) >= 4 * HOUR - 1 and "Merged from partial lessons" in merged.text


def test_text_without_timestamps_keeps_the_assumed_length(start):
    srv, client = start()
    r = client.models.generate_content(model=MODEL, contents="Just write a lesson.\n## One\n## Two")
    assert max(timestamps(r.text)) < 600 and "assumed to be 600 s" in r.text
    e = [e for e in srv.requests if e["kind"] == "generate"][0]
    assert e["merge"] is True and e["clip"] is None and e["fps"] is None and e["youtube"] is False


# ---------------------------------------------------------------- implicit caching


def test_implicit_cache_for_the_same_media_within_the_ttl(start, tmp_path):
    now = [2_000_000.0]
    srv, client = start(clock=lambda: now[0], cache_ttl=300)
    f = upload(client, tmp_path, 600, "ten-minutes")
    part = video_part(f.uri)
    media = 600 * FRAME + 600 * AUDIO

    def ask(p: types.Part = part, model: str = MODEL, prompt: str = "first prompt", config=None):
        return client.models.generate_content(model=model, contents=[p, prompt], config=config).usage_metadata

    cold = ask()
    assert cold.cached_content_token_count is None and cold.prompt_token_count == media + 3
    now[0] += 200
    warm = ask(prompt="another prompt, same video")  # the prompt after the video may differ
    assert warm.cached_content_token_count == media
    assert warm.prompt_token_count == media + tokens("another prompt, same video")  # still counted in
    assert {d.modality.name: d.token_count for d in warm.cache_tokens_details} == {
        "VIDEO": 600 * FRAME, "AUDIO": 600 * AUDIO}
    # Another resolution, clip, fps or model is another prefix: not cached (first time).
    assert ask(config=low()).cached_content_token_count is None
    assert ask(video_part(f.uri, start="0s", end="300s")).cached_content_token_count is None
    assert ask(video_part(f.uri, fps=2)).cached_content_token_count is None
    assert ask(model="gemini-2.5-pro").cached_content_token_count is None
    assert ask(model="gemini-2.5-pro").cached_content_token_count == media
    now[0] += 301  # past the TTL since the last use of the plain part
    assert ask().cached_content_token_count is None
    assert ask().cached_content_token_count == media
    gen = [e for e in srv.requests if e["kind"] == "generate"]
    assert [e["tokens"]["cached"] for e in gen] == [0, media, 0, 0, 0, 0, media, 0, media]
    assert srv.stats()["generate_ok_tokens"]["cached"] == 3 * media


def test_implicit_cache_needs_the_documented_minimum(start, tmp_path):
    srv, client = start()
    f = upload(client, tmp_path, 6, "six-seconds")  # 6 x 290 = 1,740 tokens: >= 1,024, < 2,048
    part = video_part(f.uri)
    for model, cached in (("gemini-2.5-flash", 1740), ("gemini-2.5-pro", None)):
        client.models.generate_content(model=model, contents=[part, "a"])
        again = client.models.generate_content(model=model, contents=[part, "b"])
        assert again.usage_metadata.cached_content_token_count == cached, model
    tiny = upload(client, tmp_path, 3, "three-seconds")  # 870 tokens: below every minimum
    for _ in range(2):
        r = client.models.generate_content(model=MODEL, contents=[video_part(tiny.uri), "a"])
    assert r.usage_metadata.cached_content_token_count is None
    srv.update_config(cache_ttl=0)  # off
    assert client.models.generate_content(
        model=MODEL, contents=[part, "c"]).usage_metadata.cached_content_token_count is None


def test_cli_sandbox_options_for_the_new_settings():
    from click.testing import CliRunner

    from gsvr_batch.cli import cli

    out = CliRunner().invoke(cli, ["sandbox", "--help"]).output
    for opt in ("--input-token-limit", "--extra-model", "--cache-ttl", "--upload-lost-answer-rate",
                "--youtube-duration", "--youtube-seconds-per-day"):
        assert opt in out, opt
    # A malformed pair stops before any server starts, naming the option.
    bad = CliRunner().invoke(cli, ["sandbox", "--youtube-duration", "abc"])
    assert bad.exit_code != 0 and "--youtube-duration expects NAME=NUMBER" in bad.output


def test_request_log_file_has_the_media_fields(start, tmp_path):
    log = tmp_path / "requests.jsonl"
    srv, client = start(log_path=str(log), youtube_durations={YT_ID: 1000})
    client.models.generate_content(model=MODEL, contents=[video_part(YT, start="100s", end="200s", fps=2,
                                                                     mime="video/*"), "p"], config=low())
    e = json.loads(log.read_text().splitlines()[-1])
    assert (e["kind"], e["media_resolution"], e["clip"], e["fps"], e["youtube"], e["merge"]) == (
        "generate", "MEDIA_RESOLUTION_LOW", [100, 200], 2, True, False)
    assert e["tokens"] == {"prompt": 200 * FRAME_LOW + 100 * AUDIO + 1, "candidates": e["tokens"]["candidates"],
                           "cached": 0} and e["tokens"]["candidates"] > 0
