"""Verification of generated images: attribute oracle, intent scores, FID/KID, real-vs-generated, CLD, CLIP."""

from __future__ import annotations

import json
import string

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from fairloop.data.synthfaces import ATTRIBUTES, HAIR_COLORS, render_pool
from fairloop.errors import ConfigError, DataError
from fairloop.tools import quality
from fairloop.tools.quality import (
    AttributeOracle,
    as_image_tensor,
    clip_directional_similarity,
    clip_embeddings,
    clip_score_from_embeddings,
    clip_scores,
    directional_similarity_from_embeddings,
    edit_distance,
    frechet_distance,
    kernel_inception_distance,
    real_vs_generated_accuracy,
    score_intent,
    train_oracle,
)



@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Every model here is tiny: one thread is faster than two fighting over a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def oracle() -> AttributeOracle:
    """A deliberately tiny oracle: 300 training renders, 100 held out, 3 epochs at width 16."""
    return train_oracle(n=400, epochs=3, seed=0, test_fraction=0.25, width=16, batch_size=32, device="cpu")


@pytest.fixture(scope="module")
def renders() -> np.ndarray:
    return render_pool(240, seed=7)[0]


# ------------------------------------------------------------------------------------------ oracle


def test_a_tiny_oracle_beats_chance_on_hair_colours_and_records_its_held_out_scores(oracle):
    assert oracle.attributes == ATTRIBUTES
    assert set(oracle.scores) == set(ATTRIBUTES) and all(0 <= v <= 1 for v in oracle.scores.values())
    hair = [oracle.balanced_scores[h] for h in HAIR_COLORS]
    assert min(hair) > 0.6 and np.mean(hair) > 0.75, oracle.balanced_scores
    assert oracle.meta["n"] == 400 and oracle.meta["n_test"] == 100 and oracle.meta["seed"] == 0


def test_predict_and_features_take_tensors_or_pil_images_of_any_size(oracle, renders):
    x = _tensor(renders[:5])
    probs, feats = oracle.predict(x), oracle.features(x)
    assert probs.shape == (5, len(ATTRIBUTES)) and ((probs >= 0) & (probs <= 1)).all()
    assert feats.shape == (5, 64) and np.isfinite(feats).all()
    pil = [Image.fromarray(a) for a in renders[:5]]
    np.testing.assert_allclose(oracle.predict(pil), probs, atol=1e-6)
    big = [img.resize((128, 160)) for img in pil]  # non-square: centre-cropped, then resized
    assert oracle.predict(big).shape == (5, len(ATTRIBUTES))
    assert oracle.predict(torch.nn.functional.interpolate(x, size=96)).shape == (5, len(ATTRIBUTES))
    assert oracle.predict([]).shape == (0, len(ATTRIBUTES))
    with pytest.raises(ConfigError):
        oracle.predict(torch.rand(2, 1, 64, 64))


def test_save_load_round_trip_gives_identical_predictions(oracle, renders, tmp_path):
    folder = oracle.save(tmp_path / "oracle")
    meta = json.loads((folder / "oracle.json").read_text())
    assert meta["attributes"] == list(ATTRIBUTES) and meta["arch"] == "smallcnn" and meta["image_size"] == 64
    assert {"seed", "n", "epochs", "scores", "balanced_scores", "fairloop_version"} <= set(meta)
    loaded = AttributeOracle.load(folder)
    x = _tensor(renders[:8])
    assert np.array_equal(loaded.predict(x), oracle.predict(x))
    assert np.array_equal(loaded.features(x), oracle.features(x))
    assert loaded.scores == oracle.scores


def test_load_and_packaged_explain_what_is_missing(oracle, tmp_path, monkeypatch):
    monkeypatch.setattr(quality, "PACKAGED_ORACLE", tmp_path / "assets" / "attribute-oracle")
    with pytest.raises(ConfigError) as missing:
        AttributeOracle.packaged()
    assert "fairloop generator train-oracle" in missing.value.fix
    oracle.save(quality.PACKAGED_ORACLE)
    assert AttributeOracle.packaged().attributes == ATTRIBUTES
    with pytest.raises(DataError):
        AttributeOracle.load(tmp_path / "nowhere")
    (quality.PACKAGED_ORACLE / "oracle.json").write_text("{not json")
    with pytest.raises(DataError):
        AttributeOracle.load(quality.PACKAGED_ORACLE)


# ------------------------------------------------------------------------------------------ intent


