"""The map-track submission interface: `Mapper`, the data it is fitted on, and how one is found.

A submission is a class with ``fit(train)`` and ``predict(x)``::

    import featbench as fb

    class MeanShift(fb.Mapper):
        name, version = "mean-shift", "1"

        def fit(self, train: fb.MapData) -> None:
            self.shift = (train.y - train.x).mean(dim=0)    # C×h×w

        def predict(self, x):
            return x + self.shift

Name it on the command line as a registered name (``linear``), a module path
(``mypkg.maps:MeanShift``), a file (``path/to/file.py:MeanShift``), or register it under the
``featbench.mappers`` entry-point group of your package. The reference baselines are found the
same way (they are entry points of featbench itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator

import torch

from featbench.data.manipulations import Manipulation
from featbench.interfaces.pairs import Pairs


@dataclass(frozen=True)
class TaskInfo:
    """What a mapper may know about its task: ids, shapes, the manipulation and the fit's limits.

    ``grid_action`` is the manipulation's exact action on feature maps for geometric tasks and
    ``None`` for every other task, so ``if info.grid_action is not None`` is the test to write.
    """

    task_id: str
    backbone: str
    layer: str
    shape: tuple[int, int, int]  # C, h, w of x and y
    prefix_shape: tuple[int, int] | None  # C, k of the class/register tokens (ViTs), else None
    manipulation: Manipulation
    seed: int  # the seed this task is run with; mappers should draw their randomness from it
    time_budget_s: float | None  # wall seconds `fit` may take; None: no limit

    @property
    def category(self) -> str:
        """``geometric``, ``photometric``, ``local`` or ``semantic``."""
        return self.manipulation.category

    @property
    def manipulation_name(self) -> str:
        return self.manipulation.name

    @property
    def params(self) -> dict[str, Any]:
        """The manipulation's parameters (a copy; e.g. ``{"k": 1}`` for rot90)."""
        return dict(self.manipulation.params)

    @property
    def is_geometric(self) -> bool:
        return self.manipulation.is_geometric

    @property
    def grid_action(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """N×C×h×w map → the same spatial action the manipulation applies to images; None where
        the manipulation is not geometric."""
        return self.manipulation.grid_action if self.manipulation.is_geometric else None


@dataclass
class MapData(Pairs):
    """Training pairs: x (source maps) and y (maps of the manipulated images), N×C×h×w float32.

    For ViTs, x_prefix / y_prefix hold the class-token prefix (N×C×k). Iterating yields (x, y)
    pairs; `batches` yields mini-batches; `split` holds out images for validation.
    """

    info: TaskInfo
    x: torch.Tensor
    y: torch.Tensor
    image_ids: list[str]
    x_prefix: torch.Tensor | None = None
    y_prefix: torch.Tensor | None = None
    target_field: ClassVar[str] = "y"

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return zip(self.x, self.y)

    def subset(self, index: torch.Tensor) -> "MapData":
        pick = (lambda t: None if t is None else t[index])
        return MapData(self.info, self.x[index], self.y[index], [self.image_ids[i] for i in index.tolist()],
                       pick(self.x_prefix), pick(self.y_prefix))


class Mapper:
    """Base class of map-track submissions. Override `fit` and `predict`; set `name`, `version`.

    ``predict(x)`` gets an N×C×h×w float32 batch of test source maps (for ViTs carrying the
    class-token prefix as ``x.prefix``, N×C×k, as `Backbone.features` does) and returns the
    predicted maps of the same shape, or a pair (maps, prefix) to predict the prefix too; where
    no prefix is predicted, the source's prefix is carried over unchanged.
    ``describe()`` may return ``n_params`` and, for a shared linear map y_p = W x_p + b, ``linear``
    = (W, b) for the linear-structure analysis. ``categories`` names the manipulation categories
    a mapper applies to (``("geometric",)`` for one built on the grid action); a run scores it on
    those tasks only.
    """

    name: str = "unnamed"
    version: str = "0"
    categories: tuple[str, ...] | None = None  # None: every category

    def fit(self, train: MapData) -> None:
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {}


def with_prefix(x: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
    """`x` carrying its class-token prefix as ``x.prefix`` (ViT maps; nothing for CNN maps), as a
    mapper's ``predict`` and an inverter's ``invert`` receive it."""
    if prefix is not None:
        x.prefix = prefix
    return x
