"""How good is each analyzer? Scores every backend on the fixed evaluation set (bench/analyzer_cases.py).

Usage: python bench/bench_analyzer.py [--backends rules,local[,openai]] [--llm-model M] [--json OUT]

Per backend and case: *valid* (the first answer parsed and passed validation), *usable* (some
answer did, so the rules fallback was not needed), *shortcut* (every true shortcut named; for a fair
model, no counterfactuals asked), *direction* (every class's description asks for the shortcut
values that argue against that class, read back by fairloop's prompt parser), *count* (total images in the
case's sensible range) and latency. Shortcut, direction and count score the backend's own usable
answer: a case that fell back to the rules scores 0 on them. openai needs OPENAI_BASE_URL/OPENAI_API_KEY and --llm-model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from analyzer_cases import CASES  # noqa: E402


def context(case):
    from fairloop.agent.schema import AnalyzerContext

    return AnalyzerContext(task=f"classify {case['target']} from {case['dataset']} images", target=case["target"],
                           protected=case["protected"], privileged_value=1, attributes=case["attributes"],
                           metrics=case["metrics"], importances=case["importances"],
                           train_groups=case["train_groups"], max_images=case["max_images"])


def score(case, result) -> dict:
    from fairloop.tools.prompt_parser import parse_prompt

    d = result.decision
    total = sum(p.n_images for p in d.plans) if d.counterfactuals_needed else 0
    if not case["shortcuts"]:
        shortcut = direction = not d.counterfactuals_needed
    else:
        shortcut = d.counterfactuals_needed and set(case["shortcuts"]) <= set(d.shortcut_attributes)
        vocabulary = case["attributes"] + [case["target"]]
        plans = {p.label: parse_prompt(p.description, vocabulary).edits for p in d.plans if p.n_images > 0}
        direction = d.counterfactuals_needed and bool(plans) and all(
            all(edits.get(a) == v for a, v in case["wanted"][label].items()) for label, edits in plans.items())
    lo, hi = case["images"]
    own = not result.fell_back   # a rules fallback is not the backend's answer: it scores nothing
    return {"case": case["name"], "valid": result.attempts == 1 and own,
            "usable": own, "shortcut": own and bool(shortcut), "direction": own and bool(direction),
            "count": own and lo <= total <= hi, "images": total, "seconds": result.seconds,
            "shortcuts": d.shortcut_attributes, "plans": [p.model_dump() for p in d.plans], "errors": result.errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="rules,local")
    parser.add_argument("--llm-model", default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from fairloop.agent.analyzer import make_analyzer

    table, details = [], {}
    for backend in args.backends.split(","):
        analyzer = make_analyzer(backend, model=args.llm_model)
        rows = []
        for case in CASES:
            t0 = time.perf_counter()
            rows.append(score(case, analyzer.analyze(context(case))))
            print(f"{backend:<7} {time.perf_counter() - t0:6.1f} s  {case['name']}: "
                  + " ".join(k for k in ("valid", "shortcut", "direction", "count") if rows[-1][k]), flush=True)
        details[backend] = rows
        n = len(rows)
        table.append((backend, *(sum(r[k] for r in rows) / n for k in ("valid", "usable", "shortcut", "direction",
                                                                         "count")),
                      sorted(r["seconds"] for r in rows)[n // 2], max(r["seconds"] for r in rows)))
    print(f"\n{len(CASES)} cases (bench/analyzer_cases.py)")
    print(f"{'backend':<8} {'valid':>6} {'usable':>6} {'shortcut':>8} {'direction':>9} {'count':>6} "
          f"{'median s':>8} {'max s':>6}")
    for backend, valid, usable, shortcut, direction, count, median, worst in table:
        print(f"{backend:<8} {valid:>6.2f} {usable:>6.2f} {shortcut:>8.2f} {direction:>9.2f} {count:>6.2f} "
              f"{median:>8.1f} {worst:>6.1f}")
    if args.json:
        args.json.write_text(json.dumps(details, indent=2))


if __name__ == "__main__":
    main()
