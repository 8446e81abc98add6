"""Tests of fairloop.memory: round trips, persistence across objects and processes, upserts, recall
ranking and filters, lookups by attribute, secret scrubbing, errors, offline use and import cost.

Every store lives under ``tmp_path``. The embedder is loaded once for the whole file (the first test
that embeds pays ~5 s of torch import); the network is switched off for every test.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fairloop.errors import ConfigError, DataError
from fairloop.memory import IterationRecord, MemoryStore, Recalled, default_memory_path, scrub_secrets

SRC = Path(__file__).resolve().parents[1] / "src"


def _no_network(*args, **kwargs):
    raise OSError("network access is disabled in the memory tests")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test here may touch the network: sockets refuse to connect, hubs are told to stay offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", _no_network)
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", _no_network)


def make_record(run_id="run-a", iteration=1, target="Male", protected="Gray_Hair", **changes) -> IterationRecord:
    """A record for 'target vs protected' with a plan that talks about the protected attribute."""
    words = protected.replace("_", " ").lower()
    base = dict(
        run_id=run_id, iteration=iteration, dataset="celeba", target=target, protected=protected,
        scenario=f"SynthFaces {target} vs {protected}, train correlation 0.95",
        metrics_before={"accuracy": 0.93, "worst_group_accuracy": 0.22, "disparate_impact": 0.31,
                        "equal_opportunity_difference": None},
        metrics_after={"accuracy": 0.91, "worst_group_accuracy": 0.81, "disparate_impact": 0.97,
                       "equal_opportunity_difference": -0.02},
        importances=[(protected, 0.41), ("Smiling", -0.05)],
        analyzer={"diagnosis": f"The {target} classifier uses {words} as a shortcut.",
                  "counterfactuals_needed": True, "shortcut_attributes": [protected],
                  "change_attributes": [protected],
                  "plans": [{"label": 1, "description": f"a {target.lower()} face without {words}", "n_images": 600},
                            {"label": 0, "description": f"a non {target.lower()} face with {words}", "n_images": 600}],
                  "negative_prompt": "", "mix_ratio": 0.3},
        generator="attribute-edit", n_generated=1200, mix_ratio=0.3, alpha=None, accepted=True,
        outcome="accepted: WGA 0.22 → 0.81, DI 0.31 → 0.97",
    )
    base.update(changes)
    return IterationRecord(**base)


@pytest.fixture
def three(tmp_path) -> tuple[MemoryStore, dict[str, IterationRecord]]:
    """A store holding (Male vs Gray_Hair), (Young vs Pale_Skin) and (Smiling vs Eyeglasses), one run each."""
    store = MemoryStore(tmp_path / "memory")
    records = {
        "gray": make_record("run-gray", 1, "Male", "Gray_Hair"),
        "pale": make_record("run-pale", 1, "Young", "Pale_Skin"),
        "glasses": make_record("run-glasses", 2, "Smiling", "Eyeglasses", accepted=False,
                               outcome="rejected: WGA 0.40 → 0.38"),
    }
    for record in records.values():
        store.add(record)
    return store, records


# ------------------------------------------------------------------------------------------ records


def test_recall_line_and_summary():
    record = make_record("R", 2, metrics_before={"worst_group_accuracy": 0.22}, metrics_after={"worst_group_accuracy": 0.81},
                         analyzer={"plans": [{"label": 1, "description": "a woman with gray hair", "n_images": 600},
                                             {"label": 0, "description": "a man without gray hair", "n_images": 600}]})
    assert record.recall_line() == ("run R it. 2 (Male vs Gray_Hair): 1200 images 'a woman with gray hair' / "
                                    "'a man without gray hair', mix 0.3 → accepted, WGA 0.22→0.81")
    summary = make_record().summary()
    for part in ("Male", "Gray_Hair", "train correlation 0.95", "worst-group accuracy 0.22 → 0.81",
                 "Gray_Hair +0.41", "a male face without gray hair", "accepted: WGA"):
        assert part in summary
    assert "\n" not in summary and len(summary) < 1200
    rejected = make_record(accepted=False, n_generated=0, analyzer={})
    assert "no images" in rejected.recall_line() and "→ rejected" in rejected.recall_line()


def test_as_dict_is_json_safe_and_round_trips():
    record = make_record(alpha=0.5, metrics_after={"accuracy": float("nan"), "disparate_impact": 1.0})
    data = record.as_dict()
    text = json.dumps(data, allow_nan=False)
    back = IterationRecord.from_dict(json.loads(text))
    assert back.metrics_after == {"accuracy": None, "disparate_impact": 1.0}
    assert back.importances == [("Gray_Hair", 0.41), ("Smiling", -0.05)]
    assert isinstance(back.importances[0], tuple)
    clean = make_record(alpha=0.5)
    assert IterationRecord.from_dict(json.loads(json.dumps(clean.as_dict()))) == clean


def test_scrub_secrets_patterns():
    openai = "sk-proj-" + "A1b2C3d4" * 4
    text = (f"key {openai} and Authorization: Bearer abcdef0123456789.xyz, "
            f"api_key=hunter2hunter2 hf_{'x' * 34} keep sk-short and the model")
    scrubbed = scrub_secrets({"a": [text, (text,)], "n": 3})
    out = json.dumps(scrubbed)
    for secret in (openai, "abcdef0123456789", "hunter2hunter2", "hf_xxxx"):
        assert secret not in out
    assert scrubbed["n"] == 3 and "[redacted]" in scrubbed["a"][0]
    assert "sk-short and the model" in scrubbed["a"][0] and "api_key=" in scrubbed["a"][0]
    assert isinstance(scrubbed["a"][1], tuple)


def test_default_memory_path(monkeypatch, tmp_path):
    monkeypatch.setenv("FAIRLOOP_HOME", str(tmp_path / "home"))
    assert default_memory_path() == tmp_path / "home" / "memory"
    monkeypatch.delenv("FAIRLOOP_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_memory_path() == tmp_path / ".fairloop" / "memory"


# -------------------------------------------------------------------------------------------- store


def test_empty_store(tmp_path):
    store = MemoryStore(tmp_path / "new" / "memory")
    assert (tmp_path / "new" / "memory").is_dir()
    assert len(store) == 0
    assert store.recall("gray hair") == []
    assert store.for_attribute("Gray_Hair") == []
    assert store.get("nope:1") is None


def test_add_recall_round_trip(tmp_path):
    store = MemoryStore(tmp_path / "memory")
    record = make_record()
    assert record.created == ""
    assert store.add(record) == "run-a:1"
    assert record.created                          # filled in on add
    assert len(store) == 1
    [hit] = store.recall("Male classifier and gray hair", k=3)
    assert isinstance(hit, Recalled) and hit.record == record
    assert 0.0 <= hit.distance < 1.0
    assert store.get("run-a:1") == record


def test_persists_across_store_objects(tmp_path):
    record = make_record()
    MemoryStore(tmp_path / "memory").add(record)
    reopened = MemoryStore(tmp_path / "memory")
    assert len(reopened) == 1 and reopened.recall("gray hair")[0].record == record


def test_two_stores_on_one_path_both_work(tmp_path):
    first, second = MemoryStore(tmp_path / "memory"), MemoryStore(str(tmp_path / "memory") + "/")
    first.add(make_record("run-a", 1))
    assert len(second) == 1
    second.add(make_record("run-b", 1, "Young", "Pale_Skin"))
    assert len(first) == 2
    assert {r.record.run_id for r in first.recall("faces", k=5)} == {"run-a", "run-b"}


def test_same_path_opened_elsewhere_with_other_settings(tmp_path):
    import chromadb
    from chromadb.config import Settings

    chromadb.PersistentClient(path=str(tmp_path / "memory"), settings=Settings(anonymized_telemetry=False,
                                                                             allow_reset=True))
    store = MemoryStore(tmp_path / "memory")
    store.add(make_record())
    assert len(store) == 1


def test_folder_deleted_and_recreated_in_one_process(tmp_path):
    store = MemoryStore(tmp_path / "memory")
    store.add(make_record())
    del store
    shutil.rmtree(tmp_path / "memory")
    fresh = MemoryStore(tmp_path / "memory")
    assert len(fresh) == 0
    fresh.add(make_record("run-b", 1))
    assert len(MemoryStore(tmp_path / "memory")) == 1


def test_upsert_replaces_the_same_iteration(tmp_path):
    store = MemoryStore(tmp_path / "memory")
    store.add(make_record(outcome="rejected: first try", accepted=False))
    store.add(make_record(outcome="accepted: after resume"))
    store.add(make_record(iteration=2))
    assert len(store) == 2
    assert store.get("run-a:1").outcome == "accepted: after resume"
    assert [r.iteration for r in store.records("run-a")] == [1, 2]


def test_recall_ranks_the_similar_bias_first(three):
    store, records = three
    hits = store.recall("a Male classifier that relies on gray hair", k=3)
    assert [h.record for h in hits][0] == records["gray"]
    assert len(hits) == 3 and hits[0].distance <= hits[1].distance <= hits[2].distance
    assert store.recall("people wearing eyeglasses while smiling", k=1)[0].record == records["glasses"]
    assert store.recall("pale skin of young faces", k=1)[0].record == records["pale"]


def test_recall_filters(three):
    store, records = three
    assert [h.record for h in store.recall("gray hair", target="Young")] == [records["pale"]]
    assert [h.record for h in store.recall("gray hair", protected="Eyeglasses")] == [records["glasses"]]
    assert store.recall("gray hair", target="Young", protected="Eyeglasses") == []
    assert store.recall("gray hair", target="Attractive") == []
    assert store.recall("gray hair", k=0) == []
    assert len(store.recall("gray hair", k=50)) == 3


def test_recall_excludes_the_current_run(three):
    store, records = three
    store.add(make_record("run-now", 1, "Male", "Gray_Hair"))
    hits = store.recall("Male vs gray hair", k=2, exclude_run="run-now")
    assert all(h.record.run_id != "run-now" for h in hits)
    assert hits[0].record == records["gray"]
    both = store.recall("Male vs gray hair", k=2, protected="Gray_Hair", exclude_run="run-gray")
    assert [h.record.run_id for h in both] == ["run-now"]


def test_for_attribute(three):
    store, records = three
    assert store.for_attribute("Gray_Hair") == [records["gray"]]
    assert store.for_attribute("Pale_Skin") == [records["pale"]]
    assert store.for_attribute("Gray") == []                        # names, not substrings
    # newest first, and a record that only names the attribute in its importances counts too
    old = make_record("run-old", 1, created="2020-01-01T00:00:00+00:00")
    new = make_record("run-new", 3, "Young", "Pale_Skin", importances=[("Gray_Hair", -0.3)],
                      created="2031-01-01T00:00:00+00:00")
    store.add(old)
    store.add(new)
    found = store.for_attribute("Gray_Hair")
    assert [r.run_id for r in found] == ["run-new", "run-gray", "run-old"]
    assert store.for_attribute("Gray_Hair", k=1) == [new]


def test_secrets_never_reach_the_store(tmp_path):
    key = "sk-" + "Zq9" * 10
    token = "eyJhbGciOiJIUzI1NiJ9.secretpart"
    record = make_record(outcome=f"rejected: the LLM said {key}",
                         scenario=f"run with Authorization: Bearer {token}",
                         analyzer={"diagnosis": f"openai api_key={key}", "plans": [
                             {"label": 1, "description": f"a face {key}", "n_images": 10}]})
    store = MemoryStore(tmp_path / "memory")
    store.add(record)
    stored = store.get("run-a:1")
    text = json.dumps(stored.as_dict()) + stored.summary() + stored.recall_line()
    assert key not in text and token not in text and "secretpart" not in text
    assert "[redacted]" in stored.outcome and "[redacted]" in stored.analyzer["diagnosis"]
    assert record.outcome.endswith(key)                              # the caller's object is left as it was
    raw = b"".join(p.read_bytes() for p in (tmp_path / "memory").rglob("*") if p.is_file())
    assert key.encode() not in raw and b"secretpart" not in raw


def test_memory_path_that_is_a_file(tmp_path):
    (tmp_path / "memory").write_text("not a folder")
    with pytest.raises(ConfigError, match="is a file") as info:
        MemoryStore(tmp_path / "memory")
    assert info.value.fix


def test_corrupt_store_names_the_folder_and_the_fix(tmp_path):
    folder = tmp_path / "memory"
    folder.mkdir()
    (folder / "chroma.sqlite3").write_bytes(b"this is not sqlite" * 500)
    with pytest.raises(DataError) as info:
        MemoryStore(folder)
    assert str(folder) in info.value.problem
    assert "move" in info.value.fix and str(folder) in info.value.fix
    folder.rename(tmp_path / "memory.broken")                        # the fix works in the same process
    store = MemoryStore(folder)
    store.add(make_record())
    assert len(store) == 1


def test_unreadable_record_is_a_data_error(tmp_path):
    store = MemoryStore(tmp_path / "memory")
    store.add(make_record())
    store._collection.update(ids=["run-a:1"], metadatas=[{"record_json": "{not json"}])
    with pytest.raises(DataError, match="not readable") as info:
        store.for_attribute("Gray_Hair")
    assert "move" in info.value.fix


def test_bad_collection_name(tmp_path):
    with pytest.raises(ConfigError):
        MemoryStore(tmp_path / "memory", collection="x")


# ------------------------------------------------------------------------------------- processes


def _child_env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def test_written_in_a_child_process_read_in_the_parent(tmp_path):
    code = textwrap.dedent(f"""
        import socket, sys
        def refuse(*a, **k):
            raise OSError("no network")
        socket.create_connection = refuse
        socket.socket.connect = refuse
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_memory import make_record
        from fairloop.memory import MemoryStore
        store = MemoryStore(sys.argv[1])
        store.add(make_record("run-child", 1))
        store.add(make_record("run-child", 2, "Young", "Pale_Skin"))
        print(len(store))
    """)
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "memory")], env=_child_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "2"
    store = MemoryStore(tmp_path / "memory")
    assert len(store) == 2
    hit = store.recall("gray hair on men", k=1)[0].record
    assert (hit.run_id, hit.iteration, hit.protected) == ("run-child", 1, "Gray_Hair")
    assert hit.created and hit == store.get("run-child:1")


def test_import_is_cheap():
    code = ("import sys, fairloop.memory; "
            "print(sorted(m for m in ('chromadb', 'torch', 'sentence_transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], env=_child_env(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_opening_a_store_does_not_load_the_embedder(tmp_path):
    record = make_record()
    MemoryStore(tmp_path / "memory").add(record)
    code = ("import sys; from fairloop.memory import MemoryStore; s = MemoryStore(sys.argv[1]); "
            "print(len(s), [r.run_id for r in s.for_attribute('Gray_Hair')], 'torch' in sys.modules)")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "memory")], env=_child_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1 ['run-a'] False"
    assert time.perf_counter() - started < 20


def test_environment_stays_offline(tmp_path):
    MemoryStore(tmp_path / "memory").add(make_record())
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
