"""The map-track evaluator: fit a mapper on each task's training split, score its test predictions.

For each task: a fresh mapper is fitted (timed, under the task's time budget), predicts the test
split in batches (timed), and is scored against the targets: map metrics (mse, r2, cos_median),
semantic fidelity through the backbone's tail (top1_agree / jsd / top1_acc with a head,
emb_cos / retrieval_agree without), each with a seeded bootstrap interval over test images, and,
where the suite pins an inverter for the task's layer, image-level scores (`featbench.scoring.image_scores`);
the `identity` and, for geometric manipulations, `spatial` reference points are scored beside it.
A mapper that raises, overruns its budget, or returns a wrong shape, a wrong dtype, NaN or inf
fails that task with the reason recorded; the run goes on. The result file is rewritten after
every task (`featbench.scoring.runner.run_tasks`), so an interrupted run resumes from the tasks
already scored.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from featbench.core.cache import cached_json
from featbench.core.errors import FeatbenchError
from featbench.core.hashing import sha256_json, sha256_tensors
from featbench.core.paths import cache_dir
from featbench.data.images import seed_for
from featbench.data.storage import TaskData, column_tensor, load_task
from featbench.data.suites import Suite, Task
from featbench.interfaces.mapper import MapData, Mapper, TaskInfo, with_prefix
from featbench.scoring import image_scores, metrics
from featbench.scoring.executors import Executor
from featbench.scoring.runner import (BATCH, Models, RunConfig, model_identity, new_task_record, record_description,
                                      run_tasks, seed_everything, timed_fit)

# Bump when the metrics change, so cached scores are recomputed.
SCORE_CACHE_VERSION = 1


def task_info(suite: Suite, task: Task, data: TaskData, cfg: RunConfig) -> TaskInfo:
    x = data.train.features["x"].shape
    prefix = data.train.features["x_prefix"].shape if "x_prefix" in data.train.column_names else None
    return TaskInfo(task.id, task.backbone, task.layer, tuple(x), prefix and tuple(prefix), task.manipulation,
                    seed_for(cfg.seed, task.id), cfg.time_budget_s)


def map_data(ds, info: TaskInfo) -> MapData:
    return MapData(info, column_tensor(ds, "x"), column_tensor(ds, "y"), list(ds["image_id"]),
                   column_tensor(ds, "x_prefix"), column_tensor(ds, "y_prefix"))


def check_prediction(pred: Any, x: torch.Tensor, prefix: torch.Tensor | None):
    """(maps, predicted prefix or None) after checking type, shape, dtype and finiteness."""
    pred_prefix = None
    if isinstance(pred, tuple):
        if len(pred) != 2:
            raise FeatbenchError(f"predict returned a tuple of {len(pred)}; expected maps or (maps, prefix)")
        pred, pred_prefix = pred
    for what, got, want in (("maps", pred, x), ("prefix", pred_prefix, prefix)):
        if got is None:
            continue
        if want is None:
            raise FeatbenchError("predict returned a prefix, but this backbone's maps have none")
        if not isinstance(got, torch.Tensor):
            raise FeatbenchError(f"predict returned {type(got).__name__} {what}; expected a torch.Tensor")
        if tuple(got.shape) != tuple(want.shape):
            raise FeatbenchError(f"predict returned {what} of shape {tuple(got.shape)}; expected {tuple(want.shape)}")
        if not got.is_floating_point():
            raise FeatbenchError(f"predict returned {what} of dtype {got.dtype}; expected a floating dtype")
        if not torch.isfinite(got).all():
            bad = int((~torch.isfinite(got)).sum())
            raise FeatbenchError(f"predict returned {bad} non-finite values (NaN or inf) in its {what}")
    return pred.detach().float(), None if pred_prefix is None else pred_prefix.detach().float()


def predict_all(mapper: Mapper, x: torch.Tensor, prefix: torch.Tensor | None):
    maps, prefixes, any_prefix = [], [], False
    for i in range(0, len(x), BATCH):
        xb = x[i:i + BATCH].clone()
        pb = None if prefix is None else prefix[i:i + BATCH].clone()
        with torch.inference_mode():
            m, p = check_prediction(mapper.predict(with_prefix(xb, pb)), xb, pb)
        maps.append(m)
        any_prefix |= p is not None
        prefixes.append(p if p is not None else pb)
    return torch.cat(maps), (torch.cat(prefixes) if prefix is not None else None), any_prefix


def _scores(task: Task, tails: Models, pred: torch.Tensor, pred_prefix, y: torch.Tensor, y_prefix,
            target_key: str, labels: torch.Tensor, cfg: RunConfig) -> dict[str, dict]:
    """The scores of `pred`, cached on disk by a hash of the prediction itself: they depend on
    nothing else but the task's targets and the bootstrap settings, so the identity and spatial
    reference points, and models that predict them (`identity`, `spatial`), cost one tail pass
    per task, not one per model."""
    key = sha256_json([sha256_tensors({"pred": pred, **({"prefix": pred_prefix} if pred_prefix is not None else {})}),
                       target_key, task.id, cfg.seed, cfg.n_boot, SCORE_CACHE_VERSION])
    def make() -> dict[str, dict]:
        seed = seed_for(cfg.seed, task.id, "bootstrap")
        out = metrics.score_maps(pred, y, n_boot=cfg.n_boot, seed=seed)
        tp = tails.run(task, pred, pred_prefix)
        ty = tails.target(task, target_key, y, y_prefix)
        if tails.backbone(task.backbone).spec.has_head:
            out |= metrics.score_logits(tp, ty, labels, n_boot=cfg.n_boot, seed=seed)
        else:
            out |= metrics.score_embeddings(tp, ty, n_boot=cfg.n_boot, seed=seed)
        return {k: v.to_dict() for k, v in out.items()}

    return cached_json(cache_dir() / "scores" / f"{key}.json", make)


def _reference_points(task: Task, tails: Models, test: MapData, target_key: str, labels: torch.Tensor,
                      cfg: RunConfig, images: image_scores.ImageScorer | None = None) -> dict[str, dict]:
    """identity (P = X) and, for geometric manipulations, spatial (P = the exact grid action of X)."""
    refs = {"identity": test.x}
    if task.manipulation.is_geometric:
        refs["spatial"] = task.manipulation.grid_action(test.x)
    return {name: _scores(task, tails, pred, test.x_prefix, test.y, test.y_prefix, target_key, labels, cfg)
            | (images.score(pred, test.x_prefix) if images else {}) for name, pred in refs.items()}


def evaluate_map_task(factory: Callable[[], Mapper], suite: Suite, task: Task, cfg: RunConfig,
                      tails: Models | None = None, references: bool = True) -> dict[str, Any]:
    """Fit and score one map task; returns its task record (status "ok" or "failed")."""
    tails = tails or Models()
    data = load_task(suite, task)
    info = task_info(suite, task, data, cfg)
    record = new_task_record(task, data, cfg)
    train, test = map_data(data.train, info), map_data(data.test, info)
    labels = torch.tensor(data.test["label"])
    target_key = data.record["y"]["key"]
    images = image_scores.for_task(suite, task, data, tails, cfg)  # the suite's pinned inverter, if any
    if images:
        record["notes"].append(images.note)
    if references:
        record["reference_points"] = _reference_points(task, tails, test, target_key, labels, cfg, images)
    try:
        seed_everything(info.seed)
        mapper = factory()
        record["fit_s"] = timed_fit(lambda: mapper.fit(train), cfg.time_budget_s)
        start = time.perf_counter()
        pred, pred_prefix, predicted_prefix = predict_all(mapper, test.x, test.x_prefix)
        record["predict_per_s"] = round(len(test) / max(time.perf_counter() - start, 1e-9), 2)
    except Exception as exc:  # a bad submission fails its task, never the run
        record["status"] = "failed"
        record["reason"] = f"{type(exc).__name__}: {exc}"
        record["notes"].append(traceback.format_exc(limit=3)[-2000:])
        return record
    if test.x_prefix is not None and not predicted_prefix:
        record["notes"].append("the mapper predicts no class-token prefix: the source's prefix was carried over")
    record["metrics"] = _scores(task, tails, pred, pred_prefix, test.y, test.y_prefix, target_key, labels, cfg)
    if images:
        record["metrics"] |= images.score(pred, pred_prefix)
    described = record_description(record, mapper, ("stopped_by", "ridge", "epochs", "steps"))
    if "linear" in described:
        W, b = described["linear"]
        record["linear_structure"] = metrics.linear_structure(W, b, test.x)
    record["status"] = "ok"
    return record


def run_map_track(factory: Callable[[], Mapper], suite: Suite, tasks: list[Task], out: str | Path,
                  cfg: RunConfig, progress: bool = True, executor: Executor | None = None) -> dict[str, Any]:
    """Evaluate `tasks` (those of the mapper's `categories`), writing the result file `out` after
    each one; resumes from `out`. `executor`: where the fits run (default: here, in turn)."""
    categories = getattr(factory, "categories", None)
    if categories is not None:
        tasks = [t for t in tasks if t.category in categories]
    tails = Models()
    return run_tasks("map", model_identity(factory), lambda task: evaluate_map_task(factory, suite, task, cfg, tails),
                     suite, tasks, out, cfg, progress, device="cpu",
                     reusable=lambda task, rec: image_scores.record_is_current(suite, task, rec), executor=executor)


