"""Training and prediction for the binary classifiers of :mod:`fairloop.vision.models`.

Images stream from disk through a DataLoader; nothing holds a decoded dataset. On CUDA the same
code uses mixed precision, pinned memory and loader workers.

Two options serve the mitigation baselines of ``bench/bench_mitigation.py``: ``sample_weights``
weight each training row's loss (AIF360 Reweighing), ``sampler_weights`` change how often each row
is drawn (group-balanced resampling, see :func:`group_balanced_weights`); ``TrainConfig.augment``
picks the augmentation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from fairloop.data.datasets import FaceDataset, ImageStream
from fairloop.errors import ConfigError
from fairloop.vision.models import FaceClassifier, build_model, loader_workers, resolve_device

Progress = Callable[[str, int, int], None]  # (stage, done, total)

#: Values of ``TrainConfig.augment``: no augmentation, horizontal flips only, or the standard recipe
#: (flips, random crops with padding, colour jitter). ``True``/``False`` mean ``"flip"``/``"none"``.
AUGMENTATIONS = ("none", "flip", "standard")


@dataclass(frozen=True)
class TrainConfig:
    """How a baseline classifier is trained; stored in the checkpoint sidecar."""

    arch: str = "smallcnn"
    epochs: int = 8
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    image_size: int = 64
    augment: str = "flip"  # one of AUGMENTATIONS; flips by default: faces are symmetric, attributes survive it
    seed: int = 0
    device: str = "auto"
    num_workers: int | None = None  # None: loader_workers' default (0 on the CPU, several beside a GPU)
    pretrained: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.augment, bool):  # the former boolean option: True was flips, False none
            object.__setattr__(self, "augment", "flip" if self.augment else "none")

    def validate(self) -> TrainConfig:
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"unknown augment {self.augment!r}", f"use one of {', '.join(AUGMENTATIONS)}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"epochs={self.epochs}, batch_size={self.batch_size}, lr={self.lr} are not usable",
                              "use epochs ≥ 1, batch size ≥ 1 and a positive learning rate")
        if self.image_size < 8:
            raise ConfigError(f"--image-size {self.image_size} leaves the network nothing to see",
                              "use --image-size 8 or more (64 is the default and what fairloop's generators draw)")
        if self.num_workers is not None and self.num_workers < 0:
            raise ConfigError(f"--workers {self.num_workers} is not a number of processes",
                              "use --workers 0 (load in this process) or more")
        return self


def augmentation(name: str, image_size: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The random transform of a CHW float image for ``TrainConfig.augment`` (None: leave it as is).

    ``"flip"`` is handled by :class:`LabeledImages` itself (its ``flip`` flag), so this returns None
    for it too. ``"standard"``: horizontal flip, a random crop back to ``image_size`` after padding
    by an eighth of it (4 px at 32, 8 at 64), and brightness/contrast/saturation jitter of ±20 %;
    no hue jitter, which would change hair colours, i.e. attributes.
    """
    if name in ("none", "flip"):
        return None
    if name == "standard":
        from torchvision.transforms import v2

        return v2.Compose([
            v2.RandomHorizontalFlip(),
            v2.RandomCrop(image_size, padding=max(1, image_size // 8)),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        ])
    raise ConfigError(f"unknown augment {name!r}", f"use one of {', '.join(AUGMENTATIONS)}")


class LabeledImages(Dataset):
    """Images streamed from disk with one float label, a sample weight and a group id each.

    ``flip`` flips half of the images horizontally; ``transform`` (e.g. :func:`augmentation`) is
    applied to every image after that. ``groups`` (e.g. target × protected) feed group-wise
    objectives such as :class:`GroupDRO`; without them every image is in group 0.
    """

    def __init__(self, stream: ImageStream, labels: np.ndarray, weights: np.ndarray | None = None, flip: bool = False,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, groups: np.ndarray | None = None):
        self.stream, self.labels, self.flip, self.transform = stream, labels.astype(np.float32), flip, transform
        self.weights = np.ones(len(labels), np.float32) if weights is None else weights.astype(np.float32)
        self.groups = np.zeros(len(labels), np.int64) if groups is None else np.asarray(groups, np.int64)

    def __len__(self) -> int:
        return len(self.stream)

    def __getitem__(self, i: int):
        image = self.stream[i]
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[i], self.weights[i], self.groups[i]


class GroupDRO:
    """Online group DRO (Sagawa et al., 2020): the loss is Σ_g q_g · loss_g, and after each batch
    q_g ← q_g · exp(η · loss_g), normalised, so training leans on whichever group is worst now.

    ``step`` is η; the weights q start uniform over ``n_groups`` and persist across batches."""

    def __init__(self, n_groups: int, step: float = 0.01) -> None:
        self.q = torch.full((n_groups,), 1.0 / n_groups)
        self.step = step

    def __call__(self, losses: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        n = len(self.q)
        q = self.q.to(losses.device)
        sums = torch.zeros(n, device=losses.device).scatter_add(0, groups, losses)
        counts = torch.zeros(n, device=losses.device).scatter_add(0, groups, torch.ones_like(losses))
        group_loss = sums / counts.clamp_min(1)
        present = counts > 0
        q = torch.where(present, q * torch.exp(self.step * group_loss.detach()), q)
        self.q = (q / q.sum()).detach().cpu()
        return (self.q.to(losses.device) * group_loss).sum()


def group_balanced_weights(*columns: np.ndarray) -> np.ndarray:
    """Per-row weights 1 / (size of the row's group), groups being the combinations of ``columns``.

    As ``sampler_weights`` they make every group (e.g. target × protected) drawn equally often; they
    sum to the number of non-empty groups.
    """
    if not columns:
        raise ConfigError("group_balanced_weights needs at least one column", "pass e.g. the target and protected labels")
    keys = np.stack([np.asarray(c).reshape(-1) for c in columns], axis=1)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    return (1.0 / counts[inverse.reshape(-1)]).astype(np.float64)


def _check_row_weights(name: str, weights: np.ndarray | None, n: int) -> np.ndarray | None:
    """One finite, non-negative weight per training row with a positive sum, as float32."""
    if weights is None:
        return None
    weights = np.asarray(weights, dtype=np.float32)
    if weights.shape != (n,) or not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ConfigError(f"{name} must be {n} finite, non-negative numbers (one per training row) "
                          f"with a positive sum; got shape {weights.shape}",
                          "pass one weight per row of the train split, in its order")
    return weights


def train_classifier(dataset: FaceDataset, target: str, config: TrainConfig = TrainConfig(), *,
                     sample_weights: np.ndarray | None = None, sampler_weights: np.ndarray | None = None,
                     progress: Progress | None = None) -> tuple[FaceClassifier, dict]:
    """Train on the ``train`` split, keep the epoch with the best ``val`` accuracy.

    Returns the model (in eval mode, on the training device) and a history with per-epoch
    loss and validation accuracy. ``sample_weights`` (one per training row) weight each row's loss,
    so baselines such as AIF360 Reweighing reuse this loop. ``sampler_weights`` (one per training
    row, relative) replace shuffling by drawing ``len(train)`` rows per epoch with replacement, row i
    with probability ∝ ``sampler_weights[i]``; :func:`group_balanced_weights` gives group-balanced
    resampling.
    """
    config.validate()
    dataset.require_attribute(target, "target")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    train, val = dataset.split("train"), dataset.split("val")
    sample_weights = _check_row_weights("sample_weights", sample_weights, len(train))
    sampler_weights = _check_row_weights("sampler_weights", sampler_weights, len(train))
    model = build_model(config.arch, pretrained=config.pretrained).to(device)

    generator = torch.Generator().manual_seed(config.seed)
    sampler = None if sampler_weights is None else WeightedRandomSampler(
        sampler_weights.astype(np.float64), num_samples=len(train), replacement=True, generator=generator)
    images = LabeledImages(train.images(config.image_size), train.labels(target), sample_weights,
                           flip=config.augment == "flip", transform=augmentation(config.augment, config.image_size))
    loader = DataLoader(
        images, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler,
        num_workers=loader_workers(device, config.num_workers),
        generator=generator, pin_memory=device.type == "cuda", drop_last=len(train) > config.batch_size,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.epochs * len(loader))
    val_labels = val.labels(target)
    history: dict = {"epochs": [], "config": asdict(config), "device": str(device)}
    best_acc, best_state = -1.0, None
    start = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        train_loss = train_epoch(model, loader, opt, sched, device, stage=f"epoch {epoch + 1}/{config.epochs}",
                                 progress=progress)
        probs = predict_proba(model, val.images(config.image_size), batch_size=256, device=device)
        acc = float(((probs >= 0.5) == val_labels).mean())
        history["epochs"].append({"epoch": epoch + 1, "train_loss": train_loss, "val_accuracy": acc})
        if acc > best_acc:
            best_acc, best_state = acc, {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    history.update(best_val_accuracy=best_acc, seconds=time.perf_counter() - start)
    return model.eval(), history


def train_epoch(model: nn.Module, loader: DataLoader, opt: torch.optim.Optimizer,
                sched: torch.optim.lr_scheduler.LRScheduler | None, device: torch.device, *, stage: str = "train",
                progress: Progress | None = None, objective: GroupDRO | None = None,
                average: torch.optim.swa_utils.AveragedModel | None = None) -> float:
    """One pass over ``loader`` (batches of image, label, weight, group) with the weighted BCE
    loss, or ``objective`` over the per-image losses and groups; the mean objective per image.
    ``average`` is updated after every step. The caller puts the model in train mode (or partly in
    eval mode)."""
    loss_fn = nn.BCEWithLogitsLoss(reduction="none")
    total, count = 0.0, 0
    for step, (x, y, w, g) in enumerate(loader):
        x, y, w = x.to(device, non_blocking=True), y.to(device), w.to(device)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            losses = loss_fn(model(x).float(), y)
        if objective is not None:
            loss = objective(losses, g.to(device))
        else:
            # clamp: a batch whose weights are all 0 contributes nothing instead of a NaN loss
            loss = (losses * w).sum() / w.sum().clamp_min(1e-12)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        if average is not None:
            average.update_parameters(model)
        total, count = total + loss.item() * len(y), count + len(y)
        if progress:
            progress(stage, step + 1, len(loader))
    return total / max(count, 1)


@torch.no_grad()
def predict_proba(model: nn.Module, images: Dataset, *, batch_size: int = 256, device: str | torch.device | None = None,
                  num_workers: int = 0, progress: Progress | None = None) -> np.ndarray:
    """P(target = 1) for every image, in order. Works for any module mapping images to logits."""
    if device is None:  # where the model's weights are; a module without parameters runs on the CPU
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loader = DataLoader(images, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    out = []
    for step, batch in enumerate(loader):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            logits = model(x.to(device, non_blocking=True))
        out.append(positive_probability(logits.float(), len(x)).cpu().numpy())
        if progress:
            progress("predict", step + 1, len(loader))
    model.train(was_training)
    return np.concatenate(out) if out else np.empty(0, np.float32)


def positive_probability(logits: torch.Tensor, n: int) -> torch.Tensor:
    """P(class 1) from one logit per image ((N,) or (N, 1): sigmoid) or two-class logits ((N, 2): softmax)."""
    if logits.shape in ((n,), (n, 1)):
        return torch.sigmoid(logits.reshape(n))
    if logits.shape == (n, 2):
        return torch.softmax(logits, dim=1)[:, 1]
    raise ConfigError(f"the model returned logits of shape {tuple(logits.shape)} for a batch of {n} images",
                      "return one logit per image, shape (N,) or (N, 1), or two-class logits of shape (N, 2)")
