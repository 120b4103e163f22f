"""The HTTP side of the sandbox: routing, auth, quotas, fault injection, request log.

See the package docstring (``gsvr_batch/sandbox/__init__.py``) for the endpoints, the
fault triggers and the control API. One ``threading.Lock`` guards all shared state; it is
never held while sleeping (latency, hangs) or while moving upload bytes to disk, so slow
clients do not stall the others.
"""

from __future__ import annotations

import json
import random
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from . import batches, generate, lesson, limits, models, rpc
from .config import SandboxConfig
from .limits import Quotas
from .store import FileStore

API_VERSIONS = ("v1", "v1beta", "v1alpha")
_IO_CHUNK = 1024 * 1024
_MAX_JSON_BODY = 64 * 1024 * 1024
UPLOAD_LOST = "sandbox-upload-lost"  # display-name trigger: the first finalize's answer is lost (503)
UPLOAD_LOST_DROP = "sandbox-upload-lost-drop"  # the same, but the connection drops instead


class _Drop(Exception):
    """Close the connection without answering (an injected network fault)."""

    def __init__(self, injected: str) -> None:
        super().__init__(injected)
        self.injected = injected


class _Reply:
    def __init__(self, body: Any = None, status: int = 200, headers: dict[str, str] | None = None,
                 raw_path: Path | None = None, content_type: str = "application/json; charset=UTF-8") -> None:
        self.body = body
        self.status = status
        self.headers = headers or {}
        self.raw_path = raw_path  # stream this file as the body (downloads)
        self.content_type = content_type


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a hung handler must never keep the process alive
    allow_reuse_address = True
    request_queue_size = 128
    sandbox: "SandboxServer"


