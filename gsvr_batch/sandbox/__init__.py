"""A local HTTP server that speaks the Gemini Developer API REST protocol (offline sandbox).

The unmodified google-genai SDK talks to it over real HTTP, so the production code path
runs in tests, demos and benchmarks without a network or a key::

    from gsvr_batch.sandbox import SandboxConfig, SandboxServer
    with SandboxServer(SandboxConfig(rpm=10)) as srv:
        client = genai.Client(api_key="sandbox-key",
                              http_options=types.HttpOptions(base_url=srv.base_url))

or ``gsvr-batch sandbox`` and ``export GOOGLE_GEMINI_BASE_URL=<printed url>``.

Endpoints (``{v}`` is ``v1``, ``v1beta`` or ``v1alpha``; the key comes in ``x-goog-api-key``
or ``?key=``):

* ``POST /upload/{v}/files`` resumable upload (``x-goog-upload-command: start`` → header
  ``x-goog-upload-url``; then ``upload`` / ``upload, finalize`` chunks, bytes kept on disk;
  the final answer is ``{"file": {...}}``). ``GET /{v}/files`` (pageSize/pageToken),
  ``GET|DELETE /{v}/files/{id}``, ``GET /{v}/files/{id}:download?alt=media`` (generated
  files only, e.g. batch results). Files are PROCESSING for ``processing_delay`` seconds,
  then ACTIVE; they expire (``expirationTime``) 48 h after creation. ``sha256Hash`` is
  base64 of the hex digest, as the real API sends it.
* ``POST /{v}/models/{m}:generateContent`` and ``:countTokens``: a ``fileData`` part with
  a Files API uri or a YouTube URL, plus text. The answer is a lesson skeleton (see
  ``lesson.py``); usage = 300 tokens per video second (100 with MEDIA_RESOLUTION_LOW) +
  len(prompt)/4. A file that is not ACTIVE → 400 FAILED_PRECONDITION; an unknown file →
  403 PERMISSION_DENIED (as the real API answers; it does not say 404).
* ``POST /{v}/models/{m}:batchGenerateContent`` (inline requests or a JSONL input file),
  ``GET /{v}/batches``, ``GET|DELETE /{v}/batches/{id}``, ``POST /{v}/batches/{id}:cancel``.
  PENDING → RUNNING → SUCCEEDED over ``batch_duration`` seconds.

Errors use the real JSON shapes: a wrong key → 400 INVALID_ARGUMENT with ErrorInfo
``API_KEY_INVALID``; no key → 403 PERMISSION_DENIED; quotas → 429 RESOURCE_EXHAUSTED with
``google.rpc.QuotaFailure`` (quotaId ``GenerateRequestsPerMinutePerProjectPerModel-FreeTier``,
``...PerDay...``, ``GenerateContentInputTokensPerModelPerMinute-FreeTier``,
``FileRequestsPerMinutePerProject``), ``google.rpc.Help`` and ``google.rpc.RetryInfo``;
500 INTERNAL; 503 UNAVAILABLE "The model is overloaded"; 504 DEADLINE_EXCEEDED.

Limits (``SandboxConfig``): ``rpm``/``tpm`` per model over a sliding 60 s window, ``rpd`` per
model per day (midnight Pacific, or ``day_reset`` seconds), ``file_rpm`` for Files API
calls; ``retry_delay`` overrides the computed RetryInfo delay. ``latency`` seconds are added
to each generate call; ``fail_rate`` makes generate calls and upload starts fail with 500,
503 or a dropped connection (``seed`` makes it repeatable). The clock is injectable:
``SandboxServer(config, clock=fn)``.

Fault triggers (in the prompt text, the fileUri, or an uploaded file's display name):
``sandbox-block`` (candidate with finishReason SAFETY, no text), ``sandbox-block-prompt``
(promptFeedback.blockReason SAFETY, no candidates), ``sandbox-fail-processing`` (the
upload ends FAILED with ``error``), ``sandbox-never-active`` (stays PROCESSING),
``sandbox-hang`` (generate never answers until the server stops, then drops the
connection), and in batch requests ``sandbox-batch-fail`` / ``sandbox-batch-expire`` (the
job ends FAILED / EXPIRED); ``sandbox-block`` in one batch request gives that request an
``error`` in the results.

Control API (no key needed; also as Python methods on ``SandboxServer``):

* ``GET /_sandbox/stats`` → counts by kind and status, successful generate calls per model
  and per ``x-gsvr-task-id``, quota usage, pending injections (``stats()``).
* ``GET /_sandbox/requests`` → the request log (``.requests``).
* ``GET /_sandbox/config``; ``POST /_sandbox/config`` with any of ``rpm rpd tpm file_rpm
  latency fail_rate processing_delay batch_duration retry_delay day_reset api_key``
  (``update_config(**kw)``), and actions ``"inject_429": {"count": N, "retry_delay": X,
  "per": "minute"|"day", "model": M?}`` (``inject_429()``: the next N generate calls answer
  429), ``"inject_errors": {"count": N, "status": 500|503|504|"drop"}`` (``inject_errors()``),
  ``"reset_day": true``.
* ``POST /_sandbox/reset_day`` (``reset_day()``) starts a fresh quota day.

Request log: one dict per request in ``.requests`` and, with ``log_path``, one flushed JSONL
line each: ``ts`` (unix float), ``method``, ``path`` (no query string, so never a key),
``kind`` (upload_start, upload_chunk, upload_finalize, files_get, files_list,
files_delete, files_download, generate, count_tokens, batch_create, batch_get,
batch_list, batch_cancel, batch_delete, model_get, control_*), ``model``, ``status`` (None
for a dropped connection), ``file``, ``display_name``, ``task_id`` (from the
``x-gsvr-task-id`` header), ``tokens`` ({prompt, candidates}), ``injected`` (the fault,
if any), ``elapsed``.
"""

from __future__ import annotations

from .config import SandboxConfig
from .server import SandboxServer

__all__ = ["SandboxConfig", "SandboxServer"]
