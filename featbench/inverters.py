"""The invert-track submission interface: `Inverter`, the data it is fitted on, and how one is found.

A submission reconstructs images from feature maps::

    import featbench as fb

    class MeanImage(fb.Inverter):
        name, version = "mean-image", "1"

        def fit(self, train: fb.InvertData) -> None:
            self.mean = train.images.mean(dim=0)          # 3×R×R in [0, 1]

        def invert(self, x):                              # N×C×h×w maps
            return self.mean.expand(len(x), -1, -1, -1)   # N×3×R×R in [0, 1]

Name it on the command line as a registered name (``decoder``), a module path
(``mypkg.inv:MeanImage``), a file (``path/to/file.py:MeanImage``), or register it under the
``featbench.inverters`` entry-point group of your package; the resolver is the map track's
(`featbench.mappers.resolve_model`), with this group.

Resolution: the evaluator scores reconstructions at the suite's image size
(``InvertInfo.image_size``, 64 px for featbench-v1). An inverter that works at another resolution
sets ``resolution`` (e.g. 256): it is then trained on targets of that size, returns images of that
size, and the evaluator resizes them to the scored size (bicubic, antialiased). Either way
`invert` must return exactly N×3×R×R floats in [0, 1]; anything else fails the task.

Training targets (`InvertData.images`): each training row's own view of its image (the view the
row's feature map was extracted from: the backbone's resize and center crop for view 0, the
suite's seeded random crops for the others, `featbench.images.views`), resized from the
backbone's input size to R with an antialiased bicubic filter and rounded to 8 bits. They are
derived deterministically from the suite's pinned images and cached in
``<cache>/images/`` by a key over everything they depend on (see `target_images`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
import torchvision.transforms.functional as TF
from safetensors import safe_open
from safetensors.torch import save_file
from torchvision.transforms import InterpolationMode

from featbench.errors import DataError
from featbench.hashing import sha256_json
from featbench.images import seed_for, split_by_name, views
from featbench.mappers import registered_models, resolve_model, split_by_image
from featbench.paths import cache_dir

if TYPE_CHECKING:
    from featbench.backbones import Backbone

ENTRY_POINT_GROUP = "featbench.inverters"
# Bump when the way targets are derived changes: the cache key covers it.
TARGETS_VERSION = 1


@dataclass(frozen=True)
class InvertInfo:
    """What an inverter may know about its task."""

    task_id: str
    suite: str
    backbone: str
    layer: str
    shape: tuple[int, int, int]  # C, h, w of the maps
    prefix_shape: tuple[int, int] | None  # C, k of the class/register tokens (ViTs), else None
    image_size: int  # the side, in pixels, at which reconstructions are scored
    seed: int  # the seed this task is run with; inverters should draw their randomness from it
    time_budget_s: float | None  # wall seconds `fit` may take; None: no limit
    data_sha256: str = ""  # content hash of the task's data (checkpoints record it)
    settings: dict[str, Any] = field(default_factory=dict)  # the suite's pinned invert settings (sampler...)


@dataclass
class InvertData:
    """Training pairs: maps x (N×C×h×w float32) and their images (N×3×R×R float32 in [0, 1]).

    For ViTs, x_prefix holds the class-token prefix (N×C×k). `batches` yields mini-batches of
    (x, images); `split` holds out whole images for validation. The training split offers more
    pairs of the same images: `with_manipulation(name)` for each of `manipulations`.
    """

    info: InvertInfo
    x: torch.Tensor
    images: torch.Tensor
    image_ids: list[str]
    views: list[int]
    x_prefix: torch.Tensor | None = None
    manipulations: tuple[str, ...] = ()  # the names `with_manipulation` accepts
    _load_manipulated: Callable[[str], "InvertData"] | None = field(default=None, repr=False, compare=False)

    def with_manipulation(self, name: str) -> "InvertData":
        """The same training images under the suite's manipulation `name` (``hflip``, ``hue60``...):
        their maps from the map track's training split, their images manipulated alike, as extra
        training pairs (the test images stay held out). Loaded on demand; images cached."""
        if self._load_manipulated is None or name not in self.manipulations:
            raise DataError(f"{self.info.task_id}: no training pairs under manipulation {name!r}; "
                            f"these data offer {list(self.manipulations) or 'none'}")
        return self._load_manipulated(name)

    def __len__(self) -> int:
        return len(self.x)

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        for i in range(0, len(self), batch_size):
            idx = order[i:i + batch_size]
            yield self.x[idx], self.images[idx]

    def subset(self, index: torch.Tensor) -> "InvertData":
        # Without manipulated pairs: they cover every training image, held-out ones included.
        rows = index.tolist()
        return InvertData(self.info, self.x[index], self.images[index], [self.image_ids[i] for i in rows],
                          [self.views[i] for i in rows], None if self.x_prefix is None else self.x_prefix[index])

    def split(self, val_fraction: float = 0.05, seed: int = 0) -> tuple["InvertData", "InvertData"]:
        """(train, validation), holding out whole images (all their views), chosen by `seed`."""
        fit_rows, val_rows = split_by_image(self.image_ids, val_fraction, seed)
        return self.subset(fit_rows), self.subset(val_rows)


class Inverter:
    """Base class of invert-track submissions. Override `fit` and `invert`; set `name`, `version`.

    ``invert(x)`` gets an N×C×h×w float32 batch of test maps (ViT maps carry ``x.prefix``) and
    returns N×3×R×R float images in [0, 1], R = ``resolution`` or, if None, ``info.image_size``.
    Optional: ``describe()`` returns ``n_params`` (and notes such as ``weights_sha256``);
    ``invert_unconditional(n)`` returns n samples with the condition dropped, which the evaluator
    scores as the ``unconditional`` reference point; ``train(data, ...)`` lets
    ``featbench train-inverter`` train it ahead of a run, with checkpoints (see the baselines).
    """

    name: str = "unnamed"
    version: str = "0"
    resolution: int | None = None

    def fit(self, train: InvertData) -> None:
        raise NotImplementedError

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {}


class CheckpointedInverter(Inverter):
    """An inverter trained ahead of a run by ``featbench train-inverter``, through its
    ``train(data, directory=, max_steps=, max_seconds=, progress=)``, which resumes the
    checkpoints in `checkpoint_dir` and sets ``report`` (a `featbench.checkpoints.TrainingReport`).

    `fit` uses the checkpoint that training left for the task as it is, so a run scores exactly
    that training (its sha256 goes into the result) and never changes it; with no checkpoint, it
    trains from scratch within the task's time budget (and leaves that checkpoint behind).
    """

    report: Any = None

    def train(self, train: InvertData, *, directory: str | Path | None = None, max_steps: int | None = None,
              max_seconds: float | None = None, progress: bool = False):
        raise NotImplementedError

    def fit(self, train: InvertData) -> None:
        from featbench.checkpoints import read_record

        info = train.info
        record = read_record(checkpoint_dir(info.suite, info.backbone, info.layer, self.name))
        trained = int(record["latest"]["step"]) if record else 0
        if trained > 0:
            self.train(train, max_steps=trained)
        else:
            budget = info.time_budget_s
            self.train(train, max_seconds=None if budget is None else 0.9 * budget)

    def training_notes(self, full_steps: int) -> dict[str, Any]:
        """What the result records of the training used: steps of the preset's `full_steps`,
        why it stopped, the checkpoint's sha256."""
        if self.report is None:
            return {}
        return {"steps": f"{self.report.step}/{full_steps}", "stopped_by": self.report.stopped_by,
                "weights_sha256": self.report.weights_sha256}


