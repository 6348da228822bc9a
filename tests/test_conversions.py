"""Weight conversions: strict loads into timm, and outputs that agree with the source models."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pickle
import pytest
import skimage.data
import timm
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T
from PIL import Image

from featbench.zoo.conversions import (
    SQUEEZENET_CAFFE_MEAN_BGR,
    StateDict,
    dinov2_onnx_to_timm,
    efficientnet_pytorch_to_timm,
    load_numpy_pickle,
    resample_vit_pos_embed,
    squeezenet_caffe_to_torchvision,
)
from featbench.core.errors import AssetError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE0_MEAN = LITE0_STD = (0.5, 0.5, 0.5)
DINO_GRID_224 = (16, 16)  # 224 px / patch 14


def _preprocess(images: list[np.ndarray], mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Bicubic resize to 256, center crop 224, normalize: one batch."""
    transform = T.Compose([
        T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(224),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])
    return torch.stack([transform(Image.fromarray(image)) for image in images])


def _assert_float32_contiguous(state: StateDict) -> None:
    bad = [name for name, t in state.items() if t.dtype != torch.float32 or not t.is_contiguous()]
    assert not bad, f"not float32 contiguous: {bad[:5]}"


@pytest.fixture(scope="module")
def source_file() -> Callable[[str], Path]:
    from featbench.zoo.assets import source_file  # the pinned, sha256-verified raw files

    return source_file


@pytest.fixture(scope="module")
def lite0_state(source_file: Callable[[str], Path]) -> StateDict:
    return efficientnet_pytorch_to_timm(source_file("efficientnet_lite0"))


@pytest.fixture(scope="module")
def dinov2_path(source_file: Callable[[str], Path]) -> Path:
    return source_file("dinov2_vits14")


@pytest.fixture(scope="module")
def dinov2_state(dinov2_path: Path) -> StateDict:
    return dinov2_onnx_to_timm(dinov2_path)


def _dinov2(img_size: int) -> torch.nn.Module:
    return timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0,
                             img_size=img_size).eval()


def test_lite0_loads_strictly(lite0_state: StateDict) -> None:
    _assert_float32_contiguous(lite0_state)
    timm.create_model("tf_efficientnet_lite0", pretrained=False).load_state_dict(lite0_state, strict=True)


def test_lite0_classifies_skimage_images(lite0_state: StateDict) -> None:
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    model.load_state_dict(lite0_state, strict=True)
    # ImageNet classes that each picture shows (rocket: no such class, both "missile" classes).
    expected = {"chelsea": range(281, 286), "coffee": {967}, "rocket": {657, 744}}
    batch = _preprocess([getattr(skimage.data, name)() for name in expected], LITE0_MEAN, LITE0_STD)
    with torch.no_grad():
        top1 = model(batch).argmax(-1).tolist()
    assert all(pred in classes for pred, classes in zip(top1, expected.values())), top1


def test_lite0_rejects_unknown_layer(tmp_path: Path) -> None:
    path = tmp_path / "changed.pth"
    torch.save({"_blocks.0._se_reduce.weight": torch.zeros(1)}, path)  # Lite models have no SE
    with pytest.raises(AssetError, match="_se_reduce"):
        efficientnet_pytorch_to_timm(path)


def test_dinov2_loads_strictly_at_518(dinov2_state: StateDict) -> None:
    _assert_float32_contiguous(dinov2_state)
    assert dinov2_state["pos_embed"].shape == (1, 1 + 37 * 37, 384)
    _dinov2(518).load_state_dict(dinov2_state, strict=True)


def test_resampled_dinov2_loads_strictly_at_224(dinov2_state: StateDict) -> None:
    resampled = resample_vit_pos_embed(dinov2_state, DINO_GRID_224)
    _dinov2(224).load_state_dict(resampled, strict=True)
    assert dinov2_state["pos_embed"].shape == (1, 1370, 384)  # the input is left as it was
    assert torch.equal(resampled["pos_embed"][:, :1], dinov2_state["pos_embed"][:, :1])
    _assert_float32_contiguous(resampled)


