"""Tell other systems how a batch ended: generic webhook, Slack incoming webhook, e-mail (SMTP).

Targets come from the manifest's ``notify:`` list or ``--notify URL``::

    notify:
      - url: https://hooks.example.org/lessons            # generic webhook (POST JSON)
      - type: slack                                       # Slack incoming webhook
        url: https://hooks.slack.com/services/T000/B000/XXXX
        events: [batch_finished, batch_aborted]           # optional filter
      - type: email
        host: smtp.example.org
        port: 587                                         # default 587
        starttls: true                                    # default true (ssl: true for port 465)
        user: lessons@example.org
        password_env: SMTP_PASSWORD                       # the password itself never goes in a file
        from: lessons@example.org
        to: [teacher@example.org]

(``kind:`` is accepted as a synonym of ``type:``; a bare URL string is a webhook, and a
``hooks.slack.com`` URL is Slack.) Events: ``batch_finished``, ``batch_aborted``,
``quota_exhausted``, ``cost_limit``, ``batch_cancelled``.

Each target is tried a few times with backoff; :func:`send` never raises and returns one
:class:`NotifyResult` per target (its description never contains a secret), which the runner
journals. A failing notification never fails the batch.
"""

from __future__ import annotations

import json
import os
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Callable
from urllib.parse import urlsplit

from . import __version__

EVENTS = ("batch_finished", "batch_aborted", "quota_exhausted", "cost_limit", "batch_cancelled")
KINDS = ("webhook", "slack", "email")


@dataclass
class NotifyResult:
    target: str  # description without secrets: "webhook hooks.example.org", "email to a@b (smtp.x:587)"
    ok: bool
    attempts: int
    error: str | None = None


def normalise(target: Any) -> dict[str, Any]:
    if isinstance(target, str):
        target = {"url": target}
    t = dict(target)
    kind = t.pop("kind", None) or t.pop("type", None)
    if kind is None:
        url = str(t.get("url", ""))
        kind = "slack" if urlsplit(url).hostname == "hooks.slack.com" else ("email" if "host" in t else "webhook")
    t["kind"] = str(kind).lower()
    return t


def describe(t: dict[str, Any]) -> str:
    if t["kind"] == "email":
        to = t.get("to")
        to = ", ".join(to) if isinstance(to, list) else to
        return f"email to {to} via {t.get('host')}:{t.get('port', 587)}"
    parts = urlsplit(str(t.get("url", "")))
    # host and path only: query strings and Slack paths can carry tokens
    return f"{t['kind']} {parts.scheme}://{parts.hostname}{(':' + str(parts.port)) if parts.port else ''}"


def validate_targets(targets: list[Any] | None) -> list[str]:
    """Problems with the targets, as readable strings (never echoing a secret)."""
    problems = []
    for i, raw in enumerate(targets or [], start=1):
        if not isinstance(raw, (str, dict)):
            problems.append(f"notify target {i}: expected a URL or a mapping")
            continue
        t = normalise(raw)
        where = f"notify target {i} ({t['kind']})"
        if t["kind"] not in KINDS:
            problems.append(f"notify target {i}: unknown type {t['kind']!r} (use one of {', '.join(KINDS)})")
            continue
        if "password" in t:
            problems.append(f"{where}: a password written in the manifest is not accepted; "
                            f"put it in an environment variable and name it with password_env")
        for ev in t.get("events") or []:
            if ev not in EVENTS:
                problems.append(f"{where}: unknown event {ev!r} (events: {', '.join(EVENTS)})")
        if t["kind"] in ("webhook", "slack"):
            url = str(t.get("url") or "")
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                problems.append(f"{where}: url must be an http(s) URL, got {url[:40]!r}")
        else:
            for key in ("host", "from", "to"):
                if not t.get(key):
                    problems.append(f"{where}: missing {key!r}")
            if t.get("user") and not t.get("password_env"):
                problems.append(f"{where}: user given without password_env")
    return problems


def _text(event: str, p: dict[str, Any]) -> str:
    c = p.get("counts") or {}
    return (f"gsvr-batch {event.replace('_', ' ')}: {p.get('message', '')}\n"
            f"batch {p.get('batch_id')} ({p.get('manifest')})\n"
            f"{c.get('completed', 0)} completed, {c.get('skipped', 0)} skipped, {c.get('failed', 0)} failed, "
            f"{c.get('pending', 0)} pending of {c.get('total', 0)}; cost ${float(p.get('cost_usd') or 0):.4f}\n"
            f"journal: {p.get('journal')}" + (f"\nreport: {p['report']}" if p.get("report") else ""))


