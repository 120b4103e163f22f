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


def test_cost_limit_stop_sends_cost_limit_event(tmp_path, sandbox, webhook):
    server = sandbox()
    url, received = webhook
    m = make_batch(tmp_path, 2)
    r = run_cli(["run", m, "--cost-limit", "0", "--notify", url, "--progress", "log"], env=env_for(server))
    assert r.returncode == 75, r.stdout + r.stderr
    assert len(received) == 1 and "cost_limit" in json.dumps(received[0][1])