def test_score_intent_arithmetic():
    attributes = ("Male", "Smiling", "Wearing_Hat")
    probs = np.array([[0.9, 0.2, 0.6],    # Male 1 ✓, hat 1 ✓           → pass
                      [0.4, 0.7, 0.1],    # Male 1 ✗, Smiling 1 ✓       → fail
                      [0.1, 0.3, 0.8],    # hat 0 ✗                     → fail
                      [0.5, 0.5, 0.5]])   # nothing determined          → pass
    intended = [{"Male": 1, "Wearing_Hat": 1}, {"Male": 1, "Smiling": 1}, {"Wearing_Hat": 0}, {}]
    score = score_intent(probs, intended, attributes)
    assert score.pass_mask.tolist() == [True, False, False, True]
    assert score.all_correct_rate == 0.5
    assert score.requested_present == 0.75 and score.unrequested_absent == 0.0
    assert score.per_attribute == {"Male": 0.5, "Smiling": 1.0, "Wearing_Hat": 0.5}
    assert score.counts == {"requested": 4, "ruled_out": 1}
    assert json.loads(json.dumps(score.as_dict()))["pass_mask"] == [True, False, False, True]


def test_score_intent_leaves_undefined_rates_as_none_and_rejects_bad_input():
    score = score_intent(np.array([[0.9, 0.1]]), [{"Male": 1}], ("Male", "Smiling"))
    assert score.requested_present == 1.0 and score.unrequested_absent is None
    with pytest.raises(ConfigError):
        score_intent(np.array([[0.9, 0.1]]), [{"Bald": 1}], ("Male", "Smiling"))
    with pytest.raises(ConfigError):
        score_intent(np.array([[0.9, 0.1]]), [{"Male": 2}], ("Male", "Smiling"))
    with pytest.raises(ConfigError):
        score_intent(np.array([[0.9, 0.1]]), [{}, {}], ("Male", "Smiling"))


# ---------------------------------------------------------------------------------- distributions


def test_frechet_distance_is_zero_for_the_same_sample_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    same, shifted = frechet_distance(a, b), frechet_distance(a, b + 1.0)
    assert same < 0.5 and shifted > 7 and shifted > 10 * same  # ‖shift‖² = 8
    small = frechet_distance(rng.normal(size=(10, 32)), rng.normal(size=(12, 32)))  # singular covariances
    assert np.isfinite(small) and small >= 0
    with pytest.raises(ConfigError):
        frechet_distance(a, b[:, :4])


def test_kernel_inception_distance_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    same_mean, same_std = kernel_inception_distance(a, b, subsets=20, subset_size=100)
    shifted_mean, _ = kernel_inception_distance(a, b + 0.5, subsets=20, subset_size=100)
    assert abs(same_mean) < 0.05 and same_std >= 0
    assert shifted_mean > 0.2 and shifted_mean > 10 * abs(same_mean)
    assert kernel_inception_distance(a, b, subsets=3, subset_size=100) == kernel_inception_distance(
        a, b, subsets=3, subset_size=100)  # seeded


def test_real_vs_generated_accuracy_sees_blur_but_not_a_second_sample(renders):
    real, other = renders[:120], renders[120:]
    blurred = [Image.fromarray(a).filter(ImageFilter.GaussianBlur(2)) for a in real]
    assert real_vs_generated_accuracy(_tensor(real), blurred, seed=0) > 0.9
    # null: 120 held-out images, so ±0.2 is ~4.5 standard deviations of chance accuracy
    assert abs(real_vs_generated_accuracy(_tensor(real), _tensor(other), seed=0) - 0.5) < 0.2
    with pytest.raises(ConfigError):
        real_vs_generated_accuracy(_tensor(real[:3]), _tensor(other[:3]))


# ------------------------------------------------------------------------------------------ minimality


def test_edit_distance_is_zero_for_unchanged_images_and_about_one_for_another_face(oracle, renders):
    feats = oracle.features(_tensor(renders[:40]))
    assert edit_distance(feats, feats) == 0
    assert edit_distance(feats, feats, metric="cosine") == pytest.approx(0, abs=1e-9)
    assert 0.6 < edit_distance(feats, np.roll(feats, 1, axis=0)) < 1.4  # each edit is a different face
    raw = edit_distance(feats, np.roll(feats, 1, axis=0), normalize=False)
    assert raw == pytest.approx(np.linalg.norm(feats - np.roll(feats, 1, axis=0), axis=1).mean(), rel=1e-5)
    with pytest.raises(ConfigError):
        edit_distance(feats, feats[:-1])
    with pytest.raises(ConfigError):
        edit_distance(np.ones((3, 4)), np.ones((3, 4)))  # no spread among the sources: nothing to normalise by


