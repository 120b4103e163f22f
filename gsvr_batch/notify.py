"""Tell other systems how a batch ended: generic webhook, Slack incoming webhook, e-mail (SMTP).

Targets come from the manifest's ``notify:`` list or ``--notify URL``::

    notify:
      - https://hooks.example.org/lessons                 # a bare URL: generic webhook (POST JSON)
      - type: webhook
        url: ${LESSONS_HOOK_URL}                          # ${VAR}: read from the environment when sent
        headers: {Authorization: "Bearer ${HOOK_TOKEN}"}  # ${VAR} works in header values too
        headers_env: {X-Api-Key: HOOK_KEY}                # or: the whole header value from an env var
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
:class:`NotifyResult` per target.

Secrets (DESIGN invariant 9)
----------------------------
A webhook URL is a credential: whoever knows a Slack hook's path can post to the channel. So
are header values and the SMTP password. Hence:

* ``${VAR}`` in a ``url`` or a header value is expanded from the environment only when the
  notification is sent; the target itself (in settings, journal, derived manifest) keeps the
  reference. Only the braced form is expanded (``$VAR`` stays as written). A reference to an
  unset variable, an unset ``password_env`` or ``headers_env`` variable is a validation
  problem (:func:`validate_targets`; the runner exits 2 before any work), named, never shown.
* Wherever a target is shown, journaled or written it goes through :func:`public_view` /
  :func:`describe`: scheme, host and a redacted path (``https://hooks.slack.com/services/T0…/B0…/***``,
  plain path words kept, other pieces cut to two characters, the last piece and the query
  masked) plus the target's position in the list (``target 2``), so two hooks on one host can
  be told apart; no header value, no password. :class:`NotifyResult` ``target`` / ``error``
  follow the same rule, so the runner can journal and print them as they are.
* Derived manifests (``OUTPUT/.gsvr/manifest.derived.yaml``, written for folder / list batches)
  store targets through :func:`storable`. DECISION: a ``${VAR}`` reference is kept as written
  (the way to have a secret URL survive into ``retry``: ``--notify '${SLACK_HOOK_URL}'``); a
  literal URL with a secret part (any path beyond ``/``, a query, user-info) is written in the
  redacted form above, and literal header values as ``***``. Validation refuses a redacted
  form with a message that says what to do (put the URL in an environment variable and write
  ``url: ${VAR}``, or remove the target), so such a manifest can never post to a wrong URL
  and the secret never reaches disk. Consequence: ``gsvr-batch retry`` of a folder batch run
  with a literal secret ``--notify`` URL stops with exit 2 until the derived manifest is edited.
* Every secret a target holds or names can be registered for redaction of all messages with
  :func:`gsvr_batch.secrets.register_notify_targets`.
"""

from __future__ import annotations

import base64
import json
import os
import re
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
from . import secrets as _secrets

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
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REDACTED_HINT = ("gsvr-batch never writes a webhook's secret to disk, so this is a redacted copy, not the URL. "
                  "Put the full URL in an environment variable and write url: ${VAR} (or pass "
                  "--notify '${VAR}'), or remove this target")


@dataclass
class NotifyResult:
    # description without secrets: "webhook https://hooks.example.org/*** (target 1)",
    # "email to a@b via smtp.x:587 (target 2)"
    target: str
    ok: bool
    attempts: int
    error: str | None = None
    event: str = ""


class _Permanent(Exception):
    """A failure that retrying will not fix (bad configuration, 4xx, authentication refused)."""


def canonical_event(event: str) -> str:
    return EVENT_ALIASES.get(event, event)


def _host_of(url: Any) -> str:
    """Host of a URL, ``${VAR}`` references expanded (unset ones as empty): only to infer the kind."""
    try:
        return urlsplit(_secrets.expand_env(str(url or ""), missing="")).hostname or ""
    except ValueError:
        return ""


