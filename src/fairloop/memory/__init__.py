"""The chromadb store of past iterations (later issues)."""

from fairloop.memory.store import (
    IterationRecord,
    MemoryStore,
    Recalled,
    default_memory_path,
    scrub_secrets,
)

__all__ = ["IterationRecord", "MemoryStore", "Recalled", "default_memory_path", "scrub_secrets"]