# ------------------------------------------------------------------------------------------ CLIP


def test_clip_math_on_given_embeddings():
    e1, e2 = np.eye(3)[:1], np.eye(3)[1:2]
    tilted = np.array([[0.5, np.sqrt(0.75), 0.0]])
    assert clip_score_from_embeddings(np.vstack([e1, e1, e1]), np.vstack([e1, -e1, tilted])).tolist() == \
        pytest.approx([100.0, 0.0, 50.0])
    assert directional_similarity_from_embeddings(e1, e2, e1, e2) == pytest.approx([1.0])
    assert directional_similarity_from_embeddings(e1, e2, e2, e1) == pytest.approx([-1.0])
    assert directional_similarity_from_embeddings(e1, e1, e1, e2) == pytest.approx([0.0])  # image unchanged


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A randomly initialised CLIP a few kB in size, saved the way a downloaded one is."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    folder = tmp_path_factory.mktemp("clip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase:
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=8)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder / "model")
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder / "model")
    return folder / "model"


def test_clip_scores_and_directional_similarity_with_a_tiny_clip(tiny_clip, renders):
    src, edit = _tensor(renders[:3]), [Image.fromarray(a) for a in renders[3:6]]
    prompts, edited = ["a man", "a woman", "a face"], ["a bald man", "a woman with a hat", "a smiling face"]
    image_e, text_e = clip_embeddings(src, prompts, tiny_clip)
    assert image_e.shape == text_e.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(image_e, axis=1), 1, rtol=1e-5)
    scores = clip_scores(src, prompts, tiny_clip)
    assert scores.shape == (3,) and np.isfinite(scores).all() and ((scores >= 0) & (scores <= 100)).all()
    np.testing.assert_allclose(scores, clip_score_from_embeddings(image_e, text_e), rtol=1e-5)
    direction = clip_directional_similarity(src, edit, prompts, edited, tiny_clip)
    assert direction.shape == (3,) and np.isfinite(direction).all() and (np.abs(direction) <= 1 + 1e-6).all()
    assert clip_directional_similarity(src, src, prompts, edited, tiny_clip) == pytest.approx([0, 0, 0], abs=1e-5)


def test_clip_that_cannot_be_loaded_is_a_config_error(tmp_path, renders):
    with pytest.raises(ConfigError):
        clip_scores(_tensor(renders[:1]), ["a man"], tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError):
        clip_scores(_tensor(renders[:1]), ["a man"], tmp_path / "empty")


def test_as_image_tensor_resizes_and_rejects_non_rgb_batches():
    assert as_image_tensor(torch.rand(2, 3, 32, 48)).shape == (2, 3, 64, 64)
    with pytest.raises(ConfigError):
        as_image_tensor(torch.rand(3, 64, 64))


def test_verify_generated_checks_named_attributes_strictly_and_tolerates_one_other(tmp_path):
    """With the shipped oracle, on renders whose attributes are known exactly."""
    from fairloop.data.synthfaces import render_face, sample_attributes
    from fairloop.tools.quality import verify_generated

    oracle = AttributeOracle.packaged()
    faces = sample_attributes(4, np.random.default_rng(3), {"Male": np.array([1, 1, 0, 0], np.int8),
                                                           "Gray_Hair": np.zeros(4, np.int8),
                                                           "Eyeglasses": np.zeros(4, np.int8),
                                                           "Wearing_Hat": np.zeros(4, np.int8)})
    rows = []
    for i, face in enumerate(faces.to_dict("records")):
        render_face(face, 300 + i).save(tmp_path / f"{i}.png")
        rows.append({"path": str(tmp_path / f"{i}.png"), "prompt": "a man without gray hair", "intended": dict(face)})
    rows[1]["intended"] = {**rows[1]["intended"], "Eyeglasses": 1}                      # one other wrong: tolerated
    rows[2]["prompt"] = "a woman without gray hair"
    rows[2]["intended"] = {**rows[2]["intended"], "Eyeglasses": 1, "Wearing_Hat": 1}   # two others wrong
    rows[3]["intended"] = {**rows[3]["intended"], "Male": 1}                           # the class is wrong
    passed, summary = verify_generated(oracle, rows, "Male")
    assert passed.tolist() == [True, True, False, False]
    assert summary["checked"] == 4 and summary["passed"] == 2 and summary["named_missed"] == {"Male": 1}
    assert verify_generated(oracle, [], "Male")[1]["checked"] == 0
