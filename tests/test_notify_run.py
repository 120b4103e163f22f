"""Notifications from a real run: a real HTTP server on 127.0.0.1 receives the webhook;
a dead URL fails (retried, journaled) without changing the exit code; bad targets exit 2."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import env_for, make_batch, records, run_cli


@pytest.fixture
def webhook():
    """A real webhook receiver; yields (url, list of (path, parsed JSON body))."""
    received: list[tuple[str, dict]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server naming
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                received.append((self.path, json.loads(body or b"{}")))
            except ValueError:
                received.append((self.path, {"raw": body.decode("utf-8", "replace")}))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):  # keep test output clean
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/hook", received
    srv.shutdown()
    srv.server_close()


def dead_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there any more: connection refused
    return f"http://127.0.0.1:{port}/hook"


@pytest.mark.slow
def test_batch_finished_webhook_received_and_journaled(tmp_path, sandbox, webhook):
    server = sandbox()
    url, received = webhook
    m = make_batch(tmp_path, 2, extra_settings=f"notify:\n  - type: webhook\n    url: {url}\n")
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(received) == 1
    path, body = received[0]
    assert path == "/hook"
    text = json.dumps(body)
    assert "batch_finished" in text
    recs = records(tmp_path / "out" / ".gsvr" / "journal.jsonl")
    batch_id = next(x["batch_id"] for x in recs if x["type"] == "batch_created")
    assert batch_id in text
    notes = [x for x in recs if x["type"] == "notification"]
    assert len(notes) == 1 and notes[0]["ok"] is True and notes[0]["event"] == "batch_finished"
    # journaled inside this run, before its run_finished
    types = [x["type"] for x in recs]
    assert types.index("notification") < max(i for i, t in enumerate(types) if t == "run_finished")


@pytest.mark.slow
def test_dead_webhook_is_retried_journaled_and_does_not_change_exit_code(tmp_path, sandbox):
    server = sandbox()
    m = make_batch(tmp_path, 1)
    r = run_cli(["run", m, "--notify", dead_url(), "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "notification" in r.stdout.lower() and "failed" in r.stdout.lower()
    notes = [x for x in records(tmp_path / "out" / ".gsvr" / "journal.jsonl") if x["type"] == "notification"]
    assert len(notes) == 1
    assert notes[0]["ok"] is False and notes[0]["attempts"] > 1 and notes[0]["error"]
    assert (tmp_path / "out" / "lecture-000_summary_report.md").exists()


def test_invalid_notify_target_is_a_usage_error_before_any_work(tmp_path, sandbox):
    server = sandbox()
    m = make_batch(tmp_path, 1, extra_settings="notify:\n  - type: webhook\n    url: not-a-url\n")
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "not-a-url" in r.stderr or "notify" in r.stderr
    assert not (tmp_path / "out" / ".gsvr" / "journal.jsonl").exists()
    assert not [q for q in server.requests if q.get("kind") == "generate"]


@pytest.mark.slow
def test_cost_limit_stop_sends_cost_limit_event(tmp_path, sandbox, webhook):
    server = sandbox()
    url, received = webhook
    m = make_batch(tmp_path, 2)
    r = run_cli(["run", m, "--cost-limit", "0", "--notify", url, "--progress", "log"], env=env_for(server))
    assert r.returncode == 75, r.stdout + r.stderr
    assert len(received) == 1 and "cost_limit" in json.dumps(received[0][1])


# -- secrets and "checked before any work" -----------------------------------------------------------

README_EMAIL = """notify:
  - url: https://hooks.example.org/lessons
  - type: email
    host: smtp.example.org
    port: 587
    user: lessons@example.org
    password_env: GSVR_TEST_README_SMTP_PASSWORD
    from: lessons@example.org
    to: [teacher@example.org]
