"""Structural causal models (seed 003): graphs checked, the true SynthFaces model, abduction–action–
prediction, the LLM builder against a stub endpoint, the scm strategies and `fairloop scm`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from chat_stub import Stub
from test_analyzer import KEY, _no_proxy, make_ctx  # noqa: F401 (_no_proxy: autouse)

from fairloop.data.synthfaces import ATTRIBUTES, HAIR_STATES, Scenario, sample_attributes, scenario_table
from fairloop.errors import ConfigError
from fairloop.scm import CausalGraph, StructuralCausalModel, structural_hamming_distance
from fairloop.scm.builder import (
    SCMAnswer,
    SCMBuilder,
    check_answer,
    parse_intervention,
    true_scm,
    write_caption,
)
from fairloop.tools.prompt_parser import parse_prompt
from fairloop.tools.sources import plan_scm_sources

VOCAB = list(ATTRIBUTES)
GROUPS = (HAIR_STATES,)
#: Seed 003's own example, its letters as free variables: food → plate and plate → food is a cycle.
SEED_EDGES = [["human", "knife"], ["knife", "cutting"], ["cutting", "sliced"], ["sliced", "food"], ["food", "plate"],
              ["plate", "food"], ["board", "cutting"]]


def answer(**changes) -> dict:
    base = {"variables": ["Male", "Gray_Hair", "Young", "Eyeglasses"],
            "edges": [["Male", "Gray_Hair"], ["Gray_Hair", "Young"], ["Young", "Eyeglasses"]],
            "intervention": {"variable": "Gray_Hair", "value": 0},
            "counterfactual_caption": "a young woman without gray hair, wearing eyeglasses",
            "modified_edges": [["Gray_Hair", "Young"], ["Young", "Eyeglasses"]]}
    return base | changes


CAPTION = "a young woman with gray hair and eyeglasses"


# ------------------------------------------------------------------------------------------ graphs


def test_cycles_are_found_and_named_and_orders_refuse_them():
    seed = CausalGraph.of([], SEED_EDGES)
    assert seed.find_cycle() == ["food", "plate", "food"]
    with pytest.raises(ValueError, match="food → plate → food"):
        seed.topological_order()
    dag = CausalGraph.of(["c", "b", "a"], [("a", "b"), ("b", "c"), ("a", "c")])
    assert dag.find_cycle() is None and dag.topological_order() == ["a", "b", "c"]
    assert dag.descendants("a") == {"b", "c"} and dag.intervened(["b"]).edges == (("b", "c"), ("a", "c"))
    assert CausalGraph.of(["x"], [("x", "x")]).find_cycle() == ["x", "x"]


def test_structural_hamming_distance_counts_additions_deletions_and_reversals_once():
    truth = CausalGraph.of([], [("a", "b"), ("b", "c")])
    assert structural_hamming_distance(truth, truth) == 0
    assert structural_hamming_distance(CausalGraph.of([], [("b", "a"), ("b", "c")]), truth) == 1   # reversed
    assert structural_hamming_distance(CausalGraph.of([], [("a", "b")]), truth) == 1                 # missing
    assert structural_hamming_distance(CausalGraph.of([], [("a", "b"), ("b", "c"), ("a", "c")]), truth) == 1  # extra


def test_graph_drawing_writes_a_png(tmp_path):
    CausalGraph.of([], [("a", "b"), ("b", "c"), ("a", "c")]).draw(tmp_path / "g.png", highlight=["b"], title="t")
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert '"b" [shape=box' in CausalGraph.of([], [("a", "b")]).to_dot(highlight=["b"])


# ------------------------------------------------------------------------------- the causal model


def test_the_true_model_is_the_sampler():
    model = StructuralCausalModel.synthfaces()
    drawn = model.sample(40_000, np.random.default_rng(0))
    sampled = sample_attributes(40_000, np.random.default_rng(1))
    assert (drawn.mean() - sampled.mean()).abs().max() < 0.015
    assert (drawn[list(HAIR_STATES)].sum(axis=1) == 1).all()
    assert set(model.graph.parents("Young")) == {"Gray_Hair", "Bald"}
    assert model.graph.find_cycle() is None


def test_abduction_action_prediction_keeps_what_the_intervention_does_not_cause():
    model = StructuralCausalModel.synthfaces()
    people = model.sample(20_000, np.random.default_rng(0))
    gray_men = people[(people.Gray_Hair == 1) & (people.Male == 1)]
    cf = model.counterfactual(gray_men, {"Gray_Hair": 0}, np.random.default_rng(1), hold=("Male",))
    rows, changed = cf.rows, cf.changed
    assert (rows.Gray_Hair == 0).all() and (rows.Male == 1).all()
    assert (rows[list(HAIR_STATES)].sum(axis=1) == 1).all()
    descendants = set(HAIR_STATES).union(*(model.graph.descendants(h) for h in HAIR_STATES))  # one hair variable
    untouched = [a for a in ATTRIBUTES if a not in descendants and a != "Gray_Hair"]
    assert not changed[untouched].any().any()                      # non-descendants never move
    # Young = 1 iff U < P(Young): 0.2 with gray hair, 0.75 without (bald: 0.2) — so nobody young ages,
    # and among the old who get hair, (0.75 - 0.2) / 0.8 ≈ 69 % become young
    was_young = gray_men.Young.to_numpy() == 1
    assert (rows.Young.to_numpy()[was_young] == 1).all()
    hair = (rows.Bald == 0).to_numpy() & ~was_young
    assert abs(rows.Young.to_numpy()[hair].mean() - 0.55 / 0.8) < 0.03
    # a child changes only through its cause: Eyeglasses moves only where Young moved
    assert not (changed.Eyeglasses & ~changed.Young).any()
    # do(state := 0) on a group redraws among the others in proportion; those without it keep theirs
    assert rows.Bald.mean() == pytest.approx(0.12 / 0.8, abs=0.03)
    black = people[(people.Black_Hair == 1)]
    assert not model.counterfactual(black, {"Gray_Hair": 0}, np.random.default_rng(2)).changed.any().any()


def test_fitted_tables_follow_the_given_graph_and_refuse_cycles():
    table = sample_attributes(30_000, np.random.default_rng(0))
    true = StructuralCausalModel.synthfaces().graph
    fitted = StructuralCausalModel.fit(table, true, groups=GROUPS)
    assert fitted.graph.edges and set(fitted.graph.parents("Young")) == {"Gray_Hair", "Bald"}
    young = next(n for n in fitted.nodes if n.name == "Young")
    assert young.table[(0, 0)][0] == pytest.approx(0.75, abs=0.02) and young.table[(1, 0)][0] == pytest.approx(0.2, abs=0.03)
    # an LLM's free variables are not columns: left out, with their edges
    odd = CausalGraph.of(VOCAB + ["sunlight"], [("sunlight", "Pale_Skin"), ("Male", "Mustache")])
    assert "sunlight" not in StructuralCausalModel.fit(table, odd).attributes
    with pytest.raises(ConfigError, match="cycle"):
        StructuralCausalModel.fit(table, CausalGraph.of(VOCAB, [("Young", "Chubby"), ("Chubby", "Young")]))
    with pytest.raises(ConfigError, match="no variable"):
        fitted.counterfactual(table.head(3), {"Nose": 1}, np.random.default_rng(0))


# ---------------------------------------------------------------------------------- checking answers


def test_a_good_answer_passes_and_each_defect_is_named():
    assert check_answer(SCMAnswer.model_validate(answer()), CAPTION, VOCAB, intervention=("Gray_Hair", 0), groups=GROUPS) == []
    cases = {
        "cycle: food → plate → food": answer(variables=["Young"], edges=SEED_EDGES, modified_edges=SEED_EDGES,
                                             counterfactual_caption="a young woman without gray hair"),
        "exactly as 'Gray_Hair'": answer(variables=["Male", "gray_hair", "Young"]),
        "still has Male → Gray_Hair": answer(modified_edges=answer()["edges"]),
        "drops Young → Eyeglasses": answer(modified_edges=[["Gray_Hair", "Young"]]),
        "must be do(Gray_Hair = 0)": answer(intervention={"variable": "Young", "value": 0}),
        "does not show Gray_Hair = 0": answer(counterfactual_caption="a young woman with gray hair"),
        "changes Male": answer(counterfactual_caption="a young man without gray hair, wearing eyeglasses"),
        "cannot cause itself": answer(edges=[["Young", "Young"]], modified_edges=[["Young", "Young"]]),
    }
    for expected, data in cases.items():
        problems = check_answer(SCMAnswer.model_validate(data), CAPTION, VOCAB, intervention=("Gray_Hair", 0),
                                groups=GROUPS)
        assert any(expected in p for p in problems), (expected, problems)
    # black hair says gray hair is gone (one hair state); a caption's effect may change with its cause
    black = answer(counterfactual_caption="an old woman with black hair, wearing eyeglasses")
    assert check_answer(SCMAnswer.model_validate(black), CAPTION, VOCAB, groups=GROUPS) == []


def test_interventions_are_parsed_with_a_fix():
    assert parse_intervention("Gray_Hair=0", VOCAB) == ("Gray_Hair", 0)
    for bad, problem in (("Gray_Hair", "is not ATTRIBUTE=0"), ("Gray_Hair=2", "is not ATTRIBUTE=0"), ("Nose=1", "not an attribute")):
        with pytest.raises(ConfigError, match=problem):
            parse_intervention(bad, VOCAB)


def test_the_true_builder_answers_from_abduction_over_the_captions_people():
    result = true_scm("an old woman with gray hair wearing eyeglasses", VOCAB, ("Gray_Hair", 0))
    assert result.valid and result.shd == 0 and result.graph_valid
    caption = result.answer.counterfactual_caption
    assert parse_prompt(caption, VOCAB).edits == {"Male": 0, "Gray_Hair": 0, "Young": 1, "Eyeglasses": 1}
    assert result.change_rates["Young"] == pytest.approx(0.55 / 0.8, abs=0.04)
    assert not true_scm("a bald woman", VOCAB, None).valid     # no SynthFaces woman is bald
    assert write_caption({"Male": 1, "Gray_Hair": 0, "Black_Hair": 1, "Young": 1}, ["Gray_Hair", "Young"]) == \
        "a man with black hair, who is young"


# ------------------------------------------------------------------------------ the builder, via HTTP


def builder(stub) -> SCMBuilder:
    from fairloop.llm.endpoint import endpoint_chat_model

    client, _where, scrub = endpoint_chat_model("stub-model", base_url=stub.url, api_key=KEY, timeout=5, max_retries=0)
    return SCMBuilder(client, backend="openai", scrub=scrub)


def test_the_seeds_cyclic_graph_is_sent_back_with_the_cycle_named_then_a_fixed_one_is_used():
    cyclic = answer(variables=["Male", "Gray_Hair", "Young", "Eyeglasses"],
                    edges=[["Male", "Gray_Hair"], ["Gray_Hair", "Young"], ["Young", "Gray_Hair"], ["Young", "Eyeglasses"]],
                    modified_edges=[["Young", "Eyeglasses"], ["Gray_Hair", "Young"]])
    with Stub([json.dumps(cyclic), "```json\n" + json.dumps(answer()) + "\n```"]) as stub:
        result = builder(stub).build(CAPTION, VOCAB, intervention=("Gray_Hair", 0), groups=GROUPS)
        feedback = stub.messages(1)[-1]["content"]
    assert "cycle: Gray_Hair → Young → Gray_Hair" in feedback
    assert result.valid and result.attempts == 2 and result.cycles_found == 1
    assert result.shd == 0  # Male → Gray_Hair → Young → Eyeglasses is SynthFaces' own graph over these four
    assert KEY not in json.dumps(result.as_dict())


def test_an_answer_that_never_passes_is_reported_not_used():
    with Stub([json.dumps(answer(modified_edges=answer()["edges"]))]) as stub:
        result = builder(stub).build(CAPTION, VOCAB, intervention=("Gray_Hair", 0), groups=GROUPS)
    assert not result.valid and result.attempts == 3
    assert result.graph_valid  # the graph itself is fine: only the intervention's bookkeeping is wrong
    assert any("still has Male → Gray_Hair" in p for p in result.problems)
    with Stub(["not json at all", 500]) as stub:
        result = builder(stub).build(CAPTION, VOCAB)
    assert not result.valid and not result.graph_valid and result.answer is None


# ------------------------------------------------------------------------- strategies and sources


def test_causal_sources_move_descendants_person_by_person_and_name_every_change():
    table = scenario_table(2000, Scenario(), 0)
    train = table[table.split == "train"]
    batches, match = plan_scm_sources(train, StructuralCausalModel.synthfaces(), target="Male", label=1,
                                      description="a man without gray hair", n=300, vocabulary=VOCAB,
                                      rng=np.random.default_rng(0))
    assert sum(b.n for b in batches) == 300 and match.intervention == {"Gray_Hair": 0}
    assert 0.3 < match.changed["Young"] < 0.65 and match.unreadable == 0
    for batch in batches:
        edits = parse_prompt(batch.prompt, VOCAB).edits
        assert edits["Male"] == 1 and edits.get("Gray_Hair", 0) == 0
        sources = train.loc[list(batch.source_ids)]
        assert (sources.Male == 1).all() and (sources.Gray_Hair == 1).all()
        for name, value in edits.items():  # every named change is a change for each of its sources
            if name != "Male":
                assert (sources[name] != value).all() or name in HAIR_STATES
    # the images' young rate matches the real group's: what proxy matching approximated by selection
    young = sum(b.n for b in batches if parse_prompt(b.prompt, VOCAB).edits.get("Young") == 1) + sum(
        int((train.loc[list(b.source_ids), "Young"] == 1).sum()) for b in batches
        if "Young" not in parse_prompt(b.prompt, VOCAB).edits)
    group = train[(train.Male == 1) & (train.Gray_Hair == 0)]
    assert abs(young / 300 - group.Young.mean()) < 0.12


def test_scm_strategies_propose_the_rules_groups_with_a_causal_model(monkeypatch):
    from fairloop.strategies import STRATEGIES, make_strategy

    assert {"scm", "scm-true"} <= set(STRATEGIES)
    ctx = make_ctx(max_images=200)
    true = make_strategy("scm-true").propose(ctx, np.random.default_rng(0))
    rules = make_strategy("rules").propose(ctx, np.random.default_rng(0))
    assert true.scm == {"graph": "true"} and true.strategy == "scm-true"
    assert true.decision.model_dump() == rules.decision.model_dump()
    with Stub([json.dumps(answer(intervention={"variable": "Gray_Hair", "value": 0},
                                 counterfactual_caption="a man without gray hair"))]) as stub:
        monkeypatch.setenv("OPENAI_BASE_URL", stub.url)
        scm = make_strategy("scm", llm="openai", llm_model="stub-model").propose(ctx, np.random.default_rng(0))
        asked = stub.messages(0)[1]["content"]
    assert "do(Gray_Hair = 0)" in asked and "Caption: a man with gray hair" in asked
    assert scm.scm["graph"] == "llm" and ["Gray_Hair", "Young"] in scm.scm["edges"] and not scm.fell_back
    json.dumps(scm.as_dict())


def test_fairloop_scm_command_writes_the_interface_json_and_drawing(tmp_path):
    out = tmp_path / "scm.json"
    done = subprocess.run([sys.executable, "-m", "fairloop.cli", "scm", CAPTION, "--intervene", "Gray_Hair=0",
                           "--llm", "true", "--json", str(out), "--draw", str(tmp_path / "g.png")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    data = json.loads(out.read_text())
    assert {"variables", "edges", "intervention", "counterfactual_caption", "modified_edges"} <= set(data)
    assert CausalGraph.of(data["variables"], data["edges"]).find_cycle() is None
    assert data["intervention"] == {"variable": "Gray_Hair", "value": 0} and data["valid"]
    assert (tmp_path / "g.png").exists() and "do(Gray_Hair = 0)" in done.stderr
    bad = subprocess.run([sys.executable, "-m", "fairloop.cli", "scm", CAPTION, "--intervene", "Gray=0", "--llm", "true"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "fix:" in bad.stderr and "Traceback" not in bad.stderr


def test_a_causal_model_spec_from_run_state_is_data_not_trusted():
    from fairloop.runs.steps import causal_model

    train = sample_attributes(3000, np.random.default_rng(0))
    junk = {"graph": "llm", "edges": [["Male", "Mustache"], "Young", ["a", "b", "c"], [1, 2], ["__import__", "os"]]}
    model = causal_model(junk, VOCAB, train)
    assert model.graph.edges == (("Male", "Mustache"),)
    with pytest.raises(ConfigError, match="cycle"):
        causal_model({"graph": "llm", "edges": [["Young", "Chubby"], ["Chubby", "Young"]]}, VOCAB, train)
    with pytest.raises(ConfigError, match="only for SynthFaces"):
        causal_model({"graph": "true"}, ["Male", "Smiling"], train[["Male", "Smiling"]])


def test_fairloop_scm_against_an_endpoint_reports_a_graph_it_cannot_use(tmp_path):
    import os

    env = {**os.environ, "OPENAI_API_KEY": KEY, "NO_PROXY": "127.0.0.1,localhost"}
    cyclic = answer(edges=[["Gray_Hair", "Young"], ["Young", "Gray_Hair"]], modified_edges=[["Young", "Gray_Hair"]])
    with Stub([json.dumps(cyclic)]) as stub:
        done = subprocess.run([sys.executable, "-m", "fairloop.cli", "scm", CAPTION, "--intervene", "Gray_Hair=0",
                               "--llm", "openai", "--llm-model", "stub-model", "--llm-base-url", stub.url,
                               "--json", str(tmp_path / "s.json")], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2 and "cycle: Gray_Hair → Young → Gray_Hair" in done.stderr
    assert "Traceback" not in done.stderr and KEY not in done.stderr + (tmp_path / "s.json").read_text()
    saved = json.loads((tmp_path / "s.json").read_text())
    assert not saved["valid"] and saved["attempts"] == 3 and saved["cycles_found"] == 3
