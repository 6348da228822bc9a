"""Forward passes on a CUDA device (`featbench build --device cuda`, `load_backbone(device=...)`).

The GPU cases run where torch sees a CUDA device; CI has none, so there they skip, saying so, and
only the CPU-only error is checked. On the tiny random backbones (plumbing only).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import featbench as fb
from featbench.core.errors import FeatbenchError
from featbench.core.hashing import sha256_file
from featbench.data.storage import column_array, variant_refs
from tests.conftest import TINY_CNN, TINY_VIT, make_tiny_suite, with_precision

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (CI has none; run these on a GPU machine)")
TASKS = [f"map/{TINY_CNN}/blocks.1/rot90", f"map/{TINY_CNN}/blocks.3/noise40", f"map/{TINY_VIT}/blocks.1/mask_tl_red"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_asking_for_cuda_without_one_is_a_clear_error(tmp_path, private_cache):
    with pytest.raises(FeatbenchError, match="sees no CUDA device; leave --device out"):
        fb.load_backbone(TINY_CNN, device="cuda")
    with pytest.raises(FeatbenchError, match="sees no CUDA device"):
        fb.build_suite(make_tiny_suite(tmp_path), batch_size=4, progress=False, device="cuda")
    assert not (private_cache / "datasets").exists() or not any((private_cache / "datasets").rglob("*.arrow"))


def _maps(suite) -> dict[str, np.ndarray]:
    out = {}
    for task in TASKS:
        data = fb.load_task(suite, task)
        for col in ("x", "y"):
            out[f"{task}:{col}"] = column_array(data.train, col).astype(np.float32)
        if "x_prefix" in data.train.column_names:
            out[f"{task}:x_prefix"] = column_array(data.train, "x_prefix").astype(np.float32)
    return out


def _arrow_hashes(suite) -> dict[str, str]:
    return {str(p): sha256_file(p) for backbone, layers in suite.backbones.items() for layer in layers
            for ref in variant_refs(suite, backbone, layer).values() for p in sorted(ref.path.rglob("*.arrow"))}


@needs_cuda
def test_a_cuda_build_repeats_itself_and_stays_within_float16_rounding_of_a_cpu_build(tmp_path, private_cache):
    suite = make_tiny_suite(tmp_path)
    fb.build_suite(suite, batch_size=4, progress=False)
    cpu = _maps(suite)
    shutil.rmtree(private_cache / "datasets")

    _, report = fb.build_suite(suite, batch_size=4, progress=False, device="cuda")
    assert report.device.startswith("cuda:0 (") and f"on {report.device}" in report.summary()
    gpu, first = _maps(suite), _arrow_hashes(suite)
    for name, a in cpu.items():
        scale = float(np.abs(a).max())
        np.testing.assert_allclose(gpu[name], a, rtol=0, atol=4e-3 * scale, err_msg=name)

    shutil.rmtree(private_cache / "datasets")
    fb.build_suite(suite, batch_size=4, progress=False, device="cuda")
    assert _arrow_hashes(suite) == first  # deterministic kernels, no TF32


@needs_cuda
@pytest.mark.parametrize("name,layer", [(TINY_CNN, "blocks.1"), (TINY_VIT, "blocks.0")])
def test_features_and_tail_on_cuda_come_back_where_the_caller_keeps_them(name, layer):
    on_cpu, on_gpu = fb.load_backbone(name), fb.load_backbone(name, device="cuda")
    assert on_gpu.device.type == "cuda" and next(on_gpu.model.parameters()).is_cuda
    x = on_cpu.normalize(torch.rand(3, 3, 64, 64) * 255)
    expect, got = on_cpu.features(x, [layer])[layer], on_gpu.features(x, [layer])[layer]
    assert got.device.type == "cpu"
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-4)
    if on_cpu.is_vit:
        assert got.prefix.device.type == "cpu"
        torch.testing.assert_close(got.prefix, expect.prefix, rtol=1e-4, atol=1e-4)
    tail = on_gpu.tail(layer, got)
    assert tail.device.type == "cpu"
    torch.testing.assert_close(tail, on_cpu.tail(layer, expect), rtol=1e-4, atol=1e-4)
    on_device = on_gpu.features(x.cuda(), [layer])[layer]
    assert on_device.is_cuda and on_gpu.tail(layer, on_device).is_cuda


@needs_cuda
def test_a_float64_cuda_build_has_the_cpu_builds_bytes(tmp_path, private_cache):
    """A suite whose backbones compute in float64 (its ``precision``) stores the same float16
    bytes from a GPU as from a CPU, so a GPU build of it gives the ledger's task hashes."""
    plain = make_tiny_suite(tmp_path)
    suite = with_precision(plain, {TINY_CNN: "float64", TINY_VIT: "float64"}, tmp_path / "f64.yaml")
    fb.build_suite(suite, batch_size=4, progress=False)
    cpu = _arrow_hashes(suite)
    shutil.rmtree(private_cache / "datasets")
    fb.build_suite(suite, batch_size=4, progress=False, device="cuda")
    assert _arrow_hashes(suite) == cpu
