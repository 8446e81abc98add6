"""The embedded generator's mechanics: captions, sampling, the backend contract, training, CLI.

These use untrained (random) or minutes-old weights: they check plumbing — seeds, shapes, edits'
captions, resume, manifests — not image quality, which ``bench/bench_generator.py`` measures.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from fairloop.data.synthfaces import ATTRIBUTES, sample_attributes
from fairloop.diffusion.captions import ACCESSORIES, caption, intended_attributes, training_caption
from fairloop.errors import ConfigError
from fairloop.generators import GenerationRequest, make_generator


# ----------------------------------------------------------------------------------------- captions
def test_every_caption_reads_back_as_the_attributes_it_describes():
    rng = np.random.default_rng(0)
    for row in sample_attributes(500, rng).to_dict("records"):
        for text in (caption(row), training_caption(row, rng)):
            intent = intended_attributes(text)
            assert {k: v for k, v in intent.items() if row[k] != v} == {}, text
            assert set(ACCESSORIES) <= set(intent)


def test_canonical_caption_names_gender_age_hair_and_present_accessories():
    face = {a: 0 for a in ATTRIBUTES} | {"Male": 0, "Young": 1, "Gray_Hair": 1, "Eyeglasses": 1}
    assert caption(face) == "a photo of a young woman with gray hair and wearing eyeglasses"


def test_intent_leaves_unnamed_gender_age_and_hair_free():
    intent = intended_attributes("a person wearing a hat")
    assert intent["Wearing_Hat"] == 1 and intent["Eyeglasses"] == 0
    assert not {"Male", "Young", "Gray_Hair", "Black_Hair"} & set(intent)
    gray = intended_attributes("a woman with gray hair")
    assert gray["Male"] == 0 and gray["Gray_Hair"] == 1 and gray["Black_Hair"] == 0 and gray["Bald"] == 0


# -------------------------------------------------------------------------------- random weights
@pytest.fixture(scope="module")
def random_generator(tmp_path_factory):
    """A folder with untrained weights in the packaged layout: loads through the real path."""
    from fairloop.diffusion.embedded import build_unet, build_vae
    from fairloop.diffusion.training import save_generator

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gen") / "embedded"
    save_generator(build_vae(), build_unet(), {"scaling_factor": 1.0, "note": "random weights for tests"}, folder)
    return folder


def test_weights_are_fp16_safetensors_and_load_as_fp32(random_generator):
    from fairloop.diffusion.embedded import EmbeddedPipeline

    assert (random_generator / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    pipe = EmbeddedPipeline.load(random_generator)
    assert next(pipe.unet.parameters()).dtype == torch.float32


def test_text_to_image_is_seeded_per_image_not_per_batch(random_generator):
    gen = make_generator("embedded", model=str(random_generator), device="cpu", steps=2)
    pipe = gen.pipeline
    one = pipe.text_to_image(["a man"], [7], config=gen.sampling)[0]
    batch = pipe.text_to_image(["a woman", "a man"], [3, 7], config=gen.sampling)
    assert one.size == (64, 64)
    assert np.abs(np.asarray(one, int) - np.asarray(batch[1], int)).max() <= 1  # batched matmuls may round
    assert np.asarray(batch[0]).tolist() != np.asarray(batch[1]).tolist()


def test_edits_of_synthfaces_sources_are_conditioned_on_the_edited_caption(random_generator, synth_data, tmp_path):
    gen = make_generator("embedded", model=str(random_generator), device="cpu", steps=2, strength=0.5)
    train = synth_data.split("train").table
    sources = tuple(train[(train["Male"] == 1) & (train["Gray_Hair"] == 1)].index[:3])
    request = GenerationRequest("a man without gray hair", n=3, label=1, target="Male", source_ids=sources, seed=1)
    result = gen.generate(request, tmp_path, sources=synth_data)
    for row, source in zip(result.rows, sources):
        assert row["source_id"] == source and row["strength"] == 0.5
        assert row["attributes"]["Gray_Hair"] == 0 and row["attributes"]["Male"] == 1
        kept = {a: int(train.at[source, a]) for a in ACCESSORIES}
        assert {a: row["attributes"][a] for a in ACCESSORIES} == kept  # everything else stays
        assert row["conditioning"] == caption(row["attributes"])
        assert row["intended"] == row["attributes"]
        assert (tmp_path / row["file"]).is_file()


def test_inversion_with_the_source_caption_retraces_the_source_and_sdedit_does_not():
    """Negative-prompt inversion: where target and source captions agree, guidance cancels and the
    sampler walks the inversion back, so the edit returns (close to) the autoencoder's reconstruction.
    DDIM inversion is only that exact for a trained (smooth) UNet: this uses the shipped weights."""
    from fairloop.data.synthfaces import render_face
    from fairloop.diffusion.embedded import EmbeddedPipeline, SamplingConfig, to_images, to_tensor

    pipe = EmbeddedPipeline.load()
    faces = sample_attributes(3, np.random.default_rng(0)).to_dict("records")
    sources = [render_face(f, k) for k, f in enumerate(faces)]
    captions = [caption(f) for f in faces]
    recon = np.stack([np.asarray(im, float) for im in to_images(pipe.decode_latents(pipe.encode_images(
        to_tensor(sources))))])
    cfg = SamplingConfig(steps=20, strength=0.8, guidance=5.0, edit="invert", solver="ddim")

    def distance(images):
        return float(np.abs(np.stack([np.asarray(im, float) for im in images]) - recon).mean())

    inverted = pipe.image_to_image(sources, captions, [1, 2, 3], source_prompts=captions, config=cfg)
    sdedit = pipe.image_to_image(sources, captions, [1, 2, 3], config=cfg)
    assert distance(inverted) < 0.2 * distance(sdedit), (distance(inverted), distance(sdedit))


def test_a_masked_edit_redraws_the_hair_and_keeps_every_other_pixel_of_the_source():
    """DiffEdit's mask on the shipped weights: a hair-colour edit's mask covers the pixels where
    the renderer's exact counterfactual differs from the source, not the whole face, and outside
    it the edit is the source, pixel for pixel."""
    from fairloop.data.synthfaces import render_face
    from fairloop.diffusion.embedded import EmbeddedPipeline, SamplingConfig, paste, to_tensor

    pipe = EmbeddedPipeline.load()
    faces = sample_attributes(4, np.random.default_rng(3), {"Male": np.zeros(4, np.int8),
                                                            "Black_Hair": np.ones(4, np.int8)}).to_dict("records")
    grayed = [f | {"Black_Hair": 0, "Gray_Hair": 1} for f in faces]
    sources = [render_face(f, k) for k, f in enumerate(faces)]
    changed = torch.stack([torch.from_numpy(np.abs(np.asarray(render_face(g, k), int) - np.asarray(s, int)).sum(2) > 30)
                           for k, (g, s) in enumerate(zip(grayed, sources))])
    mask = pipe.edit_mask(pipe.encode_images(to_tensor(sources)), pipe.text_encoder([caption(g) for g in grayed]),
                          pipe.text_encoder([caption(f) for f in faces]), [0, 1, 2, 3])
    inside = paste(torch.ones(4, 3, 64, 64), torch.zeros(4, 3, 64, 64), mask)[:, 0]
    assert 0.05 < float(inside.mean()) < 0.5                      # some of the image, far from all of it
    assert float(inside[changed].gt(0).float().mean()) > 0.8        # the hair that has to change is inside

    edited = pipe.image_to_image(sources, [caption(g) for g in grayed], [0, 1, 2, 3], config=SamplingConfig(
        strength=0.8, steps=8), source_prompts=[caption(f) for f in faces])
    for k, (image, source) in enumerate(zip(edited, sources)):
        outside = (inside[k] == 0).numpy()
        assert outside.any()
        assert np.array_equal(np.asarray(image)[outside], np.asarray(source.convert("RGB"))[outside])
    assert any(np.asarray(image)[(inside[k] > 0).numpy()].tolist() != np.asarray(source.convert("RGB"))[
        (inside[k] > 0).numpy()].tolist() for k, (image, source) in enumerate(zip(edited, sources)))


def test_edit_mode_is_recorded_and_part_of_the_file_name(random_generator, synth_data, tmp_path):
    train = synth_data.split("train").table
    sources = tuple(train[(train["Male"] == 0) & (train["Gray_Hair"] == 0)].index[:2])
    request = GenerationRequest("a woman with gray hair", n=2, label=0, target="Male", source_ids=sources, seed=1)
    from fairloop.diffusion.embedded import EDIT_MODES

    files = set()
    for mode in EDIT_MODES:
        gen = make_generator("embedded", model=str(random_generator), device="cpu", steps=2, edit=mode)
        rows = gen.generate(request, tmp_path / mode, sources=synth_data).rows
        assert {r["edit"] for r in rows} == {mode}
        files |= {r["file"] for r in rows}
    assert len(files) == 2 * len(EDIT_MODES)
    with pytest.raises(ConfigError, match="edit mode"):
        make_generator("embedded", model=str(random_generator), edit="warp")


def test_generate_is_resumable_and_content_addressed(random_generator, tmp_path, monkeypatch):
    gen = make_generator("embedded", model=str(random_generator), device="cpu", steps=2)
    request = GenerationRequest("a woman with gray hair", n=4, label=0, target="Male", seed=5)
    first = gen.generate(request, tmp_path)
    assert first.rows[0]["intended"]["Gray_Hair"] == 1 and first.rows[0]["intended"]["Male"] == 0
    assert first.rows[0]["strength"] is None
    calls = []
    monkeypatch.setattr(type(gen.pipeline), "text_to_image", lambda *a, **k: calls.append(a) or [])
    again = gen.generate(request, tmp_path)
    assert calls == [] and [r["file"] for r in again.rows] == [r["file"] for r in first.rows]


# ------------------------------------------------------------------------------- the critic's check
@pytest.fixture(scope="module")
def checked_generator(tmp_path_factory):
    """Random weights with a (random) critic: the self-check's plumbing, not its quality."""
    from fairloop.diffusion.embedded import build_unet, build_vae
    from fairloop.diffusion.training import save_generator
    from fairloop.tools.quality import attribute_net

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("gen") / "checked"
    save_generator(build_vae(), build_unet(), {"scaling_factor": 1.0}, folder, critic=attribute_net(len(ATTRIBUTES)))
    return folder


