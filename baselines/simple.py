"""The floor: predict the unmanipulated map, or its exact spatial permutation."""

from __future__ import annotations

import torch

import featbench as fb


class Identity(fb.Mapper):
    """P = X: what a mapper scores by predicting no change at all."""

    name, version = "identity", "1"

    def fit(self, train: fb.MapData) -> None:
        pass

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Spatial(fb.Mapper):
    """The manipulation's exact action on the grid (geometric manipulations only)."""

    name, version = "spatial", "1"
    categories = ("geometric",)

    def fit(self, train: fb.MapData) -> None:
        self.info = train.info

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.info.grid_action(x)
