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
    # host, a redacted path and the target's place in the list; no token
    assert r.target == f"webhook {base}/***?*** (target 1)" and "token" not in r.target
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
    assert r.target.endswith("/services/T0…/B0…/*** (target 1)")
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
    v = notify.public_view({"url": "https://hooks.slack.com/services/T0123ABCD/B0456EFGH/XXXX-not-real"})
    assert v == {"url": "https://hooks.slack.com/services/T0…/B0…/***", "kind": "slack"}
    v = notify.public_view({"url": "https://h.example.org:8443/x?token=abc", "headers": {"Authorization": "Bearer t"},
                            "headers_env": {"X-Key": "HOOK_KEY"}})
    assert v["url"] == "https://h.example.org:8443/***?***" and v["headers"] == {"Authorization": "***"}
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
    assert r1.target == f"webhook {dead.rsplit('/', 1)[0]}/*** (target 1)"
    assert r2.ok and len(got) == 1


def test_event_filters_and_the_cost_limit_alias(http_server):
    base, got, _ = http_server
    targets = [{"url": base + "/a", "events": ["batch_finished"]},
               {"url": base + "/b", "events": ["cost_limit_reached"]}]
    assert notify.send("quota_exhausted", PAYLOAD, targets, sleep=no_sleep) == []
    [r] = notify.send("cost_limit", PAYLOAD, targets, sleep=no_sleep)  # the runner's name for it
    assert r.ok and [g[0] for g in got] == ["/b"]


def test_validation_reports_every_problem_without_echoing_secrets(monkeypatch):
    monkeypatch.setenv("P", "smtp-password-not-real")
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
    assert r.target == f"email to teacher@example.org, head@example.org via 127.0.0.1:{port} (target 1)"
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


# -- report path, ${VAR} references, telling targets apart, derived manifests ---------------------

def test_report_path_reaches_every_body(http_server, smtp_server, monkeypatch, tmp_path):
    """The runner passes ``report`` (maybe a pathlib.Path); every body carries it."""
    base, got, _ = http_server
    report = tmp_path / "report.html"
    # a Path (JSON cannot encode it) and a payload that also has report_path: None
    payload = {**PAYLOAD, "report": report, "report_path": None}
    r1, r2 = notify.send("batch_finished", payload, [base + "/hook", {"type": "slack", "url": base + "/s/T/B/X"}],
                         sleep=no_sleep)
    assert r1.ok and r2.ok, (r1.error, r2.error)
    assert got[0][2]["report_path"] == str(report) and f"report: {report}" in got[0][2]["text"]
    fields = [f["text"] for f in got[1][2]["blocks"][1]["fields"]]
    assert f"*Report*\n{report}" in fields
    rec, port = smtp_server(auth_require_tls=False)
    monkeypatch.setenv("GSVR_TEST_SMTP_PASSWORD", SECRET)
    [r] = notify.send("batch_finished", payload, [email_target(port, starttls=False)], sleep=no_sleep)
    assert r.ok, r.error
    body = message_from_string(rec.messages[0][2]).get_payload(decode=True).decode()
    assert f"report: {report}" in body
    # no report: null / no line, not the text "None"
    notify.send("batch_finished", {**PAYLOAD, "report": None}, [base + "/hook"], sleep=no_sleep)
    assert got[-1][2]["report_path"] is None and "report:" not in got[-1][2]["text"]


def test_two_targets_on_one_host_are_told_apart_without_their_secrets():
    dead = f"http://127.0.0.1:{free_port()}"
    tokens = ["tok-first-FAKE-0a1b2c3d4e", "tok-second-FAKE-9z8y7x6w"]
    results = notify.send("batch_finished", PAYLOAD, [f"{dead}/services/T0FAKE1/B0AAA/{tokens[0]}",
                                                      f"{dead}/services/T0FAKE1/B0BBB/{tokens[1]}"],
                          attempts=1, sleep=no_sleep)
    assert len({r.target for r in results}) == 2
    for r in results:
        assert not r.ok and "/services/T0…/B0…/***" in r.target and dead in r.target
        assert not any(t in repr(r) for t in tokens)
    assert [r.target.rsplit(" ", 2)[-2:] for r in results] == [["(target", "1)"], ["(target", "2)"]]


def test_env_references_in_url_and_headers_are_expanded_when_sent(http_server, monkeypatch):
    base, got, _ = http_server
    monkeypatch.setenv("GSVR_TEST_HOOK_URL", base + "/hook/tok-FAKE-from-env-31337")
    monkeypatch.setenv("GSVR_TEST_HOOK_TOKEN", "bearer-FAKE-token-4242")
    target = {"url": "${GSVR_TEST_HOOK_URL}", "headers": {"Authorization": "Bearer ${GSVR_TEST_HOOK_TOKEN}"}}
    assert notify.validate_targets([target]) == []
    [r] = notify.send("batch_finished", PAYLOAD, [target], sleep=no_sleep)
    assert r.ok, r.error
    assert got[0][0] == "/hook/tok-FAKE-from-env-31337"
    assert got[0][1]["Authorization"] == "Bearer bearer-FAKE-token-4242"
    # what may be shown or written keeps the reference, not the value
    assert r.target == "webhook ${GSVR_TEST_HOOK_URL} (target 1)"
    assert notify.public_view(target)["url"] == "${GSVR_TEST_HOOK_URL}"
    assert notify.storable(target) == target
    # a reference to a Slack URL is sent in Slack's format
    monkeypatch.setenv("GSVR_TEST_SLACK_URL", "https://hooks.slack.com/services/T/B/X")
    assert notify.normalise({"url": "${GSVR_TEST_SLACK_URL}"})["kind"] == "slack"


