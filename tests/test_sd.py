"""The ``sd`` generator on a tiny random Stable Diffusion checkpoint, saved and loaded the real way.

The checkpoint (32×32 images, a 2-layer CLIP text encoder with a few dozen words) is built once
per module, written with ``save_pretrained`` and loaded through ``SDGenerator`` → ``from_pretrained``,
so the tests exercise the offline loading path, not a hand-made pipeline object.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fairloop.diffusion import sd
from fairloop.errors import ConfigError
from fairloop.generators import GenerationRequest

WORDS = ["a", "photo", "of", "portrait", "man", "woman", "person", "with", "without", "gray", "hair", "black",
         "blond", "brown", "glasses", "eyeglasses", "smiling", "old", "young", "face", "hat"]
RESOLUTION = 32  # unet sample_size 16 × vae scale factor 2


def _write_tokenizer(folder: Path) -> None:
    """CLIP's BPE files for WORDS: single letters plus one merge chain per word, words end in ``</w>``."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters)]
    merges: list[str] = []
    for word in WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merged = parts[0] + parts[1]
            if f"{parts[0]} {parts[1]}" not in merges:
                merges.append(f"{parts[0]} {parts[1]}")
            if merged not in vocab:
                vocab.append(merged)
            parts = [merged, *parts[2:]]
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tensors this small gain nothing from threads, and on a busy machine thread hand-offs cost 100×."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    """A random Stable Diffusion checkpoint in diffusers layout (safetensors)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    work = tmp_path_factory.mktemp("tiny-sd")
    _write_tokenizer(work / "tokenizer-files")
    tokenizer = CLIPTokenizer.from_pretrained(work / "tokenizer-files", model_max_length=16)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8,
        sample_size=RESOLUTION)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(work / "model")
    return work / "model"


@pytest.fixture(scope="module")
def generator(tiny_sd):
    return sd.SDGenerator(str(tiny_sd), device="cpu", steps=2)


def _pixels(path: str) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img, dtype=np.int16)


def _size(path: str) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


def test_text_to_image_writes_images_and_manifest_rows(generator, tmp_path):
    events = []
    request = GenerationRequest(prompt="a photo of a woman with gray hair", negative_prompt="glasses", n=3, label=0,
                                target="Male", seed=7)
    result = generator.generate(request, tmp_path, progress=lambda *e: events.append(e))

    assert len(result.rows) == 3 and len({r["file"] for r in result.rows}) == 3
    for row in result.rows:
        assert _size(row["path"]) == (RESOLUTION, RESOLUTION)
        assert row["prompt"] == request.prompt and row["negative_prompt"] == "glasses"
        assert row["source_id"] is None and row["strength"] is None and row["steps"] == 2
        assert row["backend"] == "sd" and row["model_id"] == generator.model_id
        assert row["intended"] == row["attributes"] == {"Male": 0, "Gray_Hair": 1}
    seeds = [r["seed"] for r in result.rows]
    assert seeds == np.random.default_rng(7).integers(0, 2**31 - 1, size=3).tolist()
    assert ("generate", 3, 3) == events[-1] and ("denoise", 2, 2) in events
    assert generator.batch_size == sd.CPU_BATCH and generator.dtype == torch.float32


def test_seeds_decide_the_images_whatever_the_batch(generator, tmp_path, monkeypatch):
    request = GenerationRequest(prompt="a photo of a man", n=2, label=1, target="Male", seed=1)
    first = generator.generate(request, tmp_path / "a")
    monkeypatch.setattr(generator, "batch_size", 1)
    one_by_one = generator.generate(request, tmp_path / "b")
    monkeypatch.undo()
    other_seed = generator.generate(GenerationRequest(prompt="a photo of a man", n=2, label=1, target="Male", seed=2),
                                    tmp_path / "c")

    assert [r["file"] for r in first.rows] == [r["file"] for r in one_by_one.rows]
    for a, b in zip(first.rows, one_by_one.rows):
        assert np.abs(_pixels(a["path"]) - _pixels(b["path"])).max() <= 1  # batched float sums may round apart
    assert not np.array_equal(_pixels(first.rows[0]["path"]), _pixels(first.rows[1]["path"]))
    assert not np.array_equal(_pixels(first.rows[0]["path"]), _pixels(other_seed.rows[0]["path"]))


def test_image_to_image_keeps_the_source_size(generator, synth_data, tmp_path):
    train = synth_data.split("train").table
    sources = tuple(train[(train["Male"] == 0) & (train["Gray_Hair"] == 0)].index[:2])
    request = GenerationRequest(prompt="a woman with gray hair", n=3, label=0, target="Male", source_ids=sources,
                                seed=4)
    result = generator.generate(request, tmp_path, sources=synth_data)

    assert [r["source_id"] for r in result.rows] == [sources[0], sources[1], sources[0]]
    for row in result.rows:
        assert _size(row["path"]) == _size(synth_data.table.at[row["source_id"], "path"])
        assert row["strength"] == generator.strength
        assert row["attributes"]["Gray_Hair"] == 1 and row["attributes"]["Male"] == 0
        assert sum(row["attributes"][h] for h in ("Gray_Hair", "Black_Hair", "Blond_Hair", "Brown_Hair", "Bald")) == 1
    assert result.rows[0]["file"] != result.rows[2]["file"]  # same source, new seed, new image


