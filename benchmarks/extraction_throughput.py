"""featbench's end-to-end extraction throughput against two plain forwards on the same batches.

featbench's figure is a real build (`featbench.build_suite`) of a small custom suite over the
first N images: decode, preprocess, manipulate, forward, write and finalise the datasets, timed in
a fresh cache after a warm-up build has loaded and compiled the backbone. The references run the
same backbone's timm modules up to the deepest layer on the same preprocessed batches (every
image decoded once, all its variants derived from it), forward only:

- naive: eager, NCHW, float32;
- fastest: channels_last and ``torch.compile``; then also with inductor's ``freezing`` (batch
  norms folded, weights prepacked), and with freed memory kept in the process as featbench's
  builds keep it (`featbench.data.storage.keep_freed_memory`). The fastest of the three counts.
  Each is compiled with its own copy of the forward's code (`featbench.zoo.backbones.compile_module`):
  before 2026-12-07 the frozen ones were compiled after the plain one, got its code, and so were
  never frozen; the ratios this script printed until then were against a plain compile.

The unit is one feature-map set of one image variant (one image through one forward pass), so
N images and 12 manipulations give 13·N units. Targets: featbench ≥ 2.0× naive and ≥ 0.9× fastest.
The table's last column is how long the machine's CPU cores sat idle during each best round
(Linux's /proc/stat). On the CPU it is near nothing for the compiled plain forwards; in a build it
grows when other work takes one forward thread's core and the other thread waits for it (README).

    .venv/bin/python benchmarks/extraction_throughput.py --images ../shared/data/imagenet-samples

With ``--device cuda`` every forward (the references' and featbench's) runs on the GPU, and
decoding, manipulating and writing stay on the CPU, as in ``featbench build --device cuda``.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import datasets
import timm
import torch
import yaml
from tabulate import tabulate
from torch import nn

import featbench as fb
from featbench.zoo.backbones import compile_module, model_stages
from featbench.data.images import folder_source, seed_for, split_by_name, views
from featbench.core.paths import cache_dir
from featbench.data.storage import keep_freed_memory

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "imagenet-samples"
TARGET_NAIVE, TARGET_FASTEST = 2.0, 0.9


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    v1 = fb.load_suite("featbench-v1")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="image folder with SHA256SUMS")
    p.add_argument("-n", "--n-images", type=int, default=100, help="first N images of the folder")
    p.add_argument("--n-test", type=int, help="test images of the suite (default: N/5, as featbench-v1)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--layers", nargs="+", default=["blocks.2", "blocks.4", "blocks.6"])
    p.add_argument("--manipulations", nargs="*", default=[m.name for m in v1.manipulations])
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--repeats", type=int, default=1, help="timed rounds (best of each is reported)")
    p.add_argument("--device", default="cpu", help="where every forward runs: cpu (default) or cuda; the "
                                                   "references' batches are put there before their clocks start")
    return p.parse_args(argv)


# -- setup -----------------------------------------------------------------------------------------


def first_images(folder: Path, n: int, dest: Path) -> Path:
    """A folder of links to the first `n` images of `folder`, with their SHA256SUMS lines."""
    lines = [line for line in (folder / "SHA256SUMS").read_text().splitlines() if line.strip()]
    if len(lines) < n:
        raise SystemExit(f"{folder} holds {len(lines)} images, fewer than the {n} asked for")
    lines = lines[:n]
    dest.mkdir(parents=True)
    for line in lines:
        name = line.split(maxsplit=1)[1].lstrip("*")
        (dest / name).symlink_to(folder.resolve() / name)
    (dest / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return dest


def bench_suite(args: argparse.Namespace, images: Path, n_images: int, n_test: int, path: Path) -> fb.Suite:
    """featbench-v1's design over `images`, for one backbone and the chosen manipulations."""
    spec = yaml.safe_load(fb.load_suite("featbench-v1").path.read_text())
    spec.update(name=f"throughput-{path.stem}", split={"n_test": n_test}, views={"train": 1, "test": 1},
                backbones={args.backbone: args.layers}, manipulations=args.manipulations)
    spec["images"].update(default_path=str(images), n_images=n_images)
    path.write_text(yaml.safe_dump(spec))
    return fb.load_suite(path)


