"""featinv: the conditioning block's zero initialisation, the tiny preset's training and sampling,
and featinv-sd's ControlNet path end to end on tiny random diffusers components."""

from __future__ import annotations

import json

import pytest
import torch

from baselines.featinv import (
    FeatInvConditioning, FeatInvSD, FeatInvTiny, FeatInvTinyConfig, SDComponents, TinyDenoiser,
)
from featbench.zoo.backbones import Backbone, load_backbone
from featbench.interfaces.checkpoints import CheckpointError, read_record
from featbench.scoring.isolation import Isolation
from featbench.scoring.runner import RunConfig
from featbench.scoring.invert_track import run_invert_track
from featbench.data.targets import network_input
from featbench.interfaces.inverter import InvertData, InvertInfo
from featbench.core.results import validate_result
from tests.conftest import TINY_CNN
from tests.test_inverters import TASK, in_suite_cache, suite  # noqa: F401  (module fixtures)

IN_PROCESS = RunConfig(seed=0, n_boot=10, time_budget_s=None, isolation=Isolation("none"))  # test_isolation: isolated
TINY = dict(resolution=16, patch=2, channels=(8, 16), cond_hidden=4, decoder_width=8, batch_size=4,
            train_timesteps=50, steps=3, checkpoint_every=2, warmup_steps=2, decoder_lpips=0.0,
            feature_guidance=0.0)  # the maps of `_data` are of no real backbone


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # exact resume comparisons, and the CPU is shared
    yield
    torch.set_num_threads(before)


def _data(n: int = 10, c: int = 8, h: int = 4, r: int = 16, settings: dict | None = None) -> InvertData:
    g = torch.Generator().manual_seed(2)
    info = InvertInfo("invert/bb/l", "s", "bb", "l", (c, h, h), None, 32, 11, None, "data-hash", settings or {})
    return InvertData(info, torch.randn(n, c, h, h, generator=g), torch.rand(n, 3, r, r, generator=g),
                      [f"i{i}" for i in range(n)], [0] * n)


def tiny_sd_components() -> SDComponents:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), latent_channels=4,
                        norm_num_groups=8, sample_size=16)
    return SDComponents(vae, unet, DDIMScheduler(num_train_timesteps=100), torch.randn(1, 4, 32),
                        {"model_id": "tiny-random-for-tests"})


class TinySD(FeatInvSD):
    config = FeatInvSD.config.__class__(resolution=16, cond_hidden=8, batch_size=2, steps=2, checkpoint_every=2,
                                        warmup_steps=2, max_steps=3)

    def __init__(self, **kw):
        super().__init__(components=tiny_sd_components, device="cpu", **kw)


class TinyFeatInv(FeatInvTiny):
    config = FeatInvTinyConfig(**{**TINY, "resolution": 32, "max_steps": 3, "feature_guidance": 0.05})


# -- zero initialisation ------------------------------------------------------------------------

def test_conditioning_block_starts_at_exactly_zero():
    block = FeatInvConditioning(8, 16, grid=12, hidden=4)
    out = block(torch.randn(3, 8, 5, 5))
    assert out.shape == (3, 16, 12, 12) and torch.equal(out, torch.zeros_like(out))
    assert [type(m).__name__ for m in block.children()] == ["ChannelStandardizer", "Conv2d", "Conv2d", "Conv2d"]


def test_untrained_block_leaves_the_tiny_denoiser_unchanged():
    torch.manual_seed(0)
    den = TinyDenoiser(8, FeatInvTinyConfig(**TINY)).eval()
    z, base = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    t, feats = torch.tensor([3, 40]), torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        plain = den(z, t, base)
        conditioned = den(z, t, base, feats, keep=torch.tensor([True, True]))
    assert torch.equal(plain, conditioned)
    # ... and once the block's last conv is trained, the condition does change the output.
    torch.nn.init.normal_(den.cond.conv_out.weight)
    with torch.no_grad():
        assert not torch.allclose(den(z, t, base, feats), plain)
        dropped = den(z, t, base, feats, keep=torch.tensor([False, False]))
    assert torch.equal(dropped, plain)  # a dropped condition is exactly the unconditional model


