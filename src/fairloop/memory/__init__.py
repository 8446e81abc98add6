"""The chromadb store of past iterations, recalled across runs."""

from fairloop.memory.store import (
    IterationRecord,
    MemoryStore,
    Recalled,
    default_memory_path,
    scrub_secrets,
)

__all__ = ["IterationRecord", "MemoryStore", "Recalled", "default_memory_path", "scrub_secrets"]
