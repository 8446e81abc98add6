"""The chat agent with a scripted chat model: tools over a real (tiny) run folder, approvals through
LangGraph interrupts, threads resumed from SQLite, guards against bad calls and runaway loops."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from fairloop.chat.agent import Budgets, ChatAgent
from fairloop.chat.session import ChatSession, open_checkpointer, saved_run
from fairloop.chat.tools import Workspace
from fairloop.runs import RunFolder, RunServices


class ScriptedChat(BaseChatModel):
    """Replies from a script in order; a step is a tool call ``(name, args)`` or answer text."""

    script: list = []
    seen: list = []

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools, **kwargs):
        self.seen.append(sorted(t["function"]["name"] for t in tools))
        return self

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        self.seen.append(messages)
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, tuple):
            message = AIMessage(content="", tool_calls=[{"name": step[0], "args": step[1], "id": f"c{len(self.seen)}"}],
                                usage_metadata={"input_tokens": 10, "output_tokens": 5, "total_tokens": 15})
        else:
            message = AIMessage(content=step, usage_metadata={"input_tokens": 10, "output_tokens": 5, "total_tokens": 15})
        return ChatResult(generations=[ChatGeneration(message=message)])


@pytest.fixture()
def workspace(synth_root, tmp_path):
    from test_loop import tiny_config

    config = tiny_config(synth_root, None, tmp_path / "memory", baseline=None, baseline_epochs=1)
    folder = RunFolder(tmp_path / "runs" / "chat-run")
    folder.save_config(config)
    return Workspace(RunServices(config, folder, log=lambda *a: None), confirm_images=4, max_images=50)


def session(ws, script, tmp_path, thread="t1", **budgets):
    model = ScriptedChat(script=list(script), seen=[])
    agent = ChatAgent(model, ws, budgets=Budgets(**budgets))
    return ChatSession(agent, thread, open_checkpointer(tmp_path / "threads.sqlite")), model


def events(iterator, kind=None):
    out = list(iterator)
    return [e for e in out if kind is None or e["kind"] == kind]


def test_a_scripted_session_audits_generates_with_approval_finetunes_and_resumes(workspace, tmp_path):
    chat, model = session(workspace, [("audit", {}), "The baseline is biased."], tmp_path)
    first = events(chat.send("audit the model"))
    assert [e["kind"] for e in first] == ["call", "question"]          # training the baseline needs a yes
    assert "Train the baseline" in chat.pending()
    after = events(chat.answer(True))
    result = json.loads(next(e for e in after if e["kind"] == "result")["text"])
    assert "baseline was trained" in result["note"] and 0 <= result["accuracy"] <= 1 and "disparate_impact" in result
    assert after[-1] == {"kind": "answer", "text": "The baseline is biased.", "streamed": True}
    baseline = chat.values["model"]
    assert baseline and chat.values["tokens_used"] == 30

    # a new process: the same thread, from the SQLite file
    again, _ = session(workspace, [("generate", {"description": "a woman with gray hair", "label": 0, "n_images": 6}),
                                   ("finetune", {"mix_ratio": 0.3, "epochs": 1}), "Done: fine-tuned."], tmp_path)
    assert saved_run(open_checkpointer(tmp_path / "threads.sqlite"), "t1") == str(workspace.folder.resolve())
    asked = events(again.send("make 6 gray-haired women and fine-tune"))
    assert asked[-1]["kind"] == "question" and "Generate 6 images" in asked[-1]["text"]
    made = events(again.answer(True))
    generated = json.loads(next(e for e in made if e["kind"] == "result" and e["name"] == "generate")["text"])
    assert generated["kept"] == 6 and generated["preview"].endswith(".png")
    assert made[-1]["kind"] == "question" and "Fine-tune" in made[-1]["text"]
    tuned = events(again.answer(True))
    result = json.loads(next(e for e in tuned if e["kind"] == "result")["text"])
    assert result["now_current"] and again.values["model"] != baseline
    assert again.values["images_used"] == 6 and again.values["baseline"] == baseline
    assert len(workspace.services.memory.records()) == 1   # the chat's fine-tune is remembered

    transcript = again.transcript_path().read_text()
    for part in ("**you:** audit the model", "→ `audit`", "(approved by the user)", "→ `generate`",
                 "**fairloop:** Done: fine-tuned."):
        assert part in transcript


def test_declined_steps_bad_arguments_and_repeats_go_back_to_the_model(workspace, tmp_path):
    chat, model = session(workspace, [("generate", {"description": "a woman", "label": 7, "n_images": 2}),
                                      ("nonsense", {}), ("audit", {"split": "val"})], tmp_path, max_steps=20)
    out = events(chat.send("go"))
    assert out[-1]["kind"] == "question"
    out += events(chat.answer(False))                                  # declined: no baseline is trained
    results = [json.loads(e["text"]) for e in out if e["kind"] == "result"]
    assert "label" in results[0]["error"] and "unknown tool" in results[1]["error"]
    assert results[2]["declined"] and chat.values["model"] is None
    # the model repeats the declined call: not asked again, refused twice, then a last answer
    assert [r.get("error", "")[:25] for r in results[3:]] == ["this exact call was alrea"] * 2
    assert out[-1] == {"kind": "answer", "text": "I stopped here: the same tool calls keep repeating.",
                       "streamed": True}
    assert "".join(e["text"] for e in out if e["kind"] == "token") == out[-1]["text"]   # shown once


def test_runaway_loops_end_with_an_answer(workspace, tmp_path):
    chat, model = session(workspace, [("recall", {"query": "gray hair"}), "summary after the limit"], tmp_path)
    model.script[:] = [("recall", {"query": "gray hair"})] * 3 + ["summary after the limit"]
    out = events(chat.send("what did we try for Gray_Hair?"))
    results = [json.loads(e["text"]) for e in out if e["kind"] == "result"]
    assert results[0]["past_iterations"] == ["nothing in memory matches"]
    assert all("already made" in r["error"] for r in results[1:]) and len(results) == 3
    assert out[-1]["kind"] == "answer" and out[-1]["text"] == "summary after the limit"
    # the final message was written without tools, after a stop note
    assert "Stop calling tools" in model.seen[-1][-1].content


def test_step_and_token_budgets(workspace, tmp_path):
    chat, model = session(workspace, [("compare_runs", {"runs": ["../etc"]})], tmp_path, thread="t2", max_steps=2)
    model.script[:] = [("compare_runs", {"runs": ["../etc"]}), ("compare_runs", {}), "two steps done"]
    out = events(chat.send("compare"))
    first = json.loads(next(e for e in out if e["kind"] == "result")["text"])
    assert "not a run folder" in first["error"] and "chat-run" in first["error"]
    assert out[-1]["text"] == "two steps done"
    spent, _ = session(workspace, ["never"], tmp_path, thread="t3", max_tokens=0)
    spent.agent._plain.script[:] = ["budget answer"]
    assert events(spent.send("hi"))[-1]["text"] == "budget answer"


def test_tool_results_are_compact_and_long_ones_go_to_files(workspace, tmp_path, monkeypatch):
    from dataclasses import replace

    from fairloop.chat import tools

    long_recall = replace(tools.TOOLS_BY_NAME["recall"],
                          run=lambda ws, args, state: tools.ToolOutcome({"past_iterations": ["x" * 500] * 20}))
    monkeypatch.setitem(tools.TOOLS_BY_NAME, "recall", long_recall)
    chat, _ = session(workspace, [("recall", {"query": "anything"}), "ok"], tmp_path, thread="t4")
    result = next(e for e in events(chat.send("recall")) if e["kind"] == "result")
    assert len(result["text"]) <= tools.MAX_RESULT and "[cut" in result["text"]
    assert json.loads(open(result["files"][0]).read())["past_iterations"][0] == "x" * 500


def test_generate_takes_the_class_from_the_description_and_refuses_a_contradiction(workspace):
    from fairloop.chat.tools import GenerateArgs, call_tool

    state = workspace.initial_state("t5")
    wrong = call_tool(workspace, "generate", GenerateArgs(description="a man without gray hair", label=0, n_images=2), state)
    assert "class Male=1, but label is 0" in wrong.result["error"] and not wrong.update
    unnamed = call_tool(workspace, "generate", GenerateArgs(description="a person with gray hair", n_images=2), state)
    assert "say which class" in unnamed.result["error"]
    assert workspace.generate_label(GenerateArgs(description="a woman with gray hair", n_images=2)) == 0


def test_an_endpoint_that_keeps_failing_is_retried_then_reported_without_the_key(workspace, tmp_path, monkeypatch):
    from chat_stub import Stub

    from fairloop.llm.endpoint import endpoint_chat_model

    key = "sk-test-" + "z" * 30
    with Stub([500]) as stub:
        client, where, scrub = endpoint_chat_model("stub-model", base_url=stub.url, api_key=key, timeout=5,
                                                   max_retries=2)
        chat = ChatSession(ChatAgent(client, workspace, where=where, scrub=scrub), "t6",
                           open_checkpointer(tmp_path / "threads.sqlite"))
        out = events(chat.send("audit please"))
    assert len(stub.requests) == 3                                # the first try and two retries
    assert out[-1]["kind"] == "answer" and "The language model failed (http://127.0.0.1" in out[-1]["text"]
    assert key not in chat.transcript() and key not in out[-1]["text"]


def test_an_endpoint_that_echoes_the_key_leaves_it_in_no_file_and_no_terminal_text(workspace, tmp_path):
    from chat_stub import Stub

    from fairloop.llm.endpoint import endpoint_chat_model

    key = "sk-echo-" + "q" * 30
    script = [{"tool": "recall", "args": {"query": f"runs with {key}"}}, f"Your key is {key} and the rest is fine."]
    with Stub(script) as stub:
        client, where, scrub = endpoint_chat_model("stub-model", base_url=stub.url, api_key=key, timeout=5)
        chat = ChatSession(ChatAgent(client, workspace, where=where, scrub=scrub), "t9",
                           open_checkpointer(tmp_path / "threads.sqlite"))
        out = events(chat.send("what is my key?"))
    assert stub.requests and any(e["kind"] == "token" for e in out)        # the answer was streamed
    shown = "".join(e.get("text", "") + json.dumps(e.get("args", {})) for e in out)
    assert key not in shown and "[redacted]" in shown
    assert "Your key is [redacted] and the rest is fine." in "".join(e["text"] for e in out if e["kind"] == "token")
    saved = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert saved and not [p for p in saved if key.encode() in p.read_bytes()]


def test_run_loop_from_the_chat_makes_a_run_that_compare_runs_lists(workspace, tmp_path):
    chat, _ = session(workspace, [("audit", {}), ("run_loop", {"max_iterations": 1, "max_images": 40}),
                                  ("compare_runs", {}), "done"], tmp_path, thread="t7")
    chat.agent.auto_approve = True
    out = events(chat.send("repair it"))
    results = {e["name"]: json.loads(e["text"]) for e in out if e["kind"] == "result"}
    loop = results["run_loop"]
    assert loop["run"].startswith("chat-run-loop-") and loop["report"].endswith("report.html")
    assert len(loop["iterations"]) == 1 and "start_test" in loop and "final_test" in loop
    runs = {row["run"]: row for row in results["compare_runs"]["runs"]}
    assert runs[loop["run"]]["iterations"] == 1 and runs["chat-run"]["status"].startswith("unfinished")


def test_run_experiment_from_the_chat_answers_with_intervals(workspace, tmp_path):
    chat, _ = session(workspace, [("run_experiment", {"arms": ["rules", "random"], "seeds": 2, "images": 10}),
                                  "rules wins, but within the noise"], tmp_path, thread="t8")
    out = events(chat.send("which strategy works best here?"))
    approval = [e for e in out if e["kind"] == "question"]
    assert approval and "3 arms × 2 seeds" in approval[0]["text"]
    out = events(chat.answer(True))
    result = json.loads(next(e["text"] for e in out if e["kind"] == "result"))
    arms = {a["arm"]: a for a in result["ranked_by_worst_group_accuracy"]}
    assert set(arms) == {"erm", "rules", "random"}
    assert arms["rules"]["worst_group_accuracy"]["n"] == 2 and "vs_erm" in arms["rules"] and "vs_erm" not in arms["erm"]
    assert result["report"].endswith("report.html") and (tmp_path / "runs" / result["experiment"] / "table.md").exists()


def test_build_scm_shows_the_graph_and_names_a_bad_intervention(workspace):
    from fairloop.chat.tools import ScmArgs, call_tool

    state = workspace.initial_state("t6")
    outcome = call_tool(workspace, "build_scm", ScmArgs(caption="an old man with gray hair", intervene="Gray_Hair=0",
                                                        graph="true"), state)
    result = outcome.result
    assert result["valid"] and result["graph_by"] == "true" and "Gray_Hair → Young" in result["edges"]
    assert result["intervention"] == "do(Gray_Hair = 0)" and "without gray hair" in result["counterfactual_caption"]
    assert 0.5 < result["also_changes"]["Young"] < 0.85  # old gray-haired men who get hair: 69 % young
    assert outcome.files and open(outcome.files[0], "rb").read(4) == b"\x89PNG"
    bad = call_tool(workspace, "build_scm", ScmArgs(caption="a man", intervene="Nose=1", graph="true"), state)
    assert "not an attribute" in bad.result["error"] and bad.result["fix"]


def test_find_weaknesses_ranks_edits_of_validation_images(workspace, tmp_path):
    chat, _ = session(workspace, [("audit", {}), ("find_weaknesses", {"top": 5}), "hair colour"], tmp_path, thread="t9")
    chat.agent.auto_approve = True
    out = events(chat.send("what is the model weak at?"))
    result = json.loads(next(e["text"] for e in out if e["kind"] == "result" and e["name"] == "find_weaknesses"))
    edits = result["worst_edits"]
    assert result["split"] == "val" and 0 < len(edits) <= 5 and result["images_drawn"] > 0
    assert [e["delta_acc"] for e in edits] == sorted(e["delta_acc"] for e in edits)
    assert all(e["ci"][0] <= e["delta_acc"] <= e["ci"][1] and e["class"].startswith("Male=") for e in edits)


def test_counterfactual_search_ranks_what_flips_the_model(workspace, tmp_path):
    chat, _ = session(workspace, [("audit", {}), ("counterfactual_search", {"n": 8}), "gray hair"], tmp_path,
                      thread="t10")
    chat.agent.auto_approve = True
    out = events(chat.send("which attribute changes flip the model?"))
    result = json.loads(next(e["text"] for e in out if e["kind"] == "result" and e["name"] == "counterfactual_search"))
    assert result["mode"] == "keep-label" and result["images"] == 8
    assert 0 <= result["valid_flip_rate"] <= result["flip_rate"] <= 1
    assert all(m["attribute"] != "Male" for m in result["moved_most"])   # the class is frozen
    assert Path(result["report"]).is_file()
