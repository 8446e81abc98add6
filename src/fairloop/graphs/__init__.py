"""LangGraph graphs: the mitigation loop (``loop``, configured by ``run``); chat and experiments come later."""
