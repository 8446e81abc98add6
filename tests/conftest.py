"""Shared fixtures: one tiny SynthFaces folder and one tiny trained checkpoint per test session.

Both are session-scoped because rendering faces and training cost seconds; tests that need to
change the data copy the folder first. torch is imported inside the fixtures, so test files that
never ask for them (metrics, explanation) do not pay for a torch import.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TARGET = "Male"
PROTECTED = "Gray_Hair"


@pytest.fixture(scope="session", autouse=True)
def fairloop_home(tmp_path_factory):
    """A home of the test session's own ($FAIRLOOP_HOME): runs keep baselines and memory there, and
    a test must never read what the user's runs left in ~/.fairloop, nor write into it."""
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("fairloop-home")
        patch.setenv("FAIRLOOP_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A SynthFaces folder in CelebA layout: 160 images, 112 train / 24 val / 24 test."""
    from fairloop.data.synthfaces import write_synthfaces

    return write_synthfaces(tmp_path_factory.mktemp("synth") / "synthfaces", n=160, seed=0)


@pytest.fixture(scope="session")
def synth_data(synth_root):
    from fairloop.data.datasets import load_dataset

    return load_dataset("celeba", synth_root)


@pytest.fixture(scope="session")
def tiny_training(synth_data):
    """(model, history) of a one-epoch smallcnn for Male, trained on the CPU."""
    from fairloop.vision.train import TrainConfig, train_classifier

    return train_classifier(synth_data, TARGET, TrainConfig(arch="smallcnn", epochs=1, device="cpu", seed=0))


def _saved(model, history, synth_data, stem: Path) -> Path:
    """Save a checkpoint stem (``stem.safetensors`` + ``stem.json``) with the sidecar written the way
    ``fairloop train`` writes it."""
    from fairloop.vision.models import save_checkpoint

    meta = {"arch": "smallcnn", "target": TARGET, "image_size": 64, "classes": [f"not {TARGET}", TARGET],
            "dataset": synth_data.name, "root": str(synth_data.root), "data_hash": synth_data.fingerprint(),
            "history": history}
    save_checkpoint(model, stem, meta)
    return stem


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_training, synth_data, tmp_path_factory) -> Path:
    """The checkpoint stem of the tiny model."""
    model, history = tiny_training
    return _saved(model, history, synth_data, tmp_path_factory.mktemp("checkpoint") / "tiny")


@pytest.fixture(scope="session")
def biased_checkpoint(synth_data, tmp_path_factory) -> Path:
    """A checkpoint stem of a smallcnn trained long enough to predict both classes: outside even a
    tiny fair band (the one-epoch tiny model predicts one class on validation, and a constant
    predictor sits inside every band, so a run on it never generates)."""
    from fairloop.vision.train import TrainConfig, train_classifier

    model, history = train_classifier(synth_data, TARGET, TrainConfig(arch="smallcnn", epochs=3, batch_size=16,
                                                                       lr=3e-3, device="cpu", seed=0))
    return _saved(model, history, synth_data, tmp_path_factory.mktemp("checkpoint") / "biased")