def test_the_check_climbs_options_only_for_images_the_critic_rejects(random_generator):
    from fairloop.diffusion.embedded import EDIT_LADDER, EmbeddedPipeline

    class Critic:  # an "image" is (index, option); it is read as asked from the option it needs up
        def misses(self, images, wanted):
            return [int(option < w["needs"]) for (_, option), w in zip(images, wanted)]

    drawn = []

    def draw(indices, option):
        drawn.append((list(indices), option))
        return [(i, option) for i in indices]

    pipe = EmbeddedPipeline.load(random_generator)
    with pytest.raises(ConfigError, match="no critic"):
        pipe._first_accepted(1, EDIT_LADDER, draw, [{"needs": 0}])
    pipe.critic = Critic()
    images, chosen, misses = pipe._first_accepted(3, (0.5, 0.65, 0.8, 0.95), draw,
                                                  [{"needs": 0.5}, {"needs": 0.8}, {"needs": 2.0}])
    assert chosen == [0.5, 0.8, 0.5] and misses == [0, 0, 1]  # never accepted: the first of the closest
    assert images == [(0, 0.5), (1, 0.8), (2, 0.5)]
    assert drawn == [([0, 1, 2], 0.5), ([1, 2], 0.65), ([1, 2], 0.8), ([2], 0.95)]


