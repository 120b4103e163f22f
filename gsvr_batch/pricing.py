"""What Gemini calls cost: a pricing table (data file, user-overridable), the arithmetic, estimates.

The built-in table (``gsvr_batch/data/pricing.json``) says where and when it was read. Prices are
USD per 1M tokens: ``input`` (text / image / video), ``input_audio`` (audio; omitted = like
``input``), ``output`` (thinking tokens included), and ``input_long`` / ``output_long`` for the
whole call when the prompt exceeds ``long_context_threshold`` (200k for the Pro models). Batch
Mode costs ``batch_discount`` (50 %) of the online price.

How a call is billed (``PriceTable.cost``):

* prompt tokens at the ``input`` rate — except the audio part: Google bills the sound track of a
  video at the audio rate (3x the video rate on 2.5 Flash). When ``usage_metadata`` breaks the
  prompt down by modality (``prompt_tokens_details``, kept by :func:`usage_from_metadata`) the
  AUDIO share gets the audio rate; without it every prompt token is billed at ``input``, which
  under-states a Flash bill by up to ~30 % of its input part;
* ``candidates_tokens`` + ``thoughts_tokens`` at the ``output`` rate (thinking is billed as output);
* ``cached_tokens`` (``usage_metadata.cached_content_token_count``: the part of the prompt the API
  served from its cache — implicit caching of a repeated prefix on the 2.5 models) at the
  ``input_cached`` rate (``input_audio_cached`` for their AUDIO share when ``cache_tokens_details``
  says so; ``input_cached_long`` above the long-context threshold). They are part of
  ``prompt_tokens``, so they are taken out of the full-rate part. A model without an
  ``input_cached`` price bills them at the full rate (no saving assumed). :meth:`PriceTable.cache_saving`
  is what the cache saved against the full rate.

Estimates before a call (dry run, cost limit) follow Google's video tokenizer: 1 frame per second
at 258 tokens (66 at low media resolution) + 32 audio tokens per second + a few tokens of
timestamps, which Google rounds to "about 300 tokens per second (100 at low resolution)"; we use
300 / 100, with 32 of them audio.
"""

from __future__ import annotations

import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .errors import UsageError

BUILTIN = Path(__file__).resolve().parent / "data" / "pricing.json"
MODES = ("online", "batch")
_PRICE_FIELDS = ("input", "input_audio", "output", "input_long", "output_long", "input_audio_long",
                 "input_cached", "input_audio_cached", "input_cached_long")
_ROW_FIELDS = _PRICE_FIELDS + ("note",)
_TOP_FIELDS = ("models", "source", "read_on", "checked_on", "currency", "batch_discount",
               "long_context_threshold", "replace")

UNKNOWN_VIDEO_SECONDS = 3600.0  # a YouTube link's length is unknown until the model answers: assume 1 h
DEFAULT_OUTPUT_TOKENS = 2048  # no history, no max_output_tokens: a long lesson plan, thinking excluded
MIN_PAST_RUNS = 3  # fewer past outputs than this are too few for a median to beat the template's cap

# "gemini-2.5-flash-001", "gemini-2.5-flash-preview-09-2025", "gemini-2.5-flash-latest" price as
# "gemini-2.5-flash"; "gemini-2.5-flash-image" does not (a different product, priced differently).
_VERSION_SUFFIX = re.compile(r"-(\d{3}|latest|preview(-[\w-]+)?|exp(-[\w-]+)?|\d{2}-\d{4})$")


@dataclass(frozen=True)
class ModelPrice:
    """USD per 1M tokens for one model (None: that part has no separate price)."""

    input: float
    output: float
    input_audio: float | None = None
    input_long: float | None = None
    output_long: float | None = None
    input_audio_long: float | None = None
    input_cached: float | None = None  # cached prompt tokens (text / image / video); None: no discount known
    input_audio_cached: float | None = None  # cached AUDIO tokens (omitted: like input_cached)
    input_cached_long: float | None = None  # cached tokens of a prompt above the threshold (omitted: input_cached)
    note: str = ""

    def cached_rates(self, long: bool) -> tuple[float, float] | None:
        """(cached text/video rate, cached audio rate), or None when the model has no cached price."""
        if self.input_cached is None:
            return None
        rate = self.input_cached_long if long and self.input_cached_long is not None else self.input_cached
        return rate, self.input_audio_cached if self.input_audio_cached is not None else rate

    def rates(self, long: bool) -> tuple[float, float, float]:
        """(text/video input, audio input, output) rates for a short or a long prompt."""
        if not long:
            audio = self.input_audio if self.input_audio is not None else self.input
            return self.input, audio, self.output
        rate_in = self.input_long if self.input_long is not None else self.input
        if self.input_audio_long is not None:
            audio = self.input_audio_long
        elif self.input_audio is None:
            audio = rate_in  # audio priced like video in this model: it follows the long tier too
        else:
            audio = self.input_audio
        return rate_in, audio, self.output_long if self.output_long is not None else self.output


