"""Run state is untrusted and fragile input: a planted checkpoint must not run code, and a locked,
damaged or emptied run folder must stop with a clear error instead of being run twice or restarted."""

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


@pytest.fixture
def services(tmp_path):
    from fairloop.runs import RunConfig, RunFolder, RunServices

    return RunServices(RunConfig(root=str(tmp_path), generator="render"), RunFolder(tmp_path / "run"))


def test_a_second_process_on_a_locked_run_folder_is_told_who_holds_it(services):
    import os

    from fairloop.errors import DataError
    from fairloop.graphs.loop import run_loop

    with services.folder.lock():
        with pytest.raises(DataError) as info:
            run_loop(services)
    assert f"in use by another fairloop process (PID {os.getpid()})" in info.value.problem
    assert "resume" in info.value.fix
    with services.folder.lock():  # released: the next run gets it
        pass


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_checkpoint_database_stops_the_run_with_a_clear_error(services, damage):
    from fairloop.errors import DataError
    from fairloop.graphs.loop import build_graph, run_loop

    db = services.folder.state_db
    if damage == "garbage":
        db.write_bytes(b"this is not SQLite " * 200)
    else:
        saver = open_checkpoints(db)
        build_graph(services, saver).update_state({"configurable": {"thread_id": "loop"}}, {"iteration": 1},
                                                  as_node="setup")
        saver.conn.close()
        db.write_bytes(db.read_bytes()[:3000])
    with pytest.raises(DataError) as info:
        run_loop(services)
    assert "is not a readable checkpoint database" in info.value.problem and "--out" in info.value.fix


def test_an_emptied_checkpoint_database_is_not_silently_restarted(services):
    from fairloop.errors import DataError
    from fairloop.graphs.loop import run_loop

    for node in ("setup", "measure", "explain"):
        services.folder.trace(node, 0, 1.0, {})
    services.folder.state_db.write_bytes(b"")
    with pytest.raises(DataError) as info:
        run_loop(services)
    assert "trace of 3 finished steps" in info.value.problem and "restore state.sqlite" in info.value.fix


def test_a_node_traced_twice_after_a_kill_counts_once(services):
    services.folder.trace("setup", 0, 1.0, {"try": 1})
    services.folder.trace("measure", 0, 1.0, {})
    services.folder.trace("measure", 0, 2.0, {"try": 2})   # killed before its checkpoint, run again
    trace = services.folder.read_trace()
    assert [(t["node"], t["result"]) for t in trace] == [("setup", {"try": 1}), ("measure", {"try": 2})]


def test_a_trace_line_cut_short_by_a_full_disk_is_skipped_and_the_next_one_kept(services):
    services.folder.trace("setup", 0, 1.0, {})
    with open(services.folder.path / "trace.jsonl", "a", encoding="utf-8") as f:
        f.write('{"time": "2026-12-05T10:00:00", "node": "meas')   # the disk filled up mid-line
    services.folder.trace("measure", 1, 1.0, {"ok": True})
    assert [(t["node"], t["result"]) for t in services.folder.read_trace()] == [("setup", {}), ("measure", {"ok": True})]


def test_a_deleted_model_or_image_names_a_fix_that_can_be_carried_out(services):
    import json

    from fairloop.errors import DataError
    from fairloop.runs.steps import counterfactual_table

    with pytest.raises(DataError) as info:
        services.load_model("models/0123456789abcdef.safetensors")
    assert "missing from the run folder" in info.value.problem and "new --out" in info.value.fix
    manifest = services.folder.path / "manifests" / "it1.json"
    manifest.write_text(json.dumps({"images": [{"path": "images/gone.png", "label": 1, "protected": 0}]}))
    with pytest.raises(DataError) as info:
        counterfactual_table(services, ["manifests/it1.json"])
    assert "the counterfactual image images/gone.png is missing" in info.value.problem


def test_a_damaged_thread_database_is_a_clear_error(tmp_path):
    from fairloop.chat.session import open_checkpointer, saved_run
    from fairloop.errors import DataError

    database = tmp_path / "threads.sqlite"
    database.write_bytes(b"\x00garbage" * 500)
    with pytest.raises(DataError, match="thread database is not readable"):
        saved_run(open_checkpointer(database), "t1")
