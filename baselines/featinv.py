"""`featinv`: a conditional diffusion model that inverts feature maps, in FeatInv's way (Neukirch,
Vielhaben, Strodthoff), on diffusers components. Two presets share its parts:

**The conditioning block** (`FeatInvConditioning`, FeatInv's): the feature map (standardised per
channel with training statistics) is upsampled (bilinear) to the denoiser's grid, then
Conv3×3 → SiLU → Conv3×3 → SiLU → Conv3×3, the last one zero-initialised, so that an untrained
block adds exactly nothing and training starts from the unconditional denoiser. Training drops
the condition for 15 % of the examples (`p_uncond`), which trains the unconditional model that
classifier-free guidance needs; sampling is DDIM (η = 0) with guidance scale w, steps and w pinned
per suite (``invert.sampler`` in the suite file, else the preset's defaults). All randomness is
seeded: training draws from (task seed, step), sampling from (task seed, call number).

**featinv-sd** (`FeatInvSD`, FeatInv's own design, for a GPU): a frozen pretrained Stable
Diffusion 1.x (default: miniSD, 256 px, ``lambdalabs/miniSD-diffusers``) with a ControlNet
(diffusers `ControlNetModel.from_unet`) whose conditioning embedding is replaced by the block,
so the block's output is added to the ControlNet's input after its ``conv_in``, at the latent
grid (32×32 for 256 px). Trained: the ControlNet and the block (ε-prediction, the UNet's own
objective, empty prompt). Dropped condition = no ControlNet residuals. Needs the hub (and
``transformers`` for the text encoder); featbench's tests run its code on tiny random components.

**featinv-tiny** (`FeatInvTiny`, trained from scratch by featbench on a CPU, 64 px). No
pretrained diffusion weights exist offline, so everything is learnt from the suite's training
images (800 for featbench-v1) in about an hour of CPU per (backbone, layer). A first naive
version (pixel-space ε-prediction on a 4.8 M-parameter UNet, block output concatenated) still
ignored the condition after 20 minutes; the changes that make the condition learnable in time:

- *a residual over a decoder*: an up-convolutional decoder D (as the ``decoder`` baseline, MSE
  only) is trained jointly, and the denoiser predicts the clean image as x̂₀ = b + f_θ(z_t, t, b,
  block(features)) with base b = D(features) (gradient stopped). From the first step the
  conditional model is at least as good as the decoder; the diffusion model only has to learn
  the detail a regression blurs away. With the condition dropped the base is the mean training
  image (and the block's output is masked), so guidance compares x̂₀ of one state, one space:
  x̂₀ = x̂₀ᵤ + w (x̂₀꜀ − x̂₀ᵤ);
- *x₀-prediction* with a truncated v-weighting: loss = min(1 + SNR, 1 + γ)·‖x̂₀ − x₀‖², γ = 5
  (plain x₀-loss at high noise, where the condition decides the layout; up to 6× at low noise);
- *a smaller denoiser on a coarser grid*: the 64×64×3 image is folded into a 16×16×48 grid
  (pixel unshuffle by 4; the base folded alike and concatenated), a diffusers `UNet2DModel` with
  channels (64, 128, 128), one ResNet block per level and attention only at 4×4; the block's
  (zero-initialised) output is added after ``conv_in``. Measured on 1 contended CPU thread,
  batch 16, fwd+bwd: 3.3 s for channels (64, 128, 128) on the 32×32 grid (patch 2), 1.1 s for
  (32, 64, 128) at patch 2, 0.57 s at patch 4. Channels-last was slower (GroupNorm), so off;
- a cosine noise schedule with trailing DDIM timesteps (sampling starts at pure noise), an EMA
  of the weights (0.999) for sampling, gradient clipping at 1;
- *more training pairs* (version 2): version 1, trained on the 800 training images alone,
  overfitted them: on efficientnet_lite0 blocks.6 after 3712 steps its LPIPS gap (to the true
  image vs a shuffled one) was 0.188 on 48 training images and 0.096 on 48 test images. The
  suite's map track already holds the training images' maps under its manipulations, so half of
  each batch is drawn from seven of them (`InvertData.with_manipulation`: flips, rotations, hue,
  grayscale; not noise or masks, whose images carry artefacts a reconstruction should not learn).
  In the same 68 minutes, on all 200 test images: lite0 gap 0.098 → 0.114, dinov2 blocks.11
  0.227 → 0.247 (the README has the whole comparison);
- *a sharper base* (version 3): on lite0 blocks.6 version 2 stayed below the 0.15 gap even at
  8000 steps (0.138), and a probe of 64 test images showed why: its MSE-trained base alone had a
  gap of 0.070, the ``decoder`` baseline (MSE + LPIPS) 0.138 on all 200, and guidance did not make
  up for it (w = 1 / 2 / 3 / 5: gap 0.100 / 0.121 / 0.110 / 0.070). So the base decoder is
  trained with LPIPS too (`decoder_lpips`), as the ``decoder`` baseline is, and the conditioning
  block is twice as wide (`cond_hidden` 64) for the 320-channel lite0 map;
- *feature guidance* (version 4, sampling only: the same weights): version 3's lite0 samples
  followed layout and colour, but the classifier read no class in them (top-1 agreement 0.000,
  feature cosine 0.044). From 75 % of the DDIM steps on, x̂₀ takes a step of RMS 0.05 down the
  gradient of the cosine distance between the backbone's map of x̂₀ and the given one
  (`feature_guidance`, `feature_guidance_from`), the backbone being the task's own. A probe of
  64 lite0 blocks.6 test images: unguided LPIPS 0.414, gap 0.133, top-1 agreement 0.000,
  feature cosine 0.051; guided (0.05 from 75 %) 0.412 / 0.135 / 0.359 / 0.407; from 50 % the
  same top-1 at twice the backbone passes; a step of 0.1 worse on every score (32 images); 4
  steps per DDIM step from 90 % top-1 0.703 (above the true 64-px image's 0.620: the samples
  then match the classifier's own features more than a picture does), LPIPS 0.426. On lite0 the
  suite's classifier is the guiding backbone itself, so its top-1 agreement there is partly the
  guidance's own target; on dinov2 it is an independent check.

The tiny preset's checkpoints (safetensors with a sha256 record, resumable) live in
``<cache>/inverters/<suite>/<backbone>/<layer>/featinv-tiny/``; ``featbench train-inverter``
trains them ahead of a run, and `fit` uses them as they are (without one, it trains within the
task's time budget; `featbench.interfaces.inverter.CheckpointedInverter`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from baselines.decoder import ChannelStandardizer, UpConvDecoder, lpips_loss
from featbench.data import seed_for
from featbench.interfaces import (CheckpointedInverter, InvertData, InvertInfo, TrainingReport, checkpoint_dir,
                                  resize_images, run_training, step_generator)
from featbench.zoo import Backbone, load_backbone

P_UNCOND = 0.15


class FeatInvConditioning(nn.Module):
    """FeatInv's conditioning block: upsample to the grid, Conv3×3 → SiLU → Conv3×3 → SiLU →
    zero-initialised Conv3×3 (so an untrained block outputs exactly zero)."""

    def __init__(self, in_channels: int, out_channels: int, grid: int, hidden: int = 64):
        super().__init__()
        self.grid = int(grid)
        self.norm = ChannelStandardizer(in_channels)
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.conv_out = nn.Conv2d(hidden, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.norm(feats.float())
        if x.shape[-2:] != (self.grid, self.grid):
            x = F.interpolate(x, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
        x = F.silu(self.conv1(x))
        x = F.silu(self.conv2(x))
        return self.conv_out(x)


def _sampler(info: InvertInfo, steps: int, guidance: float) -> tuple[int, float]:
    """(steps, guidance): the suite's pinned ``invert.sampler`` settings, else the preset's."""
    s = (info.settings or {}).get("sampler", {})
    return int(s.get("steps", steps)), float(s.get("guidance", guidance))


def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1 - decay)
        for be, bm in zip(ema.buffers(), model.buffers()):
            be.copy_(bm)


# =============================================================================================
# featinv-tiny


class _AddToConvIn(nn.Module):
    """The UNet's conv_in plus an additive, spatial condition (set for the duration of a call)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv
        self.extra: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if self.extra is None else y + self.extra


