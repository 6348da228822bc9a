"""`evaluate`: score one model on a suite from Python, as ``featbench run`` does on the command line.

    import featbench as fb
    result = fb.evaluate("linear", "mini")                                 # a registered name
    result = fb.evaluate(MyMapper, "featbench-v1", tasks="map/*/blocks.4/*")   # a class (or factory)
    result = fb.evaluate("decoder", "mini", track="invert")
    result = fb.evaluate("linear", "mini", executor="ray", ray_address="head-node:6379")  # on a Ray cluster

The returned dict is the result file's record (also written to `out`, default
``results/<suite>/results/<model>.json``, so a second call resumes instead of starting over).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, Callable

from featbench.core.errors import FeatbenchError
from featbench.core.plugins import INVERTERS, MAPPERS, resolve_model
from featbench.core.results import result_path
from featbench.data.storage import build_suite, is_built, variant_refs
from featbench.data.suites import Suite, Task, load_suite
from featbench.scoring.executors import Executor, make_executor
from featbench.scoring.invert_track import run_invert_track
from featbench.scoring.isolation import Isolation
from featbench.scoring.map_track import run_map_track
from featbench.scoring.runner import RunConfig, fit_budget


def model_factory(model: Any, track: str = "map") -> Callable[[], Any]:
    """A factory of fresh model instances: from a name or ``module:Class`` / ``file.py:Class`` spec,
    a class or factory function, or an instance (copied for every task, so no fit leaks into another)."""
    if isinstance(model, str):
        return resolve_model(model, group=INVERTERS if track == "invert" else MAPPERS)
    if isinstance(model, type) or (callable(model) and not hasattr(model, "fit")):
        return model
    return functools.partial(copy.deepcopy, model)  # picklable, for an isolated scoring process


def ensure_built(suite: Suite, tasks: list[Task], progress: bool = True) -> None:
    """Build a self-contained suite (images shipped with a dependency) whose tasks lack data; any
    other unbuilt suite is left to `featbench build` (its loading says so)."""
    if suite.images["kind"] != "package":  # checking others would hash gigabytes for nothing
        return
    unbuilt = {(t.backbone, t.layer) for t in tasks
               if not all(is_built(r) for r in variant_refs(suite, t.backbone, t.layer).values())}
    if unbuilt:
        if progress:
            print(f"building suite {suite.name} first (its images ship with a dependency)")
        report = build_suite(suite, compile=False)[1]
        if progress:
            print(report.summary())


def evaluate(model: Any, suite: Suite | str, tasks: str | None = None, *, track: str = "map",
             out: str | Path | None = None, out_dir: str | Path = "results", seed: int = 0, n_boot: int = 1000,
             time_budget_s: float | None = None, progress: bool = True,
             isolation: str | Isolation = "auto", executor: str | Executor = "local",
             ray_address: str | None = None, require_image_scores: bool = False,
             reuse: tuple[str | Path, ...] = ()) -> dict[str, Any]:
    """Fit and score `model` on the `track` tasks of `suite` that match `tasks` (a glob such as
    ``map/*/blocks.6/*``, or a substring; all by default), writing the result file after every task.
    `time_budget_s` caps each fit (default: `featbench.scoring.runner.fit_budget`). `isolation`:
    where the model's fit and predict run (`featbench.scoring.isolation`; a mode name or an
    `Isolation` with limits): by default a sandboxed child process that never sees the test targets. `executor`:
    ``local`` (here, one task after another), ``ray`` (fanned out over the Ray cluster at
    `ray_address`) or an `featbench.scoring.executors` executor such as ``RayExecutor(address,
    cpus_per_task=4)``. `require_image_scores`: a map task whose pinned image-score checkpoint is
    not at hand fails the run (by default it is scored at map level, with a note saying why;
    `featbench.scoring.image_scores`). `reuse`: earlier result files (or folders of them) whose
    records of the same model on tasks with the same hash are copied rather than fitted again
    (`featbench.scoring.runner.reuse_pool`)."""
    if track not in ("map", "invert"):
        raise FeatbenchError(f"unknown track {track!r}; choose map or invert")
    missing = [str(path) for path in reuse if not Path(path).exists()]
    if missing:  # before any build or fit
        raise FeatbenchError(f"--reuse: no such result file or folder: {', '.join(missing)}")
    if isinstance(executor, str):
        executor = make_executor(executor, ray_address)
    suite = suite if isinstance(suite, Suite) else load_suite(suite)
    selected = suite.select(tasks, track=track)
    ensure_built(suite, selected, progress)
    factory = model_factory(model, track)
    cfg = RunConfig(seed=seed, n_boot=n_boot,
                    time_budget_s=fit_budget(factory, time_budget_s, suite.run_defaults.get("time_budget_s")),
                    isolation=isolation if isinstance(isolation, Isolation) else Isolation(isolation),
                    require_image_scores=require_image_scores, reuse=tuple(reuse))
    if out is None:
        probe = None if isinstance(model, str) else factory()
        name = model if probe is None else getattr(probe, "name", type(probe).__name__)
        out = result_path(out_dir, name, suite.name)
    run = run_invert_track if track == "invert" else run_map_track
    return run(factory, suite, selected, out, cfg, progress, executor)
