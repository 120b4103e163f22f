"""Secrets: what they are, how they are checked, and the one function that scrubs text of them.

DESIGN invariant 9: no secret reaches disk (journal, logs, reports, outputs, derived manifests).
Messages are scrubbed with :func:`redact` where they are made (error classification, the
pipeline's error records, notification results), so every writer downstream gets clean text.

What counts as a secret
-----------------------
* The value of every API-key variable the SDK reads (``GOOGLE_API_KEY``, ``GEMINI_API_KEY``):
  always, with no registration.
* The value of every variable named with :func:`register_env`: the manifest's ``api_key_env``
  (:func:`gsvr_batch.gemini.resolve_credentials` registers it), SMTP ``password_env``, webhook
  ``headers_env`` and the ``${VAR}`` references of notify URLs and headers
  (:func:`register_notify_targets` registers those).
* Literal values given to :func:`register`: the key a client was built with, a webhook URL passed
  with ``--notify`` and its secret parts (path, query, user-info password, Slack's token).

The forms scrubbed
------------------
A secret rarely leaks verbatim: httpx reports an illegal header as ``b'AIza…\\n# comment'``,
a journal line JSON-escapes it, a URL percent-encodes it. For every secret value :func:`redact`
replaces the raw value, its ``repr``/bytes-``repr``/``unicode_escape`` forms (``\\n``, ``\\r``,
``\\t``, ``\\x..``, ``\\\\``), its JSON-escaped and percent-encoded forms, those forms escaped once
more (a repr inside a JSON string), and every line / control-character-separated segment of
a multi-line value that is at least :data:`MIN_SEGMENT` characters long (and that segment's
forms). ``key=`` / ``api_key=`` URL parameters are masked whatever their value.

Logs
----
:func:`install_log_redaction` puts a :class:`RedactingFilter` on the root logger's handlers
and on logging's last-resort handler, so a record that carries a secret (in its message, its
arguments or its traceback) is scrubbed whoever logged it. The runner calls it at start.

Processes
---------
Registrations live in this process's memory. Spawned worker processes start with an empty
registry but inherit the environment, so:

* the SDK's key variables are found again with no call;
* names given to :func:`register_env` are also exported (names only, never values) in
  ``GSVR_SECRET_ENV_NAMES``, which a worker inherits, so it re-reads those values from its own
  environment. Register before the pool starts;
* literal values given to :func:`register` are NOT passed on (putting them in the environment
  would spread them further). Workers never see notify targets; the worker's own key is
  registered by :func:`gsvr_batch.gemini.make_client` when it builds its client.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from typing import Any, Iterable
from urllib.parse import quote, quote_plus, urlsplit

__all__ = [
    "MASK", "SDK_KEY_ENVS", "ENV_NAMES_VAR", "MIN_SECRET", "MIN_SEGMENT",
    "register", "register_env", "register_notify_targets", "redact", "known_secrets", "forms",
    "header_value_problem", "env_refs", "bad_env_refs", "expand_env", "redact_url", "url_secret_parts",
    "is_redacted", "RedactingFilter", "install_log_redaction", "reset",
]

MASK = "***"
# The SDK's own env var names, in its order of precedence (see _api_client.get_env_api_key).
SDK_KEY_ENVS = ("GOOGLE_API_KEY", "GEMINI_API_KEY")
# Names (never values) of further secret variables, inherited by spawned workers.
ENV_NAMES_VAR = "GSVR_SECRET_ENV_NAMES"
# A whole value shorter than this would turn common words into "***"; no real secret is that short.
MIN_SECRET = 4
# A line of a multi-line value (or a URL's path piece) is scrubbed on its own from this length:
# long enough to identify the secret, long enough not to mask ordinary words.
MIN_SEGMENT = 8

_KEY_PARAM = re.compile(r"(?i)([?&](?:key|api_key|api-key)=)[^&\s'\"]+")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# ${NAME}; anything else starting with "${" is a malformed reference (see env_refs).
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ANY_REF = re.compile(r"\$\{([^}]*)\}?")
_SEGMENT_SPLIT = re.compile(r"[\x00-\x1f\x7f]+")
_PLAIN_WORD = re.compile(r"^[A-Za-z][A-Za-z_-]{0,23}$")  # "services", "api", "webhooks": not tokens

_registered: set[str] = set()
_env_names: set[str] = set()


def reset() -> None:
    """Forget every registration of this process (tests)."""
    _registered.clear()
    _env_names.clear()
    os.environ.pop(ENV_NAMES_VAR, None)


# -- registration ------------------------------------------------------------------------------

def register(value: Any) -> None:
    """Treat ``value`` (and its escaped forms) as a secret in this process from now on."""
    if value is None:
        return
    text = str(value)
    for v in (text, text.strip()):
        if len(v) >= MIN_SECRET:
            _registered.add(v)


def register_env(name: Any) -> None:
    """Treat the value of environment variable ``name`` as a secret, here and in spawned workers.

    The value is read at :func:`redact` time, so a variable set later is covered too. Only the
    NAME is exported (in ``GSVR_SECRET_ENV_NAMES``) for child processes.
    """
    if not isinstance(name, str) or not _ENV_NAME.match(name) or name in SDK_KEY_ENVS:
        return
    if name in _env_names:
        return
    _env_names.add(name)
    inherited = [n for n in os.environ.get(ENV_NAMES_VAR, "").split(",") if n]
    if name not in inherited:
        os.environ[ENV_NAMES_VAR] = ",".join(inherited + [name])


def register_notify_targets(targets: Iterable[Any] | None) -> None:
    """Register every secret a list of notify targets holds or names.

    URLs: the secret parts of the (expanded) URL (:func:`url_secret_parts`: the whole URL, path,
    query, user-info, token piece) and the variables of its ``${VAR}`` references; headers:
    literal values and ``headers_env`` / ``${VAR}`` variables; e-mail: the ``password_env``
    variable. Never raises: a malformed target is reported by validation, not here.
    """
    for raw in targets or []:
        t = {"url": raw} if isinstance(raw, str) else raw
        if not isinstance(t, dict):
            continue
        url = t.get("url")
        if isinstance(url, str) and url:
            for name in env_refs(url):
                register_env(name)
            expanded = expand_env(url, missing="")
            for part in url_secret_parts(expanded):
                register(part)
        headers = t.get("headers")
        if isinstance(headers, dict):
            for value in headers.values():
                if not isinstance(value, str):
                    continue
                names = env_refs(value)
                for name in names:
                    register_env(name)  # "Bearer ${TOKEN}": the variable is the secret, "Bearer" is not
                if not names and len(value.strip()) >= MIN_SEGMENT:
                    register(value)  # a literal header value (shorter ones are labels like "maths")
        header_vars = t.get("headers_env")
        if isinstance(header_vars, dict):
            for name in header_vars.values():
                register_env(name)
        register_env(t.get("password_env"))


# -- what is secret right now ------------------------------------------------------------------

def _env_secret_names() -> list[str]:
    inherited = [n for n in os.environ.get(ENV_NAMES_VAR, "").split(",") if n]
    return [*SDK_KEY_ENVS, *sorted(_env_names | set(inherited))]


def known_secrets() -> list[str]:
    """Every secret value known to this process now (raw values; :func:`forms` gives the rest)."""
    found = set(_registered)
    for name in _env_secret_names():
        value = os.environ.get(name)
        if value:
            for v in (value, value.strip()):
                if len(v) >= MIN_SECRET:
                    found.add(v)
    return sorted(found, key=len, reverse=True)


_ESCAPES = (
    lambda s: repr(s)[1:-1],  # str repr: \n \r \t \\ \x.. and a quote
    lambda s: repr(s.encode("utf-8", "backslashreplace"))[2:-1],  # bytes repr: b'...\n...' (httpx, h11)
    lambda s: s.encode("unicode_escape").decode("ascii"),  # \n, \xe9, \u2019, \\ without quote escaping
    lambda s: ascii(s)[1:-1],
    lambda s: json.dumps(s)[1:-1],
    lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    lambda s: quote(s, safe=""),
    lambda s: quote(s),  # "/" kept: how a path is usually encoded
    lambda s: quote_plus(s),
)


def _escapes(s: str) -> set[str]:
    """One round of every escaping a message, a log or a journal line may apply to ``s``."""
    out = set()
    for escape in _ESCAPES:
        try:
            out.add(escape(s))
        except UnicodeError:  # a value from a non-UTF-8 environment holds surrogates: skip that form
            pass
    return out


@functools.lru_cache(maxsize=256)
def _forms_of(value: str) -> tuple[str, ...]:
    bases = {value, value.strip()}
    # a multi-line value: each line / segment that is long enough to identify it
    for seg in _SEGMENT_SPLIT.split(value):
        for s in (seg, seg.strip()):
            if len(s) >= MIN_SEGMENT:
                bases.add(s)
    once: set[str] = set()
    for b in bases:
        once |= _escapes(b)
    twice: set[str] = set()
    for f in once:
        twice |= _escapes(f)  # e.g. a bytes repr inside a JSON string
    out = {f for f in bases | once | twice if len(f) >= MIN_SECRET}
    return tuple(sorted(out, key=len, reverse=True))


def forms(value: str) -> list[str]:
    """Every form of ``value`` that :func:`redact` scrubs (longest first)."""
    return list(_forms_of(value))


def redact(text: str, extra_secrets: tuple[str, ...] = ()) -> str:
    """``text`` with every known secret, in every form :func:`forms` lists, replaced by ``***``.

    Also masks ``key=`` / ``api_key=`` URL parameters whatever their value. Cheap enough for
    error messages (forms are cached per value); not meant for megabytes of output.
    """
    if not text:
        return text
    text = str(text)
    values = {*known_secrets(), *(s for s in extra_secrets if s and len(s) >= MIN_SECRET)}
    all_forms: set[str] = set()
    for value in values:
        all_forms.update(_forms_of(value))
    # longest first: a whole escaped value goes before the shorter lines it contains
    for form in sorted(all_forms, key=len, reverse=True):
        if form in text:
            text = text.replace(form, MASK)
    return _KEY_PARAM.sub(r"\1" + MASK, text)


# -- checks ------------------------------------------------------------------------------------

def header_value_problem(value: str) -> str | None:
    """Why ``value`` cannot travel as an HTTP header value (an API key does), or None if it can.

    Says what and where ("contains a line break at character 17 of 56"), never any character
    of the value itself. Surrounding whitespace is the caller's to strip (keys are stripped
    before use, so the newline ``echo KEY > file`` leaves is harmless).
    """
    def kind(ch: str) -> int | None:
        code = ord(ch)
        if ch in "\r\n":
            return 0
        if ch == "\0":
            return 1
        if ch in " \t":
            return 4
        if code < 0x20 or code == 0x7F:
            return 2
        if code > 0x7E:
            return 3
        return None

    found = [(k, i) for i, ch in enumerate(value, start=1) if (k := kind(ch)) is not None]
    if not found:
        return None
    # the most telling problem first: a line break explains a pasted comment line better
    # than the space inside that comment does
    k, pos = min(found)
    what = _HEADER_PROBLEMS[k]
    more = len(found) - 1
    tail = f" (and {more} more character{'s' if more != 1 else ''} that cannot be sent)" if more else ""
    return f"contains {what} at character {pos} of {len(value)}{tail}"


_HEADER_PROBLEMS = ("a line break", "a NUL character", "a control character",
                    "a non-ASCII character (often a curly quote or non-breaking space from a copy-paste)",
                    "whitespace (a space or tab)")


# -- ${VAR} references -------------------------------------------------------------------------

def env_refs(text: str) -> list[str]:
    """Names of the ``${VAR}`` references in ``text``, in order, without duplicates."""
    seen: list[str] = []
    for name in ENV_REF.findall(text or ""):
        if name not in seen:
            seen.append(name)
    return seen


def bad_env_refs(text: str) -> list[str]:
    """Malformed ``${...}`` references in ``text`` (``${}``, ``${1X}``, an unclosed ``${``)."""
    bad = []
    for m in _ANY_REF.finditer(text or ""):
        if not ENV_REF.fullmatch(m.group(0)):
            bad.append(m.group(0)[:40])
    return bad


def expand_env(text: str, *, missing: str | None = None, environ: dict[str, str] | None = None) -> str:
    """``text`` with each ``${VAR}`` replaced by the variable's value.

    An unset variable raises ``KeyError(name)``, or becomes ``missing`` when that is given.
    Only the braced form is expanded: ``$VAR`` stays as written (webhook URLs may hold ``$``).
    """
    env = os.environ if environ is None else environ

    def sub(m: re.Match[str]) -> str:
        value = env.get(m.group(1))
        if value is None:
            if missing is None:
                raise KeyError(m.group(1))
            return missing
        return value

    return ENV_REF.sub(sub, text or "")


# -- URLs --------------------------------------------------------------------------------------

def url_secret_parts(url: str) -> list[str]:
    """The parts of a webhook URL that authenticate it: path, query, user-info, the token segment.

    A webhook URL is a bearer credential (Slack: ``/services/T…/B…/SECRET``): whoever has the
    path can post. The host is not secret, nor are short, plain path words.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url] if len(url) >= MIN_SECRET else []
    # the whole URL only when it holds something secret: "https://hooks.example.org" is no
    # secret, and masking it would only make messages unreadable
    out = [url] if redact_url(url) != url else []
    if parts.password:
        out.append(parts.password)
    if len(parts.path) >= MIN_SEGMENT:
        out.append(parts.path)
    if parts.query and len(parts.query) >= MIN_SECRET:
        out.append(parts.query)
        for pair in parts.query.split("&"):
            value = pair.split("=", 1)[-1]
            if len(value) >= MIN_SEGMENT:
                out.append(value)
    segments = [s for s in parts.path.split("/") if s]
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if len(seg) >= MIN_SEGMENT and (last or not _PLAIN_WORD.match(seg)):
            out.append(seg)
    return out