class _FeatInv(CheckpointedInverter):
    """What both presets share: the pinned sampler, and
    seeded inversion (each `invert` call draws from its own seed, so a run is reproducible)."""

    cfg: Any
    info: InvertInfo | None
    report: TrainingReport | None
    _calls: int

    def _trained(self) -> nn.Module | None:
        """The trained part, whose parameters the model's count reports."""
        raise NotImplementedError

    def _at_resolution(self, images: torch.Tensor) -> torch.Tensor:
        return images

    @property
    def sampler(self) -> tuple[int, float]:
        return _sampler(self.info, self.cfg.steps, self.cfg.guidance)

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed_for(self.info.seed, "invert", self._calls))
        self._calls += 1
        return self._at_resolution(self.sample(x.float(), len(x), g))

    def reset_sampler(self) -> None:
        self._calls = 0

    def invert_unconditional(self, n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed_for(self.info.seed, "unconditional"))
        return self._at_resolution(self.sample(None, n, g))

    def describe(self) -> dict:
        out: dict[str, Any] = {}
        if self._trained() is not None:
            out["n_params"] = sum(p.numel() for p in self._trained().parameters())
            steps, w = self.sampler
            out["sampler"] = f"DDIM eta=0, {steps} steps, guidance {w}"
        return out | self.training_notes(self.cfg.max_steps)