@dataclass
class PriceTable:
    models: dict[str, ModelPrice]
    batch_discount: float = 0.5
    long_context_threshold: int = 200_000
    source: str = ""
    read_on: str = ""
    files: list[str] = field(default_factory=list)  # where the table came from (built-in, override)

    def known(self) -> list[str]:
        return sorted(self.models)

    def lookup(self, model: str) -> str | None:
        """The table's name for ``model`` ("models/gemini-2.5-flash-001" → "gemini-2.5-flash"), or None."""
        name = model.split("/", 1)[1] if model.startswith("models/") else model
        if name in self.models:
            return name
        family = [m for m in self.models if name.startswith(m + "-") and _VERSION_SUFFIX.fullmatch(name[len(m):])]
        return max(family, key=len) if family else None

    def price(self, model: str) -> ModelPrice:
        name = self.lookup(model)
        if name is None:
            raise UsageError(self._unknown_message([model]))
        return self.models[name]

    def check_models(self, models: Iterable[str]) -> None:
        """Raise UsageError naming every model without a price; call it at validation, before any work."""
        missing = sorted({m for m in models if self.lookup(m) is None})
        if missing:
            raise UsageError(self._unknown_message(missing))

    def _unknown_message(self, missing: list[str]) -> str:
        names = ", ".join(repr(m) for m in missing)
        return (f"no price for model {names} in the pricing table ({', '.join(self.files) or 'built-in'}); "
                f"known models: {', '.join(self.known())}. Use a known model, or add its prices with "
                f"--pricing FILE (JSON: {{\"models\": {{\"<model>\": {{\"input\": 0.3, \"output\": 2.5}}}}}})")

    def cost(self, model: str, usage: dict[str, Any], *, mode: str = "online") -> float:
        """USD for one call, from its usage_metadata fields.

        ``usage``: prompt_tokens, candidates_tokens, optional thoughts_tokens and optional
        prompt_tokens_details = [{"modality": "AUDIO", "token_count": n}, ...].
        """
        _check_mode(mode)
        p = self.price(model)
        prompt = _int(usage.get("prompt_tokens"))
        out = _int(usage.get("candidates_tokens")) + _int(usage.get("thoughts_tokens"))
        audio = min(audio_tokens_of(usage), prompt)
        long = prompt > self.long_context_threshold
        rate_in, rate_audio, rate_out = p.rates(long)
        cached_video, cached_audio = _cached_split(usage, prompt, audio)
        cached = p.cached_rates(long)
        if cached is None:  # no cached price known: the full rate (a bill is never under-stated)
            cached = (rate_in, rate_audio)
        usd = (((prompt - audio) - cached_video) * rate_in + (audio - cached_audio) * rate_audio
               + cached_video * cached[0] + cached_audio * cached[1] + out * rate_out) / 1_000_000
        return usd * self.batch_discount if mode == "batch" else usd

    def cache_saving(self, model: str, usage: dict[str, Any], *, mode: str = "online") -> float:
        """USD the cached tokens of one call saved against the full input rate (0 when none or unknown)."""
        if not _int(usage.get("cached_tokens")):
            return 0.0
        full = {k: v for k, v in usage.items() if k not in ("cached_tokens", "cache_tokens_details")}
        return max(0.0, self.cost(model, full, mode=mode) - self.cost(model, usage, mode=mode))

    def estimate_cost(self, model: str, input_tokens: int, output_tokens: int, mode: str = "online",
                      *, audio_tokens: int = 0) -> float:
        """USD for a call not made yet; ``audio_tokens`` is the audio share of ``input_tokens``."""
        usage: dict[str, Any] = {"prompt_tokens": input_tokens, "candidates_tokens": output_tokens}
        if audio_tokens:
            usage["prompt_tokens_details"] = [{"modality": "AUDIO", "token_count": audio_tokens}]
        return self.cost(model, usage, mode=mode)


def _int(value: Any) -> int:
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise UsageError(f"unknown pricing mode {mode!r}: use online or batch")


