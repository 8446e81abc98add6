"""Tests of fairloop.data.synthfaces: the pure renderer and its counterfactuals, the sampled
attribute table and its scenario, and the CelebA-format folder written to disk."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fairloop.data import synthfaces
from fairloop.data.datasets import load_dataset
from fairloop.data.synthfaces import (
    ATTRIBUTES,
    CUES,
    DEPENDENCIES,
    HAIR_COLORS,
    HAIR_STATES,
    IMAGE_SIZE,
    JPEG_SETTINGS,
    SUBTLE_TARGETS,
    Scenario,
    default_cues,
    read_cues,
    read_identities,
    render_face,
    sample_attributes,
    scenario_table,
    write_synthfaces,
)
from fairloop.errors import ConfigError, DataError

IDENTITIES = range(8)


def plain(**overrides: int) -> dict[str, int]:
    """A woman with brown hair and no other attribute, with ``overrides`` applied."""
    attrs = {name: 0 for name in ATTRIBUTES}
    attrs["Brown_Hair"] = 1
    attrs.update(overrides)
    return attrs


def with_hair(attrs: dict[str, int], state: str) -> dict[str, int]:
    """Hair is categorical: set one state and clear the others."""
    out = dict(attrs)
    for name in HAIR_STATES:
        out[name] = 0
    out[state] = 1
    return out


def pixels(attrs, identity: int, cues: str = "salient") -> np.ndarray:
    return np.asarray(render_face(attrs, identity, cues=cues), dtype=np.int16)


def flipped(attrs: dict[str, int], name: str) -> dict[str, int]:
    return {**attrs, name: 1 - attrs[name]}


# ------------------------------------------------------------------------------------- rendering


def test_render_returns_64x64_rgb_image():
    img = render_face(plain(), 7)
    assert isinstance(img, Image.Image)
    assert img.mode == "RGB"
    assert img.size == (IMAGE_SIZE, IMAGE_SIZE) == (64, 64)
    assert render_face(plain(), 7, size=32).size == (32, 32)


def test_render_is_deterministic():
    for identity in (0, 1, 123456789, 2**31 - 2):
        a, b = pixels(plain(Smiling=1), identity), pixels(plain(Smiling=1), identity)
        assert np.array_equal(a, b)


def test_render_is_pure_in_its_arguments():
    """Rendering other faces in between, or global RNG state, does not change a face."""
    first = pixels(plain(), 3)
    np.random.seed(99)
    for identity in range(5):
        render_face(plain(Male=1, Eyeglasses=1), identity)
    assert np.array_equal(first, pixels(plain(), 3))


def test_different_identities_give_different_images():
    images = [pixels(plain(), identity) for identity in IDENTITIES]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert np.abs(images[i] - images[j]).mean() > 2.0, (i, j)


def test_image_is_not_blank():
    img = pixels(plain(), 0)
    assert img.std() > 20  # a face on a background, not a flat colour


def test_flipping_an_attribute_changes_the_image_and_flipping_back_restores_it():
    for identity in IDENTITIES:
        base = plain()
        once = flipped(base, "Smiling")
        back = flipped(once, "Smiling")
        assert back == base
        assert not np.array_equal(pixels(base, identity), pixels(once, identity))
        assert np.array_equal(pixels(base, identity), pixels(back, identity))


def test_eyeglasses_change_only_the_eye_region():
    for identity in IDENTITIES:
        without, with_ = pixels(plain(), identity), pixels(plain(Eyeglasses=1), identity)
        changed = np.abs(without - with_).max(axis=2) > 0
        assert changed.sum() > 30, identity  # the glasses are visible
        assert changed.mean() < 0.12, identity  # most of the image is identical
        third = IMAGE_SIZE * 2 // 3
        assert not changed[third:].any(), identity  # bottom third: mouth, chin, shirt
        for corner in (changed[:10, :10], changed[:10, -10:], changed[-10:, :10], changed[-10:, -10:]):
            assert not corner.any(), identity  # background
        rows = np.flatnonzero(changed.any(axis=1))
        assert rows.min() >= 12 and rows.max() <= 42, (identity, rows.min(), rows.max())


def test_gray_hair_is_much_brighter_than_black_hair_on_the_same_person():
    # top centre of the head: the hair cap (no hat, no bangs)
    top = (slice(10, 20), slice(24, 40))
    for identity in IDENTITIES:
        gray = pixels(with_hair(plain(), "Gray_Hair"), identity)
        black = pixels(with_hair(plain(), "Black_Hair"), identity)
        gap = gray[top].mean() - black[top].mean()
        assert gap > 60, (identity, gap)
        # the same person: only hair (and brow) pixels change, not the whole image
        changed = np.abs(gray - black).max(axis=2) > 0
        assert 0.05 < changed.mean() < 0.5, identity


def test_hair_colors_render_distinct_brightness_order():
    top = (slice(10, 20), slice(24, 40))
    means = {h: pixels(with_hair(plain(), h), 0)[top].mean() for h in HAIR_COLORS}
    assert means["Black_Hair"] < means["Brown_Hair"] < means["Gray_Hair"]
    assert means["Brown_Hair"] < means["Blond_Hair"]


@pytest.mark.parametrize("name", ATTRIBUTES)
def test_every_attribute_is_visible(name):
    base = plain()
    if name in HAIR_STATES:
        start = base if name != "Brown_Hair" else with_hair(base, "Black_Hair")
        changed = with_hair(start, name)
    else:
        start, changed = base, flipped(base, name)
    assert start != changed
    strongest = 0
    for identity in IDENTITIES:
        diff = np.abs(pixels(start, identity) - pixels(changed, identity)).max(axis=2)
        strongest = max(strongest, int((diff > 20).sum()))
    assert strongest >= 10, f"{name} changes at most {strongest} pixels"


@pytest.mark.parametrize("cues", CUES)
@pytest.mark.parametrize("name", ATTRIBUTES)
def test_flipping_an_attribute_keeps_the_rest_of_the_person(name, cues):
    """A counterfactual changes what the attribute draws and nothing else: the background (top
    corners) and the global brightness stay exactly the same for every attribute."""
    base = plain()
    changed = with_hair(base, name) if name in HAIR_STATES else flipped(base, name)
    if changed == base:
        changed = with_hair(base, "Black_Hair")
    for identity in range(12):
        diff = np.abs(pixels(base, identity, cues) - pixels(changed, identity, cues)).max(axis=2)
        assert not diff[:6, :6].any() and not diff[:6, -6:].any(), (name, identity)
        assert (diff == 0).mean() > 0.5, (name, identity)


def test_pale_skin_counterfactual_keeps_hair_and_clothes():
    # regression: Pale_Skin used to consume an extra random draw, so the pale twin of a person got
    # another hair style, shirt colour, eye spacing and brightness
    for identity in IDENTITIES:
        dark = pixels(plain(), identity)
        pale = pixels(plain(Pale_Skin=1), identity)
        top = (slice(6, 14), slice(24, 40))  # hair cap
        assert np.array_equal(dark[top], pale[top]), identity
        assert np.array_equal(dark[-4:], pale[-4:]), identity  # shirt
        face = (slice(40, 44), slice(28, 36))  # chin: skin
        assert pale[face].mean() > dark[face].mean(), identity


def test_smiling_changes_only_the_mouth():
    for identity in IDENTITIES:
        diff = np.abs(pixels(plain(), identity) - pixels(plain(Smiling=1), identity)).max(axis=2) > 0
        rows = np.flatnonzero(diff.any(axis=1))
        assert rows.size and rows.min() >= 28 and rows.max() <= 50, identity
        assert diff.mean() < 0.06, identity


def test_missing_attributes_default_to_zero_and_missing_hair_renders_brown():
    # render_face reads absent keys as 0, and a row with no hair state gets brown hair
    no_hair = {name: 0 for name in ATTRIBUTES}
    assert np.array_equal(pixels(no_hair, 4), pixels(plain(), 4))
    assert np.array_equal(pixels({"Brown_Hair": 1}, 4), pixels(plain(), 4))


# ------------------------------------------------------------------------------------ cue styles


def cue_strength(name: str, identity: int, cues: str) -> float:
    """Mean absolute pixel change when ``name`` is switched on for this person."""
    return float(np.abs(pixels(plain(), identity, cues) - pixels(plain(**{name: 1}), identity, cues)).mean())


@pytest.mark.parametrize("name", SUBTLE_TARGETS)
def test_subtle_cues_are_fainter_and_vary_from_person_to_person(name):
    base = plain(Young=1) if name != "Young" else plain()  # plain() is old: Young=0
    def strength(identity, cues):
        on = {**base, name: 1 - base[name]} if name != "Mustache" else {**base, "Male": 1, "Mustache": 1}
        off = base if name != "Mustache" else {**base, "Male": 1}
        return float(np.abs(pixels(off, identity, cues) - pixels(on, identity, cues)).mean())

    salient = np.array([strength(i, "salient") for i in range(16)])
    subtle = np.array([strength(i, "subtle") for i in range(16)])
    assert (subtle > 0).mean() >= 0.75, subtle  # still drawn for most people ...
    assert subtle.mean() < 0.75 * salient.mean(), (subtle.mean(), salient.mean())  # ... but fainter
    assert subtle.std() > 0.1 * subtle.mean()  # and more for some people than for others


@pytest.mark.parametrize("name", ["Eyeglasses", "Wearing_Hat", "Pale_Skin", "Male"])
def test_shortcuts_and_the_male_cue_look_the_same_in_both_styles(name):
    for identity in range(6):
        changed = [np.abs(pixels(plain(), identity, cues) - pixels(plain(**{name: 1}), identity, cues)).max(axis=2) > 0
                   for cues in CUES]
        overlap = (changed[0] & changed[1]).sum() / max(changed[0].sum(), 1)
        assert overlap > 0.85, (name, identity, overlap)  # the male jaw meets other strokes: not 1


def test_default_cues_make_the_target_subtle_and_keep_male_salient():
    assert default_cues("Male") == "salient" and default_cues("Eyeglasses") == "salient"
    assert all(default_cues(name) == "subtle" for name in SUBTLE_TARGETS)
    with pytest.raises(ConfigError) as info:
        render_face(plain(), 0, cues="faint")
    assert "faint" in info.value.problem and "subtle" in info.value.fix


def test_written_folder_records_its_cues_and_renders_back_in_them(tmp_path):
    out = write_synthfaces(tmp_path / "young", n=40, scenario=Scenario("Young", "Pale_Skin"), seed=3, cues="subtle")
    assert json.loads((out / "synthfaces.json").read_text())["cues"] == read_cues(out) == "subtle"
    ids, ds = read_identities(out), load_dataset("celeba", out)
    image_id = ds.table.index[0]
    attrs = ds.table.loc[image_id, list(ATTRIBUTES)].to_dict()
    with Image.open(ds.table.loc[image_id, "path"]) as img:
        on_disk = np.asarray(img.convert("RGB"), dtype=np.int16)
    for cues, close in (("subtle", True), ("salient", False)):
        error = np.abs(on_disk - pixels(attrs, int(ids[image_id]), cues)).mean()
        assert (error < 3.0) == close, (cues, error)
    with pytest.raises(ConfigError):
        write_synthfaces(tmp_path / "bad", n=40, cues="faint")
    assert not (tmp_path / "bad").exists()


def test_read_cues_of_older_and_broken_folders(tmp_path):
    assert read_cues(tmp_path) == "salient"  # written before cue styles: no synthfaces.json entry
    (tmp_path / "synthfaces.json").write_text("{not json")
    with pytest.raises(DataError) as info:
        read_cues(tmp_path)
    assert "synthfaces.json" in info.value.problem and info.value.fix


# -------------------------------------------------------------------------------------- sampling


@pytest.fixture(scope="module")
def big_table() -> pd.DataFrame:
    return scenario_table(20000, Scenario(), seed=0)


def agreement(table: pd.DataFrame, scenario: Scenario, split: str = "train") -> float:
    part = table[table["split"] == split]
    return float((part[scenario.target] == part[scenario.spurious]).mean())


def test_table_layout(big_table):
    assert list(big_table.columns) == ["split", "identity", *ATTRIBUTES]
    assert big_table.index[0] == "000001.jpg" and big_table.index[-1] == "020000.jpg"
    assert big_table.index.is_unique
    assert big_table["identity"].dtype == np.int64
    assert big_table["identity"].between(0, 2**31 - 1).all()
    assert big_table["identity"].nunique() > 19900
    for name in ATTRIBUTES:
        assert set(big_table[name].unique()) <= {0, 1}
    sizes = big_table["split"].value_counts()
    assert sizes.to_dict() == {"train": 14000, "val": 3000, "test": 3000}
    assert list(big_table["split"].unique()) == ["train", "val", "test"]  # in this order


def test_training_agreement_matches_correlation(big_table):
    assert agreement(big_table, Scenario()) == pytest.approx(0.95, abs=0.01)
    train = big_table[big_table["split"] == "train"]
    assert train["Male"].mean() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("correlation", [0.0, 0.8, 1.0])
def test_training_agreement_for_other_correlations(correlation):
    scenario = Scenario(correlation=correlation)
    table = scenario_table(20000, scenario, seed=1)
    assert agreement(table, scenario) == pytest.approx(correlation, abs=0.01)


def test_correlation_one_half_is_unbiased():
    scenario = Scenario(correlation=0.5)
    table = scenario_table(20000, scenario, seed=2)
    train = table[table["split"] == "train"]
    assert agreement(table, scenario) == pytest.approx(0.5, abs=0.015)
    # P(Male | Gray_Hair) == P(Male | not Gray_Hair): the spurious attribute carries no signal
    by_gray = train.groupby("Gray_Hair")["Male"].mean()
    assert abs(by_gray[1] - by_gray[0]) < 0.03


@pytest.mark.parametrize("split", ["val", "test"])
def test_val_and_test_are_balanced_over_the_four_groups(big_table, split):
    part = big_table[big_table["split"] == split]
    counts = part.groupby(["Male", "Gray_Hair"]).size()
    assert len(counts) == 4
    assert counts.max() - counts.min() <= 1
    assert agreement(big_table, Scenario(), split) == pytest.approx(0.5, abs=0.001)


def test_small_splits_are_balanced_too():
    table = scenario_table(50, Scenario(), seed=3)
    for split in ("val", "test"):
        counts = table[table["split"] == split].groupby(["Male", "Gray_Hair"]).size()
        assert len(counts) == 4 and counts.max() - counts.min() <= 1


def test_exactly_one_hair_state_per_row(big_table):
    assert (big_table[list(HAIR_STATES)].sum(axis=1) == 1).all()
    for name in HAIR_STATES:
        assert big_table[name].sum() > 0, name


def test_mustache_and_baldness_only_on_men(big_table):
    women = big_table[big_table["Male"] == 0]
    men = big_table[big_table["Male"] == 1]
    assert women["Mustache"].sum() == 0
    assert women["Bald"].sum() == 0
    assert men["Mustache"].mean() > 0.1
    assert men["Bald"].sum() > 0


def test_young_is_rarer_with_gray_hair(big_table):
    gray = big_table[big_table["Gray_Hair"] == 1]["Young"].mean()
    other = big_table[(big_table["Gray_Hair"] == 0) & (big_table["Bald"] == 0)]["Young"].mean()
    assert gray == pytest.approx(0.2, abs=0.03)
    assert other == pytest.approx(0.75, abs=0.03)


def test_other_dependencies(big_table):
    t = big_table
    assert t.loc[t["Bald"] == 1, "Bangs"].sum() == 0  # never bangs when bald
    women, men = t[t["Male"] == 0], t[t["Male"] == 1]
    assert women["Wearing_Lipstick"].mean() > 5 * men["Wearing_Lipstick"].mean()
    assert men["Wearing_Necktie"].mean() > 5 * women["Wearing_Necktie"].mean()
    young, old = t[t["Young"] == 1], t[t["Young"] == 0]
    assert old["Eyeglasses"].mean() > young["Eyeglasses"].mean() + 0.1
    assert t["Pale_Skin"].mean() == pytest.approx(0.15, abs=0.02)
    assert set(DEPENDENCIES) >= {"Male", "hair", "Young", "Mustache"}


def test_same_seed_gives_identical_table_and_other_seed_differs():
    a = scenario_table(500, Scenario(), seed=11)
    b = scenario_table(500, Scenario(), seed=11)
    c = scenario_table(500, Scenario(), seed=12)
    pd.testing.assert_frame_equal(a, b)
    assert not a[list(ATTRIBUTES)].equals(c[list(ATTRIBUTES)])
    assert not a["identity"].equals(c["identity"])


def test_extra_validation_rows_leave_every_other_row_unchanged():
    plain = scenario_table(400, Scenario(), seed=5)
    larger = scenario_table(400, Scenario(), seed=5, extra_val=120)
    pd.testing.assert_frame_equal(larger.iloc[:400], plain)  # same train, val and test rows, same ids
    extra = larger.iloc[400:]
    assert len(extra) == 120 and set(extra["split"]) == {"val"}
    assert (extra.groupby(["Male", "Gray_Hair"]).size() == 30).all()  # balanced like the other validation rows
    assert extra.index[0] == "000401.jpg" and extra["identity"].nunique() == 120
    with pytest.raises(ConfigError, match="--extra-val"):
        scenario_table(400, Scenario(), seed=5, extra_val=-1)


def test_other_target_and_spurious_attributes():
    scenario = Scenario(target="Young", spurious="Pale_Skin", correlation=0.9)
    table = scenario_table(20000, scenario, seed=4)
    assert agreement(table, scenario) == pytest.approx(0.9, abs=0.01)
    for split in ("val", "test"):
        counts = table[table["split"] == split].groupby(["Young", "Pale_Skin"]).size()
        assert len(counts) == 4 and counts.max() - counts.min() <= 1
    # hair is still sampled as a categorical; the default shortcut is not injected
    assert (table[list(HAIR_STATES)].sum(axis=1) == 1).all()
    train = table[table["split"] == "train"]
    assert abs(train.groupby("Gray_Hair")["Male"].mean().diff().iloc[-1]) < 0.05


def test_bald_as_spurious_attribute_is_an_intervention():
    scenario = Scenario(target="Male", spurious="Bald", correlation=0.9)
    table = scenario_table(2000, scenario, seed=5)
    assert agreement(table, scenario) == pytest.approx(0.9, abs=0.03)
    counts = table[table["split"] == "test"].groupby(["Male", "Bald"]).size()
    assert len(counts) == 4 and counts.max() - counts.min() <= 1
    assert (table[list(HAIR_STATES)].sum(axis=1) == 1).all()


def test_sample_attributes_honours_fixed_values():
    rng = np.random.default_rng(0)
    fixed = {"Gray_Hair": np.ones(1000, dtype=np.int8), "Male": np.zeros(1000, dtype=np.int8)}
    table = sample_attributes(1000, rng, fixed)
    assert list(table.columns) == list(ATTRIBUTES)
    assert (table["Gray_Hair"] == 1).all() and (table["Male"] == 0).all()
    assert table[["Black_Hair", "Blond_Hair", "Brown_Hair", "Bald"]].to_numpy().sum() == 0
    assert table["Young"].mean() < 0.3  # children are sampled given the intervention


# ------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "scenario, words",
    [
        (Scenario(target="Gender"), "Gender"),
        (Scenario(spurious="Red_Hair"), "Red_Hair"),
        (Scenario(target="Male", spurious="Male"), "same"),
        (Scenario(correlation=-0.1), "-0.1"),
        (Scenario(correlation=1.5), "1.5"),
        (Scenario(correlation=float("nan")), "nan"),
        (Scenario(target="Gray_Hair", spurious="Black_Hair"), "hair"),
        (Scenario(target="Bald", spurious="Blond_Hair"), "hair"),
    ],
)
def test_scenario_validate_errors(scenario, words):
    with pytest.raises(ConfigError) as info:
        scenario.validate()
    assert words in info.value.problem
    assert info.value.fix
    with pytest.raises(ConfigError):
        scenario_table(100, scenario, seed=0)


def test_scenario_validate_returns_itself_and_accepts_bounds():
    for correlation in (0.0, 0.5, 1.0):
        scenario = Scenario(correlation=correlation)
        assert scenario.validate() is scenario


def test_too_small_n_raises():
    with pytest.raises(ConfigError) as info:
        scenario_table(39, Scenario(), seed=0)
    assert "39" in info.value.problem and info.value.fix
    assert len(scenario_table(40, Scenario(), seed=0)) == 40


# -------------------------------------------------------------------------------------- writing

N = 60
SEED = 7


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "faces"
    calls = []
    result = write_synthfaces(out, n=N, seed=SEED, progress=lambda i, total: calls.append((i, total)))
    assert result == out
    assert calls == [(i, N) for i in range(1, N + 1)]
    return out


@pytest.fixture(scope="module")
def expected_table() -> pd.DataFrame:
    return scenario_table(N, Scenario(), SEED)


def test_written_folder_layout(written):
    names = {p.name for p in written.iterdir()}
    assert names == {"img_align_celeba", "list_attr_celeba.txt", "list_eval_partition.txt",
                     "list_identity_synthfaces.txt", "synthfaces.json"}
    jpgs = sorted(p.name for p in (written / "img_align_celeba").iterdir())
    assert jpgs == [f"{i:06d}.jpg" for i in range(1, N + 1)]
    with Image.open(written / "img_align_celeba" / "000001.jpg") as img:
        assert img.format == "JPEG" and img.size == (64, 64) and img.mode == "RGB"
    # nothing left beside it (the temporary build folder was moved into place)
    assert [p.name for p in written.parent.iterdir()] == ["faces"]


def test_written_attribute_list_is_celeba_format(written, expected_table):
    lines = (written / "list_attr_celeba.txt").read_text().splitlines()
    assert lines[0] == str(N)
    assert lines[1].split() == list(ATTRIBUTES)
    assert len(lines) == N + 2
    for line, (image_id, row) in zip(lines[2:], expected_table.iterrows()):
        fields = line.split()
        assert fields[0] == image_id
        assert len(fields) == 1 + len(ATTRIBUTES)
        assert [int(v) for v in fields[1:]] == [1 if row[a] else -1 for a in ATTRIBUTES]
        # CelebA's aligned columns: "000001.jpg -1  1  1 -1 ..."
        assert line == image_id + " " + " ".join(f"{1 if row[a] else -1:2d}" for a in ATTRIBUTES)


def test_written_partition_and_identity_files(written, expected_table):
    part = (written / "list_eval_partition.txt").read_text().splitlines()
    codes = {"train": "0", "val": "1", "test": "2"}
    assert part == [f"{i} {codes[s]}" for i, s in zip(expected_table.index, expected_table["split"])]
    ident = (written / "list_identity_synthfaces.txt").read_text().splitlines()
    assert ident == [f"{i} {s}" for i, s in zip(expected_table.index, expected_table["identity"])]


def test_written_metadata(written, expected_table):
    meta = json.loads((written / "synthfaces.json").read_text())
    assert meta["dataset"] == "SynthFaces"
    assert meta["n"] == N and meta["seed"] == SEED and meta["image_size"] == 64
    assert meta["scenario"] == {"target": "Male", "spurious": "Gray_Hair", "correlation": 0.95}
    assert meta["dependencies"] == DEPENDENCIES
    assert set(meta["groups"]) == {"train", "val", "test"}
    assert sum(sum(g.values()) for g in meta["groups"].values()) == N
    test = expected_table[expected_table["split"] == "test"]
    assert meta["groups"]["test"]["Male=1,Gray_Hair=1"] == int(((test["Male"] == 1) & (test["Gray_Hair"] == 1)).sum())


def test_written_folder_loads_as_celeba(written, expected_table):
    ds = load_dataset("celeba", written)
    assert len(ds) == N
    assert ds.attributes == list(ATTRIBUTES)
    assert list(ds.table.index) == list(expected_table.index)
    for name in ATTRIBUTES:
        assert ds.table[name].dtype == np.int8
        assert ds.table[name].tolist() == expected_table[name].tolist(), name
    assert ds.table["split"].tolist() == expected_table["split"].tolist()
    assert all(p == str(written / "img_align_celeba" / i) for i, p in zip(ds.table.index, ds.table["path"]))
    ds.require_attribute("Male", "target")
    ds.require_attribute("Gray_Hair", "protected")
    assert len(ds.split("val")) == len(expected_table[expected_table["split"] == "val"])


def test_read_identities(written, expected_table, tmp_path):
    ids = read_identities(written)
    assert list(ids.index) == list(expected_table.index)
    assert ids.tolist() == expected_table["identity"].tolist()
    with pytest.raises(DataError) as info:
        read_identities(tmp_path)
    assert "list_identity_synthfaces.txt" in info.value.problem and info.value.fix


def test_rerendering_reproduces_the_written_images(written):
    ids = read_identities(written)
    ds = load_dataset("celeba", written)
    for image_id in ds.table.index[::5]:
        attrs = ds.table.loc[image_id, list(ATTRIBUTES)].to_dict()
        with Image.open(ds.table.loc[image_id, "path"]) as img:
            on_disk = np.asarray(img.convert("RGB"), dtype=np.int16)
        rendered = render_face(attrs, int(ids[image_id]))
        # close to the lossless render (the difference is JPEG's, at quality 95) ...
        assert np.abs(on_disk - np.asarray(rendered, dtype=np.int16)).mean() < 5.0, image_id
        assert np.abs(on_disk - pixels(attrs, int(ids[image_id]) + 1)).mean() > 15.0, image_id
        # ... and exactly the file once encoded the same way
        buffer = io.BytesIO()
        rendered.save(buffer, "JPEG", **JPEG_SETTINGS)
        with Image.open(buffer) as img:
            assert np.array_equal(np.asarray(img.convert("RGB"), dtype=np.int16), on_disk), image_id


def test_refuses_to_overwrite_a_non_empty_folder(tmp_path):
    out = tmp_path / "faces"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError) as info:
        write_synthfaces(out, n=40)
    assert str(out) in info.value.problem and "--force" in info.value.fix
    assert (out / "notes.txt").read_text() == "mine"
    write_synthfaces(out, n=40, force=True)
    assert not (out / "notes.txt").exists()
    assert len(list((out / "img_align_celeba").iterdir())) == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces"]


def test_writes_into_an_existing_empty_folder(tmp_path):
    out = tmp_path / "faces"
    out.mkdir()
    write_synthfaces(out, n=40)
    assert len(load_dataset("celeba", out)) == 40


def _failing_renderer(monkeypatch, fail_at: int = 10):
    calls = {"n": 0}
    real = synthfaces.render_face

    def render(attributes, identity, size=IMAGE_SIZE, cues="salient"):
        calls["n"] += 1
        if calls["n"] == fail_at:
            raise RuntimeError("renderer exploded")
        return real(attributes, identity, size, cues)

    monkeypatch.setattr(synthfaces, "render_face", render)
    return calls


def test_failure_while_writing_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = _failing_renderer(monkeypatch)
    out = tmp_path / "faces"
    with pytest.raises(RuntimeError, match="exploded"):
        write_synthfaces(out, n=40)
    assert calls["n"] == 10
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder beside it either


def test_failure_while_overwriting_keeps_the_old_dataset(tmp_path, monkeypatch):
    out = tmp_path / "faces"
    write_synthfaces(out, n=40, seed=1)
    before = (out / "list_attr_celeba.txt").read_text()
    _failing_renderer(monkeypatch)
    with pytest.raises(RuntimeError):
        write_synthfaces(out, n=50, seed=2, force=True)
    assert (out / "list_attr_celeba.txt").read_text() == before
    assert len(list((out / "img_align_celeba").iterdir())) == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["faces"]