@dataclass
class FeatInvTinyConfig:
    resolution: int = 64
    patch: int = 4  # pixel-unshuffle factor: the UNet works on a (resolution / patch)² grid
    channels: tuple[int, ...] = (64, 128, 128)
    attention: bool = True  # self-attention at the coarsest level
    cond_hidden: int = 64
    decoder_width: int = 128
    decoder_lpips: float = 1.0  # weight of LPIPS (alex) beside MSE in the base decoder's loss
    batch_size: int = 16
    lr: float = 2e-4
    warmup_steps: int = 200
    max_steps: int = 8000
    p_uncond: float = P_UNCOND
    snr_gamma: float = 5.0
    ema_decay: float = 0.999
    train_timesteps: int = 1000
    checkpoint_every: int = 250
    steps: int = 50  # DDIM steps at inference (the suite's invert.sampler overrides)
    guidance: float = 2.0  # classifier-free guidance scale (the suite's invert.sampler overrides)
    channels_last: bool = False
    # Extra training pairs: the training images under these of the suite's manipulations (those
    # the suite lacks are skipped), drawn for `augment_p` of each batch.
    augment: tuple[str, ...] = ("hflip", "vflip", "rot90", "rot180", "rot270", "hue60", "grayscale")
    augment_p: float = 0.5
    # Feature guidance at sampling (version 4): from this fraction of the DDIM steps on, x̂₀ takes
    # one step of this RMS size (in [-1, 1] pixel units) down the gradient of its backbone map's
    # cosine distance to the given map. 0: off.
    feature_guidance: float = 0.05
    feature_guidance_from: float = 0.75


# Settings that steer sampling only: kept out of the checkpoint identity, so that trained weights
# serve a new sampler (``steps`` and ``guidance`` predate this and stay in it).
SAMPLING_ONLY = ("feature_guidance", "feature_guidance_from")


