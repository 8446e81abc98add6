"""The mitigation graph for LangGraph Studio and ``langgraph dev`` (see ``langgraph.json``).

``FAIRLOOP_RUN`` names the run folder (default ``runs/studio``); a new folder gets the default
configuration on ``data/synthfaces`` (make it with ``fairloop data synth --out data/synthfaces``).
Studio supplies its own checkpointer, so none is attached here.
"""

from __future__ import annotations

import os
from pathlib import Path

from fairloop.graphs.loop import build_graph
from fairloop.runs import RunConfig, RunFolder, RunServices


def make_graph():
    folder = RunFolder(Path(os.environ.get("FAIRLOOP_RUN", "runs/studio")))
    if folder.config_file.exists():
        config = folder.load_config()
    else:
        config = RunConfig(root=str(Path("data/synthfaces").absolute()))
        folder.save_config(config)
    return build_graph(RunServices(config, folder))
