"""Language models fairloop runs itself (the packaged local LLM)."""
