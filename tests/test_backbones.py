"""Backbones: layers, the tail's exactness, errors; tiny random models and the two real ones."""

from __future__ import annotations

import pytest
import skimage.data
import torch
from PIL import Image

import featbench as fb
from featbench.core.errors import AssetError, FeatbenchError
from featbench.data.images import folder_source
from tests.conftest import TINY_CNN, TINY_VIT, require_shared_images


def _photos() -> list[Image.Image]:
    return [Image.fromarray(skimage.data.chelsea()), Image.fromarray(skimage.data.coffee())]


def _full_output(bb: fb.Backbone, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return bb.model(x)


def _assert_tail_is_exact(bb: fb.Backbone, x: torch.Tensor, layers: list[str]) -> None:
    full = _full_output(bb, x)
    feats = bb.features(x, layers)
    for layer in layers:
        if layer in bb.layers:  # the shape the spec declares
            assert tuple(feats[layer].shape[1:]) == bb.layers[layer], layer
        torch.testing.assert_close(bb.tail(layer, feats[layer]), full, atol=1e-4, rtol=1e-4, msg=layer)


@pytest.mark.parametrize("name", [TINY_CNN, TINY_VIT])
def test_tiny_tail_equals_full_model_at_every_layer(name):
    bb = fb.load_backbone(name)
    x = bb.preprocess(_photos())
    assert x.shape == (2, 3, 64, 64)
    _assert_tail_is_exact(bb, x, bb.cut_layers)


def test_vit_maps_carry_a_prefix_and_the_tail_needs_it():
    bb = fb.load_backbone(TINY_VIT)
    x = bb.preprocess(_photos())
    fmap = bb.features(x, ["blocks.1"])["blocks.1"]
    assert fmap.prefix.shape == (2, 64, 1)
    torch.testing.assert_close(bb.tail("blocks.1", fmap.clone(), prefix=fmap.prefix), _full_output(bb, x))
    with pytest.raises(FeatbenchError, match="prefix"):
        bb.tail("blocks.1", fmap.clone())


@pytest.mark.parametrize("name", [TINY_CNN, TINY_VIT])
def test_differentiable_features_are_the_same_maps_with_gradients(name):
    """What feature guidance relies on: the same maps, and a gradient to the input image."""
    bb = fb.load_backbone(name)
    x = bb.preprocess(_photos()).requires_grad_(True)
    layer = bb.cut_layers[-1]
    with torch.inference_mode():  # as under the evaluator: the flag turns it off
        got = bb.features(x, [layer], differentiable=True)[layer]
    torch.testing.assert_close(got.detach(), bb.features(x, [layer])[layer])
    grad, = torch.autograd.grad(got.square().sum(), x)
    assert grad.shape == x.shape and grad.abs().sum() > 0


def test_unknown_layer_and_backbone_are_clear_errors():
    bb = fb.load_backbone(TINY_CNN)
    with pytest.raises(fb.UnknownNameError, match="blocks.9.*layers: blocks.0"):
        bb.features(torch.zeros(1, 3, 64, 64), ["blocks.9"])
    with pytest.raises(fb.UnknownNameError, match="neither registered"):
        fb.load_backbone("no_such_net")


def test_unpinned_timm_model_offline_names_the_way_out(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AssetError, match="pretrained_file"):
        fb.load_backbone("resnet18")


def test_features_are_batch_independent():
    bb = fb.load_backbone(TINY_CNN)
    x = bb.preprocess(_photos())
    both = bb.features(x, ["blocks.3"])["blocks.3"]
    one = bb.features(x[1:], ["blocks.3"])["blocks.3"]
    torch.testing.assert_close(both[1:], one, atol=1e-5, rtol=1e-5)


# -- real weights -------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["efficientnet_lite0", "dinov2_vits14"])
def real(request) -> fb.Backbone:
    return fb.load_backbone(request.param)


def test_real_backbone_tail_is_exact_at_every_exposed_layer(real):
    x = real.preprocess(_photos())
    assert x.shape == (2, 3, 224, 224)
    _assert_tail_is_exact(real, x, list(real.layers))


def test_real_backbone_compiled_features_match_eager(real):
    x = real.preprocess(_photos()[:1])
    compiled = fb.load_backbone(real.name, compile=True)
    layer = list(real.layers)[-1]
    torch.testing.assert_close(compiled.features(x, [layer])[layer], real.features(x, [layer])[layer],
                               atol=1e-3, rtol=1e-3)


def test_lite0_recognises_a_cat():
    bb = fb.load_backbone("efficientnet_lite0")
    logits = bb.model(bb.preprocess(_photos()[:1]))
    assert int(logits.argmax()) in range(281, 286)  # ImageNet's domestic cats


@pytest.mark.slow
def test_lite0_top1_on_the_pinned_imagenet_samples():
    """ASSETS.md measured 0.883 (bicubic 256 → 224); the issue asks for at least 0.85."""
    source = folder_source(require_shared_images(), labels="imagenet-wnid")
    bb = fb.load_backbone("efficientnet_lite0")
    correct = 0
    records = list(source.records)
    for i in range(0, len(records), 50):
        batch = records[i:i + 50]
        x = bb.preprocess([source.open(r) for r in batch])
        with torch.inference_mode():
            pred = bb.model(x.contiguous(memory_format=torch.channels_last)).argmax(1)
        correct += int((pred == torch.tensor([r.label for r in batch])).sum())
    top1 = correct / len(records)
    print(f"efficientnet_lite0 top-1 on {len(records)} pinned images: {top1:.3f}")
    assert top1 >= 0.85
