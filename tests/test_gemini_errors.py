"""classify(): real Gemini error bodies and real transport exceptions → our hierarchy."""

from __future__ import annotations

import datetime as dt
import errno
import json
from pathlib import Path

import httpx2
import pytest
from google.genai import errors as genai_errors

from gsvr_batch import gemini
from gsvr_batch.errors import (
    CredentialsError,
    DiskFull,
    FatalAPIError,
    InputError,
    NetworkError,
    QuotaExhausted,
    RateLimited,
    RequestRejected,
    ServerError,
)

FIXTURES = Path(__file__).parent / "fixtures" / "errors"


def api_error(name: str) -> genai_errors.APIError:
    body = json.loads((FIXTURES / name).read_text())
    code = body["error"]["code"]
    # The SDK raises the subclass for 4xx / 5xx; build it the same way raise_error does.
    cls = genai_errors.ClientError if code < 500 else genai_errors.ServerError
    return cls(code, body)


def test_429_per_minute_is_rate_limited_with_retry_delay():
    err = gemini.classify(api_error("429_per_minute_tokens.json"))
    assert isinstance(err, RateLimited)
    assert err.retry_delay == 26.0
    assert err.quota_id == "GenerateContentInputTokensPerModelPerMinute-FreeTier"
    assert str(err).startswith("Gemini answered 429 RESOURCE_EXHAUSTED: You exceeded your current quota")
    assert err.retryable


def test_429_per_day_is_quota_exhausted_until_pacific_midnight():
    now = dt.datetime(2026, 3, 10, 20, 30, tzinfo=dt.timezone.utc)  # 13:30 PDT
    err = gemini.classify(api_error("429_per_day_requests.json"), now=now)
    assert isinstance(err, QuotaExhausted)
    assert err.quota_id == "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
    assert err.resets_at == "2026-03-11T07:00:00Z"  # midnight PDT (UTC-7)


def test_429_with_day_and_minute_violations_is_the_day_quota():
    err = gemini.classify(api_error("429_mixed_day_and_minute.json"))
    assert isinstance(err, QuotaExhausted)
    assert "PerDay" in err.quota_id


def test_429_without_details_is_rate_limited_without_delay():
    err = gemini.classify(api_error("429_bare.json"))
    assert isinstance(err, RateLimited)
    assert err.retry_delay is None
    assert "Resource has been exhausted" in str(err)


def test_api_key_invalid_is_fatal():
    err = gemini.classify(api_error("400_api_key_invalid.json"))
    assert isinstance(err, FatalAPIError)
    assert "API key not valid" in str(err)


def test_other_400_is_rejected_with_server_message():
    err = gemini.classify(api_error("400_invalid_argument.json"))
    assert isinstance(err, RequestRejected)
    assert str(err) == "Gemini answered 400 INVALID_ARGUMENT: Request contains an invalid argument."


def test_unsupported_location_is_fatal():
    assert isinstance(gemini.classify(api_error("400_location_not_supported.json")), FatalAPIError)


def test_403_permission_denied_is_fatal():
    err = gemini.classify(api_error("403_permission_denied.json"))
    assert isinstance(err, FatalAPIError)
    assert "PERMISSION_DENIED" in str(err)


def test_403_on_one_file_is_a_task_error():
    err = gemini.classify(api_error("403_file_not_accessible.json"))
    assert isinstance(err, RequestRejected)
    assert "4pmc2fdo7ykb" in str(err)


def test_404_unknown_model_stops_the_batch_as_a_usage_error():
    from gsvr_batch.errors import Disposition, ModelNotFound

    err = gemini.classify(api_error("404_model_not_found.json"))
    assert isinstance(err, ModelNotFound) and err.exit_code == 2 and err.disposition is Disposition.STOP_BATCH
    assert "gemini-9.9-flash is not found" in str(err)


