"""Verification of generated images: seed 003's quality metrics, measured without trusting the generator.

A generator's manifest says what each image is *meant* to show; these functions check it.

- :class:`AttributeOracle` — a multi-label smallcnn over the 17 SynthFaces attributes, trained on an
  unbiased pool of renders. It reads what an image shows (:meth:`~AttributeOracle.predict`) and
  gives the feature space (:meth:`~AttributeOracle.features`) of the distribution metrics below.
- :func:`score_intent` — does each image show the attributes its prompt asked for (and not those it
  ruled out)?
- :func:`frechet_distance`, :func:`kernel_inception_distance` — realism as a distance between the
  feature distributions of real and generated images (FID / KID formulas, oracle features instead
  of Inception's: no download, and a feature space made for faces).
- :func:`real_vs_generated_accuracy` — realism as a two-sample test: how well a tiny CNN tells the
  two sets apart (0.5 = it cannot).
- :func:`edit_distance` — minimality (seed 003's counterfactual latent divergence, CLD): how far an
  edit moved its source in feature space, relative to the distance between two different faces.
- :func:`clip_scores`, :func:`clip_directional_similarity` — seed 003's CLIP metrics, for a CLIP
  model the user has on disk.

Images everywhere are a float tensor (N×3×H×W) in [0, 1] or a list of PIL images, as for every
model in fairloop; both are brought to 64×64 for the CNNs.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from fairloop.data.synthfaces import ATTRIBUTES, IMAGE_SIZE, render_pool
from fairloop.errors import ConfigError, DataError
from fairloop.vision.models import FaceClassifier, checkpoint_paths, resolve_device, save_checkpoint, small_cnn
from fairloop.vision.train import Progress

#: Where the shipped oracle lives (``oracle.safetensors`` + ``oracle.json``).
PACKAGED_ORACLE = Path(__file__).resolve().parents[1] / "assets" / "attribute-oracle"
ORACLE_ARCH = "smallcnn"
ORACLE_WIDTH = 32  # channels of the first conv block: 128 features, ~0.24 M parameters
_STEM = "oracle"

Images = torch.Tensor | Sequence[Any]  # N×3×H×W floats in [0, 1], or PIL images


# ------------------------------------------------------------------------------------------ images


def as_image_tensor(images: Images, size: int = IMAGE_SIZE) -> torch.Tensor:
    """Images as a CPU float tensor N×3×size×size in [0, 1]; non-square images are centre-cropped
    to a square first, as the dataset loaders do."""
    from PIL import Image

    if isinstance(images, torch.Tensor):
        x = _checked_batch(images)
        h, w = x.shape[-2:]
        side = min(h, w)
        x = x[..., (h - side) // 2:(h - side) // 2 + side, (w - side) // 2:(w - side) // 2 + side]
        if side != size:
            x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return x
    arrays = []
    for img in images:
        img = img.convert("RGB")
        w, h = img.size
        if w != h:
            side = min(w, h)
            img = img.crop(((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side))
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        arrays.append(np.asarray(img, dtype=np.uint8))
    if not arrays:
        return torch.empty(0, 3, size, size)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)


def _checked_batch(images: torch.Tensor) -> torch.Tensor:
    x = images.detach().to("cpu", torch.float32)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ConfigError(f"images of shape {tuple(x.shape)} are not a batch of RGB images",
                          "pass a float tensor N×3×H×W in [0, 1], or a list of PIL images")
    return x


def _as_pil(images: Images) -> list[Any]:
    """Images as RGB PIL images at their own size (CLIP's processor resizes them itself)."""
    from PIL import Image

    if not isinstance(images, torch.Tensor):
        return [img.convert("RGB") for img in images]
    arrays = (_checked_batch(images).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arrays]


# ------------------------------------------------------------------------------------------ oracle


def attribute_net(n_outputs: int, width: int = ORACLE_WIDTH) -> FaceClassifier:
    """fairloop's smallcnn (normalisation inside) with one logit per attribute instead of one."""
    model = FaceClassifier(small_cnn(width))
    model.backbone[-1] = nn.Linear(model.backbone[-1].in_features, n_outputs)
    return model


class AttributeOracle:
    """Reads the SynthFaces attributes off an image: a multi-label classifier, one logit each.

    ``attributes`` names the columns of :meth:`predict`; ``scores`` / ``balanced_scores`` are the
    per-attribute accuracy / balanced accuracy on renders held out from training (balanced accuracy
    matters for rare attributes: a hat detector that never says "hat" is 92 % accurate).
    """

    def __init__(self, net: FaceClassifier, meta: dict[str, Any]) -> None:
        self.net = net.eval()
        self.meta = meta
        self.attributes: tuple[str, ...] = tuple(meta["attributes"])
        self.image_size: int = int(meta["image_size"])

    @property
    def scores(self) -> dict[str, float]:
        return self.meta.get("scores", {})

    @property
    def balanced_scores(self) -> dict[str, float | None]:
        return self.meta.get("balanced_scores", {})

    def _batches(self, images: Images, batch_size: int) -> Iterator[torch.Tensor]:
        x = as_image_tensor(images, self.image_size)
        device = next(self.net.parameters()).device
        for start in range(0, len(x), batch_size):
            yield x[start:start + batch_size].to(device)

    @torch.inference_mode()
    def predict(self, images: Images, batch_size: int = 256) -> np.ndarray:
        """P(attribute present) as if present and absent were equally common (see :func:`train_oracle`),
        shape (N, len(attributes)), columns in ``attributes`` order."""
        out = [torch.sigmoid(self.net(x).float()).cpu().numpy() for x in self._batches(images, batch_size)]
        return np.concatenate(out) if out else np.empty((0, len(self.attributes)), np.float32)

    @torch.inference_mode()
    def features(self, images: Images, batch_size: int = 256) -> np.ndarray:
        """Penultimate activations (N, d): the pooled conv features the attribute head reads; the
        feature space of FID, KID and :func:`edit_distance`."""
        trunk = self.net.backbone[:-2]  # without dropout and the linear head
        out = [trunk((x - self.net.mean) / self.net.std).float().cpu().numpy() for x in self._batches(images, batch_size)]
        return np.concatenate(out) if out else np.empty((0, self.net.backbone[-1].in_features), np.float32)

    def save(self, folder: str | Path) -> Path:
        """Write ``oracle.safetensors`` and ``oracle.json`` into ``folder`` atomically; return the folder."""
        folder = Path(folder)
        save_checkpoint(self.net, folder / _STEM, self.meta)  # a loaded oracle keeps the version that trained it
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> AttributeOracle:
        from safetensors.torch import load_file

        weights, sidecar = checkpoint_paths(Path(folder) / _STEM)
        if not weights.is_file() or not sidecar.is_file():
            raise DataError(f"no attribute oracle in {folder} (need {weights.name} and {sidecar.name})",
                            "train one with 'fairloop generator train-oracle', or check the path")
        try:
            meta = json.loads(sidecar.read_text())
            if meta.get("arch") != ORACLE_ARCH:
                raise ValueError(f"{sidecar.name} names architecture {meta.get('arch')!r}, not {ORACLE_ARCH!r}")
            net = attribute_net(len(meta["attributes"]), int(meta["width"]))
            net.load_state_dict(load_file(str(weights)))
        except Exception as exc:  # noqa: BLE001 — bad JSON, missing keys, SafetensorError, size mismatches
            raise DataError(f"attribute oracle {weights} is damaged or does not match its sidecar ({exc})",
                            "retrain it with 'fairloop generator train-oracle'") from None
        return cls(net.to(resolve_device(device)), meta)

    @classmethod
    def packaged(cls, device: str = "cpu") -> AttributeOracle:
        """The oracle shipped in ``fairloop/assets/attribute-oracle``."""
        if not (PACKAGED_ORACLE / f"{_STEM}.safetensors").is_file():
            raise ConfigError(f"the packaged attribute oracle is missing ({PACKAGED_ORACLE})",
                              "run 'fairloop generator train-oracle' to train it into that folder")
        return cls.load(PACKAGED_ORACLE, device)


def train_oracle(n: int = 20000, epochs: int = 12, seed: int = 0, *, test_fraction: float = 0.1,
                 width: int = ORACLE_WIDTH, batch_size: int = 128, lr: float = 3e-3, device: str = "auto",
                 progress: Progress | None = None) -> AttributeOracle:
    """Render ``n`` faces in memory, train on all but ``test_fraction`` of them, score the rest.

    Positives are weighted by negatives/positives per attribute, so 0.5 is the decision threshold
    for equal priors: generated sets have their own base rates (a prompt asks for a hat), and the
    oracle must not say "no hat" because hats are rare in the pool. The returned oracle's
    ``scores`` are measured on the held-out renders.
    """
    n_test = round(n * test_fraction)
    if n_test < 1 or n - n_test < 2 or epochs < 1:
        raise ConfigError(f"n={n}, test_fraction={test_fraction}, epochs={epochs} leave no usable train/test split",
                          "use n of a few thousand or more, 0 < test_fraction < 1 and epochs ≥ 1")
    start = time.perf_counter()
    images, table = render_pool(n, seed, progress and (lambda done, total: progress("render", done, total)))
    labels = np.array(table, dtype=np.int8)  # a writable copy: torch shares its memory
    order = np.random.default_rng(seed + 1).permutation(n)
    test, train = torch.from_numpy(order[:n_test]), torch.from_numpy(order[n_test:])
    x = torch.from_numpy(images).permute(0, 3, 1, 2)  # uint8: a quarter of the memory of floats
    net = fit_attribute_net(x, labels, train, epochs=epochs, seed=seed, width=width, batch_size=batch_size, lr=lr,
                            device=device, progress=progress)
    meta = {"attributes": list(ATTRIBUTES), "arch": ORACLE_ARCH, "width": width, "image_size": IMAGE_SIZE,
            "seed": seed, "n": n, "epochs": epochs, "test_fraction": test_fraction, "n_test": n_test,
            "batch_size": batch_size, "lr": lr, "loss": "BCE, positives weighted by negatives/positives",
            "data": "SynthFaces: sample_attributes (no scenario), random identities, render_face"}
    oracle = AttributeOracle(net, meta)
    predicted = oracle.predict(x[test].float().div_(255.0)) >= 0.5
    truth = labels[test.numpy()] == 1
    meta["scores"] = {a: float((predicted[:, j] == truth[:, j]).mean()) for j, a in enumerate(ATTRIBUTES)}
    meta["balanced_scores"] = {a: _balanced_accuracy(truth[:, j], predicted[:, j]) for j, a in enumerate(ATTRIBUTES)}
    meta["seconds"] = round(time.perf_counter() - start, 1)
    return oracle


def fit_attribute_net(images: torch.Tensor, labels: np.ndarray, train: torch.Tensor, *, epochs: int, seed: int,
                      width: int = ORACLE_WIDTH, batch_size: int = 128, lr: float = 3e-3, device: str = "auto",
                      progress: Progress | None = None) -> FaceClassifier:
    """Train the oracle's network on ``images[train]`` (uint8, N×3×H×W) and ``labels`` (N × attributes).

    Horizontal flips are the only augmentation (every attribute survives them); positives are
    weighted by :func:`positive_weights` (see :func:`train_oracle` for why). Shared with the
    embedded generator's attribute critic: the same network, trained on the generator's own pool.
    """
    y = torch.from_numpy(np.asarray(labels, dtype=np.float32))
    dev = resolve_device(device)
    torch.manual_seed(seed)
    net = attribute_net(y.shape[1], width).to(dev)
    steps = (len(train) + batch_size - 1) // batch_size
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=positive_weights(y[train]).to(dev))
    for epoch in range(epochs):
        net.train()
        perm = train[torch.randperm(len(train), generator=gen)]
        for step in range(steps):
            idx = perm[step * batch_size:(step + 1) * batch_size]
            xb = images[idx].float().div_(255.0)
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb[flip] = xb[flip].flip(-1)
            loss = loss_fn(net(xb.to(dev)), y[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if progress:
                progress(f"epoch {epoch + 1}/{epochs}", step + 1, steps)
    return net.eval()


def positive_weights(labels: torch.Tensor) -> torch.Tensor:
    """negatives / positives per attribute column: BCE then treats present and absent as equally common."""
    positives = labels.sum(0)
    return (len(labels) - positives) / positives.clamp_min(1)


def _balanced_accuracy(truth: np.ndarray, predicted: np.ndarray) -> float | None:
    """Mean of the true-positive and true-negative rates; None when one class is absent."""
    if truth.all() or not truth.any():
        return None
    return float((predicted[truth].mean() + (~predicted[~truth]).mean()) / 2)


# ------------------------------------------------------------------------------------------ intent


@dataclass
class IntentScore:
    """How well images show what their prompts determined (attributes a prompt leaves open are not scored).

    ``requested_present``: of the (image, attribute) pairs meant to be 1, the fraction the oracle sees;
    ``unrequested_absent``: of those meant to be 0, the fraction it does not see. A rate is None when
    nothing was asked of that kind. An image passes when every attribute its prompt determines
    matches; an image whose prompt determines nothing passes vacuously.
    """

    n: int
    pass_mask: np.ndarray
    all_correct_rate: float | None
    requested_present: float | None
    unrequested_absent: float | None
    per_attribute: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "all_correct_rate": self.all_correct_rate, "requested_present": self.requested_present,
                "unrequested_absent": self.unrequested_absent, "per_attribute": dict(self.per_attribute),
                "counts": dict(self.counts), "pass_mask": [bool(v) for v in self.pass_mask]}


def score_intent(probs: np.ndarray, intended: Sequence[Mapping[str, int]], attributes: Sequence[str],
                 threshold: float = 0.5) -> IntentScore:
    """Compare the oracle's thresholded predictions (``probs``, columns named by ``attributes``)
    with what each image was meant to show (``intended[i]``: attribute → 0/1)."""
    probs = np.asarray(probs, dtype=float)
    column = {a: j for j, a in enumerate(attributes)}
    if probs.shape != (len(intended), len(column)):
        raise ConfigError(f"probabilities of shape {probs.shape} do not fit {len(intended)} intents "
                          f"over {len(column)} attributes",
                          "pass one row per image and one column per attribute, in the order of `attributes`")
    seen = probs >= threshold
    hits: dict[tuple[str, int], list[bool]] = {}
    passed = np.ones(len(intended), dtype=bool)
    for i, wanted in enumerate(intended):
        for name, value in wanted.items():
            if name not in column or value not in (0, 1):
                raise ConfigError(f"image {i} asks for {name}={value!r}", "intents map oracle attributes to 0 or 1")
            ok = bool(seen[i, column[name]]) == bool(value)
            hits.setdefault((name, int(value)), []).append(ok)
            passed[i] &= ok
    present = [ok for (_, v), oks in hits.items() if v == 1 for ok in oks]
    absent = [ok for (_, v), oks in hits.items() if v == 0 for ok in oks]
    per_attribute = {a: float(np.mean(hits.get((a, 0), []) + hits.get((a, 1), [])))
                     for a in attributes if (a, 0) in hits or (a, 1) in hits}
    return IntentScore(
        n=len(intended), pass_mask=passed, all_correct_rate=float(passed.mean()) if len(passed) else None,
        requested_present=float(np.mean(present)) if present else None,
        unrequested_absent=float(np.mean(absent)) if absent else None,
        per_attribute=per_attribute, counts={"requested": len(present), "ruled_out": len(absent)},
    )


# ---------------------------------------------------------------------------------- distributions


def _pair_of_features(a: np.ndarray, b: np.ndarray, minimum: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < minimum:
        raise ConfigError(f"feature sets of shapes {a.shape} and {b.shape} cannot be compared",
                          f"pass two arrays (n, d) with the same d and at least {minimum} rows each")
    return a, b


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """FID's formula on any features: ‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½).

    With fewer samples than dimensions the covariances are singular; as in pytorch-fid, a tiny
    diagonal offset is added when the matrix square root fails, and its imaginary part (numerical
    noise) is dropped. Tiny negative results of rounding become 0. Biased upwards on small
    samples: compare values computed with the same sample sizes.
    """
    from scipy import linalg

    a, b = _pair_of_features(feats_a, feats_b, 2)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = linalg.sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(cov_a)) * 1e-6
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    fid = float((mu_a - mu_b) @ (mu_a - mu_b) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean.real))
    return max(fid, 0.0)