class TinyDenoiser(nn.Module):
    """x̂₀-residual denoiser: a UNet2DModel on the pixel-unshuffled [z_t, base] with the
    conditioning block's output added after its conv_in."""

    def __init__(self, feat_channels: int, cfg: FeatInvTinyConfig):
        super().__init__()
        from diffusers import UNet2DModel

        p, n = cfg.patch, len(cfg.channels)
        self.patch = p
        grid = cfg.resolution // p
        attn_down, attn_up = ("AttnDownBlock2D", "AttnUpBlock2D") if cfg.attention else ("DownBlock2D", "UpBlock2D")
        self.unet = UNet2DModel(
            sample_size=grid, in_channels=6 * p * p, out_channels=3 * p * p, block_out_channels=tuple(cfg.channels),
            layers_per_block=1, down_block_types=("DownBlock2D",) * (n - 1) + (attn_down,),
            up_block_types=(attn_up,) + ("UpBlock2D",) * (n - 1), norm_num_groups=math.gcd(32, *cfg.channels),
            attention_head_dim=min(32, cfg.channels[-1]), add_attention=cfg.attention)
        self.unet.conv_in = _AddToConvIn(self.unet.conv_in)
        self.cond = FeatInvConditioning(feat_channels, cfg.channels[0], grid, cfg.cond_hidden)

    def forward(self, z: torch.Tensor, t: torch.Tensor, base: torch.Tensor, feats: torch.Tensor | None = None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        p = self.patch
        inp = torch.cat([F.pixel_unshuffle(z, p), F.pixel_unshuffle(base, p)], dim=1)
        extra = None
        if feats is not None:
            extra = self.cond(feats)
            if keep is not None:
                extra = extra * keep.view(-1, 1, 1, 1).to(extra.dtype)
        self.unet.conv_in.extra = extra
        try:
            out = self.unet(inp, t).sample
        finally:
            self.unet.conv_in.extra = None
        return F.pixel_shuffle(out, p)


class _TinyModel(nn.Module):
    def __init__(self, info: InvertInfo, cfg: FeatInvTinyConfig):
        super().__init__()
        c, h, _ = info.shape
        self.decoder = UpConvDecoder(c, h, cfg.resolution, cfg.decoder_width)
        self.denoiser = TinyDenoiser(c, cfg)
        self.register_buffer("mean_image", torch.zeros(1, 3, cfg.resolution, cfg.resolution))  # in [-1, 1]

    def base(self, feats: torch.Tensor) -> torch.Tensor:
        return self.decoder(feats) * 2 - 1


def _scheduler(cfg) -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=cfg.train_timesteps, beta_schedule="squaredcos_cap_v2",
                         prediction_type="sample", clip_sample=True, timestep_spacing="trailing")


