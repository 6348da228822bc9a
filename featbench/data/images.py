"""Pinned image sources, the train/test split by file name, and the views of an image.

A source is a list of images, each with an id (its file name), the sha256 of its file and a label
(ImageNet class index, or -1). Its *manifest hash* (`ImageSource.manifest_sha256`) is taken over
the sorted (id, sha256) pairs; suites pin it, and every image file is checked against its own
sha256 when it is read, so a changed or tampered file is refused rather than used.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from featbench.core.errors import DataError
from featbench.core.hashing import sha256_file, sha256_json

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class ImageRecord:
    image_id: str  # the file name; the split and per-image seeds derive from it
    path: Path
    sha256: str
    label: int = -1  # ImageNet-1k class index where the source has labels


@dataclass(frozen=True)
class ImageSource:
    name: str
    records: tuple[ImageRecord, ...]

    @property
    def manifest_sha256(self) -> str:
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


def folder_source(directory: str | Path, name: str | None = None, labels: str = "none") -> ImageSource:
    """Images in a folder, pinned by its ``SHA256SUMS`` (``<sha256>  <file>`` lines) when present.

    Without SHA256SUMS the manifest is computed from the files (for custom suites). `labels`:
    ``"imagenet-wnid"`` reads the class from the file name, ``"none"`` gives -1.
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
        entries = [(p.name, sha256_file(p)) for p in sorted(directory.iterdir())
                   if p.suffix.lower() in IMAGE_SUFFIXES]
    if not entries:
        raise DataError(f"image folder {directory} holds no images")
    missing = [f for f, _ in entries if not (directory / f).is_file()]
    if missing:
        raise DataError(f"image folder {directory}: {len(missing)} files listed in SHA256SUMS are missing, "
                        f"e.g. {missing[0]}")
    label_of = imagenet_label_index() if labels == "imagenet-wnid" else None
    records = tuple(
        ImageRecord(f, directory / f, digest, label_of.get(f.split("_", 1)[0], -1) if label_of else -1)
        for f, digest in sorted(entries)
    )
    return ImageSource(name or directory.name, records)


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
