"""The chat agent's tools: every fairloop capability, over one run folder.

A tool takes validated arguments and the thread's workspace state (current model, generated sets,
fine-tuned models, images used) and returns a :class:`ToolOutcome`: a compact JSON text for the
model (long data goes to files in the run folder, and the text names them) and a state update.
Arguments come from a language model, so they are data: model names must be ones this thread
knows, run names must be sibling run folders, descriptions must be plain text. Nothing is run,
opened or written because a string said so.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from fairloop.errors import FairloopError
from fairloop.io import atomic_write
from fairloop.runs import MEMORY_KEYS, RunServices

#: Characters of a tool result shown to the model; the full result is in the run folder.
MAX_RESULT = 2400
_RUN_NAME = re.compile(r"^[A-Za-z0-9._-]{1,80}$")


class ToolError(Exception):
    """A tool call that cannot run as asked: the message goes back to the model, which can fix it."""


@dataclass
class ToolOutcome:
    result: dict[str, Any]
    update: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)     # paths shown to the user (grids, reports)

    def full_text(self) -> str:
        return json.dumps(self.result, default=str, separators=(", ", ": "))

    @property
    def cut(self) -> bool:
        """Whether the model sees only the head of the result."""
        return len(self.full_text()) > MAX_RESULT

    def text(self) -> str:
        """The result as the model sees it: compact JSON, its head when it is long."""
        text = self.full_text()
        return text if len(text) <= MAX_RESULT else text[:MAX_RESULT - 40] + ' … [cut; full result in the run folder]'


# --- arguments ---------------------------------------------------------------------------------
ModelRef = Field(default="current", max_length=40,
                 description='"current", "baseline", or a model id that an earlier tool result gave')


def _plain_text(value: str) -> str:
    """A description or caption checked as an analyzer's plan description is: plain text, bounded."""
    from fairloop.agent.schema import ClassPlan

    return ClassPlan(label=0, description=value, n_images=0).description


class AuditArgs(BaseModel):
    model: str = ModelRef
    split: Literal["val", "test"] = Field(default="val", description="val for decisions, test to report")


class ExplainArgs(BaseModel):
    model: str = ModelRef
    top: int = Field(default=8, ge=1, le=15, description="how many attributes to list")


class WeaknessArgs(BaseModel):
    model: str = ModelRef
    top: int = Field(default=8, ge=1, le=20, description="how many edits to list, worst first")


class SearchArgs(BaseModel):
    model: str = ModelRef
    mode: Literal["keep-label", "flip"] = Field(
        default="keep-label", description="keep-label: the class stays, so a flip is the model's mistake (fairness); "
                                          "flip: every attribute may move (seed 002)")
    n: int = Field(default=60, ge=5, le=300, description="validation images to search from")


class RecallArgs(BaseModel):
    query: str = Field(min_length=2, max_length=200, description="what to look for, e.g. 'Gray_Hair counterfactuals'")
    attribute: str | None = Field(default=None, max_length=40, description="only iterations that involved this attribute")


class SuggestArgs(BaseModel):
    max_images: int = Field(default=400, ge=1, le=5000, description="image budget of the plan")


class GenerateArgs(BaseModel):
    description: str = Field(min_length=3, max_length=300, description="what the images show, e.g. 'a woman with gray hair'")
    label: int | None = Field(default=None, ge=0, le=1,
                              description="the class the images belong to: 1 target present, 0 absent; "
                                          "default: the class the description names")
    n_images: int = Field(ge=1, le=2000, description="how many images")

    _plain = field_validator("description")(classmethod(lambda cls, value: _plain_text(value)))


class FinetuneArgs(BaseModel):
    mix_ratio: float = Field(default=0.25, ge=0.05, le=0.9, description="share of counterfactual images in training")
    epochs: int = Field(default=2, ge=1, le=10)
    sets: list[int] = Field(default_factory=list, max_length=20,
                            description="numbers of the generated sets to use; empty = all sets of this chat")


class CompareRunsArgs(BaseModel):
    runs: list[str] = Field(default_factory=list, max_length=10,
                            description="run folder names next to this run; empty = all of them")


class LoopArgs(BaseModel):
    max_iterations: int = Field(default=3, ge=1, le=8)
    max_images: int = Field(default=6000, ge=1, le=50000)


