"""FeatMap's gradient-trained mappers (MLP, CNN, transformer) and their training recipe.

Recipe (FeatMap): loss 0.3·MSE + 0.7·(1 − median over positions of the cosine between predicted
and target vectors), AdamW (lr 1e-4, weight decay 1e-4), ReduceLROnPlateau, early stopping on a
5 % validation split of the training images. featbench adds a cap on epochs and a wall-time
budget per task (``info.time_budget_s``) so that a suite fits a CPU; when the budget stops
training before early stopping does, `describe()` says so, since such a fit depends on the
machine's speed.

The MLP and the transformer act on tokens, so for ViTs they map the class token too; the CNN
acts on the grid only, and the evaluator carries the source's class token over.

featbench's one change to the recipe: the networks see inputs and produce outputs standardised
per channel (statistics of the training data; the loss is still taken on the original scale),
which lets them converge within a CPU budget. ``standardize = False`` gives FeatMap's raw setup.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

import featbench as fb

LOSS_MSE_WEIGHT = 0.3
HIDDEN = 512


def recipe_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0.3·MSE + 0.7·(1 − median cosine), tokens as N×T×C."""
    mse = torch.mean((pred - target) ** 2)
    cos = nn.functional.cosine_similarity(pred, target, dim=2)  # N×T
    return LOSS_MSE_WEIGHT * mse + (1 - LOSS_MSE_WEIGHT) * (1 - cos.median(dim=1).values.mean())


