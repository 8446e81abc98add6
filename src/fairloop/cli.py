"""The ``fairloop`` command line.

Nothing heavy is imported at module level: torch, aif360, lime and friends load inside the command
that needs them, so ``fairloop --help`` answers at once. Errors a user can fix are printed as the
problem and the fix, never as a traceback.
"""

from __future__ import annotations

import errno
import sqlite3
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from fairloop.errors import FairloopError
from fairloop.io import check_destination

app = typer.Typer(help="Debug and repair bias in image classifiers with counterfactual data.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  rich_markup_mode=None)  # None: docstring paragraphs are re-wrapped, not broken at each source line
data_app = typer.Typer(help="Datasets: synthesize the embedded SynthFaces dataset.", no_args_is_help=True)
app.add_typer(data_app, name="data")
generator_app = typer.Typer(help="The embedded generator: train it (and its attribute oracle) from scratch.",
                            no_args_is_help=True)
app.add_typer(generator_app, name="generator")

DatasetOpt = Annotated[str, typer.Option("--dataset", help="Folder format: celeba, utkface or csv.")]
RootOpt = Annotated[Path, typer.Option("--root", help="The dataset's folder.")]
CsvOpt = Annotated[Optional[Path], typer.Option("--csv", help="Attribute table for --dataset csv (default: the one CSV in --root).")]
TargetOpt = Annotated[str, typer.Option("--target", help="The attribute the classifier predicts (positive label = 1).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for sampling, training and bootstrap.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu or cuda[:N].")]


def _console():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)  # soft wrap: messages stay whole when piped or logged


def _plain(console):
    """A log callback that prints lines as they are: "[iteration 2]" is text, not rich markup."""
    return lambda line: console.print(line, markup=False, highlight=False)


@contextmanager
def _progress(*also):
    """A ``(stage, done, total)`` progress callback: one rich bar per stage on a terminal, plain lines
    with an ETA otherwise (CI logs, ``make demo | tee``), and the same lines to every sink in ``also``
    (a run's log file)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from fairloop.progress import ProgressLines

    console = _console()
    if not console.is_terminal:
        yield ProgressLines(_plain(console), *also)
        return
    lines = ProgressLines(*also)
    with Progress(TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("eta"), TimeRemainingColumn(), console=console, transient=False) as progress:
        tasks: dict[str, int] = {}
        last: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            elif done < last[stage]:  # the stage starts again (the next iteration of a run)
                progress.reset(tasks[stage], total=total)
            last[stage] = done
            progress.update(tasks[stage], completed=done, total=total)
            lines(stage, done, total)

        yield update


def _load(dataset: str, root: Path, csv: Path | None):
    from fairloop.data.datasets import load_dataset

    return load_dataset(dataset, root, csv=csv)


# ----------------------------------------------------------------------------------------- data


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write (CelebA layout).")],
    n: Annotated[int, typer.Option("--n", help="Number of images over all splits (70/15/15).")] = 12000,
    target: Annotated[str, typer.Option("--target", help="Target attribute of the scenario.")] = "Male",
    spurious: Annotated[str, typer.Option("--spurious", help="Attribute that shortcuts the target in the training split.")] = "Gray_Hair",
    correlation: Annotated[float, typer.Option("--correlation", help="P(spurious == target) in the training split; 0.5 is unbiased.")] = 0.95,
    cues: Annotated[str, typer.Option("--cues", help="How attributes show: salient, subtle, or auto (subtle for the targets Young, Smiling, Wearing_Lipstick, Chubby and Mustache, else salient).")] = "auto",
    extra_val: Annotated[int, typer.Option("--extra-val", help="More validation images, balanced over the four groups, drawn after the others so every other image stays the same (1,800 validation images read a repaired model's EOD about 0.025 fairer than it is; 10,800 do not).")] = 0,
    seed: SeedOpt = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")] = False,
) -> None:
    """Write SynthFaces, the embedded face dataset, in CelebA's on-disk format.

    The training split carries the shortcut; validation and test are balanced over the four
    target × spurious groups.

    Which targets are hard: Male's own cue is always subtle (jaw and brows), so a salient shortcut
    at 0.95 costs ERM about 0.4 worst-group accuracy in either cue style. With subtle cues (the
    auto choice for them) Young, Smiling, Wearing_Lipstick, Chubby and Mustache show faintly too,
    and such a shortcut costs ERM 0.54-0.70 (Young), 0.88 (Smiling), 0.27-0.39 (Wearing_Lipstick),
    0.80 (Chubby) and 0.69 (Mustache), measured on one to three seeds (README, "SynthFaces"). With salient cues
    ERM learned Young and Smiling without bias (worst-group accuracy 0.998 and 1.000). The
    embedded generator and the attribute oracle learned salient renders: on subtle data use
    --generator render.
    """
    from rich.table import Table

    from fairloop.data.synthfaces import Scenario, check_cues, default_cues, write_synthfaces

    scenario = Scenario(target, spurious, correlation).validate()
    cues = default_cues(target) if cues == "auto" else check_cues(cues)
    check_destination(out, folder=True)
    with _progress() as progress:
        folder = write_synthfaces(out, n=n, scenario=scenario, seed=seed, cues=cues, extra_val=extra_val, force=force,
                                  progress=lambda done, total: progress("render", done, total))
    import json

    groups = json.loads((folder / "synthfaces.json").read_text())["groups"]
    table = Table(title=f"SynthFaces ({cues} cues) written to {folder}")
    table.add_column("group")
    for split in groups:
        table.add_column(split, justify="right")
    for name in groups["train"]:
        table.add_row(name, *(str(groups[s].get(name, 0)) for s in groups))
    _console().print(table)


# ---------------------------------------------------------------------------------------- train


@app.command()
def train(
    root: RootOpt,
    target: TargetOpt,
    out: Annotated[Path, typer.Option("--out", help="Checkpoint path (writes PATH.safetensors and PATH.json).")],
    dataset: DatasetOpt = "celeba",
    csv: CsvOpt = None,
    arch: Annotated[str, typer.Option("--arch", help="smallcnn, resnet18 or mobilenet.")] = "smallcnn",
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Default: 8.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Default: 64.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Default: 2e-3 (one-cycle schedule).")] = None,
    image_size: Annotated[int, typer.Option("--image-size", help="Images are centre-cropped and resized to this.")] = 64,
    pretrained: Annotated[Optional[Path], typer.Option("--pretrained", help="torchvision state dict (e.g. ImageNet weights) for resnet18/mobilenet.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="DataLoader worker processes (default: 0 on the CPU, up to 8 beside a GPU).")] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Train a baseline classifier for TARGET on the train split (best epoch on val)."""
    data = _load(dataset, root, csv)
    data.require_attribute(target, "target")
    check_destination(out, folder=False)

    from fairloop.vision.train import TrainConfig

    chosen = {"epochs": epochs, "batch_size": batch_size, "lr": lr}
    config = TrainConfig(arch=arch, image_size=image_size, seed=seed, device=device, num_workers=workers,
                         pretrained=str(pretrained) if pretrained else None,
                         **{k: v for k, v in chosen.items() if v is not None})
    weights, history = _train_and_save(data, target, config, out)
    _console().print(f"[green]saved[/] {weights}  (best val accuracy {history['best_val_accuracy']:.4f}, "
                     f"{history['seconds']:.0f} s on {history['device']})")


def _train_and_save(data, target: str, config, out: Path):
    from fairloop.vision.models import save_checkpoint
    from fairloop.vision.train import train_classifier

    with _progress() as progress:
        model, history = train_classifier(data, target, config, progress=progress)
    meta = {"arch": config.arch, "target": target, "image_size": config.image_size,
            "classes": [f"not {target}", target], "dataset": data.name, "root": str(data.root),
            "data_hash": data.fingerprint(), "history": history}
    return save_checkpoint(model, out, meta), history


# ---------------------------------------------------------------------------------------- audit


