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
RUN/summary.json, RUN/report.html
```
"""

from __future__ import annotations

import json
import time
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

    def save_config(self, config: RunConfig) -> None:
        atomic_write_json(self.config_file, config.as_dict())

    def load_config(self) -> RunConfig:
        if not self.config_file.is_file():
            raise DataError(f"{self.path} is not a fairloop run folder (no config.json)",
                            "pass the folder that 'fairloop run --out' created")
        return RunConfig.from_dict(json.loads(self.config_file.read_text()))

    def trace(self, node: str, iteration: int, seconds: float, result: dict[str, Any]) -> None:
        """Append one tool call to ``trace.jsonl`` (a line is written whole or not at all)."""
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "node": node, "iteration": iteration,
                           "seconds": round(seconds, 2), "result": result}, default=str)
        with open(self.path / "trace.jsonl", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def read_trace(self) -> list[dict[str, Any]]:
        path = self.path / "trace.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