def to_tokens(maps: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
    """N×C×h×w (+ N×C×k prefix) → N×(k+h·w)×C."""
    tokens = maps.flatten(2)
    if prefix is not None:
        tokens = torch.cat([prefix, tokens], dim=2)
    return tokens.transpose(1, 2)


def from_tokens(tokens: torch.Tensor, shape: tuple[int, int, int], k: int):
    """Inverse of `to_tokens`: (maps, prefix or None)."""
    c, h, w = shape
    t = tokens.transpose(1, 2)
    maps = t[:, :, k:].reshape(len(t), c, h, w)
    return maps, (t[:, :, :k] if k else None)


class MLP(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(c, HIDDEN), nn.ReLU(), nn.Dropout(0.2), nn.Linear(HIDDEN, c))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(tokens)


class CNN(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(c, HIDDEN, 3, padding=1), nn.BatchNorm2d(HIDDEN), nn.ReLU(), nn.Dropout2d(0.2),
            nn.Conv2d(HIDDEN, c, 3, padding=1), nn.BatchNorm2d(c))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.net(maps)


class Transformer(nn.Module):
    def __init__(self, c: int, n_tokens: int, positional: bool):
        super().__init__()
        self.inp = nn.Linear(c, HIDDEN)
        layer = nn.TransformerEncoderLayer(HIDDEN, nhead=8, dim_feedforward=1024, dropout=0.2, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=4, enable_nested_tensor=False)
        self.out = nn.Linear(HIDDEN, c)
        # FeatMap's has no positional embedding; without one the encoder cannot tell positions apart.
        self.pos = nn.Parameter(torch.zeros(1, n_tokens, HIDDEN)) if positional else None
        if self.pos is not None:
            nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        z = self.inp(tokens)
        if self.pos is not None:
            z = z + self.pos
        return self.out(self.encoder(z))


class _Trained(fb.Mapper):
    """Shared fit/predict for the gradient-trained mappers."""

    version = "2"  # 2: no step is started that would overrun the time budget
    on_tokens = True  # False: the network sees the grid only (N×C×h×w)
    max_epochs = 100
    batch_size = 32
    patience = 5  # epochs without validation improvement before stopping
    # An "epoch" is at least this many steps, so small training sets still get a fair number of
    # updates between validation checks (one pass over 46 maps would be two steps).
    min_steps_per_epoch = 50
    standardize = True

    def build(self, info: fb.TaskInfo) -> nn.Module:
        raise NotImplementedError

    def _k(self) -> int:
        return self.info.prefix_shape[1] if self.on_tokens and self.info.prefix_shape else 0

    def _forward(self, x: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
        """Prediction in the loss's token layout N×T×C, on the targets' original scale."""
        if self.on_tokens:
            tokens = to_tokens(x, prefix if self._k() else None)
            return self.net((tokens - self.x_mean) / self.x_std) * self.y_std + self.y_mean
        out = self.net((x - self.x_mean.view(1, -1, 1, 1)) / self.x_std.view(1, -1, 1, 1))
        return to_tokens(out, None) * self.y_std + self.y_mean

    def _set_scales(self, train: fb.MapData) -> None:
        """Per-channel mean and std of the training tokens (1 and 0 without standardisation)."""
        for name, maps, prefix in (("x", train.x, train.x_prefix), ("y", train.y, train.y_prefix)):
            tokens = to_tokens(maps, prefix if self._k() else None).reshape(-1, maps.shape[1])
            mean, std = tokens.mean(0), tokens.std(0).clamp_min(1e-6)
            if not self.standardize:
                mean, std = torch.zeros_like(mean), torch.ones_like(std)
            setattr(self, f"{name}_mean", mean)
            setattr(self, f"{name}_std", std)

    def _loss(self, x, xp, y, yp) -> torch.Tensor:
        target = to_tokens(y, yp if self._k() else None)
        return recipe_loss(self._forward(x, xp), target)

    def _val_loss(self, val: fb.MapData) -> float:
        self.net.eval()
        with torch.no_grad():
            total = 0.0
            for i in range(0, len(val), 64):
                sl = slice(i, i + 64)
                pick = (lambda t: None if t is None else t[sl])
                total += float(self._loss(val.x[sl], pick(val.x_prefix), val.y[sl], pick(val.y_prefix))) * len(val.x[sl])
        return total / len(val)

    def fit(self, train: fb.MapData) -> None:
        start = time.perf_counter()
        self.info = info = train.info
        torch.manual_seed(info.seed)
        g = torch.Generator().manual_seed(info.seed)
        self.net = self.build(info)
        self._set_scales(train)
        fit_part, val = train.split(0.05, seed=info.seed)
        opt = torch.optim.AdamW(self.net.parameters(), lr=1e-4, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=2)
        best, best_state, stale = float("inf"), None, 0
        self.stopped_by = "max_epochs"
        budget = info.time_budget_s
        deadline = None if budget is None else start + 0.9 * budget  # room for the final restore
        # A step starts only if it and a validation pass still fit before the deadline, judged by
        # the slowest step and pass so far (before the first pass: one step per batch of it).
        step_s = val_s = 0.0
        self.steps = 0
        for self.epochs in range(1, self.max_epochs + 1):
            self.net.train()
            passes = -(-self.min_steps_per_epoch * self.batch_size // len(fit_part))
            order = torch.cat([torch.randperm(len(fit_part), generator=g) for _ in range(passes)])
            for idx in order.split(self.batch_size):
                reserve = val_s or step_s * -(-len(val) // self.batch_size)
                if deadline is not None and time.perf_counter() + step_s + reserve > deadline:
                    break
                t0 = time.perf_counter()
                pick = (lambda t: None if t is None else t[idx])
                loss = self._loss(fit_part.x[idx], pick(fit_part.x_prefix), fit_part.y[idx], pick(fit_part.y_prefix))
                opt.zero_grad()
                loss.backward()
                opt.step()
                self.steps += 1
                step_s = max(step_s, time.perf_counter() - t0)
            t0 = time.perf_counter()
            val_loss = self._val_loss(val)
            val_s = max(val_s, time.perf_counter() - t0)
            sched.step(val_loss)
            if val_loss < best:
                best, best_state, stale = val_loss, copy.deepcopy(self.net.state_dict()), 0
            else:
                stale += 1
            if stale >= self.patience:
                self.stopped_by = "early_stopping"
                break
            if deadline is not None and time.perf_counter() + step_s + val_s > deadline:
                self.stopped_by = "time_budget"
                break
        self.net.load_state_dict(best_state)
        self.net.eval()
        self.best_val_loss = best

    @torch.no_grad()
    def predict(self, x: torch.Tensor):
        prefix = getattr(x, "prefix", None)
        tokens = self._forward(x, prefix)
        maps, pred_prefix = from_tokens(tokens, tuple(x.shape[1:]), self._k())
        return maps if pred_prefix is None else (maps, pred_prefix)

    def describe(self) -> dict:
        return {"n_params": sum(p.numel() for p in self.net.parameters()), "epochs": self.epochs,
                "steps": self.steps, "stopped_by": self.stopped_by, "best_val_loss": self.best_val_loss}


class MLPMapper(_Trained):
    name = "mlp"

    def build(self, info: fb.TaskInfo) -> nn.Module:
        return MLP(info.shape[0])


class CNNMapper(_Trained):
    name = "cnn"
    on_tokens = False

    def build(self, info: fb.TaskInfo) -> nn.Module:
        return CNN(info.shape[0])


class TransformerMapper(_Trained):
    name = "transformer"
    positional = True

    def build(self, info: fb.TaskInfo) -> nn.Module:
        c, h, w = info.shape
        return Transformer(c, h * w + self._k(), self.positional)


class TransformerNoPosMapper(TransformerMapper):
    """FeatMap's own transformer: no positional embedding."""

    name = "transformer-nopos"
    positional = False
