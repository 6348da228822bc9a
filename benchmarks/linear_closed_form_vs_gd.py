"""Fit the `linear` baseline in closed form and by gradient descent on the same featbench task.

Prints both fit times and test r2 (the same data, the same shared per-position affine map y = Wx + b).
The gradient-descent fit uses FeatMap's recipe (0.3·MSE + 0.7·(1 − median cosine), AdamW 1e-4,
plateau schedule, early stopping) through the baselines' own trainer.

    python benchmarks/linear_closed_form_vs_gd.py --task map/efficientnet_lite0/blocks.6/hue60
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import featbench as fb
from baselines.linear import Linear
from baselines.training import FeatbenchRecipe
from featbench.scoring import metrics
from featbench.scoring.map_track import map_data, task_info
from featbench.scoring.runner import RunConfig


class LinearGD(FeatbenchRecipe):
    """The same affine per-position map, trained by gradient descent."""

    name = "linear-gd"

    def build(self, info: fb.TaskInfo) -> nn.Module:
        return nn.Linear(info.shape[0], info.shape[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="featbench-v1")
    parser.add_argument("--task", default="map/efficientnet_lite0/blocks.6/hue60")
    parser.add_argument("--budget", type=float, default=900, help="wall-time cap for the gradient fit (s)")
    args = parser.parse_args()

    suite = fb.load_suite(args.suite)
    task = suite.get_task(args.task)
    data = fb.load_task(suite, task)
    info = task_info(suite, task, data, RunConfig(time_budget_s=args.budget))
    train, test = map_data(data.train, info), map_data(data.test, info)
    rows = []
    for mapper in (Linear(), LinearGD()):
        torch.manual_seed(info.seed)
        start = time.perf_counter()
        mapper.fit(train)
        fit_s = time.perf_counter() - start
        with torch.inference_mode():
            pred = mapper.predict(test.x)
        pred = pred[0] if isinstance(pred, tuple) else pred
        r2 = metrics.score_maps(pred, test.y, n_boot=0)["r2"].value
        rows.append((mapper.name, fit_s, r2))
        print(f"{mapper.name:10s} fit {fit_s:8.2f} s   test r2 {r2:.4f}   {mapper.describe().get('stopped_by', '')}")
    (_, t_cf, r2_cf), (_, t_gd, r2_gd) = rows
    print(f"task {task.id}, {len(train)} train / {len(test)} test maps, {torch.get_num_threads()} threads")
    print(f"closed form: {t_gd / t_cf:.1f}x faster, r2 {r2_cf - r2_gd:+.4f} against gradient descent")


if __name__ == "__main__":
    main()
