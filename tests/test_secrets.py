"""Secrets never reach disk (DESIGN invariant 9).

Unit tests of :mod:`gsvr_batch.secrets` (every form of a secret is scrubbed, keys that cannot be
an HTTP header are refused before any work, spawned processes redact too), then one end-to-end
test: real ``gsvr-batch`` processes against a real sandbox server, a real webhook receiver and a
real SMTP server, for a successful, a failing, an aborted and a refused (newline in the key)
batch, then ``gsvr-batch report`` in every format; every file they left, every byte they printed
and everything the receivers got is searched for the key, its escaped forms, its pieces, the
webhook token and the SMTP password: zero hits.

All secrets here are fake and shaped so they can never be mistaken for a real Google key.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import urllib.parse
from concurrent.futures import ProcessPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing import get_context
from pathlib import Path

import pytest

from conftest import REPO, env_for, make_batch, records, run_cli
from gsvr_batch import gemini
from gsvr_batch import secrets
from gsvr_batch.errors import CredentialsError

GOOGLE_KEY_SHAPE = re.compile(r"AIza[0-9A-Za-z_\-]{35}")
FAKE_KEY = "gsvrFAKEkey-Zq7Wx3Ly9Pv2Rt5Nb8Mk-notreal"
# what `export GEMINI_API_KEY="$(cat keyfile)"` gives when the file starts with a comment line
NEWLINE_KEY = "# gemini key for the course\nFAKEnl-Hj4Kd8Ws2Qx6Vb1Zm5Tr-notreal"
HOOK_TOKEN = "hooktokFAKE-Uy3Ep7Ao1Is9"
SMTP_PASSWORD = "smtpFAKEpw-Gf6Dh2Jk8Ll4"
OTHER_KEY = "sandbox-expects-another-FAKE-key"


def test_fake_secrets_are_not_shaped_like_real_keys():
    for value in (FAKE_KEY, NEWLINE_KEY, HOOK_TOKEN, SMTP_PASSWORD, OTHER_KEY):
        assert not GOOGLE_KEY_SHAPE.search(value)


@pytest.fixture(autouse=True)
def clean_registry(monkeypatch):
    """Each test starts with nothing registered (registrations are process-wide)."""
    monkeypatch.delenv(secrets.ENV_NAMES_VAR, raising=False)
    secrets.reset()
    yield
    secrets.reset()


# -- forms -----------------------------------------------------------------------------------------

def escaped_forms(value: str) -> dict[str, str]:
    """The ways a value shows up in messages and files, computed here independently of the module."""
    return {
        "raw": value,
        "repr": repr(value)[1:-1],
        "bytes repr": repr(value.encode())[2:-1],
        "json": json.dumps(value)[1:-1],
        "json of bytes repr": json.dumps(repr(value.encode())[2:-1])[1:-1],
        "percent": urllib.parse.quote(value, safe=""),
        "percent plus": urllib.parse.quote_plus(value),
    }


def pieces(value: str, width: int = 12) -> set[str]:
    """Every run of ``width`` characters inside one line of ``value``: no part of it may show."""
    out = set()
    for line in value.splitlines():
        line = line.strip()
        out |= {line[i:i + width] for i in range(max(0, len(line) - width + 1))}
    return out


def test_redact_covers_raw_escaped_percent_json_and_line_forms():
    value = "# key file\nFAKEmulti-Tq2Ws4Ed6Rf8\tend-é-part"
    secrets.register(value)
    for name, form in escaped_forms(value).items():
        text = f"error: header {form!s} refused"
        assert secrets.redact(text) == "error: header *** refused", name
    # each line long enough to identify it, alone, as a log line might show it
    assert secrets.redact("line FAKEmulti-Tq2Ws4Ed6Rf8 seen") == "line *** seen"
    assert secrets.redact("# key file") == "***"
    # short, common words are not mangled
    assert secrets.redact("the end of the part") == "the end of the part"
    # key= URL parameters, whatever the value
    assert secrets.redact("GET /v1/models?key=whatever123&x=1") == "GET /v1/models?key=***&x=1"


def test_env_keys_are_secrets_without_registration(monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", FAKE_KEY)
    assert FAKE_KEY not in secrets.redact(f"sent {FAKE_KEY!r} and {urllib.parse.quote(FAKE_KEY)}")
    # the old import path still works
    assert gemini.redact(f"x {FAKE_KEY} y") == "x *** y"


def test_classify_never_quotes_a_key_httpx_refused(monkeypatch, sandbox):
    """The original leak: httpx refuses the header and quotes it as bytes repr (``\\n`` escaped)."""
    from google import genai
    from google.genai import types

    server = sandbox()
    monkeypatch.setenv("GEMINI_API_KEY", NEWLINE_KEY)  # the SDK's variable: a secret with no registration
    client = genai.Client(api_key=NEWLINE_KEY, http_options=types.HttpOptions(base_url=server.base_url))
    with pytest.raises(Exception) as info:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert "FAKEnl" in str(info.value)  # the transport really did quote it
    message = str(gemini.classify(info.value))
    for part in pieces(NEWLINE_KEY):
        assert part not in message, message


# -- keys that cannot be a header ------------------------------------------------------------------

BAD_KEYS = [
    ("line break", "Qz7XwV3kJp9LmT2b\nHy6RsD4nFc8GtK1v"),
    ("line break", "Qz7XwV3kJp9LmT2b\r\nHy6RsD4nFc8GtK1v"),
    ("control character", "Qz7XwV3kJp9LmT2b\x1bHy6RsD4nFc8GtK1v"),
    ("non-ASCII", "Qz7XwV3kJp9LmT2b\u2019Hy6RsD4nFc8GtK1v"),
    ("whitespace", "Qz7XwV3kJp9LmT2b Hy6RsD4nFc8GtK1v"),
    ("whitespace", "Qz7XwV3kJp9LmT2b\tHy6RsD4nFc8GtK1v"),
]


@pytest.mark.parametrize("what,value", BAD_KEYS)
@pytest.mark.parametrize("env_name", [None, "GSVR_TEST_MY_KEY"])
def test_unsendable_key_is_refused_naming_variable_and_position_never_value(monkeypatch, what, value, env_name):
    for name in ("GEMINI_API_KEY", "GOOGLE_API_KEY", "GSVR_TEST_MY_KEY"):
        monkeypatch.delenv(name, raising=False)
    var = env_name or "GEMINI_API_KEY"
    monkeypatch.setenv(var, value)
    with pytest.raises(CredentialsError) as info:
        gemini.resolve_credentials(env_name, sandbox=False)
    msg = str(info.value)
    assert info.value.exit_code == 2
    assert var in msg and what in msg and "at character 17 of " in msg, msg
    assert not any(part in msg for part in pieces(value, 4) if part.strip())  # not even 4 characters of it
    # the client builders refuse it too (`cancel` and workers build clients without resolve_credentials)
    with pytest.raises(CredentialsError):
        gemini.make_client(gemini.WorkerConfig(base_url="http://127.0.0.1:9/", api_version=None, api_key_env=env_name,
                                               request_timeout=5, limiter_path=None))


def test_nul_is_named_too():
    # (an environment variable cannot hold NUL, but a key may come from elsewhere one day)
    assert secrets.header_value_problem("Qz7XwV3kJp9LmT2b\x00Hy6RsD4nFc8GtK1v") == "contains a NUL character at character 17 of 33"
    assert secrets.header_value_problem(FAKE_KEY) is None


def test_surrounding_whitespace_is_still_fine(monkeypatch):
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", f"  {FAKE_KEY}\n")  # `echo KEY > file` leaves a newline
    assert gemini.resolve_credentials(None, sandbox=False).source == "GEMINI_API_KEY"


# -- registration ----------------------------------------------------------------------------------

def _redact_in_child(text: str) -> str:
    from gsvr_batch import secrets as child_secrets

    return child_secrets.redact(text)


def test_spawned_workers_redact_env_secrets_they_inherit(monkeypatch):
    """A worker starts with an empty registry; variable NAMES travel in its environment."""
    monkeypatch.setenv("GSVR_TEST_CUSTOM_KEY", FAKE_KEY)
    monkeypatch.setenv("GSVR_TEST_SMTP_PW", SMTP_PASSWORD)
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    gemini.resolve_credentials("GSVR_TEST_CUSTOM_KEY", sandbox=False)  # registers the manifest's api_key_env
    secrets.register_notify_targets([{"type": "email", "password_env": "GSVR_TEST_SMTP_PW"}])
    secrets.register("literal-FAKE-only-in-the-manager")
    assert FAKE_KEY not in os.environ[secrets.ENV_NAMES_VAR]  # names travel, never values
    text = f"a {FAKE_KEY} b {SMTP_PASSWORD} c literal-FAKE-only-in-the-manager"
    assert secrets.redact(text) == "a *** b *** c ***"
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        got = pool.submit(_redact_in_child, text).result(timeout=120)
    # literal values stay in the process that registered them (documented)
    assert got == "a *** b *** c literal-FAKE-only-in-the-manager"


def test_register_notify_targets_covers_urls_headers_and_passwords(monkeypatch):
    monkeypatch.setenv("GSVR_TEST_HOOK_URL", f"https://hooks.example.org/in/{HOOK_TOKEN}")
    monkeypatch.setenv("GSVR_TEST_HDR", "hdr-FAKE-Ww2Ee4")
    monkeypatch.setenv("GSVR_TEST_PW", SMTP_PASSWORD)
    secrets.register_notify_targets([
        f"https://hooks.slack.com/services/T0FAKE01/B0FAKE02/{HOOK_TOKEN}x",
        {"url": "https://h.example.org/in?token=qs-FAKE-Rr5Tt7"},
        {"url": "${GSVR_TEST_HOOK_URL}", "headers": {"Authorization": "Bearer lit-FAKE-Yy8Uu0"},
         "headers_env": {"X-Key": "GSVR_TEST_HDR"}},
        {"type": "email", "password_env": "GSVR_TEST_PW"},
    ])
    text = (f"{HOOK_TOKEN}x | qs-FAKE-Rr5Tt7 | {HOOK_TOKEN} | Bearer lit-FAKE-Yy8Uu0 | hdr-FAKE-Ww2Ee4 | "
            f"{SMTP_PASSWORD} | {urllib.parse.quote(SMTP_PASSWORD + '/x', safe='')}")
    out = secrets.redact(text)
    for leaked in (HOOK_TOKEN, "qs-FAKE", "lit-FAKE", "hdr-FAKE", "smtpFAKE"):
        assert leaked not in out, out
    assert secrets.redact("see the services docs") == "see the services docs"  # a plain path word


def test_log_records_are_scrubbed_message_arguments_and_traceback(monkeypatch):
    import io
    import logging

    monkeypatch.setenv("GEMINI_API_KEY", FAKE_KEY)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        secrets.install_log_redaction()
        log = logging.getLogger("gsvr_batch.test_secrets")  # a child logger: the handler's filter sees it
        log.warning("sending %r", FAKE_KEY)
        try:
            raise RuntimeError(f"Illegal header value {FAKE_KEY.encode()!r}")
        except RuntimeError:
            log.exception("call failed")
    finally:
        root.removeHandler(handler)
    text = stream.getvalue()
    assert "sending '***'" in text and "RuntimeError: Illegal header value b'***'" in text
    assert not any(part in text for part in pieces(FAKE_KEY))


def test_redact_url_shows_host_and_a_redacted_path():
    assert (secrets.redact_url("https://hooks.slack.com/services/T0123ABCD/B0456EFGH/FAKEsecret")
            == "https://hooks.slack.com/services/T0…/B0…/***")
    assert secrets.redact_url("http://127.0.0.1:8080/hook?token=FAKE") == "http://127.0.0.1:8080/***?***"
    assert secrets.redact_url("https://hooks.example.org") == "https://hooks.example.org"
    assert secrets.redact_url("${HOOK_URL}") == "${HOOK_URL}"
    assert secrets.redact_url("https://me:FAKEpw@h.example.org/") == "https://***@h.example.org/"


# -- end to end: every artifact, every byte printed ------------------------------------------------

@pytest.fixture
def receiver():
    """A real webhook receiver; yields (base URL, list of (path, body bytes))."""
    got: list[tuple[str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server naming
            got.append((self.path, self.rfile.read(int(self.headers.get("Content-Length") or 0))))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", got
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def smtp():
    """A real SMTP server (aiosmtpd) that accepts SMTP_PASSWORD; yields (port, list of messages)."""
    aiosmtpd = pytest.importorskip("aiosmtpd.controller")
    from aiosmtpd.smtp import AuthResult

    messages: list[bytes] = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            messages.append(envelope.original_content or envelope.content)
            return "250 OK"

    def auth(server, session, envelope, mechanism, data):
        return AuthResult(success=data.password == SMTP_PASSWORD.encode(), handled=False)

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    ctl = aiosmtpd.Controller(Handler(), hostname="127.0.0.1", port=port, authenticator=auth,
                              auth_require_tls=False)
    ctl.start()
    yield port, messages
    ctl.stop()


def _needles() -> dict[str, bytes]:
    """Every byte string that would betray a secret: all forms and 12-character pieces."""
    out: dict[str, bytes] = {}
    for label, value in (("key", FAKE_KEY), ("newline key", NEWLINE_KEY), ("webhook token", HOOK_TOKEN),
                         ("smtp password", SMTP_PASSWORD)):
        for name, form in escaped_forms(value).items():
            out[f"{label} ({name})"] = form.encode()
        for line in value.splitlines():
            if len(line.strip()) >= 8:
                out[f"{label} (line)"] = line.strip().encode()
        for part in pieces(value):
            out[f"{label} (piece {part!r})"] = part.encode()
    return out


def _leaks(blobs: dict[str, bytes]) -> list[str]:
    """One line per (place, secret) found: "journal.jsonl: newline key (bytes repr, piece ...)"."""
    out = []
    for where, data in blobs.items():
        found: dict[str, list[str]] = {}
        for what, needle in _needles().items():
            if needle in data:
                label, form = what.split(" (", 1)
                found.setdefault(label, []).append(form.rstrip(")"))
        out += [f"{where}: {label} ({', '.join(forms[:4])}{', ...' if len(forms) > 4 else ''})"
                for label, forms in found.items()]
    return out


@pytest.mark.slow
def test_no_secret_in_any_artifact_of_any_kind_of_batch(tmp_path, sandbox, receiver, smtp, request):
    hook_base, received = receiver
    smtp_port, mails = smtp
    hook_url = f"{hook_base}/services/T0FAKE/B0FAKE/{HOOK_TOKEN}"
    # TMPDIR of every run: a crash report would land there, and is searched. Short, outside
    # tmp_path: multiprocessing puts AF_UNIX sockets there (108-byte path limit).
    tmp = Path(tempfile.mkdtemp(prefix="gsvr-e2e-"))
    request.addfinalizer(lambda: shutil.rmtree(tmp, ignore_errors=True))
    good = sandbox(api_key=FAKE_KEY)
    refusing = sandbox(api_key=OTHER_KEY)
    outputs: dict[str, bytes] = {}

    def run(label: str, args: list, env: dict) -> subprocess.CompletedProcess:
        r = run_cli(args, env={**env, "TMPDIR": str(tmp)})
        outputs[f"{label} stdout"] = r.stdout.encode()
        outputs[f"{label} stderr"] = r.stderr.encode()
        return r

    def env(server) -> dict:
        return env_for(None, GOOGLE_GEMINI_BASE_URL=server.base_url, GEMINI_API_KEY=FAKE_KEY,
                       GSVR_E2E_HOOK_URL=hook_url, GSVR_E2E_SMTP_PASSWORD=SMTP_PASSWORD)

    # 1. a successful folder batch, the secret webhook URL given on the command line
    ok = tmp_path / "ok"
    make_batch(ok, 2)
    r = run("ok run", ["run", ok / "videos", "--template", "summary_report", "--output", ok / "out",
                       "--notify", hook_url, "--rpm", "1000", "--rpd", "100000", "--progress", "log"], env(good))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (ok / "out" / ".gsvr" / "manifest.derived.yaml").exists()

    # 2. a YAML batch where a task fails; the webhook URL as ${VAR}, plus an e-mail target
    failing = tmp_path / "failing"
    notify = (f"notify:\n  - url: ${{GSVR_E2E_HOOK_URL}}\n"
              f"  - type: email\n    host: 127.0.0.1\n    port: {smtp_port}\n    starttls: false\n"
              f"    user: lessons\n    password_env: GSVR_E2E_SMTP_PASSWORD\n    from: lessons@example.org\n"
              f"    to: [teacher@example.org]\n")
    m_fail = make_batch(failing, 2, names=["lecture-000.mp4", "lecture-sandbox-block.mp4"], extra_settings=notify)
    r = run("failing run", ["run", m_fail, "--progress", "log"], env(good))
    assert r.returncode == 1, r.stdout + r.stderr

    # 3. an aborted batch: the server refuses the key (fatal, exit 3)
    aborted = tmp_path / "aborted"
    m_abort = make_batch(aborted, 2)
    r = run("aborted run", ["run", m_abort, "--notify", hook_url, "--progress", "log"], env(refusing))
    assert r.returncode == 3, r.stdout + r.stderr

    # every notification arrived, at the secret URL, and said what happened. (Whether a key
    # refused by the API's first answer gets a batch_aborted notification depends on where the
    # runner meets the refusal — before or after the journal is opened; either way, no secret.)
    assert all(p == f"/services/T0FAKE/B0FAKE/{HOOK_TOKEN}" for p, _ in received)
    events = [json.loads(body)["event"] for _, body in received]
    assert events in (["batch_finished", "batch_finished"], ["batch_finished", "batch_finished", "batch_aborted"])
    assert len(mails) == 1
    notified = len(received)

    # reports of each journal, in every format, written to files
    for label in ("ok", "failing", "aborted"):
        journal = tmp_path / label / "out" / ".gsvr" / "journal.jsonl"
        if label == "aborted" and not records(journal):
            continue  # refused before the batch was journaled: nothing to report
        assert records(journal), label
        for fmt in ("md", "json", "html"):
            r = run(f"{label} report {fmt}", ["report", journal, "--format", fmt,
                                              "-o", tmp_path / label / f"report.{fmt}"], env(good))
            assert r.returncode == 0, r.stdout + r.stderr

    # 4. a key with an inner newline: refused before any work, named, never shown
    refused = tmp_path / "refused"
    m_refused = make_batch(refused, 1)
    requests_before = len(good.requests)
    r = run("refused run", ["run", m_refused, "--notify", hook_url, "--progress", "log"],
            {**env(good), "GEMINI_API_KEY": NEWLINE_KEY})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "GEMINI_API_KEY" in r.stderr and "line break" in r.stderr
    assert not (refused / "out").exists()
    assert len(good.requests) == requests_before and len(received) == notified

    # now search: every file under the batches, the state folders, the reports and TMPDIR,
    # everything printed, everything the receivers got (the URL path aside, which is the point)
    files = {str(p): p.read_bytes() for root in (tmp_path, tmp) for p in root.rglob("*")
             if p.is_file() and not p.is_symlink()}
    assert any(p.endswith("journal.jsonl") for p in files) and any(p.endswith("report.html") for p in files)
    assert any(p.endswith("manifest.derived.yaml") for p in files)
    sent = {f"webhook body {i}": body for i, (_, body) in enumerate(received)}
    sent.update({f"e-mail {i}": m for i, m in enumerate(mails)})
    leaks = _leaks({**files, **outputs, **sent})
    assert leaks == [], "\n".join(leaks[:20])


@pytest.mark.slow
def test_derived_manifest_keeps_env_references_and_retry_uses_them(tmp_path, sandbox, receiver):
    """`--notify '${VAR}'` survives into the derived manifest, so `retry` of a folder batch notifies."""
    hook_base, received = receiver
    server = sandbox(api_key=FAKE_KEY)
    make_batch(tmp_path, 1, names=["lecture-sandbox-block.mp4"])
    env = env_for(None, GOOGLE_GEMINI_BASE_URL=server.base_url, GEMINI_API_KEY=FAKE_KEY,
                  GSVR_E2E_HOOK_URL=f"{hook_base}/in/{HOOK_TOKEN}")
    r = run_cli(["run", tmp_path / "videos", "--template", "summary_report", "--output", tmp_path / "out",
                 "--notify", "${GSVR_E2E_HOOK_URL}", "--progress", "log"], env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    derived = (tmp_path / "out" / ".gsvr" / "manifest.derived.yaml").read_text()
    assert "${GSVR_E2E_HOOK_URL}" in derived and HOOK_TOKEN not in derived
    r = run_cli(["retry", tmp_path / "out" / ".gsvr" / "journal.jsonl", "--failed", "--progress", "log"], env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert [p for p, _ in received] == [f"/in/{HOOK_TOKEN}"] * 2
    assert HOOK_TOKEN not in r.stdout + r.stderr
