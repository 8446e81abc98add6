"""How good is the embedded generator? Text-to-image, edits, realism and speed, scored by the oracle.

Usage: python bench/bench_generator.py [--model FOLDER] [--per-prompt 16] [--edits 64] [--real 512]
       [--steps S] [--solver ddim|dpm] [--guidance G] [--strength T] [--edit masked|sdedit|invert]
       [--two-pass] [--parts t2i,edits,reconstruction,realism] [--json OUT]

Everything is measured with the packaged attribute oracle (``fairloop generator train-oracle``),
which never saw a generated image. The generator checks its own draws with its critic (another
network, trained with it on its own pool) unless --tries 1 and --strength fix them; speeds count
every redraw.

1. **Text-to-image** over :data:`PROMPTS` (≥ 20 attribute combinations, rare ones included).
   *Named*: of the attributes a prompt names, the share the oracle sees as asked. *Unmentioned*: of
   the attributes the prompt's intent fixes without naming them (accessories it does not name are
   absent; a named hair colour turns the others off — see :mod:`fairloop.diffusion.captions`), the
   share that match.
2. **Edits** (masked SDEdit by default; --edit sdedit unmasked, --edit invert negative-prompt
   inversion; all towards the edited caption): black-haired women → gray hair, gray-haired men →
   black hair (the loop's direction on the default scenario), and adding eyeglasses. *Shown*: the
   new attribute is there. *Kept*: gender, age and every other attribute match the source's.
   *Source kept*: the share of checked edits the critic took with the source kept where the edit
   barely changed it (``keep_unchanged``). The
   *ceiling* is the oracle's gender+age agreement on the exact counterfactuals (the renderer draws
   the same face with the edited attributes): no edit can score above the oracle's own error.
3. **Reconstruction**: the autoencoder alone on fresh renders, per attribute: the ceiling of every
   edit.
4. **Realism**: Fréchet and kernel distances on the oracle's features between generated images
   (captions of fresh unbiased attribute draws) and fresh renders; the held-out accuracy of a small
   CNN trained to tell them apart (0.5 = indistinguishable); the same figures for two samples of
   renders, as the floor.
5. **Speed and size**: images/s of text-to-image and of edits at the default settings, and the
   weights on disk.

Prints one table per part and, with --json, writes every figure.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

PROMPTS = (
    "a woman with gray hair",
    "a young woman with gray hair",
    "a young man with blond hair and eyeglasses",
    "a man with black hair",
    "a woman with blond hair",
    "an old man with gray hair and a mustache",
    "a young woman with brown hair wearing earrings and lipstick",
    "a bald man wearing a necktie",
    "a young bald man",
    "a woman wearing a hat",
    "a smiling man with brown hair",
    "a man with pale skin and black hair",
    "a chubby old man with gray hair",
    "a woman with bangs and black hair",
    "a young man with a mustache",
    "an old woman wearing eyeglasses",
    "a man wearing a hat and eyeglasses",
    "a young woman with blond hair and bangs, smiling",
    "a man without gray hair",
    "a woman with gray hair wearing lipstick",
    "an old man with black hair wearing a necktie",
    "a woman with pale skin and brown hair",
)
#: (name, source filter, edits)
EDITS = (
    ("women: black → gray hair", {"Male": 0, "Black_Hair": 1}, {"Gray_Hair": 1}),
    ("men: gray → black hair", {"Male": 1, "Gray_Hair": 1}, {"Black_Hair": 1}),
    ("anyone: + eyeglasses", {"Eyeglasses": 0}, {"Eyeglasses": 1}),
)


def oracle_view(oracle, images) -> np.ndarray:
    return oracle.predict(images) >= 0.5


def text_to_image(pipe, oracle, cfg, per_prompt: int) -> dict:
    from fairloop.diffusion.captions import intended_attributes
    from fairloop.tools.prompt_parser import parse_prompt

    column = {a: j for j, a in enumerate(oracle.attributes)}
    rows, named_hits, other_hits, images_all = [], [], [], []
    t0 = time.perf_counter()
    checked = pipe.critic is not None and cfg.tries > 1
    accepted = []
    for k, prompt in enumerate(PROMPTS):
        intent = intended_attributes(prompt)
        seeds = [1000 * k + i for i in range(per_prompt)]
        if checked:
            images, _, misses = pipe.checked_text_to_image([prompt] * per_prompt, seeds, [intent] * per_prompt,
                                                           config=cfg)
            accepted += [m == 0 for m in misses]
        else:
            images = pipe.text_to_image([prompt] * per_prompt, seeds, config=cfg)
        images_all += images
        seen = oracle_view(oracle, images)
        named = set(parse_prompt(prompt, oracle.attributes).edits)
        n_hits = [seen[i, column[a]] == bool(v) for i in range(per_prompt) for a, v in intent.items() if a in named]
        o_hits = [seen[i, column[a]] == bool(v) for i in range(per_prompt) for a, v in intent.items() if a not in named]
        all_right = np.mean([all(seen[i, column[a]] == bool(v) for a, v in intent.items()) for i in range(per_prompt)])
        named_hits += n_hits
        other_hits += o_hits
        rows.append({"prompt": prompt, "named": float(np.mean(n_hits)), "unmentioned": float(np.mean(o_hits)),
                     "all_right": float(all_right)})
    seconds = time.perf_counter() - t0
    return {"prompts": rows, "named": float(np.mean(named_hits)), "unmentioned": float(np.mean(other_hits)),
            "all_right": float(np.mean([r["all_right"] for r in rows])), "n_images": len(images_all),
            "critic_accepted": float(np.mean(accepted)) if checked else None,
            "images_per_second": len(images_all) / seconds, "images": images_all}


def edits(pipe, oracle, cfg, n: int, seed: int) -> dict:
    from fairloop.data.synthfaces import render_face, sample_attributes
    from fairloop.diffusion.captions import caption
    from fairloop.diffusion.embedded import DEFAULT_STRENGTH, RUNG_SAMPLE, ladder_after
    from fairloop.generators import apply_edits

    column = {a: j for j, a in enumerate(oracle.attributes)}
    rng = np.random.default_rng(seed)
    out, total_images, total_seconds = [], 0, 0.0
    for name, fixed, change in EDITS:
        table = sample_attributes(n, rng, {k: np.full(n, v, np.int8) for k, v in fixed.items()})
        sources = table.to_dict("records")
        identities = rng.integers(0, 2**31 - 1, size=n)
        src_images = [render_face(s, int(i)) for s, i in zip(sources, identities)]
        targets = [apply_edits(s, change, rng) for s in sources]
        t0 = time.perf_counter()
        source_prompts = [caption(s) for s in sources]
        prompts = [caption(t) for t in targets]
        used = None
        if pipe.critic is not None and cfg.strength is None:  # as the generator draws a request's edits
            first = min(n, RUNG_SAMPLE)
            edited, used = pipe.checked_image_to_image(src_images[:first], prompts[:first], list(range(first)),
                                                       targets[:first], config=cfg, source_prompts=source_prompts[:first])
            rest = pipe.checked_image_to_image(src_images[first:], prompts[first:], list(range(first, n)),
                                               targets[first:], config=cfg, source_prompts=source_prompts[first:],
                                               ladder=ladder_after(used)) if n > first else ([], [])
            edited, used = edited + rest[0], used + rest[1]
        else:
            edited = pipe.image_to_image(src_images, prompts, list(range(n)), config=cfg, source_prompts=source_prompts)
        total_seconds += time.perf_counter() - t0
        total_images += n
        seen = oracle_view(oracle, edited)
        shown = np.mean([all(seen[i, column[a]] == bool(v) for a, v in change.items()) for i in range(n)])
        others = [a for a in oracle.attributes if a not in change and not (a in _HAIR and set(change) & _HAIR)]
        kept = np.mean([all(seen[i, column[a]] == bool(targets[i][a]) for a in others) for i in range(n)])
        kept_attr = np.mean([seen[i, column[a]] == bool(targets[i][a]) for i in range(n) for a in others])
        gender_age = np.mean([all(seen[i, column[a]] == bool(targets[i][a]) for a in ("Male", "Young"))
                              for i in range(n)])
        source_seen = oracle_view(oracle, src_images)
        source_ok = np.mean([all(source_seen[i, column[a]] == bool(sources[i][a]) for a in others) for i in range(n)])
        exact = oracle_view(oracle, [render_face(t, int(i)) for t, i in zip(targets, identities)])
        ceiling = np.mean([all(exact[i, column[a]] == bool(targets[i][a]) for a in ("Male", "Young"))
                           for i in range(n)])
        out.append({"edit": name, "n": n, "shown": float(shown), "gender_age_kept": float(gender_age),
                    "all_others_kept": float(kept), "others_kept_per_attribute": float(kept_attr),
                    "oracle_on_sources_all_others": float(source_ok), "gender_age_ceiling": float(ceiling),
                    "critic_accepted": None if used is None else float(np.mean([u["critic_misses"] == 0 for u in used])),
                    "mean_strength": float(np.mean([u["strength"] for u in used])) if used
                    else cfg.strength or DEFAULT_STRENGTH,
                    "kept_unchanged": None if used is None else float(np.mean([u["kept_unchanged"] for u in used])),
                    "edited": edited[:8], "sources": src_images[:8]})
    return {"edits": out, "images_per_second": total_images / total_seconds}


_HAIR = {"Gray_Hair", "Black_Hair", "Blond_Hair", "Brown_Hair", "Bald"}


def reconstruction(pipe, oracle, n: int, seed: int) -> dict:
    """The autoencoder alone (encode → decode fresh renders): the ceiling of every edit, since an
    inversion edit reproduces it where the captions agree."""
    from fairloop.data.synthfaces import render_face, sample_attributes
    from fairloop.diffusion.embedded import to_images, to_tensor

    rng = np.random.default_rng(seed)
    faces = sample_attributes(n, rng).to_dict("records")
    sources = [render_face(f, int(i)) for f, i in zip(faces, rng.integers(0, 2**31 - 1, size=n))]
    rebuilt = to_images(pipe.decode_latents(pipe.encode_images(to_tensor(sources))))
    truth = np.array([[f[a] for a in oracle.attributes] for f in faces], bool)
    agree = oracle_view(oracle, rebuilt) == truth
    return {"n": n, "all_attributes_kept": float(agree.all(1).mean()),
            "per_attribute": {a: float(v) for a, v in zip(oracle.attributes, agree.mean(0))},
            "oracle_on_renders_all": float((oracle_view(oracle, sources) == truth).all(1).mean())}


def realism(pipe, oracle, cfg, n: int, seed: int) -> dict:
    from fairloop.data.synthfaces import render_pool, sample_attributes
    from fairloop.diffusion.captions import caption
    from fairloop.tools.quality import frechet_distance, kernel_inception_distance, real_vs_generated_accuracy

    real, _ = render_pool(n, seed)
    real_b, _ = render_pool(n, seed + 1)
    draws = sample_attributes(n, np.random.default_rng(seed + 2)).to_dict("records")
    generated = pipe.text_to_image([caption(d) for d in draws], list(range(n)), config=cfg)
    gen_arr = np.stack([np.asarray(im) for im in generated])
    f_real, f_real_b = oracle.features(_tensor(real)), oracle.features(_tensor(real_b))
    f_gen = oracle.features(generated)
    kid_subset = min(n, 500)
    return {
        "n": n,
        "fid_generated": frechet_distance(f_real, f_gen), "fid_renders": frechet_distance(f_real, f_real_b),
        "kid_generated": kernel_inception_distance(f_real, f_gen, subset_size=kid_subset)[0],
        "kid_renders": kernel_inception_distance(f_real, f_real_b, subset_size=kid_subset)[0],
        "detector_generated": real_vs_generated_accuracy(_tensor(real), _tensor(gen_arr), seed=seed),
        "detector_renders": real_vs_generated_accuracy(_tensor(real), _tensor(real_b), seed=seed),
    }


def _tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)


def main() -> None:
    from fairloop.diffusion.embedded import ASSETS, EDIT_MODES, SOLVERS, EmbeddedPipeline, SamplingConfig
    from fairloop.tools.quality import AttributeOracle

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="generator folder (default: the packaged one)")
    parser.add_argument("--per-prompt", type=int, default=16)
    parser.add_argument("--edits", type=int, default=64, help="sources per edit")
    parser.add_argument("--real", type=int, default=512, help="images per side for FID/KID and the detector")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--solver", choices=SOLVERS, help="sampler (default: the generator's)")
    parser.add_argument("--guidance", type=float)
    parser.add_argument("--strength", type=float, help="fix the edit strength (default: the critic picks it)")
    parser.add_argument("--tries", type=int, help="text-to-image seeds per image (1: no critic check)")
    parser.add_argument("--edit", choices=EDIT_MODES, help="image-to-image method (default: masked)")
    parser.add_argument("--two-pass", action="store_true",
                        help="classifier-free guidance with two UNet passes a step even where the weights have a "
                             "guidance-distilled UNet (the sampler before `fairloop generator distil`)")
    parser.add_argument("--parts", default="t2i,edits,reconstruction,realism", help="which parts to run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--grid", type=Path, help="write example grids into this folder")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    folder = Path(args.model) if args.model else ASSETS
    pipe = EmbeddedPipeline.load(folder)
    oracle = AttributeOracle.packaged()
    chosen = {"steps": args.steps, "guidance": args.guidance, "strength": args.strength, "edit": args.edit,
              "tries": args.tries, "solver": args.solver, "distilled": False if args.two_pass else None}
    cfg = SamplingConfig(**{k: v for k, v in chosen.items() if v is not None})
    size_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
    passes = "one UNet pass a step (guidance-distilled)" if pipe.one_pass(cfg, "") else "two UNet passes a step"
    print(f"generator {pipe.model_id} at {folder} ({size_mb:.1f} MB); sampling {cfg}, {passes}; oracle held-out balanced "
          f"accuracy ≥ {min(v for v in oracle.balanced_scores.values() if v is not None):.3f}")

    parts = set(args.parts.split(","))
    t2i = ed = real = rec = None
    if "t2i" in parts:
        t2i = text_to_image(pipe, oracle, cfg, args.per_prompt)
        print(f"\ntext-to-image, {len(PROMPTS)} prompts × {args.per_prompt} images (oracle agreement)")
        print(f"{'prompt':<62} {'named':>6} {'unmentioned':>11} {'all right':>9}")
        for r in t2i["prompts"]:
            print(f"{r['prompt']:<62} {r['named']:>6.3f} {r['unmentioned']:>11.3f} {r['all_right']:>9.3f}")
        print(f"{'ALL':<62} {t2i['named']:>6.3f} {t2i['unmentioned']:>11.3f} {t2i['all_right']:>9.3f}")
        if t2i["critic_accepted"] is not None:
            print(f"the critic accepted {t2i['critic_accepted']:.3f} of the images (up to {cfg.tries} seeds each)")
        print(f"text-to-image speed ({torch.get_num_threads()} threads, batch {cfg.batch_size}): "
              f"{t2i['images_per_second']:.1f} images/s at {cfg.steps} steps")
    if "edits" in parts:
        ed = edits(pipe, oracle, cfg, args.edits, args.seed)
        how = f"strength {cfg.strength}" if cfg.strength else "strength chosen by the critic"
        print(f"\nimage-to-image edits ({cfg.edit}, {how}), {args.edits} sources each")
        print(f"{'edit':<28} {'shown':>6} {'gender+age kept':>15} {'(ceiling)':>9} {'all others kept':>15} "
              f"{'per attribute':>13} {'oracle on sources':>17} {'critic accepted':>15} {'strength':>8} {'source kept':>11}")
        for r in ed["edits"]:
            accepted = "-" if r["critic_accepted"] is None else f"{r['critic_accepted']:.3f}"
            kept = "-" if r["kept_unchanged"] is None else f"{r['kept_unchanged']:.3f}"
            print(f"{r['edit']:<28} {r['shown']:>6.3f} {r['gender_age_kept']:>15.3f} {r['gender_age_ceiling']:>9.3f} "
                  f"{r['all_others_kept']:>15.3f} "
                  f"{r['others_kept_per_attribute']:>13.3f} {r['oracle_on_sources_all_others']:>17.3f} "
                  f"{accepted:>15} {r['mean_strength']:>8.2f} {kept:>11}")
        print(f"edit speed: {ed['images_per_second']:.1f} images/s")
    if "reconstruction" in parts:
        rec = reconstruction(pipe, oracle, args.edits, args.seed)
        worst = sorted(rec["per_attribute"].items(), key=lambda kv: kv[1])[:6]
        print(f"\nautoencoder reconstructions of {rec['n']} fresh renders: all attributes kept "
              f"{rec['all_attributes_kept']:.3f} (oracle on the renders themselves {rec['oracle_on_renders_all']:.3f}); "
              "weakest: " + ", ".join(f"{a} {v:.2f}" for a, v in worst))
    if "realism" in parts:
        real = realism(pipe, oracle, cfg, args.real, args.seed)
        print(f"\nrealism on oracle features, {args.real} images per side (renders vs renders is the floor)")
        print(f"FID {real['fid_generated']:.2f} (renders {real['fid_renders']:.2f}); KID {real['kid_generated']:.4f} "
              f"(renders {real['kid_renders']:.4f}); real-vs-generated detector accuracy "
              f"{real['detector_generated']:.3f} (renders {real['detector_renders']:.3f})")
    print(f"\nweights {size_mb:.1f} MB")

    if args.grid:
        args.grid.mkdir(parents=True, exist_ok=True)
    if args.grid and t2i:
        from fairloop.tools.generate import image_grid

        for k in range(len(PROMPTS)):
            chunk = t2i["images"][k * args.per_prompt:(k + 1) * args.per_prompt][:8]
            paths = []
            for i, im in enumerate(chunk):
                p = args.grid / f"t2i-{k:02d}-{i}.png"
                im.save(p)
                paths.append(p)
            image_grid(paths).save(args.grid / f"prompt-{k:02d}.png")
    if args.grid and ed:
        from fairloop.tools.generate import image_grid

        for k, r in enumerate(ed["edits"]):
            paths = []
            for i, im in enumerate(r["sources"] + r["edited"]):
                p = args.grid / f"edit-{k}-{i:02d}.png"
                im.save(p)
                paths.append(p)
            image_grid(paths, columns=len(r["sources"])).save(args.grid / f"edit-{k}.png")
    if args.json:
        for r in (ed or {}).get("edits", []):
            r.pop("edited"), r.pop("sources")
        if t2i:
            t2i.pop("images")
        args.json.write_text(json.dumps({"model_id": pipe.model_id, "sampling": cfg.__dict__, "size_mb": size_mb,
                                         "text_to_image": t2i, "edits": ed, "reconstruction": rec,
                                         "realism": real}, indent=2))


if __name__ == "__main__":
    main()