def _post(url: str, body: dict[str, Any], headers: dict[str, str], timeout: float) -> None:
    data = json.dumps(body).encode("utf-8")
    req = urllib.request.Request(url, data=data, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": f"gsvr-batch/{__version__}", **headers})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - URL validated as http(s)
        resp.read()


def _webhook(t: dict[str, Any], event: str, p: dict[str, Any], timeout: float) -> None:
    body = {"event": event, "batch_id": p.get("batch_id"), "manifest": p.get("manifest"),
            "counts": p.get("counts"), "cost_usd": p.get("cost_usd"), "report_path": p.get("report"),
            "journal": p.get("journal"), "exit_code": p.get("exit_code"), "message": p.get("message"),
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _post(str(t["url"]), body, dict(t.get("headers") or {}), timeout)


def _slack(t: dict[str, Any], event: str, p: dict[str, Any], timeout: float) -> None:
    c = p.get("counts") or {}
    text = _text(event, p)
    body = {
        "text": text,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": f"gsvr-batch: {event.replace('_', ' ')}"}},
            {"type": "section", "text": {"type": "mrkdwn", "text": str(p.get("message", ""))[:2900]}},
            {"type": "section", "fields": [
                {"type": "mrkdwn", "text": f"*Completed*\n{c.get('completed', 0)}/{c.get('total', 0)}"},
                {"type": "mrkdwn", "text": f"*Failed*\n{c.get('failed', 0)}"},
                {"type": "mrkdwn", "text": f"*Cost*\n${float(p.get('cost_usd') or 0):.4f}"},
                {"type": "mrkdwn", "text": f"*Batch*\n{p.get('batch_id')}"},
            ]},
        ],
    }
    _post(str(t["url"]), body, {}, timeout)


def _email(t: dict[str, Any], event: str, p: dict[str, Any], timeout: float) -> None:
    msg = EmailMessage()
    msg["Subject"] = f"{t.get('subject_prefix', '[gsvr-batch]')} {event.replace('_', ' ')}: {p.get('batch_id')}"
    msg["From"] = t["from"]
    to = t["to"] if isinstance(t["to"], list) else [t["to"]]
    msg["To"] = ", ".join(to)
    msg.set_content(_text(event, p))
    port = int(t.get("port", 465 if t.get("ssl") else 587))
    password = os.environ.get(str(t.get("password_env") or ""), "") if t.get("password_env") else ""
    cls = smtplib.SMTP_SSL if t.get("ssl") else smtplib.SMTP
    with cls(str(t["host"]), port, timeout=timeout) as smtp:
        if not t.get("ssl") and t.get("starttls", True) and smtp.has_extn("starttls"):
            smtp.starttls(context=ssl.create_default_context())
        elif not t.get("ssl") and t.get("starttls") is True:
            raise smtplib.SMTPException("server does not offer STARTTLS")
        if t.get("user"):
            smtp.login(str(t["user"]), password)
        smtp.send_message(msg)


_SENDERS: dict[str, Callable[[dict[str, Any], str, dict[str, Any], float], None]] = {
    "webhook": _webhook, "slack": _slack, "email": _email}


def send(event: str, payload: dict[str, Any], targets: list[Any], *, attempts: int = 3, backoff: float = 1.0,
         timeout: float = 10.0, sleep: Callable[[float], None] = time.sleep) -> list[NotifyResult]:
    """Deliver ``event`` to every target that wants it. Never raises."""
    results = []
    for raw in targets or []:
        try:
            t = normalise(raw)
        except Exception as exc:  # noqa: BLE001 - a malformed target is a failed notification, not a crash
            results.append(NotifyResult(target="?", ok=False, attempts=0, error=str(exc)))
            continue
        if t.get("events") and event not in t["events"]:
            continue
        desc = describe(t)
        sender = _SENDERS.get(t["kind"])
        if sender is None:
            results.append(NotifyResult(desc, False, 0, f"unknown type {t['kind']!r}"))
            continue
        error = None
        n = 0
        for n in range(1, attempts + 1):
            try:
                sender(t, event, payload, timeout)
                error = None
                break
            except urllib.error.HTTPError as exc:
                error = f"HTTP {exc.code} {exc.reason}"
                if 400 <= exc.code < 500 and exc.code not in (408, 429):
                    break  # the receiver refuses this request: retrying will not help
            except (OSError, smtplib.SMTPException, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            if n < attempts:
                sleep(backoff * 2 ** (n - 1))
        secret = os.environ.get(str(t.get("password_env") or "")) if t.get("password_env") else None
        if error and secret:
            error = error.replace(secret, "***")
        results.append(NotifyResult(desc, error is None, n, error))
    return results