def _onnx_backbone_features(path: Path, batch: torch.Tensor) -> np.ndarray:
    """The ONNX graph's output of the backbone's final LayerNorm, exposed as an extra graph output."""
    model = onnx.load(str(path))
    # The last node of that LayerNorm adds its bias, whether it is exported fused or decomposed.
    name = next(node.output[0] for node in model.graph.node if "backbone.layernorm.bias" in node.input)
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([name], {"input_image": batch.numpy()})[0]


def test_dinov2_matches_onnx_backbone(dinov2_path: Path, dinov2_state: StateDict) -> None:
    batch = _preprocess([skimage.data.astronaut(), skimage.data.coffee()], IMAGENET_MEAN, IMAGENET_STD)
    expected = _onnx_backbone_features(dinov2_path, batch)
    model = _dinov2(224)
    model.load_state_dict(resample_vit_pos_embed(dinov2_state, DINO_GRID_224), strict=True)
    with torch.no_grad():
        got = model.forward_features(batch).numpy()
    assert got.shape == expected.shape == (2, 257, 384)
    # Measured 4.6e-5 (outputs reach ~11); a wrong pos_embed resampling (antialias) gives ~1.
    assert np.abs(got - expected).max() < 1e-4


def test_dinov2_rejects_changed_graph(dinov2_path: Path, tmp_path: Path) -> None:
    model = onnx.load(str(dinov2_path))
    missing = "/backbone/encoder/layer.5/mlp/fc1/MatMul"
    next(node for node in model.graph.node if node.name == missing).name = "renamed"
    path = tmp_path / "changed.onnx"
    onnx.save(model, str(path))
    with pytest.raises(AssetError, match=missing):
        dinov2_onnx_to_timm(path)


# --- SqueezeNet 1.1 (Caffe) ---

@pytest.fixture(scope="module")
def squeezenet_path(source_file: Callable[[str], Path]) -> Path:
    return source_file("squeezenet1_1")


def test_squeezenet_loads_strictly_into_torchvision(squeezenet_path: Path) -> None:
    state = squeezenet_caffe_to_torchvision(squeezenet_path)
    _assert_float32_contiguous(state)
    torchvision.models.squeezenet1_1().load_state_dict(state, strict=True)


def test_squeezenet_folded_conv1_equals_caffe_conv1_on_caffe_input(squeezenet_path: Path) -> None:
    """The fold: conv1 on ImageNet-normalised RGB equals Caffe's conv1 on BGR 0-255 minus its mean."""
    kernel, bias = load_numpy_pickle(squeezenet_path, "SqueezeNet weights")["conv1"]
    caffe_w = torch.from_numpy(kernel.transpose(3, 2, 0, 1)).double()
    pixels = torch.rand(2, 3, 31, 31, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    caffe_in = 255 * pixels.flip(1) - torch.tensor(SQUEEZENET_CAFFE_MEAN_BGR, dtype=torch.float64).view(1, 3, 1, 1)
    expected = F.conv2d(caffe_in, caffe_w, torch.from_numpy(bias).double(), stride=2)
    state = squeezenet_caffe_to_torchvision(squeezenet_path)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    got = F.conv2d((pixels - mean) / std, state["features.0.weight"].double(), state["features.0.bias"].double(),
                   stride=2)
    # Measured 1.4e-5 on outputs up to ~590 (float32 rounding of the folded weights); no fold, or a
    # fold without the BGR swap, is off by tens to hundreds.
    assert (got - expected).abs().max() < 1e-3


def test_squeezenet_rejects_a_pickle_with_other_layers(squeezenet_path: Path, tmp_path: Path) -> None:
    weights = load_numpy_pickle(squeezenet_path, "SqueezeNet weights")
    del weights["fire5/expand3x3"]
    path = tmp_path / "changed.pkl"
    path.write_bytes(pickle.dumps(weights))
    with pytest.raises(AssetError, match="missing.*fire5/expand3x3"):
        squeezenet_caffe_to_torchvision(path)