def kernel_inception_distance(feats_a: np.ndarray, feats_b: np.ndarray, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID's formula on any features: the unbiased MMD² with the kernel (x·y / d + 1)³, its mean
    and standard deviation over ``subsets`` random subsets of ``subset_size`` rows of each set
    (capped at the smaller set). Unbiased, so it can be slightly negative when the sets match.
    """
    a, b = _pair_of_features(feats_a, feats_b, 2)
    m = min(subset_size, len(a), len(b))
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        k_xx, k_yy, k_xy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        values.append(within - 2 * k_xy.mean())
    return float(np.mean(values)), float(np.std(values))


def real_vs_generated_accuracy(real_images: Images, generated_images: Images, seed: int = 0, epochs: int = 20,
                               width: int = 8, batch_size: int = 32, lr: float = 3e-3) -> float:
    """Held-out accuracy of a tiny CNN trained to tell real from generated images (0.5: it cannot).

    Both sets are cut to the same size (random rows, seeded), each split in halves: the first halves
    train, the second halves test, so the classes are balanced in both. Trains on the CPU in seconds
    for a few hundred images; the result is deterministic for a given seed.
    """
    real, fake = as_image_tensor(real_images), as_image_tensor(generated_images)
    m = min(len(real), len(fake))
    if m < 4:
        raise ConfigError(f"{len(real)} real and {len(fake)} generated images are too few to train and test on",
                          "pass at least 4 of each (a few hundred give a usable estimate)")
    rng = np.random.default_rng(seed)
    real = real[torch.from_numpy(rng.permutation(len(real))[:m])]
    fake = fake[torch.from_numpy(rng.permutation(len(fake))[:m])]
    half = m // 2
    x_train, x_test = torch.cat([real[:half], fake[:half]]), torch.cat([real[half:], fake[half:]])
    y_train = torch.cat([torch.zeros(half), torch.ones(half)])
    y_test = torch.cat([torch.zeros(m - half), torch.ones(m - half)])
    torch.manual_seed(seed)
    net = FaceClassifier(small_cnn(width))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.BCEWithLogitsLoss()
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x_train), generator=gen)
        for start in range(0, len(perm), batch_size):
            idx = perm[start:start + batch_size]
            loss = loss_fn(net(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    with torch.inference_mode():
        logits = torch.cat([net(x_test[s:s + 256]) for s in range(0, len(x_test), 256)])
    return float(((logits > 0).float() == y_test).float().mean())


# ------------------------------------------------------------------------------------------ minimality


def edit_distance(source_feats: np.ndarray, edited_feats: np.ndarray, *, normalize: bool = True,
                  metric: Literal["l2", "cosine"] = "l2", max_reference: int = 2000, seed: int = 0) -> float:
    """Minimality of edits: seed 003's counterfactual latent divergence (CLD) on oracle features.

    Row i of ``edited_feats`` is an edit of row i of ``source_feats``. The raw value is the mean,
    over pairs, of the distance between source and edit: Euclidean (``"l2"``) or 1 − cosine
    similarity (``"cosine"``), seed 003's two variants. With ``normalize`` it is divided by the
    mean distance between two *different* source faces (all pairs of up to ``max_reference``
    sources, a seeded subset beyond that), so 0 means the edits changed nothing the oracle sees
    and 1 means an edit lands as far from its source as a random other face. Needs ≥ 2 distinct
    sources when normalising.
    """
    src, edit = _pair_of_features(source_feats, edited_feats, 2 if normalize else 1)
    if src.shape != edit.shape:
        raise ConfigError(f"{len(src)} source and {len(edit)} edited feature rows do not pair up",
                          "pass one edited row per source row, in the same order")
    value = float(_distance(src, edit, metric).mean())
    if not normalize:
        return value
    ref = src if len(src) <= max_reference else src[np.random.default_rng(seed).choice(len(src), max_reference, replace=False)]
    i, j = np.triu_indices(len(ref), k=1)
    scale = float(_distance(ref[i], ref[j], metric).mean())
    if scale <= 0:
        raise ConfigError("all source images have the same features, so there is no scale to normalise by",
                          "pass sources of different faces, or normalize=False")
    return value / scale


def _distance(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    if metric == "l2":
        return np.linalg.norm(a - b, axis=1)
    if metric == "cosine":
        return 1.0 - (_unit(a) * _unit(b)).sum(axis=1)
    raise ConfigError(f"unknown distance {metric!r}", "use 'l2' or 'cosine'")


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1; a zero row stays zero (its cosine with anything is 0)."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# ------------------------------------------------------------------------------------------ CLIP


@functools.lru_cache(maxsize=1)
def _load_clip(path: str) -> tuple[Any, Any]:
    """CLIPModel and CLIPProcessor from a local folder (no download); the last one stays loaded."""
    from transformers import CLIPModel, CLIPProcessor

    fix = ("pass a folder written by CLIPModel.save_pretrained and CLIPProcessor.save_pretrained "
           "(config, weights, tokenizer and preprocessor files), e.g. a downloaded openai/clip-vit-base-patch32")
    if not Path(path).is_dir():
        raise ConfigError(f"CLIP model folder {path} does not exist", fix)
    try:
        model = CLIPModel.from_pretrained(path, local_files_only=True).eval()
        processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 — missing files, wrong model type, unreadable weights
        raise ConfigError(f"cannot load a CLIP model from {path} ({exc.__class__.__name__}: {exc})", fix) from None
    return model, processor


def clip_embeddings(images: Images, prompts: Sequence[str], clip_model_path: str | Path,
                    batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Unit-length CLIP embeddings of the images and of the prompts, one row each."""
    pil = _as_pil(images)
    if len(pil) != len(prompts):
        raise ConfigError(f"{len(pil)} images and {len(prompts)} prompts do not pair up", "pass one prompt per image")
    model, processor = _load_clip(str(Path(clip_model_path).expanduser().resolve()))
    image_out, text_out = [], []
    with torch.inference_mode():
        for s in range(0, len(pil), batch_size):
            inputs = processor(text=list(prompts[s:s + batch_size]), images=pil[s:s + batch_size], return_tensors="pt",
                               padding=True, truncation=True)
            out = model(**inputs)
            image_out.append(out.image_embeds.float().numpy())
            text_out.append(out.text_embeds.float().numpy())
    dim = model.config.projection_dim
    images_e = np.concatenate(image_out) if image_out else np.empty((0, dim), np.float32)
    texts_e = np.concatenate(text_out) if text_out else np.empty((0, dim), np.float32)
    return _unit(images_e), _unit(texts_e)


def clip_score_from_embeddings(image_embeds: np.ndarray, text_embeds: np.ndarray) -> np.ndarray:
    """CLIP score per pair: 100 · cos(image, text), clipped at 0 (Hessel et al.; torchmetrics)."""
    return np.maximum(100.0 * (_unit(image_embeds) * _unit(text_embeds)).sum(axis=1), 0.0)


def directional_similarity_from_embeddings(src_image: np.ndarray, edit_image: np.ndarray, src_text: np.ndarray,
                                           edit_text: np.ndarray) -> np.ndarray:
    """cos(ΔI, ΔT) per pair, Δ = edit − source of unit embeddings (seed 003's CLIP_dir, in [−1, 1];
    0 when the image or the prompt did not change)."""
    d_image = _unit(edit_image) - _unit(src_image)
    d_text = _unit(edit_text) - _unit(src_text)
    return (_unit(d_image) * _unit(d_text)).sum(axis=1)


def clip_scores(images: Images, prompts: Sequence[str], clip_model_path: str | Path) -> np.ndarray:
    """How well each image matches its prompt, per seed 003: shape (N,), in [0, 100]."""
    return clip_score_from_embeddings(*clip_embeddings(images, prompts, clip_model_path))


def clip_directional_similarity(src_images: Images, edit_images: Images, src_prompts: Sequence[str],
                                edit_prompts: Sequence[str], clip_model_path: str | Path) -> np.ndarray:
    """Does each edit move the image the way the prompt edit moves the text? Shape (N,), in [−1, 1]."""
    src_i, src_t = clip_embeddings(src_images, src_prompts, clip_model_path)
    edit_i, edit_t = clip_embeddings(edit_images, edit_prompts, clip_model_path)
    if len(src_i) != len(edit_i):
        raise ConfigError(f"{len(src_i)} source and {len(edit_i)} edited images do not pair up",
                          "pass one edited image (and prompt) per source image")
    return directional_similarity_from_embeddings(src_i, edit_i, src_t, edit_t)


# ------------------------------------------------------------------------------------ the loop's filter

#: A generated image may miss this many of the attributes it was meant to keep and still be used.
MAX_KEPT_ERRORS = 1


def verify_generated(oracle: AttributeOracle, rows: Sequence[Mapping[str, Any]], target: str,
                     resolve: Callable[[str], Path] = Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Which generated images (manifest rows) show what they were asked for, by the oracle.

    An image passes when the oracle sees every attribute its prompt names, the class (``target``)
    included, and misses at most :data:`MAX_KEPT_ERRORS` of the other attributes in its
    ``intended`` (for an edit: the source's attributes it should keep). Returns the pass mask and
    a summary for the manifest and the report.
    """
    from PIL import Image

    from fairloop.tools.prompt_parser import parse_prompt

    if not rows:
        return np.zeros(0, dtype=bool), {"checked": 0, "passed": 0, "pass_rate": None}
    known = set(oracle.attributes)
    named, kept = [], []
    for row in rows:
        intended = {a: int(v) for a, v in row["intended"].items() if a in known}
        names = (set(parse_prompt(row["prompt"], oracle.attributes).edits) | {target}) & set(intended)
        named.append({a: intended[a] for a in names})
        kept.append({a: v for a, v in intended.items() if a not in names})
    images = []
    for row in rows:
        with Image.open(resolve(row["path"])) as img:
            images.append(img.convert("RGB"))
    probs = oracle.predict(images)
    seen = probs >= 0.5
    column = {a: j for j, a in enumerate(oracle.attributes)}

    def misses(wanted: Mapping[str, int], i: int) -> list[str]:
        return [a for a, v in wanted.items() if bool(seen[i, column[a]]) != bool(v)]

    named_misses = [misses(w, i) for i, w in enumerate(named)]
    kept_misses = [misses(w, i) for i, w in enumerate(kept)]
    passed = np.array([not n and len(k) <= MAX_KEPT_ERRORS for n, k in zip(named_misses, kept_misses)])
    failed_on: dict[str, int] = {}
    for n in named_misses:
        for a in n:
            failed_on[a] = failed_on.get(a, 0) + 1
    n_named, n_kept = sum(map(len, named)), sum(map(len, kept))
    summary = {
        "checked": len(rows), "passed": int(passed.sum()), "pass_rate": round(float(passed.mean()), 4),
        "named_shown": round(1 - sum(map(len, named_misses)) / n_named, 4) if n_named else None,
        "others_kept": round(1 - sum(map(len, kept_misses)) / n_kept, 4) if n_kept else None,
        "named_missed": dict(sorted(failed_on.items(), key=lambda kv: -kv[1])),
        "rule": f"every named attribute shown (class included), at most {MAX_KEPT_ERRORS} other attribute changed",
    }
    return passed, summary
