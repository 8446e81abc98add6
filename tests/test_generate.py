"""The prompt parser and the ``render`` generator (the exact SynthFaces oracle)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fairloop.data.synthfaces import ATTRIBUTES, HAIR_STATES, read_identities, render_face
from fairloop.errors import ConfigError
from fairloop.generators import GenerationRequest, apply_edits, make_generator
from fairloop.tools.generate import manifest_digest
from fairloop.tools.prompt_parser import ATTRIBUTE_PHRASES, attribute_phrase, parse_prompt


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a woman with gray hair", {"Male": 0, "Gray_Hair": 1}),
        ("a man without eyeglasses", {"Male": 1, "Eyeglasses": 0}),
        ("a young man with blond hair and eyeglasses", {"Young": 1, "Male": 1, "Blond_Hair": 1, "Eyeglasses": 1}),
        ("an old woman with grey hair and no earrings, not smiling",
         {"Young": 0, "Male": 0, "Gray_Hair": 1, "Wearing_Earrings": 0, "Smiling": 0}),
        # seed 000's analyzer output, verbatim (Double_Chin is no SynthFaces attribute: "double chin" reads as Chubby)
        ("Generate an image with minimal changes, reducing the prominence of GrayHair, Double Chin, and Chubby "
         "attributes while maintaining the overall appearance as male.", {"Gray_Hair": 0, "Chubby": 0, "Male": 1}),
        ("Create an image with slight adjustments to reduce the emphasis on Attractive, Black-Hair, and "
         "Bags-Under-Eyes attributes, ensuring that the modified image remains convincingly female.",
         {"Black_Hair": 0, "Male": 0}),
        ("Pale_Skin person wearing a hat", {"Pale_Skin": 1, "Wearing_Hat": 1}),
        # a negation ends where a new clause opens ("who", "wearing", "with", ...)
        ("a man without gray hair, who is young", {"Male": 1, "Gray_Hair": 0, "Young": 1}),
        ("a man without gray hair wearing eyeglasses", {"Male": 1, "Gray_Hair": 0, "Eyeglasses": 1}),
        ("a woman who is not young", {"Male": 0, "Young": 0}),
    ],
)
def test_parse_prompt(prompt, expected):
    assert parse_prompt(prompt, ATTRIBUTES).edits == expected


def test_parse_prompt_ignores_attributes_outside_the_vocabulary_and_reports_conflicts():
    assert parse_prompt("a smiling man", ["Male"]).edits == {"Male": 1}
    parsed = parse_prompt("a smiling face, not smiling", ATTRIBUTES)
    assert parsed.edits == {"Smiling": 0}
    assert parsed.conflicts and "Smiling" in parsed.conflicts[0]


def test_apply_edits_keeps_exactly_one_hair_state():
    rng = np.random.default_rng(0)
    base = {a: 0 for a in ATTRIBUTES} | {"Male": 1, "Gray_Hair": 1, "Mustache": 1}
    grayless = apply_edits(base, {"Gray_Hair": 0}, rng, avoid={"Blond_Hair"})
    assert sum(grayless[h] for h in HAIR_STATES) == 1 and grayless["Gray_Hair"] == 0 and grayless["Blond_Hair"] == 0
    blond = apply_edits(base, {"Blond_Hair": 1}, rng)
    assert [h for h in HAIR_STATES if blond[h]] == ["Blond_Hair"]
    woman = apply_edits(base | {"Gray_Hair": 0, "Bald": 1}, {"Male": 0}, rng)
    assert woman["Mustache"] == 0 and woman["Bald"] == 0 and sum(woman[h] for h in HAIR_STATES) == 1


def test_render_edits_are_exact_counterfactuals_of_their_sources(synth_data, tmp_path):
    train = synth_data.split("train").table
    sources = tuple(train[(train["Male"] == 0) & (train["Gray_Hair"] == 0)].index[:6])
    request = GenerationRequest(prompt="a woman with gray hair", n=6, label=0, target="Male", source_ids=sources, seed=1)
    result = make_generator("render").generate(request, tmp_path, sources=synth_data)
    identities = read_identities(synth_data.root)
    assert len(result.rows) == 6 and not result.notes
    for row in result.rows:
        source = train.loc[row["source_id"], list(ATTRIBUTES)].to_dict()
        changed = {a for a in ATTRIBUTES if row["attributes"][a] != source[a]}
        assert changed <= set(HAIR_STATES) and row["attributes"]["Gray_Hair"] == 1 and row["attributes"]["Male"] == 0
        expected = np.asarray(render_face(row["attributes"], int(identities[row["source_id"]])))
        assert np.array_equal(np.asarray(Image.open(row["path"]).convert("RGB")), expected)
        assert row["backend"] == "render" and row["intended"] == {"Male": 0, "Gray_Hair": 1}


def test_render_edits_of_a_subtle_folder_are_drawn_in_its_style(tmp_path):
    from fairloop.data.datasets import load_dataset
    from fairloop.data.synthfaces import Scenario, write_synthfaces

    root = write_synthfaces(tmp_path / "young", n=40, scenario=Scenario("Young", "Pale_Skin"), cues="subtle")
    data = load_dataset("celeba", root)
    sources = tuple(data.table[data.table["Young"] == 1].index[:3])
    request = GenerationRequest(prompt="an old person", n=3, label=0, target="Young", source_ids=sources, seed=1)
    result = make_generator("render").generate(request, tmp_path / "out", sources=data)
    identities = read_identities(root)
    for row in result.rows:
        image = np.asarray(Image.open(row["path"]).convert("RGB"))
        style = {cues: np.array_equal(image, np.asarray(render_face(row["attributes"], int(identities[row["source_id"]]),
                                                                    cues=cues))) for cues in ("subtle", "salient")}
        assert style == {"subtle": True, "salient": False} and row["attributes"]["Young"] == 0


def test_render_text_to_image_honours_the_prompt_and_the_class(tmp_path):
    gen = make_generator("render")
    request = GenerationRequest(prompt="a woman with eyeglasses", n=20, label=1, target="Male",
                                negative_prompt="blurry, gray hair", seed=3)
    result = gen.generate(request, tmp_path)
    assert len(result.rows) == 20 and any("class wins" in note for note in result.notes)
    for row in result.rows:
        assert row["attributes"]["Male"] == 1 and row["attributes"]["Eyeglasses"] == 1
        assert row["attributes"]["Gray_Hair"] == 0  # the negative prompt's attribute is avoided
    assert len({row["file"] for row in result.rows}) == 20
    again = gen.generate(request, tmp_path)
    assert manifest_digest(again.rows) == manifest_digest(result.rows)  # same seed, same content-addressed files


def test_generation_errors():
    with pytest.raises(ConfigError):
        make_generator("nope")
    with pytest.raises(ConfigError):
        GenerationRequest(prompt=" ", n=1, label=0, target="Male").validate()
    with pytest.raises(ConfigError):
        make_generator("render").generate(GenerationRequest("a man", 1, 1, "Male", source_ids=("x",)), "/tmp")


@pytest.mark.parametrize("value", [0, 1])
def test_the_parser_reads_every_attribute_phrase_fairloop_writes(value):
    """Descriptions the analyzer and the proxy matching compose must parse back to what they mean."""
    names = list(ATTRIBUTE_PHRASES)
    for name in names:
        if name in ("Male", "Gray_Hair"):
            continue
        for base, meant in (("a man without gray hair, ", {"Male": 1, "Gray_Hair": 0}),
                            ("a woman with gray hair, ", {"Male": 0, "Gray_Hair": 1})):
            prompt = base + attribute_phrase(name, bool(value))
            assert parse_prompt(prompt, names).edits == {**meant, name: value}, prompt


def test_an_empty_image_left_by_a_full_disk_is_redrawn_on_resume(tmp_path, synth_data):
    from fairloop.generators import GenerationRequest, make_generator

    request = GenerationRequest(prompt="a woman with gray hair", n=3, label=0, target="Male", seed=4,
                                source_ids=tuple(synth_data.split("train").table.index[:3]))
    first = make_generator("render").generate(request, tmp_path, sources=synth_data)
    victim = first.rows[1]["path"]
    before = open(victim, "rb").read()
    open(victim, "wb").close()  # what a write cut off by ENOSPC leaves under a non-atomic writer
    again = make_generator("render").generate(request, tmp_path, sources=synth_data)
    assert [r["path"] for r in again.rows] == [r["path"] for r in first.rows]
    assert open(victim, "rb").read() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind
