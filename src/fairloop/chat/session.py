"""A chat thread: its checkpointed graph, the events a terminal shows, and its transcript.

Threads are kept in ``$FAIRLOOP_HOME/chat/threads.sqlite``; a thread remembers its run folder, so
``fairloop chat --thread ID`` resumes it from any directory. After every turn the transcript (every
message, tool call and tool result) is written to ``RUN/chat/<thread>.md``.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fairloop.errors import ConfigError, DataError
from fairloop.io import atomic_write_text, fairloop_home
from fairloop.llm import content_text

_THREAD = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def threads_db() -> Path:
    path = fairloop_home() / "chat" / "threads.sqlite"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def new_thread_id() -> str:
    """``chat-YYYYMMDD-HHMMSS-xxxx``: sortable, and two chats started in the same second differ."""
    return time.strftime("chat-%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def check_thread_id(thread: str) -> str:
    if not _THREAD.match(thread or ""):
        raise ConfigError(f"--thread {thread!r} is not a thread id", "use letters, digits, '.', '_' or '-' (at most 64)")
    return thread


def open_checkpointer(path: Path | None = None):
    """The thread database (strict deserialization: see :mod:`fairloop.runs.checkpoints`)."""
    from fairloop.runs.checkpoints import open_checkpoints

    return open_checkpoints(path or threads_db())


def saved_run(checkpointer, thread: str) -> str | None:
    """The run folder of a saved thread, or None when the thread is new. This is the thread
    database's first read, so a damaged database is reported here."""
    import sqlite3

    try:
        saved = checkpointer.get_tuple({"configurable": {"thread_id": thread}})
    except sqlite3.DatabaseError as exc:
        raise DataError(f"the chat's thread database is not readable ({exc})",
                        "move threads.sqlite under $FAIRLOOP_HOME/chat away (its threads are lost) or restore it "
                        "from a copy; fairloop then starts a new one") from None
    return (saved.checkpoint.get("channel_values") or {}).get("run") if saved else None


class ChatSession:
    """One thread of one agent: send messages, answer approvals, read the transcript."""

    def __init__(self, agent, thread: str, checkpointer) -> None:
        self.agent = agent
        self.thread = check_thread_id(thread)
        self.graph = agent.compile(checkpointer)
        self.config = {"configurable": {"thread_id": self.thread}, "recursion_limit": 4 * agent.budgets.max_steps + 20}

    @property
    def values(self) -> dict[str, Any]:
        return self.graph.get_state(self.config).values

    def pending(self) -> str | None:
        """The approval question the thread waits on, if any."""
        for task in self.graph.get_state(self.config).tasks:
            for item in task.interrupts:
                return item.value.get("question")
        return None

    def send(self, text: str) -> Iterator[dict[str, Any]]:
        from langchain_core.messages import HumanMessage

        update: dict[str, Any] = {"messages": [HumanMessage(content=text)]}
        if not self.values:
            update |= self.agent.ws.initial_state(self.thread)
        yield from self._run(update)

    def answer(self, approve: bool) -> Iterator[dict[str, Any]]:
        from langgraph.types import Command

        yield from self._run(Command(resume="yes" if approve else "no"))

    def _run(self, graph_input) -> Iterator[dict[str, Any]]:
        """Events for the terminal: token, call, result, answer, question. Streamed text passes the
        key scrubber, and its last ``hold`` characters wait until the next token shows they are no key."""
        scrub = self.agent.scrub
        streamed, held = False, ""
        for mode, chunk in self.graph.stream(graph_input, self.config, stream_mode=["messages", "updates"]):
            if mode == "messages":
                message, meta = chunk
                text = content_text(getattr(message, "content", ""))
                if meta.get("langgraph_node") in ("agent", "finish") and text and not getattr(message, "tool_calls", None):
                    streamed, held = True, scrub(held + text)
                    cut = len(held) - scrub.hold
                    if cut > 0:
                        yield {"kind": "token", "text": held[:cut]}
                        held = held[cut:]
                continue
            if held:
                yield {"kind": "token", "text": scrub(held)}
                held = ""
            for node, update in chunk.items():
                if node == "__interrupt__":
                    for item in update:
                        yield {"kind": "question", "text": item.value.get("question", "Continue?")}
                    continue
                for message in (update or {}).get("messages", []) if isinstance(update, dict) else []:
                    yield from self._message_events(message, streamed)
                    streamed = False
        self.save_transcript()

    @staticmethod
    def _message_events(message, streamed: bool) -> Iterator[dict[str, Any]]:
        if message.type == "ai":
            for call in message.tool_calls:
                yield {"kind": "call", "name": call["name"], "args": call.get("args") or {}}
            text = content_text(message.content)
            if text and not message.tool_calls:
                yield {"kind": "answer", "text": text, "streamed": streamed}
        elif message.type == "tool":
            files = (message.artifact or {}).get("files", []) if isinstance(message.artifact, dict) else []
            yield {"kind": "result", "name": message.name, "text": content_text(message.content), "files": files}

    # --- transcript ---------------------------------------------------------------------------
    def transcript(self) -> str:
        values = self.values
        lines = [f"# fairloop chat {self.thread}", "", f"- run: {values.get('run')}",
                 f"- images used: {values.get('images_used', 0)}, tokens used: {values.get('tokens_used', 0)}", ""]
        for message in values.get("messages", []):
            text = content_text(message.content)
            if message.type == "human":
                lines += [f"**you:** {text}", ""]
            elif message.type == "ai":
                for call in message.tool_calls:
                    lines += [f"→ `{call['name']}` {json.dumps(call.get('args') or {})}", ""]
                if text:
                    lines += [f"**fairloop:** {text}", ""]
            elif message.type == "tool":
                artifact = message.artifact if isinstance(message.artifact, dict) else {}
                approved = " (approved by the user)" if artifact.get("approved") else ""
                lines += [f"← `{message.name}`{approved}:", "", "```json", text, "```", ""]
                lines += [f"  file: {path}" for path in artifact.get("files", [])]
        return "\n".join(lines).rstrip() + "\n"

    def transcript_path(self) -> Path | None:
        run = self.values.get("run")
        return Path(run) / "chat" / f"{self.thread}.md" if run else None

    def save_transcript(self, path: Path | None = None) -> Path | None:
        path = path or self.transcript_path()
        if path is not None:
            atomic_write_text(path, self.transcript())
        return path
