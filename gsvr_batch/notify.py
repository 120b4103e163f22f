"""Tell other systems how a batch ended: generic webhook, Slack incoming webhook, e-mail (SMTP).

Targets come from the manifest's ``notify:`` list or ``--notify URL``::

    notify:
      - https://hooks.example.org/lessons                 # a bare URL: generic webhook (POST JSON)
      - type: webhook
        url: https://hooks.example.org/lessons
        headers_env: {Authorization: HOOK_AUTH}           # header value read from an env var
        events: [batch_finished, batch_aborted]           # optional filter
      - url: https://hooks.slack.com/services/T000/B000/XXXX   # Slack incoming webhook
      - type: email
        host: smtp.example.org
        port: 587                                         # default 587 (465 with ssl: true)
        starttls: true                                    # default true; ssl: true for implicit TLS
        user: lessons@example.org
        password_env: SMTP_PASSWORD                       # the password itself never goes in a file
        from: lessons@example.org
        to: [teacher@example.org]
        subject_prefix: "[lessons]"

``kind:`` and ``type:`` are synonyms. A target without one is Slack when its host is
``hooks.slack.com``, e-mail when it has ``host``, else a webhook; a webhook on ``hooks.slack.com``
(what ``--notify URL`` makes) is sent in Slack's format, the only one Slack accepts.

Events: ``batch_finished``, ``batch_aborted``, ``quota_exhausted``, ``cost_limit_reached`` (the
runner sends it as ``cost_limit``; a filter may name either) and ``batch_cancelled``.

Each target is tried ``attempts`` times with exponential backoff on connection errors, timeouts,
HTTP 408/429/5xx and SMTP errors; :func:`send` never raises and returns one
:class:`NotifyResult` per target. Its ``target`` and ``error`` never hold a secret (no URL path
or query, no password, no header value), so the runner can journal them as they are.
"""

from __future__ import annotations

import base64
import json
import os
import smtplib
import socket
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Callable
from urllib.parse import urlsplit

from . import __version__

EVENTS = ("batch_finished", "batch_aborted", "quota_exhausted", "cost_limit_reached", "batch_cancelled")
EVENT_ALIASES = {"cost_limit": "cost_limit_reached"}
KINDS = ("webhook", "slack", "email")
SLACK_HOST = "hooks.slack.com"
_TARGET_KEYS = {
    "webhook": {"kind", "url", "headers", "headers_env", "events"},
    "slack": {"kind", "url", "events"},
    "email": {"kind", "host", "port", "starttls", "ssl", "user", "password_env", "from", "to",
              "subject_prefix", "ca_file", "events"},
}


@dataclass
class NotifyResult:
    target: str  # description without secrets: "webhook https://hooks.example.org", "email to a@b via smtp.x:587"
    ok: bool
    attempts: int
    error: str | None = None
    event: str = ""


class _Permanent(Exception):
    """A failure that retrying will not fix (bad configuration, 4xx, authentication refused)."""


def canonical_event(event: str) -> str:
    return EVENT_ALIASES.get(event, event)


def normalise(target: Any) -> dict[str, Any]:
    """A target as a dict with a lower-case ``kind`` (from a bare URL, ``type:`` or ``kind:``)."""
    t = {"url": target} if isinstance(target, str) else dict(target)
    kind = t.pop("kind", None) or t.pop("type", None)
    host = urlsplit(str(t.get("url") or "")).hostname or ""
    if kind is None:
        kind = "slack" if host == SLACK_HOST else ("email" if "host" in t else "webhook")
    kind = str(kind).lower()
    if kind == "webhook" and host == SLACK_HOST:
        kind = "slack"  # Slack refuses any other body: `--notify https://hooks.slack.com/...` must just work
    t["kind"] = kind
    return t


def describe(t: dict[str, Any]) -> str:
    """The target as a human can recognise it, without any secret."""
    if t.get("kind") == "email":
        to = t.get("to")
        to = ", ".join(map(str, to)) if isinstance(to, list) else to
        return f"email to {to} via {t.get('host')}:{_smtp_port(t)}"
    try:
        parts = urlsplit(str(t.get("url") or ""))
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return f"{t.get('kind')} (invalid URL)"
    # scheme and host only: Slack paths and many webhook queries carry tokens
    return f"{t.get('kind')} {parts.scheme}://{parts.hostname}{port}"