class ExperimentArgs(BaseModel):
    arms: list[str] = Field(default_factory=lambda: ["erm", "resampling", "random", "rules"], min_length=2,
                            max_length=12, description="arms to compare: erm, realft, resampling, reweighing, "
                                                       "groupdro, dfr, rules, llm, llm-raw, manual-min, random, "
                                                       "scm, scm-true, lance, aip")
    seeds: int = Field(default=3, ge=2, le=5, description="paired seeds (each trains one ERM model)")
    images: int = Field(default=500, ge=10, le=5000, description="generated images per image arm and seed")

    @field_validator("arms")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        from fairloop.experiments import ARMS

        unknown = [a for a in value if a not in ARMS or a == "manual"]
        if unknown or len(set(value)) != len(value):
            raise ValueError(f"arms must be distinct names from {', '.join(a for a in ARMS if a != 'manual')}; "
                             f"not {', '.join(unknown) or 'a repeated name'}")
        return value


class ScmArgs(BaseModel):
    caption: str = Field(min_length=3, max_length=200, description="the person, e.g. 'a young woman with gray hair'")
    intervene: str | None = Field(default=None, max_length=60,
                                  description="ATTRIBUTE=0 or ATTRIBUTE=1; default: one the caption states")
    graph: Literal["llm", "true"] = Field(default="llm", description="llm: this run's language model writes the "
                                          "graph; true: SynthFaces' own graph")

    _plain = field_validator("caption")(classmethod(lambda cls, value: _plain_text(value)))


class NoArgs(BaseModel):
    pass


# --- the workspace -----------------------------------------------------------------------------
def _compact(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: None if metrics.get(k) is None else round(float(metrics[k]), 4) for k in MEMORY_KEYS}


def _run_models(folder: Path) -> tuple[str | None, str | None]:
    """(initial, final) model of a finished run, from its summary; (None, None) for a new folder."""
    summary = folder / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        return data.get("initial_model"), data.get("final_model") or data.get("initial_model")
    return None, None


