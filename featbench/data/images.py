"""Pinned image sources, the train/test split by file name, and the views of an image.

A source is a list of images, each with an id (its file name), the sha256 of its file and a label
(ImageNet class index, or -1). Its *manifest hash* (`ImageSource.manifest_sha256`) is taken over
the sorted (id, sha256) pairs; suites pin it, and every image file is checked against its own
sha256 when it is read, so a changed or tampered file is refused rather than used.
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from PIL import Image

from featbench.core.errors import DataError
from featbench.core.hashing import sha256_file, sha256_json

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class ImageRecord:
    image_id: str  # the path relative to the source folder; the split and per-image seeds derive from it
    path: Path
    sha256: str
    label: int = -1  # the classifier's class index where the source has labels, else -1


@dataclass(frozen=True)
class ImageSource:
    name: str
    records: tuple[ImageRecord, ...]
    # Labels that no file name carries (a CSV) are pinned with the images, so that changing them
    # changes the manifest and with it every hash that depends on the data.
    labels_in_manifest: bool = False

    @property
    def manifest_sha256(self) -> str:
        if self.labels_in_manifest:
            return sha256_json(sorted([r.image_id, r.sha256, r.label] for r in self.records))
        return sha256_json(sorted([r.image_id, r.sha256] for r in self.records))

    def __len__(self) -> int:
        return len(self.records)

    def open(self, record: ImageRecord) -> Image.Image:
        """Decode one image after checking its file against the manifest."""
        got = sha256_file(record.path)
        if got != record.sha256:
            raise DataError(f"image {record.path} does not match its manifest sha256 "
                            f"({got[:12]}… != {record.sha256[:12]}…): the file was changed or damaged")
        with Image.open(record.path) as im:
            return im.convert("RGB")


LABEL_SCHEMES = ("none", "imagenet-wnid", "class-id", "imagefolder", "csv:FILE")
LABEL_SCHEMES_HELP = (
    "none (no labels: only label-free scores); imagenet-wnid (the ImageNet wnid that starts the file name, "
    "n01440764_tench.JPEG, or names its folder); class-id (an integer class index that starts the file name, "
    "417_balloon.jpg, or names its folder); imagefolder (torchvision's ImageFolder: one folder per class, "
    "classes numbered in sorted order); csv:FILE (a CSV in the image folder with columns file,label; "
    "labels are integer class indices or ImageNet wnids)")


def folder_source(directory: str | Path, name: str | None = None, labels: str = "none") -> ImageSource:
    """Images in a folder (and its sub-folders), pinned by its ``SHA256SUMS`` when present.

    ``SHA256SUMS`` holds ``<sha256>  <relative path>`` lines; without it the manifest is computed
    from the files (for custom suites). `labels` is one of :data:`LABEL_SCHEMES`
    (:data:`LABEL_SCHEMES_HELP`); a label that does not parse is a :class:`DataError`.
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise DataError(f"image folder {directory} does not exist")
    sums = directory / "SHA256SUMS"
    if sums.is_file():
        entries = []
        for line in sums.read_text().splitlines():
            if line.strip():
                digest, fname = line.split(maxsplit=1)
                entries.append((fname.lstrip("*"), digest))
    else:
        entries = [(p.relative_to(directory).as_posix(), sha256_file(p)) for p in sorted(directory.rglob("*"))
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not entries:
        raise DataError(f"image folder {directory} holds no images")
    missing = [f for f, _ in entries if not (directory / f).is_file()]
    if missing:
        raise DataError(f"image folder {directory}: {len(missing)} files listed in SHA256SUMS are missing, "
                        f"e.g. {missing[0]}")
    entries.sort()
    label_of = _labeller(directory, labels, [f for f, _ in entries])
    records = tuple(ImageRecord(f, directory / f, digest, label_of(f)) for f, digest in entries)
    return ImageSource(name or directory.name, records, labels_in_manifest=labels.startswith("csv:"))


def _labeller(directory: Path, scheme: str, image_ids: list[str]) -> Callable[[str], int]:
    """image id → class index under `scheme`; raises DataError on a label that does not parse."""
    def fail(image_id: str, why: str) -> DataError:
        return DataError(f"image folder {directory}: cannot read the {scheme} label of {image_id}: {why}")

    def class_token(image_id: str) -> str:
        # A file in a class folder takes the folder's name, else the start of its file name.
        parts = image_id.split("/")
        return parts[-2] if len(parts) > 1 else re.split(r"[_.\-]", parts[-1], maxsplit=1)[0]

    if scheme == "none":
        return lambda image_id: -1
    if scheme == "imagenet-wnid":
        index = imagenet_label_index()

        def wnid(image_id: str) -> int:
            token = class_token(image_id)
            if token not in index:
                raise fail(image_id, f"{token!r} is not an ImageNet-1k wnid (n01440764 ... n15075141)")
            return index[token]
        return wnid
    if scheme == "class-id":
        def class_id(image_id: str) -> int:
            token = class_token(image_id)
            if not token.isdigit():
                raise fail(image_id, f"{token!r} is not a non-negative integer class index")
            return int(token)
        return class_id
    if scheme == "imagefolder":
        flat = [i for i in image_ids if "/" not in i]
        if flat:
            raise fail(flat[0], "the file is not in a class folder (imagefolder needs DIR/<class>/<file>)")
        classes = {c: k for k, c in enumerate(sorted({i.split("/")[-2] for i in image_ids}))}
        return lambda image_id: classes[image_id.split("/")[-2]]
    if scheme.startswith("csv:"):
        return _csv_labels(directory, scheme[4:], image_ids)
    raise DataError(f"unknown label scheme {scheme!r}; schemes: {LABEL_SCHEMES_HELP}")


def _csv_labels(directory: Path, file: str, image_ids: list[str]) -> Callable[[str], int]:
    path = directory / file
    if not path.is_file():
        raise DataError(f"label file {path} does not exist (labels csv:{file} is read from the image folder)")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"file", "label"} <= set(rows[0]):
        raise DataError(f"label file {path} needs a header with the columns file,label")
    index = None
    table: dict[str, int] = {}
    for n, row in enumerate(rows, start=2):
        raw = (row["label"] or "").strip()
        if raw.isdigit():
            table[row["file"]] = int(raw)
            continue
        index = index or imagenet_label_index()
        if raw not in index:
            raise DataError(f"label file {path}, line {n}: label {raw!r} of {row['file']} is neither a "
                            "non-negative integer class index nor an ImageNet-1k wnid")
        table[row["file"]] = index[raw]
    unlabelled = [i for i in image_ids if i not in table]
    if unlabelled:
        raise DataError(f"label file {path} has no label for {len(unlabelled)} image(s), e.g. {unlabelled[0]}")
    return table.__getitem__


