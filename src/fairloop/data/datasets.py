"""Loaders for the face datasets users have, behind one container.

Every loader returns a :class:`FaceDataset`: an attribute table (pandas, one row per image, binary
attributes as 0/1) plus image paths. Images are never decoded up front: :class:`ImageStream` reads
them from disk one at a time, so a 200k-image CelebA folder costs only its table in memory.

Supported layouts
-----------------
``celeba``   The official CelebA folder: ``img_align_celeba/``, ``list_attr_celeba.txt`` (±1) and
             optionally ``list_eval_partition.txt`` (0/1/2 = train/val/test). Kaggle's ``.csv``
             variants of both files work too. SynthFaces is written in this format.
``utkface``  A folder of ``age_gender_race_date.jpg`` files (``.chip.jpg`` too), from which binary
             attributes are derived (see :data:`UTKFACE_ATTRIBUTES`).
``csv``      A folder of images plus a CSV with an image-file column and one column per attribute.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fairloop.errors import ConfigError, DataError

if TYPE_CHECKING:  # torch is imported lazily: loading a table must not cost a torch import
    import torch

SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DATASET_KINDS = ("celeba", "utkface", "csv")

#: Derived UTKFace attributes. UTKFace encodes gender 0 = male, 1 = female and race
#: 0 = White, 1 = Black, 2 = Asian, 3 = Indian, 4 = Others in its file names.
UTKFACE_ATTRIBUTES = {
    "Male": "gender == 0",
    "Young": "age < 30 (CelebA-style 'Young')",
    "Child": "age < 13",
    "Senior": "age >= 60",
    "White": "race == 0",
    "Black": "race == 1",
    "Asian": "race == 2",
    "Indian": "race == 3",
    "Other_Race": "race == 4",
}


@dataclass(frozen=True)
class FaceDataset:
    """An attribute table with image paths.

    ``table`` is indexed by image id (the file name) and has the columns ``path`` (absolute),
    ``split`` (``train``/``val``/``test``) and one 0/1 ``int8`` column per attribute.
    """

    name: str
    root: Path
    table: pd.DataFrame

    @property
    def attributes(self) -> list[str]:
        return [c for c in self.table.columns if c not in ("path", "split")]

    def __len__(self) -> int:
        return len(self.table)

    def split(self, name: str) -> FaceDataset:
        """The rows of one split; an empty split is an error that says which splits exist."""
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}", f"use one of {', '.join(SPLITS)}")
        part = self.table[self.table["split"] == name]
        if part.empty:
            present = sorted(self.table["split"].unique())
            raise DataError(
                f"the {self.name} dataset at {self.root} has no {name!r} rows (it has: {', '.join(present)})",
                "add a split column or partition file, or choose another split",
            )
        return FaceDataset(self.name, self.root, part)

    def require_attribute(self, attribute: str, role: str = "attribute") -> str:
        """Check that ``attribute`` exists and takes both values; return it.

        ``role`` ("target", "protected", ...) makes the error say which option is wrong.
        """
        if attribute not in self.attributes:
            close = difflib.get_close_matches(attribute, self.attributes, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else f"the attributes are: {', '.join(self.attributes)}"
            raise ConfigError(f"unknown {role} attribute {attribute!r} in the {self.name} dataset at {self.root}", hint)
        values = self.table[attribute].unique()
        if len(values) < 2:
            raise ConfigError(
                f"the {role} attribute {attribute!r} has the single value {int(values[0])} in all "
                f"{len(self.table)} rows, so no groups or classes can be compared",
                "choose an attribute that takes both values in this data",
            )
        return attribute

    def labels(self, attribute: str) -> np.ndarray:
        return self.table[attribute].to_numpy(dtype=np.int64)

    def images(self, image_size: int = 64) -> ImageStream:
        return ImageStream(self.table["path"].tolist(), image_size=image_size)

    def fingerprint(self) -> str:
        """A short hash of ids, splits and attribute values: the "data hash" of checkpoints and reports."""
        hashed = pd.util.hash_pandas_object(self.table.drop(columns=["path"]), index=True)
        return hashlib.sha256(hashed.to_numpy().tobytes()).hexdigest()[:16]


class ImageStream:
    """A map-style torch dataset that decodes one image per item, as float CHW in [0, 1].

    Non-square images are centre-cropped to a square, then resized, so CelebA's 178×218 crops,
    UTKFace's 200×200 and SynthFaces' 64×64 all arrive at ``image_size``.
    """

    def __init__(self, paths: list[str], image_size: int = 64) -> None:
        self.paths = paths
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        import torch

        return torch.from_numpy(read_image(self.paths[index], self.image_size)).permute(2, 0, 1).float().div_(255.0)


def read_image(path: str | Path, image_size: int) -> np.ndarray:
    """Decode, centre-crop and resize one image to ``image_size``² RGB uint8 (HWC)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            w, h = img.size
            if w != h:
                side = min(w, h)
                left, top = (w - side) // 2, (h - side) // 2
                img = img.crop((left, top, left + side, top + side))
            if img.size != (image_size, image_size):
                img = img.resize((image_size, image_size), Image.BILINEAR)
            return np.array(img, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"image file {path} is listed in the attribute table but missing",
                        "restore the file or remove its row from the attribute table") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"image file {path} is corrupt or not an image ({exc})",
                        "replace the file, or remove it and its row from the attribute table") from None