class Workspace:
    """What the tools share: the run's services (dataset, generator, memory) and its folder."""

    def __init__(self, services: RunServices, *, confirm_images: int = 10, max_images: int = 2000) -> None:
        self.services = services
        self.confirm_images = confirm_images
        self.max_images = max_images

    @property
    def folder(self) -> Path:
        return self.services.folder.path

    def initial_state(self, thread: str) -> dict[str, Any]:
        """The workspace part of a new thread: an attached run's final model is the current one."""
        initial, final = _run_models(self.folder)
        return {"thread": thread, "run": str(self.folder.resolve()), "model": final, "baseline": initial, "sets": [],
                "models": [], "images_used": 0}

    def resolve_model(self, ref: str, state: dict[str, Any]) -> str:
        """A model reference from the model's arguments → a checkpoint path inside the run."""
        ref = (ref or "current").strip()
        if ref in ("current", "baseline"):
            path = state.get("model") if ref == "current" else state.get("baseline")
            if not path:
                raise ToolError("there is no model yet: call audit first (it trains the baseline)")
            return path
        known = {Path(m).stem: m for m in [state.get("baseline"), state.get("model"),
                                           *(e["model"] for e in state.get("models", []))] if m}
        if ref not in known:
            raise ToolError(f"unknown model {ref!r}; known: current, baseline, {', '.join(known) or 'none'}")
        return known[ref]

    # --- the tools ---------------------------------------------------------------------------
    def audit(self, args: AuditArgs, state: dict[str, Any]) -> ToolOutcome:
        from fairloop.runs.steps import evaluate_model, train_baseline

        update: dict[str, Any] = {}
        if not state.get("model") and args.model in ("current", "baseline"):
            relative = train_baseline(self.services)
            update = {"model": relative, "baseline": relative}
            state = {**state, **update}
        relative = self.resolve_model(args.model, state)
        metrics = evaluate_model(self.services, relative)[args.split]
        check = self.services.config.band.check(metrics)
        groups = [{"group": g.get("name"), "n": g.get("n"), "accuracy": round(g["accuracy"], 3)}
                  for g in metrics.get("groups") or [] if isinstance(g.get("accuracy"), (int, float))]
        result = {"model": Path(relative).stem, "split": args.split, **_compact(metrics),
                  "worst_group": metrics.get("worst_group"), "groups": groups, "fair": check.inside}
        if check.outside:
            result["outside_band"] = check.outside
        if update:
            result["note"] = "there was no model: the baseline was trained first"
        return ToolOutcome(result, update)

    def explain(self, args: ExplainArgs, state: dict[str, Any]) -> ToolOutcome:
        from fairloop.runs.steps import explain_model

        relative = self.resolve_model(args.model, state)
        explanation = explain_model(self.services, relative)
        top = [{"attribute": name, "score": round(score, 4)} for name, score in explanation["as_list"][:args.top]]
        return ToolOutcome({"model": Path(relative).stem, "top_attributes": top,
                            "protected": explanation.get("protected"), "protected_rank": explanation.get("protected_rank"),
                            "sign": "a positive score pushes the prediction towards the target (label 1)"})

    def find_weaknesses(self, args: WeaknessArgs, state: dict[str, Any]) -> ToolOutcome:
        from fairloop.runs.steps import find_model_weaknesses

        relative = self.resolve_model(args.model, state)
        report = find_model_weaknesses(self.services, relative)
        target = self.services.config.target
        edits = [{"class": f"{target}={w['label']}", "edit": w["edit"], "delta_acc": w["delta_acc"],
                  "ci": w["ci"]["delta_acc"], "flip_rate": w["flip_rate"], "n": w["n"],
                  "beyond_noise": w["significant"]} for w in report["weaknesses"][:args.top]]
        return ToolOutcome({"model": Path(relative).stem, "split": report["split"], "worst_edits": edits,
                            "attributes": [a["attribute"] for a in report["attributes"][:5]],
                            "images_drawn": report.get("n_images"),
                            "meaning": "delta_acc: accuracy on the edited images minus on their sources (same "
                                       "class); negative means the model relies on the edited attribute"})

    def counterfactual_search(self, args: SearchArgs, state: dict[str, Any]) -> ToolOutcome:
        from fairloop.aip import counterfactual_search
        from fairloop.io import atomic_write_json

        relative = self.resolve_model(args.model, state)
        net, _ = self.services.load_model(relative)
        folder = self.folder / "aip" / f"{Path(relative).stem}-{args.mode}-{args.n}"
        report = counterfactual_search(net, self.services.dataset, self.services.config.target, n=args.n,
                                       mode=args.mode, split="val", out_dir=folder, seed=self.services.config.seed,
                                       log=lambda line: None)
        atomic_write_json(folder / "aip.json", report)
        aip = report["methods"]["aip"]
        return ToolOutcome({"model": Path(relative).stem, "mode": args.mode, "images": report["n"],
                            "flip_rate": aip["flip_rate"], "valid_flip_rate": aip["valid_flip_rate"],
                            "moved_most": aip["attributes"][:5],
                            "mean_abs_change": dict(list(aip.get("mean_abs_delta_a", {}).items())[:5]),
                            "report": str(folder / "aip.json"),
                            "meaning": "the attributes the search had to change to flip the model's decision "
                                       "(keep-label: with the class unchanged, so these are what it wrongly relies on)"},
                           files=[p["image"] for p in aip.get("pairs", [])[:4]])

    def recall(self, args: RecallArgs, state: dict[str, Any]) -> ToolOutcome:
        memory = self.services.memory
        if args.attribute:
            records = memory.for_attribute(args.attribute, k=5)
            lines = [r.recall_line() for r in records]
        else:
            lines = [r.record.recall_line() for r in memory.recall(args.query, k=5)]
        return ToolOutcome({"past_iterations": lines or ["nothing in memory matches"], "stored": len(memory)})

    def suggest(self, args: SuggestArgs, state: dict[str, Any]) -> ToolOutcome:
        from fairloop.agent.analyzer import RulesAnalyzer
        from fairloop.runs.steps import analyzer_context, evaluate_model, explain_model, train_groups

        relative = self.resolve_model("current", state)
        context = analyzer_context(self.services, evaluate_model(self.services, relative)["val"],
                                   explain_model(self.services, relative), train_groups=train_groups(self.services, []),
                                   max_images=args.max_images)
        decision = RulesAnalyzer().decide(context)
        return ToolOutcome({"counterfactuals_needed": decision.counterfactuals_needed,
                            "diagnosis": decision.diagnosis, "shortcut_attributes": decision.shortcut_attributes,
                            "plans": [p.model_dump() for p in decision.plans], "mix_ratio": decision.mix_ratio})

    def build_scm(self, args: ScmArgs, state: dict[str, Any]) -> ToolOutcome:
        from fairloop.scm.builder import build_scm

        cfg, data = self.services.config, self.services.dataset
        kind = "true" if args.graph == "true" or cfg.llm == "rules" else cfg.llm
        result = build_scm(args.caption, llm=kind, llm_model=cfg.llm_model, llm_base_url=cfg.llm_base_url,
                           vocabulary=list(data.attributes), intervention=args.intervene,
                           table=data.split("train").table, seed=cfg.seed)
        out: dict[str, Any] = {"valid": result.valid, "graph_by": result.backend, "problems": result.problems[:5]}
        files = []
        if result.answer is not None:
            answer = result.answer
            out |= {"edges": [f"{a} → {b}" for a, b in answer.edges],
                    "intervention": f"do({answer.intervention.variable} = {answer.intervention.value})",
                    "counterfactual_caption": answer.counterfactual_caption,
                    "also_changes": result.change_rates, "shd_to_true_graph": result.shd}
            number = len(list((self.folder / "scm").glob("*.png"))) + 1 if (self.folder / "scm").is_dir() else 1
            drawing = self.folder / "scm" / f"chat-{state.get('thread', 'chat')}-{number}.png"
            result.graph.draw(drawing, highlight=[answer.intervention.variable], title=args.caption)
            out["drawing"] = str(drawing)
            files.append(str(drawing))
        return ToolOutcome(out, files=files)

    def generate_label(self, args: GenerateArgs) -> int:
        """The class of the images: the one the description names (a "woman" is Male = 0), which
        an explicit label must agree with."""
        from fairloop.tools.prompt_parser import parse_prompt

        target = self.services.config.target
        stated = parse_prompt(args.description, self.services.dataset.attributes).edits.get(target)
        if args.label is None and stated is None:
            raise ToolError(f"say which class the images belong to: label 1 ({target}) or 0 (not {target})")
        if args.label is not None and stated is not None and stated != args.label:
            raise ToolError(f"the description '{args.description}' is of class {target}={stated}, but label is "
                            f"{args.label}; counterfactuals keep their class and change other attributes, so use "
                            f"label {stated} (or leave label out)")
        return stated if args.label is None else args.label

    def generate(self, args: GenerateArgs, state: dict[str, Any]) -> ToolOutcome:
        from fairloop.runs.steps import make_counterfactuals
        from fairloop.tools.generate import image_grid

        label = self.generate_label(args)
        if not state.get("model"):
            raise ToolError("call audit first: the chat needs the classifier and its data before generating")
        left = self.max_images - state.get("images_used", 0)
        if args.n_images > left:
            raise ToolError(f"the image budget of this chat has {left} of {self.max_images} images left; ask for fewer")
        number = len(state.get("sets", [])) + 1
        manifest = self.folder / "manifests" / f"chat-{state.get('thread', 'chat')}-{number}.json"
        plan = {"label": label, "description": args.description, "n_images": args.n_images}
        made = make_counterfactuals(self.services, [plan], seed_key=(self.services.config.seed, 1000 + number),
                                    manifest=manifest)
        rows = json.loads(manifest.read_text())["images"]
        grid = manifest.with_suffix(".png")
        if rows:
            image = image_grid([self.services.folder.resolve(r["path"]) for r in rows[:32]])
            atomic_write(grid, lambda tmp: image.save(tmp, format="PNG"))
        entry = {"set": number, "manifest": made["manifest"], "description": args.description, "label": label,
                 "kept": made["n"]}
        result = {"set": number, "label": label, "generated": made["made"], "kept": made["n"],
                  "preview": str(grid) if rows else None, "notes": made["notes"][:3]}
        if made["verification"]:
            result["verified"] = f"{made['verification']['passed']}/{made['verification']['checked']}"
        return ToolOutcome(result, {"sets": state.get("sets", []) + [entry],
                                    "images_used": state.get("images_used", 0) + made["made"]},
                           files=[str(grid)] if rows else [])

    def finetune(self, args: FinetuneArgs, state: dict[str, Any]) -> ToolOutcome:
        from fairloop.runs.steps import evaluate_model, finetune_model

        sets = state.get("sets", [])
        chosen = [s for s in sets if not args.sets or s["set"] in args.sets]
        if not chosen or not sum(s["kept"] for s in chosen):
            raise ToolError("no generated images to fine-tune on: call generate first"
                            + (f" (known sets: {[s['set'] for s in sets]})" if sets else ""))
        parent = self.resolve_model("current", state)
        relative, result = finetune_model(self.services, parent, [s["manifest"] for s in chosen], [],
                                          mix_ratio=args.mix_ratio, seed=self.services.config.seed + len(sets),
                                          role="chat fine-tune", epochs=args.epochs)
        before, after = evaluate_model(self.services, parent)["val"], evaluate_model(self.services, relative)["val"]
        entry = {"model": relative, "parent": parent, "sets": [s["set"] for s in chosen], "mix_ratio": args.mix_ratio,
                 "alpha": result.alpha, "val": _compact(after)}
        self._remember(state, chosen, before, after, result.alpha, args.mix_ratio)
        return ToolOutcome({"model": Path(relative).stem, "alpha": result.alpha, "val_before": _compact(before),
                            "val_after": _compact(after), "fair": self.services.config.band.check(after).inside,
                            "now_current": True},
                           {"model": relative, "models": state.get("models", []) + [entry]})

    def _remember(self, state, sets, before, after, alpha, mix_ratio) -> None:
        """A chat fine-tune is an iteration too: the memory answers "what did we try?" across runs and chats."""
        from fairloop.memory import IterationRecord

        cfg, services = self.services.config, self.services
        plans = [{"label": s["label"], "description": s["description"], "n_images": s["kept"]} for s in sets]
        services.memory.add(IterationRecord(
            run_id=f"{self.folder.name}/chat-{state.get('thread', 'chat')}", iteration=len(state.get("models", [])) + 1,
            dataset=services.dataset.name, target=cfg.target, protected=cfg.protected,
            scenario=f"chat on {self.folder.name}: {cfg.target} vs {cfg.protected}",
            metrics_before=_compact(before), metrics_after=_compact(after), importances=[],
            analyzer={"diagnosis": "chosen in a chat session", "plans": plans,
                      "shortcut_attributes": [], "change_attributes": []},
            generator=services.generator.name, n_generated=sum(s["kept"] for s in sets), mix_ratio=mix_ratio,
            alpha=alpha, accepted=True, outcome=f"chat fine-tune: worst-group accuracy "
                                                f"{_compact(before)['worst_group_accuracy']} → {_compact(after)['worst_group_accuracy']}"))

    def compare_models(self, args: NoArgs, state: dict[str, Any]) -> ToolOutcome:
        from fairloop.runs.steps import evaluate_model

        rows = []
        listed = [("baseline", state.get("baseline")), ("current", state.get("model")),
                  *((Path(m["model"]).stem, m["model"]) for m in state.get("models", []))]
        for name, relative in listed:
            if relative and relative not in [row["path"] for row in rows]:
                metrics = evaluate_model(self.services, relative)
                rows.append({"model": name, "path": relative, "current": relative == state.get("model"),
                             "val": _compact(metrics["val"]), "test": _compact(metrics["test"])})
        if not rows:
            raise ToolError("there is no model yet: call audit first")
        return ToolOutcome({"models": [{k: v for k, v in row.items() if k != "path"} for row in rows]})

    def compare_runs(self, args: CompareRunsArgs, state: dict[str, Any]) -> ToolOutcome:
        parent = self.folder.resolve().parent
        names = args.runs or sorted(p.name for p in parent.iterdir() if (p / "config.json").is_file())
        rows = []
        for name in names[:10]:
            if not _RUN_NAME.match(name) or not (parent / name / "config.json").is_file():
                raise ToolError(f"{name!r} is not a run folder next to this one; runs: "
                                + ", ".join(sorted(p.name for p in parent.iterdir() if (p / "config.json").is_file())))
            summary = parent / name / "summary.json"
            if not summary.is_file():
                rows.append({"run": name, "status": "unfinished (no summary.json)"})
                continue
            data = json.loads(summary.read_text())
            rows.append({"run": name, "status": data.get("status"), "start": _compact(data.get("initial", {})),
                         "final": _compact(data.get("final", {})), "iterations": len(data.get("iterations", []))})
        return ToolOutcome({"split": "test", "runs": rows})

    def run_loop(self, args: LoopArgs, state: dict[str, Any]) -> ToolOutcome:
        """The whole mitigation loop, started from the current model in a new run folder next to this one."""
        from dataclasses import replace

        from fairloop.graphs.loop import run_loop
        from fairloop.runs import RunFolder

        current = self.services.folder.resolve(self.resolve_model("current", state))
        config = replace(self.services.config, baseline=str(current), max_iterations=args.max_iterations,
                         max_images=args.max_images).validate()
        folder = RunFolder(self.folder.resolve().parent / f"{self.folder.name}-loop-{config.run_id()[4:]}")
        if not folder.config_file.exists():
            folder.save_config(config)
        services = RunServices(config, folder, progress=self.services.progress, log=self.services.log)
        final = run_loop(services)
        report = folder.path / final["report"]["report"]
        return ToolOutcome({"run": folder.path.name, "status": final["status"],
                            "start_test": _compact(final["initial"]["test"]),
                            "final_test": _compact(final["current"]["test"]), "report": str(report),
                            "iterations": [it["line"] for it in final.get("iterations", [])]},
                           files=[str(report)])


    def experiment_config(self, args: ExperimentArgs):
        """The experiment a chat asks for: the run's data, scenario and generator, the thread's arms."""
        from fairloop.experiments import ExperimentConfig, ScenarioSpec

        cfg = self.services.config
        arms = tuple(dict.fromkeys(["erm", *args.arms]))  # erm is the reference every difference is taken against
        return ExperimentConfig(arms=arms, seeds=tuple(range(args.seeds)),
                                scenarios=(ScenarioSpec(cfg.target, cfg.protected, None),), dataset=cfg.dataset,
                                root=cfg.root, csv=cfg.csv, generator=cfg.generator,
                                generator_model=cfg.generator_model, images=args.images, llm=cfg.llm,
                                llm_model=cfg.llm_model, llm_base_url=cfg.llm_base_url, arch=cfg.arch,
                                baseline_epochs=cfg.baseline_epochs, finetune_epochs=cfg.finetune_epochs,
                                device=cfg.device)

    def run_experiment(self, args: ExperimentArgs, state: dict[str, Any]) -> ToolOutcome:
        """A small fixed-protocol experiment on this run's data, in a folder next to the run; it
        answers "which strategy works best here?" with intervals, not with one run."""
        from fairloop.experiments import open_experiment, run_experiment

        config = self.experiment_config(args)
        try:
            config.validate()
        except FairloopError as error:
            raise ToolError(f"{error.problem} ({error.fix})") from None
        from fairloop.manifest import config_hash

        folder = self.folder.resolve().parent / f"{self.folder.name}-exp-{config_hash(config.as_dict())[:10]}"
        config = open_experiment(folder, config, resume=(folder / "experiment.json").exists())
        summary = run_experiment(config, folder, progress=self.services.progress, log=self.services.log)
        arms = []
        for s in summary["arms"]:
            wga = s["metrics"]["worst_group_accuracy"]
            entry = {"arm": s["arm"], "worst_group_accuracy": _interval(wga),
                     "accuracy": _interval(s["metrics"]["accuracy"]), "in_band": f"{s['in_band']}/{s['n']}"}
            if s["paired"]:
                diff = s["paired"]["worst_group_accuracy"]
                entry["vs_erm"] = {"difference": _interval(diff), "wins": f"{diff['wins']}/{diff['seeds']}",
                                   "within_noise": diff["within_noise"]}
            arms.append(entry)
        arms.sort(key=lambda e: -(e["worst_group_accuracy"]["mean"] or 0))
        return ToolOutcome({"experiment": folder.name, "split": "test", "seeds": args.seeds, "images": args.images,
                            "ranked_by_worst_group_accuracy": arms, "table": str(folder / "table.md"),
                            "report": str(folder / "report.html"),
                            "note": "means with 95 % t-intervals over seeds; a difference whose interval contains 0 "
                                    "is within the noise"}, files=[str(folder / "report.html")])


