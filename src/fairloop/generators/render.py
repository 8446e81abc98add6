"""``render``: the exact oracle of the synthetic domain. It parses the prompt into attribute edits
(:mod:`fairloop.tools.prompt_parser`) and re-renders SynthFaces identities with only those
attributes changed. Reports label it as an oracle: real data needs a real generator."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from fairloop.errors import ConfigError
from fairloop.generators.base import GenerationResult, Generator, apply_edits, request_edits
from fairloop.io import atomic_write, finished_file


class RenderGenerator(Generator):
    """SynthFaces re-rendering: the exact counterfactual oracle for the synthetic domain."""

    name = "render"
    model_id = "synthfaces-renderer-v1"
    exact = True

    def generate(self, request, out_dir, *, sources=None, progress=None) -> GenerationResult:
        from fairloop.data.synthfaces import (
            ATTRIBUTES,
            read_cues,
            read_identities,
            render_face,
            sample_attributes,
        )

        request.validate()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        edits, negative, notes = request_edits(request, ATTRIBUTES)
        result = GenerationResult(notes=notes)
        rng = np.random.default_rng(request.seed)
        # new faces and edits alike are drawn in the dataset's cue style, so they look like its images
        cues = read_cues(sources.root) if sources is not None else "salient"  # salient without synthfaces.json
        style = "" if cues == "salient" else f"{cues}:"  # in the file name; salient keeps the names it always had

        identities = None
        if request.source_ids:
            if sources is None:
                raise ConfigError("minimal-change edits need the source dataset", "pass sources=the dataset")
            try:
                identities = read_identities(sources.root)
            except Exception:
                result.notes.append("sources are not SynthFaces: rendering new faces instead of editing them")
        if identities is not None:
            ids = [request.source_ids[i % len(request.source_ids)] for i in range(request.n)]
            base_rows = sources.table.loc[ids, list(ATTRIBUTES)].to_dict("records")
            seen: set[str] = set()
            seeds = []
            for i in ids:  # a source used twice gets a new identity the second time: no duplicate images
                seeds.append(int(identities[i]) if i not in seen else int(rng.integers(2**31 - 1)))
                seen.add(i)
        else:
            ids = [None] * request.n
            fixed = {k: np.full(request.n, v, np.int8) for k, v in edits.items()}
            base_rows = sample_attributes(request.n, rng, fixed).to_dict("records")
            seeds = rng.integers(0, 2**31 - 1, size=request.n).tolist()

        for k, (source_id, base, seed) in enumerate(zip(ids, base_rows, seeds)):
            attributes = apply_edits(base, edits, rng, avoid=negative)
            key = hashlib.sha256(f"{style}{seed}:{sorted(attributes.items())}".encode()).hexdigest()[:16]
            path = out_dir / f"{key}.png"
            if not finished_file(path):  # content-addressed: a resumed run does not redo finished images
                image = render_face(attributes, seed, cues=cues)
                atomic_write(path, lambda tmp, image=image: image.save(tmp, format="PNG"))
            result.rows.append({
                "file": path.name, "path": str(path), "prompt": request.prompt,
                "negative_prompt": request.negative_prompt, "source_id": source_id, "seed": seed,
                "backend": self.name, "model_id": self.model_id, "label": request.label,
                "intended": {a: edits[a] for a in edits}, "attributes": attributes,
            })
            if progress:
                progress("generate", k + 1, request.n)
        return result
