"""Weakness finding (seed 001): edits checked before drawing, statistics, split discipline, the
``lance`` strategy and ``fairloop weaknesses``."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from fairloop.data.synthfaces import ATTRIBUTES
from fairloop.weakness import check_edit, perturb_all, split_sources
from fairloop.weakness.find import Weakness, WeaknessReport, paired_bootstrap
from fairloop.weakness.perturb import Edit, LLMPerturber, caption_of

VOCAB = list(ATTRIBUTES)
SOURCE = {a: 0 for a in VOCAB} | {"Male": 1, "Gray_Hair": 1, "Young": 0, "Eyeglasses": 1}


def _check(edit: Edit) -> str | None:
    return check_edit(edit, SOURCE, target="Male", vocabulary=VOCAB, supported=set(VOCAB))


def test_edits_that_change_the_class_or_cannot_be_drawn_are_rejected_and_named():
    assert _check(Edit("adjective", "Gray_Hair", 0, "a man with brown hair, who is old, wearing eyeglasses")) is None
    assert _check(Edit("subject", "Male", 0, "a woman with gray hair")) == "changes class"
    # the edited caption, read back, says the other class although the edit claims a hat
    assert _check(Edit("object", "Wearing_Hat", 1, "a woman with gray hair wearing a hat")) == "changes class"
    assert _check(Edit("background", "a beach", 1, "a man with gray hair on a beach")) == "unsupported"
    assert _check(Edit("adjective", "Tattoo", 1, "a man with a tattoo")) == "unsupported"
    assert _check(Edit("object", "Eyeglasses", 1, "a man wearing eyeglasses")) == "no change"
    # two changes where one is claimed: LANCE's similarity filter, made exact
    assert _check(Edit("object", "Wearing_Hat", 1, "a man with gray hair wearing a hat, who is young")) == "not minimal"
    # a caption that does not say the edit it claims
    assert _check(Edit("object", "Wearing_Hat", 1, "a man with gray hair wearing a necktie")) == "caption disagrees"


def test_the_exhaustive_perturber_edits_every_attribute_but_the_class_both_ways():
    other = SOURCE | {"Male": 0, "Mustache": 0, "Gray_Hair": 0, "Blond_Hair": 1}
    result = perturb_all([(caption_of(s, VOCAB), s) for s in (SOURCE, other, SOURCE)], target="Male",
                         vocabulary=VOCAB, supported=set(VOCAB))
    assert result.captions == 2  # the repeated caption is perturbed once
    assert result.filters()["kept"] == result.filters()["proposed"] == 2 * (len(VOCAB) - 1)
    assert all(e.attribute != "Male" for e in result.kept)
    keys = set(result.edit_keys())
    assert ("Gray_Hair", 0) in keys and ("Gray_Hair", 1) in keys and ("Blond_Hair", 0) in keys


class _Scripted:
    """A chat model that answers from a script (the key it was given must never reach a report)."""

    def __init__(self, answers):
        self.answers = list(answers)

    def invoke(self, messages):
        return SimpleNamespace(content=self.answers.pop(0))


def test_the_llm_perturber_reports_unsupported_factors_and_drops_class_changes():
    answer = {"edits": [
        {"factor": "adjective", "attribute": "Gray_Hair", "value": 0, "caption": "a man with black hair, who is old, wearing eyeglasses"},
        {"factor": "background", "attribute": "a snowy street", "value": 1, "caption": "a man with gray hair on a snowy street"},
        {"factor": "domain", "attribute": "pencil sketch", "value": 1, "caption": "a pencil sketch of a man with gray hair"},
        {"factor": "subject", "attribute": "Male", "value": 0, "caption": "a woman with gray hair"},
        {"factor": "object", "attribute": "Wearing_Hat", "value": 1, "caption": "a man with gray hair, who is old, wearing eyeglasses, wearing a hat"},
        # free words for an attribute: the caption says which change is meant
        {"factor": "adjective", "attribute": "age", "value": 0, "caption": "a man with gray hair, who is young, wearing eyeglasses"},
        # a value the caption contradicts
        {"factor": "adjective", "attribute": "Smiling", "value": 1, "caption": "a man with gray hair, who is old, wearing eyeglasses"}]}
    perturber = LLMPerturber(_Scripted(["not json at all", json.dumps(answer)]), backend="openai")
    result = perturber.perturb([(caption_of(SOURCE, VOCAB), SOURCE)], target="Male", vocabulary=VOCAB,
                               supported=set(VOCAB))
    assert result.filters() == {"proposed": 7, "unsupported": 2, "changes class": 1, "no change": 0,
                                "caption disagrees": 1, "not minimal": 0, "kept": 3}
    assert result.unsupported() == {"background: a snowy street": 1, "domain: pencil sketch": 1}
    assert set(result.edit_keys()) == {("Gray_Hair", 0), ("Wearing_Hat", 1), ("Young", 1)}
    assert len(result.errors) == 1 and len(result.raw) == 2   # the first answer was retried, not used


def test_the_packaged_models_grammar_keeps_free_words_for_what_cannot_be_drawn():
    from fairloop.weakness.perturb import answer_grammar

    items = answer_grammar(VOCAB, "Male")["properties"]["edits"]["items"]["anyOf"]
    drawable, free = (i["properties"] for i in items)
    assert "Male" not in drawable["attribute"]["enum"] and "Gray_Hair" in drawable["attribute"]["enum"]
    assert set(drawable["factor"]["enum"]) == {"subject", "adjective", "object"}
    assert set(free["factor"]["enum"]) == {"background", "domain"} and "pattern" in free["attribute"]
    # for a known person, only edits that change something: remove what they have, add what they lack
    remove, add, _ = (i["properties"] for i in answer_grammar(VOCAB, "Male", SOURCE)["properties"]["edits"]["items"]["anyOf"])
    assert remove["value"]["enum"] == [0] and set(remove["attribute"]["enum"]) == {"Gray_Hair", "Eyeglasses"}
    assert add["value"]["enum"] == [1] and "Eyeglasses" not in add["attribute"]["enum"] and "Young" in add["attribute"]["enum"]


def test_reinforcement_takes_each_classs_worst_edit_first():
    from fairloop.weakness.reinforce import reinforced_edits

    def row(attribute, label, delta, significant=True):
        return {"attribute": attribute, "value": 1, "label": label, "delta_acc": delta, "significant": significant}

    ranked = [row("Blond_Hair", 1, -0.8), row("Gray_Hair", 1, -0.7), row("Brown_Hair", 1, -0.5), row("Male", 0, -0.45),
              row("Smiling", 0, -0.4, significant=False), row("Gray_Hair", 0, -0.3), row("Bangs", 0, -0.2)]
    chosen = reinforced_edits(ranked, "Male", k=3)
    assert [(w["attribute"], w["label"]) for w in chosen] == [("Blond_Hair", 1), ("Gray_Hair", 1), ("Gray_Hair", 0)]
    assert [(w["attribute"], w["label"]) for w in reinforced_edits(ranked, "Male", k=1)] == [("Blond_Hair", 1)]
    assert reinforced_edits(ranked[:3], "Male") == ranked[:3]   # one class weak only: its three worst


def test_paired_bootstrap_brackets_the_effect_and_is_exact_when_every_pair_agrees():
    rng = np.random.default_rng(0)
    n = 200
    correct_o = np.ones(n)
    correct_c = (rng.random(n) > 0.4).astype(float)          # ΔAcc ≈ -0.4
    decisions_o = np.ones(n)
    decisions_c = correct_c.copy()
    ci = paired_bootstrap(np.stack([correct_o, decisions_o], 1), np.stack([correct_c, decisions_c], 1), rng)
    delta = correct_c.mean() - 1
    assert ci["delta_acc"][0] < delta < ci["delta_acc"][1] < 0
    assert ci["flip_rate"][0] < -delta < ci["flip_rate"][1]
    same = np.stack([correct_o, decisions_o], 1)
    assert paired_bootstrap(same, same, rng) == {"delta_acc": [0.0, 0.0], "flip_rate": [0.0, 0.0]}


def test_sources_come_from_one_split_and_one_class(synth_data):
    rng = np.random.default_rng(0)
    val = synth_data.split("val").table.index
    ids = split_sources(synth_data.table, val, attribute="Gray_Hair", value=0, target="Male", label=1, n=50, rng=rng)
    rows = synth_data.table.loc[ids]
    assert set(ids) <= set(val) and len(ids) == len(set(ids))
    assert (rows["Male"] == 1).all() and (rows["Gray_Hair"] == 1).all()


@pytest.fixture(scope="module")
def report(synth_data, biased_checkpoint, tmp_path_factory):
    from fairloop.generators import make_generator
    from fairloop.vision.models import load_checkpoint
    from fairloop.weakness import discover

    net, _ = load_checkpoint(biased_checkpoint, "cpu")
    return discover(net, synth_data, make_generator("render"), target="Male", out_dir=tmp_path_factory.mktemp("wk"),
                    n_captions=30, per_edit=6, seed=0)


def test_weaknesses_are_found_on_validation_only_and_ranked(report, synth_data):
    val, train, test = (set(synth_data.split(s).table.index) for s in ("val", "train", "test"))
    assert report.split == "val" and report.source_ids and set(report.source_ids) <= val
    assert not set(report.source_ids) & (train | test)
    deltas = [w.delta_acc for w in report.weaknesses]
    assert deltas == sorted(deltas)
    for w in report.weaknesses:
        assert 0 < w.n <= 6 and w.attribute != "Male"
        assert w.ci["delta_acc"][0] <= w.delta_acc <= w.ci["delta_acc"][1]
        assert w.delta_acc == pytest.approx(w.acc_counterfactual - w.acc_original)
        pairs = w.pairs
        assert all(p["label"] == w.label for p in pairs)
        flips = np.mean([(p["p_source"] >= 0.5) != (p["p_counterfactual"] >= 0.5) for p in pairs])
        assert w.flip_rate == pytest.approx(flips, abs=1e-6)
    data = report.as_dict()
    entry = data["weaknesses"][0]
    assert {"factor", "attribute", "direction", "delta_acc", "flip_rate", "n", "ci"} <= set(entry)
    worst = {}
    for w in report.weaknesses:
        worst.setdefault(w.attribute, round(w.delta_acc, 4))
    assert {a["attribute"]: a["worst_delta_acc"] for a in data["attributes"]} == worst


def _weakness(attribute, value, label, delta, ci_high):
    return Weakness(attribute, value, label, n=40, acc_original=0.9, acc_counterfactual=0.9 + delta,
                    delta_acc=delta, flip_rate=-delta, ci={"delta_acc": [delta - 0.15, ci_high]}, drawn=40)


def test_attributes_rank_the_shortcut_that_cuts_both_ways_first():
    """The default scenario's shape: adding blond hair to men costs the most of any single edit,
    but only gray hair costs both ways (removed from men, added to women)."""
    rows = [_weakness("Blond_Hair", 1, 1, -0.78, -0.6), _weakness("Gray_Hair", 0, 1, -0.70, -0.55),
            _weakness("Gray_Hair", 1, 0, -0.43, -0.3), _weakness("Blond_Hair", 0, 0, -0.02, 0.05),
            _weakness("Eyeglasses", 1, 1, -0.30, -0.1), _weakness("Eyeglasses", 0, 0, -0.05, 0.04),
            _weakness("Smiling", 1, 0, -0.01, 0.1)]
    report = WeaknessReport("Male", "val", sorted(rows, key=lambda w: w.delta_acc), None, "render", False, [], 0.0)
    ranked = report.attributes()
    assert [a["attribute"] for a in ranked] == ["Gray_Hair", "Blond_Hair", "Eyeglasses", "Smiling"]
    gray, blond = ranked[0], ranked[1]
    assert gray["both_ways"] == -0.43 and gray["both_ways_significant"]
    assert gray["both_ways_edits"] == ["Male=1 remove", "Male=0 add"]
    assert blond["both_ways"] == -0.02 and not blond["both_ways_significant"] and blond["worst_delta_acc"] == -0.78
    assert ranked[3]["both_ways"] == 0.0 and ranked[3]["both_ways_edits"] == []


def test_lance_reinforces_the_significant_weaknesses_from_training_sources(report, synth_data):
    from fairloop.agent.schema import AnalyzerContext
    from fairloop.strategies import make_strategy
    from fairloop.tools.sources import plan_sources

    weak = [{"attribute": "Gray_Hair", "value": 0, "label": 1, "delta_acc": -0.6, "significant": True, "edit": "without gray hair",
             "ci": {"delta_acc": [-0.8, -0.4]}},
            {"attribute": "Wearing_Lipstick", "value": 1, "label": 1, "delta_acc": -0.2, "significant": True,
             "edit": "wearing lipstick", "ci": {"delta_acc": [-0.3, -0.1]}},
            {"attribute": "Smiling", "value": 1, "label": 0, "delta_acc": -0.1, "significant": False,
             "edit": "who is smiling", "ci": {"delta_acc": [-0.3, 0.1]}}]
    tampered = [{"attribute": "os.system", "value": 1, "label": 0, "delta_acc": -0.9, "significant": True, "edit": "x",
                 "ci": {"delta_acc": [-1, -0.8]}}, {"attribute": "Bangs", "value": 1, "label": 0, "significant": True}]
    context = AnalyzerContext(task="t", target="Male", protected="Young", privileged_value=1, attributes=VOCAB[1:],
                              metrics={}, importances=[], train_groups={"a": 100}, max_images=100,
                              weaknesses=tampered + weak)   # rows that name no attribute or lack fields are ignored
    strategy = make_strategy("lance")
    proposal = strategy.propose(context, np.random.default_rng(0))
    plans = proposal.decision.plans
    assert [(p.label, p.n_images) for p in plans] == [(1, 75), (1, 25)]   # in proportion to the accuracy lost
    assert "gray hair" in plans[0].description and not proposal.match_proxy
    assert "Young" not in proposal.decision.diagnosis   # the protected attribute is never read
    train = synth_data.split("train").table
    batches, proxy = plan_sources(train, target="Male", label=1, description=plans[0].description, n=10,
                                  vocabulary=VOCAB, rng=np.random.default_rng(0), match_proxy=False)
    ids = [i for b in batches for i in b.source_ids]
    assert proxy is None and set(ids) <= set(train.index) and (train.loc[ids, "Gray_Hair"] == 1).all()
    none = strategy.propose(AnalyzerContext(**{**context.__dict__, "weaknesses": weak[2:]}), np.random.default_rng(0))
    assert not none.decision.counterfactuals_needed and "nothing to reinforce" in none.decision.diagnosis


def test_the_weaknesses_command_writes_the_interface_json_and_names_bad_options(synth_root, biased_checkpoint, tmp_path):
    out = tmp_path / "wk"
    cmd = [sys.executable, "-m", "fairloop.cli", "weaknesses", "--root", str(synth_root), "--target", "Male",
           "--model", str(biased_checkpoint), "--out", str(out), "--per-edit", "4", "--n-captions", "20",
           "--reinforce", "8", "--protected", "Gray_Hair"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    data = json.loads((out / "weaknesses.json").read_text())
    assert data["weaknesses"] and data["split"] == "val"
    for entry in data["weaknesses"]:
        assert {"factor", "attribute", "direction", "delta_acc", "flip_rate", "n", "ci"} <= set(entry)
    assert "Edits, worst first" in (out / "weaknesses.html").read_text()
    assert "ΔAcc" in done.stderr and "wrote" in done.stderr
    reinforced = json.loads((out / "reinforce.json").read_text())
    if reinforced["edits"]:   # the tiny model may have no weakness beyond the noise: then nothing is reinforced
        assert set(reinforced["arms"]) == {"erm", "augment", "reinforce-seed", "reinforce"}
        assert "counterfactual acc." in done.stderr
    else:
        assert "nothing to reinforce" in reinforced["note"]
    bad = subprocess.run(cmd[:-10] + ["--out", str(tmp_path / "x"), "--perturb", "everything"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode != 0 and "unknown --perturb 'everything'" in bad.stderr and "Traceback" not in bad.stderr


def test_reinforcement_trains_on_training_sources_and_scores_on_test_sources(report, synth_data, biased_checkpoint,
                                                                              tmp_path):
    from fairloop.generators import make_generator
    from fairloop.vision.models import load_checkpoint
    from fairloop.weakness.reinforce import ARMS, SEED_ALPHA, reinforce

    weak = [{"attribute": "Gray_Hair", "value": 0, "label": 1, "delta_acc": -0.5, "significant": True,
             "edit": "without gray hair"},
            {"attribute": "Gray_Hair", "value": 1, "label": 0, "delta_acc": -0.3, "significant": True,
             "edit": "with gray hair"}]
    net, _ = load_checkpoint(biased_checkpoint, "cpu")
    result = reinforce(net, synth_data, make_generator("render"), weak, target="Male", protected="Gray_Hair",
                       out_dir=tmp_path, n_images=16, n_test=6, finetune_epochs=1, seed=0)
    train, test = set(synth_data.split("train").table.index), set(synth_data.split("test").table.index)
    assert result["train_sources"] and set(result["train_sources"]) <= train
    assert result["test_sources"] and set(result["test_sources"]) <= test
    assert not set(report.source_ids) & (set(result["train_sources"]) | set(result["test_sources"]))
    assert result["n_train_counterfactuals"] == 16 and 0 < result["n_test_counterfactuals"] <= 12
    assert set(result["arms"]) == set(ARMS)
    assert result["arms"]["reinforce-seed"]["alpha"] == result["arms"]["augment"]["alpha"] == SEED_ALPHA
    for arm in result["arms"].values():
        assert 0 <= arm["accuracy"] <= 1 and 0 <= arm["counterfactual_accuracy"] <= 1


def test_blip_captions_load_from_a_folder_and_feed_the_perturber(synth_data, biased_checkpoint, tmp_path):
    """A tiny random BLIP saved the real way: the loading path and the caption shape; then captions
    read by the prompt parser drive the edits (a scripted captioner, since a random BLIP says nothing)."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    from fairloop.errors import ConfigError
    from fairloop.generators import make_generator
    from fairloop.vision.models import load_checkpoint
    from fairloop.weakness import discover
    from fairloop.weakness.captions import BlipCaptioner

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "man", "with", "gray", "hair"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                              tokenizer=BertTokenizer(str(tmp_path / "vocab.txt"), bos_token="[DEC]"))
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig(
        text_config={"vocab_size": len(words), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 32, "bos_token_id": 5, "pad_token_id": 0,
                     "sep_token_id": 3},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8}, projection_dim=32))
    model.save_pretrained(tmp_path / "blip")
    processor.save_pretrained(tmp_path / "blip")
    paths = [str(p) for p in synth_data.table["path"][:3]]
    captions = BlipCaptioner(tmp_path / "blip", max_new_tokens=5).captions(paths)
    assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
    with pytest.raises(ConfigError, match="no BLIP captioning model"):
        BlipCaptioner(tmp_path / "missing")

    class Scripted:
        def captions(self, paths):
            return ["a photo of a person with gray hair, wearing a hat"] * len(paths)

    net, _ = load_checkpoint(biased_checkpoint, "cpu")
    report = discover(net, synth_data, make_generator("render"), target="Male", out_dir=tmp_path / "wk",
                      captions_from="blip", captioner=Scripted(), n_captions=5, per_edit=3)
    # only what the captions state can be edited: hair (gray) and the hat, each to the other value
    assert set(report.perturbation.edit_keys()) == {("Gray_Hair", 0), ("Wearing_Hat", 0)}
    assert report.as_dict()["captions"] == {"from": "blip", "n": 2}   # one caption per class