@app.command()
def audit(
    root: RootOpt,
    target: TargetOpt,
    protected: Annotated[str, typer.Option("--protected", help="The protected attribute whose groups are compared.")],
    dataset: DatasetOpt = "celeba",
    csv: CsvOpt = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="Checkpoint from 'fairloop train'; without it a baseline is trained first.")] = None,
    privileged: Annotated[int, typer.Option("--privileged", help="Value (0 or 1) of the protected attribute that is the privileged group.")] = 1,
    split: Annotated[str, typer.Option("--split", help="Split to audit: train, val or test.")] = "test",
    out: Annotated[Path, typer.Option("--out", help="Folder for audit.json, audit.html, predictions.csv.")] = Path("fairloop-audit"),
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write audit.json here instead.")] = None,
    arch: Annotated[str, typer.Option("--arch", help="Architecture of the baseline trained when --model is not given.")] = "smallcnn",
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Epochs of that baseline (default: 8).")] = None,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for confidence intervals (0: none).")] = 200,
    explain_rows: Annotated[int, typer.Option("--explain-rows", help="Rows explained by LIME.")] = 200,
    top: Annotated[int, typer.Option("--top", help="Attribute importances to print.")] = 10,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Measure a classifier's bias (AIF360 metrics) and explain it (LIME over attributes)."""
    from fairloop.errors import ConfigError

    if privileged not in (0, 1):
        raise ConfigError(f"--privileged {privileged} is not a value of a binary attribute", "use 0 or 1")
    console = _console()
    data = _load(dataset, root, csv)  # checked before torch is imported, so input errors come at once
    data.require_attribute(target, "target")
    data.require_attribute(protected, "protected")
    check_destination(out, folder=True)
    if json_path is not None:
        check_destination(json_path, folder=False, option="--json")

    from fairloop.tools.audit import audit as run_audit
    from fairloop.vision.models import load_checkpoint, resolve_device
    from fairloop.vision.train import TrainConfig

    if model is None:
        console.print(f"no --model given: training a {arch} baseline for {target} first")
        model = out / "model"
        config = TrainConfig(arch=arch, seed=seed, device=device, **({"epochs": epochs} if epochs else {}))
        _train_and_save(data, target, config, model)
    net, meta = load_checkpoint(model, resolve_device(device))
    if meta.get("target") not in (None, target):
        raise ConfigError(f"checkpoint {model} was trained for {meta['target']!r}, not for --target {target!r}",
                          f"audit it with --target {meta['target']}, or train a model for {target}")
    with _progress() as progress:
        result = run_audit(net, data, target=target, protected=protected, privileged_value=privileged, split=split,
                           image_size=meta.get("image_size", 64), n_bootstrap=bootstrap, explain_rows=explain_rows,
                           seed=seed, progress=progress,
                           model_info={"checkpoint": str(model), "arch": meta.get("arch"),
                                       "train_data_hash": meta.get("data_hash")})
    from fairloop.report.audit_html import write_audit

    paths = write_audit(result, out, json_path=json_path)
    console.print(result.metrics.as_rich_table())
    console.print(result.explanation.as_rich_table(top))
    band = result.metrics.in_band()
    verdict = "[green]inside the fair band[/]" if band.inside else "[red]outside the fair band[/]: " + "; ".join(
        f"{k} {v}" for k, v in band.outside.items())
    console.print(verdict)
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))


# ----------------------------------------------------------------------------------- weaknesses


