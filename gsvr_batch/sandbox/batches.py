"""Batch mode (``models/{m}:batchGenerateContent``, ``batches/{id}``) on the sandbox clock.

A job is PENDING for the first quarter of ``batch_duration``, RUNNING until it has passed,
then ends SUCCEEDED — or FAILED / EXPIRED when its requests mention ``sandbox-batch-fail``
/ ``sandbox-batch-expire``. Results are computed once, the first time the job is seen
finished: inlined for inline input, a downloadable JSONL file for file input.
Callers hold the server lock.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

from . import generate, models, rpc
from .config import SandboxConfig
from .store import FileStore, rfc3339

BATCH_FAIL = "sandbox-batch-fail"
BATCH_EXPIRE = "sandbox-batch-expire"
_META_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
_OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
_GRPC = {"INVALID_ARGUMENT": 3, "NOT_FOUND": 5, "PERMISSION_DENIED": 7, "FAILED_PRECONDITION": 9,
         "RESOURCE_EXHAUSTED": 8, "INTERNAL": 13, "UNAVAILABLE": 14, "DEADLINE_EXCEEDED": 4}


@dataclass
class BatchItem:
    request: dict
    metadata: dict | None = None  # inline input
    key: str | None = None  # file input


@dataclass
class BatchJob:
    batch_id: str
    model: str
    display_name: str | None
    create_time: float
    items: list[BatchItem]
    input_file: str | None = None  # "files/<id>" for file input
    cancel_time: float | None = None
    end_state: str | None = None
    end_time: float | None = None
    output: dict | None = None
    counts: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"batches/{self.batch_id}"

    def planned_end(self) -> str:
        text = json.dumps([i.request for i in self.items], ensure_ascii=False)
        if BATCH_FAIL in text:
            return "FAILED"
        if BATCH_EXPIRE in text:
            return "EXPIRED"
        return "SUCCEEDED"


def parse_create(model: str, body: dict, store: FileStore) -> tuple[str | None, list[BatchItem], str | None]:
    """(display name, items, input file name) from a batchGenerateContent body."""
    batch = body.get("batch") if isinstance(body, dict) else None
    if not isinstance(batch, dict):
        raise rpc.bad_request("* BatchGenerateContentRequest.batch: batch is required\n")
    cfg = batch.get("inputConfig") or {}
    items: list[BatchItem] = []
    input_file = None
    if isinstance(cfg.get("requests"), dict):
        for r in cfg["requests"].get("requests") or []:
            if not isinstance(r, dict) or not isinstance(r.get("request"), dict):
                raise rpc.bad_request("* inputConfig.requests.requests: each entry needs a request\n")
            items.append(BatchItem(request=r["request"], metadata=r.get("metadata")))
    elif cfg.get("fileName"):
        input_file = str(cfg["fileName"])
        file_id = input_file.split("files/", 1)[-1]
        rec = store.files.get(file_id)
        if rec is None:
            raise rpc.file_not_found(file_id)
        for n, line in enumerate(rec.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise rpc.bad_request(f"Invalid JSON in input file {input_file} line {n}") from exc
            if not isinstance(obj, dict) or not isinstance(obj.get("request"), dict):
                raise rpc.bad_request(f"Line {n} of {input_file} has no request object")
            items.append(BatchItem(request=obj["request"], key=None if obj.get("key") is None else str(obj["key"])))
    else:
        raise rpc.bad_request("* inputConfig: one of requests or fileName must be set\n")
    if not items:
        raise rpc.bad_request("The batch has no requests.")
    return batch.get("displayName"), items, input_file


def state(job: BatchJob, now: float, duration: float) -> str:
    if job.cancel_time is not None:
        return "CANCELLED"
    if job.end_state:
        return job.end_state
    elapsed = now - job.create_time
    if elapsed < duration * 0.25:
        return "PENDING"
    if elapsed < duration:
        return "RUNNING"
    return "DONE"


def refresh(job: BatchJob, now: float, config: SandboxConfig, store: FileStore) -> str:
    """Current state; finishing the job (computing results) the first time it is due."""
    st = state(job, now, config.batch_duration)
    if st != "DONE":
        return st
    job.end_state = job.planned_end()
    job.end_time = job.create_time + config.batch_duration
    if job.end_state == "SUCCEEDED":
        _run(job, now, store, config)
    return job.end_state


def _run(job: BatchJob, now: float, store: FileStore, config: SandboxConfig) -> None:
    """Each request answered as generateContent would (model, input window, files, triggers)."""
    results: list[tuple[BatchItem, dict]] = []
    ok = failed = 0
    for item in job.items:
        model = models.bare(str(item.request.get("model") or job.model))
        entry: dict = {}
        try:
            info = models.resolve(model, config.models, config.input_token_limit)
            if info is None:
                raise models.not_found(model, "generateContent")
            prep = generate.prepare(model, item.request, store, now, config.processing_delay,
                                    youtube_durations=config.youtube_durations)
            generate.check_input_limit(prep, info)
            if generate.BLOCK in prep.trigger_text:
                raise rpc.ApiError(400, "INVALID_ARGUMENT",
                                   "The request was blocked by the sandbox safety trigger (sandbox-block).")
            entry["response"], _, _ = generate.respond(prep)
            ok += 1
        except rpc.ApiError as exc:
            entry["error"] = {"code": _GRPC.get(exc.status, 2), "message": exc.message}
            failed += 1
        results.append((item, entry))
    job.counts = {"requestCount": str(len(job.items)), "successfulRequestCount": str(ok),
                  "failedRequestCount": str(failed), "pendingRequestCount": "0"}
    if job.input_file is None:
        inlined = []
        for item, entry in results:
            if item.metadata is not None:
                entry = {**entry, "metadata": item.metadata}
            inlined.append(entry)
        job.output = {"inlinedResponses": {"inlinedResponses": inlined}}
    else:
        lines = []
        for i, (item, entry) in enumerate(results):
            lines.append(json.dumps({"key": item.key if item.key is not None else str(i), **entry},
                                    ensure_ascii=False))
        rec = store.add_generated(("\n".join(lines) + "\n").encode("utf-8"),
                                  f"batch-{job.batch_id}-responses", "application/jsonl", now)
        job.output = {"responsesFile": rec.name}


def new_job(model: str, display_name: str | None, items: list[BatchItem], input_file: str | None,
            now: float) -> BatchJob:
    return BatchJob(secrets.token_hex(8), model, display_name, now, items, input_file)


def to_json(job: BatchJob, now: float, config: SandboxConfig, store: FileStore) -> dict:
    st = refresh(job, now, config, store)
    shown = "RUNNING" if st == "DONE" else st
    meta: dict = {
        "@type": _META_TYPE,
        "model": f"models/{job.model}",
        "name": job.name,
        "createTime": rfc3339(job.create_time),
        "updateTime": rfc3339(job.end_time or job.cancel_time or job.create_time),
        "state": f"BATCH_STATE_{shown}",
        "batchStats": job.counts or {"requestCount": str(len(job.items)),
                                     "pendingRequestCount": str(len(job.items))},
    }
    if job.display_name:
        meta["displayName"] = job.display_name
    if job.input_file:
        meta["inputConfig"] = {"fileName": job.input_file}
    done = shown in ("SUCCEEDED", "FAILED", "EXPIRED", "CANCELLED")
    if done:
        meta["endTime"] = rfc3339(job.end_time or job.cancel_time or now)
    op: dict = {"name": job.name, "metadata": meta, "done": done}
    if shown == "SUCCEEDED" and job.output is not None:
        meta["output"] = job.output
        op["response"] = {"@type": _OUTPUT_TYPE, **job.output}
    elif shown == "FAILED":
        op["error"] = {"code": 13, "message": "The batch failed (sandbox-batch-fail)."}
    elif shown == "EXPIRED":
        op["error"] = {"code": 4, "message": "The batch expired before it could finish (sandbox-batch-expire)."}
    elif shown == "CANCELLED":
        op["error"] = {"code": 1, "message": "The batch was cancelled."}
    return op