def test_finished_images_are_not_generated_again(generator, tmp_path, monkeypatch):
    request = GenerationRequest(prompt="a photo of a person", n=3, label=1, target="Male", seed=5)
    rows = generator.generate(request, tmp_path).rows
    mtimes = [Path(r["path"]).stat().st_mtime_ns for r in rows]
    Path(rows[1]["path"]).unlink()
    drawn = []
    real_run = generator._run

    def counting_run(pipe, batch, *args):
        drawn.extend(batch)
        return real_run(pipe, batch, *args)

    monkeypatch.setattr(generator, "_run", counting_run)

    again = generator.generate(request, tmp_path).rows
    assert again == rows and [r["file"] for r in drawn] == [rows[1]["file"]]
    assert [Path(r["path"]).stat().st_mtime_ns for r in (rows[0], rows[2])] == [mtimes[0], mtimes[2]]


def test_cancellation_keeps_finished_batches_only(generator, tmp_path, monkeypatch):
    cancel = threading.Event()
    monkeypatch.setattr(generator, "cancel", cancel)  # what SDGenerator(..., cancel=cancel) sets
    monkeypatch.setattr(generator, "batch_size", 1)
    request = GenerationRequest(prompt="a photo of a man", n=3, label=1, target="Male", seed=0)

    def after_first_image(stage, done, total):
        if stage == "generate":
            cancel.set()

    with pytest.raises(ConfigError, match="cancelled after 1 of 3") as info:
        generator.generate(request, tmp_path / "between", progress=after_first_image)
    assert "run it again" in info.value.fix and len(list((tmp_path / "between").glob("*.png"))) == 1

    cancel.clear()

    def mid_denoising(stage, done, total):
        if stage == "denoise":
            cancel.set()

    with pytest.raises(ConfigError, match="cancelled after 0 of 3"):
        generator.generate(request, tmp_path / "inside", progress=mid_denoising)
    assert not list((tmp_path / "inside").glob("*.png"))  # the interrupted batch was unfinished


def test_unusable_models_and_settings_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="neither an existing folder nor a hub id") as info:
        sd.SDGenerator(str(tmp_path / "missing"))
    assert "local_files_only" in info.value.fix
    with pytest.raises(ConfigError, match="no model_index.json"):
        sd.SDGenerator(str(tmp_path))
    (tmp_path / "model_index.json").write_text("{not json")
    broken = sd.SDGenerator(str(tmp_path), device="cpu", steps=2)
    with pytest.raises(ConfigError, match="not a loadable Stable Diffusion checkpoint"):
        broken.generate(GenerationRequest(prompt="a man", n=1, label=1, target="Male"), tmp_path / "out")
    with pytest.raises(ConfigError, match="no denoising step"):
        sd.SDGenerator(str(tmp_path), steps=2, strength=0.3)
    with pytest.raises(ConfigError, match="unsupported dtype"):
        sd.SDGenerator(str(tmp_path), device="cpu", dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            sd.SDGenerator(str(tmp_path), device="cuda")


def test_batch_size_and_offload_follow_free_memory():
    gib = 1024**3
    sizes = [sd.batch_size_for(free * gib, 512, 512, torch.float16) for free in (0, 1, 4, 8, 16, 40, 80)]
    assert sizes == sorted(sizes) and sizes[0] == 1 and sizes[-1] == sd.MAX_BATCH and len(set(sizes)) > 2
    assert sd.batch_size_for(8 * gib, 512, 512, torch.float32) < sd.batch_size_for(8 * gib, 512, 512, torch.float16)
    assert sd.batch_size_for(8 * gib, 768, 768, torch.float16) < sd.batch_size_for(8 * gib, 512, 512, torch.float16)

    weights = 2 * gib  # Stable Diffusion 1.5 in float16
    needs = [sd.needs_cpu_offload(free * gib, weights, 512, 512, torch.float16) for free in (1, 2, 3, 4, 24)]
    assert needs == sorted(needs, reverse=True) and needs[0] and not needs[-1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_generates_in_half_precision(tiny_sd, tmp_path):
    gen = sd.SDGenerator(str(tiny_sd), device="auto", steps=2)
    request = GenerationRequest(prompt="a photo of a woman", n=2, label=0, target="Male", seed=3)
    rows = gen.generate(request, tmp_path).rows
    assert gen.device == "cuda" and gen.dtype == torch.float16 and gen.batch_size >= 1
    assert gen._pipes["text2img"].unet.dtype == torch.float16
    for row in rows:
        assert _size(row["path"]) == (RESOLUTION, RESOLUTION)
        assert _pixels(row["path"]).std() > 0  # fp16 did not overflow into a black (NaN) image