def _cached_split(usage: dict[str, Any], prompt: int, audio: int) -> tuple[int, int]:
    """(cached non-audio, cached audio) tokens, each within its part of the prompt.

    ``cache_tokens_details`` gives the AUDIO share of the cached tokens; without it they are
    taken from the non-audio part first (video frames are most of a lecture's prompt).
    """
    cached = min(_int(usage.get("cached_tokens")), prompt)
    if not cached:
        return 0, 0
    details = usage.get("cache_tokens_details")
    if details:
        c_audio = min(audio_tokens_of({"prompt_tokens_details": details}), audio, cached)
    else:
        c_audio = max(0, cached - (prompt - audio))
    c_video = min(cached - c_audio, prompt - audio)
    return c_video, c_audio


def audio_tokens_of(usage: dict[str, Any]) -> int:
    """The AUDIO tokens in ``usage["prompt_tokens_details"]`` (0 when not broken down)."""
    total = 0
    for d in usage.get("prompt_tokens_details") or []:
        if isinstance(d, dict) and str(d.get("modality", "")).upper().endswith("AUDIO"):
            total += _int(d.get("token_count"))
    return total


def usage_from_metadata(meta: Any) -> dict[str, Any]:
    """The fields :meth:`PriceTable.cost` needs, from an SDK ``usage_metadata`` (object or dict).

    Keeps ``thoughts_tokens`` (billed as output), ``cached_tokens`` (``cached_content_token_count``,
    billed at the cached rate) with its ``cache_tokens_details`` breakdown, and the AUDIO/VIDEO/TEXT
    breakdown of the prompt, which ``prompt_tokens`` alone would lose.
    """
    if meta is None:
        return {}

    def get(name: str, camel: str) -> Any:
        if isinstance(meta, dict):
            return meta.get(name, meta.get(camel))
        return getattr(meta, name, None)

    out: dict[str, Any] = {
        "prompt_tokens": _int(get("prompt_token_count", "promptTokenCount")),
        "candidates_tokens": _int(get("candidates_token_count", "candidatesTokenCount")),
        "total_tokens": _int(get("total_token_count", "totalTokenCount")),
    }
    thoughts = _int(get("thoughts_token_count", "thoughtsTokenCount"))
    if thoughts:
        out["thoughts_tokens"] = thoughts
    cached = _int(get("cached_content_token_count", "cachedContentTokenCount"))
    if cached:
        out["cached_tokens"] = cached  # part of prompt_tokens, billed at the cached rate
    for name, camel, key in (("prompt_tokens_details", "promptTokensDetails", "prompt_tokens_details"),
                             ("cache_tokens_details", "cacheTokensDetails", "cache_tokens_details")):
        details = _modalities(get(name, camel))
        if details and (key != "cache_tokens_details" or cached):
            out[key] = details
    return out


def _modalities(items: Any) -> list[dict[str, Any]]:
    """[{"modality": "AUDIO", "token_count": n}, ...] from SDK ModalityTokenCount objects or dicts."""
    details = []
    for d in items or []:
        modality = d.get("modality") if isinstance(d, dict) else getattr(d, "modality", None)
        count = (d.get("token_count", d.get("tokenCount")) if isinstance(d, dict)
                 else getattr(d, "token_count", None))
        modality = getattr(modality, "value", modality)  # SDK enum → "AUDIO"
        if modality:
            details.append({"modality": str(modality), "token_count": _int(count)})
    return details


def cache_totals(tasks: Iterable[Any], table: PriceTable | None = None, mode: str = "online") -> tuple[int, float]:
    """(cached prompt tokens, USD the cache saved) over the tasks' usage, their clips' included.

    What ``status``, ``replay`` and the report show next to the cost. The saving is priced with
    ``table`` (the built-in one by default); a model it does not know saved nothing.
    """
    if table is None:
        table = _default_table()
    tokens, saved = 0, 0.0
    for t in tasks:
        usages = [getattr(t, "usage", None) or {}]
        usages += [p.get("usage") or {} for p in (getattr(t, "partials", None) or {}).values() if isinstance(p, dict)]
        for u in usages:
            n = _int(u.get("cached_tokens")) if isinstance(u, dict) else 0
            if not n:
                continue
            tokens += n
            try:
                saved += table.cache_saving(getattr(t, "model", ""), u, mode=mode if mode in MODES else "online")
            except UsageError:
                pass
    return tokens, saved


# -- loading -----------------------------------------------------------------------------------