def use_cache(root: Path, assets_from: Path) -> None:
    """Point FEATBENCH_CACHE at an empty folder that shares the converted weights of `assets_from`."""
    root.mkdir(parents=True)
    for sub in ("assets", "sources"):
        (assets_from / sub).mkdir(parents=True, exist_ok=True)
        (root / sub).symlink_to(assets_from / sub)
    os.environ["FEATBENCH_CACHE"] = str(root)


# -- the references ------------------------------------------------------------------------------


def reference_batches(bb: fb.Backbone, suite: fb.Suite, images: Path, batch_size: int) -> tuple[list, int]:
    """Every variant of every image as normalised NCHW float32 batches (the last one padded)."""
    source = folder_source(images, labels="imagenet-wnid")
    pre = bb.spec.preprocessing
    rows = []
    for split in split_by_name(source.records, suite.n_test).values():
        for rec in split:
            px = next(views(source.open(rec), 1, pre.resize, pre.crop, pre.interpolation,
                            seed_for(suite.seed, rec.image_id)))[None]
            rows.append(bb.normalize(px))
            rows += [bb.normalize(m(px, [seed_for(suite.seed, rec.image_id, 0, m.name)])) for m in suite.manipulations]
    x = torch.cat(rows)
    n = len(x)
    pad = -n % batch_size
    x = torch.cat([x, x.new_zeros(pad, *x.shape[1:])])
    return list(x.split(batch_size)), n


def trunk(bb: fb.Backbone, layers: list[str], channels_last: bool) -> nn.Module:
    """A fresh copy of the timm model's modules, composed up to the deepest of `layers`."""
    model = copy.deepcopy(bb.model).to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    stages = model_stages(model)
    deepest = max(i for i, (name, _) in enumerate(stages) if name in layers)
    return nn.Sequential(*[s for _, s in stages[:deepest + 1]]).eval()


def idle_core_seconds() -> float:
    """CPU time this machine's cores have spent idle since boot (Linux's /proc/stat; NaN elsewhere)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return float("nan")
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")  # idle + iowait


def forward_timer(fn: Callable, batches: list[torch.Tensor], n_rows: int, channels_last: bool,
                  device: torch.device) -> Callable[[], tuple[float, float]]:
    """A function that times `fn` over all batches (after two warm-up calls); returns rows/s and
    the core-seconds the machine's cores sat idle meanwhile."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    batches = [b.to(device, memory_format=fmt) for b in batches]  # layout and place prepared outside the clock
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        fn(batches[0])
        fn(batches[0])
        sync()

    def run() -> tuple[float, float]:
        with torch.inference_mode():
            start, idle = time.perf_counter(), idle_core_seconds()
            for b in batches:
                fn(b)
            sync()
            return n_rows / (time.perf_counter() - start), idle_core_seconds() - idle

    return run


def keeping_freed_memory(run: Callable[[], tuple[float, float]]) -> Callable[[], tuple[float, float]]:
    """`run` with freed memory kept in the process, as featbench's builds do (glibc)."""

    def kept() -> tuple[float, float]:
        with keep_freed_memory():
            return run()

    return kept


# -- featbench -----------------------------------------------------------------------------------


def featbench_timer(args: argparse.Namespace, bb: fb.Backbone, suite: fb.Suite, images: Path,
                    work: Path, assets_from: Path) -> Callable[[], tuple[float, float]]:
    """A function that times a full build of `suite` in a fresh cache; returns units/s and the
    core-seconds the machine's cores sat idle meanwhile."""
    models = {args.backbone: bb}
    n_units = suite.images["n_images"] * (1 + len(suite.manipulations))
    rounds = itertools.count()

    def run() -> tuple[float, float]:
        cache = work / f"cache-{next(rounds)}"
        use_cache(cache, assets_from)
        start, idle = time.perf_counter(), idle_core_seconds()
        _, report = fb.build_suite(suite, images=images, custom=True, batch_size=args.batch_size,
                                   compile=True, progress=False, models=models, device=args.device)
        seconds, idle = time.perf_counter() - start, idle_core_seconds() - idle
        assert len(report.built) == len(args.layers) * (1 + len(suite.manipulations)), report.summary()
        shutil.rmtree(cache / "datasets")
        return n_units / seconds, idle

    return run