def _interval(interval: dict[str, Any]) -> dict[str, Any]:
    rounded = {k: None if interval[k] is None else round(float(interval[k]), 4) for k in ("mean", "low", "high")}
    return rounded | {"n": interval["n"]}


# --- the tool table ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ChatTool:
    name: str
    description: str
    args: type[BaseModel]
    run: Callable[[Workspace, Any, dict[str, Any]], ToolOutcome]
    #: the question to ask before running, or None when the call is cheap
    confirm: Callable[[Workspace, Any, dict[str, Any]], str | None] = lambda ws, args, state: None

    def spec(self) -> dict[str, Any]:
        """The OpenAI tool format that every chat model's ``bind_tools`` accepts."""
        schema = self.args.model_json_schema()
        schema.pop("title", None)
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": schema}}


def _confirm_audit(ws: Workspace, args: AuditArgs, state: dict[str, Any]) -> str | None:
    if state.get("model") or args.model not in ("current", "baseline"):
        return None
    epochs = ws.services.config.baseline_epochs
    return f"There is no classifier yet. Train the baseline ({ws.services.config.arch}, {epochs} epochs, a few minutes on CPU)?"


def _confirm_generate(ws: Workspace, args: GenerateArgs, state: dict[str, Any]) -> str | None:
    if args.n_images <= ws.confirm_images:
        return None
    try:
        label = ws.generate_label(args)
    except ToolError:
        return None          # the call fails without generating anything: nothing to approve
    return (f"Generate {args.n_images} images of '{args.description}' ({ws.services.config.target}={label}) with the "
            f"{ws.services.config.generator} generator?")


