"""Are featbench's object-level edits semantic? efficientnet_lite0's top-1 on each edit of the pinned
images against its top-1 on the original, beside the local masks (issue 13), plus a PNG grid.

    python benchmarks/semantic_edits.py [--images N] [--grid docs/semantic_edits.png]

Each split is edited on its own (a background swap's partner comes from the same split), as
`featbench build` does. Prints, per manipulation, the share of images whose top-1 class changes,
the share whose top-1 still is the ImageNet label, and the mean share of pixels the edit changed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from PIL import Image

from featbench.data import get_manipulation, load_suite, split_by_name
from featbench.data.images import to_uint8
from featbench.data.storage import Chunk, decode_chunk, variant_pixels
from featbench.zoo.backbones import load_backbone

EDITS = ["object_removal", "object_only", "background_swap"]
MASKS = ["mask_center_big_blue", "mask_center_small_yellow", "mask_tl_red", "mask_br_green"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1000, help="first N images of each split, in proportion")
    ap.add_argument("--grid", default=None, help="write a PNG grid of the first 6 test images' edits here")
    ap.add_argument("--chunk", type=int, default=50)
    args = ap.parse_args()
    suite = load_suite("featbench-v1")
    source = suite.image_source()
    bb = load_backbone("efficientnet_lite0")
    names = EDITS + MASKS
    manipulations = [None] + [get_manipulation(n) for n in names]
    top1 = {n: [] for n in ["original"] + names}
    changed = {n: [] for n in names}
    labels = []
    start = time.time()
    splits = split_by_name(source.records, suite.n_test)
    total = sum(len(v) for v in splits.values())
    for split, records in splits.items():
        records = records[:max(1, round(args.images * len(records) / total))]
        for i in range(0, len(records), args.chunk):
            rows = decode_chunk(suite, source, bb, Chunk(split, i, tuple(records[i:i + args.chunk])))
            labels += rows.labels
            for name, px in zip(["original"] + names, variant_pixels(suite, rows, manipulations)):
                with torch.inference_mode():
                    top1[name].append(bb.model(bb.normalize(px)).argmax(-1))
                if name != "original":
                    changed[name].append((px != rows.pixels).any(1).float().mean((1, 2)))
            print(f"{split} {i + len(rows.ids)}/{len(records)} images, {time.time() - start:.0f} s", flush=True)
    orig = torch.cat(top1["original"])
    labels = torch.tensor(labels)
    print(f"\n{len(orig)} images, {time.time() - start:.0f} s; original top-1 accuracy {(orig == labels).float().mean():.3f}")
    print("| manipulation | top-1 changes | top-1 = label | pixels changed |\n|---|---|---|---|")
    for name in names:
        t = torch.cat(top1[name])
        print(f"| {name} | {(t != orig).float().mean():.3f} | {(t == labels).float().mean():.3f} "
              f"| {torch.cat(changed[name]).mean():.3f} |")
    if args.grid:
        write_grid(suite, source, bb, splits["test"][:6], args.grid)


def write_grid(suite, source, bb, records, path: str) -> None:
    rows = decode_chunk(suite, source, bb, Chunk("test", 0, tuple(records)))
    cols = [None] + [get_manipulation(n) for n in EDITS + ["mask_center_big_blue"]]
    tiles = [to_uint8(px) for px in variant_pixels(suite, rows, cols)]  # per column: N×3×H×W
    n, _, h, w = tiles[0].shape
    grid = torch.zeros(3, n * h, len(tiles) * w, dtype=torch.uint8)
    for c, col in enumerate(tiles):
        for r in range(n):
            grid[:, r * h:(r + 1) * h, c * w:(c + 1) * w] = col[r]
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path, quality=85)  # JPEG (by name): small enough for git
    print(f"wrote {path}: columns original, {', '.join(EDITS)}, mask_center_big_blue; rows {[r.image_id for r in records]}")


if __name__ == "__main__":
    main()
