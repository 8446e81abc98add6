"""Classifiers, checkpoints, safe weight loading, devices, training and prediction."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import TensorDataset

from fairloop import __version__
from fairloop.errors import ConfigError, DataError
from fairloop.vision.models import (
    ARCHITECTURES,
    FaceClassifier,
    build_model,
    checkpoint_paths,
    load_checkpoint,
    load_state_dict,
    resolve_device,
    save_checkpoint,
)
from fairloop.vision.train import TrainConfig, predict_proba, train_classifier

TARGET = "Male"

# The training tests that train several models use a small subset at 32×32 pixels: the CPU is shared.
FAST = {"epochs": 1, "device": "cpu", "batch_size": 16, "image_size": 32}


def _batch(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    pa, pb = _params(a), _params(b)
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


# ------------------------------------------------------------------------------------ architectures


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_each_architecture_maps_a_batch_to_one_logit_per_image(arch):
    model = build_model(arch).eval()
    assert isinstance(model, FaceClassifier)
    with torch.no_grad():
        logits = model(_batch())
    assert logits.shape == (2,)
    assert torch.isfinite(logits).all()


def test_unknown_architecture_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown architecture"):
        build_model("vgg99")


# -------------------------------------------------------------------------------------- checkpoints


@pytest.fixture
def saved(tmp_path):
    """A fresh smallcnn saved as tmp/ck(.safetensors, .json)."""
    torch.manual_seed(1)
    model = build_model("smallcnn").eval()
    stem = tmp_path / "ck"
    weights = save_checkpoint(model, stem, {"arch": "smallcnn", "target": TARGET, "image_size": 64})
    return model, stem, weights


def test_checkpoint_round_trip_gives_identical_outputs(saved):
    model, stem, weights = saved
    assert weights == stem.with_name("ck.safetensors") and weights.is_file()
    loaded, meta = load_checkpoint(stem)
    assert not loaded.training
    assert _same_weights(model, loaded)
    x = _batch(4)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert meta["arch"] == "smallcnn" and meta["target"] == TARGET


def test_sidecar_holds_arch_target_and_version(saved):
    _, stem, _ = saved
    sidecar = json.loads(stem.with_name("ck.json").read_text())
    assert sidecar["arch"] == "smallcnn"
    assert sidecar["target"] == TARGET
    assert sidecar["fairloop_version"] == __version__


def test_checkpoint_has_no_temp_files_left(saved):
    _, stem, _ = saved
    assert sorted(os.listdir(stem.parent)) == ["ck.json", "ck.safetensors"]


def test_stem_weights_and_sidecar_names_are_the_same_checkpoint(saved):
    model, stem, _ = saved
    names = [stem, stem.with_name("ck.safetensors"), stem.with_name("ck.json"), str(stem)]
    assert len({checkpoint_paths(name) for name in names}) == 1
    x = _batch(3)
    with torch.no_grad():
        expected = model(x)
        for name in names:
            loaded, _ = load_checkpoint(name)
            assert torch.equal(loaded(x), expected)


def test_missing_checkpoint_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nothing")


def test_checkpoint_without_sidecar_is_a_data_error(saved):
    _, stem, _ = saved
    stem.with_name("ck.json").unlink()
    with pytest.raises(DataError, match="no checkpoint"):
        load_checkpoint(stem)


@pytest.mark.parametrize("sidecar", [
    "{not json",
    b"\xff\xfe\x00garbage",  # not even UTF-8
    "[1, 2, 3]",  # JSON, but not an object
    "{}",  # no arch
    '{"arch": "vgg99", "target": "Male"}',  # an arch fairloop never wrote
    '{"arch": "resnet18", "target": "Male"}',  # weights are a smallcnn's
])
def test_damaged_sidecar_is_a_data_error(saved, sidecar):
    _, stem, _ = saved
    path = stem.with_name("ck.json")
    path.write_bytes(sidecar if isinstance(sidecar, bytes) else sidecar.encode())
    with pytest.raises(DataError, match="damaged"):
        load_checkpoint(stem)


def test_damaged_weights_are_a_data_error(saved):
    _, stem, weights = saved
    weights.write_bytes(b"this is not a safetensors file")
    with pytest.raises(DataError, match="damaged"):
        load_checkpoint(stem)


# ------------------------------------------------------------------------------- load_state_dict


class Payload:
    """Unpickling this would create a folder: the side effect weights_only=True must prevent."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (self.marker,)


