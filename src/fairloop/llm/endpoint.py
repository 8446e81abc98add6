"""Any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp's server) as a LangChain chat model.

The API key lives only inside the client (a ``SecretStr``) and in the scrubber this module returns,
which callers run over every error, answer and log line before it is kept or shown.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

from fairloop.errors import ConfigError

#: OpenAI's client insists on a key; local servers ignore it.
PLACEHOLDER_KEY = "not-needed"


def safe_url(url: str | None) -> str:
    """``url`` without user info, query or fragment, for errors and repr."""
    if not url:
        return "default endpoint"
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", "")) if parts.scheme else "custom endpoint"


class Scrubber:
    """Replaces the API key in a text. A placeholder key is no secret. ``hold`` is how many trailing
    characters of a stream may still be the start of the key, so a stream is shown only up to them."""

    def __init__(self, key: str = "") -> None:
        self._key = "" if not key or key == PLACEHOLDER_KEY or len(key) < 4 else key

    def __call__(self, text: str) -> str:
        return text.replace(self._key, "[redacted]") if self._key else text

    @property
    def hold(self) -> int:
        return max(0, len(self._key) - 1)

    def __repr__(self) -> str:  # never the key
        return f"Scrubber({'key set' if self._key else 'no key'})"


def answer_timeout() -> float:
    """Seconds to wait for one endpoint answer: ``$FAIRLOOP_LLM_TIMEOUT``, else 120. An endpoint that
    never answers costs this times (1 + retries) per call, so a user who knows theirs is quick sets it lower."""
    text = os.environ.get("FAIRLOOP_LLM_TIMEOUT", "").strip()
    if not text:
        return 120.0
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 3600:
        raise ConfigError(f"FAIRLOOP_LLM_TIMEOUT={text!r} is not a number of seconds in (0, 3600]",
                          "set it to e.g. 30, or unset it for the default of 120 s")
    return seconds


def endpoint_chat_model(model: str, *, base_url: str | None = None, api_key: str | None = None,
                        timeout: float | None = None, max_retries: int = 2, temperature: float = 0.0):
    """``(client, where, scrub)``: the chat model (it retries with backoff ``max_retries`` times,
    waiting ``timeout`` seconds, default :func:`answer_timeout`, for each answer), the endpoint without
    secrets, and the key scrubber."""
    if not model or not str(model).strip():
        raise ConfigError("an OpenAI-compatible endpoint needs a model name",
                          "pass --llm-model (or set FAIRLOOP_LLM_MODEL), e.g. gpt-4o-mini or llama3.1")
    from langchain_openai import ChatOpenAI

    base_url = base_url or os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_BASE")
    key = api_key or os.environ.get("OPENAI_API_KEY") or PLACEHOLDER_KEY
    timeout = answer_timeout() if timeout is None else timeout
    client = ChatOpenAI(model=str(model), base_url=base_url, api_key=key, temperature=temperature,
                        timeout=timeout, max_retries=max_retries)
    return client, safe_url(base_url), Scrubber(key)