class FeatInvTiny(_FeatInv):
    name, version = "featinv-tiny", "4"
    weights_version = "3"  # what its checkpoints hold: bumped when training changes, not sampling
    config = FeatInvTinyConfig()

    def __init__(self, **overrides):
        self.cfg = FeatInvTinyConfig(**{**asdict(self.config), **overrides})
        self.cfg.channels, self.cfg.augment = tuple(self.cfg.channels), tuple(self.cfg.augment)
        self.resolution = self.cfg.resolution
        self.model: _TinyModel | None = None
        self.ema: _TinyModel | None = None
        self.info: InvertInfo | None = None
        self.report: TrainingReport | None = None
        self._calls = 0
        self._backbone: Backbone | None = None

    def identity(self, train: InvertData) -> dict:
        i = train.info
        config = {k: v for k, v in asdict(self.cfg).items() if k not in SAMPLING_ONLY}
        return {"preset": self.name, "version": self.weights_version, "config": config, "task": i.task_id,
                "suite": i.suite, "data_sha256": i.data_sha256, "seed": i.seed}

    def build(self, info: InvertInfo) -> _TinyModel:
        with torch.random.fork_rng():
            torch.manual_seed(info.seed)
            return _TinyModel(info, self.cfg)

    def train(self, train: InvertData, *, directory: str | Path | None = None, max_steps: int | None = None,
              max_seconds: float | None = None, progress: bool = False) -> TrainingReport:
        info, cfg = train.info, self.cfg
        if train.resolution != cfg.resolution:
            raise ValueError(f"featinv-tiny trains on {cfg.resolution}-px targets; got {train.resolution} px")
        directory = directory or checkpoint_dir(info.suite, info.backbone, info.layer, self.name)
        model = self.build(info)
        model.decoder.norm.fit(train.x)
        model.denoiser.cond.norm.fit(train.x)
        model.mean_image.copy_(train.images.mean(dim=0, keepdim=True) * 2 - 1)
        ema = copy.deepcopy(model).requires_grad_(False)
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model.to(memory_format=fmt)
        ema.to(memory_format=fmt)
        state = nn.ModuleDict({"model": model, "ema": ema})
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
        alphas = _scheduler(cfg).alphas_cumprod.to(torch.float32)
        pool: dict[str, torch.Tensor] = {}  # filled at the first step: resuming a finished checkpoint needs none

        def step_fn(step: int) -> float:
            if not pool:
                parts = [train] + [train.with_manipulation(m) for m in cfg.augment if m in train.manipulations]
                pool["x"] = torch.cat([d.x for d in parts])
                pool["images"] = torch.cat([d.images for d in parts]) * 2 - 1
            g = step_generator(info.seed, step, "featinv")
            b = cfg.batch_size
            idx = torch.randint(len(train), (b,), generator=g)
            if len(pool["x"]) > len(train):  # rows past len(train) are the manipulated pairs
                swap = torch.rand(b, generator=g) < cfg.augment_p
                idx = torch.where(swap, torch.randint(len(train), len(pool["x"]), (b,), generator=g), idx)
            x, y = pool["x"][idx], pool["images"][idx].contiguous(memory_format=fmt)
            t = torch.randint(0, cfg.train_timesteps, (b,), generator=g)
            noise = torch.randn(y.shape, generator=g).contiguous(memory_format=fmt)
            keep = torch.rand(b, generator=g) >= cfg.p_uncond
            a = alphas[t].view(-1, 1, 1, 1)
            z = a.sqrt() * y + (1 - a).sqrt() * noise
            dec = model.base(x)
            loss_dec = F.mse_loss(dec, y)
            if cfg.decoder_lpips:
                loss_dec = loss_dec + cfg.decoder_lpips * lpips_loss((dec + 1) / 2, (y + 1) / 2)
            base = torch.where(keep.view(-1, 1, 1, 1), dec.detach(), model.mean_image)
            x0 = base + model.denoiser(z, t, base, x, keep)
            weight = (a / (1 - a) + 1).clamp(max=1 + cfg.snr_gamma).flatten()
            loss_diff = (weight * ((x0 - y) ** 2).mean(dim=(1, 2, 3))).mean()
            loss = loss_diff + loss_dec
            for group in opt.param_groups:
                group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            _ema_update(ema, model, min(cfg.ema_decay, (1 + step) / (10 + step)))
            return loss.item()

        model.train()
        self.report = run_training(directory=directory, identity=self.identity(train), module=state, optimizer=opt,
                                   step_fn=step_fn, max_steps=max_steps or cfg.max_steps, max_seconds=max_seconds,
                                   every=cfg.checkpoint_every, progress=progress, desc=f"{self.name} {info.task_id}")
        self.info = info
        self.model = model.eval().requires_grad_(False)
        self.ema = ema.eval()
        return self.report

    @torch.no_grad()
    def sample(self, feats: torch.Tensor | None, n: int, generator: torch.Generator,
               steps: int | None = None, guidance: float | None = None) -> torch.Tensor:
        """DDIM with classifier-free guidance on x̂₀; `feats` None: unconditional samples."""
        m, r = self.ema, self.cfg.resolution
        default_steps, default_w = self.sampler
        steps, w = steps or default_steps, default_w if guidance is None else guidance
        sched = _scheduler(self.cfg)
        sched.set_timesteps(steps)
        z = torch.randn(n, 3, r, r, generator=generator)
        mean = m.mean_image.expand(n, -1, -1, -1)
        base = m.base(feats) if feats is not None else mean
        keep = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])
        steered = feats is not None and self.cfg.feature_guidance > 0
        steer_from = steps * self.cfg.feature_guidance_from if steered else steps
        for i, t in enumerate(sched.timesteps):
            tt = torch.full((n,), int(t))
            if feats is None:
                x0 = mean + m.denoiser(z, tt, mean)
            elif w == 1.0:
                x0 = base + m.denoiser(z, tt, base, feats)
            else:
                both = m.denoiser(torch.cat([z, z]), torch.cat([tt, tt]), torch.cat([base, mean]),
                                  torch.cat([feats, feats]), keep)
                x0_c, x0_u = base + both[:n], mean + both[n:]
                x0 = x0_u + w * (x0_c - x0_u)
            if i >= steer_from:
                x0 = self._steer(x0, feats)
            z = sched.step(x0, t, z, eta=0.0).prev_sample
        return ((z.clamp(-1, 1) + 1) / 2).contiguous()

    def describe(self) -> dict:
        out = super().describe()
        g = self.cfg.feature_guidance
        if "sampler" in out and g:
            out["sampler"] += f", feature guidance {g} from {self.cfg.feature_guidance_from:.0%} of the steps"
        return out

    def _steer(self, x0: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Feature guidance: one normalised gradient step on x̂₀ (in [-1, 1]) towards the image
        whose backbone map at the task's layer has the given map's direction at every position."""
        info = self.info
        # The evaluator inverts under inference mode; autograd needs ordinary tensors (the
        # backbone's weights among them: loaded here, they would otherwise be inference tensors).
        with torch.inference_mode(False), torch.enable_grad():
            if self._backbone is None:
                self._backbone = load_backbone(info.backbone)
            bb = self._backbone
            x = x0.clone().requires_grad_(True)
            pixels = resize_images((x.clamp(-1, 1) + 1) * 127.5, bb.spec.preprocessing.crop)
            got = bb.features(bb.normalize(pixels), [info.layer], differentiable=True)[info.layer]
            loss = (1 - F.cosine_similarity(got.float(), feats.clone(), dim=1)).flatten(1).mean(1).sum()
            grad, = torch.autograd.grad(loss, x)
        rms = grad.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12).view(-1, 1, 1, 1)
        return x0 - self.cfg.feature_guidance * grad / rms

    def _trained(self) -> nn.Module | None:
        return self.model


# =============================================================================================
# featinv-sd


@dataclass
class FeatInvSDConfig:
    model_id: str = "lambdalabs/miniSD-diffusers"  # Stable Diffusion 1.x fine-tuned at 256 px
    revision: str | None = None
    prompt: str = ""
    resolution: int = 256
    cond_hidden: int = 256
    batch_size: int = 8
    lr: float = 1e-5
    warmup_steps: int = 500
    max_steps: int = 20000
    p_uncond: float = P_UNCOND
    checkpoint_every: int = 1000
    steps: int = 50
    guidance: float = 2.0


@dataclass
class SDComponents:
    """The frozen parts of a Stable Diffusion 1.x pipeline that featinv-sd needs."""

    vae: Any  # diffusers AutoencoderKL
    unet: Any  # diffusers UNet2DConditionModel
    scheduler: Any  # a diffusers scheduler config source; sampling uses DDIM built from it
    prompt_embeds: torch.Tensor  # 1×L×D text embedding of the (empty) prompt
    source: dict = field(default_factory=dict)  # where they came from (recorded in checkpoints)

    @classmethod
    def from_pretrained(cls, model_id: str, revision: str | None = None, prompt: str = "",
                        device: str | torch.device = "cpu") -> "SDComponents":
        """Load from the Hugging Face Hub (or its local cache), as StableDiffusionControlNetPipeline does."""
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

        try:
            from transformers import CLIPTextModel, CLIPTokenizer
        except ImportError as exc:
            raise ImportError("featinv-sd needs `transformers` for the text encoder: pip install transformers") from exc
        kw = {"revision": revision}
        vae = AutoencoderKL.from_pretrained(model_id, subfolder="vae", **kw).to(device)
        unet = UNet2DConditionModel.from_pretrained(model_id, subfolder="unet", **kw).to(device)
        scheduler = DDIMScheduler.from_pretrained(model_id, subfolder="scheduler", **kw)
        tokenizer = CLIPTokenizer.from_pretrained(model_id, subfolder="tokenizer", **kw)
        text_encoder = CLIPTextModel.from_pretrained(model_id, subfolder="text_encoder", **kw).to(device)
        ids = tokenizer([prompt], padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        with torch.no_grad():
            prompt_embeds = text_encoder(ids)[0]
        del text_encoder
        return cls(vae, unet, scheduler, prompt_embeds, {"model_id": model_id, "revision": revision, "prompt": prompt})


class FeatInvSD(_FeatInv):
    name, version = "featinv-sd", "1"
    config = FeatInvSDConfig()

    def __init__(self, components: SDComponents | Callable[[], SDComponents] | None = None, device: str | None = None,
                 **overrides):
        self.cfg = FeatInvSDConfig(**{**asdict(self.config), **overrides})
        self.resolution = self.cfg.resolution
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._components = components
        self.comp: SDComponents | None = None
        self.controlnet = None
        self.info: InvertInfo | None = None
        self.report: TrainingReport | None = None
        self._calls = 0

    # -- parts ---------------------------------------------------------------------------------
    def components(self) -> SDComponents:
        if self.comp is None:
            c = self._components
            if c is None:
                c = SDComponents.from_pretrained(self.cfg.model_id, self.cfg.revision, self.cfg.prompt, self.device)
            elif callable(c):
                c = c()
            for part in (c.vae, c.unet):
                part.to(self.device).eval().requires_grad_(False)
            c.prompt_embeds = c.prompt_embeds.to(self.device)
            self.comp = c
        return self.comp

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.components().vae.config.block_out_channels) - 1)

    def build_controlnet(self, feat_channels: int, seed: int = 0):
        """A ControlNet copied from the UNet's encoder, its conditioning embedding FeatInv's block."""
        from diffusers import ControlNetModel

        comp = self.components()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            controlnet = ControlNetModel.from_unet(comp.unet)
            controlnet.controlnet_cond_embedding = FeatInvConditioning(
                feat_channels, comp.unet.config.block_out_channels[0], self.resolution // self.vae_scale,
                self.cfg.cond_hidden)
        return controlnet.to(self.device)

    def eps(self, z: torch.Tensor, t: torch.Tensor, feats: torch.Tensor | None,
            keep: torch.Tensor | None = None, controlnet=None) -> torch.Tensor:
        """The UNet's noise prediction, with the ControlNet's residuals (masked where keep is False)."""
        comp, controlnet = self.components(), controlnet or self.controlnet
        emb = comp.prompt_embeds.expand(len(z), -1, -1)
        if feats is None:
            return comp.unet(z, t, encoder_hidden_states=emb).sample
        down, mid = controlnet(z, t, encoder_hidden_states=emb, controlnet_cond=feats, return_dict=False)
        if keep is not None:
            mask = keep.view(-1, 1, 1, 1).to(z.dtype)
            down, mid = [d * mask for d in down], mid * mask
        return comp.unet(z, t, encoder_hidden_states=emb, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample

    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch: int = 16) -> torch.Tensor:
        """[0, 1] images → scaled VAE latents (the posterior mean: deterministic)."""
        vae = self.components().vae
        out = [vae.encode(images[i:i + batch].to(self.device) * 2 - 1).latent_dist.mean
               for i in range(0, len(images), batch)]
        return torch.cat(out) * vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.components().vae
        images = vae.decode(latents / vae.config.scaling_factor).sample
        return ((images.float().clamp(-1, 1) + 1) / 2).cpu()

    # -- training ------------------------------------------------------------------------------
    def identity(self, train: InvertData) -> dict:
        i = train.info
        return {"preset": self.name, "version": self.version, "config": asdict(self.cfg), "task": i.task_id,
                "suite": i.suite, "data_sha256": i.data_sha256, "seed": i.seed,
                "components": self.components().source or "custom"}

    def train(self, train: InvertData, *, directory: str | Path | None = None, max_steps: int | None = None,
              max_seconds: float | None = None, progress: bool = False) -> TrainingReport:
        info, cfg, comp = train.info, self.cfg, self.components()
        directory = directory or checkpoint_dir(info.suite, info.backbone, info.layer, self.name)
        controlnet = self.build_controlnet(info.shape[0], info.seed)
        controlnet.controlnet_cond_embedding.norm.fit(train.x)
        controlnet.controlnet_cond_embedding.norm.to(self.device)
        latents = self.encode(train.images)
        sched = comp.scheduler
        opt = torch.optim.AdamW(controlnet.parameters(), lr=cfg.lr)

        def step_fn(step: int) -> float:
            g = step_generator(info.seed, step, "featinv-sd")
            b = cfg.batch_size
            idx = torch.randint(len(train), (b,), generator=g)
            lat = latents[idx.to(latents.device)]
            t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=g)
            noise = torch.randn(lat.shape, generator=g).to(self.device)
            keep = (torch.rand(b, generator=g) >= cfg.p_uncond).to(self.device)
            t = t.to(self.device)
            z = sched.add_noise(lat, noise, t)
            target = sched.get_velocity(lat, noise, t) if sched.config.prediction_type == "v_prediction" else noise
            pred = self.eps(z, t, train.x[idx].to(self.device), keep, controlnet)
            loss = F.mse_loss(pred.float(), target.float())
            for group in opt.param_groups:
                group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
            opt.step()
            return loss.item()

        controlnet.train()
        self.report = run_training(directory=directory, identity=self.identity(train), module=controlnet,
                                   optimizer=opt, step_fn=step_fn, max_steps=max_steps or cfg.max_steps,
                                   max_seconds=max_seconds, every=cfg.checkpoint_every, progress=progress,
                                   desc=f"{self.name} {info.task_id}")
        self.info = info
        self.controlnet = controlnet.eval().requires_grad_(False)
        return self.report

    # -- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, feats: torch.Tensor | None, n: int, generator: torch.Generator) -> torch.Tensor:
        from diffusers import DDIMScheduler

        comp = self.components()
        steps, w = self.sampler
        sched = DDIMScheduler.from_config(comp.scheduler.config)
        sched.set_timesteps(steps)
        grid = self.resolution // self.vae_scale
        z = torch.randn(n, comp.unet.config.in_channels, grid, grid, generator=generator).to(self.device)
        z = z * sched.init_noise_sigma
        if feats is not None:
            feats = feats.to(self.device)
        keep = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)]).to(self.device)
        for t in sched.timesteps:
            tt = torch.full((n,), int(t), device=self.device)
            if feats is None:
                e = self.eps(z, tt, None)
            elif w == 1.0:
                e = self.eps(z, tt, feats)
            else:
                both = self.eps(torch.cat([z, z]), torch.cat([tt, tt]), torch.cat([feats, feats]), keep)
                e = both[n:] + w * (both[:n] - both[n:])
            z = sched.step(e, t, z, eta=0.0).prev_sample
        return self.decode(z)

    def _trained(self) -> nn.Module | None:
        return self.controlnet

    def _at_resolution(self, images: torch.Tensor) -> torch.Tensor:
        return resize_images(images, self.resolution).clamp(0, 1)