def test_keep_unchanged_puts_back_what_the_edit_barely_changed_and_keeps_what_it_did():
    from PIL import Image

    from fairloop.diffusion.embedded import keep_unchanged

    source = np.full((64, 64, 3), 120, np.uint8)
    source[40, 8:56] = 60                          # a thin dark line (a wrinkle) ...
    edited = np.full((64, 64, 3), 120, np.uint8)   # ... that the redraw lost
    edited[10:20, 10:54] = 20                      # and a large new dark patch (the eyeglasses)
    kept = np.asarray(keep_unchanged([Image.fromarray(edited)], [Image.fromarray(source)])[0]).astype(int)
    assert kept[40, 32, 0] < 80                    # the line is back: blurred over a pixel it changed little
    assert kept[15, 32, 0] == 20                   # the patch's inside is the edit's
    assert kept[30, 32, 0] == 120
    same = keep_unchanged([Image.fromarray(edited)], [Image.fromarray(edited)])[0]
    assert np.array_equal(np.asarray(same), edited)


def test_each_rung_offers_the_critic_the_kept_unchanged_edit_first(random_generator, monkeypatch):
    from PIL import Image

    from fairloop.diffusion.embedded import EDIT_LADDER, EmbeddedPipeline

    source = np.full((64, 64, 3), 120, np.uint8)
    source[30, 8:56] = 200
    sources = [Image.fromarray(source)] * 2
    calls = []

    def image_to_image(srcs, prompts, seeds, **kwargs):  # every draw: flat, the line lost
        calls.append((len(srcs), kwargs["config"].strength))
        return [Image.fromarray(np.full((64, 64, 3), 120, np.uint8))] * len(srcs)

    class Critic:  # accepts what `accept` says about an image's brightest pixel
        def __init__(self, accept):
            self.accept = accept

        def misses(self, images, wanted):
            return [int(not self.accept(np.asarray(im).max())) for im in images]

    pipe = EmbeddedPipeline.load(random_generator)
    monkeypatch.setattr(pipe, "image_to_image", image_to_image)
    pipe.critic = Critic(lambda brightest: brightest > 170)  # wants the source's line back
    _, used = pipe.checked_image_to_image(sources, ["a", "b"], [1, 2], [{"Gray_Hair": 1}] * 2)
    assert [(u["kept_unchanged"], u["strength"], u["critic_misses"]) for u in used] == [(True, 0.8, 0)] * 2
    assert calls == [(2, 0.8)]  # the plain draw was not needed, and the variant reused the rung's draw

    calls.clear()
    pipe.critic = Critic(lambda brightest: brightest < 170)  # wants the plain draw
    _, used = pipe.checked_image_to_image(sources, ["a", "b"], [1, 2], [{"Gray_Hair": 1}] * 2)
    assert [(u["kept_unchanged"], u["strength"], u["critic_misses"]) for u in used] == [(False, 0.8, 0)] * 2
    assert calls == [(2, 0.8)]  # a rung is drawn once for both of its variants

    calls.clear()
    pipe.critic = Critic(lambda brightest: False)  # accepts nothing: the whole ladder, each rung drawn once
    _, used = pipe.checked_image_to_image(sources, ["a", "b"], [1, 2], [{"Gray_Hair": 1}] * 2)
    assert calls == [(2, strength) for strength, _ in EDIT_LADDER] and all(u["critic_misses"] == 1 for u in used)


