"""How the gradient-trained reference mappers are trained: two recipes, shared by FeatMap's
architectures in `baselines.mlp`, `baselines.cnn` and `baselines.transformer`.

Each architecture module builds its network and declares its budget; the recipe is its base
class. A model's identity in results covers this module too (`featbench.core.plugins.source_sha256`
hashes the modules a model's module imports), so an edit here is a new version of every model.

**featbench's recipe** (`FeatbenchRecipe`: ``mlp``, ``cnn``, ``transformer``,
``transformer-nopos``): trained to what the architecture can do within a declared CPU budget.

- Inputs and targets standardised per channel (training statistics); loss: MSE on the
  standardised targets (what r2 measures, channel by channel).
- The network is a residual over the closed-form ridge map of `baselines.linear.Linear` (fitted
  by that class, on the same training data): prediction = linear(x) + net(x), with the net's last
  layer zero-initialised (the CNN's last BN: γ = β = 0), so training starts exactly at the linear
  prediction, and validation (5 % of the training images, `MapData.split`) keeps the best state
  seen, the linear start included: early stopping can only keep what improves.
- The per-position MLP is trained on shuffled positions (rows of all maps, batch 4096 rows),
  not on whole maps: one step sees positions of many images.
- AdamW (lr 1e-3, weight decay 1e-4; the transformer's own rate: `baselines.transformer`),
  linear warm-up over 5 % of the schedule, cosine decay to 0.
- The schedule runs on progress, the larger of the share of ``max_steps`` done and the share of
  the budget's training time spent (``budget_use`` of the budget, less the validation checks), so
  it ends at ``max_steps`` or when the budget is used, whichever comes first, and a machine whose
  load changes during training still fills its budget (version 3 sized a step count once from
  the first steps' times: a loaded start left most of the budget unused). Without a budget it is
  a plain step schedule, deterministic under the seed. The transformer's batch is chosen from the
  number of tokens per map (``tokens_per_batch``) and halved where too few steps of it fit, so it
  never fails a task for size (efficientnet_lite0 blocks.2: 784 positions, 1 map a batch).
- ``describe()``: ``stopped_by`` is "converged" (the full schedule ran), "early_stopping"
  (validation stopped improving for ``patience`` checks) or "time_budget" (the budget ended
  the schedule before ``max_steps``; with ``steps`` 0 where the linear start left no room for a first step, its
  cost estimated from the validation pass, as on a loaded machine with the embedded default's
  5 s: then the mapper is that start, not a failed task);
  ``steps``, ``epochs`` (passes over the training rows or maps), ``best_step`` (0: the linear
  start was never beaten on validation) and the batch size.

Options measured (one training step, forward + backward + AdamW, 1 thread, this machine's AMD
EPYC with avx512_bf16, best of 3):

- bfloat16 autocast: transformer, 5 maps of 196 tokens (efficientnet_lite0 blocks.4) 1.09 s →
  0.80 s; MLP, 4096 rows of 112 channels 0.089 s → 0.037 s. Taken: it runs the network only;
  the linear map the network is a residual over, the loss, validation and prediction stay
  float32, so the start is still exactly linear and bf16 rounding touches only the correction.
- Batch: the MLP at 4096 rows, the CNN at 16 maps, the transformer at ~1024 tokens (5 maps on
  blocks.4, 1 on blocks.2, 20 on blocks.6): at ~4096 tokens a step on blocks.2 (5 maps of 784
  tokens) would take several seconds (estimated from blocks.4's measured step and the FLOPs, not
  timed), too few steps for a budget of minutes. Batch sizes were not swept further.
- torch.compile and channels_last: not measured in this round (left as is: off).
- The transformer's own choices (rate, dropout, positional start, schedule): `baselines.transformer`.

What the recipe reaches, per layer and category, on featbench-v1 and featbench-v2: the README's
findings, from the committed result files.

**FeatMap's recipe** (`FeatMapRecipe`: ``mlp-featmap``, ``cnn-featmap``, ``transformer-featmap``): loss
0.3·MSE + 0.7·(1 − median over positions of the cosine), raw (unstandardised) features, no
residual, AdamW lr 1e-4 and weight decay 1e-4, batch 32 maps with 2 gradient-accumulation steps,
ReduceLROnPlateau (patience 8), early stopping (patience 6, min_delta 0.001) on the 5 %
validation split, up to 100 epochs, no positional embedding. They get the same budgets as
featbench's, so that the two trainings are compared under the same CPU time.
"""