def public_view(target: Any) -> dict[str, Any]:
    """The target as it may be journaled or printed: URL cut to scheme://host, no header values, no password."""
    try:
        t = normalise(target)
    except Exception:  # noqa: BLE001 - a malformed target has nothing worth showing
        return {"kind": "?"}
    out: dict[str, Any] = {}
    for k, v in t.items():
        if k == "password":
            continue
        if k == "url":
            out[k] = describe(t).split(" ", 1)[1]
        elif k == "headers" and isinstance(v, dict):
            out[k] = {name: "***" for name in v}
        else:
            out[k] = v
    return out


def _smtp_port(t: dict[str, Any]) -> int:
    try:
        return int(t.get("port") or (465 if t.get("ssl") else 587))
    except (TypeError, ValueError):
        return 0


def validate_targets(targets: list[Any] | None) -> list[str]:
    """Problems with the targets, as readable strings (never echoing a secret)."""
    problems: list[str] = []
    for i, raw in enumerate(targets or [], start=1):
        if not isinstance(raw, (str, dict)):
            problems.append(f"notify target {i}: expected a URL or a mapping, got {type(raw).__name__}")
            continue
        t = normalise(raw)
        kind = t["kind"]
        where = f"notify target {i} ({kind})"
        if kind not in KINDS:
            problems.append(f"notify target {i}: unknown type {kind!r} (use one of {', '.join(KINDS)})")
            continue
        if "password" in t:
            # say where, never what: the value is a secret that must not reach logs or the journal
            problems.append(f"{where}: a password written in the manifest is not accepted; put it in an "
                            f"environment variable and name that variable with password_env")
        unknown = sorted(set(t) - _TARGET_KEYS[kind] - {"password"})
        if unknown:
            problems.append(f"{where}: unknown key(s) {', '.join(unknown)} "
                            f"(allowed: {', '.join(sorted(_TARGET_KEYS[kind] - {'kind'}))})")
        events = t.get("events")
        if events is not None:
            if not isinstance(events, list):
                problems.append(f"{where}: events must be a list, e.g. [batch_finished, batch_aborted]")
            else:
                for ev in events:
                    if canonical_event(str(ev)) not in EVENTS:
                        problems.append(f"{where}: unknown event {ev!r} (events: {', '.join(EVENTS)})")
        if kind in ("webhook", "slack"):
            problems += _check_url(t, where)
            if kind == "webhook":
                problems += _check_headers(t, where)
        else:
            problems += _check_email(t, where)
    return problems


def _check_url(t: dict[str, Any], where: str) -> list[str]:
    url = t.get("url")
    if not url:
        return [f"{where}: missing 'url'"]
    try:
        parts = urlsplit(str(url))
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        ok = False
    if not ok:
        # show only the start: the rest of a webhook URL is often its token
        return [f"{where}: url must be an http(s) URL, got {str(url)[:24]!r}"]
    return []


def _check_headers(t: dict[str, Any], where: str) -> list[str]:
    out = []
    for key in ("headers", "headers_env"):
        h = t.get(key)
        if h is not None and (not isinstance(h, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                                   for k, v in h.items())):
            out.append(f"{where}: {key} must map header names to strings")
    return out


def _check_email(t: dict[str, Any], where: str) -> list[str]:
    out = []
    for key in ("host", "from", "to"):
        if not t.get(key):
            out.append(f"{where}: missing {key!r}")
    to = t.get("to")
    if to and not (isinstance(to, str) or (isinstance(to, list) and all(isinstance(a, str) for a in to))):
        out.append(f"{where}: 'to' must be an address or a list of addresses")
    if t.get("port") is not None and not (isinstance(t["port"], int) and 0 < t["port"] < 65536):
        out.append(f"{where}: port must be a number from 1 to 65535")
    if t.get("ssl") and t.get("starttls"):
        out.append(f"{where}: choose ssl (implicit TLS, port 465) or starttls (port 587), not both")
    if t.get("user") and not t.get("password_env"):
        out.append(f"{where}: 'user' given without password_env (the name of the environment variable "
                   f"holding the SMTP password)")
    return out


# -- message bodies ----------------------------------------------------------------------------

def _report(p: dict[str, Any]) -> Any:
    return p.get("report_path", p.get("report"))


