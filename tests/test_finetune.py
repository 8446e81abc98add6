"""Counterfactual fine-tuning with WiSE-FT interpolation: weights, α selection, the training mix."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from fairloop.errors import ConfigError, DataError
from fairloop.tools import finetune as finetune_module
from fairloop.tools.finetune import (AlphaCandidate, FinetuneConfig, draw_real_rows, finetune, interpolate,
                                     select_alpha)
from fairloop.tools.metrics import FairBand
from fairloop.vision.models import build_model
from fairloop.vision.train import predict_proba

TARGET, PROTECTED = "Male", "Gray_Hair"
N_CF = 16
# 32×32 pixels, one epoch, small batches: the CPU is shared.
FAST = {"epochs": 1, "device": "cpu", "batch_size": 16, "image_size": 32}


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def counterfactuals(synth_root, synth_data, tmp_path_factory) -> pd.DataFrame:
    """16 training faces re-rendered with Gray_Hair flipped, saved as PNG."""
    from fairloop.data.synthfaces import ATTRIBUTES, read_identities, render_face

    identities = read_identities(synth_root)
    folder = tmp_path_factory.mktemp("counterfactuals")
    rows = []
    for image_id, row in synth_data.split("train").table.head(N_CF).iterrows():
        attributes = {name: int(row[name]) for name in ATTRIBUTES}
        attributes[PROTECTED] = 1 - attributes[PROTECTED]
        path = folder / f"{image_id}.png"
        render_face(attributes, int(identities[image_id])).save(path)
        rows.append({"path": str(path), "label": attributes[TARGET], "protected": attributes[PROTECTED]})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def start(tiny_training):
    """The starting model θ0 and a copy of its weights taken before any fine-tuning."""
    model, _ = tiny_training
    return model, _state(model)


@pytest.fixture(scope="module")
def result(start, synth_data, counterfactuals):
    return finetune(start[0], synth_data, counterfactuals, target=TARGET, protected=PROTECTED,
                    config=FinetuneConfig(**FAST))


# ------------------------------------------------------------------------------------ interpolate


def test_interpolate_gives_the_end_points_and_the_midpoint():
    theta0 = {"w": torch.tensor([0.0, 2.0]), "h": torch.tensor([1.0], dtype=torch.float16),
              "n": torch.tensor(3)}
    theta1 = {"w": torch.tensor([4.0, -2.0]), "h": torch.tensor([3.0], dtype=torch.float16),
              "n": torch.tensor(10)}
    assert _same(interpolate(theta0, theta1, 0.0), {**theta0, "n": theta1["n"]})
    assert _same(interpolate(theta0, theta1, 1.0), theta1)
    mid = interpolate(theta0, theta1, 0.5)
    assert torch.equal(mid["w"], torch.tensor([2.0, 0.0]))
    assert mid["h"].dtype == torch.float16 and mid["h"].item() == 2.0
    assert mid["n"].item() == 10  # integer buffers come from θ1


def test_interpolate_takes_batchnorm_counters_from_theta1():
    torch.manual_seed(0)
    a, b = build_model("smallcnn"), build_model("smallcnn")
    b.backbone[1].num_batches_tracked.fill_(7)
    out = interpolate(a.state_dict(), b.state_dict(), 0.3)
    assert out["backbone.1.num_batches_tracked"].item() == 7
    expected = 0.7 * a.state_dict()["backbone.0.weight"] + 0.3 * b.state_dict()["backbone.0.weight"]
    assert torch.allclose(out["backbone.0.weight"], expected)
    a.load_state_dict(out)  # a complete state dict


def test_interpolate_extrapolates_past_one_and_keeps_batchnorm_variances_positive():
    theta0 = {"w": torch.tensor([0.0, 2.0]), "bn.running_var": torch.tensor([1.0, 0.5])}
    theta1 = {"w": torch.tensor([4.0, -2.0]), "bn.running_var": torch.tensor([1.5, 0.1])}
    out = interpolate(theta0, theta1, 1.25)
    assert torch.equal(out["w"], torch.tensor([5.0, -3.0]))  # θ0 + 1.25·(θ1 − θ0)
    assert out["bn.running_var"][0].item() == pytest.approx(1.625)
    assert out["bn.running_var"][1].item() == pytest.approx(1e-5)  # 0.5 + 1.25·(0.1 − 0.5) = 0 → kept positive


def test_interpolate_refuses_different_architectures():
    with pytest.raises(ConfigError, match="different tensors"):
        interpolate({"w": torch.zeros(2)}, {"v": torch.zeros(2)}, 0.5)
    with pytest.raises(ConfigError, match="shape"):
        interpolate({"w": torch.zeros(2)}, {"w": torch.zeros(3)}, 0.5)


# ----------------------------------------------------------------------------------- select_alpha


def _candidate(alpha: float, accuracy: float, wga: float, di: float = 1.0, gap: float = 0.0,
               band: FairBand | None = None, start: dict | None = None, eod: float | None = None) -> AlphaCandidate:
    """A scored candidate as finetune makes one; ``start``: the α = 0 metrics, for the overshoot check."""
    band = band or FairBand()
    metrics = {"accuracy": accuracy, "worst_group_accuracy": wga, "disparate_impact": di,
               "statistical_parity_difference": gap, "equal_opportunity_difference": gap if eod is None else eod,
               "average_odds_difference": gap, "undefined": {}}
    return AlphaCandidate(alpha=alpha, accuracy=accuracy, worst_group_accuracy=wga, metrics=metrics,
                          in_band=band.check(metrics).inside, within_budget=True, score=band.score(metrics),
                          crossed=bool(start and FairBand().crossed(start, metrics)))


def test_select_alpha_takes_the_best_score_within_budget():
    candidates = [_candidate(0.0, 0.90, 0.40, di=0.3, gap=0.3),  # the biased start
                  _candidate(0.5, 0.90, 0.60),  # in band
                  _candidate(0.8, 0.85, 0.80),  # in band, best WGA, but 5 points of accuracy lost
                  _candidate(1.0, 0.90, 0.70, di=0.7, gap=0.1)]  # better WGA, 0.25 outside the band
    assert select_alpha(candidates, base_accuracy=0.90, accuracy_budget=0.01).alpha == 0.5
    assert select_alpha(candidates, base_accuracy=0.90, accuracy_budget=0.05).alpha == 0.8


def test_select_alpha_takes_the_highest_wga_in_band_then_the_smaller_alpha():
    candidates = [_candidate(0.0, 0.90, 0.40, di=0.3, gap=0.3), _candidate(0.3, 0.90, 0.65),
                  _candidate(0.4, 0.91, 0.70), _candidate(0.6, 0.89, 0.70), _candidate(0.9, 0.90, 0.50)]
    assert select_alpha(candidates, base_accuracy=0.90, accuracy_budget=0.01).alpha == 0.4
    assert select_alpha(candidates[::-1], base_accuracy=0.90, accuracy_budget=0.01).alpha == 0.4


def test_select_alpha_spends_a_little_wga_to_reach_the_band():
    """The demo's seed 0, iteration 2 (validation, target band = fair band less 70 %): α = 0 kept
    worst-group accuracy 0.853 at EOD −0.064; α = 0.3 gave 0.847 at EOD −0.016. Ranking by
    worst-group accuracy kept α = 0, and the run never reached the band."""
    target = FairBand().shrunk(0.7)
    stay = _candidate(0.0, 0.879, 0.853, di=0.968, gap=-0.017, eod=-0.064, band=target)
    closer = _candidate(0.3, 0.885, 0.847, di=1.057, gap=0.028, eod=-0.016, band=target)
    far = _candidate(0.9, 0.876, 0.804, di=1.271, gap=0.113, eod=0.091, band=target)
    assert select_alpha([stay, closer, far], base_accuracy=0.879, accuracy_budget=0.01) is closer
    # a large loss of worst-group accuracy is not worth the band
    costly = _candidate(0.3, 0.885, 0.78, di=1.0, gap=0.0, band=target)
    assert select_alpha([stay, costly], base_accuracy=0.879, accuracy_budget=0.01) is stay


def test_select_alpha_does_not_overshoot_the_band():
    """Seed 000: DI 0.27 → 1.355. An α that crosses the fair band is ruled out, however it scores."""
    start = _candidate(0.0, 0.90, 0.5, di=0.27, gap=0.3)
    in_band = _candidate(0.4, 0.90, 0.70, di=1.1, gap=0.03, start=start.metrics)
    overshoot = _candidate(1.0, 0.90, 0.80, di=1.4, gap=0.04, start=start.metrics)
    crossing = _candidate(0.9, 0.90, 0.95, di=1.3, gap=-0.06, start=start.metrics)
    assert not overshoot.in_band and in_band.in_band
    assert crossing.crossed and crossing.score > in_band.score
    chosen = select_alpha([start, in_band, overshoot, crossing], base_accuracy=0.90, accuracy_budget=0.01)
    assert chosen is in_band


def test_select_alpha_falls_back_to_the_start_when_nothing_keeps_the_accuracy():
    candidates = [_candidate(0.0, 0.90, 0.40, di=0.3, gap=0.3), _candidate(0.5, 0.80, 0.80),
                  _candidate(1.0, 0.70, 0.90)]
    assert select_alpha(candidates, base_accuracy=0.95, accuracy_budget=0.01).alpha == 0.0
    assert select_alpha(candidates, base_accuracy=0.90, accuracy_budget=0.0).alpha == 0.0
    with pytest.raises(ConfigError, match="alpha 0"):
        select_alpha(candidates[1:], base_accuracy=0.95, accuracy_budget=0.01)


# --------------------------------------------------------------------------------------- finetune


def test_finetune_returns_a_model_chosen_on_the_alpha_grid(result, start, synth_data):
    model, theta0 = start
    config = FinetuneConfig(**FAST)
    # coarse to fine: every 4th α of the grid, then neighbours at half and a quarter of the stride
    grid, scored = list(config.alphas), [c.alpha for c in result.candidates]
    assert scored == sorted(scored) and set(grid[::4]) <= set(scored) <= set(grid) and len(scored) <= 10
    at = grid.index(result.alpha)
    assert set(grid[max(0, at - 1):at + 2]) <= set(scored)
    assert result.chosen.within_budget
    assert result.n_counterfactual == N_CF
    assert result.n_real == round(N_CF * 0.7 / 0.3) == 37
    assert len(result.history) == 1 and result.history[0]["n_real"] == 37 and result.best_epoch == 1
    # the base is the starting model on val, scored the same way as predict_proba
    val = synth_data.split("val")
    probs = predict_proba(model, val.images(config.image_size), device="cpu")
    assert result.base.alpha == 0.0 and result.candidates[0] is result.base
    assert result.base.accuracy == pytest.approx(float(((probs >= 0.5) == val.labels(TARGET)).mean()))
    # the returned model holds the interpolated weights, in eval mode; θ0 is untouched
    assert not result.model.training
    assert _same(_state(result.model), interpolate(theta0, result.finetuned_state, result.alpha))
    assert _same(_state(model), theta0)
    assert not _same(result.finetuned_state, theta0)
    summary = json.loads(json.dumps(result.as_dict(), allow_nan=False))
    assert summary["alpha"] == result.alpha and len(summary["candidates"]) == len(result.candidates)
    assert "model" not in summary and summary["n_counterfactual"] == N_CF


def test_same_seed_gives_the_same_result(result, start, synth_data, counterfactuals):
    again = finetune(start[0], synth_data, counterfactuals, target=TARGET, protected=PROTECTED,
                     config=FinetuneConfig(**FAST))
    assert _same(again.finetuned_state, result.finetuned_state)
    assert again.alpha == result.alpha
    assert [c.as_dict() for c in again.candidates] == [c.as_dict() for c in result.candidates]
    assert again.history == result.history


def test_head_mode_changes_only_the_last_linear_layer(start, synth_data, counterfactuals):
    model, theta0 = start
    out = finetune(model, synth_data, counterfactuals, target=TARGET, protected=PROTECTED,
                   config=FinetuneConfig(mode="head", lr=1e-2, **FAST))
    head = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    changed = {k for k in theta0 if not torch.equal(theta0[k], out.finetuned_state[k])}
    assert changed == {f"{head}.weight", f"{head}.bias"}
    assert all(p.requires_grad for p in out.model.parameters())  # the returned model is not left frozen
    assert _same(_state(model), theta0)


def test_mix_ratio_zero_fine_tunes_on_the_real_training_split(start, synth_data, counterfactuals):
    out = finetune(start[0], synth_data, counterfactuals, target=TARGET, protected=PROTECTED,
                   config=FinetuneConfig(mix_ratio=0.0, alphas=(0.0, 0.5, 1.0), **FAST))
    assert out.n_counterfactual == 0 and out.n_real == len(synth_data.split("train"))
    assert [c.alpha for c in out.candidates] == [0.0, 0.5, 1.0] and out.alpha in (0.0, 0.5, 1.0)


def test_early_stopping_keeps_the_best_epoch(start, synth_data, counterfactuals, monkeypatch):
    """An objective that never improves after epoch 1 stops after 1 + patience epochs."""
    monkeypatch.setattr(finetune_module, "validation_objective", lambda c, **_: (True, 0.5))
    out = finetune(start[0], synth_data, counterfactuals, target=TARGET, protected=PROTECTED,
                   config=FinetuneConfig(**{**FAST, "epochs": 4}, patience=1, alphas=(0.0, 1.0)))
    assert [h["epoch"] for h in out.history] == [1, 2] and out.best_epoch == 1
    assert [h["improved"] for h in out.history] == [True, False]


def test_theta1_last_trains_every_epoch_without_choosing_one(start, synth_data, counterfactuals, monkeypatch):
    """theta1 = "last": all epochs train, none is scored on validation, and θ1 is the last one."""
    scored_alphas = []
    real_score = finetune_module._Validation.score

    def counting(self, model, alpha, base_accuracy, budget):
        scored_alphas.append(alpha)
        return real_score(self, model, alpha, base_accuracy, budget)

    monkeypatch.setattr(finetune_module._Validation, "score", counting)
    out = finetune(start[0], synth_data, counterfactuals, target=TARGET, protected=PROTECTED,
                   config=FinetuneConfig(**{**FAST, "epochs": 3}, theta1="last", alphas=(0.0, 1.0)))
    assert [h["epoch"] for h in out.history] == [1, 2, 3] and out.best_epoch == 3
    assert sorted(scored_alphas) == [0.0, 1.0]  # the base and α = 1: no epoch was scored


def test_ema_fine_tunes_to_averaged_weights(start, synth_data, counterfactuals):
    """With ``ema`` θ1 is the moving average of the weights, not the last step's weights."""
    config = FinetuneConfig(**FAST, theta1="last", alphas=(0.0, 1.0))
    raw = finetune(start[0], synth_data, counterfactuals, target=TARGET, protected=PROTECTED, config=config)
    averaged = finetune(start[0], synth_data, counterfactuals, target=TARGET, protected=PROTECTED,
                        config=replace(config, ema=0.5))
    theta0 = start[1]
    name = next(k for k, v in theta0.items() if v.is_floating_point() and v.dim() > 1)
    moved_raw = (raw.finetuned_state[name] - theta0[name]).norm()
    moved_averaged = (averaged.finetuned_state[name] - theta0[name]).norm()
    assert 0 < moved_averaged < moved_raw  # the average lags the last step, towards the start