from __future__ import annotations

import copy
import math
import time

import torch
from torch import nn

import featbench as fb
from baselines.linear import Linear

LOSS_MSE_WEIGHT = 0.3
HIDDEN = 512


def recipe_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """FeatMap's loss: 0.3·MSE + 0.7·(1 − median cosine), tokens as N×T×C."""
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


def _pick(t: torch.Tensor | None, idx) -> torch.Tensor | None:
    return None if t is None else t[idx]


class TrainedMapper(fb.Mapper):
    """What both recipes share: the architecture, tokens or grid, and prediction."""

    on_tokens = True  # False: the network sees the grid only (N×C×h×w)
    per_position = False  # True: the network acts on each position alone (featbench's recipe trains
    # it on shuffled positions, rows of all maps)
    positional = False
    time_budget_s: float | None = None  # the CPU seconds per task fit this baseline declares it needs

    def build(self, info: fb.TaskInfo) -> nn.Module:
        raise NotImplementedError

    def _k(self) -> int:
        return self.info.prefix_shape[1] if self.on_tokens and self.info.prefix_shape else 0

    def _start(self, train: fb.MapData) -> torch.Generator:
        """A fit's start, seeded from the task: the network built; returns the batch order's generator."""
        self.info = train.info
        torch.manual_seed(self.info.seed)
        self.net = self.build(self.info)
        return torch.Generator().manual_seed(self.info.seed)

    def describe(self) -> dict:
        out = {"n_params": sum(p.numel() for p in self.net.parameters()), "epochs": self.epochs,
               "steps": self.steps, "stopped_by": self.stopped_by, "best_val_loss": self.best_val_loss}
        return out | getattr(self, "extra", {})


