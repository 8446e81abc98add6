"""A run folder: its layout, its stored config and the trace of tool calls.

The run folder holds everything a run makes, so a resumed run finds its own work:

```
RUN/config.json         the RunConfig (no secrets: the API key stays in the environment)
RUN/state.sqlite        LangGraph checkpoints (one thread per run)
RUN/models/<hash>.*     checkpoints named by content hash (safetensors + JSON sidecar)
RUN/evals/<hash>.json   metrics, predictions summary and explanation of a checkpoint, computed once
RUN/images/<hash>.png   counterfactual images, named by content hash
RUN/manifests/it<k>.json  the manifest of iteration k's images
RUN/trace.jsonl         every tool call: node, iteration, seconds, a compact result
RUN/run.log             what the run printed, timestamped: messages and progress lines with ETAs
RUN/summary.json, RUN/report.html
```
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fairloop.errors import DataError
from fairloop.io import atomic_write_json
from fairloop.runs.config import RunConfig


@dataclass
class RunFolder:
    """Paths inside a run folder, and the trace of tool calls."""

    path: Path

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        for sub in ("models", "evals", "images", "manifests"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def state_db(self) -> Path:
        return self.path / "state.sqlite"

    def relative(self, path: str | Path) -> str:
        return str(Path(path).resolve().relative_to(self.path.resolve()))

    def resolve(self, relative: str) -> Path:
        """A path stored in the state, resolved inside the run folder (never outside it)."""
        path = (self.path / relative).resolve()
        if self.path.resolve() not in path.parents and path != self.path.resolve():
            raise DataError(f"state path {relative!r} points outside the run folder", "the run state is damaged")
        return path

    def existing(self, relative: str, what: str) -> Path:
        """:meth:`resolve` for a file the run made and still needs, with a fix that can be carried out
        when it is gone (a checkpointed step is not redone, so the file cannot simply be remade)."""
        path = self.resolve(relative)
        if not path.exists():
            raise DataError(f"{what} {relative} is missing from the run folder {self.path}",
                            "restore it from a copy of this run folder, or start the run over with a new --out")
        return path

    def save_config(self, config: RunConfig) -> None:
        atomic_write_json(self.config_file, config.as_dict())

    def load_config(self) -> RunConfig:
        if not self.config_file.is_file():
            raise DataError(f"{self.path} is not a fairloop run folder (no config.json)",
                            "pass the folder that 'fairloop run --out' created")
        return RunConfig.from_dict(json.loads(self.config_file.read_text()))

    def trace(self, node: str, iteration: int, seconds: float, result: dict[str, Any]) -> None:
        """Append one tool call to ``trace.jsonl`` as one write; after a line that a full disk cut
        short, on a line of its own."""
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "node": node, "iteration": iteration,
                           "seconds": round(seconds, 2), "result": result}, default=str)
        with open(self.path / "trace.jsonl", "a+b") as f:
            cut = f.tell() > 0 and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n"
            f.write((("\n" if cut else "") + line + "\n").encode())

    def append_log(self, line: str) -> None:
        """One timestamped line of what the run printed (messages and progress) to ``run.log``."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.path / "run.log", "a", encoding="utf-8") as f:
            f.write(f"{stamp} {line}\n")

    def read_trace(self) -> list[dict[str, Any]]:
        """The trace, one line per node and iteration: a node killed after its trace line but before
        its checkpoint runs again on resume, and its second line is the one that counts. A line cut
        short by a kill is skipped."""
        path = self.path / "trace.jsonl"
        if not path.exists():
            return []
        lines: dict[tuple[str, int], dict[str, Any]] = {}
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(entry, dict):
                key = (entry.get("node"), entry.get("iteration"))
                lines.pop(key, None)
                lines[key] = entry
        return list(lines.values())

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold this folder for one process, so two runs never write it at once. The operating system
        drops the lock when its process ends, so a crashed or killed run never blocks a resume."""
        import fcntl

        handle = open(self.path / ".lock", "a+", encoding="utf-8")  # noqa: SIM115 — held while locked
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise DataError(f"the run folder {self.path} is in use by another fairloop process (PID {holder})",
                            "wait for that run to finish (or stop it), then resume with the same command") from None
        try:
            handle.truncate(0)
            handle.write(str(os.getpid()))
            handle.flush()
            yield
        finally:
            handle.close()