def test_untrained_controlnet_leaves_the_unet_unchanged():
    inv = TinySD()
    controlnet = inv.build_controlnet(8)
    assert isinstance(controlnet.controlnet_cond_embedding, FeatInvConditioning)
    z, t, feats = torch.randn(2, 4, 8, 8), torch.tensor([10, 70]), torch.randn(2, 8, 4, 4)
    with torch.no_grad():
        plain = inv.eps(z, t, None)
        controlled = inv.eps(z, t, feats, controlnet=controlnet)
    assert torch.equal(plain, controlled)


# -- featinv-tiny ---------------------------------------------------------------------------------

def _state(inv: FeatInvTiny) -> dict:
    return {**{f"model.{k}": v for k, v in inv.model.state_dict().items()},
            **{f"ema.{k}": v for k, v in inv.ema.state_dict().items()}}


def test_tiny_resume_equals_uninterrupted_and_sampling_is_seeded(tmp_path):
    data = _data()
    straight = FeatInvTiny(**TINY)
    straight.train(data, directory=tmp_path / "a", max_steps=4)
    FeatInvTiny(**TINY).train(data, directory=tmp_path / "b", max_steps=2)  # interrupted here
    resumed = FeatInvTiny(**TINY)
    report = resumed.train(data, directory=tmp_path / "b", max_steps=4)
    assert (report.start_step, report.step) == (2, 4)
    a, b = _state(straight), _state(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_record(tmp_path / "a")["latest"]["sha256"] == read_record(tmp_path / "b")["latest"]["sha256"]
    out = straight.invert(data.x[:3])
    assert out.shape == (3, 3, 16, 16) and 0 <= float(out.min()) and float(out.max()) <= 1
    fresh = FeatInvTiny(**TINY)
    fresh.train(data, directory=tmp_path / "a", max_steps=4)  # loads, trains nothing
    assert torch.equal(fresh.invert(data.x[:3]), out)
    assert fresh.invert_unconditional(2).shape == (2, 3, 16, 16)
    assert fresh.describe()["sampler"] == "DDIM eta=0, 3 steps, guidance 2.0"


def test_tiny_base_decoder_is_trained_with_lpips(tmp_path):
    """The preset's base decoder learns from MSE plus LPIPS (alex): at the same first step the loss
    grows by the LPIPS of the untrained base, and the decoder's weights move differently."""
    data = _data(r=32)
    cfg = TINY | {"resolution": 32}
    plain, sharp = FeatInvTiny(**cfg), FeatInvTiny(**cfg | {"decoder_lpips": 1.0})
    first = [inv.train(data, directory=tmp_path / str(i), max_steps=1).losses[0]
             for i, inv in enumerate((plain, sharp))]
    assert 0.05 < first[1] - first[0] < 1.0  # LPIPS of a random decoder's images to the true ones
    a, b = plain.model.decoder.state_dict(), sharp.model.decoder.state_dict()
    assert not all(torch.equal(a[k], b[k]) for k in a if k.startswith("inp"))


def _backbone_data(n: int = 6) -> tuple[InvertData, Backbone]:
    """Training pairs whose maps are the tiny random backbone's own (feature guidance needs them)."""
    bb = load_backbone(TINY_CNN)
    images = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    x = bb.features(network_input(bb, images), ["blocks.3"])["blocks.3"]
    info = InvertInfo(f"invert/{TINY_CNN}/blocks.3", "s", TINY_CNN, "blocks.3", tuple(x.shape[1:]), None, 16, 11,
                      None, "data-hash")
    return InvertData(info, x, images, [f"i{i}" for i in range(n)], [0] * n), bb


def test_feature_guidance_steers_samples_towards_the_given_maps(tmp_path):
    """Guided samples' backbone maps point closer to the given maps than unguided ones from the same
    noise; guidance works under the evaluator's inference mode, and needs no retraining: it stays
    out of the checkpoint identity, so the weights trained without it are loaded as they are."""
    data, bb = _backbone_data()
    plain = FeatInvTiny(**TINY)
    plain.train(data, directory=tmp_path, max_steps=2)
    guided = FeatInvTiny(**TINY | {"feature_guidance": 0.5, "feature_guidance_from": 0.0})
    report = guided.train(data, directory=tmp_path, max_steps=2)
    assert report.start_step == 2  # loaded, nothing trained

    def cosine(images):
        maps = bb.features(network_input(bb, images), ["blocks.3"])["blocks.3"]
        return float(torch.nn.functional.cosine_similarity(maps, data.x, dim=1).mean())

    with torch.inference_mode():
        steered = guided.invert(data.x)
    assert cosine(steered) > cosine(plain.invert(data.x)) + 0.01
    assert "feature guidance 0.5" in guided.describe()["sampler"]
    assert "feature guidance" not in plain.describe()["sampler"]


def test_suite_pins_the_sampler(tmp_path):
    data = _data(settings={"sampler": {"steps": 2, "guidance": 1.0}})
    inv = FeatInvTiny(**TINY)
    inv.train(data, directory=tmp_path, max_steps=1)
    assert inv.sampler == (2, 1.0)
    assert inv.invert(data.x[:2]).shape == (2, 3, 16, 16)  # the unguided path


def test_tampered_checkpoint_fails_the_task(suite, in_suite_cache, tmp_path):  # noqa: F811
    res = run_invert_track(TinyFeatInv, suite, [suite.get_task(TASK)], tmp_path / "a.json",
                           IN_PROCESS, progress=False)
    t = res["tasks"][0]
    assert t["status"] == "ok", t.get("reason")
    assert {"mean", "downsampled", "unconditional"} <= set(t["reference_points"])
    validate_result(res)
    ckpt = suite.path.parent / "cache" / "inverters" / suite.name / TINY_CNN / "blocks.3" / "featinv-tiny"
    record = json.loads((ckpt / "checkpoint.json").read_text())
    weights = ckpt / record["latest"]["file"]
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0x01
    weights.write_bytes(bytes(raw))
    res = run_invert_track(TinyFeatInv, suite, [suite.get_task(TASK)], tmp_path / "b.json",
                           IN_PROCESS, progress=False)
    t = res["tasks"][0]
    assert t["status"] == "failed" and "CheckpointError" in t["reason"] and "sha256" in t["reason"]


# -- featinv-sd on tiny random components ---------------------------------------------------------

def test_featinv_sd_end_to_end_on_tiny_components(tmp_path):
    data = _data(n=6)
    inv = TinySD()
    report = inv.train(data, directory=tmp_path, max_steps=2)
    assert report.finished and (tmp_path / "checkpoint.json").is_file()
    assert read_record(tmp_path)["identity"]["components"] == {"model_id": "tiny-random-for-tests"}
    out = inv.invert(data.x[:3])
    assert out.shape == (3, 3, 16, 16) and torch.isfinite(out).all() and 0 <= float(out.min()) <= float(out.max()) <= 1
    assert inv.invert_unconditional(2).shape == (2, 3, 16, 16)
    resumed = TinySD()
    assert resumed.train(data, directory=tmp_path, max_steps=3).start_step == 2
    with pytest.raises(CheckpointError, match="another training"):
        TinySD(lr=0.5).train(data, directory=tmp_path, max_steps=4)


def test_featinv_sd_scored_on_the_tiny_suite(suite, in_suite_cache, tmp_path):  # noqa: F811
    res = run_invert_track(TinySD, suite, [suite.get_task(TASK)], tmp_path / "sd.json",
                           IN_PROCESS, progress=False)
    t = res["tasks"][0]
    assert t["status"] == "ok", t.get("reason")
    assert any("16 px resized to 32 px" in n for n in t["notes"])
    assert "unconditional" in t["reference_points"] and res["model"]["name"] == "featinv-sd"
    validate_result(res)
