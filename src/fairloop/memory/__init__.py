"""The chromadb store of past iterations (later issues)."""
