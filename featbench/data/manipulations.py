"""Image manipulations: named, parametrised, seeded functions applied to images.

A manipulation runs after resize and center crop, at the backbone's input resolution, before
normalisation. Images are float32 tensors N×3×H×W, RGB, values in [0, 255]; the result has the
same dtype, batch and channel sizes and value range (geometric ones may swap H and W).

Geometric manipulations also act on feature maps (:meth:`Manipulation.grid_action`), which is
what lets a benchmark compare the features of a manipulated image with the manipulated features
of the original.

Built-ins (FeatMap's set): ``rot90``, ``rot180``, ``rot270``, ``hflip``, ``vflip`` (geometric);
``noise40``, ``hue60``, ``grayscale`` (photometric); ``mask_tl_red``, ``mask_br_green``,
``mask_center_big_blue``, ``mask_center_small_yellow`` (local). Semantic, object-level edits
(``object_removal``, ``object_only``, ``background_swap``) live in :mod:`featbench.data.semantic`;
add your own with :func:`register_manipulation`.

Most manipulations see pixels only. An *image-aware* one (``contextual=True``) also gets a
:class:`ManipulationContext`: which image and view each row is, its split, and a way to see other
images of the same split as the suite cuts them (a background swap's partner, an edit pair's
edited image). Builders pass it; the result must still depend only on each row's own image, view
and seed, never on the batch.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import operator
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from featbench.core.plugins import Registry
from featbench.core.errors import FeatbenchError
from featbench.data.images import to_uint8

CATEGORIES = ("geometric", "photometric", "local", "semantic")

# What may follow the dot of a labelled name (`get_manipulation`): safe in task ids and folder names.
LABEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")

# Mask boxes are defined on a 288 px image (FeatMap's resolution) and scaled to the input size.
MASK_REFERENCE_SIZE = 288


class ManipulationParamError(FeatbenchError, ValueError):
    """A manipulation parameter (or argument such as ``seeds``) is not allowed."""


@dataclass(frozen=True)
class ManipulationContext:
    """What an image-aware manipulation knows beyond the pixels of its rows.

    ``image_ids[i]`` and ``views[i]`` name row i; every row is of ``split``, whose image ids (in
    manifest order) are ``split_ids``. ``load_view(image_id, view)`` gives that view of another image
    of the split, float32 3×H×W in [0, 255], cut exactly as the suite cuts it.
    ``view_of(image, image_id, view)`` cuts a given PIL image (an edited version of ``image_id``)
    the way that view of ``image_id`` is cut, after resizing it to the original's size.
    ``split_sha256[image_id]`` is the sha256 of that image's file as the suite's manifest pins it
    (so that an edit made elsewhere can be checked to be an edit of this very file).
    """

    image_ids: Sequence[str]
    views: Sequence[int]
    split: str
    split_ids: Sequence[str]
    suite_seed: int
    load_view: Callable[[str, int], torch.Tensor] = field(repr=False)
    view_of: Callable[[Image.Image, str, int], torch.Tensor] = field(repr=False)
    split_sha256: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class _Entry:
    category: str
    fn: Callable[..., torch.Tensor]
    defaults: Mapping[str, Any]
    grid_fn: Callable[..., torch.Tensor] | None
    seeded: bool
    version: int
    check: Callable[[Mapping[str, Any]], None] | None
    contextual: bool = False


_REGISTRY: Registry[_Entry] = Registry("manipulation")
# Modules that register manipulations of their own (the semantic edits, with their saliency
# models; the given edit pairs), imported by name when the registry is first read: importing
# this module stays light.
PLUGIN_MODULES = ("featbench.data.semantic", "featbench.data.edit_pairs")


def _registry() -> Registry[_Entry]:
    """The registry, with the manipulations of `PLUGIN_MODULES` in it."""
    for module in PLUGIN_MODULES:
        importlib.import_module(module)
    return _REGISTRY


@dataclass(frozen=True)
class Manipulation:
    """One manipulation with its parameters fixed. Get one with :func:`get_manipulation`.

    Equal manipulations (same name, category and params) act identically, provided the
    implementation version is the same; :meth:`spec` includes that version for content hashes.
    """

    name: str
    category: str
    params: Mapping[str, Any] = field(hash=False)  # read-only; values are hashable and JSON-able
    _entry: _Entry = field(repr=False, compare=False)

    def __call__(self, images: torch.Tensor, seeds: Sequence[int] | None = None,
                 context: ManipulationContext | None = None) -> torch.Tensor:
        """Apply to float32 images N×3×H×W in [0, 255]; returns a new tensor, the input is untouched.

        ``seeds`` (one int per image) is required by seeded manipulations (``noise40``), so that
        each image's result depends only on its own seed, not on the batch it is in. Others
        ignore it. ``context`` is required by image-aware ones (:attr:`needs_context`) and
        ignored by the rest.
        """
        if images.ndim != 4 or images.shape[1] != 3 or images.dtype != torch.float32:
            raise FeatbenchError(
                f"manipulation {self.name!r} needs float32 images N×3×H×W in [0, 255], "
                f"got {images.dtype} of shape {tuple(images.shape)}"
            )
        kwargs = dict(self.params)
        if self._entry.seeded:
            kwargs["seeds"] = _check_seeds(self.name, seeds, len(images))
        if self._entry.contextual:
            if context is None:
                raise ManipulationParamError(
                    f"manipulation {self.name!r} is image-aware: it needs a ManipulationContext (which image, "
                    "view and split each row is), which featbench's builders pass")
            if len(context.image_ids) != len(images) or len(context.views) != len(images):
                raise ManipulationParamError(
                    f"manipulation {self.name!r}: the context names {len(context.image_ids)} rows for "
                    f"{len(images)} images")
            kwargs["context"] = context
        out = self._entry.fn(images, **kwargs)
        # Geometric actions may swap H and W; nothing may change batch, channels or dtype.
        same_shape = out.shape == images.shape if not self.is_geometric else out.shape[:2] == images.shape[:2]
        if not same_shape or out.dtype != images.dtype:
            raise FeatbenchError(
                f"manipulation {self.name!r} turned {images.dtype} {tuple(images.shape)} "
                f"into {out.dtype} {tuple(out.shape)}"
            )
        return out

    @property
    def needs_context(self) -> bool:
        """True if this manipulation is image-aware: it must be called with a :class:`ManipulationContext`."""
        return self._entry.contextual

    @property
    def is_geometric(self) -> bool:
        """True if this is a spatial action that also applies to feature maps (``grid_action``)."""
        return self._entry.grid_fn is not None

    def grid_action(self, fmap: torch.Tensor) -> torch.Tensor:
        """Apply the same spatial action as on images to any N×C×h×w map (e.g. a feature map).

        Only for geometric manipulations; others raise :class:`FeatbenchError`.
        """
        if self._entry.grid_fn is None:
            raise FeatbenchError(
                f"manipulation {self.name!r} is {self.category}, not geometric: it has no grid action"
            )
        if fmap.ndim != 4:
            raise FeatbenchError(f"grid_action needs an N×C×h×w map, got shape {tuple(fmap.shape)}")
        return self._entry.grid_fn(fmap, **self.params)

    def grid_permutation(self, h: int, w: int) -> torch.LongTensor:
        """Index vector ``idx`` of length h'·w' with ``grid_action(m).flatten(2) == m.flatten(2)[..., idx]``.

        h'×w' is the shape of the acted-on h×w grid (w×h for a quarter turn). Geometric only.
        """
        if h < 1 or w < 1:
            raise ManipulationParamError(f"grid_permutation needs h, w >= 1, got h={h}, w={w}")
        # Act on a map whose values are its own flat indices: the result reads off where each cell came from.
        idx = self.grid_action(torch.arange(h * w).view(1, 1, h, w)).flatten()
        if idx.dtype != torch.long or not torch.equal(idx.sort().values, torch.arange(h * w)):
            raise FeatbenchError(f"the grid action of {self.name!r} is not a permutation of grid cells")
        return idx

    def spec(self) -> dict[str, Any]:
        """JSON-able description ``{"name", "category", "params", "version"}`` used in content hashes."""
        return {
            "name": self.name,
            "category": self.category,
            "params": {k: _to_json(v) for k, v in self.params.items()},
            "version": self._entry.version,
        }


def get_manipulation(name: str, **params: Any) -> Manipulation:
    """The registered manipulation ``name``; ``params`` override its defaults.

    ``name`` may carry a label, ``<registered name>.<label>`` (``edit_pairs.blue-body``): the same
    manipulation under a name of its own, so that a suite can list one kind several times with
    different params (one edit-pair dataset per prompt) and each gets its own task ids and data.
    Unknown names raise :class:`UnknownNameError`; unknown parameter names or values that are not
    allowed raise :class:`FeatbenchError`.
    """
    base, dot, label = name.partition(".")
    if dot and not LABEL_PATTERN.fullmatch(label):
        raise ManipulationParamError(f"manipulation {name!r}: the label after the dot must be letters, digits, "
                                     "'-' and '_' (as in edit_pairs.blue-body)")
    entry = _registry().lookup(base)
    unknown = sorted(set(params) - set(entry.defaults))
    if unknown:
        allowed = ", ".join(entry.defaults) or "none"
        raise ManipulationParamError(
            f"manipulation {name!r} has no parameter {', '.join(map(repr, unknown))}; allowed: {allowed}"
        )
    # An int where the default is a float (sigma=40 for 40.0) is the same manipulation: give it the
    # same spec, hence the same content hash.
    params = {
        k: float(v) if isinstance(entry.defaults[k], float) and type(v) is int else v for k, v in params.items()
    }
    merged = _frozen_params(name, {**entry.defaults, **params})
    if entry.check is not None:
        entry.check(merged)
    return Manipulation(name, entry.category, merged, entry)


def list_manipulations(category: str | None = None) -> list[str]:
    """Registered names, in registration order, optionally only those of one category."""
    if category is not None and category not in CATEGORIES:
        raise ManipulationParamError(f"unknown category {category!r}; allowed: {', '.join(CATEGORIES)}")
    return [n for n, e in _registry().items() if category is None or e.category == category]


def register_manipulation(
    name: str,
    category: str,
    fn: Callable[..., torch.Tensor],
    defaults: Mapping[str, Any],
    grid_fn: Callable[..., torch.Tensor] | None = None,
    seeded: bool = False,
    version: int = 1,
    check: Callable[[Mapping[str, Any]], None] | None = None,
    contextual: bool = False,
) -> None:
    """Add a manipulation under a new ``name``.

    ``fn(images, **params)`` (``fn(images, seeds=[...], **params)`` if ``seeded``) maps float32
    N×3×H×W images in [0, 255] to the same. Geometric ones must give ``grid_fn(fmap, **params)``,
    the same spatial action on any N×C×h×w map; other categories must not. ``defaults`` names every
    parameter (values JSON-able); ``check(params)`` may raise :class:`FeatbenchError` for values it
    does not allow. ``contextual`` ones are called ``fn(images, context=ManipulationContext, ...)``.
    Bump ``version`` whenever the output for the same params changes, so that
    cached results are recomputed.
    """
    if category not in CATEGORIES:
        raise ManipulationParamError(f"unknown category {category!r}; allowed: {', '.join(CATEGORIES)}")
    if "." in name:
        raise ManipulationParamError(f"manipulation {name!r}: a registered name has no '.' (it starts a label)")
    if (category == "geometric") != (grid_fn is not None):
        raise ManipulationParamError(
            f"manipulation {name!r}: grid_fn is required for geometric manipulations and only for them"
        )
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ManipulationParamError(f"manipulation {name!r}: version must be an int >= 1, got {version!r}")
    frozen = _frozen_params(name, defaults)
    if check is not None:
        check(frozen)  # a default that its own check rejects is a bug; catch it here, not at first use
    _REGISTRY.add(name, _Entry(category, fn, frozen, grid_fn, seeded, version, check, contextual))


# --- parameter handling -------------------------------------------------------------------------


def _freeze(value: Any) -> Any:
    # Lists become tuples so params stay immutable and hashable.
    return tuple(_freeze(v) for v in value) if isinstance(value, (list, tuple)) else value


def _to_json(value: Any) -> Any:
    return [_to_json(v) for v in value] if isinstance(value, tuple) else value


def _frozen_params(name: str, params: Mapping[str, Any]) -> Mapping[str, Any]:
    frozen = {k: _freeze(v) for k, v in params.items()}
    for k, v in frozen.items():
        try:
            json.dumps(_to_json(v), allow_nan=False)
        except (TypeError, ValueError):
            raise ManipulationParamError(
                f"manipulation {name!r}: parameter {k!r} must be JSON-able (no NaN or infinity), got {v!r}"
            ) from None
    return MappingProxyType(frozen)


def _require_int(param: str, value: Any, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ManipulationParamError(f"parameter {param!r} must be an int in [{lo}, {hi}], got {value!r}")


def _require_int_tuple(param: str, value: Any, length: int, lo: int, hi: int) -> None:
    if not isinstance(value, tuple) or len(value) != length:
        raise ManipulationParamError(
            f"parameter {param!r} must be {length} ints in [{lo}, {hi}], got {value!r}"
        )
    for v in value:
        _require_int(param, v, lo, hi)


def _check_seeds(name: str, seeds: Sequence[int] | None, n: int) -> list[int]:
    if seeds is None:
        raise ManipulationParamError(f"manipulation {name!r} is seeded: pass seeds, one int per image")
    try:
        seeds = [operator.index(s) for s in seeds]
    except TypeError:
        raise ManipulationParamError(f"manipulation {name!r}: seeds must be ints, got {seeds!r}") from None
    if len(seeds) != n:
        raise ManipulationParamError(f"manipulation {name!r}: got {len(seeds)} seeds for {n} images")
    return seeds


# --- geometric ----------------------------------------------------------------------------------

_FLIP_DIMS = {"width": -1, "height": -2}


def _rotate(x: torch.Tensor, k: int) -> torch.Tensor:
    """Counter-clockwise by 90·k degrees as displayed (rows top to bottom)."""
    return torch.rot90(x, k, dims=(-2, -1))


def _check_rotate(p: Mapping[str, Any]) -> None:
    _require_int("k", p["k"], 1, 3)


def _flip(x: torch.Tensor, axis: str) -> torch.Tensor:
    return torch.flip(x, dims=(_FLIP_DIMS[axis],))


def _check_flip(p: Mapping[str, Any]) -> None:
    if p["axis"] not in _FLIP_DIMS:
        raise ManipulationParamError(
            f"parameter 'axis' must be one of {list(_FLIP_DIMS)}, got {p['axis']!r}"
        )


# --- photometric --------------------------------------------------------------------------------


def _gaussian_noise(images: torch.Tensor, seeds: list[int], sigma: float) -> torch.Tensor:
    # Drawn on the CPU, one generator per image, so an image's noise depends on its seed alone:
    # not on the batch it is in, nor on the device (CUDA generators give different numbers).
    noise = torch.empty(images.shape)  # filled in place: stacking per-image tensors is several times slower
    for row, seed in zip(noise, seeds):
        torch.randn(row.shape, generator=torch.Generator().manual_seed(seed), out=row)
    return noise.to(images.device).mul_(sigma).add_(images).clamp_(0, 255)


def _check_noise(p: Mapping[str, Any]) -> None:
    sigma = p["sigma"]
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
        raise ManipulationParamError(f"parameter 'sigma' must be a finite number >= 0, got {sigma!r}")


def _hue_shift(images: torch.Tensor, shift: int) -> torch.Tensor:
    rgb = to_uint8(images).to(torch.int32)
    colours = (rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]
    shifted = np.take(_hue_shift_table(shift), colours.cpu().numpy()).view(np.uint8)  # N×H×(4W)
    rgbx = torch.from_numpy(shifted).unflatten(-1, (-1, 4))
    return rgbx[..., :3].permute(0, 3, 1, 2).to(images.device, torch.float32)


@functools.lru_cache(maxsize=2)
def _hue_shift_table(shift: int) -> np.ndarray:
    """Every 24-bit colour (index ``r << 16 | g << 8 | b``) through PIL's own HSV round trip with
    the hue shifted, as 2**24 uint32 whose bytes are R, G, B, 0.

    PIL's conversion, not a re-implementation, so results are PIL's exactly; it works pixel by
    pixel, so a table of all colours gives the bytes that converting each image gives. Made once per
    process (about 1 s on 2 CPU cores), it makes the shift about 3.5x faster than converting each
    image. Four bytes per entry because numpy looks up whole uint32 several times faster than
    rows of three bytes.
    """
    channel = np.arange(256, dtype=np.uint8)
    colours = np.stack(np.meshgrid(channel, channel, channel, indexing="ij"), axis=-1).reshape(4096, 4096, 3)
    hsv = np.array(Image.fromarray(colours, "RGB").convert("HSV"))
    hsv[..., 0] += np.uint8(shift)  # uint8 arithmetic wraps at 256, as the hue does
    table = np.zeros((2**24, 4), dtype=np.uint8)
    table[:, :3] = np.asarray(Image.fromarray(hsv, "HSV").convert("RGB")).reshape(-1, 3)
    return table.view(np.uint32).ravel()


def _check_hue(p: Mapping[str, Any]) -> None:
    _require_int("shift", p["shift"], 0, 255)  # the hue wraps at 256: other ints would alias these


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    # PIL's convert("L") in integer arithmetic: L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16.
    rgb = images.round().clamp(0, 255).to(torch.int32)
    lum = (rgb[:, 0] * 19595 + rgb[:, 1] * 38470 + rgb[:, 2] * 7471 + 0x8000) >> 16
    return lum.unsqueeze(1).expand(-1, 3, -1, -1).to(torch.float32).contiguous()


# --- local --------------------------------------------------------------------------------------


def _mask_bounds(a0: int, a1: int, size: int) -> tuple[int, int]:
    """Start and exclusive end along an axis of ``size`` px of the inclusive range [a0, a1] at 288 px."""
    # Python's round: exact .5 ties (only possible for some odd sizes) go to the even integer.
    return round(a0 * size / MASK_REFERENCE_SIZE), round((a1 + 1) * size / MASK_REFERENCE_SIZE)


def _mask_box(images: torch.Tensor, box: tuple[int, int], color: tuple[int, int, int]) -> torch.Tensor:
    r0, r1 = _mask_bounds(*box, images.shape[-2])
    c0, c1 = _mask_bounds(*box, images.shape[-1])
    out = images.clone()
    out[:, :, r0:r1, c0:c1] = torch.tensor(color, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return out


def _check_mask(p: Mapping[str, Any]) -> None:
    _require_int_tuple("color", p["color"], 3, 0, 255)
    _require_int_tuple("box", p["box"], 2, 0, MASK_REFERENCE_SIZE - 1)
    if p["box"][0] > p["box"][1]:
        raise ManipulationParamError(f"parameter 'box' must be (a0, a1) with a0 <= a1, got {p['box']!r}")


def _register_builtins() -> None:
    for k in (1, 2, 3):
        register_manipulation(
            f"rot{90 * k}", "geometric", _rotate, {"k": k}, grid_fn=_rotate, check=_check_rotate
        )
    for name, axis in (("hflip", "width"), ("vflip", "height")):
        register_manipulation(name, "geometric", _flip, {"axis": axis}, grid_fn=_flip, check=_check_flip)
    register_manipulation(
        "noise40", "photometric", _gaussian_noise, {"sigma": 40.0}, seeded=True, check=_check_noise
    )
    register_manipulation("hue60", "photometric", _hue_shift, {"shift": 60}, check=_check_hue)
    register_manipulation("grayscale", "photometric", _grayscale, {})
    for name, box, color in (
        ("mask_tl_red", (26, 103), (255, 0, 0)),
        ("mask_br_green", (180, 270), (0, 255, 0)),
        ("mask_center_big_blue", (90, 193), (0, 0, 255)),
        ("mask_center_small_yellow", (116, 154), (255, 255, 0)),
    ):
        register_manipulation(name, "local", _mask_box, {"box": box, "color": color}, check=_check_mask)


_register_builtins()