def _parse(doc: Any, where: str) -> tuple[dict[str, ModelPrice], dict[str, Any]]:
    example = '{"models": {"gemini-2.5-flash": {"input": 0.3, "output": 2.5}}}'
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
        raise UsageError(f"{where}: a pricing file is a JSON object with a 'models' object (e.g. {example})")
    unknown_top = sorted(k for k in doc if k not in _TOP_FIELDS and not k.startswith("_"))
    if unknown_top:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown_top)}; allowed: {', '.join(_TOP_FIELDS)} "
                         f"(keys starting with _ are comments)")
    models: dict[str, ModelPrice] = {}
    for name, row in doc["models"].items():
        if not isinstance(row, dict) or "input" not in row or "output" not in row:
            raise UsageError(f"{where}: model {name!r} needs at least 'input' and 'output' prices "
                             f"(USD per 1M tokens), e.g. {example}")
        unknown = sorted(set(row) - set(_ROW_FIELDS))
        if unknown:
            raise UsageError(f"{where}: model {name!r} has unknown field(s) {', '.join(unknown)}; "
                             f"allowed: {', '.join(_ROW_FIELDS)}")
        vals: dict[str, Any] = {}
        for k, v in row.items():
            if k == "note":
                vals[k] = str(v)
                continue
            if v is None and k != "input" and k != "output":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise UsageError(f"{where}: model {name!r}: {k} must be a number (USD per 1M tokens), got {v!r}")
            if v < 0:
                raise UsageError(f"{where}: model {name!r}: {k} cannot be negative")
            vals[k] = float(v)
        models[name] = ModelPrice(**vals)
    meta = {k: doc[k] for k in ("batch_discount", "long_context_threshold", "source", "read_on", "replace")
            if k in doc}
    if "batch_discount" in meta:
        bd = meta["batch_discount"]
        if isinstance(bd, bool) or not isinstance(bd, (int, float)) or not 0 < bd <= 1:
            raise UsageError(f"{where}: batch_discount must be a number in (0, 1] (0.5 = half price), got {bd!r}")
    if "long_context_threshold" in meta:
        lt = meta["long_context_threshold"]
        if isinstance(lt, bool) or not isinstance(lt, int) or lt <= 0:
            raise UsageError(f"{where}: long_context_threshold must be a positive whole number of tokens, got {lt!r}")
    return models, meta


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read pricing file {path}: {exc.strerror or exc}") from exc
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"pricing file {path} is not valid JSON: {exc}") from exc


def load_pricing(override: str | Path | None = None) -> PriceTable:
    """The built-in table, with ``override``'s models and settings laid over it.

    Every model the override lists replaces the built-in entry whole; ``"replace": true`` in the
    override drops the built-in models entirely. Problems raise UsageError naming the file.
    """
    models, meta = _parse(_read(BUILTIN), str(BUILTIN))
    files = [str(BUILTIN)]
    if override:
        path = Path(override).expanduser()  # `--pricing '~/p.json'` (quoted, or --pricing=~/p.json)
        omodels, ometa = _parse(_read(path), str(path))
        if ometa.pop("replace", False) is True:
            models = {}
        models.update(omodels)
        meta.update(ometa)
        files.append(str(path))
    return PriceTable(models=models, batch_discount=float(meta.get("batch_discount", 0.5)),
                      long_context_threshold=int(meta.get("long_context_threshold", 200_000)),
                      source=str(meta.get("source", "")), read_on=str(meta.get("read_on", "")), files=files)


def batch_price_table(settings: dict[str, Any] | None) -> tuple[PriceTable | None, str]:
    """The journaled batch's price table and mode (what ``status``, ``replay`` and the report price
    cached tokens with): its ``--pricing`` file, or None — the built-in table — when that file cannot
    be read any more (moved, edited into something broken)."""
    settings = settings or {}
    try:
        table: PriceTable | None = load_pricing(settings.get("pricing"))
    except Exception:  # noqa: BLE001 - a moved --pricing file: the built-in table still prices it
        table = None
    return table, str(settings.get("mode") or "online")


# -- estimates ---------------------------------------------------------------------------------
# Token estimates before a call follow one rule, in context.py (video_tokens / request_tokens);
# the plans, the TPM charge, the cost limit and the dry run all use it.

_DEFAULT_TABLE: PriceTable | None = None


def _default_table() -> PriceTable:
    global _DEFAULT_TABLE
    if _DEFAULT_TABLE is None:
        _DEFAULT_TABLE = load_pricing()
    return _DEFAULT_TABLE


def estimate_cost(model: str, input_tokens: int, output_tokens: int, mode: str = "online", *,
                  audio_tokens: int = 0, table: PriceTable | None = None) -> float:
    """USD for a call not made yet, from the given table (default: the built-in one)."""
    if table is None:
        table = _default_table()
    return table.estimate_cost(model, input_tokens, output_tokens, mode, audio_tokens=audio_tokens)
