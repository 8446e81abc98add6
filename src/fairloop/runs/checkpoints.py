"""The one place fairloop opens a LangGraph checkpoint database (a run's ``state.sqlite``, the
chat's ``threads.sqlite``).

A checkpoint database is untrusted input: a run folder or a thread database may come from
someone else. LangGraph's default serializer rebuilds any Python object a checkpoint names
(module, class, arguments), which lets a planted checkpoint run code on ``--resume``. fairloop's
state is JSON-safe and its chat threads hold LangChain messages, so the serializer here runs in
strict mode: only LangGraph's list of safe types (builtins, containers, LangChain messages) is
rebuilt, anything else stays plain data, and nothing is ever unpickled.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


def checkpoint_serializer():
    """LangGraph's JSON/msgpack serializer in strict mode (no arbitrary types, no pickle)."""
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    return JsonPlusSerializer(allowed_msgpack_modules=None, pickle_fallback=False)


def open_checkpoints(path: str | Path):
    """A SqliteSaver on ``path`` that rebuilds only safe types; close it with ``saver.conn.close()``."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    return SqliteSaver(sqlite3.connect(path, check_same_thread=False), serde=checkpoint_serializer())