def test_checked_draws_record_what_they_used_and_resume_with_it(checked_generator, synth_data, tmp_path):
    from fairloop.diffusion.embedded import EDIT_LADDER

    gen = make_generator("embedded", model=str(checked_generator), device="cpu", steps=1, tries=2)
    request = GenerationRequest("a woman with gray hair", n=3, label=0, target="Male", seed=4)
    first = gen.generate(request, tmp_path / "t2i")
    assert all(isinstance(r["critic_misses"], int) and r["strength"] is None for r in first.rows)
    assert any("checked by the generator's critic" in note for note in first.notes)
    again = gen.generate(request, tmp_path / "t2i")  # every image exists: seeds and misses come from the files
    assert [(r["seed"], r["critic_misses"]) for r in again.rows] == [(r["seed"], r["critic_misses"]) for r in first.rows]

    train = synth_data.split("train").table
    sources = tuple(train[(train["Male"] == 0) & (train["Gray_Hair"] == 0)].index[:2])
    edit = GenerationRequest("a woman with gray hair", n=2, label=0, target="Male", source_ids=sources, seed=1)
    rows = gen.generate(edit, tmp_path / "edit", sources=synth_data).rows
    assert all((r["strength"], r["critic_misses"] is None) in {(s, False) for s, _ in EDIT_LADDER} for r in rows)
    assert all(isinstance(r["kept_unchanged"], bool) for r in rows)
    fixed = make_generator("embedded", model=str(checked_generator), device="cpu", steps=1, strength=0.4)
    rows = fixed.generate(edit, tmp_path / "fixed", sources=synth_data).rows
    assert [(r["strength"], r["critic_misses"]) for r in rows] == [(0.4, None), (0.4, None)]