def warm_up(args: argparse.Namespace, bb: fb.Backbone, work: Path, assets_from: Path) -> float:
    """Build a two-image suite once, so that the timed builds reuse the compiled extractor."""
    images = first_images(args.images, 2, work / "warm-images")
    suite = bench_suite(args, images, 2, 1, work / "warm.yaml")
    use_cache(work / "cache-warm", assets_from)
    start = time.perf_counter()
    fb.build_suite(suite, images=images, custom=True, batch_size=args.batch_size, compile=True,
                   progress=False, models={args.backbone: bb}, device=args.device)
    return time.perf_counter() - start


# -- report --------------------------------------------------------------------------------------


def environment() -> str:
    return (f"python {platform.python_version()}, torch {torch.__version__}, timm {timm.__version__}, "
            f"datasets {datasets.__version__}, featbench {fb.__version__}; torch threads "
            f"{torch.get_num_threads()} (interop {torch.get_num_interop_threads()}), {os.cpu_count()} CPUs")


NAIVE, COMPILED = "naive (eager, NCHW, fp32)", "channels_last + compile"
FROZEN, FROZEN_KEPT = "  + freezing", "  + freezing, freed memory kept"
FEATBENCH = "featbench end-to-end"


def report(best: dict[str, tuple[float, float]]) -> str:
    """The table of each run's best round (units/s, and the cores' idle time in that round)."""
    rate = {name: r for name, (r, _) in best.items()}
    naive, ours = rate[NAIVE], rate[FEATBENCH]
    fastest = max(rate[COMPILED], rate[FROZEN], rate[FROZEN_KEPT])
    rows = [[name, r, r / naive, r / rate[COMPILED], r / fastest, idle] for name, (r, idle) in best.items()]
    # Idle core-seconds: cores with nothing to run, as when one forward thread waits for the other (README).
    table = tabulate(rows, headers=["", "units/s", "× naive", "× compile", "× fastest", "cores idle (s)"],
                     floatfmt=("", ".1f", ".2f", ".2f", ".2f", ".2f"))
    verdict = [f"featbench ≥ {TARGET_NAIVE}× naive: {'PASS' if ours / naive >= TARGET_NAIVE else 'FAIL'} "
               f"({ours / naive:.2f}×)",
               f"featbench ≥ {TARGET_FASTEST}× fastest: {'PASS' if ours / fastest >= TARGET_FASTEST else 'FAIL'} "
               f"({ours / fastest:.2f}×; {ours / rate[COMPILED]:.2f}× plain channels_last + compile)"]
    return "\n".join([table, *verdict])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (args.images / "SHA256SUMS").is_file():
        print(f"skipped: no image folder with SHA256SUMS at {args.images} (pass --images DIR)")
        return 0
    print(environment())
    # featbench's forward passes on CUDA run without TF32 (exact maps); the references likewise.
    torch.backends.cudnn.allow_tf32 = False
    assets_from = cache_dir()  # before FEATBENCH_CACHE is redirected: reuse the converted weights
    work = Path(tempfile.mkdtemp(prefix="featbench-throughput-"))
    try:
        n = args.n_images
        images = first_images(args.images, n, work / "images")
        suite = bench_suite(args, images, n, args.n_test or max(1, n // 5), work / "bench.yaml")
        bb = fb.load_backbone(args.backbone, compile=True, device=args.device)
        print(f"{args.backbone} on {bb.device} {' '.join(args.layers)}; {n} images × {1 + len(suite.manipulations)} variants; "
              f"batch {args.batch_size}; featbench warm-up (load + compile) {warm_up(args, bb, work, assets_from):.0f} s")
        batches, n_rows = reference_batches(bb, suite, images, args.batch_size)
        frozen = forward_timer(compile_module(trunk(bb, args.layers, True), freezing=True), batches, n_rows, True, bb.device)
        runs = {
            NAIVE: forward_timer(trunk(bb, args.layers, False), batches, n_rows, False, bb.device),
            COMPILED: forward_timer(compile_module(trunk(bb, args.layers, True), freezing=False), batches, n_rows, True,
                                    bb.device),
            FROZEN: frozen,
            FROZEN_KEPT: keeping_freed_memory(frozen),
            FEATBENCH: featbench_timer(args, bb, suite, images, work, assets_from),
        }
        best = {name: (0.0, 0.0) for name in runs}
        for r in range(args.repeats):  # rounds interleave the runs, so that drifting load hits all alike
            for name, run in runs.items():
                rate, idle = run()
                print(f"  round {r + 1}: {name}: {rate:.1f} units/s, cores idle {idle:.2f} s", flush=True)
                best[name] = max(best[name], (rate, idle))
        print(report(best))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
