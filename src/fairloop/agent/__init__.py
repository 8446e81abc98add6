"""LLM backends and the analyzer (seed 000 §3.3). Filled in by the mitigation-loop issue."""