@app.command()
def weaknesses(
    root: RootOpt,
    target: TargetOpt,
    dataset: DatasetOpt = "celeba",
    csv: CsvOpt = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="Checkpoint from 'fairloop train'; without it a baseline is trained first.")] = None,
    generator: Annotated[str, typer.Option("--generator", help="Who draws the counterfactuals: render (SynthFaces' exact oracle), embedded or sd.")] = "render",
    generator_model: Annotated[Optional[str], typer.Option("--generator-model", help="sd: a diffusers folder or cached hub id; embedded: other trained weights.")] = None,
    perturb: Annotated[str, typer.Option("--perturb", help="Who proposes the edits: all (every attribute, both directions) or llm (seed 001: a language model edits each caption).")] = "all",
    llm: Annotated[str, typer.Option("--llm", help="--perturb llm: auto, local or openai.")] = "auto",
    llm_model: Annotated[Optional[str], typer.Option("--llm-model", help="Model name for --llm openai.")] = None,
    llm_base_url: Annotated[Optional[str], typer.Option("--llm-base-url", help="Endpoint (default: $OPENAI_BASE_URL).")] = None,
    captions: Annotated[str, typer.Option("--captions", help="Where captions come from: table (the attribute table), oracle (what the attribute oracle sees) or blip (--captioner).")] = "table",
    captioner: Annotated[Optional[str], typer.Option("--captioner", help="A BLIP captioning model folder (or cached hub id) for --captions blip.")] = None,
    n_captions: Annotated[Optional[int], typer.Option("--n-captions", help="Images captioned and perturbed (default: 200 with --perturb all, 12 with llm).")] = None,
    per_edit: Annotated[int, typer.Option("--per-edit", help="Sources per edit and class: the n behind each ΔAcc.")] = 40,
    split: Annotated[str, typer.Option("--split", help="Split the sources come from (keep test for scoring repairs).")] = "val",
    reinforce: Annotated[int, typer.Option("--reinforce", help="Then reinforce (seed 001's Table 2): this many counterfactuals of the worst edits from training images, fine-tuned as the seed does and as fairloop does, scored on the test split and on the same edits of test images (0: no).")] = 0,
    protected: Annotated[Optional[str], typer.Option("--protected", help="--reinforce: the attribute worst-group accuracy and fairloop's α are measured on (default: the worst attribute found).")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for weaknesses.json, weaknesses.html and the images.")] = Path("fairloop-weaknesses"),
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the JSON report here instead.")] = None,
    top: Annotated[int, typer.Option("--top", help="Edits to print.")] = 10,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Find what a classifier is weak at without being told (seed 001): perturb captions, draw the
    counterfactuals, rank edits by the accuracy they cost (ΔAcc, flip rate, bootstrap CIs)."""
    from fairloop.errors import ConfigError
    from fairloop.weakness import PERTURBERS
    from fairloop.weakness.captions import CAPTION_SOURCES

    if perturb not in PERTURBERS:
        raise ConfigError(f"unknown --perturb {perturb!r}", f"use one of {', '.join(PERTURBERS)}")
    if captions not in CAPTION_SOURCES:
        raise ConfigError(f"unknown --captions {captions!r}", f"use one of {', '.join(CAPTION_SOURCES)}")
    if per_edit < 2:
        raise ConfigError(f"--per-edit {per_edit} gives no interval", "use --per-edit 2 or more (40 by default)")
    if n_captions is not None and n_captions < 1:
        raise ConfigError(f"--n-captions {n_captions} leaves nothing to perturb", "use --n-captions 1 or more")
    if reinforce < 0:
        raise ConfigError(f"--reinforce {reinforce} is not a number of images", "use --reinforce 0 (none) or more")
    if reinforce and split != "val":
        raise ConfigError(f"--reinforce with --split {split}: the weaknesses must be found on validation, because "
                          "reinforcement trains on training images and scores on test images",
                          "leave --split at val")
    console = _console()
    data = _load(dataset, root, csv)
    data.require_attribute(target, "target")
    if protected is not None:
        data.require_attribute(protected, "protected")
    if split not in ("train", "val", "test") or len(data.split(split)) == 0:
        raise ConfigError(f"--split {split!r} has no images in {root}", "use --split val (or train/test)")
    check_destination(out, folder=True)
    if json_path is not None:
        check_destination(json_path, folder=False, option="--json")
    perturber = None
    if perturb == "llm":
        from fairloop.llm import resolve_llm
        from fairloop.weakness.perturb import make_perturber

        perturber = make_perturber(resolve_llm(llm, llm_model), model=llm_model, base_url=llm_base_url)

    from fairloop.data.synthfaces import is_synthfaces
    from fairloop.generators import make_generator
    from fairloop.vision.models import load_checkpoint, resolve_device
    from fairloop.vision.train import TrainConfig
    from fairloop.weakness import discover

    if model is None:
        console.print(f"no --model given: training a smallcnn baseline for {target} first")
        model = out / "model"
        _train_and_save(data, target, TrainConfig(seed=seed, device=device), model)
    net, meta = load_checkpoint(model, resolve_device(device))
    if meta.get("target") not in (None, target):
        raise ConfigError(f"checkpoint {model} was trained for {meta['target']!r}, not for --target {target!r}",
                          f"use --target {meta['target']}, or a model trained for {target}")
    backend = make_generator(generator, model=generator_model, device=device)
    oracle = None
    if is_synthfaces(data.root) and (not backend.exact or captions == "oracle"):
        from fairloop.tools.quality import AttributeOracle

        oracle = AttributeOracle.packaged()
    blip = None
    if captions == "blip":
        from fairloop.weakness.captions import BlipCaptioner

        if not captioner:
            raise ConfigError("--captions blip needs a captioning model", "pass --captioner FOLDER")
        blip = BlipCaptioner(captioner, device=str(resolve_device(device)))
    with _progress() as progress:
        report = discover(net, data, backend, target=target, out_dir=out, perturber=perturber, captions_from=captions,
                          captioner=blip, oracle=oracle,
                          n_captions=n_captions or (12 if perturber else 200), per_edit=per_edit, split=split,
                          image_size=meta.get("image_size", 64), seed=seed, progress=progress)
    from fairloop.report.weakness_html import write_weaknesses

    result = report.as_dict()
    paths = write_weaknesses(result, out, json_path=json_path)
    say = _plain(console)
    filters = result["perturber"]["filters"]
    removed = ", ".join(f"{k} {v}" for k, v in filters.items() if k not in ("proposed", "kept") and v)
    say(f"{filters['proposed']} edits proposed by {result['perturber']['backend']} on {result['captions']['n']} captions "
        f"({result['captions']['from']}); kept {filters['kept']}" + (f" (removed: {removed})" if removed else ""))
    for name, n in result["perturber"]["unsupported"].items():
        say(f"  unsupported by the generator: {name} ({n})")
    say(f"{'#':>3}  {'class':<10} {'edit':<30} {'n':>4}  {'ΔAcc':>7}  {'95% CI':<17} {'flips':>5}")
    for k, w in enumerate(result["weaknesses"][:top], 1):
        lo, hi = w["ci"]["delta_acc"]
        say(f"{k:>3}  {target}={w['label']:<{9 - len(target)}} {w['edit']:<30} {w['n']:>4}  {w['delta_acc']:+.3f}  "
            f"[{lo:+.3f}, {hi:+.3f}] {w['flip_rate']:>5.2f}" + ("  *" if w["significant"] else ""))
    if result["attributes"]:
        say("attributes, those that cost accuracy both ways first: " + ", ".join(_attribute_line(a)
                                                                               for a in result["attributes"][:5]))
    say("* ΔAcc's 95 % interval lies below 0")
    say("wrote " + ", ".join(str(p) for p in paths.values()))
    if reinforce:
        _reinforce(report, net, data, backend, oracle, target=target, protected=protected,
                   n_images=reinforce, out=out, image_size=meta.get("image_size", 64), seed=seed,
                   device=str(resolve_device(device)), say=say)


def _attribute_line(a: dict) -> str:
    """One attribute of a weakness report: its both-ways ΔAcc where it has one beyond the noise, else its worst edit's."""
    if a["both_ways_significant"]:
        return f"{a['attribute']} {a['both_ways']:+.3f} both ways ({', '.join(a['both_ways_edits'])})"
    return f"{a['attribute']} {a['worst_delta_acc']:+.3f} one way ({a['worst_edit']})"


def _reinforce(report, net, data, backend, oracle, *, target, protected, n_images, out, image_size, seed, device, say):
    """``fairloop weaknesses --reinforce N``: seed 001's Table 2 for this classifier, into reinforce.json."""
    from fairloop.io import atomic_write_json
    from fairloop.weakness.reinforce import reinforce

    weak = [a for a in report.attributes() if a["significant"]]
    protected = protected or (weak[0]["attribute"] if weak else None)
    if protected is None:
        say("no weakness beyond the noise: nothing to reinforce")
        return
    say(f"reinforcing the worst edits; worst-group accuracy and fairloop's α on {protected}")
    with _progress() as progress:
        result = reinforce(net, data, backend, [w.as_dict() for w in report.weaknesses], target=target,
                           protected=protected, out_dir=out / "reinforce", n_images=n_images, oracle=oracle,
                           image_size=image_size, seed=seed, device=device, progress=progress)
    atomic_write_json(out / "reinforce.json", result | {"protected": protected})
    if not result["edits"]:
        say(result["note"])
        return
    say(f"{result['n_train_counterfactuals']} training counterfactuals of " + "; ".join(
        f"{target}={e['label']} {e['edit']}" for e in result["edits"]) + f"; {result['n_test_counterfactuals']} in the "
        "counterfactual test set (test images)")
    say(f"{'model':<16} {'accuracy':>9} {'worst group':>12} {'EOD':>7} {'counterfactual acc.':>20}  α")
    for name, arm in result["arms"].items():
        say(f"{name:<16} {arm['accuracy']:>9.3f} {arm['worst_group_accuracy']:>12.3f} "
            f"{arm['equal_opportunity_difference']:>+7.3f} {arm['counterfactual_accuracy'] or float('nan'):>20.3f}  {arm['alpha'] or '—'}")
    say(f"wrote {out / 'reinforce.json'}")


@app.command()
def aip(
    root: RootOpt,
    target: TargetOpt,
    dataset: DatasetOpt = "celeba",
    csv: CsvOpt = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="Checkpoint from 'fairloop train'; without it a baseline is trained first.")] = None,
    n: Annotated[int, typer.Option("-n", "--n", help="Query images (drawn at random from --split).")] = 100,
    mode: Annotated[str, typer.Option("--mode", help="flip: every attribute may move (seed 002); keep-label: the target attribute is frozen, so a flip is the classifier changing its mind about an unchanged class.")] = "flip",
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated: aip, xgems, aip-r, fgsm, exact (SynthFaces, keep-label only). The first is the headline.")] = "aip",
    split: Annotated[str, typer.Option("--split", help="Split the query images come from.")] = "test",
    generator_folder: Annotated[Optional[Path], typer.Option("--generator", help="AIP generator folder (default: the packaged one, from 'fairloop generator train-aip').")] = None,
    max_queries: Annotated[int, typer.Option("--max-queries", help="Classifier calls per image before giving up (seed 002's n_max).")] = 500,
    alpha: Annotated[float, typer.Option("--alpha", help="Weight of the proximity term ‖Δz‖² + ‖Δa‖² (seed 002: 1.5).")] = 1.5,
    out: Annotated[Path, typer.Option("--out", help="Folder for aip.json and the image strips (original | reconstruction | counterfactual).")] = Path("fairloop-aip"),
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the JSON report here instead of OUT/aip.json.")] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Attribute-informed perturbation (seed 002): which attribute changes flip the classifier, found by
    searching an attribute-conditional generator's latent space, against FGSM, xGEMs, AIP_R and the exact flip."""
    from fairloop.aip import counterfactual_search
    from fairloop.aip.search import SearchConfig
    from fairloop.errors import ConfigError
    from fairloop.io import atomic_write_json
    from fairloop.vision.models import load_checkpoint, resolve_device
    from fairloop.vision.train import TrainConfig

    method_list = tuple(m.strip() for m in methods.split(",") if m.strip())
    if not method_list:
        raise ConfigError("--methods names no method", "use e.g. --methods aip,xgems,aip-r,fgsm")
    if n < 1 or max_queries < 1:
        raise ConfigError(f"-n {n} / --max-queries {max_queries} leave nothing to search", "use 1 or more for both")
    from fairloop.aip.search import check_method_names
    from fairloop.data.synthfaces import is_synthfaces

    check_method_names(list(method_list), mode, is_synthfaces(root))
    console = _console()
    data = _load(dataset, root, csv)
    data.require_attribute(target, "target")
    data.split(split)   # an empty split fails here, naming the splits there are
    check_destination(out, folder=True)
    if json_path is not None:
        check_destination(json_path, folder=False, option="--json")
    generator = None
    if generator_folder is not None:
        from fairloop.aip.generator import load_aip_generator

        generator = load_aip_generator(generator_folder)
    if model is None:
        console.print(f"no --model given: training a smallcnn baseline for {target} first")
        model = out / "model"
        _train_and_save(data, target, TrainConfig(seed=seed, device=device), model)
    net, meta = load_checkpoint(model)
    if meta.get("target") not in (None, target):
        raise ConfigError(f"checkpoint {model} was trained for {meta['target']!r}, not for --target {target!r}",
                          f"use --target {meta['target']}, or a model trained for {target}")
    say = _plain(console)
    report = counterfactual_search(net, data, target, n=n, mode=mode, methods=method_list, split=split,
                                   generator=generator, config=SearchConfig(alpha=alpha, max_queries=max_queries),
                                   out_dir=out / "pairs", seed=seed, device=resolve_device(device), log=say)
    path = atomic_write_json(json_path or out / "aip.json", report)
    say(f"{report['n']} {split} images, {mode}; the classifier keeps its decision on {report['reconstruction_agreement']:.0%} "
        "of the generator's reconstructions")
    say(f"{'method':<7} {'FR':>6} {'valid FR':>9} {'LPR':>6} {'‖Δa‖₁':>6} {'calls':>6} {'s/image':>8}  attributes that moved most")
    for name, m in report["methods"].items():
        moved = ", ".join(f"{a['attribute']} {a['share']:.0%}" for a in m["attributes"][:3]) or "—"
        say(f"{name:<7} {m['flip_rate']:>6.3f} {_num(m['valid_flip_rate']):>9} {_num(m['lpr']):>6} "
            f"{_num(m['delta_a_l1']):>6} {m['queries_per_image']:>6.1f} {m['seconds_per_query']:>8.3f}  {moved}")
    say(f"wrote {path} and image strips under {out / 'pairs'}")


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


