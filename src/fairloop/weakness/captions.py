"""Where a caption's attribute values come from: the attribute table, the attribute oracle, or a
BLIP captioner from a local folder (its free text read by the prompt parser)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fairloop.errors import ConfigError

CAPTION_SOURCES = ("table", "oracle", "blip")


def table_values(dataset, ids: list[str], vocabulary: list[str]) -> list[dict[str, int]]:
    """The recorded attribute values of ``ids``."""
    rows = dataset.table.loc[ids, vocabulary]
    return [{k: int(v) for k, v in row.items()} for row in rows.to_dict("records")]


def oracle_values(oracle, dataset, ids: list[str], target: str) -> list[dict[str, int]]:
    """What the attribute oracle reads off each image (the class from the table: it is the label)."""
    from PIL import Image

    images = []
    for path in dataset.table.loc[ids, "path"]:
        with Image.open(path) as img:
            images.append(img.convert("RGB"))
    seen = oracle.predict(images) >= 0.5
    labels = dataset.table.loc[ids, target].to_numpy()
    return [{**{a: int(s[j]) for j, a in enumerate(oracle.attributes) if a != target}, target: int(y)}
            for s, y in zip(seen, labels)]


class BlipCaptioner:
    """A BLIP image-captioning model (``BlipForConditionalGeneration``) from a local folder or cached
    hub id, offline; the captions are read into attribute values by the prompt parser."""

    def __init__(self, model: str | Path, device: str = "cpu", max_new_tokens: int = 30) -> None:
        from transformers import BlipForConditionalGeneration, BlipProcessor

        try:
            self.processor = BlipProcessor.from_pretrained(str(model), local_files_only=True)
            self.model = BlipForConditionalGeneration.from_pretrained(str(model), local_files_only=True).to(device).eval()
        except (OSError, ValueError) as error:  # a missing folder reads as a malformed hub id: ValueError
            raise ConfigError(f"no BLIP captioning model at {model}: {str(error).splitlines()[0]}",
                              "pass --captioner a folder saved with save_pretrained (or a hub id you have cached), "
                              "e.g. Salesforce/blip-image-captioning-base") from None
        self.device, self.max_new_tokens = device, max_new_tokens

    def captions(self, paths: list[str], batch_size: int = 16) -> list[str]:
        import torch
        from PIL import Image

        out = []
        for k in range(0, len(paths), batch_size):
            images = []
            for path in paths[k:k + batch_size]:
                with Image.open(path) as img:
                    images.append(img.convert("RGB"))
            inputs = self.processor(images=images, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                tokens = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
            out += [t.strip() for t in self.processor.batch_decode(tokens, skip_special_tokens=True)]
        return out


def caption_values(captions: list[str], vocabulary: list[str], labels: np.ndarray, target: str) -> list[dict[str, int]]:
    """What free-text captions say of the vocabulary (attributes they do not mention stay unknown);
    the class comes from the label."""
    from fairloop.tools.prompt_parser import parse_prompt

    return [{**{a: v for a, v in parse_prompt(c, vocabulary).edits.items() if a != target}, target: int(y)}
            for c, y in zip(captions, labels)]
