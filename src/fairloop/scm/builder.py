"""Seed 003's SCM builder: a language model reads a caption, writes a causal graph, intervenes on
it and writes the counterfactual caption and the modified graph, as JSON. fairloop checks every
answer — attribute names, acyclicity (the cycle named), the modified graph, the counterfactual
caption read back by the prompt parser — sends the problems back, and reports an answer that never
passes instead of using it.

``true`` builds the same JSON without a model, from SynthFaces' true graph: the reference the
model's graphs are scored against (structural Hamming distance).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from fairloop.errors import ConfigError
from fairloop.scm.graph import CausalGraph, structural_hamming_distance
from fairloop.tools.prompt_parser import attribute_phrase, parse_prompt

Pair = Annotated[list[Annotated[str, Field(max_length=40)]], Field(min_length=2, max_length=2)]
#: A free variable (a cause outside the attribute vocabulary): lowercase words.
FREE_NAME = re.compile(r"^[a-z][a-z0-9_ ]{0,39}$")
MAX_ATTEMPTS = 3
#: People drawn from the causal model to say how likely each effect of the intervention changes.
POPULATION = 20_000


class Intervention(BaseModel):
    variable: str = Field(max_length=40)
    value: int = Field(ge=0, le=1)


class SCMAnswer(BaseModel):
    """What the model must answer (seed 003's JSON, with edges as [cause, effect] pairs)."""

    variables: list[Annotated[str, Field(max_length=40)]] = Field(min_length=1, max_length=20)
    edges: list[Pair] = Field(max_length=40)
    intervention: Intervention
    counterfactual_caption: str = Field(min_length=1, max_length=300)
    modified_edges: list[Pair] = Field(max_length=40)


@dataclass
class SCMResult:
    """A checked answer (``valid``) or the last rejected one with every problem found."""

    caption: str
    answer: SCMAnswer | None
    valid: bool                    # every check passed
    problems: list[str]
    attempts: int
    raw: list[str]
    backend: str
    seconds: float
    free_variables: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # incomplete but usable (see answer_notes)
    graph_valid: bool = False      # the graph passed (names, acyclic), whatever the intervention's bookkeeping
    cycles_found: int = 0          # answers rejected for a cycle
    shd: int | None = None         # to SynthFaces' true graph over the answer's attributes
    change_rates: dict[str, float] = field(default_factory=dict)  # P(changed) under do(), per variable

    @property
    def graph(self) -> CausalGraph | None:
        return CausalGraph.of(self.answer.variables, self.answer.edges) if self.answer else None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"caption": self.caption, "valid": self.valid, "graph_valid": self.graph_valid,
                               "problems": self.problems,
                               "attempts": self.attempts, "backend": self.backend, "seconds": round(self.seconds, 2),
                               "free_variables": self.free_variables, "notes": self.notes, "cycles_found": self.cycles_found,
                               "shd_to_true_graph": self.shd, "change_rates": self.change_rates, "raw": self.raw}
        if self.answer is not None:
            a = self.answer
            out |= {"variables": a.variables, "edges": a.edges, "intervention": a.intervention.model_dump(),
                    "counterfactual_caption": a.counterfactual_caption, "modified_edges": a.modified_edges}
        return out


# ------------------------------------------------------------------------------------ checking


def parse_intervention(text: str, vocabulary: list[str]) -> tuple[str, int]:
    """"Gray_Hair=0" → ("Gray_Hair", 0); a :class:`ConfigError` naming the fix otherwise."""
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or value not in ("0", "1"):
        raise ConfigError(f"--intervene {text!r} is not ATTRIBUTE=0 or ATTRIBUTE=1", "write e.g. --intervene Gray_Hair=0")
    if name not in vocabulary:
        raise ConfigError(f"--intervene names {name!r}, which is not an attribute", f"use one of {', '.join(vocabulary)}")
    return name, int(value)


