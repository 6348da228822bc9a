"""`decoder`: a deterministic up-convolutional decoder (Dosovitskiy & Brox, "Inverting visual
representations with convolutional networks", 2016), trained with pixel MSE plus LPIPS.

Architecture: the feature map, standardised per channel (training statistics), is resized
(bilinear) to a base grid of R / 2^k pixels, the largest k with R / 2^k ≥ the map's own grid (so
a map is never shrunk by more than rounding: 7×7 → 8×8 for R = 64); Conv3×3 → LReLU → Conv3×3
→ LReLU at `width` channels; then k up-stages (ConvTranspose 4×4 stride 2 → LReLU → Conv3×3 →
LReLU), halving the channels each time (at least 32); Conv3×3 to RGB and a sigmoid. LeakyReLU
slope 0.2, as in the paper.

Loss: MSE on [0, 1] pixels + `lpips_weight` · LPIPS v0.1 (AlexNet, featbench's pinned weights)
on [-1, 1]. Note that LPIPS (alex) is also the headline metric of the invert track: the decoder
is trained towards it, as the design asks; the diffusion model is not.

Cost: width 128, batch 16, 64 px: 0.53 s/step on one CPU thread shared with another job (width 256
at batch 32 took 1.7 s/step), so the default 3000 steps take about 25 minutes per layer.

Training is a resumable loop (`featbench.interfaces.checkpoints.run_training`): Adam, batches drawn with
replacement from a generator seeded by (task seed, step), checkpoints in
``<cache>/inverters/<suite>/<backbone>/<layer>/decoder/``. ``featbench train-inverter --preset
decoder`` trains ahead of a run, and `fit` uses that checkpoint as it is (without one, it trains
within the task's time budget; `featbench.interfaces.inverter.CheckpointedInverter`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from featbench.interfaces import (CheckpointedInverter, InvertData, TrainingReport, checkpoint_dir, run_training,
                                  step_generator)
from featbench.scoring.metrics import lpips_model


def up_stages(resolution: int, grid: int) -> int:
    """k: the number of ×2 up-stages from a base grid of resolution / 2^k ≥ `grid` pixels."""
    k = max(0, int(math.floor(math.log2(resolution / grid)))) if resolution >= grid else 0
    while k and resolution % (2 ** k):
        k -= 1
    return k


class ChannelStandardizer(nn.Module):
    """(x − mean) / std per channel, with statistics from the training maps (saved as buffers)."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        self.mean.copy_(x.mean(dim=(0, 2, 3), keepdim=True))
        self.std.copy_(x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class UpConvDecoder(nn.Module):
    def __init__(self, in_channels: int, grid: int, resolution: int, width: int = 256, min_width: int = 32):
        super().__init__()
        self.norm = ChannelStandardizer(in_channels)
        self.k = up_stages(resolution, grid)
        self.base = resolution // 2 ** self.k
        act = lambda: nn.LeakyReLU(0.2)  # noqa: E731
        self.inp = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), act(),
                                 nn.Conv2d(width, width, 3, padding=1), act())
        stages, ch = [], width
        for _ in range(self.k):
            out = max(min_width, ch // 2)
            stages += [nn.ConvTranspose2d(ch, out, 4, stride=2, padding=1), act(),
                       nn.Conv2d(out, out, 3, padding=1), act()]
            ch = out
        self.up = nn.Sequential(*stages)
        self.out = nn.Conv2d(ch, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N×C×h×w maps → N×3×R×R images in (0, 1)."""
        x = self.norm(x)
        if x.shape[-2:] != (self.base, self.base):
            x = F.interpolate(x, size=(self.base, self.base), mode="bilinear", align_corners=False)
        return torch.sigmoid(self.out(self.up(self.inp(x))))


@dataclass
class DecoderConfig:
    width: int = 128
    batch_size: int = 16
    lr: float = 2e-4
    warmup_steps: int = 100
    max_steps: int = 3000
    lpips_weight: float = 1.0
    checkpoint_every: int = 250


def lpips_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean LPIPS v0.1 (alex) of [0, 1] images, differentiable in `pred`."""
    return lpips_model("alex", pred.device)(pred * 2 - 1, target * 2 - 1).mean()


class Decoder(CheckpointedInverter):
    name, version = "decoder", "1"
    resolution = None  # the suite's image size
    config = DecoderConfig()

    def __init__(self, **overrides):
        self.cfg = DecoderConfig(**{**asdict(self.config), **overrides})
        self.net: UpConvDecoder | None = None
        self.report: TrainingReport | None = None

    def build(self, train: InvertData) -> UpConvDecoder:
        c, h, _ = train.info.shape
        return UpConvDecoder(c, h, train.resolution, self.cfg.width)

    def identity(self, train: InvertData) -> dict:
        i = train.info
        return {"preset": self.name, "version": self.version, "config": asdict(self.cfg), "task": i.task_id,
                "suite": i.suite, "data_sha256": i.data_sha256, "resolution": train.resolution, "seed": i.seed}

    def train(self, train: InvertData, *, directory: str | Path | None = None, max_steps: int | None = None,
              max_seconds: float | None = None, progress: bool = False) -> TrainingReport:
        info, cfg = train.info, self.cfg
        directory = directory or checkpoint_dir(info.suite, info.backbone, info.layer, self.name)
        with torch.random.fork_rng():
            torch.manual_seed(info.seed)
            net = self.build(train)
        net.norm.fit(train.x)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)

        def step_fn(step: int) -> float:
            g = step_generator(info.seed, step, "batch")
            idx = torch.randint(len(train), (cfg.batch_size,), generator=g)
            x, y = train.x[idx], train.images[idx]
            for group in opt.param_groups:
                group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
            pred = net(x)
            loss = F.mse_loss(pred, y)
            if cfg.lpips_weight:
                loss = loss + cfg.lpips_weight * lpips_loss(pred, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.item()

        net.train()
        self.report = run_training(directory=directory, identity=self.identity(train), module=net, optimizer=opt,
                                   step_fn=step_fn, max_steps=max_steps or cfg.max_steps, max_seconds=max_seconds,
                                   every=cfg.checkpoint_every, progress=progress, desc=f"{self.name} {info.task_id}")
        self.net = net.eval().requires_grad_(False)
        return self.report

    @torch.no_grad()
    def invert(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def describe(self) -> dict:
        out = {"n_params": sum(p.numel() for p in self.net.parameters())} if self.net is not None else {}
        return out | self.training_notes(self.cfg.max_steps)


__all__ = ["Decoder", "DecoderConfig", "UpConvDecoder"]
