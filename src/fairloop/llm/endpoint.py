"""Any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ollama, llama.cpp's server) as a LangChain chat model.

The API key lives only inside the client (a ``SecretStr``) and in the scrubber this module returns,
which callers run over every error, answer and log line before it is kept or shown.
"""

from __future__ import annotations

import os
from collections.abc import Callable
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


def scrubber(key: str) -> Callable[[str], str]:
    """A function that replaces the key in a text; a placeholder key is no secret."""
    if not key or key == PLACEHOLDER_KEY or len(key) < 4:
        return lambda text: text
    return lambda text: text.replace(key, "[redacted]")


def endpoint_chat_model(model: str, *, base_url: str | None = None, api_key: str | None = None, timeout: float = 120,
                        max_retries: int = 2, temperature: float = 0.0):
    """``(client, where, scrub)``: the chat model (it retries with backoff ``max_retries`` times),
    the endpoint without secrets, and the key scrubber."""
    if not model or not str(model).strip():
        raise ConfigError("an OpenAI-compatible endpoint needs a model name",
                          "pass --llm-model (or set FAIRLOOP_LLM_MODEL), e.g. gpt-4o-mini or llama3.1")
    from langchain_openai import ChatOpenAI

    base_url = base_url or os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_BASE")
    key = api_key or os.environ.get("OPENAI_API_KEY") or PLACEHOLDER_KEY
    client = ChatOpenAI(model=str(model), base_url=base_url, api_key=key, temperature=temperature,
                        timeout=timeout, max_retries=max_retries)
    return client, safe_url(base_url), scrubber(key)