def test_the_alpha_scan_goes_coarse_to_fine(start, synth_data, counterfactuals, monkeypatch):
    """A score with one peak along the path (at α = 0.64): 8 coarse αs (best: 0.6), its neighbours
    0.5 and 0.7, then 0.55 and 0.65 find the grid's best, 0.65, where the whole grid takes 26
    forward passes."""
    real_score = finetune_module._Validation.score

    def peaked(self, model, alpha, base_accuracy, budget):
        candidate = real_score(self, model, alpha, base_accuracy, budget)
        candidate.score = -abs(alpha - 0.64) if base_accuracy is not None else -1.0
        candidate.accuracy, candidate.within_budget, candidate.crossed = 1.0, True, False
        return candidate

    monkeypatch.setattr(finetune_module._Validation, "score", peaked)
    out = finetune(start[0], synth_data, counterfactuals, target=TARGET, protected=PROTECTED,
                   config=FinetuneConfig(**FAST))
    assert out.alpha == 0.65
    assert [c.alpha for c in out.candidates] == [0.0, 0.2, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.8, 1.0, 1.2, 1.25]


def test_uniform_real_rows_are_a_sample_without_repeats_and_the_whole_pool_when_it_is_asked_for():
    groups = np.array([0] * 90 + [1] * 10)
    rows = draw_real_rows(groups, 50, np.random.default_rng(0))
    assert len(set(rows)) == 50 and list(rows) == sorted(rows)
    assert list(draw_real_rows(groups, 100, np.random.default_rng(0))) == list(range(100))


