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
