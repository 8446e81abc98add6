"""Audit speed and memory: what an ML engineer pays to audit a CelebA-sized dataset.

Usage: python bench/bench_audit.py [--images 200000] [--split test] [--workdir DIR] [--skip-rss]

Prints three tables:
1. audit wall time (fairness metrics with 200 bootstrap resamples + LIME explanation of 200 rows)
   on 10k- and 200k-row SynthFaces attribute tables with a shortcut-driven classifier score;
2. peak RSS of ``fairloop audit`` (a separate process) over a CelebA-format folder of ``--images``
   images: 2,000 distinct renders hard-linked under 200k names, so the folder is built in seconds
   while the loader, the table and the image stream see a full-size dataset;
3. LIME explanations/s with fairloop's settings against lime's stock ones (bench_explain.py).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def table_timings(rows_list: list[int]) -> None:
    from fairloop.data.synthfaces import Scenario, scenario_table
    from fairloop.tools.explain import explain_attributes
    from fairloop.tools.metrics import fairness_report

    print(f"{'rows':>8} {'metrics+CI s':>13} {'explain s':>10} {'total s':>8}  top attributes")
    for rows in rows_list:
        table = scenario_table(rows, Scenario(), seed=0)
        test = table  # every row is audited, whatever its split
        rng = np.random.default_rng(0)
        # a classifier that leans on gray hair and only a little on the true target
        logit = 2.5 * test["Gray_Hair"] + 1.0 * test["Male"] - 1.8 + rng.normal(0, 0.6, len(test))
        scores = 1 / (1 + np.exp(-logit.to_numpy()))
        t0 = time.perf_counter()
        fairness_report(y_true=test["Male"], y_pred=(scores >= 0.5).astype(int), protected=test["Gray_Hair"],
                        target_name="Male", protected_name="Gray_Hair", n_bootstrap=200)
        t1 = time.perf_counter()
        attrs = test.drop(columns=["split", "identity", "Male"])
        exp = explain_attributes(attributes=attrs, scores=scores, protected="Gray_Hair", n_explain=200)
        t2 = time.perf_counter()
        print(f"{len(test):>8} {t1 - t0:>13.2f} {t2 - t1:>10.2f} {t2 - t0:>8.2f}  {exp.to_prompt(top=3)}")


def build_big_folder(root: Path, images: int, distinct: int = 2000) -> Path:
    """A CelebA-layout folder of ``images`` files: ``distinct`` renders, hard-linked."""
    from fairloop.data.synthfaces import ATTRIBUTES, JPEG_SETTINGS, Scenario, render_face, scenario_table

    if (root / "list_eval_partition.txt").exists():
        return root
    img_dir = root / "img_align_celeba"
    img_dir.mkdir(parents=True, exist_ok=True)
    table = scenario_table(images, Scenario(), seed=0, fractions=(0.815, 0.1, 0.085))  # CelebA's proportions
    sources = []
    for i in range(distinct):
        path = img_dir / f"src{i:05d}.jpg"
        render_face(table.iloc[i][list(ATTRIBUTES)].to_dict(), int(table["identity"].iat[i])).save(path, **JPEG_SETTINGS)
        sources.append(path)
    # each row links to a render with the same (Male, Gray_Hair) group, so labels still mean something
    src_groups = table.iloc[:distinct][["Male", "Gray_Hair"]].to_numpy()
    by_group = {g: [s for s, sg in zip(sources, map(tuple, src_groups)) if sg == g] for g in {(0, 0), (0, 1), (1, 0), (1, 1)}}
    for k, (image_id, male, gray) in enumerate(zip(table.index, table["Male"], table["Gray_Hair"])):
        pool = by_group[(male, gray)]
        os.link(pool[k % len(pool)], img_dir / image_id)
    for s in sources:
        s.unlink()
    signs = np.where(table[list(ATTRIBUTES)].to_numpy() == 1, " 1", "-1")
    with open(root / "list_attr_celeba.txt", "w") as f:
        f.write(f"{len(table)}\n{' '.join(ATTRIBUTES)}\n")
        f.writelines(f"{i} {' '.join(r)}\n" for i, r in zip(table.index, signs))
    codes = table["split"].map({"train": 0, "val": 1, "test": 2})
    (root / "list_eval_partition.txt").write_text("".join(f"{i} {c}\n" for i, c in zip(table.index, codes)))
    return root


def audit_rss(root: Path, split: str) -> None:
    from fairloop.vision.models import build_model, save_checkpoint

    ckpt = root.parent / "bench-model"
    save_checkpoint(build_model("smallcnn"), ckpt, {"arch": "smallcnn", "target": "Male", "image_size": 64})
    cmd = [sys.executable, "-m", "fairloop.cli", "audit", "--root", str(root), "--target", "Male",
           "--protected", "Gray_Hair", "--model", str(ckpt), "--split", split, "--out", str(root.parent / "bench-audit")]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    n_rows = sum(1 for _ in open(root / "list_eval_partition.txt"))
    n_split = sum(1 for line in open(root / "list_eval_partition.txt") if line.split()[1] == {"train": "0", "val": "1", "test": "2"}[split])
    decoded_gb = n_split * 64 * 64 * 3 * 4 / 1e9
    print(f"folder rows {n_rows}, audited split {split!r}: {n_split} images streamed in {wall:.0f} s "
          f"({n_split / wall:.0f} images/s end to end)")
    print(f"peak RSS of 'fairloop audit': {peak_mb:.0f} MB "
          f"(the split decoded as float32 at 64x64 would be {decoded_gb:.1f} GB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--split", default="test", help="split audited in the RSS run (train streams 163k images)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fairloop-bench-audit"))
    parser.add_argument("--skip-rss", action="store_true")
    args = parser.parse_args()

    print("== audit wall time on attribute tables (predictions given) ==")
    table_timings([10_000, 200_000])
    if not args.skip_rss:
        print(f"\n== peak memory auditing a {args.images}-image CelebA-format folder ==")
        t0 = time.perf_counter()
        root = build_big_folder(args.workdir / f"celeba-{args.images}", args.images)
        print(f"folder ready in {time.perf_counter() - t0:.0f} s: {root}")
        audit_rss(root, args.split)
    print("\n== LIME explanations/s ==")
    import bench_explain

    sys.argv = [sys.argv[0]]
    bench_explain.main()


if __name__ == "__main__":
    main()