class NotATensor:
    def __init__(self) -> None:
        self.value = 3


def test_pth_state_dict_loads_with_weights_only(tmp_path):
    state = build_model("smallcnn").state_dict()
    torch.save(state, tmp_path / "w.pth")
    loaded = load_state_dict(tmp_path / "w.pth")
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_pth_with_state_dict_key_is_unwrapped(tmp_path):
    state = {"w": torch.arange(4.0)}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "w.pth")
    assert torch.equal(load_state_dict(tmp_path / "w.pth")["w"], state["w"])


def test_pickled_object_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"w": torch.zeros(2), "evil": Payload(str(marker))}, tmp_path / "evil.pth")
    assert not marker.exists()
    with pytest.raises(DataError, match="plain tensors"):
        load_state_dict(tmp_path / "evil.pth")
    assert not marker.exists()


@pytest.mark.parametrize("content", [
    lambda: {"w": NotATensor()},  # a custom class instance
    lambda: build_model("smallcnn"),  # a whole pickled model
])
def test_pickled_objects_are_data_errors(tmp_path, content):
    torch.save(content(), tmp_path / "obj.pth")
    with pytest.raises(DataError):
        load_state_dict(tmp_path / "obj.pth")


@pytest.mark.parametrize("content", [torch.zeros(3), [torch.zeros(3)], {"w": 3}])
def test_weights_that_are_not_a_state_dict_are_data_errors(tmp_path, content):
    torch.save(content, tmp_path / "odd.pth")
    with pytest.raises(DataError, match="not a state dict"):
        load_state_dict(tmp_path / "odd.pth")


@pytest.mark.parametrize("name,content", [("w.pth", b"garbage"), ("w.safetensors", b"garbage")])
def test_corrupt_weights_files_are_data_errors(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError):
        load_state_dict(tmp_path / name)


def test_missing_weights_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_state_dict(tmp_path / "absent.safetensors")


# ----------------------------------------------------------------------------------- pretrained


@pytest.fixture
def resnet_state(tmp_path):
    import torchvision

    state = {k: v.clone().contiguous() for k, v in torchvision.models.resnet18(weights=None).state_dict().items()}
    state["conv1.weight"] += 0.5  # not what a fresh model starts with
    state["layer4.1.bn2.running_mean"] += 2.0
    return state


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_pretrained_resnet18_weights_are_loaded_and_head_replaced(tmp_path, resnet_state, suffix):
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file(resnet_state, str(path))
    else:
        torch.save(resnet_state, path)
    model = build_model("resnet18", pretrained=path)
    backbone = model.backbone.state_dict()
    assert torch.equal(backbone["conv1.weight"], resnet_state["conv1.weight"])
    assert torch.equal(backbone["layer4.1.bn2.running_mean"], resnet_state["layer4.1.bn2.running_mean"])
    assert model.backbone.fc.out_features == 1
    assert backbone["fc.weight"].shape == (1, 512)
    with torch.no_grad():
        assert model.eval()(_batch()).shape == (2,)


def test_pretrained_mobilenet_weights_are_loaded_and_head_replaced(tmp_path):
    import torchvision

    state = {k: v.clone().contiguous() for k, v in torchvision.models.mobilenet_v3_small(weights=None).state_dict().items()}
    first = next(k for k in state if k.endswith("weight"))
    state[first] += 0.25
    save_file(state, str(tmp_path / "mobilenet.safetensors"))
    model = build_model("mobilenet", pretrained=tmp_path / "mobilenet.safetensors")
    assert torch.equal(model.backbone.state_dict()[first], state[first])
    assert model.backbone.classifier[3].out_features == 1


def test_state_dict_of_another_architecture_is_a_data_error(tmp_path):
    import torchvision

    state = {k: v.contiguous() for k, v in torchvision.models.mobilenet_v3_small(weights=None).state_dict().items()}
    save_file(state, str(tmp_path / "mobilenet.safetensors"))
    with pytest.raises(DataError, match="does not fit torchvision's resnet18"):
        build_model("resnet18", pretrained=tmp_path / "mobilenet.safetensors")


