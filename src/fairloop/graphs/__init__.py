"""LangGraph graphs: the mitigation loop, the chat agent, the experiment runner (later issues)."""
