"""What Gemini calls cost: a pricing table (data file, user-overridable) and the arithmetic.

The built-in table (``gsvr_batch/data/pricing.json``) says where and when it was read. Prices
are USD per 1M tokens: ``input`` (text / image / video), ``input_audio``, ``output`` (thinking
included), and ``input_long`` / ``output_long`` for prompts above ``long_context_threshold``
(Pro models). Batch Mode costs ``batch_discount`` (50 %) of the online price.

A video's prompt tokens are mostly frames (258 per frame at 1 fps) plus 32 audio tokens per
second; when ``usage_metadata`` breaks prompt tokens down by modality
(``prompt_tokens_details``) the audio part is billed at the audio rate, otherwise every
prompt token is billed at the ``input`` rate — a small under-estimate for flash models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError

BUILTIN = Path(__file__).resolve().parent / "data" / "pricing.json"
_FIELDS = ("input", "input_audio", "output", "input_long", "output_long")


@dataclass(frozen=True)
class ModelPrice:
    input: float
    output: float
    input_audio: float | None = None
    input_long: float | None = None
    output_long: float | None = None


@dataclass
class PriceTable:
    models: dict[str, ModelPrice]
    batch_discount: float = 0.5
    long_context_threshold: int = 200_000
    source: str = ""
    read_on: str = ""
    files: list[str] = field(default_factory=list)

    def price(self, model: str) -> ModelPrice:
        name = model.split("/", 1)[1] if model.startswith("models/") else model
        if name in self.models:
            return self.models[name]
        # versioned names ("gemini-2.5-flash-001", "...-preview-09-2025") use their family's price
        family = [m for m in self.models if name.startswith(m)]
        if family:
            return self.models[max(family, key=len)]
        raise UsageError(f"no price for model {model!r} (known: {', '.join(sorted(self.models))}); "
                         f"add it with --pricing FILE")

    def cost(self, model: str, usage: dict[str, Any], *, mode: str = "online") -> float:
        """USD for one call from its usage_metadata fields (prompt_tokens, candidates_tokens, ...)."""
        p = self.price(model)
        prompt = int(usage.get("prompt_tokens") or 0)
        out = int(usage.get("candidates_tokens") or 0) + int(usage.get("thoughts_tokens") or 0)
        long = prompt > self.long_context_threshold
        rate_in = (p.input_long if long and p.input_long is not None else p.input)
        rate_out = (p.output_long if long and p.output_long is not None else p.output)
        audio = 0
        for d in usage.get("prompt_tokens_details") or []:
            if str(d.get("modality", "")).upper() == "AUDIO":
                audio += int(d.get("token_count") or 0)
        audio = min(audio, prompt)
        rate_audio = p.input_audio if p.input_audio is not None else rate_in
        usd = ((prompt - audio) * rate_in + audio * rate_audio + out * rate_out) / 1_000_000
        if mode == "batch":
            usd *= self.batch_discount
        elif mode != "online":
            raise UsageError(f"unknown pricing mode {mode!r}: online or batch")
        return usd

    def estimate_cost(self, model: str, input_tokens: int, output_tokens: int, mode: str = "online") -> float:
        return self.cost(model, {"prompt_tokens": input_tokens, "candidates_tokens": output_tokens}, mode=mode)


def _parse(doc: Any, where: str) -> tuple[dict[str, ModelPrice], dict[str, Any]]:
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
        raise UsageError(f"{where}: a pricing file is a JSON object with a 'models' object "
                         f"(e.g. {{\"models\": {{\"gemini-2.5-flash\": {{\"input\": 0.3, \"output\": 2.5}}}}}})")
    models = {}
    for name, row in doc["models"].items():
        if not isinstance(row, dict) or "input" not in row or "output" not in row:
            raise UsageError(f"{where}: model {name!r} needs at least 'input' and 'output' prices (USD per 1M tokens)")
        unknown = set(row) - set(_FIELDS)
        if unknown:
            raise UsageError(f"{where}: model {name!r} has unknown field(s) {', '.join(sorted(unknown))}; "
                             f"allowed: {', '.join(_FIELDS)}")
        try:
            vals = {k: (float(v) if v is not None else None) for k, v in row.items()}
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{where}: model {name!r}: prices must be numbers") from exc
        if any(v is not None and v < 0 for v in vals.values()):
            raise UsageError(f"{where}: model {name!r}: prices cannot be negative")
        models[name] = ModelPrice(**vals)
    meta = {k: doc[k] for k in ("batch_discount", "long_context_threshold", "source", "read_on") if k in doc}
    return models, meta


def load_pricing(override: str | Path | None = None) -> PriceTable:
    """The built-in table, with ``override``'s models and settings laid over it."""
    doc = json.loads(BUILTIN.read_text(encoding="utf-8"))
    models, meta = _parse(doc, str(BUILTIN))
    files = [str(BUILTIN)]
    if override:
        path = Path(override)
        try:
            odoc = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise UsageError(f"cannot read pricing file {path}: {exc.strerror}") from exc
        except ValueError as exc:
            raise UsageError(f"pricing file {path} is not valid JSON: {exc}") from exc
        omodels, ometa = _parse(odoc, str(path))
        models.update(omodels)
        meta.update(ometa)
        files.append(str(path))
    return PriceTable(models=models, batch_discount=float(meta.get("batch_discount", 0.5)),
                      long_context_threshold=int(meta.get("long_context_threshold", 200_000)),
                      source=str(meta.get("source", "")), read_on=str(meta.get("read_on", "")), files=files)