class FeatbenchRecipe(TrainedMapper):
    """featbench's recipe: standardised residual over the closed-form linear map, AdamW 1e-3,
    warm-up + cosine sized to the budget, early stopping keeping the best validation state."""

    version = "5"  # 3: residual over linear, standardised MSE, warm-up + cosine, budget-sized schedule, bf16;
    # 4: the schedule runs on progress (steps or time, whichever is further), not a step count sized once;
    # 5: the same training, its identity now covering this module and baselines.linear (split out of
    # baselines.neural)
    lr = 1e-3
    weight_decay = 1e-4
    warmup = 0.05  # fraction of the schedule's progress
    max_steps = 2000  # the full schedule ("converged" when it runs to the end) ...
    max_epochs = 100  # ... or this many passes over the training rows / maps, if fewer
    n_checks = 20  # validation checks over the schedule
    patience = 5  # checks without improvement before stopping ...
    min_fraction = 0.5  # ... once this much of the schedule has run (early on, the warm-up's high
    # learning rate can worsen validation before it improves it)
    probe_steps = 10  # timed steps before a sequence model may halve its batch (the median of 2..10)
    budget_use = 0.8  # fraction of the budget the schedule fills
    batch_rows = 4096  # per-position models: rows (positions) per step
    batch_maps = 16  # grid / sequence models: maps per step
    tokens_per_batch: int | None = None  # sequence models: batch_maps from the tokens per map
    bf16 = True  # bfloat16 autocast for the training steps (validation and prediction: float32)
    dropout: float | None = None  # the network's dropout while training (None: the architecture's)
    pos_init = "random"  # the positional embedding's start: "random" (N(0, 0.02²)) or "sincos" (2-D)
    pos_lr = 1.0  # the positional embedding's learning rate, as a multiple of the others'

    # -- the residual over the linear map, in standardised space ------------------------------
    def _fit_linear(self, train: fb.MapData) -> None:
        lin = Linear()
        lin.fit(train)
        self.ridge = lin.ridge
        W, b = lin.W.double(), lin.b.double()
        sx, mx, sy, my = (t.double() for t in (self.x_std, self.x_mean, self.y_std, self.y_mean))
        self.W_s = (W * sx[None, :] / sy[:, None]).float()
        self.b_s = ((W @ mx + b - my) / sy).float()

    def _linear_s(self, z: torch.Tensor) -> torch.Tensor:
        """The linear map on standardised input, N×…×C tokens or N×C×h×w maps."""
        if self.on_tokens:
            return nn.functional.linear(z, self.W_s, self.b_s)
        return torch.einsum("dc,nchw->ndhw", self.W_s, z) + self.b_s.view(1, -1, 1, 1)

    def _net_s(self, z: torch.Tensor) -> torch.Tensor:
        return self._linear_s(z) + self.net(z)

    def _standardise(self, maps: torch.Tensor, prefix: torch.Tensor | None, which: str) -> torch.Tensor:
        mean, std = getattr(self, f"{which}_mean"), getattr(self, f"{which}_std")
        if self.on_tokens:
            return (to_tokens(maps, prefix if self._k() else None) - mean) / std
        return (maps - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)

    def _set_scales(self, train: fb.MapData) -> None:
        for name, maps, prefix in (("x", train.x, train.x_prefix), ("y", train.y, train.y_prefix)):
            tokens = to_tokens(maps, prefix if self._k() else None).reshape(-1, maps.shape[1]).double()
            setattr(self, f"{name}_mean", tokens.mean(0).float())
            setattr(self, f"{name}_std", tokens.std(0).clamp_min(1e-6).float())

    # -- training -------------------------------------------------------------------------------
    def _adapt(self, info: fb.TaskInfo) -> None:
        """The recipe's changes to the freshly built network: its dropout (``dropout``; None: the
        architecture's) and, for the transformer, the positional embedding's start (``pos_init``)."""
        if self.dropout is not None and hasattr(self.net, "set_dropout"):
            self.net.set_dropout(self.dropout)
        if self.pos_init == "sincos" and getattr(self.net, "pos", None) is not None:
            c, h, w = info.shape
            self.net.init_pos_sincos(h, w, self._k())

    def _param_groups(self) -> list[dict]:
        """AdamW's groups: the positional embedding at ``pos_lr`` × the schedule's rate (if it has one), the rest at 1×."""
        pos = getattr(self.net, "pos", None)
        rest = [p for p in self.net.parameters() if p is not pos]
        groups = [{"params": rest, "lr_scale": 1.0}]
        if pos is not None:
            groups.append({"params": [pos], "lr_scale": self.pos_lr})
        return groups

    def _batch_size(self, n: int, per_item: int) -> int:
        if not self.on_tokens or self.tokens_per_batch is None:
            if self.per_position:
                return min(self.batch_rows, n)
            return min(self.batch_maps, n)
        return max(1, min(self.batch_maps, self.tokens_per_batch // per_item, n))

    def _loss(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """MSE of a standardised batch (rows for per-position models, else maps or sequences).
        The network runs under bfloat16 autocast (``bf16``); the linear map it is a residual
        over, the loss and the weights stay float32."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            residual = self.net(z)
        return torch.mean((self._linear_s(z) + residual.float() - target) ** 2)

    def _val_loss(self, xv: torch.Tensor, yv: torch.Tensor) -> float:
        self.net.eval()
        total, n = 0.0, 0
        chunk = 65536 if self.per_position else max(1, self.batch)
        with torch.no_grad():
            for i in range(0, len(xv), chunk):
                d = self._net_s(xv[i:i + chunk]) - yv[i:i + chunk]
                total += float((d ** 2).sum())
                n += d.numel()
        self.net.train()
        return total / n

    def fit(self, train: fb.MapData) -> None:
        start = time.perf_counter()
        g = self._start(train)
        info = self.info
        # Zero-initialised last layer (the CNN's last BN: γ = β = 0): the residual starts at linear.
        nn.init.zeros_(self.net.last.weight)
        nn.init.zeros_(self.net.last.bias)
        self._adapt(info)
        self._set_scales(train)
        self._fit_linear(train)
        fit_part, val = train.split(0.05, seed=info.seed)
        xs = self._standardise(fit_part.x, fit_part.x_prefix, "x")
        ys = self._standardise(fit_part.y, fit_part.y_prefix, "y")
        xv = self._standardise(val.x, val.x_prefix, "x")
        yv = self._standardise(val.y, val.y_prefix, "y")
        per_item = xs.shape[1] if self.on_tokens else 1
        if self.per_position:  # shuffled positions: rows of all maps
            xs, ys = xs.reshape(-1, xs.shape[-1]), ys.reshape(-1, ys.shape[-1])
            xv, yv = xv.reshape(-1, xv.shape[-1]), yv.reshape(-1, yv.shape[-1])
        n = len(xs)
        self.batch = self._batch_size(n, per_item)
        opt = torch.optim.AdamW(self._param_groups(), lr=self.lr, weight_decay=self.weight_decay)
        budget = info.time_budget_s
        deadline = None if budget is None else start + self.budget_use * budget

        def out_of_time(cost_s: float) -> bool:  # would `cost_s` more seconds end past the budget's slack?
            return deadline is not None and time.perf_counter() + cost_s > deadline + 0.1 * budget

        self.steps, stale, self.stopped_by, self.best_step, self.best_val_loss = 0, 0, "converged", 0, None
        if out_of_time(0.0):
            # The linear start took the budget (a tiny budget, a loaded machine): keep it, since the
            # zero last layer makes the network exactly that, rather than overrun and fail the task.
            self._stop_training(n, "time_budget")
            return
        t0 = time.perf_counter()
        best = self._val_loss(xv, yv)  # the linear start
        val_s = time.perf_counter() - t0
        # Before the first step is timed, estimate it from the validation pass: forward and
        # backward of a batch, about three forwards of as many items. No room for it: stop here.
        if out_of_time(3 * val_s * self.batch / len(xv) + val_s):
            self.best_val_loss = best
            self._stop_training(n, "time_budget")
            return
        best_state = copy.deepcopy(self.net.state_dict())
        order = torch.empty(0, dtype=torch.long)
        total = min(self.max_steps, math.ceil(self.max_epochs * n / self.batch))  # small tasks: fewer steps
        # The schedule runs on progress: the larger of the share of steps and the share of the training
        # time done. Sized once from the first steps' times (version 3), a start on a loaded machine cut the
        # schedule short and left most of the budget unused (42 of 1500 steps in 135 of 300 s); on
        # progress, training fills the budget whatever the load does, and never plans past it.
        train_start = time.perf_counter()
        train_s = None if deadline is None else max(deadline - train_start - self.n_checks * val_s, 1e-6)

        def progress() -> float:
            p = self.steps / total if total else 1.0
            if train_s is not None:
                p = max(p, (time.perf_counter() - train_start) / train_s)
            return min(p, 1.0)

        step_s, times, p, next_check = 0.0, [], progress(), 1
        while p < 1.0:
            if len(order) < self.batch:
                order = torch.cat([order, torch.randperm(n, generator=g)])
            idx, order = order[:self.batch], order[self.batch:]
            t1 = time.perf_counter()
            lr = self.lr * (max(p, 1 / total) / self.warmup if p < self.warmup else
                            0.5 * (1 + math.cos(math.pi * (p - self.warmup) / (1 - self.warmup))))
            for group in opt.param_groups:
                group["lr"] = lr * group["lr_scale"]
            loss = self._loss(xs[idx], ys[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.steps += 1
            dt = time.perf_counter() - t1
            times.append(dt)
            # The median step after the first (which also warms up the allocator), with a margin.
            step_s = 1.1 * (sorted(times[1:])[len(times[1:]) // 2] if len(times) > 1 else dt)
            if self.steps == self.probe_steps and train_s is not None and self.batch > 1 and not self.per_position:
                fits = (train_s - (time.perf_counter() - train_start)) / step_s
                if fits < self.probe_steps:  # too few steps of this size fit: a smaller step, more of them
                    self.batch = max(1, self.batch // 2)
            p = progress()
            if p >= next_check / self.n_checks:
                next_check = math.floor(p * self.n_checks) + 1
                v = self._val_loss(xv, yv)
                if v < best:
                    best, best_state, self.best_step, stale = v, copy.deepcopy(self.net.state_dict()), self.steps, 0
                else:
                    stale += 1
                if stale >= self.patience and self.min_fraction <= p < 1.0:
                    self.stopped_by = "early_stopping"
                    break
            if p < 1.0 and out_of_time(step_s + val_s):
                p = 1.0
        if self.stopped_by != "early_stopping" and self.steps < total:
            self.stopped_by = "time_budget"
        self.net.load_state_dict(best_state)
        self.best_val_loss = best
        self._stop_training(n, self.stopped_by)

    def _stop_training(self, n: int, stopped_by: str) -> None:
        self.net.eval()
        self.stopped_by = stopped_by
        self.epochs = round(self.steps * self.batch / n, 2)
        self.extra = {"best_step": self.best_step, "batch": self.batch, "ridge": self.ridge}

    @torch.no_grad()
    def predict(self, x: torch.Tensor):
        prefix = getattr(x, "prefix", None)
        k = self._k()
        z = self._standardise(x, prefix, "x")
        if self.on_tokens:
            tokens = self._net_s(z) * self.y_std + self.y_mean
            maps, pred_prefix = from_tokens(tokens, tuple(x.shape[1:]), k)
            return maps if pred_prefix is None else (maps, pred_prefix)
        return self._net_s(z) * self.y_std.view(1, -1, 1, 1) + self.y_mean.view(1, -1, 1, 1)


class FeatMapRecipe(TrainedMapper):
    """FeatMap's own training, as the paper gives it (see the module docstring)."""

    version = "2"  # 2: the same training, its identity now covering this module (split out of baselines.neural);
    # transformer-featmap gets the transformer's new 720 s budget
    lr = 1e-4
    weight_decay = 1e-4
    batch_size = 32
    accumulation = 2
    plateau_patience = 8
    patience = 6  # early stopping, in epochs
    min_delta = 1e-3
    max_epochs = 100

    def _forward(self, x: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
        """Prediction in the loss's token layout N×T×C (raw features, no standardisation)."""
        if self.on_tokens:
            return self.net(to_tokens(x, prefix if self._k() else None))
        return to_tokens(self.net(x), None)

    def _loss(self, x, xp, y, yp) -> torch.Tensor:
        return recipe_loss(self._forward(x, xp), to_tokens(y, yp if self._k() else None))

    def _val_loss(self, val: fb.MapData) -> float:
        self.net.eval()
        total = 0.0
        with torch.no_grad():
            for i in range(0, len(val), self.batch_size):
                sl = slice(i, i + self.batch_size)
                total += float(self._loss(val.x[sl], _pick(val.x_prefix, sl), val.y[sl], _pick(val.y_prefix, sl))) \
                    * len(val.x[sl])
        return total / len(val)

    def fit(self, train: fb.MapData) -> None:
        start = time.perf_counter()
        g = self._start(train)
        info = self.info
        fit_part, val = train.split(0.05, seed=info.seed)
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=self.plateau_patience)
        best, best_state, stale = float("inf"), None, 0
        self.stopped_by, self.steps, self.epochs = "max_epochs", 0, 0
        budget = info.time_budget_s
        deadline = None if budget is None else start + 0.85 * budget
        epoch_s = 0.0
        for epoch in range(1, self.max_epochs + 1):
            if deadline is not None and best_state is not None and time.perf_counter() + epoch_s > deadline:
                self.stopped_by = "time_budget"
                break
            t0 = time.perf_counter()
            self.net.train()
            opt.zero_grad()
            batches = torch.randperm(len(fit_part), generator=g).split(self.batch_size)
            for i, idx in enumerate(batches):
                loss = self._loss(fit_part.x[idx], _pick(fit_part.x_prefix, idx), fit_part.y[idx],
                                  _pick(fit_part.y_prefix, idx)) / self.accumulation
                loss.backward()
                if (i + 1) % self.accumulation == 0 or i + 1 == len(batches):
                    opt.step()
                    opt.zero_grad()
                    self.steps += 1
                if deadline is not None and best_state is not None and time.perf_counter() > deadline:
                    break  # the budget ends the epoch early; its validation still counts
            self.epochs = epoch
            val_loss = self._val_loss(val)
            sched.step(val_loss)
            epoch_s = max(epoch_s, time.perf_counter() - t0)
            if val_loss < best - self.min_delta:
                best, best_state, stale = val_loss, copy.deepcopy(self.net.state_dict()), 0
            else:
                if best_state is None or val_loss < best:
                    best, best_state = val_loss, copy.deepcopy(self.net.state_dict())
                stale += 1
            if stale >= self.patience:
                self.stopped_by = "early_stopping"
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