def test_a_first_rung_that_rarely_wins_is_skipped_for_the_rest_of_a_request_also_on_resume(
        checked_generator, synth_data, tmp_path, monkeypatch):
    from PIL import Image

    from fairloop.diffusion.embedded import EDIT_LADDER, RUNG_SAMPLE, ladder_after

    gen = make_generator("embedded", model=str(checked_generator), device="cpu", steps=1, batch_size=16)
    ladders = []

    def checked(sources, prompts, seeds, wanted, *, ladder, **kwargs):  # the first rung wins 1 in 8
        ladders.append((len(sources), tuple(ladder)))
        used = [{"seed": s, "strength": EDIT_LADDER[0 if k % 8 == 0 else 1][0], "kept_unchanged": False,
                 "critic_misses": 0} for k, s in enumerate(seeds)]
        return [Image.new("RGB", (64, 64))] * len(sources), used

    monkeypatch.setattr(gen.pipeline, "checked_image_to_image", checked)
    train = synth_data.split("train").table
    sources = tuple(train[(train["Male"] == 0) & (train["Gray_Hair"] == 0)].index[:RUNG_SAMPLE + 4])
    request = GenerationRequest("a woman with gray hair", n=RUNG_SAMPLE + 4, label=0, target="Male",
                                source_ids=sources, seed=1)
    gen.generate(request, tmp_path, sources=synth_data)
    assert ladders == [(16, EDIT_LADDER), (16, EDIT_LADDER), (4, EDIT_LADDER[1:])]
    # a resumed request reads the sample back from its files and decides the same
    for row in gen.generate(request, tmp_path, sources=synth_data).rows[-2:]:
        (tmp_path / row["file"]).unlink()
    ladders.clear()
    gen.generate(request, tmp_path, sources=synth_data)
    assert ladders == [(2, EDIT_LADDER[1:])]
    # a first rung that wins keeps its place
    assert ladder_after([{"strength": EDIT_LADDER[0][0], "critic_misses": 0}] * 3) == EDIT_LADDER


def test_dpm_solver_draws_seeded_images_and_masks_can_be_reused(random_generator):
    from PIL import Image

    from fairloop.diffusion.embedded import EmbeddedPipeline, SamplingConfig

    with pytest.raises(ConfigError, match="unknown solver"):
        SamplingConfig(solver="euler")
    pipe = EmbeddedPipeline.load(random_generator)
    dpm = SamplingConfig(solver="dpm", steps=3, strength=0.6)
    first = pipe.text_to_image(["a man", "a woman"], [1, 2], config=dpm)
    again = pipe.text_to_image(["a woman"], [2], config=dpm)
    assert np.abs(np.asarray(first[1], int) - np.asarray(again[0], int)).max() <= 1  # batched matmuls may round
    ddim = pipe.text_to_image(["a woman"], [2], config=SamplingConfig(solver="ddim", steps=3))
    assert np.abs(np.asarray(ddim[0], int) - np.asarray(again[0], int)).max() > 1
    sources = [Image.fromarray(np.asarray(im)) for im in first]
    prompts, source_prompts = ["a man with gray hair", "a woman with gray hair"], ["a man", "a woman"]
    plain = pipe.image_to_image(sources, prompts, [5, 6], source_prompts=source_prompts, config=dpm)
    masks = pipe.edit_masks(sources, prompts, source_prompts, [5, 6])
    assert masks.shape[0] == 2 and set(masks.unique().tolist()) <= {0.0, 1.0}
    reused = pipe.image_to_image(sources, prompts, [5, 6], source_prompts=source_prompts, config=dpm, masks=masks)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(plain, reused))


