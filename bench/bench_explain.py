"""Explanations per second: fairloop's LIME settings against lime's stock explain options.

Usage: python bench/bench_explain.py [--rows N] [--explain K] [--seed S]

Every row uses the same synthetic table (15 binary attributes, known scoring function), the same
seeded surrogate and the same explainer; only feature_selection, num_features and num_samples
change. Timings cover the LIME loop only (``explain_seconds``), not the surrogate fit.

lime's "auto" selection runs forward selection (about 2 Ridge fits per candidate feature per step)
when num_features <= 6 and highest_weights otherwise, so the rows separate the two cases.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from fairloop.tools.explain import explain_attributes

N_ATTRIBUTES = 15
# (label, feature_selection, num_features, num_samples); None = every attribute.
CONFIGS = [
    ("fairloop default", "highest_weights", None, 500),
    ("lime auto, all features", "auto", None, 500),
    ("lime auto, 6 features", "auto", 6, 500),
    ("lime stock explain_instance", "auto", 10, 5000),
]


def synthetic_table(rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Binary attributes with main effects, one interaction and noise, squashed to a probability."""
    rng = np.random.default_rng(seed)
    names = [f"attr_{i:02d}" for i in range(N_ATTRIBUTES)]
    x = pd.DataFrame((rng.random((rows, N_ATTRIBUTES)) < 0.35).astype(int), columns=names)
    z = (1.6 * x["attr_00"] - 1.2 * x["attr_01"] + 0.8 * x["attr_02"] * x["attr_03"]
         - 0.5 * x["attr_04"] + 0.3 * rng.normal(size=rows))
    return x, (1 / (1 + np.exp(-z))).to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--explain", type=int, default=100, help="rows explained per setting")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    x, scores = synthetic_table(args.rows, args.seed)
    results = []
    for label, selection, num_features, num_samples in CONFIGS:
        out = explain_attributes(attributes=x, scores=scores, n_explain=args.explain,
                                 num_samples=num_samples, num_features=num_features,
                                 feature_selection=selection, seed=args.seed)
        results.append((label, selection, num_features or N_ATTRIBUTES, num_samples,
                        out.n_explained / out.explain_seconds, out))

    first = results[0][5]
    print(f"{args.rows} rows x {N_ATTRIBUTES} attributes, {first.n_explained} explanations per "
          f"setting; surrogate R² held-out {first.fidelity['surrogate_r2_heldout']:.3f}")
    print(f"top attributes: {first.to_prompt(top=5)}\n")
    header = (f"{'setting':<29} {'selection':<16} {'feat':>4} {'samples':>7} {'expl/s':>8} "
              f"{'ratio':>6}")
    print(header)
    print("-" * len(header))
    base = results[0][4]
    for label, selection, num_features, num_samples, rate, _ in results:
        print(f"{label:<29} {selection:<16} {num_features:>4} {num_samples:>7} "
              f"{rate:>8.1f} {base / rate:>6.1f}")
    print("ratio = fairloop default explanations/s divided by the setting's")


if __name__ == "__main__":
    main()
