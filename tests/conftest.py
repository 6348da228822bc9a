"""Shared fixtures: tiny random-weight backbones (plumbing only) and a private featbench cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from featbench.backbones import BACKBONES, BackboneSpec, Preprocessing, register_backbone

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


def require_shared_images() -> Path:
    if not (SHARED_IMAGES / "SHA256SUMS").is_file():
        pytest.skip(f"needs the pinned ImageNet samples at {SHARED_IMAGES} (absent on a fresh clone; CI has them)")
    return SHARED_IMAGES
