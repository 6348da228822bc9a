"""The true and the manipulated images that the invert track and the image-level scores compare
reconstructions with, derived deterministically from a suite's pinned images.

Training targets (`InvertData.images`): each training row's own view of its image (the view the
row's feature map was extracted from: the backbone's resize and center crop for view 0, the
suite's seeded random crops for the others, `featbench.data.images.views`), resized from the
backbone's input size to R with an antialiased bicubic filter and rounded to 8 bits. They are
derived deterministically from the suite's pinned images and cached in
``<cache>/images/`` by a key over everything they depend on (see `target_images`).

The manipulated images (`manipulated_images`) are the task's manipulation applied to those views
exactly as `featbench.data.storage` builds the task data. Both are cached by key.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import torch
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from featbench.core.cache import cached_tensor, read_tensors, save_tensors
from featbench.core.errors import DataError
from featbench.core.hashing import sha256_json
from featbench.core.paths import cache_dir
from featbench.data.images import seed_for, split_by_name, to_uint8, views
from featbench.data.storage import Chunk, decode_chunk, variant_pixels
from featbench.zoo.backbones import BACKBONES, load_backbone

if TYPE_CHECKING:
    from featbench.zoo.backbones import Backbone

# Bump when the way targets are derived changes: the cache key covers it.
TARGETS_VERSION = 1
# Bump when the manipulated images change meaning (was image_scores' cache version).
MANIPULATED_VERSION = 1


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """N×3×H×W floats → N×3×size×size, bicubic with antialiasing (a no-op at the same size)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return TF.resize(images, [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)


def network_input(backbone: "Backbone", images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images of any size as `backbone`'s normalised input: resized to its crop size
    (`resize_images`), the way the invert track shows reconstructions to a network."""
    return backbone.normalize(resize_images(images, backbone.spec.preprocessing.crop) * 255)


def to_target(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """Pixels N×3×H×W in [0, 255] (a backbone's input views) as target images: resized to `size`
    (bicubic, antialiased) and rounded to uint8, as every true image of the invert track is."""
    return to_uint8(resize_images(pixels, size))


def targets_spec(suite, backbone: str, split: str, size: int) -> dict[str, Any]:
    """Everything the true images of a split at `size` depend on (their cache key hashes it)."""
    spec = BACKBONES.get(backbone)
    pre = spec.preprocessing if spec is not None else None
    return {
        "version": TARGETS_VERSION, "images_manifest_sha256": suite.images["manifest_sha256"],
        "split": {"n_test": suite.n_test, "which": split}, "views": suite.views[split], "seed": suite.seed,
        "preprocessing": None if pre is None else [pre.resize, pre.crop, pre.interpolation],
        "backbone": backbone if pre is None else None, "size": size,
    }


def target_images(suite, backbone: str, split: str, sizes: list[int]
                  ) -> tuple[dict[int, torch.Tensor], list[tuple[str, int]]]:
    """The true images of a split's rows at each size in `sizes`: {size: uint8 N×3×s×s}, rows.

    Rows are (image_id, view) in the task data's order. Cached per (split, size) in
    ``<cache>/images/<key>.safetensors``, the key a hash of the image manifest, the split, the
    views, the suite seed, the backbone's preprocessing and the size.
    """
    keys = {s: sha256_json(targets_spec(suite, backbone, split, s)) for s in sizes}
    paths = {s: cache_dir() / "images" / f"{keys[s][:32]}.safetensors" for s in sizes}
    out: dict[int, torch.Tensor] = {}
    rows: list[tuple[str, int]] | None = None
    for s, path in paths.items():
        found = read_tensors(path, keys[s])
        if found is not None and "images" in found[0]:
            out[s] = found[0]["images"]
            rows = [tuple(r) for r in json.loads(found[1]["rows"])]
    missing = [s for s in sizes if s not in out]
    if missing:
        spec = BACKBONES.get(backbone)
        pre = spec.preprocessing if spec is not None else load_backbone(backbone).spec.preprocessing
        source = suite.image_source()
        records = split_by_name(source.records, suite.n_test)[split]
        parts: dict[int, list[torch.Tensor]] = {s: [] for s in missing}
        rows = []
        for rec in records:
            image = source.open(rec)
            pixels = torch.stack(list(views(image, suite.views[split], pre.resize, pre.crop, pre.interpolation,
                                            seed_for(suite.seed, rec.image_id))))
            rows += [(rec.image_id, v) for v in range(len(pixels))]
            for s in missing:
                parts[s].append(to_target(pixels, s))
        for s in missing:
            out[s] = torch.cat(parts[s])
            save_tensors(paths[s], {"images": out[s]}, metadata={"key": keys[s], "rows": json.dumps(rows)})
    return out, rows


def aligned_targets(suite, backbone: str, split: str, sizes: list[int], image_ids: list[str],
                    view_ix: list[int]) -> dict[int, torch.Tensor]:
    """`target_images` checked to be in the order of the given task rows (else a clear error)."""
    images, rows = target_images(suite, backbone, split, sizes)
    want = list(zip(image_ids, [int(v) for v in view_ix]))
    if [tuple(r) for r in rows] != want:
        raise DataError(f"{split} target images of {backbone} do not line up with the task data's rows "
                        f"({len(rows)} vs {len(want)} rows); rebuild the suite's data")
    return images


def as_unit(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.to(torch.float32) / 255


def unit_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] → uint8 (rounded, clamped), as reconstructions are compared."""
    return to_uint8(images * 255)


def _original_and_manipulated(suite, task, backbone: "Backbone", rows: list[tuple[str, int]], split: str
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The original and the manipulated float pixels of a split's `rows`, in their order, made exactly
    as `featbench.data.storage` builds the task data."""
    source = suite.image_source()
    wanted = {i for i, _ in rows}
    records = [r for r in split_by_name(source.records, suite.n_test)[split] if r.image_id in wanted]
    decoded = decode_chunk(suite, source, backbone, Chunk(split, 0, tuple(records)))
    position = {(i, v): k for k, (i, v) in enumerate(zip(decoded.ids, decoded.view_ix))}
    order = [position[r] for r in rows]
    return decoded.pixels[order], next(variant_pixels(suite, decoded, [task.manipulation]))[order]


def manipulated_images(suite, task, backbone: "Backbone", rows: list[tuple[str, int]], resolution: int,
                       split: str = "test") -> torch.Tensor:
    """The task's manipulated views of a split's `rows` ((image_id, view)) at `resolution`, uint8
    N×3×R×R: decoded and manipulated as `featbench.data.storage` builds the task data, resized as the
    invert track's targets. Cached by key."""
    key = sha256_json({"version": MANIPULATED_VERSION, "targets": targets_spec(suite, task.backbone, split, resolution),
                       "manipulation": task.manipulation.spec(), "rows": rows})

    def make() -> torch.Tensor:
        return to_target(_original_and_manipulated(suite, task, backbone, rows, split)[1], resolution)

    return cached_tensor(cache_dir() / "image_scores" / "manipulated" / f"{key[:40]}.safetensors", key, make)


def changed_cells(suite, task, backbone: "Backbone", rows: list[tuple[str, int]], grid: tuple[int, int],
                  split: str = "test") -> torch.Tensor:
    """Where the task's manipulation changed each row's view, on the feature grid: bool N×h×w, true
    for a grid cell whose footprint in the view holds a pixel that differs (at 8 bits) from the
    original. For local and semantic manipulations (geometric ones move every cell). Cached by key."""
    if task.manipulation.is_geometric:
        raise DataError(f"task {task.id}: a geometric manipulation has no changed region")
    key = sha256_json({"version": MANIPULATED_VERSION, "targets": targets_spec(suite, task.backbone, split, 0),
                       "manipulation": task.manipulation.spec(), "rows": rows, "grid": list(grid)})

    def make() -> torch.Tensor:
        original, manipulated = _original_and_manipulated(suite, task, backbone, rows, split)
        differs = (to_uint8(manipulated) != to_uint8(original)).any(1, keepdim=True).float()
        return torch.nn.functional.adaptive_max_pool2d(differs, grid)[:, 0] > 0

    return cached_tensor(cache_dir() / "image_scores" / "changed" / f"{key[:40]}.safetensors", key, make)
