"""FeatMap's MLP mapper: per position Linear(C, 512) → ReLU → Dropout(0.2) → Linear(512, C)
(C = channels). It acts on tokens, so for ViTs it maps the class token too.

``mlp`` is trained by featbench's recipe on shuffled positions, ``mlp-featmap`` by FeatMap's
(`baselines.training`), both within ``mlp``'s declared budget.
"""

from __future__ import annotations

import torch
from torch import nn

import featbench as fb
from baselines.training import HIDDEN, FeatbenchRecipe, FeatMapRecipe


class MLP(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(c, HIDDEN), nn.ReLU(), nn.Dropout(0.2), nn.Linear(HIDDEN, c))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens)

    @property
    def last(self) -> nn.Module:
        return self.net[-1]


class _MLP:
    per_position = True  # featbench's recipe trains it on shuffled positions

    def build(self, info: fb.TaskInfo) -> nn.Module:
        return MLP(info.shape[0])


class MLPMapper(_MLP, FeatbenchRecipe):
    name = "mlp"
    time_budget_s = 150
    max_steps = 1500


class MLPFeatMapMapper(_MLP, FeatMapRecipe):
    name = "mlp-featmap"
    time_budget_s = MLPMapper.time_budget_s