"""


def test_readme_email_example_gives_no_literal_secret_warning(tmp_path):
    m = make_batch(tmp_path, 1, extra_settings=README_EMAIL)
    r = run_cli(["validate", m], env=env_for(None, GSVR_TEST_README_SMTP_PASSWORD="x-not-real"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "literal secret" not in r.stdout + r.stderr and "warning" not in (r.stdout + r.stderr).lower()


def test_unset_smtp_password_variable_is_a_usage_error_before_any_work(tmp_path, sandbox):
    server = sandbox()
    m = make_batch(tmp_path, 1, extra_settings=README_EMAIL)
    env = env_for(server)
    env.pop("GSVR_TEST_README_SMTP_PASSWORD", None)
    r = run_cli(["run", m, "--progress", "log"], env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "GSVR_TEST_README_SMTP_PASSWORD" in r.stderr and "not set" in r.stderr
    assert not (tmp_path / "out" / ".gsvr" / "journal.jsonl").exists()
    assert not [q for q in server.requests if q.get("kind") == "generate"]


def test_unset_url_variable_is_a_usage_error_naming_it(tmp_path, sandbox):
    server = sandbox()
    m = make_batch(tmp_path, 1, extra_settings="notify:\n  - url: ${GSVR_TEST_UNSET_HOOK}\n")
    r = run_cli(["run", m, "--progress", "log"], env=env_for(server))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "${GSVR_TEST_UNSET_HOOK}" in r.stderr and "not set" in r.stderr
    assert not (tmp_path / "out" / ".gsvr" / "journal.jsonl").exists()


@pytest.mark.slow
def test_secret_notify_url_never_reaches_the_derived_manifest_and_retry_says_what_to_do(tmp_path, sandbox, webhook):
    server = sandbox()
    url, received = webhook
    secret_url = url + "/T0FAKE/B0FAKE/tok-FAKE-derived-31337"
    make_batch(tmp_path, 1, names=["lecture-sandbox-block.mp4"])
    r = run_cli(["run", tmp_path / "videos", "--template", "summary_report", "--output", tmp_path / "out",
                 "--notify", secret_url, "--progress", "log"], env=env_for(server))
    assert r.returncode == 1, r.stdout + r.stderr
    assert [p for p, _ in received] == ["/hook/T0FAKE/B0FAKE/tok-FAKE-derived-31337"]
    derived = (tmp_path / "out" / ".gsvr" / "manifest.derived.yaml").read_text()
    assert "tok-FAKE-derived" not in derived and "/hook/T0…/B0…/***" in derived
    # a retry of the folder batch reads the derived manifest: refused (exit 2) with the way out
    r = run_cli(["retry", tmp_path / "out" / ".gsvr" / "journal.jsonl", "--failed", "--progress", "log"],
                env=env_for(server))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "redacted copy" in r.stderr and "${VAR}" in r.stderr and "tok-FAKE-derived" not in r.stderr
    assert len(received) == 1


@pytest.mark.slow
def test_failure_warnings_tell_two_targets_on_one_host_apart_without_their_tokens(tmp_path, sandbox):
    server = sandbox()
    m = make_batch(tmp_path, 1)
    dead = dead_url().rsplit("/", 1)[0]
    r = run_cli(["run", m, "--notify", f"{dead}/in/tok-FAKE-first-1111", "--notify", f"{dead}/in/tok-FAKE-second-2222",
                 "--progress", "log"], env=env_for(server))
    assert r.returncode == 0, r.stdout + r.stderr
    warnings = [line for line in r.stdout.splitlines() if "notification" in line and "failed" in line]
    assert len(warnings) == 2 and warnings[0] != warnings[1], warnings
    assert f"{dead}/in/*** (target 1)" in warnings[0] and f"{dead}/in/*** (target 2)" in warnings[1]
    assert "tok-FAKE" not in r.stdout + r.stderr
    journal = (tmp_path / "out" / ".gsvr" / "journal.jsonl").read_text()
    assert "tok-FAKE" not in journal and "(target 2)" in journal
