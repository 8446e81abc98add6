"""Language models fairloop runs itself (the packaged local LLM), and what all chat models share."""

from __future__ import annotations

from typing import Any


def content_text(content: Any) -> str:
    """A chat message's content as plain text (LangChain content may be a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part if isinstance(part, str) else str(part.get("text", "")) if isinstance(part, dict)
                       else "" for part in content)
    return "" if content is None else str(content)


#: Schema keys llama.cpp's grammar cannot use: a length bound of hundreds of characters becomes a
#: repetition its grammar parser refuses (llama-cpp-python 0.3.36 then crashes). Pydantic
#: validation and ``max_tokens`` still bound what is accepted.
_NOT_IN_GRAMMAR = ("maxLength", "minLength", "title", "default")


def grammar_schema(schema: Any) -> Any:
    """``schema`` without the keys that llama.cpp's JSON-schema grammar cannot take."""
    if isinstance(schema, dict):
        return {k: ({name: grammar_schema(sub) for name, sub in v.items()} if k == "properties" and isinstance(v, dict)
                    else grammar_schema(v)) for k, v in schema.items() if k not in _NOT_IN_GRAMMAR}
    if isinstance(schema, list):
        return [grammar_schema(v) for v in schema]
    return schema


def resolve_llm(kind: str, model: str | None = None) -> str:
    """The backend ``kind`` names; "auto" is an endpoint when a model name is configured (``--llm-model``
    or ``$FAIRLOOP_LLM_MODEL``), else the packaged local LLM when it is installed, else "rules"."""
    import os

    kind = (kind or "auto").strip().lower()
    if kind != "auto":
        return kind
    if model or os.environ.get("FAIRLOOP_LLM_MODEL"):
        return "openai"
    from fairloop.errors import FairloopError
    from fairloop.llm.local import check_available

    try:
        check_available()
    except FairloopError:
        return "rules"
    return "local"


def make_chat_model(kind: str, *, model: str | None = None, base_url: str | None = None):
    """``(chat model, where, scrub)`` for the chat agent: "local" or "openai" (see :func:`resolve_llm`)."""
    import os

    from fairloop.errors import ConfigError

    if kind == "local":
        from fairloop.llm.endpoint import Scrubber
        from fairloop.llm.local import MODEL_NAME, check_available, local_chat_model

        check_available()
        return local_chat_model(max_tokens=400), f"{MODEL_NAME} on llama.cpp", Scrubber()
    if kind == "openai":
        from fairloop.llm.endpoint import endpoint_chat_model

        return endpoint_chat_model(model or os.environ.get("FAIRLOOP_LLM_MODEL", ""), base_url=base_url)
    raise ConfigError(f"the chat needs a language model, not {kind!r}",
                      "use --llm local (pip install -e '.[local]') or --llm openai --llm-model NAME")


def make_json_model(kind: str, *, model: str | None = None, base_url: str | None = None, max_tokens: int = 700,
                    fix: str = "use --llm local or --llm openai --llm-model NAME"):
    """``(chat model, scrub, constrained)`` for a component that wants JSON answers: the packaged
    model ("local"; ``constrained``: the caller binds its JSON schema as a grammar) or an endpoint
    ("openai"; ``scrub`` keeps its key out of what is stored)."""
    import os

    from fairloop.errors import ConfigError

    if kind == "local":
        from fairloop.llm.local import check_available, local_chat_model

        check_available()
        return local_chat_model(max_tokens=max_tokens), None, True
    if kind == "openai":
        from fairloop.llm.endpoint import endpoint_chat_model

        name = model or os.environ.get("FAIRLOOP_LLM_MODEL", "")
        if not name:
            raise ConfigError("--llm openai needs a model name", "pass --llm-model, e.g. gpt-4o-mini")
        client, _where, scrub = endpoint_chat_model(name, base_url=base_url)
        return client, scrub, False
    raise ConfigError(f"no language model {kind!r}", fix)
