"""Attribute-informed perturbation (seed 002): the conditional generator's training and files, the
search's stopping rule and frozen attributes, the baselines, the report and ``fairloop aip``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fairloop.aip.generator import (
    AIPTrainConfig,
    AttributeAutoencoder,
    load_aip_generator,
    random_attributes,
    save_aip_generator,
    train_aip_generator,
)
from fairloop.aip.search import SearchConfig, check_method_names, fgsm, latent_search, single_attribute_changes
from fairloop.data.synthfaces import ATTRIBUTES, HAIR_STATES
from fairloop.errors import ConfigError, DataError

TINY = AIPTrainConfig(n_identities=40, held_out=8, steps=4, batch_size=8, width=16, latent_dim=8, threads=1,
                      checkpoint_every=2)


@pytest.fixture(scope="module")
def tiny_generator(tmp_path_factory):
    """A four-step AIP generator (width 16) and its work folder."""
    work = tmp_path_factory.mktemp("aip-work")
    out = train_aip_generator(TINY, work, work / "generator", log=lambda line: None)
    return out, work


def test_random_attributes_switch_on_exactly_one_hair_state_and_toss_a_coin_for_the_rest():
    a = random_attributes(4000, np.random.default_rng(0), ATTRIBUTES)
    hair = [ATTRIBUTES.index(h) for h in HAIR_STATES]
    assert (a[:, hair].sum(1) == 1).all()
    others = [j for j in range(len(ATTRIBUTES)) if j not in hair]
    assert np.allclose(a[:, others].mean(0), 0.5, atol=0.04)
    assert abs(np.corrcoef(a[:, ATTRIBUTES.index("Male")], a[:, ATTRIBUTES.index("Mustache")])[0, 1]) < 0.05


def test_the_generator_trains_resumes_and_loads_back(tiny_generator, tmp_path):
    out, work = tiny_generator
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["steps"] == 4
    scores = manifest["scores"]
    assert scores["n_held_out"] == 8 and 0 < scores["reconstruction_psnr_db"] < 60
    assert set(scores["attribute_control"]) <= set(ATTRIBUTES) and "Gray_Hair" in scores["attribute_control"]
    assert json.loads((work / "aip" / "step.json").read_text())["step"] == 4
    lines: list[str] = []   # two more steps continue from step 4 rather than starting again
    train_aip_generator(replace(TINY, steps=6), work, tmp_path / "g6", log=lines.append)
    assert any("step 6/6" in line for line in lines) and not any("step 2/6" in line for line in lines)

    model = load_aip_generator(out)
    z = torch.zeros(2, 8)
    a = torch.zeros(2, len(ATTRIBUTES))
    assert model.decode(z, a).shape == (2, 3, 64, 64)
    assert not any(p.requires_grad for p in model.parameters())


def test_missing_or_damaged_generators_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="train-aip"):
        load_aip_generator(tmp_path / "none")
    model = AttributeAutoencoder(ATTRIBUTES, latent_dim=8, width=16)
    save_aip_generator(model, {}, tmp_path / "g")
    (tmp_path / "g" / "config.json").write_text(json.dumps({**model.config(), "latent_dim": 9}))
    with pytest.raises(DataError, match="does not match"):
        load_aip_generator(tmp_path / "g")


class _Brightness(nn.Module):
    """A 'classifier' that says 1 when the image is brighter than ``level``."""

    def __init__(self, level: float = 0.5, sharpness: float = 40.0):
        super().__init__()
        self.level, self.sharpness = level, sharpness

    def forward(self, x):
        return self.sharpness * (x.mean((1, 2, 3)) - self.level)


class _Lamp(nn.Module):
    """A 'generator' whose brightness is sigmoid(z₀ + a₀ + a₁ − 1): each can flip :class:`_Brightness`."""

    def decode(self, z, a):
        level = torch.sigmoid(z[:, 0] + a[:, 0] + a[:, 1] - 1.0)
        return level.view(-1, 1, 1, 1).expand(-1, 3, 4, 4)


def test_the_search_stops_at_the_first_flip_and_never_moves_a_frozen_attribute():
    z0, a0 = torch.zeros(3, 2), torch.zeros(3, 2)
    want = torch.ones(3)
    z, a, queries = latent_search(_Lamp(), _Brightness(), z0, a0, want, move_a=True, random=False, frozen=[0],
                                  config=SearchConfig(max_queries=50))
    assert (_Brightness()(_Lamp().decode(z, a)) > 0).all()
    assert (queries >= 2).all() and (queries < 50).all()     # seed 002's "or" would run all 50
    assert (a[:, 0] == 0).all() and (a[:, 1] > 0).all()       # the frozen column stays, the other moves
    assert ((a >= 0) & (a <= 1)).all()

    z, a, _ = latent_search(_Lamp(), _Brightness(), z0, a0, want, move_a=False, random=False, frozen=[],
                            config=SearchConfig(max_queries=50))
    assert (a == a0).all() and (z[:, 0] > 0).all()            # xGEMs: the latent alone

    _, _, queries = latent_search(_Lamp(), _Brightness(), z0, a0, want, move_a=True, random=False, frozen=[],
                                  config=SearchConfig(max_queries=1))
    assert (queries == 1).all()                               # the budget ends it


def test_fgsm_takes_the_smallest_epsilon_that_flips():
    x = torch.full((1, 3, 4, 4), 0.5)
    images, queries = fgsm(_Brightness(level=0.5 + 3 / 255, sharpness=1e3), x, torch.ones(1))
    assert torch.allclose(images, x + 4 / 255)                # 1/255 and 2/255 fall short
    assert queries.item() == 4                                # one gradient, three tries


def test_single_changes_keep_the_class_and_move_the_hair_as_one_variable():
    row = {a: 0 for a in ATTRIBUTES} | {"Male": 1, "Gray_Hair": 1}
    changes = dict(single_attribute_changes(row, "Male", list(ATTRIBUTES)))
    assert all(attrs["Male"] == 1 for attrs in changes.values())
    assert ("Gray_Hair", "Blond_Hair") in changes and changes[("Gray_Hair", "Blond_Hair")]["Gray_Hair"] == 0
    assert sum(changes[("Gray_Hair", "Blond_Hair")][h] for h in HAIR_STATES) == 1
    assert ("Eyeglasses",) in changes and len(changes) == len(ATTRIBUTES) - 2   # no target, no current state


def test_method_names_and_modes_are_checked():
    with pytest.raises(ConfigError, match="unknown method"):
        check_method_names(["aip", "cadex"], "flip", True)
    with pytest.raises(ConfigError, match="keep-label baseline"):
        check_method_names(["exact"], "flip", True)
    with pytest.raises(ConfigError, match="SynthFaces"):
        check_method_names(["exact"], "keep-label", False)


def test_every_method_reports_the_interface_on_the_same_images(tiny_generator, synth_data, tiny_checkpoint, tmp_path):
    from fairloop.aip import counterfactual_search
    from fairloop.vision.models import load_checkpoint

    net, _ = load_checkpoint(tiny_checkpoint)
    generator = load_aip_generator(tiny_generator[0])
    methods = ("aip", "xgems", "aip-r", "fgsm", "exact")
    report = counterfactual_search(net, synth_data, "Male", n=5, mode="keep-label", methods=methods, split="val",
                                   generator=generator, config=SearchConfig(max_queries=20), out_dir=tmp_path,
                                   log=lambda line: None)
    for key in ("flip_rate", "valid_flip_rate", "lpr", "seconds_per_query", "attributes"):
        assert key in report
    assert list(report["methods"]) == list(methods)
    ids = [row["id"] for row in report["methods"]["aip"]["images"]]
    for name, scores in report["methods"].items():
        assert [row["id"] for row in scores["images"]] == ids, name
        assert 0 <= scores["flip_rate"] <= 1 and scores["n"] == 5
        assert all(1 <= row["queries"] for row in scores["images"])
        flipped = sum(row["decision_before"] != row["decision_after"] for row in scores["images"])
        assert scores["flip_rate"] == pytest.approx(flipped / 5)
        assert len(scores["pairs"]) == flipped and all(p["image"].endswith(".png") for p in scores["pairs"])
    # keep-label: the target attribute never moves, and xGEMs moves no attribute at all
    assert all("Male" not in row.get("delta_a", {}) for row in report["methods"]["aip"]["images"])
    assert all("delta_a" not in row for row in report["methods"]["xgems"]["images"])
    assert report["methods"]["exact"]["queries_per_image"] == len(ATTRIBUTES) - 2


def test_fairloop_aip_command_writes_the_interface_json(tiny_generator, synth_root, tiny_checkpoint, tmp_path):
    from typer.testing import CliRunner

    from fairloop.cli import app

    out = tmp_path / "aip.json"
    result = CliRunner().invoke(app, ["aip", "--root", str(synth_root), "--target", "Male", "--model",
                                      str(tiny_checkpoint), "--generator", str(tiny_generator[0]), "-n", "3",
                                      "--methods", "aip,fgsm", "--max-queries", "5", "--split", "val",
                                      "--out", str(tmp_path / "o"), "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert {"flip_rate", "valid_flip_rate", "lpr", "seconds_per_query", "attributes"} <= set(report)
    assert "aip" in result.output and "fgsm" in result.output


class _SeesEveryoneAsAMan:
    """An attribute oracle that reads Male = 1 (and nothing else) on every image."""

    attributes = tuple(ATTRIBUTES)

    def predict(self, images):
        out = np.zeros((len(images), len(ATTRIBUTES)), np.float32)
        out[:, ATTRIBUTES.index("Male")] = 1.0
        return out


def test_training_counterfactuals_come_from_training_images_and_keep_their_true_class(tiny_generator, synth_data,
                                                                                      tmp_path, monkeypatch):
    from fairloop.aip import load_images
    from fairloop.aip.augment import training_counterfactuals
    from fairloop.tools.quality import AttributeOracle

    monkeypatch.setattr(AttributeOracle, "packaged", staticmethod(lambda device="cpu": _SeesEveryoneAsAMan()))
    generator = load_aip_generator(tiny_generator[0])
    train = synth_data.split("train").table
    with torch.no_grad():   # a brightness 'classifier' halfway through the reconstructions: half each way
        x = load_images(train["path"][:24].tolist())
        recon = generator.decode(generator.encode(x), torch.tensor(train[list(ATTRIBUTES)][:24].to_numpy(np.float32)))
    classifier = _Brightness(level=float(recon.mean((1, 2, 3)).median()), sharpness=400.0)
    made, recon_rows = training_counterfactuals(classifier, synth_data, "Male", protected="Gray_Hair", n=24,
                                                out_dir=tmp_path, generator=generator,
                                                config=SearchConfig(max_queries=50))
    assert list(made["source_id"]) == list(recon_rows["source_id"]) and 0 < len(made) <= 24
    assert set(made["source_id"]) <= set(train.index)
    # kept: flipped, and the oracle still reads the true class (here: men only), labelled with it
    assert (made["label"] == 1).all() and (train.loc[made["source_id"], "Male"] == 1).all()
    assert all(Path(p).suffix == ".png" and Path(p).is_file() for p in [*made["path"], *recon_rows["path"]])