def normalise(target: Any) -> dict[str, Any]:
    """A target as a dict with a lower-case ``kind`` (from a bare URL, ``type:`` or ``kind:``).

    ``${VAR}`` references stay unexpanded in the result (it may be journaled or written).
    """
    t = {"url": target} if isinstance(target, str) else dict(target)
    kind = t.pop("kind", None) or t.pop("type", None)
    host = _host_of(t.get("url"))
    if kind is None:
        kind = "slack" if host == SLACK_HOST else ("email" if "host" in t else "webhook")
    kind = str(kind).lower()
    if kind == "webhook" and host == SLACK_HOST:
        kind = "slack"  # Slack refuses any other body: `--notify https://hooks.slack.com/...` must just work
    t["kind"] = kind
    return t


def describe(t: dict[str, Any], index: int | None = None) -> str:
    """The target as a human can recognise it, without any secret.

    ``index`` (1-based position in the notify list, as validation numbers them) is appended:
    two Slack hooks of one workspace look the same once their tokens are hidden.
    """
    where = f" (target {index})" if index is not None else ""
    if t.get("kind") == "email":
        to = t.get("to")
        to = ", ".join(map(str, to)) if isinstance(to, list) else to
        return f"email to {to} via {t.get('host')}:{_smtp_port(t)}{where}"
    return f"{t.get('kind')} {_secrets.redact_url(str(t.get('url') or ''))}{where}"


def public_view(target: Any) -> dict[str, Any]:
    """The target as it may be journaled or printed: redacted URL, no header values, no password."""
    try:
        t = normalise(target)
    except Exception:  # noqa: BLE001 - a malformed target has nothing worth showing
        return {"kind": "?"}
    out: dict[str, Any] = {}
    for k, v in t.items():
        if k == "password":
            continue
        if k == "url":
            out[k] = _secrets.redact_url(str(v or ""))
        elif k == "headers" and isinstance(v, dict):
            out[k] = {name: _secrets.MASK for name in v}
        else:
            out[k] = v
    return out


def storable(target: Any) -> dict[str, Any]:
    """The target as it may be written to a manifest on disk (the derived manifest).

    ``${VAR}`` references are kept; a literal URL with a secret part becomes its redacted form
    (which :func:`validate_targets` refuses with a hint), literal header values become ``***``,
    a literal password is dropped. ``type`` is kept as given, so the file reads like the input.
    """
    t = {"url": target} if isinstance(target, str) else dict(target)
    out: dict[str, Any] = {}
    for k, v in t.items():
        if k == "password":
            continue
        if k == "url" and isinstance(v, str):
            out[k] = v if not _literal_secret_url(v) else _secrets.redact_url(v)
        elif k == "headers" and isinstance(v, dict):
            out[k] = {name: (val if isinstance(val, str) and _secrets.env_refs(val) else _secrets.MASK)
                      for name, val in v.items()}
        else:
            out[k] = v
    return out