def caption_values(caption: str, vocabulary: list[str], groups: tuple[tuple[str, ...], ...] = ()) -> dict[str, int]:
    """Attribute values a caption states, with what a group implies (black hair ⇒ not gray hair)."""
    values = dict(parse_prompt(caption, vocabulary).edits)
    for group in groups:
        on = [s for s in group if values.get(s) == 1]
        if len(on) == 1:
            values |= {s: 0 for s in group if s != on[0] and s not in values}
    return values


def check_answer(answer: SCMAnswer, caption: str, vocabulary: list[str], *, intervention: tuple[str, int] | None = None,
                 groups: tuple[tuple[str, ...], ...] = ()) -> list[str]:
    """Every reason ``answer`` cannot be used; empty when it passes."""
    return graph_problems(answer, vocabulary, groups) + intervention_problems(
        answer, caption, vocabulary, intervention=intervention, groups=groups)


def graph_problems(answer: SCMAnswer, vocabulary: list[str], groups: tuple[tuple[str, ...], ...] = ()) -> list[str]:
    """What makes the causal graph itself unusable: names that are neither attributes nor free
    variables, self-loops, cycles (named)."""
    problems: list[str] = []
    vocab = set(vocabulary)
    lowered = {v.lower().replace("_", " "): v for v in vocabulary}
    # a name used only in an edge is a variable too; every name is an attribute or a free variable
    names = list(dict.fromkeys([*answer.variables, *(v for e in answer.edges for v in e)]))
    for name in names:
        if name in vocab:
            continue
        spelled = lowered.get(name.lower().replace("_", " ").replace("-", " "))
        if spelled:
            problems.append(f"variable {name!r}: write the attribute name exactly as {spelled!r}")
        elif not FREE_NAME.match(name):
            problems.append(f"variable {name!r} is neither an attribute name ({', '.join(vocabulary)}) "
                            "nor a free variable in lowercase words")
    problems += [f"edges has [{a}, {b}]: a variable cannot cause itself" for a, b in answer.edges if a == b]
    from fairloop.scm.model import MAX_PARENTS

    graph = CausalGraph.of(answer.variables, answer.edges)
    problems += [f"{v} has {len(graph.parents(v))} causes; give it at most {MAX_PARENTS}, the ones you are sure of"
                 for v in graph.variables if len(graph.parents(v)) > MAX_PARENTS]
    names = set(names)
    cycle = graph.find_cycle()
    if cycle and len(cycle) > 2:
        problems.append(f"the edges contain a cycle: {' → '.join(cycle)}; a causal graph has none — drop the edge "
                        "that is not a cause")
    elif groups:
        from fairloop.scm.model import collapse_groups

        present = [tuple(x for x in g if x in names) for g in groups]
        grouped = collapse_groups(graph, {s: g for g in present if len(g) > 1 for s in g})
        cycle = grouped.find_cycle()
        if cycle:
            problems.append(f"the edges contain a cycle once the states of one variable ({', '.join(groups[0])}) are "
                            f"taken as one: {' → '.join(cycle)}; drop the edge that is not a cause")
    return problems


def intervention_problems(answer: SCMAnswer, caption: str, vocabulary: list[str], *,
                          intervention: tuple[str, int] | None = None,
                          groups: tuple[tuple[str, ...], ...] = ()) -> list[str]:
    """What is wrong in the intervention's bookkeeping: the variable, the modified graph, the
    counterfactual caption read back."""
    problems: list[str] = []
    vocab = set(vocabulary)
    graph = CausalGraph.of(answer.variables, answer.edges)
    target, value = answer.intervention.variable, answer.intervention.value
    if intervention and (target, value) != intervention:
        problems.append(f"the intervention must be do({intervention[0]} = {intervention[1]}), not do({target} = {value})")
    if target not in vocab:
        problems.append(f"the intervention's variable {target!r} is not an attribute ({', '.join(vocabulary)})")
    modified = {tuple(e) for e in answer.modified_edges}
    expected = {e for e in graph.intervened([target]).edges}
    into = sorted(e for e in modified if e[1] == target)
    if into:
        problems.append(f"modified_edges still has {', '.join(f'{a} → {b}' for a, b in into)}: do({target}) cuts every "
                        f"edge into {target}")
    added = sorted(modified - set(graph.edges))
    if added:
        problems.append(f"modified_edges adds {', '.join(f'{a} → {b}' for a, b in added)}, which edges lacks")
    dropped = sorted(expected - modified)
    if dropped:
        problems.append(f"modified_edges drops {', '.join(f'{a} → {b}' for a, b in dropped)}; do({target}) cuts only "
                        f"the edges into {target}")
    if not graph.find_cycle():
        problems += _caption_problems(answer, caption, vocabulary, graph.intervened([target]), groups)
    return problems