def test_captions_read_by_the_attribute_oracle_for_images_without_a_table(synth_data, biased_checkpoint, tmp_path):
    from fairloop.generators import make_generator
    from fairloop.tools.quality import AttributeOracle
    from fairloop.vision.models import load_checkpoint
    from fairloop.weakness import discover
    from fairloop.weakness.captions import oracle_values

    oracle = AttributeOracle.packaged()
    ids = [str(i) for i in synth_data.split("val").table.index[:6]]
    seen = oracle_values(oracle, synth_data, ids, "Male")
    table = synth_data.table.loc[ids]
    assert [v["Male"] for v in seen] == table["Male"].tolist()   # the class is the label, not a guess
    agree = np.mean([v[a] == table.at[i, a] for v, i in zip(seen, ids) for a in ("Gray_Hair", "Eyeglasses", "Smiling")])
    assert agree > 0.8   # the shipped oracle reads SynthFaces renders
    net, _ = load_checkpoint(biased_checkpoint, "cpu")
    report = discover(net, synth_data, make_generator("render"), target="Male", out_dir=tmp_path, oracle=oracle,
                      captions_from="oracle", n_captions=6, per_edit=2, max_edits=3)
    # render is exact: its pairs need no check, so the oracle only read the captions
    assert report.caption_source == "oracle" and report.perturbation.kept and not report.verified
