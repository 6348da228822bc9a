"""A shared linear map per position, fitted in closed form (ridge), and its spatial variant.

y_p = W x_p + b at every position p (and every class/register token of a ViT), with W (C×C) and
b fitted by ridge regression from XᵀX and XᵀY accumulated in float64 while streaming over the
training data. The ridge penalty pulls W towards the identity (‖W − I‖², not ‖W‖²): with
little data the map falls back to "no change" rather than to predicting the mean. Its strength
is chosen on a validation split (from the split's own accumulated moments, so no second pass),
then the map is refitted on all training data.
"""

from __future__ import annotations

import torch

import featbench as fb

# Ridge strengths, relative to the mean diagonal of XᵀX (so they are scale-free).
RIDGE_GRID = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def _tokens(maps: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
    """N×C×h×w maps (and N×C×k prefix) → (N·(h·w + k))×C rows, one per position or token."""
    rows = maps.flatten(2)
    if prefix is not None:
        rows = torch.cat([prefix, rows], dim=2)
    return rows.transpose(1, 2).reshape(-1, maps.shape[1])


class _Moments:
    """Running XᵀX, XᵀY, YᵀY (with a bias column appended to X), in float64."""

    def __init__(self, c: int):
        self.xx = torch.zeros(c + 1, c + 1, dtype=torch.float64)
        self.xy = torch.zeros(c + 1, c, dtype=torch.float64)
        self.yy = torch.zeros((), dtype=torch.float64)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        xa = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
        self.xx += xa.T @ xa
        self.xy += xa.T @ y.double()
        self.yy += (y.double() ** 2).sum()

    def __add__(self, other: "_Moments") -> "_Moments":
        out = _Moments(self.xy.shape[1])
        out.xx, out.xy, out.yy = self.xx + other.xx, self.xy + other.xy, self.yy + other.yy
        return out

    def solve(self, ridge: float) -> torch.Tensor:
        """(C+1)×C coefficients minimising ‖Y − X̃·coef‖² + λ‖W − I‖²; the bias row is not penalised."""
        c = self.xy.shape[1]
        penalty = torch.eye(c + 1, dtype=torch.float64) * ridge * self.xx.diagonal()[:c].mean()
        penalty[c, c] = 0
        prior = torch.eye(c + 1, c, dtype=torch.float64)  # W = I, b = 0
        return torch.linalg.lstsq(self.xx + penalty, self.xy + penalty @ prior).solution

    def sse(self, coef: torch.Tensor) -> float:
        """Σ‖Y − X̃·coef‖² from the moments alone."""
        return float(self.yy - 2 * (coef * self.xy).sum() + (coef * (self.xx @ coef)).sum())


class Linear(fb.Mapper):
    name, version = "linear", "1"
    spatial = False  # linear+spatial: apply the exact grid action first (Lenc & Vedaldi)

    def _source(self, x: torch.Tensor) -> torch.Tensor:
        return self.info.grid_action(x) if self.spatial else x

    def _moments(self, data: fb.MapData, batch_size: int = 64) -> _Moments:
        m = _Moments(data.info.shape[0])
        for i in range(0, len(data), batch_size):
            sl = slice(i, i + batch_size)
            xp = None if data.x_prefix is None else data.x_prefix[sl]
            yp = None if data.y_prefix is None else data.y_prefix[sl]
            m.add(_tokens(self._source(data.x[sl]), xp), _tokens(data.y[sl], yp))
        return m

    def fit(self, train: fb.MapData) -> None:
        self.info = train.info
        fit_part, val_part = train.split(0.05, seed=train.info.seed)
        fit_m, val_m = self._moments(fit_part), self._moments(val_part)
        val_sse = {r: val_m.sse(fit_m.solve(r)) for r in RIDGE_GRID}
        self.ridge = min(val_sse, key=val_sse.get)
        coef = (fit_m + val_m).solve(self.ridge).float()
        self.W, self.b = coef[:-1].T.contiguous(), coef[-1].contiguous()  # y = W x + b

    def predict(self, x: torch.Tensor):
        c = x.shape[1]
        y = torch.einsum("dc,nchw->ndhw", self.W, self._source(x)) + self.b.view(1, c, 1, 1)
        prefix = getattr(x, "prefix", None)  # a ViT's class token: mapped like any other token
        if prefix is None:
            return y
        return y, torch.einsum("dc,nck->ndk", self.W, prefix) + self.b.view(1, c, 1)

    def describe(self) -> dict:
        return {"n_params": self.W.numel() + self.b.numel(), "linear": (self.W, self.b),
                "ridge": self.ridge}


class LinearSpatial(Linear):
    name = "linear+spatial"
    spatial = True
    categories = ("geometric",)