TOOLS = (
    ChatTool("audit", "Accuracy and fairness metrics (DI, SPD, EOD, AOD, worst group) of a model; trains the "
             "baseline first if there is none.", AuditArgs, Workspace.audit, _confirm_audit),
    ChatTool("explain", "LIME importance of each image attribute for the model's predictions: which attributes "
             "it relies on.", ExplainArgs, Workspace.explain),
    ChatTool("find_weaknesses", "What the model is weak at without being told (seed 001): every single-attribute "
             "edit of validation images, ranked by the accuracy it costs, with 95 % intervals.", WeaknessArgs,
             Workspace.find_weaknesses),
    ChatTool("counterfactual_search", "Which attribute changes flip the model (seed 002's AIP): searches an "
             "attribute-conditional generator's latent space for the smallest change that flips each validation "
             "image, and ranks the attributes it moved.", SearchArgs, Workspace.counterfactual_search),
    ChatTool("recall", "Search the memory of past runs and chats: what was tried before and how it turned out.",
             RecallArgs, Workspace.recall),
    ChatTool("suggest", "The rules analyzer's counterfactual plan for the current model: descriptions per class, "
             "counts and mix ratio.", SuggestArgs, Workspace.suggest),
    ChatTool("build_scm", "A structural causal model of a caption: its causal graph (drawn), an intervention, the "
             "counterfactual caption, and how often each effect changes (seed 003).", ScmArgs, Workspace.build_scm),
    ChatTool("generate", "Generate counterfactual images from a description; saves a preview grid.",
             GenerateArgs, Workspace.generate, _confirm_generate),
    ChatTool("finetune", "Fine-tune the current model with the generated images mixed in; the result becomes the "
             "current model.", FinetuneArgs, Workspace.finetune,
             lambda ws, a, s: f"Fine-tune the current model ({a.epochs} epochs, mix ratio {a.mix_ratio})?"),
    ChatTool("compare_models", "Validation and test metrics of the baseline and of every model fine-tuned in this "
             "chat.", NoArgs, Workspace.compare_models),
    ChatTool("compare_runs", "Start and final test metrics of finished mitigation runs.", CompareRunsArgs,
             Workspace.compare_runs),
    ChatTool("run_loop", "Run the autonomous mitigation loop from the current model (analyze, generate, "
             "fine-tune until fair) and write its report.", LoopArgs, Workspace.run_loop,
             lambda ws, a, s: f"Run the mitigation loop ({a.max_iterations} iterations, up to {a.max_images} images)?"),
    ChatTool("run_experiment", "Compare strategies and baselines on this run's data: each arm over several "
             "paired seeds (one ERM model each), with 95 % intervals; answers which strategy works best here.",
             ExperimentArgs, Workspace.run_experiment,
             lambda ws, a, s: f"Run an experiment: {len(set(['erm', *a.arms]))} arms × {a.seeds} seeds, "
                              f"{a.images} images per image arm, with the {ws.services.config.generator} generator "
                              "(each seed trains a baseline first)?"),
)
TOOLS_BY_NAME = {tool.name: tool for tool in TOOLS}


def call_tool(ws: Workspace, name: str, args: Any, state: dict[str, Any]) -> ToolOutcome:
    """Run one tool; every failure becomes a message the model can act on."""
    tool = TOOLS_BY_NAME[name]
    try:
        outcome = tool.run(ws, args, state)
    except ToolError as error:
        outcome = ToolOutcome({"error": str(error)})
    except FairloopError as error:
        outcome = ToolOutcome({"error": error.problem, "fix": error.fix})
    return outcome