# ----------------------------------------------------------------------------------------- loaders


def load_dataset(kind: str, root: str | Path, *, csv: str | Path | None = None) -> FaceDataset:
    """Load a dataset of kind ``celeba``, ``utkface`` or ``csv`` from ``root``."""
    root = Path(root).expanduser().absolute()  # the table promises absolute paths
    if kind not in DATASET_KINDS:
        raise ConfigError(f"unknown dataset kind {kind!r}", f"use one of {', '.join(DATASET_KINDS)}")
    if not root.exists():
        raise DataError(f"dataset folder {root} does not exist",
                        "check --root, or create a dataset there with 'fairloop data synth --out DIR'")
    if not root.is_dir():
        raise DataError(f"--root {root} is a file, not a folder", "point --root at the dataset's folder")
    if kind == "celeba":
        return load_celeba(root)
    if kind == "utkface":
        return load_utkface(root)
    return load_csv(root, csv)


def load_celeba(root: Path) -> FaceDataset:
    """CelebA's own layout (also Kaggle's CSV variant); see the module docstring."""
    image_dir = _first_existing(root, ["img_align_celeba/img_align_celeba", "img_align_celeba"])
    attr_file = _first_existing(root, ["list_attr_celeba.txt", "list_attr_celeba.csv"])
    if attr_file is None:
        raise DataError(
            f"{root} is not a CelebA folder: list_attr_celeba.txt is missing",
            "point --root at the folder that holds list_attr_celeba.txt and img_align_celeba/, "
            "or use --dataset csv for a folder of images with a CSV of attributes",
        )
    if image_dir is None:
        raise DataError(f"{root} has no img_align_celeba/ folder of images",
                        "unpack img_align_celeba.zip inside the dataset folder")
    try:
        if attr_file.suffix == ".csv":
            attrs = pd.read_csv(attr_file, index_col=0)
        else:  # line 1: count, line 2: 40 names, then "000001.jpg -1  1 ..." (one more field than names)
            with open(attr_file, encoding="utf-8") as f:
                count = f.readline().strip()
            attrs = pd.read_csv(attr_file, sep=r"\s+", skiprows=1)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"cannot parse {attr_file} as a CelebA attribute list ({exc})",
                        "the file must have a count line, a line of attribute names, then one ±1 row per image") from None
    if attrs.empty or attrs.shape[1] == 0:
        raise DataError(f"{attr_file} lists no images", "regenerate or re-download the attribute list")
    if attr_file.suffix != ".csv" and count != str(len(attrs)):
        said = f"says {count} images" if count.isdigit() else f"starts with {count[:40]!r}, not the image count"
        raise DataError(f"{attr_file} {said}, but lists {len(attrs)}",
                        f"make its first line the number of image rows ({len(attrs)}), as CelebA's own file has")
    bad = [c for c in attrs.columns if not set(pd.unique(attrs[c])) <= {-1, 1, 0}]
    if bad:
        raise DataError(f"{attr_file} has values other than ±1 in columns {', '.join(map(str, bad[:5]))}",
                        "CelebA attribute lists hold only 1 and -1")
    attrs = (attrs > 0).astype(np.int8)
    attrs.index = attrs.index.astype(str)
    attrs.index.name = "image_id"

    split = _read_celeba_partition(root, attrs.index)
    table = _with_paths(attrs, image_dir, split)
    return FaceDataset("celeba", root, table)