def _summary(p: dict[str, Any]) -> str:
    c = p.get("counts") or {}
    return (f"{c.get('completed', 0)} completed, {c.get('skipped', 0)} skipped, {c.get('failed', 0)} failed, "
            f"{c.get('pending', 0)} pending of {c.get('total', 0)}; cost ${float(p.get('cost_usd') or 0):.4f}")


def _text(event: str, p: dict[str, Any]) -> str:
    lines = [f"gsvr-batch {event.replace('_', ' ')}: {p.get('message', '')}",
             f"batch {p.get('batch_id')} ({p.get('manifest')})", _summary(p)]
    if p.get("exit_code") is not None:
        lines.append(f"exit code: {p['exit_code']}")
    if p.get("journal"):
        lines.append(f"journal: {p['journal']}")
    if _report(p):
        lines.append(f"report: {_report(p)}")
    return "\n".join(lines)


def _now_iso(p: dict[str, Any]) -> str:
    return str(p.get("ts") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def webhook_body(event: str, p: dict[str, Any]) -> dict[str, Any]:
    return {"event": event, "batch_id": p.get("batch_id"), "manifest": p.get("manifest"),
            "counts": p.get("counts") or {}, "cost_usd": p.get("cost_usd"), "report_path": _report(p),
            "message": p.get("message"), "ts": _now_iso(p), "exit_code": p.get("exit_code"),
            "journal": p.get("journal"), "output_root": p.get("output_root"),
            # Slack-compatible receivers (Mattermost, Rocket.Chat...) show `text`; others ignore it
            "text": _text(event, p)}


def slack_body(event: str, p: dict[str, Any]) -> dict[str, Any]:
    c = p.get("counts") or {}
    fields = [
        ("Completed", f"{c.get('completed', 0)} of {c.get('total', 0)}"),
        ("Failed", str(c.get("failed", 0))),
        ("Skipped / pending", f"{c.get('skipped', 0)} / {c.get('pending', 0)}"),
        ("Cost", f"${float(p.get('cost_usd') or 0):.4f}"),
        ("Batch", str(p.get("batch_id"))),
        ("Manifest", str(p.get("manifest"))),
    ]
    if _report(p):
        fields.append(("Report", str(_report(p))))
    return {
        "text": _text(event, p),  # the notification / fallback text
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": f"gsvr-batch: {event.replace('_', ' ')}"[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": str(p.get("message") or event)[:3000]},
             "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"[:2000]} for k, v in fields[:10]]},
        ],
    }


# -- senders -----------------------------------------------------------------------------------