def answer_notes(answer: SCMAnswer, caption: str, vocabulary: list[str]) -> list[str]:
    """What is incomplete but usable: attributes the caption states that the graph leaves out."""
    names = {*answer.variables, *(v for e in answer.edges for v in e)}
    missing = [a for a in parse_prompt(caption, vocabulary).edits if a not in names]
    return [f"the caption states {', '.join(missing)}, which the graph leaves out"] if missing else []


def _caption_problems(answer: SCMAnswer, caption: str, vocabulary: list[str], modified: CausalGraph,
                      groups: tuple[tuple[str, ...], ...]) -> list[str]:
    """The counterfactual caption, read back, must show the intervention and keep every stated
    attribute the intervention does not cause."""
    target, value = answer.intervention.variable, answer.intervention.value
    before = caption_values(caption, vocabulary, groups)
    after = caption_values(answer.counterfactual_caption, vocabulary, groups)
    problems = []
    if after.get(target) != value:
        problems.append(f"the counterfactual caption {answer.counterfactual_caption!r} does not show {target} = {value}"
                        f" (read back: {', '.join(f'{k}={v}' for k, v in after.items()) or 'no attribute'})")
    moved = {target, *next((g for g in groups if target in g), ())}  # a state's group moves with it
    allowed = moved.union(*(modified.descendants(v) for v in moved))
    for name, old in before.items():
        if name not in allowed and name in after and after[name] != old:
            problems.append(f"the counterfactual caption changes {name} ({old} → {after[name]}), which {target} does "
                            "not cause in the graph")
    return problems


# ------------------------------------------------------------------------------------ building


#: A worked example outside the face domain, so it teaches the format without hinting at a face graph.
EXAMPLE = ('Caption: a wet street under a cloudy sky\nIntervention: do(rain = 0).\nAnswer: {"variables": ["cloudy sky", '
           '"rain", "wet street"], "edges": [["cloudy sky", "rain"], ["rain", "wet street"]], "intervention": '
           '{"variable": "rain", "value": 0}, "counterfactual_caption": "a dry street under a cloudy sky", '
           '"modified_edges": [["rain", "wet street"]]}')


def system_prompt() -> str:
    return ("You build structural causal models (SCMs) of the person a face-photo caption describes. Variables are "
            "the attributes the caption states, the intervened one, and at most three more that they cause or that "
            "cause them; write attribute names exactly as the vocabulary spells them, and any other cause as a free "
            "variable in lowercase words. An edge [\"A\", \"B\"] means A causes B; give only edges you are sure are "
            "causal (most attributes do not cause each other). The graph must be acyclic: never both [\"A\", \"B\"] "
            "and [\"B\", \"A\"]. Then apply the intervention do(X = v): modified_edges are the edges without those "
            "into X, and the counterfactual_caption describes the same person with X set to v, changing only what X "
            "causes. Reply with one JSON object with the keys variables, edges, intervention ({\"variable\", "
            "\"value\"}), counterfactual_caption and modified_edges.\n\nExample:\n" + EXAMPLE)


def user_prompt(caption: str, vocabulary: list[str], intervention: tuple[str, int] | None) -> str:
    asked = (f"Intervention: do({intervention[0]} = {intervention[1]})." if intervention
             else "Intervention: choose one attribute the caption states and set it to the other value.")
    return f"Caption: {caption}\nAttribute vocabulary: {', '.join(vocabulary)}\n{asked}"


