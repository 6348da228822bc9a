"""A suite's ``precision``: maps computed in float64 before their float16 storage, so that the
stored bytes (and the task hashes) do not depend on the machine that extracts them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import featbench as fb
from featbench.core.errors import FeatbenchError
from featbench.data.storage import column_array, load_variant, variant_refs

from .conftest import TINY_CNN, TINY_VIT, make_tiny_suite, with_precision


def test_precision_is_hashed_only_where_given(tmp_path):
    plain = make_tiny_suite(tmp_path)
    f32 = with_precision(plain, {TINY_VIT: "float32"}, tmp_path / "f32.yaml")
    f64 = with_precision(plain, {TINY_VIT: "float64"}, tmp_path / "f64.yaml")
    assert "precision" not in plain.spec_dict() and f64.spec_dict()["precision"] == {TINY_VIT: "float64"}
    # float32 is the default: naming it changes nothing, so existing suites keep their hashes.
    assert f32.spec_sha256() == plain.spec_sha256() != f64.spec_sha256()
    keys = lambda s, b, layer: {v: r.key for v, r in variant_refs(s, b, layer).items()}
    assert keys(f64, TINY_CNN, "blocks.1") == keys(plain, TINY_CNN, "blocks.1")
    assert not set(keys(f64, TINY_VIT, "blocks.1").values()) & set(keys(plain, TINY_VIT, "blocks.1").values())
    assert fb.load_suite(f64.save(tmp_path / "again.yaml").path).spec_sha256() == f64.spec_sha256()


@pytest.mark.parametrize("bad, message", [({TINY_VIT: "float16"}, "one of float32, float64"),
                                          ({"resnet50": "float64"}, "does not use")])
def test_a_bad_precision_is_named(tmp_path, bad, message):
    with pytest.raises(FeatbenchError, match=message):
        make_tiny_suite(tmp_path, precision=bad)


def test_a_float64_suite_stores_the_float64_maps_rounded_once(tmp_path, private_cache):
    plain = make_tiny_suite(tmp_path, tracks=["map"], manipulations=["rot90"])
    f64 = with_precision(plain, {TINY_VIT: "float64"}, tmp_path / "f64.yaml")
    for suite in (plain, f64):
        fb.build_suite(suite, batch_size=8, progress=False)
    cnn = [variant_refs(s, TINY_CNN, "blocks.1")["original"].path for s in (plain, f64)]
    assert cnn[0] == cnn[1]  # the float32 backbone's datasets are shared, not rebuilt

    def maps(suite):
        data, _ = load_variant(variant_refs(suite, TINY_VIT, "blocks.1")["original"])
        return column_array(data["train"], "features")

    single, double = maps(plain), maps(f64)
    differ = single.view(np.int16) != double.view(np.int16)
    # The same maps up to float16 rounding, rounded from float64 in some places.
    assert 0 < differ.mean() < 0.05
    np.testing.assert_allclose(double.astype(np.float32), single.astype(np.float32), rtol=2e-3, atol=1e-3)


def test_a_build_refuses_a_backbone_of_another_precision(tmp_path, private_cache):
    suite = make_tiny_suite(tmp_path, tracks=["map"], manipulations=["rot90"], precision={TINY_VIT: "float64"})
    with pytest.raises(FeatbenchError, match="computes tiny_random_vit_for_tests's maps in float64"):
        fb.build_suite(suite, backbones=[TINY_VIT], models={TINY_VIT: fb.load_backbone(TINY_VIT)}, progress=False)


def test_compile_is_refused_in_float64():
    with pytest.raises(FeatbenchError, match="float64 runs eager"):
        fb.load_backbone(TINY_VIT, compile=True, dtype=torch.float64)


_MAPS = """
import hashlib, json, sys, torch
import featbench as fb
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
x = torch.randn(2, 3, 224, 224)
out = {}
for dtype in (torch.float32, torch.float64):
    bb = fb.load_backbone("dinov2_vits14", dtype=dtype)
    maps = bb.features(x, ["blocks.3", "blocks.11"], dtype=torch.float16)
    out[str(dtype)] = hashlib.sha256(b"".join(m.numpy().tobytes() for m in maps.values())).hexdigest()
print(json.dumps(out))
"""


@pytest.mark.slow
def test_float64_maps_do_not_depend_on_the_vector_width_or_the_threads():
    """dinov2_vits14's float16 maps, by its AVX-512 kernels at 1 thread and by its AVX2 kernels at
    2 threads: float32's differ (where the CPU has AVX-512), float64's are the same bytes."""
    def run(threads: int, capability: str | None) -> dict:
        env = dict(os.environ)
        env.pop("ATEN_CPU_CAPABILITY", None)
        if capability:
            env["ATEN_CPU_CAPABILITY"] = capability
        done = subprocess.run([sys.executable, "-c", _MAPS, str(threads)], env=env, capture_output=True, text=True,
                              check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    default, avx2 = run(1, None), run(2, "avx2")
    assert default["torch.float64"] == avx2["torch.float64"]
    if torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        assert default["torch.float32"] != avx2["torch.float32"]  # the problem float64 solves