def test_unset_variables_are_found_before_any_work_and_named(monkeypatch):
    for name in ("GSVR_TEST_UNSET_URL", "GSVR_TEST_UNSET_TOKEN", "GSVR_TEST_UNSET_SMTP", "GSVR_TEST_UNSET_HDR"):
        monkeypatch.delenv(name, raising=False)
    problems = notify.validate_targets([
        {"url": "https://hooks.example.org/${GSVR_TEST_UNSET_URL}"},
        {"url": "https://hooks.example.org/x", "headers": {"Authorization": "Bearer ${GSVR_TEST_UNSET_TOKEN}"},
         "headers_env": {"X-Key": "GSVR_TEST_UNSET_HDR"}},
        # the README's own e-mail example, with its password variable not exported
        {"type": "email", "host": "smtp.example.org", "port": 587, "user": "lessons@example.org",
         "password_env": "GSVR_TEST_UNSET_SMTP", "from": "lessons@example.org", "to": ["teacher@example.org"]},
        {"url": "https://hooks.example.org/${not a name}"},
    ])
    text = "\n".join(problems)
    assert "notify target 1 (webhook): url refers to ${GSVR_TEST_UNSET_URL}" in text and "not set" in text
    assert "notify target 2 (webhook): header Authorization refers to ${GSVR_TEST_UNSET_TOKEN}" in text
    assert "headers_env names GSVR_TEST_UNSET_HDR for header X-Key, but GSVR_TEST_UNSET_HDR is not set" in text
    assert "notify target 3 (email): password_env names GSVR_TEST_UNSET_SMTP, but GSVR_TEST_UNSET_SMTP is not set" \
        in text
    assert "notify target 4 (webhook): url has a malformed reference" in text
    monkeypatch.setenv("GSVR_TEST_UNSET_SMTP", "set-now-not-real")
    assert not [p for p in notify.validate_targets([
        {"type": "email", "host": "smtp.example.org", "user": "u", "password_env": "GSVR_TEST_UNSET_SMTP",
         "from": "a@b", "to": "c@d"}])]


def test_bad_url_from_a_variable_is_named_not_shown(monkeypatch):
    monkeypatch.setenv("GSVR_TEST_BAD_URL", "ftp-not-a-url-secret-FAKE-777")
    [p] = notify.validate_targets([{"url": "${GSVR_TEST_BAD_URL}"}])
    assert "GSVR_TEST_BAD_URL" in p and "secret-FAKE-777" not in p and "ftp-not" not in p
    [p] = notify.validate_targets([{"url": "ftp://files.example.org/tok-FAKE-abcdef123"}])
    assert "ftp://files.example.org" in p and "tok-FAKE" not in p


def test_storable_keeps_references_and_redacts_literal_secrets_which_validation_refuses():
    secret = "FAKEsecretTOKENnotreal0123"
    literal = {"type": "webhook", "url": f"https://hooks.slack.com/services/T0FAKE/B0FAKE/{secret}"}
    stored = notify.storable(literal)
    assert secret not in repr(stored) and stored["url"] == "https://hooks.slack.com/services/T0…/B0…/***"
    [p] = notify.validate_targets([stored])
    assert "redacted copy" in p and "${VAR}" in p and secret not in p
    # the redacted copy is never posted anywhere
    [r] = notify.send("batch_finished", PAYLOAD, [stored], sleep=no_sleep)
    assert not r.ok and r.attempts == 1 and "redacted" in r.error
    # a URL with no secret part and a reference are written as they are
    assert notify.storable({"url": "https://hooks.example.org/"}) == {"url": "https://hooks.example.org/"}
    assert notify.storable({"url": "https://hooks.slack.com/services/${SLACK_PATH}"})["url"].endswith("${SLACK_PATH}")
    # user-info: marked, not silently dropped (that would be another, valid URL)
    assert notify.storable({"url": "https://me:pw-FAKE-123@h.example.org"})["url"] == "https://***@h.example.org"
    # literal header values and passwords never reach the file
    stored = notify.storable({"url": "https://h.example.org", "headers": {"Authorization": "Bearer FAKE-abc-123",
                                                                          "X-Ref": "${HOOK_REF}"},
                              "password": "FAKE-pw"})
    assert stored == {"url": "https://h.example.org", "headers": {"Authorization": "***", "X-Ref": "${HOOK_REF}"}}
    assert any("header Authorization is a redacted copy" in p for p in notify.validate_targets([stored]))
