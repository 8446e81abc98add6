"""Binary face-attribute classifiers and their checkpoints.

Every model takes float RGB images in [0, 1] (N×3×H×W) and returns one logit per image for the
target attribute. Normalisation lives inside the model, so generated images, real images and
perturbed images all go in the same way.

Checkpoints are a ``.safetensors`` file of weights plus a ``.json`` sidecar (architecture, target,
image size, training config, data hash): nothing in them is ever unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fairloop import __version__
from fairloop.errors import ConfigError, DataError
from fairloop.io import atomic_write_json, atomic_write_tensors

ARCHITECTURES = ("smallcnn", "resnet18", "mobilenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FaceClassifier(nn.Module):
    """A backbone with one output logit, preceded by input normalisation."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        # channels-last weights: on the CPU the small CNN's convolutions and pooling then run 2.3× as
        # fast at inference and 1.5× in training, with the same outputs (bench/bench_classifier.py)
        self.backbone = backbone.to(memory_format=torch.channels_last)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone((images - self.mean) / self.std).squeeze(-1)


def small_cnn(width: int = 16) -> nn.Module:
    """Four conv blocks and a linear head: ~0.3 M parameters, fast on CPU at 64×64."""

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                nn.MaxPool2d(2)]

    w = width
    return nn.Sequential(*block(3, w), *block(w, 2 * w), *block(2 * w, 4 * w), *block(4 * w, 4 * w),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * w, 1))


def build_model(arch: str = "smallcnn", *, pretrained: str | Path | None = None) -> FaceClassifier:
    """A fresh classifier. ``pretrained`` is a torchvision-format state dict (e.g. ImageNet
    weights a user has on disk, ``.safetensors`` or ``.pth``); its classification head is dropped
    and replaced by a one-logit head."""
    import torchvision

    if arch == "smallcnn":
        if pretrained:
            raise ConfigError("--pretrained weights exist only for resnet18 and mobilenet",
                              "drop --pretrained, or use --arch resnet18")
        return FaceClassifier(small_cnn())
    if arch == "resnet18":
        backbone = torchvision.models.resnet18(weights=None)
        head = "fc"
    elif arch == "mobilenet":
        backbone = torchvision.models.mobilenet_v3_small(weights=None)
        head = "classifier.3"
    else:
        raise ConfigError(f"unknown architecture {arch!r}", f"use one of {', '.join(ARCHITECTURES)}")
    if pretrained:
        state = {k: v for k, v in load_state_dict(pretrained).items() if not k.startswith(head + ".")}
        missing, unexpected = backbone.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith(head + ".")]
        if missing or unexpected:
            raise DataError(f"{pretrained} does not fit torchvision's {arch}: "
                            f"{len(missing)} missing and {len(unexpected)} unexpected tensors",
                            f"pass the state dict of torchvision.models.{backbone.__class__.__name__.lower()}")
    if arch == "resnet18":
        backbone.fc = nn.Linear(backbone.fc.in_features, 1)
    else:
        backbone.classifier[3] = nn.Linear(backbone.classifier[3].in_features, 1)
    return FaceClassifier(backbone)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from ``.safetensors``, or from a torch file with ``weights_only=True`` (no pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"weights file {path} does not exist", "check the path")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # SafetensorError (a corrupt header), OSError
            raise DataError(f"cannot read {path} as safetensors ({exc})",
                            "re-export the weights with safetensors.torch.save_file") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unsafe or corrupt files
        raise DataError(f"cannot load {path} as plain tensors ({exc.__class__.__name__})",
                        "save the weights with safetensors, or as a state dict of tensors") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{path} holds a {type(state).__name__}, not a state dict of named tensors",
                        "save model.state_dict() (torch.save or safetensors), not a model or a bare tensor")
    return state


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` → CUDA when torch sees a GPU, else the CPU; any other name is checked."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}", "use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} was asked for, but torch sees no CUDA GPU",
                          "use --device cpu (or auto), or install a CUDA build of torch on a GPU machine")
    return resolved


def loader_workers(device: torch.device, requested: int | None = None) -> int:
    """DataLoader worker processes: ``requested`` when given; by default none on the CPU (the
    training process already uses the cores) and up to 8 beside a GPU, which otherwise waits for
    images decoded in its own process (measured on an H200: training at half its speed)."""
    if requested is not None:
        return requested
    if torch.device(device).type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


# ------------------------------------------------------------------------------------ checkpoints


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """``model`` / ``model.safetensors`` / ``model.json`` all name the same checkpoint."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def save_checkpoint(model: FaceClassifier, path: str | Path, meta: dict[str, Any]) -> Path:
    """Write weights and sidecar atomically (temp file + rename); return the weights path."""
    weights, sidecar = checkpoint_paths(path)
    atomic_write_tensors(weights, {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    atomic_write_json(sidecar, {"fairloop_version": __version__, **meta})
    return weights


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[FaceClassifier, dict[str, Any]]:
    """A classifier and its sidecar metadata, ready for inference on ``device``."""
    from safetensors.torch import load_file

    weights, sidecar = checkpoint_paths(path)
    if not weights.is_file() or not sidecar.is_file():
        raise DataError(f"no checkpoint at {path} (need {weights.name} and {sidecar.name})",
                        "train one with 'fairloop train --out PATH', or check the path")
    try:
        meta = json.loads(sidecar.read_text())
        if not isinstance(meta, dict) or meta.get("arch") not in ARCHITECTURES:
            raise ValueError(f"{sidecar.name} names no known architecture")
        model = build_model(meta["arch"])
        model.load_state_dict(load_file(str(weights)))
    except Exception as exc:  # bad JSON, a wrong arch, SafetensorError, size mismatches (RuntimeError)
        raise DataError(f"checkpoint {weights} is damaged or does not match its sidecar ({exc})",
                        "retrain it with 'fairloop train'") from None
    return model.to(device).eval(), meta