def test_balanced_real_rows_draw_each_group_equally_often():
    """A 5 % group is drawn about as often as a 70 % one, its members repeated."""
    groups = np.array([0] * 700 + [1] * 50 + [2] * 200 + [3] * 50)
    rows = draw_real_rows(groups, 4000, np.random.default_rng(0), "balanced")
    shares = np.bincount(groups[rows], minlength=4) / len(rows)
    assert np.allclose(shares, 0.25, atol=0.03), shares
    assert len(set(rows[groups[rows] == 1])) == 50  # every member of the small group is used


def test_balanced_real_rows_leave_kept_counterfactuals_their_share_of_the_pool():
    """2,000 counterfactuals kept in the small group 1 do not crowd out its 50 real members."""
    groups = np.array([0] * 700 + [1] * 50 + [2] * 200 + [3] * 50 + [1] * 2000)
    kept = np.arange(len(groups)) >= 1000
    rows = draw_real_rows(groups, 30_000, np.random.default_rng(0), "balanced", kept)
    assert abs(kept[rows].mean() - 2 / 3) < 0.02
    real_shares = np.bincount(groups[rows[~kept[rows]]], minlength=4) / np.count_nonzero(~kept[rows])
    assert np.allclose(real_shares, 0.25, atol=0.02), real_shares


