"""What each track is ranked and summarised on, and the tables a run prints at its end.

`HEADLINE` is shared by the run's summary and the leaderboard (`featbench.board`), so that what a
user sees after a run is what the board ranks on.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from tabulate import tabulate

TRACKS = ("map", "invert")
# The scores a track is ranked and summarised on; those no result reports are left out of the
# tables. emb_cos is the semantic score of backbones without a classification head (no top1_agree).
HEADLINE = {
    "map": ("r2", "cos_median", "top1_agree", "emb_cos", "lpips_vs_manipulated"),  # the last: image level
    "invert": ("lpips", "lpips_gap", "ssim", "top1_agree", "feat_cos"),
}
LOWER_IS_BETTER = frozenset({"mse", "jsd", "lpips", "lpips_vs_manipulated", "lpips_vs_inverted_target", "mse_changed",
                             "lpips_vs_manipulated_changed", "lpips_vs_inverted_target_changed", "top1_prob_delta"})
CATEGORY_ORDER = ("geometric", "photometric", "local", "semantic")
# The map track's run summary: its feature-space headline scores (image-level ones are on the board).
MAP_SUMMARY = HEADLINE["map"][:4]


def mean_or_none(values: list[float | None]) -> float | None:
    """The mean of the values that are not None; None if there are none."""
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def map_summary_table(results: list[dict[str, Any]]) -> str:
    """One row per model and manipulation category: mean headline scores over its tasks."""
    rows = []
    for res in results:
        by_cat: dict[str, list[dict]] = {}
        for t in res["tasks"]:
            by_cat.setdefault(t["category"] or "-", []).append(t)
        for cat, tasks in sorted(by_cat.items()):
            ok = [t for t in tasks if t["status"] == "ok"]
            row = [res["model"]["name"], cat, f"{len(ok)}/{len(tasks)}"]
            row += [mean_or_none([t["metrics"].get(m, {}).get("value") for t in ok]) for m in MAP_SUMMARY]
            rows.append(row + [mean_or_none([t["fit_s"] for t in ok])])
    return tabulate(rows, headers=["model", "category", "tasks ok", *MAP_SUMMARY, "fit s"], floatfmt=".3f",
                    missingval="-")


def invert_summary_table(results: list[dict[str, Any]]) -> str:
    """One row per model (mean headline scores over its invert tasks), then the reference points."""
    headline = HEADLINE["invert"]

    def row(name: str, tasks: list[dict], get: Callable[[dict], dict]) -> list:
        ok = [t for t in tasks if t["status"] == "ok"]
        means = [mean_or_none([get(t).get(m, {}).get("value") for t in ok]) for m in headline]
        return [name, f"{len(ok)}/{len(tasks)}", *means, mean_or_none([t["predict_per_s"] for t in ok])]

    rows = [row(r["model"]["name"], r["tasks"], lambda t: t["metrics"]) for r in results]
    refs = sorted({name for r in results for t in r["tasks"] for name in t["reference_points"]})
    for name in refs:
        for r in results[:1] if name != "unconditional" else results:
            tasks = [t for t in r["tasks"] if name in t["reference_points"]]
            label = f"({name})" if name != "unconditional" else f"({r['model']['name']}, unconditional)"
            if tasks:
                rows.append(row(label, tasks, lambda t, n=name: t["reference_points"][n])[:-1] + [None])
    return tabulate(rows, headers=["model", "tasks ok", *headline, "images/s"], floatfmt=".3f", missingval="-")
