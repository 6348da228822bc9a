"""What a suite's ``precision: {BACKBONE: float64}`` buys and costs, measured in one run.

Buys: the float16 maps a build stores no longer depend on the kernels that computed them. Each
setting runs in a subprocess of its own (torch reads ``ATEN_CPU_CAPABILITY`` once), on the first
N pinned images through the backbone's preprocessing, at its three deepest exposed layers of the
suite's design:

- ``reference``: this CPU's own kernels at 1 thread;
- ``avx2``: ``ATEN_CPU_CAPABILITY=avx2``, the kernels a CPU without AVX-512 runs, at 1 thread;
- ``2 threads``: this CPU's kernels at 2 threads.

For float32 and for float64 it prints the share of float16 values that differ from the
reference's. Costs: images per second of the float64 eager forward against the float32 forward
that builds use (``torch.compile`` with freezing), best of 3, at 1 thread, and their ratio.

    .venv/bin/python benchmarks/float64_maps.py --backbone dinov2_vits14
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "imagenet-samples"

# Runs in each subprocess: the maps (as float16 bytes, hex) or the throughput of one setting.
_CHILD = r"""
import json, sys, time, torch
from pathlib import Path
from PIL import Image
import featbench as fb
from featbench.data.suites import load_suite
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
dtype = getattr(torch, args["dtype"])
bb = fb.load_backbone(args["backbone"], dtype=dtype, compile=args["compile"])
files = sorted(p for p in Path(args["images"]).iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
x = bb.preprocess([Image.open(f) for f in files[:args["n"]]])
layers = load_suite("featbench-v2").backbones.get(args["backbone"]) or list(bb.layers)[-3:]
if args["time"]:
    def once():
        start = time.perf_counter()
        bb.features(x, layers, dtype=torch.float16)
        return time.perf_counter() - start
    once()  # warm-up (and compilation)
    print(json.dumps({"images_per_s": len(x) / min(once() for _ in range(3))}))
else:
    maps = bb.features(x, layers, dtype=torch.float16)
    print(json.dumps({l: m.numpy().tobytes().hex() for l, m in maps.items()}))
"""


def child(capability: str | None = None, **args) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"a measurement failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def differing(a: dict, b: dict) -> str:
    import numpy as np

    shares = []
    for layer in a:
        x, y = (np.frombuffer(bytes.fromhex(m[layer]), dtype=np.int16) for m in (a, b))
        shares.append(f"{layer} {100 * float(np.mean(x != y)):.3f} %")
    return ", ".join(shares)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="dinov2_vits14")
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="image folder")
    p.add_argument("-n", "--n-images", type=int, default=8)
    args = p.parse_args(argv)
    common = {"backbone": args.backbone, "images": str(args.images), "n": args.n_images, "time": False}
    print(f"{args.backbone}, {args.n_images} images of {args.images}: float16 values that differ from the "
          "reference setting's")
    for dtype in ("float32", "float64"):
        ref = child(**common, dtype=dtype, threads=1, compile=False)
        avx2 = child("avx2", **common, dtype=dtype, threads=1, compile=False)
        two = child(**common, dtype=dtype, threads=2, compile=False)
        print(f"  {dtype}: avx2: {differing(ref, avx2)}; 2 threads: {differing(ref, two)}")
    timing = dict(common, time=True, threads=1)
    fast = child(**timing, dtype="float32", compile=True)["images_per_s"]
    slow = child(**timing, dtype="float64", compile=False)["images_per_s"]
    print(f"throughput, 1 thread: float32 compiled {fast:.2f} images/s, float64 eager {slow:.2f} images/s: "
          f"float64 takes {fast / slow:.1f}× the time")


if __name__ == "__main__":
    main()