def redact_url(url: str) -> str:
    """A webhook URL as it may be shown, journaled or written: host and a redacted path.

    ``https://hooks.slack.com/services/T0123/B0456/SECRET`` → ``https://hooks.slack.com/services/T0…/B0…/***``:
    plain words of the path stay, other pieces keep two characters, the last piece and the
    query become ``***``, user-info and fragment go. ``${VAR}`` references stay as written
    (they name a secret, they do not hold it). Enough to tell targets apart, never the secret.
    """
    text = str(url or "")
    if ENV_REF.fullmatch(text):
        return text
    try:
        parts = urlsplit(text)
        port = f":{parts.port}" if parts.port else ""
        host = parts.hostname or ""
    except ValueError:
        return "(invalid URL)"
    if not parts.scheme or not host:
        return "(invalid URL)" if text else ""
    if "${" in parts.netloc:  # "https://${HOST}/..." : hostname() lower-cases the reference
        host, port = parts.netloc.rsplit("@", 1)[-1], ""
    if parts.username or parts.password:
        host = f"{MASK}@{host}"  # marked, not dropped: without it the URL would be another, valid one
    pieces = parts.path.split("/")
    last = max((i for i, p in enumerate(pieces) if p), default=-1)
    shown = []
    for i, p in enumerate(pieces):
        if not p or ENV_REF.fullmatch(p) or p == MASK:
            shown.append(p)
        elif i == last:
            shown.append(MASK)
        elif _PLAIN_WORD.match(p):
            shown.append(p)
        else:
            shown.append(p[:2] + "…")
    query = ""
    if parts.query:
        query = "?" + (parts.query if ENV_REF.fullmatch(parts.query) else MASK)
    return f"{parts.scheme}://{host}{port}{'/'.join(shown)}{query}"


class RedactingFilter(logging.Filter):
    """A logging filter that scrubs every record (message, arguments, traceback) with :func:`redact`.

    Attached to handlers (a filter on a logger does not see its children's records).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is logging's problem, not a reason to leak
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = RedactingFilter()


def install_log_redaction() -> None:
    """Scrub every log record this process writes: on the root logger's handlers and on
    logging's last-resort handler (what prints WARNING and above when nothing is configured).
    Call again after adding handlers; installing twice is harmless."""
    handlers = list(logging.getLogger().handlers)
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for handler in handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)


def is_redacted(text: str) -> bool:
    """True when ``text`` carries the mark :func:`redact_url` / :func:`redact` leave (``***``)."""
    return MASK in str(text or "")