def test_smallcnn_with_pretrained_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="pretrained"):
        build_model("smallcnn", pretrained=tmp_path / "anything.safetensors")


# -------------------------------------------------------------------------------------- devices


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
def test_cuda_without_a_gpu_is_a_config_error(monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device(device)


def test_auto_device_is_cpu_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_device_matches_this_machine():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_loader_workers_default_to_none_on_the_cpu_and_several_beside_a_gpu(monkeypatch):
    from fairloop.vision.models import loader_workers

    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert loader_workers(torch.device("cpu")) == 0
    assert loader_workers(torch.device("cuda")) == 8
    assert loader_workers(torch.device("cuda"), 0) == 0 and loader_workers(torch.device("cpu"), 3) == 3
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert loader_workers(torch.device("cuda:1")) == 1


def test_training_on_cuda_without_a_gpu_is_a_config_error(monkeypatch, synth_data):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        train_classifier(synth_data, TARGET, TrainConfig(epochs=1, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_train_and_predict_on_cuda(synth_data):
    model, history = train_classifier(synth_data, TARGET, TrainConfig(epochs=1, device="cuda"))
    assert history["device"].startswith("cuda")
    assert next(model.parameters()).device.type == "cuda"
    probs = predict_proba(model, synth_data.split("test").images())
    assert probs.shape == (len(synth_data.split("test")),)
    assert np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()
    cpu_probs = predict_proba(model.cpu(), synth_data.split("test").images())
    np.testing.assert_allclose(probs, cpu_probs, atol=0.05)  # autocast on CUDA, float32 on the CPU


# ------------------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def mini(synth_data):
    """48 train and 16 val rows of the shared SynthFaces folder."""
    from fairloop.data.datasets import FaceDataset

    table = synth_data.table
    rows = table[table["split"] == "train"].head(48).index.append(table[table["split"] == "val"].head(16).index)
    return FaceDataset(synth_data.name, synth_data.root, table.loc[rows])


def test_train_returns_eval_model_and_one_history_entry_per_epoch(tiny_training):
    model, history = tiny_training
    assert isinstance(model, FaceClassifier)
    assert not model.training
    assert [e["epoch"] for e in history["epochs"]] == [1]
    entry = history["epochs"][0]
    assert 0.0 <= entry["val_accuracy"] <= 1.0
    assert np.isfinite(entry["train_loss"])
    assert history["best_val_accuracy"] == entry["val_accuracy"]
    assert history["config"]["epochs"] == 1 and history["device"] == "cpu"
    json.dumps(history, allow_nan=False)  # goes into the checkpoint sidecar


def test_two_epochs_give_two_history_entries(mini):
    _, history = train_classifier(mini, TARGET, TrainConfig(**{**FAST, "epochs": 2}))
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    assert history["best_val_accuracy"] == max(e["val_accuracy"] for e in history["epochs"])


def test_same_seed_gives_identical_weights_other_seed_differs(mini):
    a, _ = train_classifier(mini, TARGET, TrainConfig(**FAST, seed=5))
    b, _ = train_classifier(mini, TARGET, TrainConfig(**FAST, seed=5))
    c, _ = train_classifier(mini, TARGET, TrainConfig(**FAST, seed=6))
    assert _same_weights(a, b)
    assert not _same_weights(a, c)


def test_sample_weights_change_training(mini):
    labels = mini.split("train").labels(TARGET)
    uniform, _ = train_classifier(mini, TARGET, TrainConfig(**FAST), sample_weights=np.ones(len(labels)))
    default, _ = train_classifier(mini, TARGET, TrainConfig(**FAST))
    only_positives, _ = train_classifier(mini, TARGET, TrainConfig(**FAST),
                                         sample_weights=(labels == 1).astype(float))
    assert _same_weights(uniform, default)  # weights of 1 are the unweighted loss
    assert not _same_weights(uniform, only_positives)


def test_batches_with_only_zero_weights_do_not_poison_training(mini):
    """Most batches of 4 have weight 0 throughout: they must add nothing, not a NaN loss."""
    n = len(mini.split("train"))
    weights = np.zeros(n)
    weights[:3] = 1.0
    model, history = train_classifier(mini, TARGET, TrainConfig(**{**FAST, "batch_size": 4}),
                                      sample_weights=weights)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())
    assert np.isfinite(history["epochs"][0]["train_loss"])


@pytest.mark.parametrize("weights", [np.ones(5), -np.ones(48), np.full(48, np.nan), np.zeros(48)])
def test_unusable_sample_weights_are_config_errors(mini, weights):
    assert len(mini.split("train")) == 48
    with pytest.raises(ConfigError, match="sample_weights"):
        train_classifier(mini, TARGET, TrainConfig(**FAST), sample_weights=weights)


def test_unusable_train_config_is_a_config_error(synth_data):
    with pytest.raises(ConfigError, match="epochs=0"):
        train_classifier(synth_data, TARGET, TrainConfig(epochs=0, device="cpu"))


def test_unknown_target_is_a_config_error(synth_data):
    with pytest.raises(ConfigError, match="did you mean Male"):
        train_classifier(synth_data, "Mal", TrainConfig(**FAST))


# ----------------------------------------------------------------------------------- prediction


class MeanLogit(nn.Module):
    """No parameters at all; returns (N,) logits."""

    def forward(self, x):
        return (x.mean(dim=(1, 2, 3)) - 0.5) * 10


class TwoClass(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(x.mean(dim=(2, 3)))


class OneColumn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))

    def forward(self, x):
        return self.net(x)


class Shaped(nn.Module):
    def __init__(self, columns: int, extra_dim: bool = False) -> None:
        super().__init__()
        self.columns, self.extra_dim = columns, extra_dim

    def forward(self, x):
        out = x.mean(dim=(2, 3))[:, :1].repeat(1, self.columns)
        return out.unsqueeze(-1) if self.extra_dim else out


@pytest.fixture(scope="module")
def images():
    return _batch(10, seed=3)


@pytest.mark.parametrize("module,reference", [
    (MeanLogit(), lambda m, x: torch.sigmoid(m(x))),
    (OneColumn(), lambda m, x: torch.sigmoid(m(x)[:, 0])),
    (TwoClass(), lambda m, x: torch.softmax(m(x), dim=1)[:, 1]),
])
def test_predict_proba_supports_user_modules(images, module, reference):
    module.train()
    # a list of tensors and a TensorDataset (whose batches are tuples) are both datasets of images
    for dataset in (list(images), TensorDataset(images)):
        probs = predict_proba(module, dataset, batch_size=4)  # 3 batches, concatenated in order
        with torch.no_grad():
            expected = reference(module.eval(), images).numpy()
        module.train()
        assert probs.shape == (10,)
        np.testing.assert_allclose(probs, expected, rtol=1e-6, atol=1e-7)
        assert module.training  # the mode it had is restored


def test_two_class_probability_is_column_one():
    class Fixed(nn.Module):
        def forward(self, x):
            return torch.tensor([[0.0, 0.0], [0.0, 5.0], [5.0, 0.0]])

    probs = predict_proba(Fixed(), list(_batch(3)), batch_size=8)
    np.testing.assert_allclose(probs, [0.5, 1 / (1 + np.exp(-5)), 1 / (1 + np.exp(5))], rtol=1e-6)


@pytest.mark.parametrize("module,shape", [(Shaped(3), "(5, 3)"), (Shaped(2, extra_dim=True), "(5, 2, 1)"),
                                          (Shaped(1, extra_dim=True), "(5, 1, 1)")])
def test_predict_proba_rejects_other_shapes(module, shape):
    with pytest.raises(ConfigError, match=r"shape " + shape.replace("(", r"\(").replace(")", r"\)")):
        predict_proba(module, list(_batch(5)))


def test_predict_proba_of_empty_dataset_is_empty():
    assert predict_proba(MeanLogit(), []).shape == (0,)


def test_predict_proba_of_trained_model_on_dataset(tiny_training, synth_data):
    model, _ = tiny_training
    test = synth_data.split("test")
    probs = predict_proba(model, test.images(), batch_size=7)
    assert probs.shape == (len(test),)
    assert ((probs >= 0) & (probs <= 1)).all()
    with torch.no_grad():
        direct = torch.sigmoid(model(torch.stack([test.images()[i] for i in range(len(test))]))).numpy()
    np.testing.assert_allclose(probs, direct, rtol=1e-5, atol=1e-6)
