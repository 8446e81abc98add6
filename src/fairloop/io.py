"""Writing files so that a crash never leaves a half-written one behind, and where fairloop keeps them."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` for a temp file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def finished_file(path: str | Path) -> bool:
    """Whether ``path`` holds a finished artifact: it exists and is not empty. fairloop writes
    atomically, so an empty file is another writer's crash (e.g. a full disk), to be redone."""
    try:
        return Path(path).stat().st_size > 0
    except OSError:
        return False


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """JSON with no NaN or Infinity (they are not JSON): callers must turn them into None first."""
    return atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def fairloop_home() -> Path:
    """``$FAIRLOOP_HOME``, or ``~/.fairloop``: where memory and the joined local LLM live."""
    home = os.environ.get("FAIRLOOP_HOME")
    return Path(home).expanduser() if home else Path.home() / ".fairloop"