class SandboxServer:
    """A Gemini-compatible HTTP server on 127.0.0.1 (see the package docstring)."""

    def __init__(self, config: SandboxConfig | None = None, *, clock: Callable[[], float] | None = None) -> None:
        self.config = config or SandboxConfig()
        self.clock = clock or time.time
        self.requests: list[dict] = []  # the in-memory request log
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rng = random.Random(self.config.seed)
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.store: FileStore | None = None
        self.quotas = Quotas(epoch=self.clock())
        self.batches: dict[str, batches.BatchJob] = {}
        self._forced: list[dict] = []  # queued injections for the next generate calls
        # Implicit cache: (model, first media part's cache key) -> when it was last sent.
        self._cache_seen: dict[tuple, float] = {}
        self._lost_fired: set[str] = set()  # display names whose lost-answer trigger has fired
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._log_file = None
        self._base_url: str | None = None

    # ----- lifecycle -------------------------------------------------------------------
    def start(self) -> str:
        if self._httpd is not None:
            return self.base_url
        self._tmp = tempfile.TemporaryDirectory(prefix="gsvr-sandbox-")
        self.store = FileStore(Path(self._tmp.name))
        if self.config.log_path:
            Path(self.config.log_path).parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.config.log_path, "a", encoding="utf-8")  # noqa: SIM115
        self._httpd = _HTTPServer((self.config.host, self.config.port), _Handler)
        self._httpd.sandbox = self
        host, port = self._httpd.server_address[:2]
        self._base_url = f"http://{host}:{port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="gsvr-sandbox",
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()
        return self._base_url

    def stop(self) -> None:
        self._stop.set()  # wakes hung and sleeping handlers so they end at once
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> SandboxServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the sandbox server is not started")
        return self._base_url

    # ----- control ---------------------------------------------------------------------
    def update_config(self, **changes: Any) -> dict:
        """Change runtime settings (rpm, fail_rate, latency, ...); returns the public config."""
        with self._lock:
            for key, value in changes.items():
                if key not in SandboxConfig.RUNTIME_FIELDS:
                    raise ValueError(f"unknown or fixed sandbox setting: {key}")
                setattr(self.config, key, SandboxConfig.coerce(key, value))
            return self.config.public_dict()

    def inject_429(self, count: int, retry_delay: float | None = 1.0, per: str = "minute",
                   model: str | None = None) -> None:
        """The next ``count`` generate calls answer 429 (per-minute or per-day quota)."""
        with self._lock:
            self._forced.append({"kind": "429", "count": int(count), "retry_delay": retry_delay,
                                 "per": per, "model": model})

    def inject_errors(self, count: int, status: int | str = 503) -> None:
        """The next ``count`` generate calls fail with 500/503/504, or ``"drop"`` the connection."""
        with self._lock:
            self._forced.append({"kind": "error", "count": int(count), "status": status})

    def reset_day(self) -> None:
        with self._lock:
            self.quotas.reset_day()

    def stats(self) -> dict:
        with self._lock:
            by_kind: dict[str, dict[str, int]] = {}
            ok_by_model: dict[str, int] = {}
            ok_by_task: dict[str, int] = {}
            tokens = {"prompt": 0, "cached": 0, "candidates": 0}
            for e in self.requests:
                k = by_kind.setdefault(e["kind"], {})
                k[str(e["status"])] = k.get(str(e["status"]), 0) + 1
                if e["kind"] == "generate" and e["status"] == 200:
                    ok_by_model[e["model"]] = ok_by_model.get(e["model"], 0) + 1
                    if e.get("task_id"):
                        ok_by_task[e["task_id"]] = ok_by_task.get(e["task_id"], 0) + 1
                    for name in tokens:
                        tokens[name] += int((e.get("tokens") or {}).get(name) or 0)
            return {
                "requests": len(self.requests),
                "by_kind": by_kind,
                "generate_ok_by_model": ok_by_model,
                "generate_ok_by_task": ok_by_task,
                "generate_ok_tokens": tokens,
                "files": len(self.store.files) if self.store else 0,
                "batches": len(self.batches),
                "quotas": self.quotas.snapshot(self.clock()),
                "pending_injections": [dict(f) for f in self._forced],
                "config": self.config.public_dict(),
            }

    # ----- logging ---------------------------------------------------------------------
    def log_request(self, entry: dict) -> None:
        """Keep one request's entry (in memory, and as a line of the JSONL log when there is one)."""
        with self._lock:
            self.requests.append(entry)
            if self._log_file is not None:
                # One flushed line per request: a benchmark may kill us at any moment.
                self._log_file.write(json.dumps(entry, ensure_ascii=False) + "\n")
                self._log_file.flush()

    def mark_client_gone(self, entry: dict) -> None:
        """The answer could not be sent: noted on the in-memory entry (its JSONL line is already written)."""
        with self._lock:
            entry["injected"] = entry["injected"] or "client_gone"

    # ----- request handling (called from handler threads) -------------------------------
    def _check_key(self, handler: _Handler, query: dict) -> None:
        key = handler.headers.get("x-goog-api-key") or (query.get("key") or [""])[0]
        if not key:
            raise rpc.missing_key()
        expected = self.config.api_key
        if expected is not None and key != expected:
            raise rpc.invalid_key()

    def _maybe_fail(self, entry: dict) -> None:
        """Random faults at ``fail_rate``: 500, 503, or a dropped connection."""
        with self._lock:
            p = self.config.fail_rate
            if p <= 0 or self._rng.random() >= p:
                return
            choice = self._rng.choice([500, 503, "drop"])
        if choice == "drop":
            raise _Drop("fail_rate:drop")
        raise rpc.by_status(int(choice), injected=f"fail_rate:{choice}")

    def _forced_fault(self, model: str) -> None:
        with self._lock:
            for f in self._forced:
                if f.get("model") and f["model"] != model:
                    continue
                f["count"] -= 1
                if f["count"] <= 0:
                    self._forced.remove(f)
                break
            else:
                return
        if f["kind"] == "429":
            per_day = f["per"] == "day"
            raise rpc.quota_exceeded(
                metric=limits.GEN_METRIC, quota_id=limits.RPD_ID if per_day else limits.RPM_ID,
                model=model, limit=self.config.rpd if per_day and self.config.rpd else 1,
                retry_delay=f["retry_delay"], injected=f"burst429:{f['per']}")
        if f["status"] == "drop":
            raise _Drop("burst:drop")
        raise rpc.by_status(int(f["status"]), injected=f"burst:{f['status']}")

    def _file_quota(self) -> None:
        with self._lock:
            self.quotas.check_file(self.clock(), file_rpm=self.config.file_rpm, retry_delay=self.config.retry_delay)

    def route(self, handler: _Handler, method: str, path: str, query: dict, entry: dict) -> _Reply:
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["_sandbox"]:
            return self._control(handler, method, parts[1:], entry)
        if len(parts) >= 3 and parts[0] == "upload" and parts[1] in API_VERSIONS and parts[2] == "files":
            if "upload_id" in query:
                return self._upload_chunk(handler, query["upload_id"][0], entry)
            handler.read_json()
            self._check_key(handler, query)
            return self._upload_start(handler, parts[1], entry)
        if len(parts) >= 4 and parts[0] == "download" and parts[1] in API_VERSIONS and parts[2] == "files":
            handler.read_body()
            self._check_key(handler, query)
            return self._download(parts[3].split(":", 1)[0], entry)
        if not parts or parts[0] not in API_VERSIONS:
            handler.read_body()
            raise rpc.not_found(f"The requested URL {path} was not found on this server.")
        body = handler.read_json()
        self._check_key(handler, query)
        version, rest = parts[0], parts[1:]
        resource = rest[0] if rest else ""
        if resource == "files":
            return self._files(method, rest, query, entry)
        if resource == "models" and len(rest) == 1 and method == "GET":
            return self._list_models(query, entry)
        if resource == "models" and len(rest) == 2:
            model, _, action = rest[1].partition(":")
            entry["model"] = model
            kinds = {("POST", "generateContent"): "generate", ("POST", "countTokens"): "count_tokens",
                     ("POST", "batchGenerateContent"): "batch_create", ("GET", ""): "model_get"}
            kind = kinds.get((method, action))
            if kind is not None:
                entry["kind"] = kind
                if kind in ("generate", "count_tokens"):
                    # Present even when the request is refused before its media are looked at.
                    entry.update(media_resolution=None, clip=None, fps=None, youtube=False, merge=False)
                with self._lock:
                    info = models.resolve(model, self.config.models, self.config.input_token_limit)
                if info is None:
                    raise models.not_found(model, action or "get", version)
                if kind == "generate":
                    return self._generate(info, body, entry)
                if kind == "count_tokens":
                    return self._count_tokens(model, body, entry)
                if kind == "batch_create":
                    return self._batch_create(model, body, entry)
                return _Reply(info.to_json())
        if resource == "batches":
            return self._batches(method, rest, query, entry)
        raise rpc.not_found(f"Method not found: {method} {path}")

    def _list_models(self, query: dict, entry: dict) -> _Reply:
        entry["kind"] = "model_list"
        size = max(1, min(1000, int((query.get("pageSize") or ["50"])[0])))
        start = int((query.get("pageToken") or ["0"])[0] or 0)
        with self._lock:
            table = models.all_models(self.config.models, self.config.input_token_limit)
        out: dict = {"models": [m.to_json() for m in table[start:start + size]]}
        if start + size < len(table):
            out["nextPageToken"] = str(start + size)
        return _Reply(out)

    # ----- Files API -------------------------------------------------------------------
    def _upload_start(self, handler: _Handler, version: str, entry: dict) -> _Reply:
        entry["kind"] = "upload_start"
        meta = (handler.json_body or {}).get("file") or {}
        # The SDK sends this body in snake_case (proto JSON accepts both spellings).
        display = meta.get("displayName") or meta.get("display_name")
        entry["display_name"] = display
        size_h = (handler.headers.get("X-Goog-Upload-Header-Content-Length") or meta.get("sizeBytes")
                  or meta.get("size_bytes"))
        mime = (handler.headers.get("X-Goog-Upload-Header-Content-Type") or meta.get("mimeType")
                or meta.get("mime_type"))
        if (handler.headers.get("X-Goog-Upload-Protocol") or "").lower() != "resumable":
            raise rpc.bad_request("Only the resumable upload protocol is supported by the sandbox.")
        try:
            size = int(size_h)
        except (TypeError, ValueError) as exc:
            raise rpc.bad_request("X-Goog-Upload-Header-Content-Length is required.") from exc
        if not mime:
            raise rpc.bad_request("Missing mime type.")
        self._file_quota()
        self._maybe_fail(entry)
        wanted = str(meta.get("name") or "").split("files/", 1)[-1] or None
        with self._lock:
            assert self.store is not None
            if wanted and (wanted in self.store.files or not wanted.replace("-", "").isalnum()):
                raise rpc.ApiError(409, "ALREADY_EXISTS", f"File files/{wanted} already exists.")
            s = self.store.start_upload(display, mime, size, wanted)
        entry["file"] = f"files/{s.file_id}"
        url = f"{self.base_url}/upload/{version}/files?upload_id={s.upload_id}&upload_protocol=resumable"
        return _Reply(None, headers={"x-goog-upload-url": url, "x-goog-upload-status": "active",
                                     "x-goog-upload-chunk-granularity": str(8 * 1024 * 1024)})

    def _upload_chunk(self, handler: _Handler, upload_id: str, entry: dict) -> _Reply:
        entry["kind"] = "upload_chunk"
        # Errors here carry x-goog-upload-status, or the SDK would silently retry for ~7 s.
        final = {"x-goog-upload-status": "final"}
        command = (handler.headers.get("X-Goog-Upload-Command") or "").lower()
        with self._lock:
            assert self.store is not None
            s = self.store.sessions.get(upload_id)
            ok = s is not None and not s.busy
            if ok:
                s.busy = True
            done_file = None if s is not None else self.store.finalized.get(upload_id)
        if done_file is not None:
            # As Google answers a chunk sent to a finished session (e.g. the SDK retrying a
            # finalize whose answer was lost): the file exists, the session takes no more bytes.
            handler.read_body()
            entry["file"] = f"files/{done_file}"
            err = rpc.ApiError(400, "FAILED_PRECONDITION", "Upload session is already finalized or cancelled.")
            return _Reply(err.body(), err.code, final)
        if not ok:
            handler.read_body()
            err = rpc.not_found("No such upload session, or a chunk of it is already being sent.")
            return _Reply(err.body(), err.code, final)
        entry["file"] = f"files/{s.file_id}"
        entry["display_name"] = s.display_name
        try:
            offset = handler.headers.get("X-Goog-Upload-Offset")
            if offset is not None and int(offset) != s.received:
                handler.read_body()
                err = rpc.bad_request(f"Upload offset {offset} does not match the {s.received} bytes received.")
                return _Reply(err.body(), err.code, final)
            n = handler.body_length()
            if s.received + n > s.size_bytes:
                handler.read_body()
                err = rpc.bad_request("More bytes than announced in X-Goog-Upload-Header-Content-Length.")
                return _Reply(err.body(), err.code, final)
            with open(s.path, "ab") as out:  # to disk in pieces: never the whole video in memory
                left = n
                while left > 0:
                    piece = handler.rfile.read(min(_IO_CHUNK, left))
                    if not piece:
                        raise _Drop("client closed mid-chunk")
                    out.write(piece)
                    s.hasher.update(piece)
                    left -= len(piece)
                    s.received += len(piece)
            if "finalize" not in command:
                return _Reply(None, headers={"x-goog-upload-status": "active",
                                             "x-goog-upload-size-received": str(s.received)})
            if s.received != s.size_bytes:
                err = rpc.bad_request(f"Upload finalized after {s.received} of {s.size_bytes} bytes.")
                return _Reply(err.body(), err.code, final)
            with self._lock:
                rec = self.store.finish_upload(s, self.clock())
                now = self.clock()
                body = {"file": rec.to_json(self.base_url, now, self.config.processing_delay)}
                lost = self._lost_answer(s.display_name)
            entry["kind"] = "upload_finalize"
            if lost == "drop":
                raise _Drop("upload_lost_answer:drop")
            if lost:
                # The file is stored and will turn ACTIVE, but the client never learns it: a 503
                # without x-goog-upload-status, which the SDK answers by re-sending the chunk.
                entry["injected"] = "upload_lost_answer"
                err = rpc.ApiError(503, "UNAVAILABLE", "The service is currently unavailable.")
                return _Reply(err.body(), err.code)
            return _Reply(body, headers=final)
        finally:
            s.busy = False

    def _lost_answer(self, display_name: str | None) -> str | None:
        """Whether this finalize's answer is lost: "drop", "503" or None (caller holds the lock)."""
        name = display_name or ""
        for trigger, how in ((UPLOAD_LOST_DROP, "drop"), (UPLOAD_LOST, "503")):
            if trigger in name:
                if name in self._lost_fired:
                    return None  # the trigger fires on the first finalize only: a re-upload goes through
                self._lost_fired.add(name)
                return how
        p = self.config.upload_lost_answer_rate or 0.0
        if p > 0 and self._rng.random() < p:
            return "503"
        return None

    def _files(self, method: str, rest: list[str], query: dict, entry: dict) -> _Reply:
        assert self.store is not None
        if len(rest) == 1 and method == "GET":
            entry["kind"] = "files_list"
            self._file_quota()
            size = max(1, min(100, int((query.get("pageSize") or ["10"])[0])))
            start = int((query.get("pageToken") or ["0"])[0] or 0)
            with self._lock:
                now = self.clock()
                recs = sorted(self.store.files.values(), key=lambda r: (r.create_time, r.file_id), reverse=True)
                page = [r.to_json(self.base_url, now, self.config.processing_delay)
                        for r in recs[start:start + size]]
            out: dict = {"files": page} if page else {}
            if start + size < len(recs):
                out["nextPageToken"] = str(start + size)
            return _Reply(out)
        if len(rest) != 2:
            raise rpc.not_found("Unknown files method.")
        file_id, _, action = rest[1].partition(":")
        entry["file"] = f"files/{file_id}"
        if action == "download" and method == "GET":
            return self._download(file_id, entry)
        if action:
            raise rpc.not_found(f"Unknown files method :{action}")
        entry["kind"] = "files_get" if method == "GET" else "files_delete"
        self._file_quota()
        with self._lock:
            rec = self.store.files.get(file_id)
            if rec is not None:
                entry["display_name"] = rec.display_name
            if method == "GET":
                if rec is None:
                    raise rpc.file_not_found(file_id)
                return _Reply(rec.to_json(self.base_url, self.clock(), self.config.processing_delay))
            if method == "DELETE":
                if not self.store.delete(file_id):
                    raise rpc.file_not_found(file_id)
                return _Reply({})
        raise rpc.not_found("Unknown files method.")

    def _download(self, file_id: str, entry: dict) -> _Reply:
        entry["kind"] = "files_download"
        entry["file"] = f"files/{file_id}"
        with self._lock:
            assert self.store is not None
            rec = self.store.files.get(file_id)
        if rec is None:
            raise rpc.file_not_found(file_id)
        if rec.source != "GENERATED":
            raise rpc.bad_request("Only generated files can be downloaded; uploaded files cannot.")
        return _Reply(raw_path=rec.path, content_type=rec.mime_type)

    # ----- models ----------------------------------------------------------------------
    def _prepare(self, model: str, body: Any, entry: dict) -> generate.Prepared:
        with self._lock:
            assert self.store is not None
            prep = generate.prepare(model, body, self.store, self.clock(), self.config.processing_delay,
                                    youtube_durations=self.config.youtube_durations)
        entry["file"] = ",".join(prep.file_names) or None
        entry["display_name"] = ",".join(prep.display_names) or None
        entry.update(prep.log_fields())
        return prep

    def _implicit_cache(self, info: models.ModelInfo, prep: generate.Prepared, now: float) -> lesson.Usage:
        """The usage with the implicitly cached share filled in (caller holds the lock).

        The first media part is cached when the same one (same media, resolution, clip and fps)
        went to the same model within ``cache_ttl`` seconds and is big enough to be cached.
        """
        usage = prep.usage
        assert usage is not None
        ttl = self.config.cache_ttl or 0.0  # None (set at runtime) means off, like 0
        if not prep.media or ttl <= 0:
            return usage
        first = prep.media[0]
        key = (info.name, first.cache_key())
        seen = self._cache_seen.get(key)
        self._cache_seen[key] = now
        if seen is None or now - seen > ttl or first.tokens < info.cache_min_tokens:
            return usage
        return lesson.Usage(usage.text_tokens, usage.video_tokens, usage.audio_tokens,
                            cached_video=first.video_tokens, cached_audio=first.audio_tokens)

    def _generate(self, info: models.ModelInfo, body: Any, entry: dict) -> _Reply:
        model = info.name
        prep = self._prepare(model, body, entry)
        assert prep.usage is not None
        entry["tokens"] = {"prompt": prep.usage.prompt_tokens, "candidates": None, "cached": 0}
        generate.check_input_limit(prep, info)
        self._forced_fault(model)
        self._maybe_fail(entry)
        with self._lock:
            c = self.config
            now = self.clock()
            self.quotas.check_youtube(prep.youtube_seconds, now, limit=c.youtube_seconds_per_day,
                                      day_reset=c.day_reset, retry_delay=c.retry_delay)
            self.quotas.check_generate(model, prep.usage.prompt_tokens, now, rpm=c.rpm, rpd=c.rpd,
                                       tpm=c.tpm, day_reset=c.day_reset, retry_delay=c.retry_delay)
            self.quotas.add_youtube(prep.youtube_seconds)
            usage = self._implicit_cache(info, prep, now)
            latency = c.latency
        if generate.HANG in prep.trigger_text:
            entry["injected"] = "hang"
            # Log now (status None): a benchmark reading the log must see the call in flight.
            self.log_request(dict(entry))
            entry["_logged"] = True
            self._stop.wait()  # until the server stops; then the client sees a dropped connection
            raise _Drop("hang")
        if latency > 0 and self._stop.wait(latency):
            raise _Drop("server stopping")
        resp, cand_tokens, outcome = generate.respond(prep, usage)
        entry["tokens"] = {"prompt": usage.prompt_tokens, "candidates": cand_tokens, "cached": usage.cached_tokens}
        if outcome != "ok":
            entry["outcome"] = outcome
        return _Reply(resp)

    def _count_tokens(self, model: str, body: Any, entry: dict) -> _Reply:
        prep = self._prepare(model, generate.count_tokens_body(body), entry)
        assert prep.usage is not None
        u = prep.usage
        # countTokens has no input window: it answers the count of any prompt (that is its use).
        entry["tokens"] = {"prompt": u.prompt_tokens}
        return _Reply({"totalTokens": u.prompt_tokens,
                       "promptTokensDetails": generate.usage_json(u, None)["promptTokensDetails"]})

    # ----- batches ---------------------------------------------------------------------
    def _batch_json(self, job: batches.BatchJob) -> dict:
        assert self.store is not None
        return batches.to_json(job, self.clock(), self.config, self.store)

    def _batch_create(self, model: str, body: Any, entry: dict) -> _Reply:
        with self._lock:
            assert self.store is not None
            display, items, input_file = batches.parse_create(model, body, self.store)
            job = batches.new_job(model, display, items, input_file, self.clock())
            self.batches[job.batch_id] = job
            entry["batch"] = job.name
            entry["file"] = input_file
            return _Reply(self._batch_json(job))

    def _batches(self, method: str, rest: list[str], query: dict, entry: dict) -> _Reply:
        if len(rest) == 1 and method == "GET":
            entry["kind"] = "batch_list"
            size = max(1, min(100, int((query.get("pageSize") or ["10"])[0])))
            start = int((query.get("pageToken") or ["0"])[0] or 0)
            with self._lock:
                jobs = sorted(self.batches.values(), key=lambda j: (j.create_time, j.batch_id), reverse=True)
                page = [self._batch_json(j) for j in jobs[start:start + size]]
            out: dict = {"operations": page} if page else {}
            if start + size < len(jobs):
                out["nextPageToken"] = str(start + size)
            return _Reply(out)
        if len(rest) != 2:
            raise rpc.not_found("Unknown batches method.")
        batch_id, _, action = rest[1].partition(":")
        entry["batch"] = f"batches/{batch_id}"
        with self._lock:
            job = self.batches.get(batch_id)
            if job is None:
                entry["kind"] = "batch_" + (action or method.lower())
                raise rpc.not_found(f"Batch batches/{batch_id} not found.")
            if method == "GET" and not action:
                entry["kind"] = "batch_get"
                return _Reply(self._batch_json(job))
            if method == "POST" and action == "cancel":
                entry["kind"] = "batch_cancel"
                st = batches.refresh(job, self.clock(), self.config, self.store)
                if st in ("PENDING", "RUNNING"):
                    job.cancel_time = self.clock()
                return _Reply({})
            if method == "DELETE" and not action:
                entry["kind"] = "batch_delete"
                del self.batches[batch_id]
                return _Reply({})
        raise rpc.not_found("Unknown batches method.")

    # ----- control endpoint -------------------------------------------------------------
    def _control(self, handler: _Handler, method: str, rest: list[str], entry: dict) -> _Reply:
        body = handler.read_json() or {}
        what = rest[0] if rest else ""
        entry["kind"] = f"control_{what or 'root'}"
        if what == "stats" and method == "GET":
            return _Reply(self.stats())
        if what == "requests" and method == "GET":
            with self._lock:
                return _Reply({"requests": list(self.requests)})
        if what == "reset_day" and method == "POST":
            self.reset_day()
            return _Reply({"ok": True})
        if what == "config" and method == "GET":
            with self._lock:
                return _Reply(self.config.public_dict())
        if what == "config" and method == "POST":
            if not isinstance(body, dict):
                raise rpc.bad_request("expected a JSON object")
            actions = {k: body.pop(k) for k in ("inject_429", "inject_errors", "reset_day") if k in body}
            try:
                public = self.update_config(**body)
            except (ValueError, TypeError) as exc:
                raise rpc.bad_request(str(exc)) from exc
            if "inject_429" in actions:
                a = actions["inject_429"]
                self.inject_429(int(a.get("count", 1)), a.get("retry_delay", 1.0), a.get("per", "minute"),
                                a.get("model"))
            if "inject_errors" in actions:
                a = actions["inject_errors"]
                self.inject_errors(int(a.get("count", 1)), a.get("status", 503))
            if actions.get("reset_day"):
                self.reset_day()
            return _Reply(public)
        raise rpc.not_found(f"Unknown control endpoint {method} /_sandbox/{what}")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's
    # delayed ACK (~40 ms on Linux) on every answer of a kept-alive connection.
    disable_nagle_algorithm = True
    server: _HTTPServer
    server_version = "gsvr-sandbox"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # the sandbox keeps its own structured log

    # --- body helpers (each request body is read exactly once) ---
    _body_read = False
    json_body: Any = None

    def body_length(self) -> int:
        self._body_read = True  # the caller streams it
        try:
            return int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return 0

    def read_body(self) -> bytes:
        if self._body_read:
            return b""
        n = self.body_length()
        if n > _MAX_JSON_BODY:
            raise rpc.ApiError(413, "INVALID_ARGUMENT", "Request payload size exceeds the limit.")
        return self.rfile.read(n) if n else b""

    def read_json(self) -> Any:
        raw = self.read_body()
        if not raw:
            return self.json_body
        try:
            self.json_body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise rpc.bad_request("Invalid JSON payload received.") from exc
        return self.json_body

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def _handle(self, method: str) -> None:
        sb = self.server.sandbox
        self._body_read = False
        self.json_body = None
        started = time.monotonic()
        split = urlsplit(self.path)
        query = parse_qs(split.query)
        # The path is logged without its query string: a ``?key=`` must never reach the log.
        entry: dict[str, Any] = {"ts": sb.clock(), "method": method, "path": split.path, "kind": "unknown",
                                 "model": None, "status": None, "file": None, "display_name": None,
                                 "task_id": self.headers.get("x-gsvr-task-id"), "tokens": None,
                                 "injected": None}
        try:
            reply = sb.route(self, method, split.path, query, entry)
        except _Drop as drop:
            entry["injected"] = entry["injected"] or drop.injected
            entry["elapsed"] = round(time.monotonic() - started, 4)
            if not entry.pop("_logged", False):
                sb.log_request(entry)
            self.close_connection = True  # say nothing: the client sees a dropped connection
            return
        except rpc.ApiError as exc:
            if not self._body_read:
                try:
                    self.read_body()
                except rpc.ApiError:
                    self.close_connection = True
            entry["injected"] = entry["injected"] or exc.injected
            reply = _Reply(exc.body(), exc.code)
        except Exception as exc:  # noqa: BLE001 - a sandbox bug must still answer like the API
            err = rpc.internal()
            err.message += f" (sandbox bug: {type(exc).__name__}: {exc})"
            entry["injected"] = "sandbox_bug"
            reply = _Reply(err.body(), 500)
            self.close_connection = True
        entry["status"] = reply.status
        entry["elapsed"] = round(time.monotonic() - started, 4)
        # Logged before the answer goes out: a client holding an answer always finds its entry.
        sb.log_request(entry)
        try:
            self._send(reply)
        except OSError:
            sb.mark_client_gone(entry)

    def _send(self, reply: _Reply) -> None:
        if reply.raw_path is not None:
            size = reply.raw_path.stat().st_size
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            with open(reply.raw_path, "rb") as f:
                while piece := f.read(_IO_CHUNK):
                    self.wfile.write(piece)
            return
        data = b"" if reply.body is None else json.dumps(reply.body, ensure_ascii=False).encode("utf-8")
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(data)))
        for k, v in reply.headers.items():
            self.send_header(k, v)
        self.end_headers()
        if data:
            self.wfile.write(data)


def config_from_dict(d: dict) -> SandboxConfig:
    known = SandboxConfig.field_names()
    return SandboxConfig(**{k: v for k, v in d.items() if k in known})

