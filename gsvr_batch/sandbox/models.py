"""The models the sandbox serves: input/output token limits, names, the 404 for anything else.

The real API answers an unknown model with 404 NOT_FOUND, and a prompt over the model's input
window with 400 INVALID_ARGUMENT, so the sandbox keeps a table like Google's model list.
Names resolve like the real ones: ``models/`` prefix optional, and a version suffix
(``-001``, ``-latest``, ``-preview-09-2025``, ``-exp``…) names the same model. Extra models
come from ``SandboxConfig.models``; ``SandboxConfig.input_token_limit`` overrides every limit
(a small one lets a test overflow the window with a short video).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from . import rpc

DEFAULT_INPUT_LIMIT = 1_048_576
DEFAULT_OUTPUT_LIMIT = 65_536
# Implicit caching only kicks in above a minimum prompt prefix: 1,024 tokens on 2.5 Flash,
# 2,048 on 2.5 Pro (ai.google.dev/gemini-api/docs/caching, "implicit caching").
CACHE_MIN_FLASH = 1024
CACHE_MIN_PRO = 2048
METHODS = ["generateContent", "countTokens", "createCachedContent", "batchGenerateContent"]


@dataclass(frozen=True)
class ModelInfo:
    name: str  # as requested, without "models/"
    base: str  # the table entry it resolved to
    display_name: str
    input_token_limit: int
    output_token_limit: int
    cache_min_tokens: int

    def to_json(self) -> dict[str, Any]:
        """``GET models/{m}`` as the real API answers it."""
        return {
            "name": f"models/{self.name}",
            "version": "001",
            "displayName": self.display_name,
            "description": f"{self.display_name} (served by the offline gsvr-batch sandbox).",
            "inputTokenLimit": self.input_token_limit,
            "outputTokenLimit": self.output_token_limit,
            "supportedGenerationMethods": list(METHODS),
            "temperature": 1,
            "topP": 0.95,
            "topK": 64,
            "maxTemperature": 2,
            "thinking": not self.base.startswith("gemini-2.0"),
        }


# name -> (display name, input limit, output limit)
BUILTIN: dict[str, tuple[str, int, int]] = {
    "gemini-2.5-pro": ("Gemini 2.5 Pro", DEFAULT_INPUT_LIMIT, DEFAULT_OUTPUT_LIMIT),
    "gemini-2.5-flash": ("Gemini 2.5 Flash", DEFAULT_INPUT_LIMIT, DEFAULT_OUTPUT_LIMIT),
    "gemini-2.5-flash-lite": ("Gemini 2.5 Flash-Lite", DEFAULT_INPUT_LIMIT, DEFAULT_OUTPUT_LIMIT),
    "gemini-2.0-flash": ("Gemini 2.0 Flash", DEFAULT_INPUT_LIMIT, 8_192),
    "gemini-2.0-flash-lite": ("Gemini 2.0 Flash-Lite", DEFAULT_INPUT_LIMIT, 8_192),
    "gemini-3-pro-preview": ("Gemini 3 Pro Preview", DEFAULT_INPUT_LIMIT, DEFAULT_OUTPUT_LIMIT),
    # Google's moving aliases.
    "gemini-flash-latest": ("Gemini Flash Latest", DEFAULT_INPUT_LIMIT, DEFAULT_OUTPUT_LIMIT),
    "gemini-flash-lite-latest": ("Gemini Flash-Lite Latest", DEFAULT_INPUT_LIMIT, DEFAULT_OUTPUT_LIMIT),
    "gemini-pro-latest": ("Gemini Pro Latest", DEFAULT_INPUT_LIMIT, DEFAULT_OUTPUT_LIMIT),
}

# One version suffix at a time, stripped from the right until a table name remains:
# "-preview-09-2025" is "-preview" + "-09-2025", "-preview-05-20" is "-preview" + "-05-20".
_SUFFIX = re.compile(r"-(\d{3}|latest|preview|exp|\d{2}-\d{4}|\d{2}-\d{2}|\d{4})$")


def bare(name: str) -> str:
    """``models/gemini-2.5-flash`` → ``gemini-2.5-flash``."""
    return name.split("models/", 1)[-1] if name.startswith("models/") else name


def resolve(name: str, extra: dict[str, int] | None = None, input_limit: int | None = None) -> ModelInfo | None:
    """The model a request names, or None (the caller answers 404)."""
    requested = bare(name)
    table: dict[str, tuple[str, int, int]] = dict(BUILTIN)
    for extra_name, limit in (extra or {}).items():
        extra_name = bare(str(extra_name))
        table[extra_name] = (extra_name, int(limit), table.get(extra_name, ("", 0, DEFAULT_OUTPUT_LIMIT))[2])
    base = requested
    while base not in table:
        m = _SUFFIX.search(base)
        if not m:
            return None
        base = base[: m.start()]
    display, in_limit, out_limit = table[base]
    return ModelInfo(
        name=requested, base=base, display_name=display,
        input_token_limit=int(input_limit) if input_limit is not None else in_limit,
        output_token_limit=out_limit,
        cache_min_tokens=CACHE_MIN_PRO if "-pro" in base else CACHE_MIN_FLASH,
    )


def all_models(extra: dict[str, int] | None = None, input_limit: int | None = None) -> list[ModelInfo]:
    names = list(BUILTIN) + [bare(str(n)) for n in (extra or {}) if bare(str(n)) not in BUILTIN]
    return [m for m in (resolve(n, extra, input_limit) for n in names) if m is not None]


def not_found(name: str, method: str, version: str = "v1beta") -> rpc.ApiError:
    """404 for a model the API does not serve, worded as Google words it for each method.

    generateContent / countTokens / batchGenerateContent name the method; ``GET models/{m}``
    (method ``get``) has its own shorter message, as the real API answers it.
    """
    model = f"models/{bare(name)}"
    if method == "get":
        return rpc.not_found(f"Model is not found: {model} for api version {version}")
    return rpc.not_found(
        f"{model} is not found for API version {version}, or is not supported for {method}. "
        "Call ListModels to see the list of available models and their supported methods.")


def too_many_tokens(count: int, limit: int) -> rpc.ApiError:
    return rpc.bad_request(
        f"The input token count ({count}) exceeds the maximum number of tokens allowed ({limit}).")
