"""Structural causal models (seed 003): graphs an LLM writes from a caption, checked; SynthFaces'
true model; abduction–action–prediction counterfactuals of given people."""

from fairloop.scm.graph import CausalGraph, structural_hamming_distance
from fairloop.scm.model import Counterfactual, StructuralCausalModel

__all__ = ["CausalGraph", "Counterfactual", "StructuralCausalModel", "structural_hamming_distance"]