def _literal_secret_url(url: str) -> bool:
    """True when ``url`` holds (not merely names, via ``${VAR}``) a path, query or user-info."""
    if _secrets.ENV_REF.fullmatch(url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return True
    literal_path = _secrets.ENV_REF.sub("", parts.path).strip("/")
    literal_query = _secrets.ENV_REF.sub("", parts.query)
    # (a fragment is never sent, so it is no secret; redact_url drops it)
    return bool(literal_path or literal_query or parts.password or parts.username)


def _smtp_port(t: dict[str, Any]) -> int:
    try:
        return int(t.get("port") or (465 if t.get("ssl") else 587))
    except (TypeError, ValueError):
        return 0


def validate_targets(targets: list[Any] | None) -> list[str]:
    """Problems with the targets, as readable strings (never echoing a secret).

    Everything a send would need is checked now, so a run never discovers at its end that a
    notification cannot go: ``${VAR}`` references and ``password_env`` / ``headers_env``
    variables must be set (named when they are not, values never shown).
    """
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


def _ref_problems(text: str, what: str, where: str) -> list[str]:
    """Malformed or unset ``${VAR}`` references in ``text`` (``what``: "url", "header X")."""
    out = [f"{where}: {what} has a malformed reference {bad!r}; write ${{NAME}} with a variable name"
           for bad in _secrets.bad_env_refs(text)]
    for name in _secrets.env_refs(text):
        if name not in os.environ:
            out.append(f"{where}: {what} refers to ${{{name}}}, but the environment variable {name} is not set "
                       f"(export it before the run)")
    return out


def _check_url(t: dict[str, Any], where: str) -> list[str]:
    url = t.get("url")
    if not url:
        return [f"{where}: missing 'url'"]
    if not isinstance(url, str):
        return [f"{where}: url must be an http(s) URL (text), got {type(url).__name__}"]
    if _secrets.is_redacted(url):
        return [f"{where}: url is a redacted copy ({_secrets.redact_url(url)}): {_REDACTED_HINT}"]
    refs = _ref_problems(url, "url", where)
    if refs:
        return refs
    expanded = _secrets.expand_env(url)
    try:
        parts = urlsplit(expanded)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        ok = False
    if not ok:
        if _secrets.env_refs(url):
            # the value came from the environment: name the variable(s), never show the value
            names = ", ".join(_secrets.env_refs(url))
            return [f"{where}: url (from {names}) must be an http(s) URL; check the variable's value"]
        # show only the start: the rest of a webhook URL is often its token
        return [f"{where}: url must be an http(s) URL, got {_url_start(url)!r}"]
    return []


def _url_start(url: str) -> str:
    """Enough of a bad URL to recognise it, never its path (often the token)."""
    head = url.split("?", 1)[0]
    if "://" in head:
        scheme, rest = head.split("://", 1)
        return f"{scheme}://{rest.split('/', 1)[0]}" + ("/…" if "/" in rest else "")
    return head[:12] + ("…" if len(url) > 12 else "")


def _check_headers(t: dict[str, Any], where: str) -> list[str]:
    out = []
    for key in ("headers", "headers_env"):
        h = t.get(key)
        if h is not None and (not isinstance(h, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                                   for k, v in h.items())):
            out.append(f"{where}: {key} must map header names to strings")
            continue
        for name, value in (h or {}).items():
            if key == "headers":
                if value == _secrets.MASK:
                    out.append(f"{where}: header {name} is a redacted copy (***); put its value in an environment "
                               f"variable and write {name}: ${{VAR}} or use headers_env")
                else:
                    out += _ref_problems(value, f"header {name}", where)
            elif value not in os.environ:
                out.append(f"{where}: headers_env names {value} for header {name}, but {value} is not set "
                           f"(export it before the run)")
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
    var = t.get("password_env")
    if var:
        if not isinstance(var, str) or not _ENV_NAME.match(var):
            out.append(f"{where}: password_env must be the NAME of an environment variable, e.g. SMTP_PASSWORD")
        elif var not in os.environ:
            # found now, before any work: at the end of the batch it would only be a lost notification
            out.append(f"{where}: password_env names {var}, but {var} is not set (export the SMTP password "
                       f"in {var} before the run)")
    return out


# -- message bodies ----------------------------------------------------------------------------

def _report(p: dict[str, Any]) -> str | None:
    """The report file's path, whichever key carries it (the runner sends ``report``), as text."""
    value = p.get("report_path") or p.get("report")
    if value is None or value == "":
        return None
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


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


def _plain(value: Any) -> Any:
    """Paths as text: a payload may carry ``pathlib.Path`` values, which JSON cannot encode."""
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def webhook_body(event: str, p: dict[str, Any]) -> dict[str, Any]:
    return {"event": event, "batch_id": p.get("batch_id"), "manifest": _plain(p.get("manifest")),
            "counts": p.get("counts") or {}, "cost_usd": p.get("cost_usd"), "report_path": _report(p),
            "message": p.get("message"), "ts": _now_iso(p), "exit_code": p.get("exit_code"),
            "journal": _plain(p.get("journal")), "output_root": _plain(p.get("output_root")),
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
    data = json.dumps(body, default=str).encode("utf-8")
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


def _expand(text: str, what: str) -> str:
    """``text`` with ``${VAR}`` expanded; an unset variable is a configuration problem (named)."""
    try:
        return _secrets.expand_env(text)
    except KeyError as exc:
        raise _Permanent(f"environment variable {exc.args[0]} ({what}) is not set") from None


def _url(t: dict[str, Any]) -> str:
    url = str(t["url"])
    if _secrets.is_redacted(url):
        raise _Permanent(f"url is a redacted copy: {_REDACTED_HINT}")
    return _expand(url, "url")


def _webhook(t: dict[str, Any], event: str, p: dict[str, Any], timeout: float) -> None:
    headers = {str(k): _expand(str(v), f"header {k}") for k, v in (t.get("headers") or {}).items()}
    for name, var in (t.get("headers_env") or {}).items():
        value = os.environ.get(str(var))
        if value is None:
            raise _Permanent(f"environment variable {var} (header {name}) is not set")
        headers[str(name)] = value
    _post(_url(t), webhook_body(event, p), headers, timeout)


def _slack(t: dict[str, Any], event: str, p: dict[str, Any], timeout: float) -> None:
    _post(_url(t), slack_body(event, p), {}, timeout)


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


def _target_secrets(t: dict[str, Any]) -> list[str]:
    """Every string that must not appear in a result: passwords, header values, URL secret parts."""
    out = []
    try:
        out.append(_password(t) or "")
    except _Permanent:
        pass
    for v in (t.get("headers") or {}).values():
        out += [str(v), _secrets.expand_env(str(v), missing="")]
    for var in (t.get("headers_env") or {}).values():
        out.append(os.environ.get(str(var), ""))
    url = str(t.get("url") or "")
    if url:
        for form in {url, _secrets.expand_env(url, missing="")}:
            out += _secrets.url_secret_parts(form)
            try:
                parts = urlsplit(form)
            except ValueError:
                continue
            out += [parts.path, parts.query]
        for name in _secrets.env_refs(url):
            out.append(os.environ.get(name, ""))
    extra = []
    for s in out:
        if len(s) >= 4:  # also the forms an SMTP/HTTP error could echo
            extra.append(base64.b64encode(s.encode()).decode())
    return sorted({s for s in out + extra if len(s) >= 4}, key=len, reverse=True)


def _scrub(text: str, secrets: list[str]) -> str:
    # the target's own secrets (even short ones: the context is this target's error), then every
    # secret the process knows, in every escaped form
    for s in secrets:
        text = text.replace(s, _secrets.MASK)
    return _secrets.redact(text, tuple(secrets))


def send(event: str, payload: dict[str, Any], targets: list[Any], *, attempts: int = 3, backoff: float = 1.0,
         timeout: float = 10.0, sleep: Callable[[float], None] = time.sleep) -> list[NotifyResult]:
    """Deliver ``event`` to every target that wants it; one result per target tried. Never raises.

    ``payload``: what the runner knows (batch_id, manifest, exit_code, message, counts,
    cost_usd, journal, output_root, and ``report``: the path of the report file written at
    the end, or None); bodies carry the report path as ``report_path`` (webhook), a "Report"
    field (Slack) and a "report:" line (e-mail, webhook ``text``).
    """
    results: list[NotifyResult] = []
    want = canonical_event(event)
    for i, raw in enumerate(targets or [], start=1):
        try:
            t = normalise(raw)
            desc = describe(t, i)
        except Exception as exc:  # noqa: BLE001 - a malformed target is a failed notification, not a crash
            results.append(NotifyResult(f"notify target {i} (malformed)", False, 0, type(exc).__name__, event))
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
            error = _scrub(error, _target_secrets(t))
        results.append(NotifyResult(desc, error is None, n, error, event))
    return results
