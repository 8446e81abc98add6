"""Tests of fairloop.data.datasets: the CelebA (txt and Kaggle CSV), UTKFace and CSV loaders,
FaceDataset's checks, image decoding and the data fingerprint."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fairloop.data.datasets import (
    SPLITS,
    UTKFACE_ATTRIBUTES,
    FaceDataset,
    ImageStream,
    load_dataset,
    read_image,
)
from fairloop.errors import ConfigError, DataError, FairloopError

NAMES = ["5_o_Clock_Shadow", "Gray_Hair", "Male", "Smiling", "Young"]
ROWS = {  # image id -> ±1 values in NAMES order
    "000001.jpg": [-1, 1, 1, -1, 1],
    "000002.jpg": [-1, -1, -1, 1, 1],
    "000003.jpg": [1, 1, 1, 1, -1],
    "000004.jpg": [-1, -1, -1, -1, 1],
    "000005.jpg": [1, -1, 1, 1, 1],
    "000006.jpg": [-1, 1, -1, -1, -1],
}
PARTITION = {"000001.jpg": 0, "000002.jpg": 0, "000003.jpg": 0, "000004.jpg": 1, "000005.jpg": 2, "000006.jpg": 2}
EXPECTED_SPLIT = ["train", "train", "train", "val", "test", "test"]


def save_image(path: Path, size: tuple[int, int] = (8, 8), color=(120, 60, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_celeba(root: Path, rows=ROWS, names=NAMES, partition=PARTITION, *, kaggle: bool = False,
                 nested: bool = False, images: bool = True) -> Path:
    """A CelebA folder written exactly like the real files (or Kaggle's CSV variant)."""
    root.mkdir(parents=True, exist_ok=True)
    image_dir = root / "img_align_celeba"
    if nested:
        image_dir = image_dir / "img_align_celeba"
    image_dir.mkdir(parents=True, exist_ok=True)
    if images:
        for k, image_id in enumerate(rows):
            save_image(image_dir / image_id, color=(10 * k, 20, 30))
    if kaggle:
        lines = ["image_id," + ",".join(names)] + [f"{i}," + ",".join(map(str, v)) for i, v in rows.items()]
        (root / "list_attr_celeba.csv").write_text("\n".join(lines) + "\n")
        if partition is not None:
            lines = ["image_id,partition"] + [f"{i},{p}" for i, p in partition.items()]
            (root / "list_eval_partition.csv").write_text("\n".join(lines) + "\n")
    else:
        # the real file: a count line, the names (with a trailing space), then "000001.jpg -1  1  1 -1"
        lines = [str(len(rows)), " ".join(names) + " "]
        lines += [f"{i} " + " ".join(f"{v:2d}" for v in values) for i, values in rows.items()]
        (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
        if partition is not None:
            (root / "list_eval_partition.txt").write_text("".join(f"{i} {p}\n" for i, p in partition.items()))
    return root


def assert_helpful(error: FairloopError, *words: str) -> None:
    assert error.problem and error.fix
    for word in words:
        assert word in error.problem, (word, error.problem)
    assert error.fix in str(error) and error.problem in str(error)


# ------------------------------------------------------------------------------------------ celeba


def test_celeba_txt_layout(tmp_path):
    root = write_celeba(tmp_path / "celeba")
    text = (root / "list_attr_celeba.txt").read_text().splitlines()
    assert text[2] == "000001.jpg -1  1  1 -1  1"  # the fixture really is CelebA's layout

    ds = load_dataset("celeba", root)
    assert isinstance(ds, FaceDataset)
    assert ds.name == "celeba" and ds.root == root and len(ds) == 6
    assert ds.attributes == NAMES
    assert list(ds.table.columns) == ["path", "split", *NAMES]
    assert list(ds.table.index) == list(ROWS)
    assert ds.table.index.name == "image_id"
    assert ds.table["split"].tolist() == EXPECTED_SPLIT
    for j, name in enumerate(NAMES):
        assert ds.table[name].dtype == np.int8
        assert ds.table[name].tolist() == [int(v[j] > 0) for v in ROWS.values()], name
    for image_id, path in ds.table["path"].items():
        assert Path(path).is_absolute()
        assert Path(path) == root / "img_align_celeba" / image_id
        assert Path(path).is_file()


@pytest.mark.parametrize("kind", ["celeba", "utkface", "csv"])
def test_relative_root_gives_absolute_paths(tmp_path, monkeypatch, kind):
    # regression: a relative --root used to give relative paths, which break once the working
    # directory changes (and in reports and checkpoints)
    if kind == "celeba":
        write_celeba(tmp_path / "data")
    elif kind == "utkface":
        write_utkface(tmp_path / "data", UTK_VALID)
    else:
        write_csv_folder(tmp_path / "data", "image,Smiling\na.png,1\nb.png,0\n", images=("a.png", "b.png"))
    monkeypatch.chdir(tmp_path)
    ds = load_dataset(kind, "data")
    assert ds.root.is_absolute() and ds.root == tmp_path / "data"
    monkeypatch.chdir(tmp_path.parent)
    for path in ds.table["path"]:
        assert Path(path).is_absolute() and Path(path).is_file(), path


def test_celeba_kaggle_csv_variant_with_nested_image_folder(tmp_path):
    root = write_celeba(tmp_path / "kaggle", kaggle=True, nested=True)
    assert not (root / "list_attr_celeba.txt").exists()
    ds = load_dataset("celeba", root)
    assert ds.attributes == NAMES
    assert list(ds.table.index) == list(ROWS)
    assert ds.table["split"].tolist() == EXPECTED_SPLIT
    assert ds.table["Male"].tolist() == [1, 0, 1, 0, 1, 0]
    assert ds.table["Male"].dtype == np.int8
    assert all(Path(p).parent == root / "img_align_celeba" / "img_align_celeba" for p in ds.table["path"])


def test_celeba_txt_and_kaggle_load_the_same_table(tmp_path):
    a = load_dataset("celeba", write_celeba(tmp_path / "txt"))
    b = load_dataset("celeba", write_celeba(tmp_path / "csv", kaggle=True, nested=True))
    pd.testing.assert_frame_equal(a.table.drop(columns="path"), b.table.drop(columns="path"))
    assert a.fingerprint() == b.fingerprint()


def test_celeba_zero_is_read_as_absent(tmp_path):
    rows = {**ROWS, "000002.jpg": [0, 0, 0, 1, 1]}
    ds = load_dataset("celeba", write_celeba(tmp_path / "c", rows=rows))
    assert ds.table.loc["000002.jpg", NAMES].tolist() == [0, 0, 0, 1, 1]


def test_missing_partition_file_gives_a_stable_hash_split(tmp_path):
    rows = {f"{i:06d}.jpg": [1 if (i * j) % 3 else -1 for j in range(1, 6)] for i in range(1, 301)}
    root = write_celeba(tmp_path / "a", rows=rows, partition=None)
    with pytest.warns(UserWarning, match="list_eval_partition"):
        first = load_dataset("celeba", root)
    with pytest.warns(UserWarning, match="80/10/10"):
        second = load_dataset("celeba", root)
    assert first.table["split"].tolist() == second.table["split"].tolist()
    counts = first.table["split"].value_counts()
    assert set(counts.index) == set(SPLITS)
    assert 0.7 < counts["train"] / 300 < 0.9
    assert 0.04 < counts["val"] / 300 < 0.17 and 0.04 < counts["test"] / 300 < 0.17
    # the split depends on the file name only: the same names elsewhere split the same way
    other = write_celeba(tmp_path / "b", rows=dict(reversed(list(rows.items()))), partition=None)
    with pytest.warns(UserWarning):
        moved = load_dataset("celeba", other)
    assert moved.table["split"].reindex(first.table.index).tolist() == first.table["split"].tolist()


def test_partition_file_present_gives_no_warning(tmp_path):
    root = write_celeba(tmp_path / "c")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset("celeba", root)


def test_partition_file_missing_an_image(tmp_path):
    partition = {k: v for k, v in PARTITION.items() if k != "000005.jpg"}
    root = write_celeba(tmp_path / "c", partition=partition)
    with pytest.raises(DataError) as info:
        load_dataset("celeba", root)
    assert_helpful(info.value, "list_eval_partition.txt", "000005.jpg", "1 images")


@pytest.mark.parametrize("kaggle", [False, True])
@pytest.mark.parametrize("code", [3, -1, "train"])
def test_partition_file_with_unknown_codes(tmp_path, code, kaggle):
    # regression: a code outside 0/1/2 used to leave the row in no split at all (split NaN)
    root = write_celeba(tmp_path / "c", partition={**PARTITION, "000004.jpg": code}, kaggle=kaggle)
    with pytest.raises(DataError) as info:
        load_dataset("celeba", root)
    assert_helpful(info.value, "list_eval_partition", "000004.jpg", str(code))
    assert "0 for train" in info.value.fix


# ------------------------------------------------------------------------------------ load errors


def test_unknown_dataset_kind(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_dataset("imagenet", tmp_path)
    assert_helpful(info.value, "imagenet")
    assert "celeba" in info.value.fix and "utkface" in info.value.fix and "csv" in info.value.fix


@pytest.mark.parametrize("kind", ["celeba", "utkface", "csv"])
def test_root_missing(tmp_path, kind):
    with pytest.raises(DataError) as info:
        load_dataset(kind, tmp_path / "nowhere")
    assert_helpful(info.value, "nowhere", "does not exist")


@pytest.mark.parametrize("kind", ["celeba", "utkface", "csv"])
def test_root_is_a_file(tmp_path, kind):
    path = tmp_path / "list_attr_celeba.txt"
    path.write_text("1\nA\nx.jpg 1\n")
    with pytest.raises(DataError) as info:
        load_dataset(kind, path)
    assert_helpful(info.value, str(path), "is a file")


def test_empty_image_folder(tmp_path):
    root = write_celeba(tmp_path / "c", images=False)
    with pytest.raises(DataError) as info:
        load_dataset("celeba", root)
    assert_helpful(info.value, "img_align_celeba", "empty")


def test_folder_without_attribute_list(tmp_path):
    root = tmp_path / "c"
    save_image(root / "img_align_celeba" / "000001.jpg")
    with pytest.raises(DataError) as info:
        load_dataset("celeba", root)
    assert_helpful(info.value, "list_attr_celeba.txt", "not a CelebA folder")
    assert "--dataset csv" in info.value.fix


def test_folder_without_image_folder(tmp_path):
    root = write_celeba(tmp_path / "c")
    shutil.rmtree(root / "img_align_celeba")
    with pytest.raises(DataError) as info:
        load_dataset("celeba", root)
    assert_helpful(info.value, "img_align_celeba")


@pytest.mark.parametrize("bad_value", [2, 5, -2])
def test_attribute_values_other_than_plus_minus_one(tmp_path, bad_value):
    rows = {**ROWS, "000003.jpg": [1, 1, bad_value, 1, -1]}
    root = write_celeba(tmp_path / "c", rows=rows)
    with pytest.raises(DataError) as info:
        load_dataset("celeba", root)
    assert_helpful(info.value, "±1", "Male")
    assert "Gray_Hair" not in info.value.problem


def test_attribute_list_with_words_for_values(tmp_path):
    rows = {**ROWS, "000003.jpg": ["yes", 1, 1, 1, -1]}
    root = tmp_path / "c"
    write_celeba(root, rows=ROWS)
    lines = ["6", " ".join(NAMES)] + [f"{i} " + " ".join(map(str, v)) for i, v in rows.items()]
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        load_dataset("celeba", root)
    assert_helpful(info.value, "5_o_Clock_Shadow")


def test_attribute_list_without_rows(tmp_path):
    root = write_celeba(tmp_path / "c")
    (root / "list_attr_celeba.txt").write_text("0\n" + " ".join(NAMES) + "\n")
    with pytest.raises(DataError) as info:
        load_dataset("celeba", root)
    assert_helpful(info.value, "lists no images")


def test_images_listed_but_missing(tmp_path):
    root = write_celeba(tmp_path / "c")
    (root / "img_align_celeba" / "000004.jpg").unlink()
    (root / "img_align_celeba" / "000006.jpg").unlink()
    with pytest.raises(DataError) as info:
        load_dataset("celeba", root)
    assert_helpful(info.value, "2 of 6", "missing", "000004.jpg", "000006.jpg")


# ------------------------------------------------------------------------------------ FaceDataset


@pytest.fixture
def celeba(tmp_path) -> FaceDataset:
    return load_dataset("celeba", write_celeba(tmp_path / "celeba"))


def test_require_attribute_returns_known_attribute(celeba):
    assert celeba.require_attribute("Male", "target") == "Male"
    assert celeba.require_attribute("Gray_Hair") == "Gray_Hair"


def test_require_attribute_suggests_a_close_match(celeba):
    with pytest.raises(ConfigError) as info:
        celeba.require_attribute("Gray_hair", "protected")
    assert_helpful(info.value, "'Gray_hair'", "protected")
    assert "Gray_Hair" in info.value.fix and "did you mean" in info.value.fix


def test_require_attribute_without_close_match_lists_attributes(celeba):
    with pytest.raises(ConfigError) as info:
        celeba.require_attribute("Wearing_Necktie", "target")
    assert_helpful(info.value, "Wearing_Necktie", "target")
    assert all(name in info.value.fix for name in NAMES)


def test_require_attribute_with_a_single_value(celeba, tmp_path):
    val = celeba.split("val")  # one row
    with pytest.raises(ConfigError) as info:
        val.require_attribute("Male", "target")
    assert_helpful(info.value, "'Male'", "single value 0", "1 rows")
    rows = {k: [v[0], v[1], 1, v[3], v[4]] for k, v in ROWS.items()}  # every image Male
    ds = load_dataset("celeba", write_celeba(tmp_path / "all_male", rows=rows))
    with pytest.raises(ConfigError) as info:
        ds.require_attribute("Male")
    assert_helpful(info.value, "single value 1", "6 rows")


def test_split_selects_rows(celeba):
    train = celeba.split("train")
    assert isinstance(train, FaceDataset)
    assert list(train.table.index) == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert (train.table["split"] == "train").all()
    assert train.name == celeba.name and train.root == celeba.root
    assert len(celeba.split("test")) == 2 and len(celeba.split("val")) == 1


def test_empty_split_is_an_error(tmp_path):
    partition = {k: (1 if v == 2 else v) for k, v in PARTITION.items()}  # no test rows
    ds = load_dataset("celeba", write_celeba(tmp_path / "c", partition=partition))
    with pytest.raises(DataError) as info:
        ds.split("test")
    assert_helpful(info.value, "'test'", "train, val")


def test_unknown_split_is_a_config_error(celeba):
    with pytest.raises(ConfigError) as info:
        celeba.split("validation")
    assert_helpful(info.value, "'validation'")


def test_labels_and_images(celeba):
    labels = celeba.labels("Smiling")
    assert labels.dtype == np.int64
    assert labels.tolist() == [0, 1, 1, 0, 1, 0]
    stream = celeba.images(image_size=16)
    assert isinstance(stream, ImageStream) and len(stream) == 6
    item = stream[2]
    assert item.shape == (3, 16, 16)
    assert torch.allclose(item[:, 0, 0], torch.tensor([20, 20, 30]) / 255.0, atol=0.03)  # colour of image 3


# ---------------------------------------------------------------------------------------- utkface

UTK_VALID = {
    "25_0_2_20170116174525125.jpg.chip.jpg": dict(Male=1, Young=1, Child=0, Senior=0, Asian=1),
    "70_1_0_2017.jpg": dict(Male=0, Young=0, Child=0, Senior=1, White=1),
    "8_1_1_20170109.jpg": dict(Male=0, Young=1, Child=1, Senior=0, Black=1),
    "45_0_3_2017.png": dict(Male=1, Young=0, Child=0, Senior=0, Indian=1),
    "30_1_4_2017.jpg": dict(Male=0, Young=0, Child=0, Senior=0, Other_Race=1),
    "60_0_0_2017.jpg": dict(Male=1, Young=0, Child=0, Senior=1, White=1),
    "12_0_0_2017.jpg": dict(Male=1, Young=1, Child=1, Senior=0, White=1),
}
UTK_MALFORMED = [
    "abc.jpg",
    "61_1_20170109142408075.jpg.chip.jpg",  # race missing (real UTKFace has a few of these)
    "25_2_0_2017.jpg",  # gender 2
    "25_0_5_2017.jpg",  # race 5
    "130_0_0_2017.jpg",  # age 130
    "x_0_0_2017.jpg",
]


def write_utkface(folder: Path, names) -> Path:
    for name in names:
        save_image(folder / name, size=(10, 10))  # .jpg (.chip.jpg too) as JPEG, .png as PNG
    return folder


def test_utkface_derived_attributes(tmp_path):
    root = write_utkface(tmp_path / "utk", UTK_VALID)
    ds = load_dataset("utkface", root)
    assert ds.name == "utkface" and len(ds) == len(UTK_VALID)
    assert ds.attributes == list(UTKFACE_ATTRIBUTES)
    for name, expected in UTK_VALID.items():
        row = ds.table.loc[name]
        full = {a: expected.get(a, 0) for a in UTKFACE_ATTRIBUTES}
        assert {a: int(row[a]) for a in UTKFACE_ATTRIBUTES} == full, name
        assert row["path"] == str(root / name)
        assert row["split"] in SPLITS
    for name in UTKFACE_ATTRIBUTES:
        assert ds.table[name].dtype == np.int8
    # exactly one race per face
    races = ["White", "Black", "Asian", "Indian", "Other_Race"]
    assert (ds.table[races].sum(axis=1) == 1).all()


def test_utkface_subfolder_and_malformed_names(tmp_path):
    root = tmp_path / "download"
    write_utkface(root / "UTKFace", [*UTK_VALID, *UTK_MALFORMED])
    (root / "UTKFace" / "README.txt").write_text("not an image")
    with pytest.warns(UserWarning, match=f"skipped {len(UTK_MALFORMED)} UTKFace files"):
        ds = load_dataset("utkface", root)
    assert sorted(ds.table.index) == sorted(UTK_VALID)
    assert all(Path(p).parent == root / "UTKFace" for p in ds.table["path"])


def test_utkface_without_valid_names(tmp_path):
    root = write_utkface(tmp_path / "utk", UTK_MALFORMED[:2])
    with pytest.raises(DataError) as info:
        load_dataset("utkface", root)
    assert_helpful(info.value, "no UTKFace images", "2 files had other names")


def test_utkface_empty_folder(tmp_path):
    (tmp_path / "utk").mkdir()
    with pytest.raises(DataError) as info:
        load_dataset("utkface", tmp_path / "utk")
    assert_helpful(info.value, "no UTKFace images")
    assert "other names" not in info.value.problem


def test_utkface_split_is_stable(tmp_path):
    names = [f"{20 + i % 50}_{i % 2}_{i % 5}_2017{i:04d}.jpg" for i in range(120)]
    root = write_utkface(tmp_path / "utk", names)
    a, b = load_dataset("utkface", root), load_dataset("utkface", root)
    assert a.table["split"].tolist() == b.table["split"].tolist()
    assert set(a.table["split"]) == set(SPLITS)
    assert a.fingerprint() == b.fingerprint()


# -------------------------------------------------------------------------------------------- csv


def write_csv_folder(root: Path, text: str, name: str = "attributes.csv", images=("a.png", "b.png", "c.png", "d.png")) -> Path:
    for image in images:
        save_image(root / image)
    (root / name).write_text(text)
    return root


CSV_TEXT = """FileName,Smiling,Male,Eyeglasses,Young,Age,Note
a.png,1,-1,true,yes,23,hello
b.png,0,1,False,no,41,
c.png,1,1,TRUE,Y,35,x
d.png,0,-1,f,n,70,y
"""


def test_csv_loader_reads_binary_columns(tmp_path):
    root = write_csv_folder(tmp_path / "faces", CSV_TEXT)
    with pytest.warns(UserWarning, match="Age, Note"):
        ds = load_dataset("csv", root)
    assert ds.name == "csv" and len(ds) == 4
    assert ds.attributes == ["Smiling", "Male", "Eyeglasses", "Young"]
    assert list(ds.table.index) == ["a.png", "b.png", "c.png", "d.png"]
    assert ds.table["Smiling"].tolist() == [1, 0, 1, 0]
    assert ds.table["Male"].tolist() == [0, 1, 1, 0]  # ±1
    assert ds.table["Eyeglasses"].tolist() == [1, 0, 1, 0]  # true/false, any case
    assert ds.table["Young"].tolist() == [1, 0, 1, 0]  # yes/no
    assert all(ds.table[c].dtype == np.int8 for c in ds.attributes)
    assert ds.table.loc["c.png", "path"] == str(root / "c.png")
    assert set(ds.table["split"]) <= set(SPLITS)


@pytest.mark.parametrize("column", ["image", "image_id", "filename", "File", "PATH"])
def test_csv_image_column_names(tmp_path, column):
    root = write_csv_folder(tmp_path / "faces", f"{column},Smiling\na.png,1\nb.png,0\n", images=("a.png", "b.png"))
    ds = load_dataset("csv", root)
    assert list(ds.table.index) == ["a.png", "b.png"]
    assert ds.attributes == ["Smiling"]


def test_csv_images_in_a_subfolder(tmp_path):
    root = write_csv_folder(tmp_path / "faces", "image,Smiling\nimgs/a.png,1\nimgs/b.png,0\n",
                            images=("imgs/a.png", "imgs/b.png"))
    ds = load_dataset("csv", root)
    assert ds.table["path"].tolist() == [str(root / "imgs" / "a.png"), str(root / "imgs" / "b.png")]
    (root / "imgs" / "b.png").unlink()
    with pytest.raises(DataError) as info:
        load_dataset("csv", root)
    assert_helpful(info.value, "1 of 2", "imgs/b.png")


def test_csv_split_column_is_respected(tmp_path):
    text = "image,split,Smiling\na.png,train,1\nb.png,Train ,0\nc.png,val,1\nd.png,TEST,0\n"
    ds = load_dataset("csv", write_csv_folder(tmp_path / "faces", text))
    assert ds.table["split"].tolist() == ["train", "train", "val", "test"]
    assert "split" not in ds.attributes
    assert list(ds.split("test").table.index) == ["d.png"]


def test_csv_bad_split_values(tmp_path):
    text = "image,split,Smiling\na.png,train,1\nb.png,validation,0\nc.png,val,1\nd.png,holdout,0\n"
    root = write_csv_folder(tmp_path / "faces", text)
    with pytest.raises(DataError) as info:
        load_dataset("csv", root)
    assert_helpful(info.value, "holdout", "validation")
    assert "train, val, test" in info.value.fix


def test_csv_without_image_column(tmp_path):
    root = write_csv_folder(tmp_path / "faces", "picture,Smiling\na.png,1\n")
    with pytest.raises(DataError) as info:
        load_dataset("csv", root)
    assert_helpful(info.value, "no image column")


@pytest.mark.parametrize("text, words", [("", "cannot read"), ("image,Smiling\n", "no rows")])
def test_csv_empty(tmp_path, text, words):
    root = write_csv_folder(tmp_path / "faces", text)
    with pytest.raises(DataError) as info:
        load_dataset("csv", root)
    assert_helpful(info.value, words)


def test_csv_without_binary_columns(tmp_path):
    root = write_csv_folder(tmp_path / "faces", "image,Age\na.png,23\nb.png,40\n")
    with pytest.warns(UserWarning, match="Age"), pytest.raises(DataError) as info:
        load_dataset("csv", root)
    assert_helpful(info.value, "no binary attribute columns")


def test_csv_several_or_no_csv_files(tmp_path):
    root = write_csv_folder(tmp_path / "faces", "image,Smiling\na.png,1\nb.png,0\n", name="one.csv")
    (root / "two.csv").write_text("image,Male\na.png,1\nb.png,0\n")
    with pytest.raises(DataError) as info:
        load_dataset("csv", root)
    assert_helpful(info.value, "2 CSV files", "ambiguous")
    assert "--csv" in info.value.fix
    ds = load_dataset("csv", root, csv=root / "two.csv")
    assert ds.attributes == ["Male"]

    empty = tmp_path / "empty"
    save_image(empty / "a.png")
    with pytest.raises(DataError) as info:
        load_dataset("csv", empty)
    assert_helpful(info.value, "no CSV file")
    assert "--csv" in info.value.fix
    with pytest.raises(DataError) as info:
        load_dataset("csv", empty, csv=empty / "missing.csv")
    assert_helpful(info.value, "missing.csv", "does not exist")


def test_csv_outside_the_image_folder(tmp_path):
    root = tmp_path / "faces"
    for image in ("a.png", "b.png"):
        save_image(root / image)
    table = tmp_path / "labels.csv"
    table.write_text("image,Smiling\na.png,1\nb.png,0\n")
    ds = load_dataset("csv", root, csv=table)
    assert ds.table["path"].tolist() == [str(root / "a.png"), str(root / "b.png")]


def test_csv_without_the_target_column(tmp_path):
    ds = load_dataset("csv", write_csv_folder(tmp_path / "faces", "image,Smiling\na.png,1\nb.png,0\n",
                                              images=("a.png", "b.png")))
    with pytest.raises(ConfigError) as info:
        ds.require_attribute("Male", "target")
    assert_helpful(info.value, "'Male'", "target", "csv")
    assert "Smiling" in info.value.fix


# ------------------------------------------------------------------------------- image decoding


def striped(path: Path, size: tuple[int, int], vertical: bool) -> Path:
    """Red | green | blue along the long side, green being exactly the centre square."""
    w, h = size
    margin = abs(w - h) // 2
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    bands = arr.transpose(1, 0, 2) if vertical else arr  # index the long side second
    bands[:, :margin] = (255, 0, 0)
    bands[:, margin: margin + min(w, h)] = (0, 255, 0)
    bands[:, margin + min(w, h):] = (0, 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


@pytest.mark.parametrize("size, vertical", [((40, 20), False), ((20, 40), True), ((218, 178), False),
                                            ((178, 218), True), ((101, 64), False)])
def test_non_square_images_are_centre_cropped_and_resized(tmp_path, size, vertical):
    path = striped(tmp_path / "img.png", size, vertical)
    with Image.open(path) as img:  # the stripes are really there
        arr = np.asarray(img)
        assert arr[..., 0].any() and arr[..., 2].any()
    out = read_image(path, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert (out[..., 1] >= 250).all() and (out[..., [0, 2]] <= 5).all()  # only the green centre survives


def test_off_centre_crop_would_show_the_stripes(tmp_path):
    """The check above can fail: a plain resize of the whole image keeps red and blue."""
    path = striped(tmp_path / "img.png", (40, 20), False)
    with Image.open(path) as img:
        squashed = np.asarray(img.resize((16, 16), Image.BILINEAR))
    assert squashed[..., 0].max() > 200 and squashed[..., 2].max() > 200


def test_square_image_at_its_own_size_is_unchanged(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
    path = tmp_path / "noise.png"
    Image.fromarray(arr).save(path)
    assert np.array_equal(read_image(path, 12), arr)
    assert read_image(path, 32).shape == (32, 32, 3)  # upscaled too


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_other_image_modes_become_rgb(tmp_path, mode):
    path = tmp_path / "img.png"
    Image.new("RGB", (10, 10), (200, 100, 50)).convert(mode).save(path)
    out = read_image(path, 10)
    assert out.shape == (10, 10, 3)


def test_image_stream_returns_chw_floats(tmp_path):
    paths = [str(striped(tmp_path / "wide.png", (40, 20), False)), str(save_image(tmp_path / "b.jpg", (30, 30), (255, 255, 255)))]
    stream = ImageStream(paths, image_size=24)
    assert len(stream) == 2
    x = stream[0]
    assert isinstance(x, torch.Tensor)
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.allclose(x[1], torch.ones(24, 24), atol=0.02) and float(x[[0, 2]].max()) < 0.02
    white = stream[1]
    assert white.shape == (3, 24, 24) and float(white.min()) > 0.97
    expected = torch.from_numpy(read_image(paths[0], 24)).permute(2, 0, 1).float() / 255.0
    assert torch.equal(x, expected)


def test_image_stream_works_with_a_dataloader(tmp_path):
    paths = [str(save_image(tmp_path / f"{i}.png", (10 + i, 12), (i * 20, 0, 0))) for i in range(5)]
    batch = next(iter(torch.utils.data.DataLoader(ImageStream(paths, image_size=8), batch_size=5)))
    assert batch.shape == (5, 3, 8, 8)
    assert batch[:, 0, 4, 4].mul(255).round().tolist() == [0, 20, 40, 60, 80]


def test_corrupt_image_raises_data_error(tmp_path):
    path = tmp_path / "000007.jpg"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    with pytest.raises(DataError) as info:
        read_image(path, 16)
    assert_helpful(info.value, str(path), "corrupt")
    with pytest.raises(DataError, match="000007.jpg"):
        ImageStream([str(path)], 16)[0]


def test_truncated_image_raises_data_error(tmp_path):
    full = tmp_path / "full.jpg"
    arr = np.random.default_rng(2).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(arr).save(full, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[:800])
    with pytest.raises(DataError) as info:
        read_image(cut, 16)
    assert_helpful(info.value, "cut.jpg", "corrupt")


def test_missing_image_raises_data_error(tmp_path):
    path = tmp_path / "gone.jpg"
    with pytest.raises(DataError) as info:
        read_image(path, 16)
    assert_helpful(info.value, str(path), "missing")


def test_image_deleted_after_loading(celeba):
    Path(celeba.table["path"].iloc[1]).unlink()
    stream = celeba.images(16)
    stream[0]
    with pytest.raises(DataError, match="000002.jpg"):
        stream[1]


# ---------------------------------------------------------------------------------- fingerprint


def test_fingerprint_is_stable(tmp_path):
    a = load_dataset("celeba", write_celeba(tmp_path / "a")).fingerprint()
    b = load_dataset("celeba", write_celeba(tmp_path / "a")).fingerprint()
    c = load_dataset("celeba", write_celeba(tmp_path / "elsewhere" / "b")).fingerprint()
    assert a == b == c  # paths are not part of it
    assert len(a) == 16 and all(ch in "0123456789abcdef" for ch in a)


def test_fingerprint_changes_with_one_attribute_value(tmp_path):
    base = load_dataset("celeba", write_celeba(tmp_path / "a")).fingerprint()
    rows = {**ROWS, "000004.jpg": [-1, -1, -1, 1, 1]}  # Smiling of one image flipped
    changed = load_dataset("celeba", write_celeba(tmp_path / "b", rows=rows)).fingerprint()
    assert changed != base


def test_fingerprint_changes_with_the_split_and_the_ids(tmp_path):
    base = load_dataset("celeba", write_celeba(tmp_path / "a")).fingerprint()
    partition = {**PARTITION, "000001.jpg": 1}
    assert load_dataset("celeba", write_celeba(tmp_path / "b", partition=partition)).fingerprint() != base
    rows = {k.replace("000006", "000007"): v for k, v in ROWS.items()}
    partition = {k.replace("000006", "000007"): v for k, v in PARTITION.items()}
    assert load_dataset("celeba", write_celeba(tmp_path / "c", rows=rows, partition=partition)).fingerprint() != base


def test_fingerprint_of_a_split_differs_from_the_whole(celeba):
    assert celeba.split("train").fingerprint() != celeba.fingerprint()
    assert celeba.split("train").fingerprint() == celeba.split("train").fingerprint()


# ---------------------------------------------------------------------- hostile or damaged tables


def _celeba_with(tmp_path, *, attr_lines=None, partition_text=None) -> Path:
    root = write_celeba(tmp_path / "c")
    if attr_lines is not None:
        (root / "list_attr_celeba.txt").write_text("\n".join(attr_lines(root)) + "\n")
    if partition_text is not None:
        (root / "list_eval_partition.txt").write_text(partition_text)
    return root


def _attr_lines(count: str | None, rows=ROWS):
    head = [] if count is None else [count]
    return lambda root: head + [" ".join(NAMES)] + [f"{i} " + " ".join(f"{v:2d}" for v in r) for i, r in rows.items()]


DAMAGED_CELEBA = {
    "partition_extra_field": ({"partition_text": "".join(f"{i} {p} x\n" for i, p in PARTITION.items())},
                              "3 fields per row, not 2"),
    "partition_empty": ({"partition_text": ""}, "cannot parse"),
    "partition_ragged": ({"partition_text": "000001.jpg 0\n000002.jpg 0 7 8\n"}, "cannot parse"),
    "partition_repeats_an_image": ({"partition_text": "".join(f"{i} {p}\n" for i, p in PARTITION.items())
                                    + "000001.jpg 2\n"}, "lists image 000001.jpg more than once"),
    "count_line_wrong": ({"attr_lines": _attr_lines("60")}, "says 60 images, but lists 6"),
    "count_line_missing": ({"attr_lines": _attr_lines(None)}, "not the image count"),
    "image_listed_twice": ({"attr_lines": lambda root: _attr_lines("7")(root) + ["000001.jpg " + " ".join(
                            f"{v:2d}" for v in [1, -1, -1, 1, 1])]}, "lists 1 images more than once"),
}


@pytest.mark.parametrize("case", DAMAGED_CELEBA)
def test_damaged_celeba_tables_get_a_clear_error(tmp_path, case):
    changes, words = DAMAGED_CELEBA[case]
    with pytest.raises(DataError) as info:
        load_dataset("celeba", _celeba_with(tmp_path, **changes))
    assert_helpful(info.value, words)


@pytest.mark.parametrize("image", ["../outside.png", "/tmp/elsewhere.png", "sub/../../x.png"])
def test_csv_paths_that_leave_the_dataset_folder_are_refused_unless_allowed(tmp_path, monkeypatch, image):
    root = write_csv_folder(tmp_path / "d", f"image,Male\na.png,1\n{image},0\n")
    with pytest.raises(DataError) as info:
        load_dataset("csv", root)
    assert_helpful(info.value, "leave the dataset folder", image)
    assert "FAIRLOOP_IMAGES_OUTSIDE_ROOT=1" in info.value.fix
    monkeypatch.setenv("FAIRLOOP_IMAGES_OUTSIDE_ROOT", "1")
    with pytest.raises(DataError, match="missing"):  # allowed now; the file itself does not exist
        load_dataset("csv", root)


def test_csv_with_one_image_twice_is_refused(tmp_path):
    root = write_csv_folder(tmp_path / "d", "image,Male\na.png,1\nb.png,0\na.png,0\n")
    with pytest.raises(DataError) as info:
        load_dataset("csv", root)
    assert_helpful(info.value, "more than once", "a.png")