def _read_celeba_partition(root: Path, ids: pd.Index) -> pd.Series:
    part_file = _first_existing(root, ["list_eval_partition.txt", "list_eval_partition.csv"])
    if part_file is None:
        warnings.warn(f"{root} has no list_eval_partition.txt: splitting 80/10/10 by a hash of the file name",
                      stacklevel=3)
        return _hash_split(ids)
    fix = "write one 'IMAGE_ID SPLIT' row per image, SPLIT 0 (train), 1 (val) or 2 (test), as CelebA's own file"
    try:
        if part_file.suffix == ".csv":
            table = pd.read_csv(part_file, index_col=0)
        else:
            table = pd.read_csv(part_file, sep=r"\s+", header=None, index_col=0)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"cannot parse {part_file} as a partition list ({' '.join(str(exc).split())[:200]})",
                        fix) from None
    if table.shape[1] != 1:
        raise DataError(f"{part_file} has {table.shape[1] + 1} fields per row, not 2", fix)
    part = table.iloc[:, 0]
    part.index = part.index.astype(str)
    if part.index.duplicated().any():
        raise DataError(f"{part_file} lists image {part.index[part.index.duplicated()][0]} more than once", fix)
    codes = part.reindex(ids)
    if codes.isna().any():
        missing = codes[codes.isna()].index[:3].tolist()
        raise DataError(f"{part_file} has no split for {int(codes.isna().sum())} images (e.g. {missing})",
                        "regenerate the partition file so that it lists every image of the attribute list")
    split = pd.to_numeric(codes, errors="coerce").map({0: "train", 1: "val", 2: "test"})
    if split.isna().any():  # a code like 3 or "train" would otherwise drop the row from every split
        bad = codes[split.isna()]
        raise DataError(f"{part_file} has split codes other than 0, 1, 2 (e.g. {bad.iloc[0]} for {bad.index[0]})",
                        "use 0 for train, 1 for val and 2 for test")
    return split


def load_utkface(root: Path) -> FaceDataset:
    """UTKFace file names ``age_gender_race_date.jpg``; malformed names are skipped with a warning."""
    image_dir = _first_existing(root, ["UTKFace", "utkface", "crop_part1"]) or root
    rows, skipped = [], 0
    for name in sorted(os.listdir(image_dir)):
        if not name.lower().endswith(IMAGE_EXTENSIONS):
            continue
        fields = name.split("_")
        try:
            age, gender, race = int(fields[0]), int(fields[1]), int(fields[2])
            if gender not in (0, 1) or race not in range(5) or not 0 <= age <= 120:
                raise ValueError
        except (ValueError, IndexError):
            skipped += 1
            continue
        rows.append((name, age, gender, race))
    if not rows:
        raise DataError(
            f"{image_dir} holds no UTKFace images named age_gender_race_date.jpg"
            + (f" ({skipped} files had other names)" if skipped else ""),
            "point --root at the UTKFace folder, or use --dataset csv for images with a CSV of attributes",
        )
    if skipped:
        warnings.warn(f"skipped {skipped} UTKFace files whose names do not follow age_gender_race_date.jpg",
                      stacklevel=3)
    raw = pd.DataFrame(rows, columns=["image_id", "age", "gender", "race"]).set_index("image_id")
    attrs = pd.DataFrame(
        {
            "Male": raw.gender == 0,
            "Young": raw.age < 30,
            "Child": raw.age < 13,
            "Senior": raw.age >= 60,
            "White": raw.race == 0,
            "Black": raw.race == 1,
            "Asian": raw.race == 2,
            "Indian": raw.race == 3,
            "Other_Race": raw.race == 4,
        },
        index=raw.index,
    ).astype(np.int8)
    return FaceDataset("utkface", root, _with_paths(attrs, image_dir, _hash_split(attrs.index)))


IMAGE_COLUMNS = ("image", "image_id", "filename", "file", "path")
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "-1", "false", "no", "n", "f"}