def test_class_label_wins_over_the_prompt(random_generator, tmp_path):
    gen = make_generator("embedded", model=str(random_generator), device="cpu", steps=1)
    result = gen.generate(GenerationRequest("a woman", n=1, label=1, target="Male"), tmp_path)
    assert result.rows[0]["intended"]["Male"] == 1
    assert any("class wins" in note for note in result.notes)


def test_a_gpu_batch_follows_its_free_memory(random_generator, monkeypatch):
    from fairloop.diffusion.embedded import IMAGE_BYTES_CUDA, MAX_CUDA_BATCH, cuda_batch_size

    assert cuda_batch_size(0) == 32                              # never below the CPU's batch
    assert cuda_batch_size(100 * IMAGE_BYTES_CUDA) == 80         # 80 % of the free memory
    assert cuda_batch_size(10**12) == MAX_CUDA_BATCH
    monkeypatch.setattr("fairloop.diffusion.embedded.resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (200 * IMAGE_BYTES_CUDA, 0))
    assert make_generator("embedded", model=str(random_generator)).sampling.batch_size == 160
    assert make_generator("embedded", model=str(random_generator), batch_size=8).sampling.batch_size == 8


def test_cancel_stops_between_batches_and_keeps_finished_images(random_generator, tmp_path):
    import threading

    cancel = threading.Event()
    gen = make_generator("embedded", model=str(random_generator), device="cpu", steps=1, batch_size=2, cancel=cancel)

    def stop_after_first(stage, done, total):
        cancel.set()

    with pytest.raises(ConfigError, match="cancelled after 2 of 6"):
        gen.generate(GenerationRequest("a man", n=6, label=1, target="Male"), tmp_path, progress=stop_after_first)
    assert len(list(tmp_path.glob("*.png"))) == 2


def test_missing_weights_and_bad_settings_are_clear_errors(tmp_path, random_generator):
    with pytest.raises(ConfigError, match="fairloop generator train"):
        make_generator("embedded", model=str(tmp_path / "nothing"))
    with pytest.raises(ConfigError, match="strength"):
        make_generator("embedded", model=str(random_generator), device="cpu", strength=1.5)
    with pytest.raises(ConfigError, match="--generator-model"):
        make_generator("sd")


# -------------------------------------------------------------------------------------- training
def test_training_runs_every_stage_resumes_and_writes_a_loadable_generator(tmp_path):
    from fairloop.diffusion.embedded import EmbeddedPipeline
    from fairloop.diffusion.training import GeneratorTrainConfig, train_generator

    cfg = GeneratorTrainConfig(n_images=48, held_out=8, ae_steps=2, decoder_steps=2, unet_steps=2, batch_size=4,
                               critic_epochs=1, checkpoint_every=1, threads=1)
    out = train_generator(cfg, tmp_path / "work", tmp_path / "out", log=lambda m: None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["seed"] == cfg.data_seed and manifest["config"]["unet_steps"] == 2
    assert manifest["scaling_factor"] > 0 and {"autoencoder_psnr_db", "decoder_psnr_db"} <= set(manifest["scores"])
    assert 0 <= manifest["scores"]["reconstructions_all_attributes_kept_by_critic"] <= 1
    assert 0 <= manifest["scores"]["checker_held_out_all_attributes"] <= 1  # the shipped critic, trained last
    assert (tmp_path / "work" / "checker" / "step.json").is_file() and (out / "critic" / "weights.safetensors").is_file()
    assert json.loads((tmp_path / "work" / "unet" / "step.json").read_text())["step"] == 2

    # more steps later: the finished stages are reused and the UNet continues from step 2
    logs: list[str] = []
    train_generator(GeneratorTrainConfig(**{**cfg.__dict__, "unet_steps": 3}), tmp_path / "work", tmp_path / "out",
                    log=logs.append)
    assert not any(m.startswith(("pool", "autoencoder: step", "encode", "critic", "decoder: step", "checker"))
                   for m in logs)
    assert [m for m in logs if m.startswith("unet: step")] == [m for m in logs if "step 3/3" in m]
    assert EmbeddedPipeline.load(out).text_to_image(["a man"], [0])[0].size == (64, 64)


class _GuidedByTeacher(torch.nn.Module):
    """A stand-in for a perfectly distilled UNet: guidance at ``scale`` computed from the teacher's
    two passes, in one call with the caption alone."""

    def __init__(self, teacher, empty: torch.Tensor, scale: float):
        super().__init__()
        self.teacher, self.empty, self.scale, self.calls = teacher, empty, scale, []

    def forward(self, latents, t, encoder_hidden_states):
        from types import SimpleNamespace

        self.calls.append(latents.shape[0])
        n = latents.shape[0]
        both = self.teacher(torch.cat([latents, latents]), t,
                            encoder_hidden_states=torch.cat([self.empty.expand(n, -1, -1), encoder_hidden_states]))
        uncond, cond = both.sample.chunk(2)
        return SimpleNamespace(sample=uncond + self.scale * (cond - uncond))


def test_one_pass_sampling_with_a_guided_unet_draws_what_two_passes_draw(random_generator):
    """The one-pass path feeds the guided UNet what the two-pass path feeds the teacher (latents,
    timesteps, caption, the edit's mask): with a guided UNet that is exactly the teacher's guidance,
    the images agree; the teacher runs only for what distillation does not cover."""
    from PIL import Image

    from fairloop.diffusion.embedded import EmbeddedPipeline, SamplingConfig

    teacher = EmbeddedPipeline.load(random_generator)
    guided = _GuidedByTeacher(teacher.unet, teacher.text_encoder([""]), 5.0)
    pipe = EmbeddedPipeline(teacher.vae, teacher.unet, teacher.scaling_factor, text_encoder=teacher.text_encoder,
                            manifest={**teacher.manifest, "guided_unet": {"guidance": 5.0}}, guided_unet=guided)
    one, two = SamplingConfig(steps=3, strength=0.7), SamplingConfig(steps=3, strength=0.7, distilled=False)
    assert pipe.one_pass(one, "") and not pipe.one_pass(two, "") and not pipe.one_pass(one, "blurry")
    assert not pipe.one_pass(SamplingConfig(guidance=3.0), "") and not teacher.one_pass(one, "")

    def close(a, b):
        return all(np.abs(np.asarray(x, int) - np.asarray(y, int)).max() <= 1 for x, y in zip(a, b))

    drawn = pipe.text_to_image(["a man", "a woman"], [1, 2], config=one)
    assert guided.calls == [2, 2, 2]  # one call a step, the batch's rows once
    assert close(drawn, pipe.text_to_image(["a man", "a woman"], [1, 2], config=two))
    assert guided.calls == [2, 2, 2]  # two-pass sampling never touches the guided UNet

    sources = [Image.fromarray(np.asarray(im)) for im in drawn]
    edit = dict(prompts=["a man with gray hair", "a woman with gray hair"], seeds=[5, 6],
                source_prompts=["a man", "a woman"])
    assert close(pipe.image_to_image(sources, **edit, config=one), pipe.image_to_image(sources, **edit, config=two))
    inverted = pipe.image_to_image(sources, **edit, config=replace(one, edit="invert", solver="ddim"))
    assert len(guided.calls) == 3 + 2 and len(inverted) == 2  # the masked edit's 2 steps at 0.7; inversion: none


def test_negative_prompts_the_generator_cannot_read_are_dropped(random_generator, tmp_path):
    gen = make_generator("embedded", model=str(random_generator), device="cpu", steps=1, tries=1)

    def drawn(negative):
        request = GenerationRequest("a man with black hair", n=1, label=1, target="Male", negative_prompt=negative)
        return gen.generate(request, tmp_path / "out").rows[0]["path"]

    assert drawn("blurry, distorted, watermark") == drawn("")  # nothing it knows: the same image, drawn once
    assert drawn("eyeglasses") != drawn("")
    assert drawn("a woman with black hair, eyeglasses") == drawn("")  # contradicts the prompt: not read at all


def test_guidance_distillation_adds_a_one_pass_unet_learns_and_resumes(random_generator, tmp_path):
    from safetensors.torch import load_file

    from fairloop.diffusion.embedded import EmbeddedPipeline, SamplingConfig
    from fairloop.diffusion.training import DistilConfig, distil_guidance

    cfg = DistilConfig(n_images=16, steps=2, batch_size=4, lr=1e-3, checkpoint_every=1, threads=1)
    out = distil_guidance(cfg, random_generator, tmp_path / "work", tmp_path / "out", log=lambda m: None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["guided_unet"]["guidance"] == 5.0 and manifest["scaling_factor"] == 1.0
    teacher_file = "unet/diffusion_pytorch_model.safetensors"
    assert (out / teacher_file).read_bytes() == (random_generator / teacher_file).read_bytes()
    pipe = EmbeddedPipeline.load(out)
    assert pipe.one_pass(SamplingConfig(), "") and pipe.model_id != EmbeddedPipeline.load(random_generator).model_id
    student = load_file(out / "unet-guided" / "diffusion_pytorch_model.safetensors")
    teacher = load_file(random_generator / teacher_file)
    assert any(not torch.equal(student[k], teacher[k]) for k in teacher)  # it trained

    logs: list[str] = []  # more steps later: the pool is reused and training continues from step 2
    distil_guidance(replace(cfg, steps=3), random_generator, tmp_path / "work", tmp_path / "out", log=logs.append)
    assert [m for m in logs if m.startswith(("pool", "encode", "distil"))] == [m for m in logs if "step 3/3" in m]
    assert logs[0].endswith("eta 0:00")  # every step report says how long is left
    assert json.loads((tmp_path / "work" / "guided" / "step.json").read_text())["step"] == 3


# ------------------------------------------------------------------------------------------ CLI
def test_cli_generate_writes_images_grid_and_manifest(random_generator, tmp_path):
    from typer.testing import CliRunner

    from fairloop.cli import app

    out = tmp_path / "gen"
    result = CliRunner().invoke(app, ["generate", "a woman with gray hair", "-n", "3", "--model", str(random_generator),
                                      "--steps", "1", "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["images"]) == 3 and manifest["generator"] == "embedded"
    assert (out / "grid.png").is_file()
    from PIL import Image

    assert Image.open(out / "grid.png").size == (3 * 64, 64)


def test_cli_generate_from_image(random_generator, synth_data, tmp_path):
    from typer.testing import CliRunner

    from fairloop.cli import app

    source = synth_data.table["path"].iloc[0]
    result = CliRunner().invoke(app, ["generate", "a man with gray hair", "-n", "2", "--model", str(random_generator),
                                      "--from-image", source, "--strength", "0.4", "--steps", "2",
                                      "--out", str(tmp_path / "edit"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "edit" / "manifest.json").read_text())["images"]
    assert [r["strength"] for r in rows] == [0.4, 0.4] and rows[0]["seed"] != rows[1]["seed"]
    assert "sources lack SynthFaces attributes" in result.output  # the manifest's notes are printed too


def test_the_shipped_weights_load_and_draw(tmp_path):
    """The packaged generator (not random weights): its manifest says how it was made, and it draws
    with its critic's check."""
    from fairloop.diffusion.embedded import ASSETS

    manifest = json.loads((ASSETS / "manifest.json").read_text())
    assert manifest["data"]["seed"] and manifest["config"]["unet_steps"] > 0 and manifest["seconds"]["unet"] > 0
    gen = make_generator("embedded", device="cpu", steps=2)
    assert gen.model_id.startswith("fairloop-embedded-ldm@")
    result = gen.generate(GenerationRequest("a woman with gray hair", n=2, label=0, target="Male", seed=1), tmp_path)
    from PIL import Image

    assert [Image.open(tmp_path / r["file"]).size for r in result.rows] == [(64, 64), (64, 64)]
    assert all(r["critic_misses"] is not None for r in result.rows)  # the shipped weights check their draws