def answer_grammar(vocabulary: list[str], intervention: tuple[str, int] | None) -> dict[str, Any]:
    """The answer's JSON schema for a grammar-constrained model, narrowed to what the request settles
    (as the analyzer's is): names are attributes or lowercase free variables, the intervention is
    fixed when given, and no modified edge points into it. Cycles, the modified graph's other edges
    and the counterfactual caption are checked afterwards."""
    from fairloop.llm import grammar_schema

    free = {"type": "string", "pattern": FREE_NAME.pattern}
    name = {"anyOf": [{"enum": list(vocabulary)}, free]}
    pair = {"type": "array", "items": name, "minItems": 2, "maxItems": 2}
    kept = pair  # modified edges: none into the intervened variable, when it is given
    if intervention:
        kept = {"type": "array", "minItems": 2, "maxItems": 2, "prefixItems": [
            name, {"anyOf": [{"enum": [v for v in vocabulary if v != intervention[0]]}, free]}]}
    chosen = ({"variable": {"const": intervention[0]}, "value": {"const": intervention[1]}} if intervention
              else {"variable": {"enum": list(vocabulary)}, "value": {"enum": [0, 1]}})
    return grammar_schema({"type": "object", "required": list(SCMAnswer.model_fields), "properties": {
        "variables": {"type": "array", "items": name, "minItems": 1, "maxItems": 10},
        "edges": {"type": "array", "items": pair, "maxItems": 12},
        "intervention": {"type": "object", "required": ["variable", "value"], "properties": chosen},
        "counterfactual_caption": {"type": "string", "maxLength": 200},
        "modified_edges": {"type": "array", "items": kept, "maxItems": 12}}})


class SCMBuilder:
    """Asks a chat model for an SCM, checks it, and asks again with the problems (as the analyzer does)."""

    def __init__(self, client: Any, *, backend: str, scrub: Any = None, constrained: bool = False,
                 max_attempts: int = MAX_ATTEMPTS) -> None:
        self._client, self.backend, self.constrained = client, backend, constrained
        self._scrub = scrub or (lambda text: text)
        self.max_attempts = max_attempts

    def build(self, caption: str, vocabulary: list[str], *, intervention: tuple[str, int] | None = None,
              groups: tuple[tuple[str, ...], ...] = (), seed: int = 0) -> SCMResult:
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

        from fairloop.agent.analyzer import parse_answer
        from fairloop.llm import content_text

        start = time.perf_counter()
        messages: list[Any] = [SystemMessage(content=system_prompt()),
                               HumanMessage(content=user_prompt(caption, vocabulary, intervention))]
        raw: list[str] = []
        answer, problems, cycles = None, [], 0
        for attempt in range(1, self.max_attempts + 1):
            try:
                reply = self._client_for(vocabulary, intervention, attempt, seed).invoke(messages)
            except Exception as error:  # noqa: BLE001 — a failing model is reported, not raised
                problems = [self._scrub(f"model error: {type(error).__name__}: {error}")[:300]]
                break
            text = self._scrub(content_text(getattr(reply, "content", "")))
            raw.append(text[:4000])
            try:
                answer = SCMAnswer.model_validate(parse_answer(text))
                problems = check_answer(answer, caption, vocabulary, intervention=intervention, groups=groups)
            except (ValueError, ValidationError) as error:
                answer, problems = None, _reasons(error)
            cycles += any("cycle" in p for p in problems)
            if not problems:
                break
            messages += [AIMessage(content=text[:4000]), HumanMessage(content=(
                "Your answer could not be used:\n" + "\n".join(f"- {p}" for p in problems)
                + "\nAnswer again with one JSON object that fixes these problems."))]
        return _finish(caption, answer, problems, attempt, raw, self.backend, start, cycles, vocabulary, groups)

    def _client_for(self, vocabulary, intervention, attempt: int, seed: int):
        if not self.constrained:
            return self._client.bind(seed=seed + attempt) if hasattr(self._client, "bind") and seed else self._client
        return self._client.model_copy(update={"json_schema": answer_grammar(vocabulary, intervention),
                                               "temperature": 0.0 if attempt <= 1 else 0.6, "seed": seed + attempt})