@pytest.mark.parametrize("table, error, match", [
    (pd.DataFrame({"path": ["x.png"], "label": [1]}), ConfigError, "protected"),
    (pd.DataFrame({"path": ["x.png"], "label": [2], "protected": [0]}), ConfigError, "'label'"),
    (pd.DataFrame({"path": ["x.png"], "label": [1], "protected": [np.nan]}), ConfigError, "'protected'"),
    (pd.DataFrame({"path": [None], "label": [1], "protected": [0]}), ConfigError, "'path'"),
    (pd.DataFrame({"path": ["/nonexistent/x.png"], "label": [1], "protected": [0]}), DataError, "do not exist"),
    ([("x.png", 1, 0)], ConfigError, "DataFrame"),
])
def test_a_bad_counterfactual_table_is_refused_with_a_fix(start, synth_data, table, error, match):
    with pytest.raises(error, match=match) as info:
        finetune(start[0], synth_data, table, target=TARGET, protected=PROTECTED, config=FinetuneConfig(**FAST))
    assert info.value.fix


@pytest.mark.parametrize("changes, match", [
    ({"mode": "partial"}, "mode"), ({"mix_ratio": 1.5}, "mix_ratio"), ({"alphas": (0.0, 1.6)}, "alphas"),
    ({"patience": 0}, "patience"), ({"accuracy_budget": -0.1}, "budget"),
    ({"real_sampling": "stratified"}, "real_sampling"), ({"theta1": "first"}, "theta1"), ({"ema": 1.0}, "ema"),
])
def test_bad_options_are_config_errors(start, synth_data, changes, match):
    with pytest.raises(ConfigError, match=match):
        finetune(start[0], synth_data, None, target=TARGET, protected=PROTECTED,
                 config=FinetuneConfig(**{**FAST, **changes}))
