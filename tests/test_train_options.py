"""Training options for the mitigation baselines: augmentation choices and weighted resampling."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from fairloop.errors import ConfigError
from fairloop.vision.train import (
    AUGMENTATIONS,
    LabeledImages,
    TrainConfig,
    augmentation,
    group_balanced_weights,
    train_classifier,
)

TARGET, PROTECTED = "Male", "Gray_Hair"
FAST = {"epochs": 1, "device": "cpu", "batch_size": 16, "image_size": 32}


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def mini(synth_data):
    """48 train and 16 val rows of the shared SynthFaces folder."""
    from fairloop.data.datasets import FaceDataset

    table = synth_data.table
    rows = table[table["split"] == "train"].head(48).index.append(table[table["split"] == "val"].head(16).index)
    return FaceDataset(synth_data.name, synth_data.root, table.loc[rows])


@pytest.fixture
def drawn(monkeypatch):
    """The training-row indices LabeledImages hands out, in order."""
    seen: list[int] = []
    original = LabeledImages.__getitem__

    def spy(self, i):
        seen.append(int(i))
        return original(self, i)

    monkeypatch.setattr(LabeledImages, "__getitem__", spy)
    return seen


# ----------------------------------------------------------------------------------- augment


@pytest.mark.parametrize("value,expected", [(True, "flip"), (False, "none"), ("none", "none"), ("flip", "flip"),
                                            ("standard", "standard")])
def test_augment_accepts_the_former_booleans_and_the_names(value, expected):
    config = TrainConfig(augment=value)
    assert config.augment == expected
    assert config.validate() is config


def test_default_augmentation_is_flips():
    assert TrainConfig().augment == "flip"
    assert set(AUGMENTATIONS) == {"none", "flip", "standard"}


def test_unknown_augmentation_is_a_config_error(mini):
    with pytest.raises(ConfigError, match="unknown augment 'mixup'"):
        TrainConfig(augment="mixup").validate()
    with pytest.raises(ConfigError, match="unknown augment"):
        train_classifier(mini, TARGET, TrainConfig(**FAST, augment="mixup"))
    with pytest.raises(ConfigError, match="unknown augment"):
        augmentation("mixup", 64)


def test_none_and_flip_need_no_transform():
    assert augmentation("none", 64) is None
    assert augmentation("flip", 64) is None  # LabeledImages flips by itself


def test_standard_augmentation_keeps_shape_and_range_and_changes_the_image():
    transform = augmentation("standard", 32)
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    outs = [transform(image) for _ in range(4)]
    for out in outs:
        assert out.shape == image.shape and out.dtype == image.dtype
        assert out.min() >= 0 and out.max() <= 1
    assert not all(torch.equal(out, image) for out in outs)
    torch.manual_seed(1)
    assert all(torch.equal(a, transform(image)) for a in outs)  # reproducible from the torch seed


def test_labeled_images_apply_the_transform():
    stream = [torch.zeros(3, 4, 4), torch.ones(3, 4, 4)]
    data = LabeledImages(stream, np.array([0, 1]), transform=lambda x: x + 2)
    image, label, weight, group = data[1]
    assert torch.equal(image, torch.full((3, 4, 4), 3.0))
    assert label == 1.0 and weight == 1.0 and group == 0


def test_former_boolean_and_named_flips_train_identically(mini):
    default, _ = train_classifier(mini, TARGET, TrainConfig(**FAST))
    boolean, _ = train_classifier(mini, TARGET, TrainConfig(**FAST, augment=True))
    named, _ = train_classifier(mini, TARGET, TrainConfig(**FAST, augment="flip"))
    assert _same_weights(default, boolean) and _same_weights(default, named)


def test_each_augmentation_trains_a_different_finite_model(mini):
    models = {}
    for name in AUGMENTATIONS:
        model, history = train_classifier(mini, TARGET, TrainConfig(**FAST, augment=name))
        assert np.isfinite(history["epochs"][0]["train_loss"])
        assert history["config"]["augment"] == name
        models[name] = model
    assert not _same_weights(models["none"], models["flip"])
    assert not _same_weights(models["flip"], models["standard"])
    again, _ = train_classifier(mini, TARGET, TrainConfig(**FAST, augment="standard"))
    assert _same_weights(models["standard"], again)  # seeded


# ----------------------------------------------------------------------------- resampling


def test_group_balanced_weights_give_every_group_the_same_mass():
    target = np.array([0, 0, 0, 0, 1, 1, 1, 0])
    protected = np.array([0, 0, 0, 1, 1, 1, 0, 0])
    weights = group_balanced_weights(target, protected)
    np.testing.assert_allclose(weights, [1 / 4, 1 / 4, 1 / 4, 1, 1 / 2, 1 / 2, 1, 1 / 4])
    for t in (0, 1):
        for p in (0, 1):
            assert weights[(target == t) & (protected == p)].sum() == pytest.approx(1.0)
    np.testing.assert_allclose(group_balanced_weights(target), [0.2] * 4 + [1 / 3] * 3 + [0.2])


def test_group_balanced_weights_need_a_column():
    with pytest.raises(ConfigError, match="at least one column"):
        group_balanced_weights()


def test_sampler_draws_len_train_rows_in_proportion_to_the_weights(mini, drawn):
    train = mini.split("train")
    labels = train.labels(TARGET)
    weights = (labels == 1).astype(float)  # only positives may be drawn
    train_classifier(mini, TARGET, TrainConfig(**FAST), sampler_weights=weights)
    assert len(drawn) == len(train)  # one epoch = len(train) draws
    assert all(labels[i] == 1 for i in drawn)
    assert len(set(drawn)) < len(drawn)  # with replacement: 48 draws from fewer positives repeat


def test_group_balanced_sampler_draws_the_groups_about_equally(synth_data, drawn):
    train = synth_data.split("train")
    target, protected = train.labels(TARGET), train.labels(PROTECTED)
    groups = list(zip(target, protected))
    assert min(Counter(groups).values()) < len(train) / 10  # the shortcut: small minority groups
    train_classifier(synth_data, TARGET, TrainConfig(**FAST),
                     sampler_weights=group_balanced_weights(target, protected))
    counts = Counter(groups[i] for i in drawn)
    assert len(drawn) == len(train) and len(counts) == 4
    expected = len(train) / 4
    assert all(0.5 * expected <= c <= 1.5 * expected for c in counts.values()), counts


def test_sampler_weights_are_seeded_and_change_training(mini, drawn):
    n = len(mini.split("train"))
    weights = np.linspace(1, 2, n)
    a, _ = train_classifier(mini, TARGET, TrainConfig(**FAST), sampler_weights=weights)
    first = list(drawn)
    drawn.clear()
    b, _ = train_classifier(mini, TARGET, TrainConfig(**FAST), sampler_weights=weights)
    assert drawn == first and _same_weights(a, b)
    shuffled, _ = train_classifier(mini, TARGET, TrainConfig(**FAST))
    assert not _same_weights(a, shuffled)


def test_sampler_and_sample_weights_combine(mini):
    labels = mini.split("train").labels(TARGET)
    model, history = train_classifier(mini, TARGET, TrainConfig(**FAST), sample_weights=np.ones(len(labels)) * 2,
                                      sampler_weights=group_balanced_weights(labels))
    assert np.isfinite(history["epochs"][0]["train_loss"])
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())


@pytest.mark.parametrize("weights", [np.ones(5), -np.ones(48), np.full(48, np.inf), np.zeros(48)])
def test_unusable_sampler_weights_are_config_errors(mini, weights):
    assert len(mini.split("train")) == 48
    with pytest.raises(ConfigError, match="sampler_weights"):
        train_classifier(mini, TARGET, TrainConfig(**FAST), sampler_weights=weights)