def _reasons(error: Exception) -> list[str]:
    if isinstance(error, ValidationError):
        return [f"{'.'.join(str(p) for p in e.get('loc', ())) or 'answer'}: {e.get('msg', 'invalid')}"
                for e in error.errors()[:10]]
    return [str(error)]


def _finish(caption: str, answer: SCMAnswer | None, problems: list[str], attempts: int, raw: list[str], backend: str,
            start: float, cycles: int, vocabulary: list[str], groups: tuple[tuple[str, ...], ...] = ()) -> SCMResult:
    result = SCMResult(caption=caption, answer=answer, valid=answer is not None and not problems, problems=problems,
                       attempts=attempts, raw=raw, backend=backend, seconds=time.perf_counter() - start,
                       cycles_found=cycles)
    if answer is not None:
        result.free_variables = [v for v in answer.variables if v not in vocabulary]
        result.notes = answer_notes(answer, caption, vocabulary)
        result.graph_valid = not graph_problems(answer, vocabulary, groups)
        result.shd = synthfaces_shd(answer, vocabulary)
    return result


def synthfaces_shd(answer: SCMAnswer, vocabulary: list[str]) -> int | None:
    """SHD of the answer's graph over its attribute variables to SynthFaces' true graph over the
    same variables; ``None`` when the vocabulary is not SynthFaces'."""
    from fairloop.data.synthfaces import ATTRIBUTES
    from fairloop.scm.model import StructuralCausalModel

    if set(vocabulary) != set(ATTRIBUTES):
        return None
    found = CausalGraph.of(answer.variables, answer.edges)
    names = [v for v in found.variables if v in ATTRIBUTES]
    truth = StructuralCausalModel.synthfaces().graph.restricted(names)
    return structural_hamming_distance(found.restricted(names), truth)


def true_scm(caption: str, vocabulary: list[str], intervention: tuple[str, int] | None, *, seed: int = 0) -> SCMResult:
    """The answer SynthFaces' true model gives: the true graph over what the caption states, the
    intervened variable and its effects; the counterfactual caption from abduction over the
    people the caption describes (each effect shown at its more likely counterfactual value)."""
    from fairloop.data.synthfaces import ATTRIBUTES, HAIR_STATES
    from fairloop.scm.model import StructuralCausalModel

    start = time.perf_counter()
    if set(vocabulary) != set(ATTRIBUTES):
        raise ConfigError("the true causal graph is known only for SynthFaces' attributes",
                          "use --llm local or --llm openai for another vocabulary")
    groups = (HAIR_STATES,)
    stated = caption_values(caption, vocabulary, groups)
    if intervention is None:
        if not stated:
            raise ConfigError(f"the caption {caption!r} states no attribute to intervene on",
                              "name one, e.g. 'a man with gray hair', or pass --intervene")
        name = next(iter(stated))
        intervention = (name, 1 - stated[name])
    model = StructuralCausalModel.synthfaces()
    graph = model.graph
    name, value = intervention
    keep = set(stated) | {name} | graph.intervened([name]).descendants(name)
    if name in HAIR_STATES:
        keep |= set(HAIR_STATES)
    shown = graph.restricted(keep)
    rates, values = _population_counterfactual(model, stated, intervention, seed)
    if rates is None:
        answer = None
        problems = [f"no SynthFaces person matches the caption ({', '.join(f'{k}={v}' for k, v in stated.items())})"]
    else:
        likely = [k for k, rate in rates.items() if rate >= 0.5]  # effects that change for most of these people
        answer = SCMAnswer(variables=list(shown.variables), edges=[list(e) for e in shown.edges],
                           intervention=Intervention(variable=name, value=value),
                           counterfactual_caption=write_caption(values, [name, *stated, *likely]),
                           modified_edges=[list(e) for e in shown.intervened([name]).edges])
        problems = check_answer(answer, caption, vocabulary, intervention=intervention, groups=groups)
    result = _finish(caption, answer, problems, 1, [], "true", start, 0, vocabulary, groups)
    result.change_rates = rates or {}
    return result


