"""The lost answer of an upload: the finalize chunk takes effect, the client never hears it.

What the real SDK does then is what the client code has to classify, so these tests pin it
down with ``client.files.upload(...)`` over HTTP against a started sandbox:

* 503 without ``x-goog-upload-status`` (trigger ``sandbox-upload-lost`` in the display name,
  or ``upload_lost_answer_rate``): google-genai 3.6 waits 1 s and re-sends the last chunk on
  the same upload session; the session is finalized, so that answers 400 FAILED_PRECONDITION
  "Upload session is already finalized or cancelled." and the SDK raises
  ``google.genai.errors.ClientError`` (code 400, status FAILED_PRECONDITION).
* a dropped connection (trigger ``sandbox-upload-lost-drop``): no retry at all, the SDK lets
  ``httpx2.RemoteProtocolError`` through.

Either way the file exists and turns ACTIVE: files.list finds it by display name and sha256.
"""

from __future__ import annotations

import base64
import hashlib

import httpx2 as httpx
import pytest
from google import genai
from google.genai import errors, types
from videos import make_video

from gsvr_batch.sandbox import SandboxConfig, SandboxServer

KEY = "test-key-not-real"


@pytest.fixture()
def srv():
    with SandboxServer(SandboxConfig(processing_delay=0.0)) as s:
        yield s


@pytest.fixture()
def client(srv):
    return genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=srv.base_url))


def sha256_field(data: bytes) -> str:
    """``File.sha256_hash`` as the API sends it: base64 of the lowercase hex digest."""
    return base64.b64encode(hashlib.sha256(data).hexdigest().encode()).decode()


def find(client: genai.Client, display_name: str) -> list[types.File]:
    return [f for f in client.files.list() if f.display_name == display_name]


@pytest.mark.slow
def test_lost_finalize_answer_raises_failed_precondition_yet_the_file_exists(client, srv, tmp_path):
    video = make_video(tmp_path / "lecture.mp4", 600)
    name = "lecture-07 sandbox-upload-lost"
    with pytest.raises(errors.ClientError) as exc:
        client.files.upload(file=video, config={"display_name": name})
    err = exc.value
    assert type(err) is errors.ClientError
    assert (err.code, err.status, err.message) == (
        400, "FAILED_PRECONDITION", "Upload session is already finalized or cancelled.")
    assert err.details == {"error": {"code": 400, "message": "Upload session is already finalized or cancelled.",
                                     "status": "FAILED_PRECONDITION"}}
    # The upload did take effect: the file is there, complete, and usable.
    (stored,) = find(client, name)
    assert stored.sha256_hash == sha256_field(video.read_bytes())
    assert stored.size_bytes == video.stat().st_size and stored.state == types.FileState.ACTIVE
    r = client.models.generate_content(model="gemini-2.5-flash", contents=[
        types.Part.from_uri(file_uri=stored.uri, mime_type="video/mp4"), "plan"])
    assert "600.0 s long" in r.text
    # On the wire: the finalize answered 503 (lost), the SDK's re-send of it 400 on the same file.
    up = [(e["kind"], e["status"], e["injected"], e["file"]) for e in srv.requests if e["kind"].startswith("upload")]
    assert up == [("upload_start", 200, None, stored.name), ("upload_finalize", 503, "upload_lost_answer", stored.name),
                  ("upload_chunk", 400, None, stored.name)]
    # The trigger fires on the first finalize only: uploading again (as a client might) goes through.
    again = client.files.upload(file=video, config={"display_name": name})
    assert {f.name for f in find(client, name)} == {stored.name, again.name}


def test_lost_answer_as_a_dropped_connection_is_not_retried_by_the_sdk(client, srv, tmp_path):
    video = make_video(tmp_path / "lecture.mp4", 60)
    name = "lecture sandbox-upload-lost-drop"
    with pytest.raises(httpx.RemoteProtocolError):
        client.files.upload(file=video, config={"display_name": name})
    (stored,) = find(client, name)
    assert stored.sha256_hash == sha256_field(video.read_bytes()) and stored.state == types.FileState.ACTIVE
    kinds = [(e["kind"], e["status"]) for e in srv.requests if e["kind"].startswith("upload")]
    assert kinds == [("upload_start", 200), ("upload_finalize", None)]  # no second chunk


def test_lost_answer_rate_on_the_wire(tmp_path):
    """``upload_lost_answer_rate`` (seeded RNG): the 503 has no upload status; a re-send is refused."""
    data = make_video(tmp_path / "v.mp4", 30).read_bytes()
    with SandboxServer(SandboxConfig(upload_lost_answer_rate=1.0, seed=1, processing_delay=0.0)) as s:
        with httpx.Client(base_url=s.base_url, headers={"x-goog-api-key": KEY}) as http:
            start = http.post("/upload/v1beta/files", json={"file": {"display_name": "rated"}}, headers={
                "X-Goog-Upload-Protocol": "resumable", "X-Goog-Upload-Command": "start",
                "X-Goog-Upload-Header-Content-Length": str(len(data)),
                "X-Goog-Upload-Header-Content-Type": "video/mp4"})
            url = start.headers["x-goog-upload-url"]
            chunk = {"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"}
            lost = http.post(url, content=data, headers=chunk)
            assert lost.status_code == 503 and "x-goog-upload-status" not in lost.headers
            resent = http.post(url, content=data, headers=chunk)
            assert resent.status_code == 400 and resent.headers["x-goog-upload-status"] == "final"
            assert resent.json()["error"] == {"code": 400, "status": "FAILED_PRECONDITION",
                                              "message": "Upload session is already finalized or cancelled."}
            files = http.get("/v1beta/files").json()["files"]
        assert [(f["displayName"], f["sha256Hash"], f["state"]) for f in files] == [
            ("rated", sha256_field(data), "ACTIVE")]
    with SandboxServer(SandboxConfig(processing_delay=0.0)) as s:  # the default: nothing is lost
        c = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=s.base_url))
        assert c.files.upload(file=tmp_path / "v.mp4").state == types.FileState.ACTIVE
