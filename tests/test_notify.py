"""Notifications against a real local HTTP server and a real local SMTP server (aiosmtpd)."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gsvr_batch import notify

PAYLOAD = {"batch_id": "b123", "manifest": "m.yaml", "counts": {"completed": 3, "failed": 1, "total": 4},
           "cost_usd": 0.0123, "journal": "/x/journal.jsonl", "message": "all tasks done", "exit_code": 1}


@pytest.fixture
def http_server():
    got: list[tuple[str, dict, dict]] = []
    plan: list[int] = []  # status codes to answer, in order; then 200

    class H(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            got.append((self.path, dict(self.headers), json.loads(body)))
            code = plan.pop(0) if plan else 200
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", got, plan
    srv.shutdown()
    srv.server_close()


def test_generic_webhook_posts_the_facts(http_server):
    base, got, _ = http_server
    [r] = notify.send("batch_finished", PAYLOAD, [base + "/hook?token=secret"], sleep=lambda s: None)
    assert r.ok and r.attempts == 1 and "secret" not in r.target
    path, headers, body = got[0]
    assert path == "/hook?token=secret" and headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("gsvr-batch/")
    assert body["event"] == "batch_finished" and body["batch_id"] == "b123" and body["counts"]["failed"] == 1
    assert body["cost_usd"] == 0.0123 and "report_path" in body


def test_slack_format(http_server):
    base, got, _ = http_server
    [r] = notify.send("batch_aborted", PAYLOAD, [{"type": "slack", "url": base + "/services/T/B/X"}],
                      sleep=lambda s: None)
    assert r.ok
    body = got[0][2]
    assert "batch aborted" in body["text"]
    assert body["blocks"][0]["type"] == "header" and body["blocks"][2]["fields"]


def test_server_errors_are_retried_then_succeed(http_server):
    base, got, plan = http_server
    plan += [500, 503]
    slept = []
    [r] = notify.send("cost_limit", PAYLOAD, [{"kind": "webhook", "url": base}], sleep=slept.append)
    assert r.ok and r.attempts == 3 and len(got) == 3 and slept == [1.0, 2.0]


def test_dead_target_fails_without_raising():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    [r] = notify.send("batch_finished", PAYLOAD, [f"http://127.0.0.1:{port}/x"], sleep=lambda s: None)
    assert not r.ok and r.attempts == 3 and "Connection refused" in r.error


def test_events_filter_and_validation():
    assert notify.send("quota_exhausted", PAYLOAD, [{"url": "http://127.0.0.1:9/x", "events": ["batch_finished"]}]) == []
    problems = notify.validate_targets([
        {"type": "pager", "url": "http://x"}, {"url": "ftp://x"}, "not-a-url",
        {"type": "email", "host": "smtp.x", "to": ["a@b"], "password": "hunter2-literal"},
        {"url": "https://ok.example.org", "events": ["batch_exploded"]},
    ])
    text = "\n".join(problems)
    assert "unknown type 'pager'" in text and "must be an http(s) URL" in text
    assert "missing 'from'" in text and "password_env" in text and "hunter2" not in text
    assert "unknown event 'batch_exploded'" in text
    assert notify.validate_targets(["https://hooks.example.org/x", {"type": "slack", "url": "https://hooks.slack.com/s"}]) == []


def test_email_through_a_real_smtp_server_with_auth(monkeypatch):
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    received = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            received.append((envelope.mail_from, envelope.rcpt_tos, envelope.content.decode()))
            return "250 OK"

    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"s3cret-from-env")

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    ctl = Controller(Handler(), hostname="127.0.0.1", port=port, authenticator=authenticator,
                     auth_require_tls=False)
    ctl.start()
    try:
        monkeypatch.setenv("GSVR_TEST_SMTP_PASSWORD", "s3cret-from-env")
        target = {"type": "email", "host": "127.0.0.1", "port": port,
                  "starttls": False, "user": "lessons", "password_env": "GSVR_TEST_SMTP_PASSWORD",
                  "from": "lessons@example.org", "to": ["teacher@example.org"]}
        [r] = notify.send("batch_finished", PAYLOAD, [target], sleep=lambda s: None)
        assert r.ok, r.error
        assert logins == [(b"lessons", b"s3cret-from-env")]
        mail_from, to, content = received[0]
        assert mail_from == "lessons@example.org" and to == ["teacher@example.org"]
        assert "Subject: [gsvr-batch] batch finished: b123" in content and "3 completed" in content
        assert "s3cret" not in r.target and "s3cret" not in (r.error or "")
        # wrong password: fails, the secret is not echoed
        monkeypatch.setenv("GSVR_TEST_SMTP_PASSWORD", "wrong-one")
        [r2] = notify.send("batch_finished", PAYLOAD, [target], attempts=1)
        assert not r2.ok and "wrong-one" not in (r2.error or "")
    finally:
        ctl.stop()