def parse_hf_images(spec: str) -> dict[str, str]:
    """``hf:ID@REV`` (a Hugging Face image dataset at a pinned revision) → {dataset, revision}."""
    match = re.fullmatch(r"hf:([\w.\-]+/[\w.\-]+)@([\w.\-]+)", spec)
    if match is None:
        raise DataError(f"{spec!r} is not hf:ORG/NAME@REVISION (a pinned revision: a commit hash or tag)")
    return {"dataset": match.group(1), "revision": match.group(2)}


def hf_image_folder(dataset: str, revision: str, split: str = "train", image_column: str = "image",
                    label_column: str = "label") -> Path:
    """A Hugging Face image dataset at `revision`, as a folder in featbench's cache that
    `folder_source` reads: each image's encoded bytes as a file, ``SHA256SUMS``, and
    ``labels.csv`` where the dataset has an integer `label_column`. Made once; needs the hub."""
    import datasets

    from featbench.core.paths import cache_dir

    folder = cache_dir() / "images" / f"{dataset.replace('/', '--')}@{revision}" / split
    if (folder / "SHA256SUMS").is_file():
        return folder
    try:
        ds = datasets.load_dataset(dataset, revision=revision, split=split)
    except Exception as exc:  # offline, unknown id or revision: say which and how to get round it
        raise DataError(f"cannot load the image dataset {dataset}@{revision} (split {split}) from the Hugging Face "
                        f"Hub: {type(exc).__name__}: {exc}. hf: images need the hub once; offline, save the images "
                        "to a folder and pass --images DIR") from exc
    if image_column not in ds.column_names:
        raise DataError(f"{dataset}@{revision} has no column {image_column!r}; columns: {', '.join(ds.column_names)}")
    ds = ds.cast_column(image_column, datasets.Image(decode=False))
    # Filled beside its final place and moved in whole, so that a half-written folder is never read.
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        sums, labels = [], []
        for i, row in enumerate(ds):
            image = row[image_column]
            suffix = Path(image.get("path") or "").suffix.lower()
            name = f"{i:07d}{suffix if suffix in IMAGE_SUFFIXES else '.png'}"
            (tmp / name).write_bytes(image["bytes"] if image.get("bytes") else Path(image["path"]).read_bytes())
            sums.append(f"{sha256_file(tmp / name)}  {name}")
            if isinstance(row.get(label_column), int):
                labels.append(f"{name},{row[label_column]}")
        if labels and len(labels) == len(sums):
            (tmp / "labels.csv").write_text("file,label\n" + "\n".join(labels) + "\n")
        (tmp / "SHA256SUMS").write_text("\n".join(sums) + "\n")
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def imagenet_label_index() -> dict[str, int]:
    from timm.data import ImageNetInfo

    return {wnid: i for i, wnid in enumerate(ImageNetInfo().label_names())}