def registered_inverters() -> dict[str, Any]:
    return registered_models(ENTRY_POINT_GROUP)


def resolve_inverter(spec: str) -> Callable[[], Inverter]:
    """A factory for the inverter named by `spec`: an entry-point name, ``module:Class`` or ``file.py:Class``."""
    return resolve_model(spec, group=ENTRY_POINT_GROUP)


def checkpoint_dir(suite: str, backbone: str, layer: str, preset: str) -> Path:
    """Where a trained inverter of (suite, backbone, layer) is kept: ``<cache>/inverters/...``."""
    return cache_dir() / "inverters" / suite / backbone / layer / preset


# --- target images -----------------------------------------------------------------------------


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
    return resize_images(pixels, size).round().clamp(0, 255).to(torch.uint8)


def _targets_spec(suite, backbone: str, split: str, size: int) -> dict[str, Any]:
    from featbench.backbones import BACKBONES

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
    from featbench.backbones import BACKBONES, load_backbone

    keys = {s: sha256_json(_targets_spec(suite, backbone, split, s)) for s in sizes}
    paths = {s: cache_dir() / "images" / f"{keys[s][:32]}.safetensors" for s in sizes}
    out: dict[int, torch.Tensor] = {}
    rows: list[tuple[str, int]] | None = None
    for s, path in paths.items():
        if path.is_file():
            try:
                with safe_open(str(path), "pt") as f:
                    meta = f.metadata() or {}
                    if meta.get("key") == keys[s]:
                        out[s] = f.get_tensor("images")
                        rows = [tuple(r) for r in json.loads(meta["rows"])]
            except Exception:  # damaged or partial: derived again below
                out.pop(s, None)
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
            paths[s].parent.mkdir(parents=True, exist_ok=True)
            tmp = paths[s].with_name(f"{paths[s].name}.tmp{os.getpid()}")
            save_file({"images": out[s].contiguous()}, str(tmp), metadata={"key": keys[s], "rows": json.dumps(rows)})
            os.replace(tmp, paths[s])
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
