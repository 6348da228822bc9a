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
(`featbench.interfaces.mapper.resolve_model`), with this group.

Resolution: the evaluator scores reconstructions at the suite's image size
(``InvertInfo.image_size``, 64 px for featbench-v1). An inverter that works at another resolution
sets ``resolution`` (e.g. 256): it is then trained on targets of that size, returns images of that
size, and the evaluator resizes them to the scored size (bicubic, antialiased). Either way
`invert` must return exactly N×3×R×R floats in [0, 1]; anything else fails the task.
The training targets are `featbench.data.targets.target_images`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from featbench.core.errors import DataError
from featbench.core.paths import cache_dir
from featbench.core.plugins import INVERTERS, registered_models, resolve_model
from featbench.interfaces.pairs import Pairs


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
class InvertData(Pairs):
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
    # name → the pairs under that manipulation (the evaluator sets it; `with_manipulation` calls it)
    manipulated_loader: Callable[[str], "InvertData"] | None = field(default=None, repr=False, compare=False)
    target_field: ClassVar[str] = "images"

    def with_manipulation(self, name: str) -> "InvertData":
        """The same training images under the suite's manipulation `name` (``hflip``, ``hue60``...):
        their maps from the map track's training split, their images manipulated alike, as extra
        training pairs (the test images stay held out). Loaded on demand; images cached."""
        if self.manipulated_loader is None or name not in self.manipulations:
            raise DataError(f"{self.info.task_id}: no training pairs under manipulation {name!r}; "
                            f"these data offer {list(self.manipulations) or 'none'}")
        return self.manipulated_loader(name)

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, index: torch.Tensor) -> "InvertData":
        # Without manipulated pairs: they cover every training image, held-out ones included.
        rows = index.tolist()
        return InvertData(self.info, self.x[index], self.images[index], [self.image_ids[i] for i in rows],
                          [self.views[i] for i in rows], None if self.x_prefix is None else self.x_prefix[index])


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

    def reset_sampler(self) -> None:
        """Seeded samplers: start the noise sequence again, so that two inversions of the same
        maps match (the image-level scores invert P and Y with the same noise). Deterministic
        inverters need not override it."""


class CheckpointedInverter(Inverter):
    """An inverter trained ahead of a run by ``featbench train-inverter``, through its
    ``train(data, directory=, max_steps=, max_seconds=, progress=)``, which resumes the
    checkpoints in `checkpoint_dir` and sets ``report`` (a `featbench.interfaces.checkpoints.TrainingReport`).

    `fit` uses the checkpoint that training left for the task as it is, so a run scores exactly
    that training (its sha256 goes into the result) and never changes it; with no checkpoint, it
    trains from scratch within the task's time budget (and leaves that checkpoint behind).
    """

    report: Any = None

    def train(self, train: InvertData, *, directory: str | Path | None = None, max_steps: int | None = None,
              max_seconds: float | None = None, progress: bool = False):
        raise NotImplementedError

    def fit(self, train: InvertData) -> None:
        from featbench.interfaces.checkpoints import read_record

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
    return registered_models(INVERTERS)


def resolve_inverter(spec: str) -> Callable[[], Inverter]:
    """A factory for the inverter named by `spec`: an entry-point name, ``module:Class`` or ``file.py:Class``."""
    return resolve_model(spec, group=INVERTERS)


def checkpoint_dir(suite: str, backbone: str, layer: str, preset: str) -> Path:
    """Where a trained inverter of (suite, backbone, layer) is kept: ``<cache>/inverters/...``."""
    return cache_dir() / "inverters" / suite / backbone / layer / preset
