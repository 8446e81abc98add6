"""How good are the SCMs fairloop builds from captions (seed 003), and the images they lead to?

Usage: python bench/bench_scm.py --out DIR [--captions 50] [--builders true,local] [--per-caption 20]
       [--generator embedded|render] [--threads 2] [--clip CLIP_FOLDER]

Captions describe SynthFaces people drawn from the true sampler ("a young woman with gray hair,
wearing eyeglasses"); each gets an intervention on an attribute it states (cycling through
Gray_Hair, Young, Male, Eyeglasses, Smiling). For every builder (``true``: SynthFaces' own graph;
``local``: the packaged LLM; ``openai`` with $FAIRLOOP_LLM_MODEL):

1. **Graphs** (``DIR/graphs.jsonl``, one line per caption and builder, resumable): valid rate (every
   check passed), graph-valid rate (names and acyclicity), the share of answers that held a cycle
   before validation and of accepted graphs after it (0 by construction), structural Hamming
   distance to the true graph over the answer's attributes, attempts and seconds.
2. **Images**: for each caption with a usable graph, ``--per-caption`` counterfactuals of that very
   person by abduction–action–prediction (the LLM's graph with tables counted on 20,000 SynthFaces
   people; the true model for ``true``), drawn as edits of the person's render. The attribute
   oracle scores whether the intervention shows and whether every attribute the SCM changed shows;
   CLD (seed 003's minimality, normalised) and KID against as many fresh renders, on oracle
   features — over ≥ 1,000 images, never 5. *Effect error*: for the same person and noise, the mean
   absolute difference between the share of counterfactuals in which each attribute changes under
   this builder's model and under the true one (over attributes either changes; 0 for ``true``). With ``--clip FOLDER`` (a CLIP model the user has), also
   seed 003's CLIP score and CLIP directional similarity.

Prints one table; every figure is also in ``DIR/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

INTERVENTIONS = ("Gray_Hair", "Young", "Male", "Eyeglasses", "Smiling")
EXTRAS = ("Eyeglasses", "Mustache", "Wearing_Hat", "Smiling", "Wearing_Earrings", "Bangs", "Chubby", "Wearing_Lipstick")
TABLE_ROWS = 20_000


def captions(n: int, seed: int) -> list[dict]:
    """People, their captions and interventions."""
    from fairloop.data.synthfaces import HAIR_STATES, sample_attributes
    from fairloop.scm.builder import write_caption

    rng = np.random.default_rng(seed)
    people = sample_attributes(n, rng)
    out = []
    for k, person in enumerate(people.to_dict("records")):
        name = INTERVENTIONS[k % len(INTERVENTIONS)]
        hair = next(s for s in HAIR_STATES if person[s])
        extras = [a for a in EXTRAS if person[a] and a != name][:1]
        order = ["Male", hair, "Young", *extras, name]
        out.append({"k": k, "person": {a: int(v) for a, v in person.items()}, "identity": int(rng.integers(2**31 - 1)),
                    "caption": write_caption(person, order), "intervention": [name, 1 - int(person[name])]})
    return out


def build_graphs(out: Path, items: list[dict], builders: list[str], table) -> list[dict]:
    from fairloop.data.synthfaces import ATTRIBUTES
    from fairloop.scm.builder import build_scm

    path = out / "graphs.jsonl"
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                done[(row["builder"], row["k"])] = row
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut by a crash: built again
    todo = [(b, it) for b in builders for it in items if (b, it["k"]) not in done]
    spent: dict[str, list[float]] = {b: [] for b in builders}  # seconds per caption, by builder: for the ETA
    for n, (builder, item) in enumerate(todo, 1):
        result = build_scm(item["caption"], llm=builder, vocabulary=list(ATTRIBUTES),
                           intervention=tuple(item["intervention"]), table=table, seed=item["k"])
        spent[builder].append(result.seconds)
        row = {"builder": builder, "k": item["k"], **result.as_dict()}
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        done[(builder, item["k"])] = row
        left = sum(float(np.mean(spent[b] or spent[builder])) for b, _ in todo[n:])
        print(f"  graph {n}/{len(todo)} ({builder}): valid={row['valid']} graph_valid={row['graph_valid']} "
              f"shd={row['shd_to_true_graph']} {row['seconds']:.0f} s; about {left / 60:.0f} min left", flush=True)
    return list(done.values())


def counterfactual_images(rows: list[dict], items: list[dict], builder: str, per_caption: int, generator: str,
                          table, oracle, pipe, clip: Path | None = None) -> dict:
    import pandas as pd

    from fairloop.data.synthfaces import ATTRIBUTES, HAIR_STATES, render_face
    from fairloop.diffusion.captions import caption
    from fairloop.scm import CausalGraph, StructuralCausalModel
    from fairloop.tools.quality import edit_distance, kernel_inception_distance

    by_k = {it["k"]: it for it in items}
    usable = [r for r in rows if r["builder"] == builder and r["graph_valid"]]
    sources, targets, identities, changed = [], [], [], []
    effect_errors = []  # per caption: how far this model's effects are from the true model's, for this person
    true_model = StructuralCausalModel.synthfaces()
    for row in usable:
        item = by_k[row["k"]]
        if builder == "true":
            model = StructuralCausalModel.synthfaces()
        else:
            edges = [e for e in row["edges"] if e[0] in ATTRIBUTES and e[1] in ATTRIBUTES]
            model = StructuralCausalModel.fit(table, CausalGraph.of(ATTRIBUTES, edges), groups=(HAIR_STATES,))
        people = pd.DataFrame([item["person"]] * per_caption)
        do = {item["intervention"][0]: item["intervention"][1]}
        cf = model.counterfactual(people, do, np.random.default_rng(row["k"]))
        truth = true_model.counterfactual(people, do, np.random.default_rng(row["k"]))
        mine, true_rates = cf.changed.mean(), truth.changed.mean()
        moved = [a for a in ATTRIBUTES if a not in do and (mine[a] > 0 or true_rates[a] > 0)]
        effect_errors.append(float(np.mean([abs(mine[a] - true_rates[a]) for a in moved])) if moved else 0.0)
        for j in range(per_caption):
            sources.append(item["person"])
            targets.append({a: int(cf.rows.at[j, a]) for a in ATTRIBUTES})
            identities.append(item["identity"])
            changed.append([a for a in ATTRIBUTES if cf.changed.at[j, a]])
    if not targets:
        return {"images": 0}
    src_images = [render_face(s, i) for s, i in zip(sources, identities)]
    t0 = time.perf_counter()
    if generator == "render":
        images = [render_face(t, i) for t, i in zip(targets, identities)]
    else:
        images, _ = pipe.checked_image_to_image(src_images, [caption(t) for t in targets], list(range(len(targets))),
                                                targets, source_prompts=[caption(s) for s in sources])
    seconds = time.perf_counter() - t0
    column = {a: j for j, a in enumerate(oracle.attributes)}
    seen = oracle.predict(images) >= 0.5
    intervened = [by_k[r["k"]]["intervention"] for r in usable for _ in range(per_caption)]
    shown = np.mean([seen[i, column[a]] == bool(v) for i, (a, v) in enumerate(intervened)])
    all_shown = np.mean([all(seen[i, column[a]] == bool(targets[i][a]) for a in changed[i]) for i in range(len(targets))])
    f_src, f_cf = oracle.features(src_images), oracle.features(images)
    renders = [render_face(s, i) for s, i in zip(table.sample(len(targets), random_state=1).to_dict("records"),
                                                 np.random.default_rng(7).integers(0, 2**31 - 1, len(targets)))]
    kid = kernel_inception_distance(oracle.features(renders), f_cf, subset_size=min(len(targets), 500))[0]
    out = {"images": len(targets), "captions": len(usable), "intervention_shown": float(shown),
           "all_changes_shown": float(all_shown), "cld": edit_distance(f_src, f_cf), "kid": float(kid),
           "mean_changed": float(np.mean([len(c) for c in changed])), "effect_error": float(np.mean(effect_errors)),
           "seconds": seconds}
    if clip is not None:  # seed 003's CLIP figures, with the user's CLIP model folder
        from fairloop.tools.quality import clip_directional_similarity, clip_scores

        prompts, source_prompts = [caption(t) for t in targets], [caption(s) for s in sources]
        out["clip_score"] = float(np.mean(clip_scores(images, prompts, clip)))
        out["clip_directional"] = float(np.mean(clip_directional_similarity(src_images, images, source_prompts,
                                                                            prompts, clip)))
    return out


def summarize(rows: list[dict], builder: str) -> dict:
    from fairloop.experiments.stats import t_interval

    mine = [r for r in rows if r["builder"] == builder]
    answers = sum(r["attempts"] for r in mine)
    shd = [r["shd_to_true_graph"] for r in mine if r["graph_valid"] and r["shd_to_true_graph"] is not None]
    accepted = [r for r in mine if r["graph_valid"]]
    from fairloop.scm import CausalGraph

    return {"captions": len(mine), "valid": float(np.mean([r["valid"] for r in mine])),
            "graph_valid": float(np.mean([r["graph_valid"] for r in mine])),
            "cycle_rate_before": sum(r["cycles_found"] for r in mine) / max(answers, 1),
            "cycle_rate_after": float(np.mean([CausalGraph.of(r["variables"], r["edges"]).find_cycle() is not None
                                               for r in accepted])) if accepted else None,
            "shd": t_interval(shd) if shd else None, "attempts": answers / max(len(mine), 1),
            "seconds": float(np.mean([r["seconds"] for r in mine]))}


def main() -> None:
    from fairloop.data.synthfaces import sample_attributes
    from fairloop.io import atomic_write_json
    from fairloop.tools.quality import AttributeOracle

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--captions", type=int, default=50)
    parser.add_argument("--builders", default="true,local")
    parser.add_argument("--per-caption", type=int, default=20)
    parser.add_argument("--generator", choices=("embedded", "render"), default="embedded")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--clip", type=Path, help="a CLIP model folder: adds CLIP score and directional similarity")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    builders = args.builders.split(",")
    items = captions(args.captions, args.seed)
    table = sample_attributes(TABLE_ROWS, np.random.default_rng(args.seed + 1))
    print(f"{len(items)} captions × {builders}; e.g. {items[0]['caption']!r} do({items[0]['intervention']})")
    rows = build_graphs(args.out, items, builders, table)
    oracle = AttributeOracle.packaged()
    pipe = None
    if args.generator == "embedded":
        from fairloop.diffusion.embedded import ASSETS, EmbeddedPipeline

        pipe = EmbeddedPipeline.load(ASSETS)
    summary = {"captions": len(items), "per_caption": args.per_caption, "generator": args.generator, "builders": {}}
    for builder in builders:
        print(f"images for {builder} …", flush=True)
        summary["builders"][builder] = summarize(rows, builder) | {
            "images": counterfactual_images(rows, items, builder, args.per_caption, args.generator, table, oracle, pipe,
                                            args.clip)}
    atomic_write_json(args.out / "summary.json", summary)

    print(f"\nSCMs of {len(items)} SynthFaces captions; images: {args.per_caption} counterfactuals of each person, "
          f"{args.generator} generator, scored by the oracle")
    print(f"{'builder':<8} {'valid':>6} {'graph ok':>8} {'cycles before':>13} {'after':>6} {'SHD':>14} {'tries':>5} "
          f"{'s/caption':>9} {'do() shown':>10} {'all shown':>9} {'CLD':>6} {'KID':>8} {'images':>6} {'effect err':>10}")
    for builder, s in summary["builders"].items():
        im = s["images"]
        shd = f"{s['shd']['mean']:.1f} ± {s['shd']['half_width']:.1f}" if s["shd"] else "—"
        after = f"{s['cycle_rate_after']:.2f}" if s["cycle_rate_after"] is not None else "—"
        imgs = (f"{im['intervention_shown']:>10.3f} {im['all_changes_shown']:>9.3f} {im['cld']:>6.3f} {im['kid']:>8.4f} "
                f"{im['images']:>6} {im['effect_error']:>10.3f}") if im.get("images") else \
            f"{'—':>10} {'—':>9} {'—':>6} {'—':>8} {0:>6} {'—':>10}"
        print(f"{builder:<8} {s['valid']:>6.2f} {s['graph_valid']:>8.2f} {s['cycle_rate_before']:>13.2f} {after:>6} "
              f"{shd:>14} {s['attempts']:>5.1f} {s['seconds']:>9.1f} {imgs}")


if __name__ == "__main__":
    main()
