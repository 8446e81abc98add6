"""Writing files so that a crash never leaves a half-written one behind, and where fairloop keeps them."""

from __future__ import annotations

import json
import os
import shutil
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
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a failed write to an open file names no file: say which
        raise
    return path


def work_folder(beside: str | Path) -> Path:
    """A hidden folder beside ``beside`` to build a whole folder in, then rename onto it. Its name
    carries this process's PID, so folders that a killed writer left behind are removed here."""
    beside = Path(beside)
    prefix = f".{beside.name}.partial-"
    beside.parent.mkdir(parents=True, exist_ok=True)
    for old in beside.parent.glob(prefix + "*"):
        pid = old.name[len(prefix):].split(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}.", dir=beside.parent))


def replace_folder(built: str | Path, out: str | Path) -> Path:
    """Move the folder ``built`` (from :func:`work_folder`) onto ``out``, replacing what is there:
    a reader sees the old folder or the new one, never a mix."""
    built, out = Path(built), Path(out)
    if out.exists():
        old = out.with_name(f".{out.name}-old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        os.replace(built, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(built, out)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def finished_file(path: str | Path) -> bool:
    """Whether ``path`` holds a finished artifact: it exists and is not empty. fairloop writes
    atomically, so an empty file is another writer's crash (e.g. a full disk), to be redone."""
    try:
        return Path(path).stat().st_size > 0
    except OSError:
        return False


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def atomic_write_tensors(path: str | Path, tensors: dict[str, Any]) -> Path:
    """Named tensors as safetensors. Serialized in memory and written as bytes, so a full disk is
    an ``OSError`` (ENOSPC) like every other write, not a ``SafetensorError``."""
    from safetensors.torch import save

    data = save(tensors)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """JSON with no NaN or Infinity (they are not JSON): callers must turn them into None first."""
    return atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def check_destination(path: str | Path, *, folder: bool, option: str = "--out") -> Path:
    """Fail before any work when ``path`` (a folder, or a file with ``folder=False``) cannot be
    written: it is the wrong kind, sits under a file, or its nearest existing folder is read-only.
    Minutes of training or auditing must not end in a traceback about the output."""
    from fairloop.errors import DataError

    path = Path(path).expanduser()
    if folder and path.exists() and not path.is_dir():
        raise DataError(f"{option} {path} is a file, not a folder", f"give {option} a folder path, or move the file away")
    if not folder and path.is_dir():
        raise DataError(f"{option} {path} is a folder, not a file", f"give {option} a file path inside it")
    existing = path if folder else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise DataError(f"{option} {path} lies under {existing}, which is a file", f"choose another {option}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"{option} {path} cannot be written: {existing} is read-only here",
                        f"choose a folder you can write for {option}, or make {existing} writable")
    return path


def fairloop_home() -> Path:
    """``$FAIRLOOP_HOME``, or ``~/.fairloop``: where memory and the joined local LLM live."""
    home = os.environ.get("FAIRLOOP_HOME")
    return Path(home).expanduser() if home else Path.home() / ".fairloop"
