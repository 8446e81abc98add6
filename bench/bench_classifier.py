"""How fast the classifiers run on this machine: images/s at inference (the loop's validation scans,
LIME, the attribute oracle) and in training (baseline, fine-tuning), with channels-last weights
(what :class:`~fairloop.vision.models.FaceClassifier` uses) against the plain layout, and the
largest difference between the two layouts' outputs.

Usage: python bench/bench_classifier.py [--arch smallcnn] [--batch 256] [--repeats 8]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from fairloop.vision.models import build_model


def images_per_second(step, n_images: int, repeats: int) -> float:
    step()  # warm-up: allocator, kernels
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return n_images * repeats / (time.perf_counter() - start)


def measure(model: torch.nn.Module, images: torch.Tensor, repeats: int) -> tuple[float, float, torch.Tensor]:
    model.eval()
    with torch.inference_mode():
        outputs = model(images)
        inference = images_per_second(lambda: model(images), len(images), repeats)
    model.train()
    batch, labels = images[:64], torch.rand(64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def train_step() -> None:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return inference, images_per_second(train_step, len(batch), repeats * 4), outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="smallcnn")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    channels_last = build_model(args.arch)
    plain = copy.deepcopy(channels_last)
    for p in plain.parameters():  # the same weights, laid out as before
        p.data = p.data.contiguous()
    images = torch.rand(args.batch, 3, 64, 64)
    print(f"{args.arch}, {torch.get_num_threads()} torch threads, batch {args.batch}")
    results = {name: measure(model, images, args.repeats) for name, model in
               (("plain (NCHW)", plain), ("channels-last", channels_last))}
    for name, (inference, training, _) in results.items():
        print(f"{name:<14} inference {inference:8.0f} images/s   training {training:7.0f} images/s")
    (i0, t0, y0), (i1, t1, y1) = results.values()
    print(f"channels-last: {i1 / i0:.2f}× inference, {t1 / t0:.2f}× training; "
          f"largest output difference {(y0 - y1).abs().max().item():.1e}")


if __name__ == "__main__":
    main()