def package_source(package: str, files: Iterable[str], name: str) -> ImageSource:
    """Images shipped inside an installed Python package (e.g. scikit-image's sample photos)."""
    import importlib.resources

    root = importlib.resources.files(package)
    records = []
    for f in sorted(files):
        path = Path(str(root / f))
        if not path.is_file():
            raise DataError(f"{package} ships no file {f} (is the pinned version installed?)")
        records.append(ImageRecord(f, path, sha256_file(path)))
    return ImageSource(name, tuple(records))


def split_by_name(records: Iterable[ImageRecord], n_test: int, salt: str = "") -> dict[str, list[ImageRecord]]:
    """Deterministic split: the `n_test` images with the smallest sha256(salt + id) are the test set."""
    ranked = sorted(records, key=lambda r: hashlib.sha256((salt + r.image_id).encode()).hexdigest())
    if not 0 < n_test < len(ranked):
        raise DataError(f"cannot hold out {n_test} test images from {len(ranked)}")
    test = sorted(ranked[:n_test], key=lambda r: r.image_id)
    train = sorted(ranked[n_test:], key=lambda r: r.image_id)
    return {"train": train, "test": test}


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Float pixels in [0, 255] as uint8, rounded and clamped (the one 8-bit rounding featbench uses)."""
    return pixels.round().clamp(0, 255).to(torch.uint8)


def seed_for(*parts: object) -> int:
    """A 63-bit seed from named parts (suite seed, image id, view, manipulation...)."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big") >> 1


def views(image: Image.Image, n_views: int, resize: int, crop: int, interpolation: str,
          seed: int) -> Iterator[torch.Tensor]:
    """View 0 is the center view (resize, center crop); views 1.. are seeded random crops.

    A random view is a crop of 35-100 % of the area with aspect ratio 3/4-4/3 (as torchvision's
    RandomResizedCrop) resized to `crop`, flipped horizontally with probability 1/2. Each yields
    float32 3×crop×crop pixels in [0, 255].
    """
    # Imported here: torchvision takes seconds to import (its models pull in torch._dynamo), and
    # every isolated scoring child imports this module (through the manipulations) but needs no view.
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    mode = InterpolationMode(interpolation)
    center = TF.center_crop(TF.resize(image, resize, interpolation=mode), crop)
    yield TF.pil_to_tensor(center).float()
    width, height = image.size
    for v in range(1, n_views):
        rng = random.Random(seed_for(seed, v))
        for _ in range(10):
            area = width * height * rng.uniform(0.35, 1.0)
            ratio = 2 ** rng.uniform(-0.415, 0.415)  # log-uniform in [3/4, 4/3]
            w = int(round((area * ratio) ** 0.5))
            h = int(round((area / ratio) ** 0.5))
            if 0 < w <= width and 0 < h <= height:
                break
        else:
            w, h = min(width, height), min(width, height)
        top, left = rng.randint(0, height - h), rng.randint(0, width - w)
        view = TF.resized_crop(image, top, left, h, w, [crop, crop], interpolation=mode)
        if rng.random() < 0.5:
            view = TF.hflip(view)
        yield TF.pil_to_tensor(view).float()