def _post(url: str, body: dict[str, Any], headers: dict[str, str], timeout: float) -> None:
    data = json.dumps(body).encode("utf-8")
    req = urllib.request.Request(url, data=data, method="POST", headers={
        **headers, "Content-Type": "application/json", "User-Agent": f"gsvr-batch/{__version__}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - scheme checked: http(s)
            resp.read()
    except urllib.error.HTTPError as exc:
        exc.close()
        msg = f"HTTP {exc.code} {exc.reason}"
        if 400 <= exc.code < 500 and exc.code not in (408, 429):
            raise _Permanent(msg) from exc  # the receiver refuses this request: retrying will not help
        raise OSError(msg) from exc


def _webhook(t: dict[str, Any], event: str, p: dict[str, Any], timeout: float) -> None:
    headers = {str(k): str(v) for k, v in (t.get("headers") or {}).items()}
    for name, var in (t.get("headers_env") or {}).items():
        value = os.environ.get(str(var))
        if value is None:
            raise _Permanent(f"environment variable {var} (header {name}) is not set")
        headers[str(name)] = value
    _post(str(t["url"]), webhook_body(event, p), headers, timeout)


def _slack(t: dict[str, Any], event: str, p: dict[str, Any], timeout: float) -> None:
    _post(str(t["url"]), slack_body(event, p), {}, timeout)


def _password(t: dict[str, Any]) -> str | None:
    var = t.get("password_env")
    if not var:
        return None
    value = os.environ.get(str(var))
    if value is None:
        raise _Permanent(f"environment variable {var} (SMTP password) is not set")
    return value


def email_message(t: dict[str, Any], event: str, p: dict[str, Any]) -> EmailMessage:
    msg = EmailMessage()
    prefix = str(t.get("subject_prefix") or "[gsvr-batch]")
    msg["Subject"] = f"{prefix} {event.replace('_', ' ')}: {p.get('batch_id')}"
    msg["From"] = str(t["from"])
    to = t["to"] if isinstance(t["to"], list) else [t["to"]]
    msg["To"] = ", ".join(map(str, to))
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain="gsvr-batch")
    msg.set_content(_text(event, p) + f"\nevent: {event}\ntime: {_now_iso(p)}\n")
    return msg


def _email(t: dict[str, Any], event: str, p: dict[str, Any], timeout: float) -> None:
    password = _password(t)  # before connecting: a missing variable is a configuration problem
    msg = email_message(t, event, p)
    context = ssl.create_default_context(cafile=t.get("ca_file") or None)
    host, port = str(t["host"]), _smtp_port(t)
    smtp: smtplib.SMTP
    if t.get("ssl"):
        smtp = smtplib.SMTP_SSL(host, port, timeout=timeout, context=context)
    else:
        smtp = smtplib.SMTP(host, port, timeout=timeout)
    with smtp:
        smtp.ehlo()  # has_extn() only knows the server's extensions after EHLO
        if not t.get("ssl") and t.get("starttls", True):
            if not smtp.has_extn("starttls"):
                raise _Permanent(f"{host}:{port} does not offer STARTTLS; set starttls: false to send "
                                 f"without encryption, or ssl: true for port 465")
            smtp.starttls(context=context)
            smtp.ehlo()
        if t.get("user"):
            try:
                smtp.login(str(t["user"]), password or "")
            except smtplib.SMTPAuthenticationError as exc:
                raise _Permanent(f"SMTP login refused for user {t['user']}: {exc.smtp_code}") from exc
        smtp.send_message(msg)


_SENDERS: dict[str, Callable[[dict[str, Any], str, dict[str, Any], float], None]] = {
    "webhook": _webhook, "slack": _slack, "email": _email}


def _secrets(t: dict[str, Any]) -> list[str]:
    """Every string that must not appear in a result: passwords, header values, URL path and query."""
    out = []
    try:
        out.append(_password(t) or "")
    except _Permanent:
        pass
    for v in (t.get("headers") or {}).values():
        out.append(str(v))
    for var in (t.get("headers_env") or {}).values():
        out.append(os.environ.get(str(var), ""))
    url = str(t.get("url") or "")
    if url:
        parts = urlsplit(url)
        out += [url, parts.path, parts.query]
    extra = []
    for s in out:
        if len(s) >= 4:  # also the forms an SMTP/HTTP error could echo
            extra.append(base64.b64encode(s.encode()).decode())
    return sorted({s for s in out + extra if len(s) >= 4}, key=len, reverse=True)


def _scrub(text: str, secrets: list[str]) -> str:
    for s in secrets:
        text = text.replace(s, "***")
    return text


def send(event: str, payload: dict[str, Any], targets: list[Any], *, attempts: int = 3, backoff: float = 1.0,
         timeout: float = 10.0, sleep: Callable[[float], None] = time.sleep) -> list[NotifyResult]:
    """Deliver ``event`` to every target that wants it; one result per target tried. Never raises."""
    results: list[NotifyResult] = []
    want = canonical_event(event)
    for raw in targets or []:
        try:
            t = normalise(raw)
            desc = describe(t)
        except Exception as exc:  # noqa: BLE001 - a malformed target is a failed notification, not a crash
            results.append(NotifyResult("notify target (malformed)", False, 0, type(exc).__name__, event))
            continue
        filt = t.get("events")
        if isinstance(filt, list) and filt and want not in {canonical_event(str(e)) for e in filt}:
            continue
        sender = _SENDERS.get(t["kind"])
        if sender is None:
            results.append(NotifyResult(desc, False, 0, f"unknown type {t['kind']!r}", event))
            continue
        error: str | None = None
        n = 0
        for n in range(1, max(1, attempts) + 1):
            try:
                sender(t, event, payload, timeout)
                error = None
                break
            except _Permanent as exc:
                error = str(exc)
                break
            except (OSError, smtplib.SMTPException, socket.timeout, ssl.SSLError) as exc:
                error = f"{type(exc).__name__}: {exc}"  # network, 5xx, SMTP trouble: worth another try
            except Exception as exc:  # noqa: BLE001 - by contract a notification never fails the batch
                error = f"{type(exc).__name__}: {exc}"
                break
            if n < attempts:
                sleep(backoff * 2 ** (n - 1))
        if error is not None:
            error = _scrub(error, _secrets(t))
        results.append(NotifyResult(desc, error is None, n, error, event))
    return results
