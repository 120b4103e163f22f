"""A local HTTP server that speaks the Gemini Developer API REST protocol (offline sandbox).

The unmodified google-genai SDK talks to it over real HTTP, so the production code path
runs in tests, demos and benchmarks without a network or a key::

    from gsvr_batch.sandbox import SandboxConfig, SandboxServer
    with SandboxServer(SandboxConfig(rpm=10)) as srv:
        client = genai.Client(api_key="test-key-not-real",
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
  A chunk sent to a finalized session → 400 FAILED_PRECONDITION "Upload session is already
  finalized or cancelled." (with ``x-goog-upload-status: final``).
* ``GET /{v}/models`` and ``GET /{v}/models/{m}``: the model table (``models.py``) in the real
  shape (``inputTokenLimit`` 1,048,576 for gemini-2.5-pro / -flash / -flash-lite, 2.0-flash /
  -flash-lite, 3-pro-preview and Google's -latest aliases; ``outputTokenLimit`` 65,536, 8,192
  for 2.0). ``models/`` prefixes and version suffixes (``-001``, ``-latest``,
  ``-preview-09-2025``…) resolve to their model. Any other model → 404 NOT_FOUND on every
  endpoint: ``models/NAME is not found for API version v1beta, or is not supported for
  generateContent. Call ListModels…`` (the method named is the one called: countTokens,
  batchGenerateContent), and for ``GET`` ``Model is not found: models/NAME for api version
  v1beta``, as the real API words them ({v} as in the request path).
* ``POST /{v}/models/{m}:generateContent`` and ``:countTokens``: ``fileData`` parts with a
  Files API uri or a YouTube URL (or ``inlineData``), plus text. The answer is a lesson
  skeleton (see ``lesson.py``) whose timestamps cover what the request covers: the first
  media part's whole length or its clip (absolute times; ``H:MM:SS`` once the stretch
  reaches past the first hour, ``MM:SS`` otherwise), or — for a text-only request, e.g. one
  merging partial lessons — the range of the timestamps written in the prompt (none: 600 s
  assumed). A file that is not ACTIVE → 400 FAILED_PRECONDITION; an
  unknown file → 403 PERMISSION_DENIED (as the real API answers; it does not say 404).
  A prompt over the model's input window → 400 INVALID_ARGUMENT ``The input token count (N)
  exceeds the maximum number of tokens allowed (LIMIT).`` (generateContent and each batch
  request; countTokens always answers the count).
* ``POST /{v}/models/{m}:batchGenerateContent`` (inline requests or a JSONL input file),
  ``GET /{v}/batches``, ``GET|DELETE /{v}/batches/{id}``, ``POST /{v}/batches/{id}:cancel``.
  PENDING → RUNNING → SUCCEEDED over ``batch_duration`` seconds. Each request is answered as
  generateContent would answer it (model, input window, files); an error becomes that
  request's ``error``. Batch requests use no quota and no implicit cache.

Tokens (Google's documented video tokenizer; ``lesson.video_tokens``), per media part:
``ceil(seconds × fps)`` frames × 258 tokens (66 with ``MEDIA_RESOLUTION_LOW``, from
``generationConfig.mediaResolution`` or the part's own ``mediaResolution.level``; MEDIUM and
HIGH count as the default) + ``ceil(seconds × 32)`` audio tokens when the media has a sound
track (YouTube videos and media PyAV cannot read are assumed to have one); plus
``ceil(len(text) / 4)`` for all the text. ``fps`` is ``videoMetadata.fps`` (0 < fps ≤ 24,
default 1). ``seconds`` is the part's length — probed with PyAV for uploads and inline data,
``youtube_durations[video id]`` for YouTube (else 600 s assumed) — clipped by
``videoMetadata.startOffset``/``endOffset`` (protobuf Duration JSON, ``"1200s"`` /
``"1200.5s"``) to [start, min(end, length)]: an end past the video means "to the end"; a start
at or past the end, an end before the start, a bad fps or a malformed Duration → 400
INVALID_ARGUMENT. ``promptTokensDetails`` lists TEXT, VIDEO (frames) and AUDIO separately. E.g.
a 6 s upload with sound: 6×258 + 6×32 = 1,740; an hour: 1,044,000 (default) / 352,800 (low).

Implicit caching: when a generate request's first media part (same file or YouTube video, same
resolution, clip and fps) went to the same model within ``cache_ttl`` seconds (default 300; 0
is off) and has at least 1,024 tokens (2,048 for Pro models), the answer's usage has
``cachedContentTokenCount`` = that part's tokens and ``cacheTokensDetails`` (VIDEO and AUDIO
shares); ``promptTokenCount`` still includes them, as in the real API.

YouTube quota: ``youtube_seconds_per_day`` (the free tier's documented limit is 8 h = 28,800 s)
counts the (clipped) seconds of YouTube video of admitted generate calls per quota day; a call
that would pass it → 429 RESOURCE_EXHAUSTED with a QuotaFailure whose quotaId is
``GenerateContentYouTubeVideoSecondsPerDayPerProject-FreeTier`` and RetryInfo until the day
ends. Google does not document this quota's id or metric: they are our assumption, shaped like
the real ones (``PerDay`` in the id is what tells a client it is a daily quota).

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
503 or a dropped connection (``seed`` makes it repeatable); ``upload_lost_answer_rate`` makes
an upload's finalize take effect (the file exists and turns ACTIVE) but answer 503 without an
``x-goog-upload-status`` header — google-genai 3.6 then re-sends the chunk on the same session
after 1 s, gets 400 FAILED_PRECONDITION "Upload session is already finalized or cancelled."
and raises ``google.genai.errors.ClientError`` (code 400, status FAILED_PRECONDITION).
``models`` (name → input limit) adds models; ``input_token_limit`` overrides every model's
limit. The clock is injectable: ``SandboxServer(config, clock=fn)``.

Fault triggers (in the prompt text, the fileUri, or an uploaded file's display name):
``sandbox-block`` (candidate with finishReason SAFETY, no text), ``sandbox-block-prompt``
(promptFeedback.blockReason SAFETY, no candidates), ``sandbox-fail-processing`` (the
upload ends FAILED with ``error``), ``sandbox-never-active`` (stays PROCESSING),
``sandbox-hang`` (generate never answers until the server stops, then drops the
connection), ``sandbox-upload-lost`` in a display name (the first finalize of that name
loses its answer, as above) and ``sandbox-upload-lost-drop`` (the same, but the connection
drops: the SDK raises ``httpx2.RemoteProtocolError`` and does not retry), and in batch requests ``sandbox-batch-fail`` / ``sandbox-batch-expire`` (the
job ends FAILED / EXPIRED); ``sandbox-block`` in one batch request gives that request an
``error`` in the results.

Control API (no key needed; also as Python methods on ``SandboxServer``):

* ``GET /_sandbox/stats`` → counts by kind and status, successful generate calls per model
  and per ``x-gsvr-task-id``, their tokens (``generate_ok_tokens``: prompt, cached,
  candidates), quota usage (incl. ``youtube_seconds_today``), pending injections (``stats()``).
* ``GET /_sandbox/requests`` → the request log (``.requests``).
* ``GET /_sandbox/config``; ``POST /_sandbox/config`` with any of ``rpm rpd tpm file_rpm
  latency fail_rate processing_delay batch_duration retry_delay day_reset api_key models
  input_token_limit youtube_durations youtube_seconds_per_day cache_ttl
  upload_lost_answer_rate``
  (``update_config(**kw)``), and actions ``"inject_429": {"count": N, "retry_delay": X,
  "per": "minute"|"day", "model": M?}`` (``inject_429()``: the next N generate calls answer
  429), ``"inject_errors": {"count": N, "status": 500|503|504|"drop"}`` (``inject_errors()``),
  ``"reset_day": true``.
* ``POST /_sandbox/reset_day`` (``reset_day()``) starts a fresh quota day.

Request log: one dict per request in ``.requests`` and, with ``log_path``, one flushed JSONL
line each: ``ts`` (unix float), ``method``, ``path`` (no query string, so never a key),
``kind`` (upload_start, upload_chunk, upload_finalize, files_get, files_list,
files_delete, files_download, generate, count_tokens, batch_create, batch_get,
batch_list, batch_cancel, batch_delete, model_get, model_list, control_*), ``model``,
``status`` (None for a dropped connection), ``file``, ``display_name``, ``task_id`` (from the
``x-gsvr-task-id`` header), ``tokens`` ({prompt, candidates, cached} for generate; {prompt}
for countTokens), ``injected`` (the fault, if any), ``elapsed``; generate and count_tokens
entries also have ``media_resolution`` (of the first media part, else the request's),
``clip`` ([start, end] seconds actually counted, or None without offsets), ``fps`` (None
without media), ``youtube`` (any YouTube part) and ``merge`` (True for a text-only request).
An entry is logged just before its answer is sent, so a client holding an answer finds it.

CLI: ``gsvr-batch sandbox`` has flags for most of these (``--input-token-limit``,
``--extra-model NAME=LIMIT``, ``--youtube-duration ID=SECONDS``, ``--youtube-seconds-per-day``,
``--cache-ttl``, ``--upload-lost-answer-rate``, besides the quota and fault flags).
"""

from __future__ import annotations

from .config import SandboxConfig
from .server import SandboxServer

__all__ = ["SandboxConfig", "SandboxServer"]