def test_token_overflow_and_lost_upload_answer_are_never_final():
    from google.genai import errors as genai_errors

    from gsvr_batch.errors import Disposition, TokenOverflow, UploadAmbiguous

    body = {"error": {"code": 400, "status": "INVALID_ARGUMENT",
                      "message": "The input token count (2161000) exceeds the maximum number of tokens allowed (1048576)."}}
    err = gemini.classify(genai_errors.ClientError(400, body))
    assert isinstance(err, TokenOverflow) and (err.tokens, err.limit) == (2161000, 1048576)
    body = {"error": {"code": 400, "status": "FAILED_PRECONDITION",
                      "message": "Upload session is already finalized or cancelled."}}
    err = gemini.classify(genai_errors.ClientError(400, body))
    assert isinstance(err, UploadAmbiguous) and err.disposition is Disposition.RETRY


def test_transport_errors_say_whether_the_request_can_have_reached_the_server():
    import httpx2

    assert gemini.classify(httpx2.ConnectError("refused")).delivered is False  # nothing sent: a free retry
    assert gemini.classify(httpx2.ReadTimeout("slow")).delivered is None  # maybe answered and billed
    assert gemini.classify(httpx2.RemoteProtocolError("closed mid-answer")).delivered is None


@pytest.mark.parametrize(
    "name, expected",
    [
        ("500_internal.json", "Gemini answered 500 INTERNAL: An internal error has occurred."),
        ("503_overloaded.json", "Gemini answered 503 UNAVAILABLE: The model is overloaded. Please try again later."),
        ("504_deadline.json", "Gemini answered 504 DEADLINE_EXCEEDED: Deadline expired before operation"),
    ],
)
def test_5xx_are_server_errors(name, expected):
    err = gemini.classify(api_error(name))
    assert isinstance(err, ServerError)
    assert str(err).startswith(expected)
    assert err.retryable


def test_408_is_server_error():
    err = gemini.classify(genai_errors.ClientError(408, {"error": {"code": 408, "message": "Request Timeout", "status": "DEADLINE_EXCEEDED"}}))
    assert isinstance(err, ServerError)


def test_non_json_error_body_still_reads():
    # What the SDK builds when a proxy answers with HTML (raise_for_response fallback).
    err = gemini.classify(genai_errors.ServerError(502, {"message": "<html>Bad Gateway</html>", "status": "Bad Gateway"}))
    assert isinstance(err, ServerError)
    assert str(err).startswith("Gemini answered 502 Bad Gateway")


def test_api_error_survives_pickling_and_classifies_the_same():
    # Errors cross process boundaries (ProcessPoolExecutor); the SDK defines __reduce__.
    import pickle

    err = pickle.loads(pickle.dumps(api_error("429_per_minute_tokens.json")))
    assert isinstance(gemini.classify(err), RateLimited)


@pytest.mark.parametrize(
    "exc",
    [
        httpx2.ReadTimeout("timed out"),
        httpx2.ConnectTimeout("timed out"),
        httpx2.ConnectError("[Errno 111] Connection refused"),
        httpx2.RemoteProtocolError("Server disconnected without sending a response."),
        httpx2.ReadError("[Errno 104] Connection reset by peer"),
        ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
        ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
        TimeoutError("timed out"),
        OSError(errno.ENETUNREACH, "Network is unreachable"),
    ],
)
def test_transport_errors_are_network_errors(exc):
    err = gemini.classify(exc)
    assert isinstance(err, NetworkError)
    assert err.retryable


def test_no_space_is_disk_full_and_other_os_errors_are_input_errors():
    assert isinstance(gemini.classify(OSError(errno.ENOSPC, "No space left on device")), DiskFull)
    err = gemini.classify(PermissionError(errno.EACCES, "Permission denied", "/videos/a.mp4"))
    assert isinstance(err, InputError)
    assert "/videos/a.mp4" in str(err) and "Permission denied" in str(err)


def test_our_errors_pass_through():
    original = RateLimited("x", retry_delay=2.0)
    assert gemini.classify(original) is original