def _population_counterfactual(model, stated: dict[str, int], intervention: tuple[str, int], seed: int):
    """(share of the caption's people in whom each variable changes, their most common counterfactual
    values) under do(intervention); ``(None, None)`` when no one drawn matches the caption."""
    rng = np.random.default_rng(seed)
    people = model.sample(POPULATION, rng)
    for k, v in stated.items():
        people = people[people[k] == v]
    if people.empty:
        return None, None
    name, value = intervention
    cf = model.counterfactual(people, {name: value}, rng)
    values = {k: round(float(cf.rows[k].mean())) for k in cf.rows.columns}
    return cf.downstream_rates({name}), values


def write_caption(values: dict[str, int], order: list[str]) -> str:
    """"a man with black hair, who is young": the noun from Male, then the named attributes (hair
    shown by the state that holds, never as "without gray hair" when the state is known)."""
    from fairloop.data.synthfaces import HAIR_STATES

    noun = {1: "a man", 0: "a woman"}.get(values.get("Male", -1), "a person")
    phrases = []
    for name in dict.fromkeys(order):
        if name == "Male" or name not in values:
            continue
        if name in HAIR_STATES:  # the hair is one phrase: the state that holds, else what the first named lacks
            on = next((s for s in HAIR_STATES if values.get(s) == 1), None)
            phrase = attribute_phrase(on, True) if on else attribute_phrase(name, bool(values[name]))
            if any(p.endswith(" hair") or p in ("who is bald", "with a full head of hair") for p in phrases):
                continue
        else:
            phrase = attribute_phrase(name, bool(values[name]))
        if phrase not in phrases:
            phrases.append(phrase)
    return ", ".join([noun + (" " + phrases[0] if phrases else ""), *phrases[1:]])


def make_builder(kind: str, *, model: str | None = None, base_url: str | None = None) -> SCMBuilder:
    """An SCM builder on the packaged local LLM ("local", grammar-constrained) or an endpoint ("openai")."""
    from fairloop.llm import make_json_model

    client, scrub, constrained = make_json_model(kind, model=model, base_url=base_url, max_tokens=700,
                                                 fix="use --llm local, --llm openai or --llm true")
    return SCMBuilder(client, backend=kind, scrub=scrub, constrained=constrained)


def build_scm(caption: str, *, llm: str = "true", llm_model: str | None = None, llm_base_url: str | None = None,
              vocabulary: list[str] | None = None, intervention: str | tuple[str, int] | None = None,
              table=None, seed: int = 0) -> SCMResult:
    """The Python API of ``fairloop scm``: an SCM for ``caption`` from ``llm`` ("true", "local" or
    "openai") over ``vocabulary`` (default SynthFaces' attributes), checked; for a valid LLM graph,
    ``change_rates`` come from mechanisms counted on ``table`` (default: SynthFaces people drawn
    from its sampler) over that graph."""
    from fairloop.data.synthfaces import ATTRIBUTES, HAIR_STATES, sample_attributes
    from fairloop.scm.model import StructuralCausalModel

    vocabulary = list(vocabulary or ATTRIBUTES)
    if isinstance(intervention, str):
        intervention = parse_intervention(intervention, vocabulary)
    if llm == "true":
        return true_scm(caption, vocabulary, intervention, seed=seed)
    groups = (HAIR_STATES,) if set(HAIR_STATES) <= set(vocabulary) else ()
    result = make_builder(llm, model=llm_model, base_url=llm_base_url).build(
        caption, vocabulary, intervention=intervention, groups=groups, seed=seed)
    if result.valid and result.answer is not None:
        if table is None:
            table = sample_attributes(POPULATION, np.random.default_rng(seed))
        graph = CausalGraph.of(vocabulary, [e for e in result.answer.edges if e[0] in vocabulary and e[1] in vocabulary])
        model = StructuralCausalModel.fit(table, graph, groups=groups)
        stated = caption_values(caption, vocabulary, groups)
        do = (result.answer.intervention.variable, result.answer.intervention.value)
        result.change_rates = _population_counterfactual(model, stated, do, seed)[0] or {}
    return result


def result_json(result: SCMResult) -> str:
    return json.dumps(result.as_dict(), indent=2)
