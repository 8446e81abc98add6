"""A planted checkpoint must not run code: run folders and thread databases are untrusted input."""

from __future__ import annotations

import textwrap
import warnings

import pytest

from fairloop.runs.checkpoints import open_checkpoints

PAYLOAD = '''
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Planted:
    """Rebuilding this object writes a file: what an attacker's os.system call would do."""

    marker: str

    def __post_init__(self):
        Path(self.marker).write_text("code ran")
'''


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """(database, marker): a checkpoint whose state holds a Planted object, written by LangGraph's
    permissive default serializer as an attacker would."""
    import sqlite3

    from langgraph.checkpoint.base import empty_checkpoint
    from langgraph.checkpoint.sqlite import SqliteSaver

    (tmp_path / "evil_module.py").write_text(textwrap.dedent(PAYLOAD))
    monkeypatch.syspath_prepend(str(tmp_path))
    from evil_module import Planted

    marker = tmp_path / "marker.txt"
    database = tmp_path / "state.sqlite"
    permissive = SqliteSaver(sqlite3.connect(database, check_same_thread=False))
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {"report": {"summary": "summary.json"}, "run": str(tmp_path),
                                    "payload": Planted(str(marker))}
    version = permissive.get_next_version(None, None)
    checkpoint["channel_versions"] = {"report": version, "run": version, "payload": version}
    marker.unlink()  # creating the object above wrote it once; only a rebuild may write it again
    for thread in ("loop", "t1"):
        permissive.put({"configurable": {"thread_id": thread, "checkpoint_ns": ""}}, checkpoint,
                       {"source": "input", "step": 0}, checkpoint["channel_versions"])
    permissive.conn.close()
    return database, marker


def test_a_planted_checkpoint_is_read_as_data_not_run(planted):
    database, marker = planted
    saver = open_checkpoints(database)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        saved = saver.get_tuple({"configurable": {"thread_id": "loop"}})
    saver.conn.close()
    payload = saved.checkpoint["channel_values"]["payload"]
    assert not marker.exists(), "a planted object was rebuilt from the checkpoint"
    assert type(payload).__name__ != "Planted" and saved.checkpoint["channel_values"]["report"]


def test_resuming_a_run_or_a_chat_thread_with_a_planted_checkpoint_runs_no_code(planted, tmp_path):
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver

    from evil_module import Planted
    from fairloop.chat.session import open_checkpointer, saved_run
    from fairloop.graphs.loop import build_graph, run_loop
    from fairloop.runs import RunConfig, RunFolder, RunServices

    database, marker = planted
    assert saved_run(open_checkpointer(database), "t1") == str(tmp_path)  # a chat thread: its run, as data

    # a run folder whose state says "finished" and carries the payload, as LangGraph's default wrote it
    services = RunServices(RunConfig(root=str(tmp_path), generator="render"), RunFolder(tmp_path / "run"))
    permissive = SqliteSaver(sqlite3.connect(services.folder.state_db, check_same_thread=False))
    config = {"configurable": {"thread_id": "loop"}}
    build_graph(services, permissive).update_state(config, {"report": {"summary": "summary.json"},
                                                            "recalled": [Planted(str(marker))]}, as_node="report")
    permissive.conn.close()
    marker.unlink()
    state = run_loop(services)  # "finished before": it only reads the state
    assert state["report"] and type(state["recalled"][0]).__name__ != "Planted"
    assert not marker.exists(), "resuming the run rebuilt a planted object"