def test_key_never_in_messages(monkeypatch):
    secret = "test-key-not-real-0123456789"
    monkeypatch.setenv("GEMINI_API_KEY", secret)
    body = {"error": {"code": 400, "message": f"Invalid API key: {secret}", "status": "INVALID_ARGUMENT"}}
    err = gemini.classify(genai_errors.ClientError(400, body))
    assert secret not in str(err)
    net = gemini.classify(httpx2.ConnectError(f"failed for https://x.test/v1/models?key={secret}&alt=sse"))
    assert secret not in str(net)


@pytest.mark.parametrize("value, seconds", [("3s", 3.0), ("1.5s", 1.5), ("30s", 30.0), ("0.000340s", 0.00034), ("soon", None)])
def test_parse_duration(value, seconds):
    assert gemini.parse_duration(value) == seconds


def test_retry_delay_falls_back_to_message():
    body = {"error": {"code": 429, "message": "Please retry in 12.5s.", "status": "RESOURCE_EXHAUSTED"}}
    assert gemini.retry_delay_of(body, body["error"]["message"]) == 12.5


def test_pacific_midnight_across_dst_start():
    # 2026-03-08 is the DST switch in the US: the night before is PST (UTC-8).
    now = dt.datetime(2026, 3, 7, 20, 0, tzinfo=dt.timezone.utc)
    assert gemini.next_reset_iso(now) == "2026-03-08T08:00:00Z"


# --------------------------------------------------------------------------- credentials


@pytest.fixture
def no_keys(monkeypatch):
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "MY_KEY", "GOOGLE_GEMINI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_missing_key_names_every_way_out(no_keys):
    with pytest.raises(CredentialsError) as info:
        gemini.resolve_credentials(None, sandbox=False)
    msg = str(info.value)
    for word in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "api_key_env", "--sandbox"):
        assert word in msg
    assert info.value.exit_code == 2


def test_missing_named_key_names_it(no_keys):
    no_keys.setenv("GEMINI_API_KEY", "test-key-not-real")
    with pytest.raises(CredentialsError) as info:
        gemini.resolve_credentials("MY_KEY", sandbox=False)
    assert "MY_KEY" in str(info.value) and "--sandbox" in str(info.value)


def test_credentials_found_and_sandbox(no_keys):
    assert gemini.resolve_credentials(None, sandbox=True).source is None
    no_keys.setenv("GEMINI_API_KEY", "test-key-not-real")
    assert gemini.resolve_credentials(None, sandbox=False).source == "GEMINI_API_KEY"
    no_keys.setenv("MY_KEY", "test-key-not-real")
    assert gemini.resolve_credentials("MY_KEY", sandbox=False).source == "MY_KEY"


def _cfg(**kw):
    base = dict(base_url=None, api_version=None, api_key_env=None, request_timeout=12.5, limiter_path=None)
    base.update(kw)
    return gemini.WorkerConfig(**base)


def test_make_client_honours_env_base_url_and_has_no_sdk_retries(no_keys):
    no_keys.setenv("GEMINI_API_KEY", "test-key-not-real")
    no_keys.setenv("GOOGLE_GEMINI_BASE_URL", "http://127.0.0.1:9/")
    client = gemini.make_client(_cfg())
    opts = client._api_client._http_options
    assert opts.base_url == "http://127.0.0.1:9/"
    assert opts.timeout == 12500
    assert opts.retry_options is None


def test_make_client_explicit_base_url_and_named_key(no_keys):
    no_keys.setenv("MY_KEY", "test-key-not-real")
    client = gemini.make_client(_cfg(base_url="http://127.0.0.1:8/", api_key_env="MY_KEY", api_version="v1beta"))
    assert client._api_client._http_options.base_url == "http://127.0.0.1:8/"
    assert client._api_client._http_options.api_version == "v1beta"
    assert client._api_client.api_key == "test-key-not-real"


def test_make_client_without_key(no_keys):
    with pytest.raises(CredentialsError):
        gemini.make_client(_cfg())
    client = gemini.make_client(_cfg(backend="sandbox", base_url="http://127.0.0.1:8/"))
    assert client._api_client.api_key == gemini.SANDBOX_PLACEHOLDER_KEY