def load_csv(root: Path, csv: str | Path | None = None) -> FaceDataset:
    """A folder of images plus a CSV: one image column, an optional ``split`` column, binary attributes.

    Attribute values may be 0/1, ±1, true/false or yes/no. Columns that are not binary (an age, a
    free-text note) are left out with a warning rather than guessed at.
    """
    if csv is None:
        found = sorted(root.glob("*.csv"))
        if len(found) != 1:
            raise DataError(
                f"{root} has {len(found)} CSV files, so the attribute table is ambiguous" if found
                else f"{root} has no CSV file of attributes",
                "pass --csv PATH to name the attribute table",
            )
        csv = found[0]
    csv = Path(csv)
    if not csv.is_file():
        raise DataError(f"attribute table {csv} does not exist", "check --csv")
    try:
        frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {csv} as CSV ({exc})", "save the table as comma-separated UTF-8 text") from None
    image_col = next((c for c in frame.columns if c.lower() in IMAGE_COLUMNS), None)
    if image_col is None:
        raise DataError(f"{csv} has no image column (one of {', '.join(IMAGE_COLUMNS)})",
                        "add a column 'image' with each row's file name, relative to the dataset folder")
    if frame.empty:
        raise DataError(f"{csv} has a header but no rows", "add one row per image")
    frame = frame.set_index(image_col)
    frame.index.name = "image_id"

    split = None
    if "split" in frame.columns:
        split = frame.pop("split").str.strip().str.lower()
        unknown = sorted(set(split) - set(SPLITS))
        if unknown:
            raise DataError(f"{csv} has split values {unknown}", f"use only {', '.join(SPLITS)} in the split column")
    attrs, dropped = {}, []
    for col in frame.columns:
        values = frame[col].str.strip().str.lower()
        if values.isin(_TRUE | _FALSE).all():
            attrs[col] = values.isin(_TRUE).astype(np.int8)
        else:
            dropped.append(col)
    if dropped:
        warnings.warn(f"{csv}: columns {', '.join(dropped)} are not binary and are left out", stacklevel=3)
    if not attrs:
        raise DataError(f"{csv} has no binary attribute columns", "add columns of 0/1 (or ±1, true/false) values")
    table = pd.DataFrame(attrs, index=frame.index)
    return FaceDataset("csv", root, _with_paths(table, root, split if split is not None else _hash_split(table.index)))


# --------------------------------------------------------------------------------------- helpers


def _first_existing(root: Path, candidates: list[str]) -> Path | None:
    for rel in candidates:
        if (root / rel).exists():
            return root / rel
    return None


def _hash_split(ids: pd.Index, fractions: tuple[float, float] = (0.8, 0.1)) -> pd.Series:
    """A split that depends only on each file name, so it is stable across machines and runs."""
    buckets = np.array([int(hashlib.md5(str(i).encode()).hexdigest()[:8], 16) % 1000 for i in ids]) / 1000.0
    labels = np.where(buckets < fractions[0], "train", np.where(buckets < sum(fractions), "val", "test"))
    return pd.Series(labels, index=ids)


def _with_paths(attrs: pd.DataFrame, image_dir: Path, split: pd.Series) -> pd.DataFrame:
    """Add ``path`` and ``split`` and check that every listed image exists (one directory scan)."""
    ids = attrs.index.astype(str)
    repeated = ids[ids.duplicated()]
    if len(repeated):
        raise DataError(f"the attribute table lists {len(repeated)} images more than once (e.g. {repeated[0]})",
                        "keep one row per image: two rows of one image cannot both hold its labels")
    outside = [i for i in ids if Path(i).is_absolute() or ".." in Path(i).parts]
    if outside and os.environ.get("FAIRLOOP_IMAGES_OUTSIDE_ROOT") != "1":
        raise DataError(f"{len(outside)} image paths of the attribute table leave the dataset folder "
                        f"(e.g. {outside[0]})", "give paths relative to the dataset folder, or set "
                        "FAIRLOOP_IMAGES_OUTSIDE_ROOT=1 if the table is yours and should reach other folders")
    present = set(os.listdir(image_dir)) if image_dir.is_dir() else set()
    if not present:
        raise DataError(f"image folder {image_dir} is empty", "put the dataset's images there")
    top_level = np.array(["/" not in i for i in ids])
    missing = [i for i, top in zip(ids, top_level) if (i not in present if top else not (image_dir / i).exists())]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(ids)} images listed in the attribute table are missing from {image_dir} "
            f"(e.g. {', '.join(missing[:3])})",
            "restore the missing files, or remove their rows from the attribute table",
        )
    table = attrs.copy()
    table.insert(0, "split", split.reindex(attrs.index).to_numpy())
    table.insert(0, "path", [str(image_dir / i) for i in ids])
    return table
