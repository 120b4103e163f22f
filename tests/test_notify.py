"""Notifications against a real local HTTP server and a real local SMTP server (aiosmtpd)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import socket
import ssl
import threading
from email import message_from_string
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gsvr_batch import notify

PAYLOAD = {"batch_id": "b123", "manifest": "jobs/m.yaml", "exit_code": 1, "message": "1 task(s) failed",
           "counts": {"completed": 3, "skipped": 0, "failed": 1, "pending": 0, "total": 4},
           "cost_usd": 0.0123, "journal": "/x/.gsvr/journal.jsonl", "report": "/x/report.md"}
SECRET = "s3cret-from-env-not-real"


def no_sleep(_s: float) -> None:
    pass


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


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_generic_webhook_posts_the_facts(http_server, monkeypatch):
    base, got, _ = http_server
    monkeypatch.setenv("GSVR_TEST_HOOK_AUTH", "Bearer hook-token-not-real")
    target = {"url": base + "/hook?token=qs-token-not-real", "headers": {"X-Team": "maths"},
              "headers_env": {"Authorization": "GSVR_TEST_HOOK_AUTH"}}
    [r] = notify.send("batch_finished", PAYLOAD, [target], sleep=no_sleep)
    assert r.ok and r.attempts == 1 and r.error is None and r.event == "batch_finished"
    assert r.target == f"webhook {base}" and "token" not in r.target
    path, headers, body = got[0]
    assert path == "/hook?token=qs-token-not-real"
    assert headers["Content-Type"] == "application/json" and headers["User-Agent"].startswith("gsvr-batch/")
    assert headers["Authorization"] == "Bearer hook-token-not-real" and headers["X-Team"] == "maths"
    assert body["event"] == "batch_finished" and body["batch_id"] == "b123" and body["manifest"] == "jobs/m.yaml"
    assert body["counts"]["failed"] == 1 and body["cost_usd"] == 0.0123 and body["report_path"] == "/x/report.md"
    assert body["message"] == "1 task(s) failed" and body["ts"].endswith("Z") and "3 completed" in body["text"]


def test_slack_format(http_server):
    base, got, _ = http_server
    [r] = notify.send("batch_aborted", PAYLOAD, [{"type": "slack", "url": base + "/services/T0/B0/XXXX"}],
                      sleep=no_sleep)
    assert r.ok and r.target.startswith("slack http://127.0.0.1") and "XXXX" not in r.target
    body = got[0][2]
    assert body["text"].startswith("gsvr-batch batch aborted: 1 task(s) failed")
    header, section = body["blocks"]
    assert header == {"type": "header", "text": {"type": "plain_text", "text": "gsvr-batch: batch aborted"}}
    assert section["type"] == "section" and section["text"]["text"] == "1 task(s) failed"
    fields = {f["text"].split("\n")[0]: f["text"].split("\n")[1] for f in section["fields"]}
    assert fields["*Completed*"] == "3 of 4" and fields["*Failed*"] == "1" and fields["*Cost*"] == "$0.0123"


def test_target_kinds_are_inferred():
    assert notify.normalise("https://hooks.example.org/x")["kind"] == "webhook"
    assert notify.normalise("https://hooks.slack.com/services/T/B/X")["kind"] == "slack"
    # --notify URL arrives as an explicit webhook; Slack only accepts its own format
    assert notify.normalise({"type": "webhook", "url": "https://hooks.slack.com/services/T/B/X"})["kind"] == "slack"
    assert notify.normalise({"host": "smtp.example.org", "to": "a@b"})["kind"] == "email"
    assert notify.normalise({"kind": "Slack", "url": "https://x.example.org"})["kind"] == "slack"


def test_public_view_hides_every_secret():
    v = notify.public_view({"url": "https://hooks.slack.com/services/T0/B0/XXXX-not-real"})
    assert v == {"url": "https://hooks.slack.com", "kind": "slack"}
    v = notify.public_view({"url": "https://h.example.org:8443/x?token=abc", "headers": {"Authorization": "Bearer t"},
                            "headers_env": {"X-Key": "HOOK_KEY"}})
    assert v["url"] == "https://h.example.org:8443" and v["headers"] == {"Authorization": "***"}
    assert v["headers_env"] == {"X-Key": "HOOK_KEY"}  # the variable's name, not its value
    v = notify.public_view({"type": "email", "host": "smtp.x", "password": "hunter2-not-real", "password_env": "P"})
    assert "password" not in v and v["password_env"] == "P" and v["kind"] == "email"


def test_server_errors_are_retried_with_backoff_then_succeed(http_server):
    base, got, plan = http_server
    plan += [500, 503]
    slept: list[float] = []
    [r] = notify.send("cost_limit", PAYLOAD, [{"kind": "webhook", "url": base}], sleep=slept.append)
    assert r.ok and r.attempts == 3 and len(got) == 3 and slept == [1.0, 2.0]


def test_client_errors_are_not_retried(http_server):
    base, got, plan = http_server
    plan += [404]
    [r] = notify.send("batch_finished", PAYLOAD, [base + "/gone"], sleep=no_sleep)
    assert not r.ok and r.attempts == 1 and len(got) == 1 and r.error == "HTTP 404 Not Found"


def test_dead_target_fails_without_raising_and_others_still_get_it(http_server):
    base, got, _ = http_server
    dead = f"http://127.0.0.1:{free_port()}/x"
    r1, r2 = notify.send("batch_finished", PAYLOAD, [dead, base], sleep=no_sleep)
    assert not r1.ok and r1.attempts == 3 and "Connection refused" in r1.error and "/x" not in r1.target
    assert r2.ok and len(got) == 1


def test_event_filters_and_the_cost_limit_alias(http_server):
    base, got, _ = http_server
    targets = [{"url": base + "/a", "events": ["batch_finished"]},
               {"url": base + "/b", "events": ["cost_limit_reached"]}]
    assert notify.send("quota_exhausted", PAYLOAD, targets, sleep=no_sleep) == []
    [r] = notify.send("cost_limit", PAYLOAD, targets, sleep=no_sleep)  # the runner's name for it
    assert r.ok and [g[0] for g in got] == ["/b"]


def test_validation_reports_every_problem_without_echoing_secrets():
    problems = notify.validate_targets([
        {"type": "pager", "url": "http://x"}, {"url": "ftp://x.example.org/hook"}, "not-a-url",
        {"type": "email", "host": "smtp.x", "to": ["a@b"], "password": "hunter2-literal-not-real"},
        {"type": "email", "to": "a@b", "from": "c@d", "user": "me"},
        {"url": "https://ok.example.org", "events": ["batch_exploded"], "heders": {}},
        {"type": "slack"}, 42,
    ])
    text = "\n".join(problems)
    assert "notify target 1: unknown type 'pager'" in text
    assert "notify target 2 (webhook): url must be an http(s) URL" in text
    assert "notify target 3 (webhook): url must be an http(s) URL" in text
    assert "notify target 4 (email): missing 'from'" in text and "password_env" in text
    assert "hunter2" not in text
    assert "notify target 5 (email): missing 'host'" in text and "'user' given without password_env" in text
    assert "unknown event 'batch_exploded'" in text and "unknown key(s) heders" in text
    assert "notify target 7 (slack): missing 'url'" in text and "notify target 8: expected a URL" in text
    assert notify.validate_targets([
        "https://hooks.example.org/x", {"type": "slack", "url": "https://hooks.slack.com/s"},
        {"type": "email", "host": "smtp.x", "from": "a@b", "to": ["c@d"], "user": "u", "password_env": "P",
         "events": ["cost_limit", "batch_finished"]}]) == []


# -- e-mail --------------------------------------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], str]] = []
        self.logins: list[tuple[bytes, bytes]] = []
        self.tls: list[bool] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.tls.append(session.ssl is not None)
        self.messages.append((envelope.mail_from, envelope.rcpt_tos, envelope.content.decode()))
        return "250 OK"

    def authenticator(self, server, session, envelope, mechanism, auth_data):
        from aiosmtpd.smtp import AuthResult

        self.logins.append((auth_data.login, auth_data.password))
        ok = auth_data.password == SECRET.encode()
        return AuthResult(success=ok, handled=False)  # handled=False: the server answers 535 itself


@pytest.fixture
def smtp_server():
    from aiosmtpd.controller import Controller

    # aiosmtpd logs the refused TLS handshake of the certificate test as an error with a traceback
    mail_log = logging.getLogger("mail.log")
    level = mail_log.level
    mail_log.setLevel(logging.CRITICAL)
    started = []

    def start(**kw):
        rec = Recorder()
        port = free_port()
        ctl = Controller(rec, hostname="127.0.0.1", port=port, authenticator=rec.authenticator, **kw)
        ctl.start()
        started.append(ctl)
        return rec, port

    yield start
    for ctl in started:
        ctl.stop()
    mail_log.setLevel(level)


def email_target(port: int, **kw) -> dict:
    return {"type": "email", "host": "127.0.0.1", "port": port, "user": "lessons",
            "password_env": "GSVR_TEST_SMTP_PASSWORD", "from": "lessons@example.org",
            "to": ["teacher@example.org", "head@example.org"], **kw}


def test_email_through_a_real_smtp_server_with_auth(smtp_server, monkeypatch):
    rec, port = smtp_server(auth_require_tls=False)
    monkeypatch.setenv("GSVR_TEST_SMTP_PASSWORD", SECRET)
    target = email_target(port, starttls=False, subject_prefix="[lessons]")
    [r] = notify.send("batch_finished", PAYLOAD, [target], sleep=no_sleep)
    assert r.ok, r.error
    assert r.target == f"email to teacher@example.org, head@example.org via 127.0.0.1:{port}"
    assert rec.logins == [(b"lessons", SECRET.encode())]
    mail_from, to, content = rec.messages[0]
    assert mail_from == "lessons@example.org" and to == ["teacher@example.org", "head@example.org"]
    msg = message_from_string(content)
    assert msg["Subject"] == "[lessons] batch finished: b123" and msg["To"] == "teacher@example.org, head@example.org"
    body = msg.get_payload()
    assert "3 completed, 0 skipped, 1 failed" in body and "cost $0.0123" in body and "report: /x/report.md" in body
    assert SECRET not in content and SECRET not in repr(r)


def test_wrong_or_missing_password_fails_once_and_never_shows_it(smtp_server, monkeypatch):
    rec, port = smtp_server(auth_require_tls=False)
    monkeypatch.setenv("GSVR_TEST_SMTP_PASSWORD", "wrong-one-not-real")
    [r] = notify.send("batch_finished", PAYLOAD, [email_target(port, starttls=False)], sleep=no_sleep)
    assert not r.ok and r.attempts == 1 and "login refused" in r.error  # retrying a refused login is pointless
    assert "wrong-one" not in repr(r) and rec.messages == []
    monkeypatch.delenv("GSVR_TEST_SMTP_PASSWORD")
    [r] = notify.send("batch_finished", PAYLOAD, [email_target(port, starttls=False)], sleep=no_sleep)
    assert not r.ok and r.attempts == 1 and "GSVR_TEST_SMTP_PASSWORD" in r.error and "not set" in r.error


def test_starttls_is_required_by_default(smtp_server, monkeypatch):
    rec, port = smtp_server(auth_require_tls=False)  # a server without STARTTLS
    monkeypatch.setenv("GSVR_TEST_SMTP_PASSWORD", SECRET)
    [r] = notify.send("batch_finished", PAYLOAD, [email_target(port)], sleep=no_sleep)
    assert not r.ok and r.attempts == 1 and "does not offer STARTTLS" in r.error
    assert rec.logins == []  # the password was never sent in clear


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gsvr test smtp")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_email_with_starttls_and_auth_over_tls(smtp_server, monkeypatch, tmp_path):
    pytest.importorskip("cryptography")
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    rec, port = smtp_server(tls_context=server_ctx, require_starttls=True, auth_require_tls=True)
    monkeypatch.setenv("GSVR_TEST_SMTP_PASSWORD", SECRET)
    # default starttls: true; our CA file makes the self-signed certificate trusted
    [r] = notify.send("quota_exhausted", PAYLOAD, [email_target(port, ca_file=str(cert))], sleep=no_sleep)
    assert r.ok, r.error
    assert rec.tls == [True] and rec.logins == [(b"lessons", SECRET.encode())]
    assert "Subject: [gsvr-batch] quota exhausted: b123" in rec.messages[0][2]
    # without the CA file the certificate is refused (verification is on), and nothing is sent
    [r] = notify.send("quota_exhausted", PAYLOAD, [email_target(port)], attempts=2, sleep=no_sleep)
    assert not r.ok and r.attempts == 2 and "CERTIFICATE_VERIFY_FAILED" in r.error and len(rec.messages) == 1
