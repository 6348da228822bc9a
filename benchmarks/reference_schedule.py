"""How far a reference baseline's training schedule needs to run: test r2 against the number of steps.

Fits a reference mapper (default: ``transformer``) on each task with its schedule set to each
``--steps`` count and no time budget (a plain step schedule, deterministic under the seed), and
prints the wall time, the step that validation kept, and the test r2, with the linear map's r2 as
the reference measured in the same run. This is how a declared budget is sized: to the schedule
past which more steps stop paying.

    python benchmarks/reference_schedule.py --suite featbench-v2 --steps 500,1000,1500 \\
        --tasks map/efficientnet_lite0/blocks.4/rot90,map/efficientnet_lite0/blocks.6/rot90
"""

from __future__ import annotations

import argparse
import torch

import featbench as fb
from featbench.core.plugins import resolve_model
from featbench.data.storage import load_task
from featbench.scoring.map_track import map_data, task_info
from featbench.scoring.metrics import score_maps
from featbench.scoring.runner import RunConfig
from featbench.scoring.submission import fit_and_predict


def fit_and_score(factory, train: fb.MapData, test: fb.MapData) -> tuple[dict, float, float]:
    """A fresh fit's ``describe()``, fit seconds and test r2, fitted and applied as `featbench run`
    does (without the child process)."""
    fitted = fit_and_predict(factory, train, test.x, test.x_prefix)
    return fitted.described, fitted.fit_s, score_maps(fitted.outputs["pred"], test.y, n_boot=0)["r2"].value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="featbench-v2")
    ap.add_argument("--model", default="transformer")
    ap.add_argument("--tasks", required=True, help="comma-separated task ids")
    ap.add_argument("--steps", default="500,1000,1500", help="comma-separated schedule lengths")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    suite = fb.load_suite(args.suite)
    cfg = RunConfig(time_budget_s=None)
    cls = resolve_model(args.model)
    linear = resolve_model("linear")
    print(f"{args.model} v{cls.version}, {args.threads} thread(s), no budget")
    print("task | steps | fit s | best step | stopped by | test r2 | linear r2")
    for task_id in args.tasks.split(","):
        task = suite.get_task(task_id)
        data = load_task(suite, task)
        info = task_info(suite, task, data, cfg)
        train, test = map_data(data.train, info), map_data(data.test, info)
        _, _, lin_r2 = fit_and_score(linear, train, test)
        for steps in map(int, args.steps.split(",")):
            schedule = type(f"{cls.__name__}{steps}", (cls,), {"max_steps": steps})
            d, fit_s, r2 = fit_and_score(schedule, train, test)
            print(f"{task_id} | {d['steps']} | {fit_s:.0f} | {d['best_step']} | {d['stopped_by']} | "
                  f"{r2:.4f} | {lin_r2:.4f}", flush=True)


if __name__ == "__main__":
    main()