# ------------------------------------------------------------------------------------------ run


@app.command()
def run(
    root: Annotated[Optional[Path], typer.Option("--root", help="Dataset folder; without it SynthFaces' default scenario is synthesized into data/synthfaces.")] = None,
    dataset: DatasetOpt = "celeba",
    csv: CsvOpt = None,
    target: Annotated[str, typer.Option("--target")] = "Male",
    protected: Annotated[Optional[str], typer.Option("--protected", help="The attribute to repair (default: Gray_Hair, or what --discover finds).")] = None,
    discover: Annotated[bool, typer.Option("--discover", help="Without --protected: find the baseline's worst weakness first (seed 001, 'fairloop weaknesses') and repair that attribute.")] = False,
    privileged: Annotated[int, typer.Option("--privileged", help="Privileged value of the protected attribute.")] = 1,
    generator: Annotated[str, typer.Option("--generator", help="Counterfactual generator: embedded (fairloop's own diffusion model, CPU; tens of minutes on two cores), sd (Stable Diffusion, --generator-model) or render (the SynthFaces oracle, minutes).")] = "embedded",
    generator_model: Annotated[Optional[str], typer.Option("--generator-model", help="sd: a diffusers folder or a cached hub id; embedded: a folder of other trained weights.")] = None,
    strategy: Annotated[Optional[str], typer.Option("--strategy", help="What decides the counterfactuals: rules, llm, llm-raw, manual (--prompts FILE), manual-min, random, scm (an LLM's causal graph), scm-true (SynthFaces' true one), lance (seed 001: reinforce the weaknesses found on validation) or aip (seed 002: keep-label AIP searches against the current model; SynthFaces only). Default: llm when a language model is available (see --llm), else rules.")] = None,
    prompts: Annotated[Optional[Path], typer.Option("--prompts", help="--strategy manual: a file of 'LABEL: description' lines (1 for the target present, 0 absent).")] = None,
    llm: Annotated[str, typer.Option("--llm", help="Language model of the llm strategies: auto (openai when --llm-model/$FAIRLOOP_LLM_MODEL is set, else local when installed, else rules), rules (none: the deterministic analyzer), local (the packaged LLM, offline) or openai (any OpenAI-compatible endpoint: OPENAI_BASE_URL, OPENAI_API_KEY).")] = "auto",
    llm_model: Annotated[Optional[str], typer.Option("--llm-model", help="Model name for --llm openai.")] = None,
    llm_base_url: Annotated[Optional[str], typer.Option("--llm-base-url", help="Endpoint (default: $OPENAI_BASE_URL).")] = None,
    max_iterations: Annotated[int, typer.Option("--max-iterations")] = 3,
    max_images: Annotated[int, typer.Option("--max-images", help="Counterfactual images over the whole run.")] = 12000,
    images_per_iteration: Annotated[int, typer.Option("--images-per-iteration", help="Counterfactual images one iteration may draw at most.")] = 6000,
    first_batch: Annotated[int, typer.Option("--first-batch", help="Images the first iteration draws; each later one draws what the run's images so far bought on validation says the rest of the way takes. 0: as many as the analyzer asks.")] = 1000,
    fair_band: Annotated[str, typer.Option("--fair-band", help="DI_LOW,DI_HIGH,MAX_ABS_DIFF: the run stops inside it.")] = "0.8,1.25,0.05",
    stop_margin: Annotated[float, typer.Option("--stop-margin", help="The loop stops once inside the band by this share of its width (validation metrics are estimates, and read a repaired model as fairer than it is); 0 stops at the edge.")] = 0.7,
    accuracy_budget: Annotated[float, typer.Option("--accuracy-budget", help="Max drop of validation accuracy (0.01 = 1 point).")] = 0.01,
    baseline: Annotated[Optional[Path], typer.Option("--baseline", help="Start from this checkpoint instead of training one.")] = None,
    fresh_baseline: Annotated[bool, typer.Option("--fresh-baseline", help="Train the baseline even when an earlier run trained one on the same data with the same settings (kept in $FAIRLOOP_HOME/baselines and reused by default).")] = False,
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs", help="Fine-tuning epochs per iteration (early-stopped on validation).")] = 4,
    memory: Annotated[Optional[Path], typer.Option("--memory", help="Memory folder (default: $FAIRLOOP_HOME/memory, ~/.fairloop/memory).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Run folder (default: runs/<run id>).")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this folder after a crash.")] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Mitigate bias: measure, explain, analyze, generate counterfactuals, fine-tune, until fair."""
    from fairloop.errors import DataError
    from fairloop.runs import RunConfig, RunFolder

    console = _console()
    if resume is not None:
        folder = RunFolder(resume) if (resume / "config.json").is_file() else None
        if folder is None:
            raise DataError(f"{resume} is not a fairloop run folder (no config.json)",
                            "pass the folder that 'fairloop run --out' created")
        config = folder.load_config()
        console.print(f"resuming {folder.path}")
    else:
        from fairloop.llm import resolve_llm

        if root is None:
            root = _default_synthfaces(seed, console)
        if discover and protected is None:
            protected, baseline = _discover_protected(dataset, root, csv, target, generator, generator_model, baseline,
                                                      seed, device, console)
        protected = protected or "Gray_Hair"
        asked, llm = llm, resolve_llm(llm, llm_model)
        config = RunConfig(dataset=dataset, root=str(root.absolute()), csv=str(csv) if csv else None, target=target,
                           protected=protected, privileged_value=privileged, generator=generator,
                           generator_model=generator_model, strategy=strategy,
                           prompts=str(prompts.absolute()) if prompts else None, llm=llm,
                           llm_model=llm_model, llm_base_url=llm_base_url, max_iterations=max_iterations,
                           max_images=max_images, images_per_iteration=images_per_iteration,
                           first_batch=first_batch, accuracy_budget=accuracy_budget, stop_margin=stop_margin,
                           **_parse_band(fair_band),
                           baseline=str(baseline) if baseline else None, reuse_baseline=not fresh_baseline,
                           finetune_epochs=finetune_epochs, memory=str(memory) if memory else None, seed=seed,
                           device=device).validate()
        from fairloop.generators import make_generator

        # bad input fails before a run folder exists (the generator checks its weights without loading them)
        make_generator(config.generator, model=config.generator_model, device=config.device)
        if config.llm == "local":
            from fairloop.llm.local import check_available

            check_available()
        fell_to_rules = config.llm == "rules" and asked.strip().lower() == "auto"
        from fairloop.strategies import LLM_STRATEGIES

        uses_llm = config.strategy in LLM_STRATEGIES
        console.print(f"strategy: {config.strategy}" + (f" (language model: {config.llm})" if uses_llm else "")
                      + (" (no endpoint configured and no local LLM installed: pip install -e '.[local]')"
                         if fell_to_rules and config.strategy == "rules" else ""))
        data = _load(config.dataset, Path(config.root), csv)
        data.require_attribute(target, "target")
        data.require_attribute(protected, "protected")
        from fairloop.data.synthfaces import SUBTLE_TARGETS, is_synthfaces, read_cues

        if config.generator == "embedded" and not is_synthfaces(config.root):
            console.print("warning: the embedded generator draws 64×64 SynthFaces-like faces, not photos like these; "
                          "for real photos use --generator sd --generator-model PATH_OR_ID on a GPU")
        elif config.generator == "embedded" and read_cues(config.root) == "subtle":
            console.print(f"warning: this SynthFaces folder has subtle cues, and the embedded generator learned salient "
                          f"ones: its {', '.join(SUBTLE_TARGETS)} look plainer than this data's; "
                          "--generator render draws them exactly")
        out = check_destination(out or Path("runs") / config.run_id(), folder=True)
        if (out / "config.json").exists():
            raise DataError(f"{out} already holds a run", f"continue it with --resume {out}, or choose another --out")
        folder = RunFolder(out)
        folder.save_config(config)
    _run_with_progress(config, folder)


def _discover_protected(dataset, root, csv, target, generator, generator_model, baseline, seed, device, console):
    """``fairloop run --discover``: the baseline's weakness report (trained first when there is no
    --baseline) in ``runs/weaknesses-…``; its worst attribute beyond the noise becomes the protected
    attribute, and the baseline the run starts from."""
    from fairloop.data.synthfaces import is_synthfaces
    from fairloop.generators import make_generator
    from fairloop.report.weakness_html import write_weaknesses
    from fairloop.runs.steps import DISCOVERY_PER_EDIT
    from fairloop.vision.models import load_checkpoint, resolve_device
    from fairloop.vision.train import TrainConfig
    from fairloop.weakness import discover as find

    data = _load(dataset, root, csv)
    data.require_attribute(target, "target")
    folder = Path("runs") / f"weaknesses-{data.fingerprint()[:10]}-{target}-s{seed}"
    if baseline is None:
        baseline = folder / "baseline"
        if not baseline.with_suffix(".safetensors").is_file():
            console.print(f"--discover: training the baseline first ({baseline})")
            _train_and_save(data, target, TrainConfig(seed=seed, device=device), baseline)
    net, meta = load_checkpoint(baseline, resolve_device(device))
    backend = make_generator(generator, model=generator_model, device=device)
    oracle = None
    if not backend.exact and is_synthfaces(data.root):
        from fairloop.tools.quality import AttributeOracle

        oracle = AttributeOracle.packaged()
    console.print(f"--discover: looking for the baseline's weaknesses with the {generator} generator")
    with _progress() as progress:
        report = find(net, data, backend, target=target, out_dir=folder, oracle=oracle, per_edit=DISCOVERY_PER_EDIT,
                      image_size=meta.get("image_size", 64), seed=seed, progress=progress)
    paths = write_weaknesses(report.as_dict(), folder)
    weak = [a for a in report.attributes() if a["significant"]]
    if not weak:
        raise FairloopError(f"no edit costs the baseline accuracy beyond the noise ({paths['html']})",
                            "there is nothing to repair; or name the attribute with --protected")
    top = weak[0]
    console.print(f"--discover: {top['attribute']} is the worst weakness ({_attribute_line(top)}); repairing it as "
                  f"the protected attribute. Report: {paths['html']}", markup=False)
    return top["attribute"], baseline.absolute()


def _parse_band(text: str) -> dict[str, float]:
    from fairloop.errors import ConfigError

    try:
        di_low, di_high, max_abs_diff = (float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--fair-band {text!r} is not three numbers", "use DI_LOW,DI_HIGH,MAX_ABS_DIFF, e.g. 0.8,1.25,0.05") from None
    if not 0 < di_low <= 1 <= di_high or max_abs_diff <= 0:
        raise ConfigError(f"--fair-band {text!r} does not contain perfect fairness (DI 1, differences 0)",
                          "use DI_LOW ≤ 1 ≤ DI_HIGH and a positive MAX_ABS_DIFF")
    return {"di_low": di_low, "di_high": di_high, "max_abs_diff": max_abs_diff}


def _default_synthfaces(seed: int, console) -> Path:
    from fairloop.data.synthfaces import write_synthfaces

    root = Path("data") / "synthfaces"
    if (root / "list_attr_celeba.txt").exists():
        return root
    console.print(f"no --root given: synthesizing SynthFaces' default scenario into {root}")
    with _progress() as progress:
        write_synthfaces(root, seed=seed, progress=lambda done, total: progress("render", done, total))
    return root


def _run_with_progress(config, folder) -> None:
    from fairloop.graphs.loop import run_loop
    from fairloop.runs import RunServices

    console = _console()
    say = _plain(console)

    def log(line: str) -> None:  # the terminal and RUN/run.log
        say(line)
        folder.append_log(line)

    with _progress(folder.append_log) as progress:
        services = RunServices(config, folder, progress=progress, log=log)
        state = run_loop(services)
    initial, final = state["initial"]["test"], state["current"]["test"]
    from rich.table import Table

    table = Table(title=f"{config.target} vs {config.protected}: test split, start → final")
    for column in ("metric", "start", "final"):
        table.add_column(column, justify="right" if column != "metric" else "left")
    for key in ("accuracy", "worst_group_accuracy", "disparate_impact", "statistical_parity_difference",
                "equal_opportunity_difference", "average_odds_difference"):
        fmt = lambda v: "undefined" if v is None else f"{v:.4f}"  # noqa: E731
        table.add_row(key, fmt(initial[key]), fmt(final[key]))
    console.print(table)
    console.print(state["status"])
    console.print(f"wrote {folder.path / 'summary.json'} and {folder.path / 'report.html'}")


@app.command()
def experiment(
    out: Annotated[Optional[Path], typer.Option("--out", help="Experiment folder to create.")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue this experiment folder: only jobs without a result run; --arms, --seeds and --scenario may add jobs.")] = None,
    root: Annotated[Optional[Path], typer.Option("--root", help="A CelebA-format folder to use; without it each scenario is synthesized as SynthFaces inside the experiment folder.")] = None,
    dataset: DatasetOpt = "celeba",
    csv: CsvOpt = None,
    target: Annotated[str, typer.Option("--target")] = "Male",
    protected: Annotated[str, typer.Option("--protected")] = "Gray_Hair",
    correlation: Annotated[float, typer.Option("--correlation", help="SynthFaces: P(protected == target) in the training split.")] = 0.95,
    scenario: Annotated[Optional[list[str]], typer.Option("--scenario", help="TARGET:PROTECTED[:CORRELATION], repeatable: a grid of scenarios instead of --target/--protected/--correlation.")] = None,
    arms: Annotated[Optional[str], typer.Option("--arms", help="Comma-separated arms: erm, realft, resampling, reweighing, groupdro, dfr, and the strategies rules, llm, llm-raw, manual, manual-min, random, scm, scm-true (SynthFaces only), lance, aip (SynthFaces only). Default: every arm that needs no language model, plus llm and llm-raw when one is available and manual with --prompts.")] = None,
    seeds: Annotated[Optional[str], typer.Option("--seeds", help="Comma-separated seeds; each gets one ERM model that every arm starts from. Default: 0,1,2.")] = None,
    generator: Annotated[str, typer.Option("--generator", help="render (the SynthFaces oracle: minutes), embedded (fairloop's diffusion model: hours on two cores) or sd.")] = "render",
    generator_model: Annotated[Optional[str], typer.Option("--generator-model", help="sd: a diffusers folder or a cached hub id.")] = None,
    protocol: Annotated[str, typer.Option("--protocol", help="fixed: one round, every image arm makes --images images with the same fine-tune; loop: the whole fairloop run with --images as its budget.")] = "fixed",
    images: Annotated[int, typer.Option("--images", help="Generated images per job (fixed) or per run (loop).")] = 2000,
    mix_ratio: Annotated[Optional[float], typer.Option("--mix-ratio", help="fixed: the share of generated images in fine-tuning, the same for every arm (default: their share of the training split plus them).")] = None,
    reference: Annotated[str, typer.Option("--reference", help="The arm paired differences are taken against.")] = "erm",
    prompts: Annotated[Optional[Path], typer.Option("--prompts", help="The manual arm's descriptions: 'LABEL: description' lines.")] = None,
    llm: Annotated[str, typer.Option("--llm", help="Language model of the llm arms: auto, local or openai.")] = "auto",
    llm_model: Annotated[Optional[str], typer.Option("--llm-model", help="Model name for --llm openai.")] = None,
    llm_base_url: Annotated[Optional[str], typer.Option("--llm-base-url", help="Endpoint (default: $OPENAI_BASE_URL).")] = None,
    n: Annotated[int, typer.Option("--n", help="SynthFaces images per scenario.")] = 12000,
    finetune_epochs: Annotated[int, typer.Option("--finetune-epochs")] = 2,
    baseline_epochs: Annotated[int, typer.Option("--baseline-epochs")] = 8,
    threads: Annotated[int, typer.Option("--threads", help="torch threads (and Ray CPUs) of every job; recorded, since thread counts change float rounding.")] = 2,
    executor: Annotated[str, typer.Option("--executor", help="local: jobs one after another in this process; ray: one Ray task per job (pip install -e '.[ray]').")] = "local",
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="An existing Ray cluster (e.g. ray://head:10001 or auto); default: a local Ray started for this experiment.")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Compare counterfactual strategies and debiasing baselines: arms × seeds × scenarios, with 95 % CIs."""
    from dataclasses import replace

    from fairloop.errors import ConfigError
    from fairloop.experiments import BASIC_ARMS, ExperimentConfig, ScenarioSpec, open_experiment, run_experiment
    from fairloop.experiments.config import load_experiment
    from fairloop.strategies import LLM_STRATEGIES

    console = _console()
    if (out is None) == (resume is None):
        raise ConfigError("say where the experiment goes", "pass --out EXP for a new one, or --resume EXP to continue one")
    check_destination(out or resume, folder=True)
    try:
        seed_list = tuple(int(s) for s in (seeds or "").split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--seeds {seeds!r} is not a list of numbers", "use e.g. --seeds 0,1,2") from None
    arm_list = tuple(a.strip() for a in (arms or "").split(",") if a.strip())
    if resume is not None:  # only arms, seeds and scenarios may change: they add jobs
        stored = load_experiment(resume)
        specs = tuple(ScenarioSpec.parse(s, synthetic=stored.root is None) for s in scenario or ())
        config = replace(stored, arms=arm_list or stored.arms, scenarios=specs or stored.scenarios,
                         seeds=seed_list or stored.seeds)
    else:
        from fairloop.llm import resolve_llm

        llm_kind = resolve_llm(llm, llm_model)
        specs = tuple(ScenarioSpec.parse(s, synthetic=root is None) for s in scenario or ()) or (
            ScenarioSpec(target, protected, correlation if root is None else None),)
        default_arms = (*BASIC_ARMS, *(("llm", "llm-raw") if llm_kind != "rules" else ()), *(("manual",) if prompts else ()))
        config = ExperimentConfig(
            arms=arm_list or default_arms, seeds=seed_list or (0, 1, 2), scenarios=specs, dataset=dataset,
            root=str(root.absolute()) if root else None, csv=str(csv) if csv else None, n=n, generator=generator,
            generator_model=generator_model, protocol=protocol, images=images, mix_ratio=mix_ratio,
            reference=reference, llm=llm_kind, llm_model=llm_model, llm_base_url=llm_base_url,
            prompts=str(prompts.absolute()) if prompts else None, baseline_epochs=baseline_epochs,
            finetune_epochs=finetune_epochs, threads=threads, device=device)
    folder = out or resume
    config = open_experiment(folder, config, resume=resume is not None)
    if config.llm == "local" and any(a in LLM_STRATEGIES for a in config.arms):
        from fairloop.llm.local import check_available

        check_available()
    with _progress() as progress:
        summary = run_experiment(config, folder, executor=executor, ray_address=ray_address, progress=progress,
                                 log=_plain(console))
    console.print((folder / "table.md").read_text(), markup=False, highlight=False)
    console.print(f"wrote {folder / 'results.csv'}, {folder / 'table.md'} and {folder / 'report.html'} "
                  f"({summary['jobs']} jobs)")


@app.command()
def chat(
    run_dir: Annotated[Optional[Path], typer.Option("--run", help="Run folder to work in: an existing run (its final model becomes the current one) or a new folder.")] = None,
    thread: Annotated[Optional[str], typer.Option("--thread", help="Resume this thread (it remembers its run), or name a new one.")] = None,
    llm: Annotated[str, typer.Option("--llm", help="auto (an endpoint when --llm-model/$FAIRLOOP_LLM_MODEL is set, else the packaged local LLM), local or openai.")] = "auto",
    llm_model: Annotated[Optional[str], typer.Option("--llm-model", help="Model name on the OpenAI-compatible endpoint.")] = None,
    llm_base_url: Annotated[Optional[str], typer.Option("--llm-base-url", help="Endpoint (default: $OPENAI_BASE_URL).")] = None,
    root: Annotated[Optional[Path], typer.Option("--root", help="New run: dataset folder (default: SynthFaces in data/synthfaces).")] = None,
    dataset: DatasetOpt = "celeba",
    target: Annotated[str, typer.Option("--target", help="New run: the attribute the classifier predicts.")] = "Male",
    protected: Annotated[str, typer.Option("--protected", help="New run: the protected attribute.")] = "Gray_Hair",
    generator: Annotated[str, typer.Option("--generator", help="New run: embedded, sd or render.")] = "embedded",
    confirm_over: Annotated[int, typer.Option("--confirm-over", help="Ask before generating more images than this.")] = 10,
    max_images: Annotated[int, typer.Option("--max-images", help="Image budget of the thread.")] = 2000,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Token budget of the thread.")] = 300_000,
    max_minutes: Annotated[Optional[float], typer.Option("--max-minutes", help="Wall-time budget of this session.")] = None,
    max_steps: Annotated[int, typer.Option("--max-steps", help="Model calls per message before it must answer.")] = 8,
    yes: Annotated[bool, typer.Option("--yes", help="Approve every expensive step without asking.")] = False,
    export: Annotated[Optional[Path], typer.Option("--export", help="Write the transcript of --thread to this file and exit.")] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """A bias-debugging conversation: an agent that audits, explains, recalls, generates, fine-tunes and compares."""
    from fairloop.chat.agent import Budgets, ChatAgent
    from fairloop.chat.session import ChatSession, check_thread_id, new_thread_id, open_checkpointer, saved_run
    from fairloop.chat.terminal import chat_loop
    from fairloop.chat.tools import Workspace
    from fairloop.errors import ConfigError, DataError
    from fairloop.llm import make_chat_model, resolve_llm
    from fairloop.runs import RunConfig, RunFolder, RunServices

    console = _console()
    if min(confirm_over, max_images, max_tokens, max_steps) < 0 or max_steps < 1:
        raise ConfigError("--confirm-over, --max-images and --max-tokens must be ≥ 0 and --max-steps ≥ 1",
                          "e.g. --max-images 2000 --max-steps 8")
    checkpointer = open_checkpointer()
    thread = check_thread_id(thread) if thread else new_thread_id()
    saved = saved_run(checkpointer, thread)
    if saved and run_dir is not None and Path(saved).resolve() != run_dir.resolve():
        raise ConfigError(f"thread {thread} works in {saved}, not {run_dir}", "leave out --run to resume it, or start a new thread")
    if export is not None:
        check_destination(export, folder=False, option="--export")
        if not saved:
            raise DataError(f"there is no thread {thread!r} to export", "pass the id that 'fairloop chat' printed")
    if export is None:  # the language model first: a missing one fails before a run folder exists
        kind = resolve_llm(llm, llm_model)
        if kind == "rules":
            raise ConfigError("the chat needs a language model, and none is installed or configured",
                              "install the packaged local LLM (.venv/bin/pip install -e '.[local]') or pass "
                              "--llm openai --llm-model NAME with OPENAI_BASE_URL/OPENAI_API_KEY")
        model, where, scrub = make_chat_model(kind, model=llm_model, base_url=llm_base_url)
    folder_path = Path(saved) if saved else run_dir
    if folder_path is not None and (folder_path / "config.json").is_file():
        folder = RunFolder(folder_path)
        config = folder.load_config()
    elif saved:
        raise DataError(f"thread {thread}'s run folder {saved} is gone", "start a new thread")
    else:
        root = root or _default_synthfaces(seed, console)
        config = RunConfig(dataset=dataset, root=str(root.absolute()), target=target, protected=protected,
                           generator=generator, seed=seed, device=device).validate()
        data = _load(config.dataset, Path(config.root), None)
        data.require_attribute(target, "target")
        data.require_attribute(protected, "protected")
        folder = RunFolder(folder_path or Path("runs") / f"chat-{config.run_id()[4:]}")
        folder.save_config(config)
    services = RunServices(config, folder, progress=_line_progress(console), log=_plain(console))
    workspace = Workspace(services, confirm_images=confirm_over, max_images=max_images)
    if export is not None:
        session = ChatSession(ChatAgent(_NoModel(), workspace), thread, checkpointer)
        console.print(f"wrote {session.save_transcript(export)}")
        return
    budgets = Budgets(max_steps=max_steps, max_tokens=max_tokens,
                      max_seconds=None if max_minutes is None else max_minutes * 60)
    agent = ChatAgent(model, workspace, budgets=budgets, auto_approve=yes, where=where, scrub=scrub)
    chat_loop(ChatSession(agent, thread, checkpointer), console)


class _NoModel:
    """Stands in for a chat model where none is called (exporting a transcript)."""

    def bind_tools(self, tools):
        return self


def _line_progress(console):
    """Progress lines at each quarter of a stage, with an ETA (a live bar would fight the prompt)."""
    from fairloop.progress import ProgressLines

    return ProgressLines(lambda line: console.print(f"[dim]  {line}[/]", highlight=False), steps=4,
                         every_seconds=float("inf"))


# ------------------------------------------------------------------------------------ generation
@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help='What to draw, e.g. "a woman with gray hair".')],
    n: Annotated[int, typer.Option("-n", "--n", help="Number of images.")] = 16,
    generator: Annotated[str, typer.Option("--generator", help="embedded, sd or render.")] = "embedded",
    model: Annotated[Optional[str], typer.Option("--model", help="sd: a diffusers folder or cached hub id; embedded: other trained weights.")] = None,
    negative: Annotated[str, typer.Option("--negative", help="Negative prompt.")] = "",
    from_image: Annotated[Optional[Path], typer.Option("--from-image", help="Edit this image instead of drawing new ones (image-to-image).")] = None,
    strength: Annotated[Optional[float], typer.Option("--strength", help="Image-to-image: how far the source may change (0-1).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Denoising steps.")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help="Classifier-free guidance scale.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for the images, grid.png and manifest.json.")] = Path("fairloop-generate"),
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Generate counterfactual images from a prompt; writes a grid and the manifest."""
    from fairloop.tools.generate import generate_to_folder

    console = _console()
    check_destination(out, folder=True)
    with _progress() as progress:
        paths = generate_to_folder(prompt, n=n, generator=generator, model=model, negative_prompt=negative,
                                   from_image=from_image, strength=strength, steps=steps, guidance=guidance,
                                   out=out, seed=seed, device=device, progress=progress)
    for note in paths["notes"]:
        console.print(f"  {note}", markup=False)
    console.print(f"wrote {n} images, {paths['grid']} and {paths['manifest']}")



@app.command()
def scm(
    caption: Annotated[str, typer.Argument(help='The person to reason about, e.g. "a young woman with gray hair and eyeglasses".')],
    intervene: Annotated[Optional[str], typer.Option("--intervene", help="The intervention, ATTRIBUTE=0|1 (default: the model picks one the caption states).")] = None,
    llm: Annotated[str, typer.Option("--llm", help="Who writes the graph: auto, local (the packaged LLM), openai, or true (SynthFaces' true graph, no model).")] = "auto",
    llm_model: Annotated[Optional[str], typer.Option("--llm-model", help="Model name for --llm openai.")] = None,
    llm_base_url: Annotated[Optional[str], typer.Option("--llm-base-url", help="Endpoint (default: $OPENAI_BASE_URL).")] = None,
    dataset: DatasetOpt = "celeba",
    root: Annotated[Optional[Path], typer.Option("--root", help="A dataset folder: its attributes are the vocabulary and its table fits the mechanisms (default: SynthFaces).")] = None,
    csv: CsvOpt = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the SCM as JSON here.")] = None,
    draw: Annotated[Optional[Path], typer.Option("--draw", help="Draw the graph as a PNG here (the intervened variable boxed).")] = None,
    seed: SeedOpt = 0,
) -> None:
    """Build a structural causal model from a caption (seed 003), check it, intervene, and write the
    counterfactual caption: variables, edges, intervention, counterfactual_caption, modified_edges."""
    from fairloop.llm import resolve_llm
    from fairloop.scm.builder import build_scm, result_json

    for option, path in (("--json", json_path), ("--draw", draw)):
        if path is not None:
            check_destination(path, folder=False, option=option)
    kind = resolve_llm(llm, llm_model)
    if kind == "rules":  # auto without a language model: the true graph is the one fairloop knows
        kind = "true"
    vocabulary, table = None, None
    if root is not None:
        data = _load(dataset, root, csv)
        vocabulary, table = list(data.attributes), data.split("train").table
    result = build_scm(caption, llm=kind, llm_model=llm_model, llm_base_url=llm_base_url, vocabulary=vocabulary,
                       intervention=intervene, table=table, seed=seed)
    console = _console()
    say = _plain(console)
    say(f"SCM of {caption!r} by {result.backend} ({result.attempts} attempt{'s' * (result.attempts != 1)}, "
        f"{result.seconds:.1f} s)")
    answer = result.answer
    if answer is not None:
        say("variables: " + ", ".join(answer.variables) + (f"  (free: {', '.join(result.free_variables)})"
                                                           if result.free_variables else ""))
        for cause, effect in answer.edges:
            cut = [cause, effect] not in answer.modified_edges
            say(f"  {cause} → {effect}" + ("   (cut by the intervention)" if cut else ""))
        say(f"do({answer.intervention.variable} = {answer.intervention.value}): {answer.counterfactual_caption}")
        if result.change_rates:
            say("  also changes, among the people the caption describes: " + ", ".join(
                f"{k} {v:.0%}" for k, v in sorted(result.change_rates.items(), key=lambda kv: -kv[1])))
        if result.shd is not None:
            say(f"structural Hamming distance to SynthFaces' true graph: {result.shd}")
    if json_path is not None:
        from fairloop.io import atomic_write_text

        atomic_write_text(json_path, result_json(result))
        say(f"wrote {json_path}")
    if draw is not None and answer is not None:
        result.graph.draw(draw, highlight=[answer.intervention.variable], title=caption)
        say(f"wrote {draw}")
    if not result.valid:
        raise FairloopError("the SCM was not usable after "
                            f"{result.attempts} attempt{'s' * (result.attempts != 1)}: " + "; ".join(result.problems),
                            "try another --llm or model, or a caption that names attributes of the vocabulary")

@generator_app.command("train")
def generator_train(
    out: Annotated[Optional[Path], typer.Option("--out", help="Where the trained generator goes (default: the package's own weights, replaced atomically).")] = None,
    work: Annotated[Path, typer.Option("--work", help="Work folder: data pool and checkpoints; run again to resume.")] = Path("fairloop-generator-work"),
    n: Annotated[int, typer.Option("--n", help="Renders in the unbiased training pool.")] = 24000,
    ae_steps: Annotated[int, typer.Option("--ae-steps", help="Autoencoder steps (batch 32).")] = 5000,
    decoder_steps: Annotated[int, typer.Option("--decoder-steps", help="Decoder-only fine-tuning steps (batch 32).")] = 1500,
    unet_steps: Annotated[int, typer.Option("--unet-steps", help="UNet steps (batch 32).")] = 8000,
    threads: Annotated[int, typer.Option("--threads", help="torch threads (1 is faster when the machine is busy).")] = 2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the training pool.")] = 20261123,
) -> None:
    """Train the embedded generator from scratch, resumably (about 6 hours on one CPU core)."""
    from fairloop.diffusion.training import ASSETS, GeneratorTrainConfig, train_generator

    check_destination(work, folder=True, option="--work")
    check_destination(out or ASSETS, folder=True)  # hours of training must not end on a read-only folder
    console = _console()
    config = GeneratorTrainConfig(n_images=n, data_seed=seed, ae_steps=ae_steps, decoder_steps=decoder_steps,
                                  unet_steps=unet_steps, threads=threads)
    train_generator(config, work, out, log=_plain(console))


@generator_app.command("distil")
def generator_distil(
    model: Annotated[Optional[Path], typer.Option("--model", help="The generator folder to distil (default: the packaged one).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Where the generator with its distilled UNet goes (default: --model's folder, replaced atomically).")] = None,
    work: Annotated[Path, typer.Option("--work", help="Work folder: data pool and checkpoints; run again to resume.")] = Path("fairloop-distil-work"),
    n: Annotated[int, typer.Option("--n", help="Renders in the distillation pool.")] = 6000,
    steps: Annotated[int, typer.Option("--steps", help="Distillation steps (batch 32).")] = 2000,
    threads: Annotated[int, typer.Option("--threads", help="torch threads (1 is faster when the machine is busy).")] = 2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the distillation pool.")] = 20261207,
) -> None:
    """Guidance-distil the embedded generator's UNet: one pass per sampling step instead of two (about an hour on two CPU cores)."""
    from fairloop.diffusion.training import ASSETS, DistilConfig, distil_guidance
    from fairloop.errors import ConfigError

    if n < 32 or steps < 1:
        raise ConfigError(f"--n {n} / --steps {steps} leave nothing to distil on", "use --n 32 or more and --steps 1 or more")
    check_destination(work, folder=True, option="--work")
    check_destination(out or model or ASSETS, folder=True)
    config = DistilConfig(n_images=n, steps=steps, threads=threads, data_seed=seed)
    distil_guidance(config, model, work, out, log=_plain(_console()))


@generator_app.command("train-oracle")
def generator_train_oracle(
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for oracle.safetensors + oracle.json (default: the package's own).")] = None,
    n: Annotated[int, typer.Option("--n", help="Renders to learn from (10 % are held out for its scores).")] = 20000,
    epochs: Annotated[int, typer.Option("--epochs")] = 12,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Train the attribute oracle that checks generated SynthFaces images (about 25 min on 1 CPU core)."""
    from fairloop.tools.quality import PACKAGED_ORACLE, train_oracle

    check_destination(out or PACKAGED_ORACLE, folder=True)
    console = _console()
    with _progress() as progress:
        oracle = train_oracle(n=n, epochs=epochs, seed=seed, device=device, progress=progress)
    folder = oracle.save(out or PACKAGED_ORACLE)
    worst = min(oracle.balanced_scores.items(), key=lambda kv: kv[1] if kv[1] is not None else 1.0)
    console.print(f"wrote {folder}; held-out balanced accuracy: lowest {worst[0]} {worst[1]:.3f}")


@generator_app.command("train-aip")
def generator_train_aip(
    out: Annotated[Optional[Path], typer.Option("--out", help="Where the trained generator goes (default: the package's own, replaced atomically).")] = None,
    work: Annotated[Path, typer.Option("--work", help="Work folder: rendered pairs and checkpoints; run again to resume.")] = Path("fairloop-aip-work"),
    n: Annotated[int, typer.Option("--n", help="Identities, each rendered with natural and with random attributes.")] = 12000,
    steps: Annotated[int, typer.Option("--steps", help="Training steps (batch 32).")] = 5000,
    threads: Annotated[int, typer.Option("--threads", help="torch threads (1 is faster when the machine is busy).")] = 2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the rendered pairs.")] = 20261206,
) -> None:
    """Train AIP's attribute-conditional autoencoder (seed 002) from SynthFaces renders, resumably."""
    from fairloop.aip.generator import PACKAGED_AIP, AIPTrainConfig, train_aip_generator
    from fairloop.errors import ConfigError

    if n <= 512 or steps < 1:
        raise ConfigError(f"--n {n} / --steps {steps} leave nothing to train on",
                          "use --n above 512 (the first 512 identities are held out for the scores) and --steps 1 or more")
    check_destination(work, folder=True, option="--work")
    check_destination(out or PACKAGED_AIP, folder=True)
    config = AIPTrainConfig(n_identities=n, steps=steps, threads=threads, data_seed=seed)
    train_aip_generator(config, work, out, log=_plain(_console()))


#: Write failures a user can fix (full disk, quota, read-only or forbidden folder), not fairloop bugs.
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
#: The same, as sqlite words them (checkpoint and thread databases).
_SQLITE_DISK_ERRORS = ("disk is full", "readonly database", "disk I/O error")


def main() -> None:
    """Entry point: run the app, turning user errors into two readable lines and exit code 2."""
    import warnings

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        from rich.markup import escape  # a plain line, not Python's "file.py:65: UserWarning" and source line

        _console().print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False)

    warnings.showwarning = show_warning
    try:
        app()
    except FairloopError as exc:
        from rich.markup import escape

        console = _console()  # the messages are plain text: "[local]" must not be read as markup
        console.print(f"[bold red]error:[/] {escape(exc.problem)}", highlight=False)
        if exc.fix:
            console.print(f"[bold]fix:[/] {escape(exc.fix)}", highlight=False)
        sys.exit(2)
    except (OSError, sqlite3.OperationalError) as exc:
        if isinstance(exc, OSError) and exc.errno in _DISK_ERRORS:
            problem = f"cannot write {exc.filename or 'a file'}: {exc.strerror or exc}"
        elif isinstance(exc, sqlite3.OperationalError) and any(w in str(exc) for w in _SQLITE_DISK_ERRORS):
            problem = f"cannot write the state database: {exc}"
        else:
            raise
        from rich.markup import escape

        console = _console()
        console.print(f"[bold red]error:[/] {escape(problem)}", highlight=False)
        console.print("[bold]fix:[/] free space or make the folder writable (or choose another --out), then run the "
                      "same command again: files are written whole, and finished steps are kept", highlight=False)
        sys.exit(2)
    except (KeyboardInterrupt, SystemExit) as exc:  # typer turns Ctrl-C into a silent exit 130
        if isinstance(exc, SystemExit) and exc.code != 130:
            raise
        _console().print("interrupted: finished steps are kept; to continue, run the same command again "
                         "('fairloop run --resume RUN', 'fairloop experiment --resume EXP')", highlight=False)
        sys.exit(130)


if __name__ == "__main__":
    main()
