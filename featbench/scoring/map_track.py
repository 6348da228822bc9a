"""The map-track evaluator: fit a mapper on each task's training split, score its test predictions.

For each task: a fresh mapper is fitted (timed, under the task's time budget), predicts the test
split in batches (timed), and is scored against the targets: map metrics (mse, r2, cos_median),
semantic fidelity through the backbone's tail (top1_agree / jsd / top1_acc with a head,
emb_cos / retrieval_agree without), each with a seeded bootstrap interval over test images, and,
where the suite pins an inverter for the task's layer, image-level scores (`featbench.scoring.image_scores`);
the `identity` and, for geometric manipulations, `spatial` reference points are scored beside it.
The mapper's fit and predict run in an isolated child process by default (`featbench.scoring.isolation`:
it gets the training pairs, the `TaskInfo` and the test inputs, never the targets; this process
scores), and each record says how (``scoring``: isolation mode and whether the suite's test targets
are published). A mapper that raises, overruns its budget or a limit of its process, or returns a
wrong shape, a wrong dtype, NaN or inf fails that task with the reason recorded; the run goes on. The result file is rewritten after
every task (`featbench.scoring.runner.run_tasks`), so an interrupted run resumes from the tasks
already scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from featbench.core.cache import cached_json
from featbench.core.errors import FeatbenchError
from featbench.core.hashing import sha256_json, sha256_tensors
from featbench.core.paths import cache_dir
from featbench.data.images import seed_for
from featbench.data.storage import TaskData, column_tensor, load_task
from featbench.data.targets import changed_cells
from featbench.data.suites import Suite, Task
from featbench.interfaces.mapper import MapData, Mapper, TaskInfo
from featbench.scoring import image_scores, metrics
from featbench.scoring.executors import Executor
from featbench.scoring.isolation import pickled_factory
from featbench.core.results import TaskRecord
from featbench.scoring.runner import (Models, RunConfig, failed_submission, isolated_fit, model_identity,
                                      new_task_record, record_described, run_tasks, scoring_mode)
from featbench.scoring.submission import Fitted, check_prediction, fit_and_predict

# Bump when the metrics change, so cached scores are recomputed.
SCORE_CACHE_VERSION = 1
DESCRIBED_KEYS = ("stopped_by", "ridge", "epochs", "steps", "best_step", "retry")  # recorded from a mapper's describe()


def task_info(suite: Suite, task: Task, data: TaskData, cfg: RunConfig) -> TaskInfo:
    x = data.train.features["x"].shape
    prefix = data.train.features["x_prefix"].shape if "x_prefix" in data.train.column_names else None
    return TaskInfo(task.id, task.backbone, task.layer, tuple(x), prefix and tuple(prefix), task.manipulation,
                    seed_for(cfg.seed, task.id), cfg.time_budget_s)


def map_data(ds, info: TaskInfo) -> MapData:
    return MapData(info, column_tensor(ds, "x"), column_tensor(ds, "y"), list(ds["image_id"]),
                   column_tensor(ds, "x_prefix"), column_tensor(ds, "y_prefix"))


@dataclass(frozen=True)
class ScoreExtras:
    """What the scores a suite adds (``scores:`` in its file) need beyond P and Y: the tail output of
    the original maps X (``semantic``, backbones with a head) and the changed grid cells
    (``changed_region``, local and semantic tasks). ``key`` names both in the score cache."""

    original_logits: torch.Tensor | None = None
    changed: torch.Tensor | None = None

    @property
    def key(self) -> list[str | None]:
        return [None if t is None else sha256_tensors({"t": t}) for t in (self.original_logits, self.changed)]


def score_extras(suite: Suite, task: Task, data: TaskData, tails: Models, test: MapData) -> ScoreExtras:
    """The inputs of the suite's extra scores that apply to `task` (none for most suites)."""
    original_logits = changed = None
    backbone = tails.backbone(task.backbone)
    if "semantic" in suite.extra_scores and backbone.spec.has_head:
        original_logits = tails.target(task, data.record["x"]["key"], test.x, test.x_prefix)
    if suite.scores_changed_region(task):
        rows = list(zip(data.test["image_id"], [int(v) for v in data.test["view"]]))
        changed = changed_cells(suite, task, backbone, rows, tuple(test.y.shape[-2:]))
    return ScoreExtras(original_logits, changed)


def _scores(task: Task, tails: Models, pred: torch.Tensor, pred_prefix, y: torch.Tensor, y_prefix,
            target_key: str, labels: torch.Tensor, cfg: RunConfig, extras: ScoreExtras = ScoreExtras()
            ) -> dict[str, dict]:
    """The scores of `pred`, cached on disk by a hash of the prediction itself: they depend on
    nothing else but the task's targets, the extra scores' inputs and the bootstrap settings, so
    the identity and spatial reference points, and models that predict them (`identity`,
    `spatial`), cost one tail pass per task, not one per model."""
    key = [sha256_tensors({"pred": pred, **({"prefix": pred_prefix} if pred_prefix is not None else {})}),
           target_key, task.id, cfg.seed, cfg.n_boot, SCORE_CACHE_VERSION]
    if extras != ScoreExtras():  # only then, so that the cached scores of other suites keep their keys
        key.append(extras.key)

    def make() -> dict[str, dict]:
        seed = seed_for(cfg.seed, task.id, "bootstrap")
        out = metrics.score_maps(pred, y, n_boot=cfg.n_boot, seed=seed)
        tp = tails.run(task, pred, pred_prefix)
        ty = tails.target(task, target_key, y, y_prefix)
        if tails.backbone(task.backbone).spec.has_head:
            out |= metrics.score_logits(tp, ty, labels, n_boot=cfg.n_boot, seed=seed)
        else:
            out |= metrics.score_embeddings(tp, ty, n_boot=cfg.n_boot, seed=seed)
        if extras.original_logits is not None:
            out |= metrics.score_semantic(tp, ty, extras.original_logits, n_boot=cfg.n_boot, seed=seed)
        if extras.changed is not None:
            out |= metrics.score_changed_region(pred, y, extras.changed, n_boot=cfg.n_boot, seed=seed)
        return {k: v.to_dict() for k, v in out.items()}

    return cached_json(cache_dir() / "scores" / f"{sha256_json(key)}.json", make)


def _reference_points(task: Task, tails: Models, test: MapData, target_key: str, labels: torch.Tensor,
                      cfg: RunConfig, images: image_scores.ImageScorer | None = None,
                      extras: ScoreExtras = ScoreExtras()) -> dict[str, dict]:
    """identity (P = X) and, for geometric manipulations, spatial (P = the exact grid action of X)."""
    refs = {"identity": test.x}
    if task.manipulation.is_geometric:
        refs["spatial"] = task.manipulation.grid_action(test.x)
    return {name: _scores(task, tails, pred, test.x_prefix, test.y, test.y_prefix, target_key, labels, cfg, extras)
            | (images.score(pred, test.x_prefix) if images else {}) for name, pred in refs.items()}


def _info_meta(info: TaskInfo) -> dict[str, Any]:
    m = info.manipulation
    return {"task_id": info.task_id, "backbone": info.backbone, "layer": info.layer, "shape": list(info.shape),
            "prefix_shape": None if info.prefix_shape is None else list(info.prefix_shape),
            "manipulation": {"name": m.name, "params": m.spec()["params"]}, "seed": info.seed,
            "time_budget_s": info.time_budget_s}


def fit_and_predict_isolated(factory_bytes: bytes, train: MapData, test_x: torch.Tensor,
                             test_prefix: torch.Tensor | None, cfg: RunConfig, mode: str,
                             record: TaskRecord) -> Fitted:
    """`fit_and_predict` in a child process (`mode` ``sandbox`` or ``process``) that is sent the
    training pairs, the task's metadata and the test inputs alone; its predictions are checked
    here again, and a ``linear`` account comes back as (W, b)."""
    tensors = {"train_x": train.x, "train_y": train.y, "train_x_prefix": train.x_prefix,
               "train_y_prefix": train.y_prefix, "test_x": test_x, "test_x_prefix": test_prefix}
    fitted = isolated_fit("featbench.scoring.submission:map_child_job", factory_bytes, tensors,
                          {"info": _info_meta(train.info), "image_ids": train.image_ids},
                          train.info.time_budget_s, len(test_x), cfg, mode, record)
    out = fitted.outputs
    if "pred" not in out:
        raise FeatbenchError("the scoring process returned no predictions")
    predicted = out.get("pred_prefix")
    pred, pred_prefix = check_prediction(out["pred"] if predicted is None else (out["pred"], predicted), test_x,
                                         test_prefix)
    fitted.outputs = {"pred": pred} | ({"pred_prefix": pred_prefix} if pred_prefix is not None else {})
    if "linear.W" in out and "linear.b" in out:
        fitted.described["linear"] = (out["linear.W"], out["linear.b"])
    return fitted


def evaluate_map_task(factory: Callable[[], Mapper], suite: Suite, task: Task, cfg: RunConfig,
                      tails: Models | None = None, references: bool = True, mode: str | None = None,
                      factory_bytes: bytes | None = None) -> TaskRecord:
    """Fit and score one (task, model); returns its task record (status "ok" or "failed").

    `mode` is ``cfg.isolation.resolved()`` and `factory_bytes` the pickled factory
    (`featbench.scoring.isolation.pickled_factory`), both found here unless a run passes them once."""
    tails = tails or Models()
    mode = mode or cfg.isolation.resolved()
    data = load_task(suite, task)
    info = task_info(suite, task, data, cfg)
    record = new_task_record(task, data, cfg)
    record.scoring = scoring_mode(suite, mode)
    train, test = map_data(data.train, info), map_data(data.test, info)
    labels = torch.tensor(data.test["label"])
    target_key = data.record["y"]["key"]
    images = image_scores.for_task(suite, task, data, tails, cfg, record)  # the suite's pinned inverter
    extras = score_extras(suite, task, data, tails, test)
    if references:
        record.reference_points = _reference_points(task, tails, test, target_key, labels, cfg, images, extras)
    try:
        if mode == "none":
            fitted = fit_and_predict(factory, train, test.x, test.x_prefix)
        else:
            factory_bytes = factory_bytes or pickled_factory(factory)
            fitted = fit_and_predict_isolated(factory_bytes, train, test.x, test.x_prefix, cfg, mode, record)
    except Exception as exc:
        return failed_submission(record, exc)
    record.fit_s, record.predict_per_s = fitted.fit_s, fitted.per_s
    if test.x_prefix is not None and "pred_prefix" not in fitted.outputs:
        record.notes.append("the mapper predicts no class-token prefix: the source's prefix was carried over")
    pred, pred_prefix = fitted.outputs["pred"], fitted.outputs.get("pred_prefix", test.x_prefix)
    record.metrics = _scores(task, tails, pred, pred_prefix, test.y, test.y_prefix, target_key, labels, cfg, extras)
    if images:
        record.metrics |= images.score(pred, pred_prefix)
    described = record_described(record, fitted.described, DESCRIBED_KEYS)
    if "linear" in described:
        W, b = described["linear"]
        record.linear_structure = metrics.linear_structure(W, b, test.x)
    record.status = "ok"
    return record


def run_map_track(factory: Callable[[], Mapper], suite: Suite, tasks: list[Task], out: str | Path,
                  cfg: RunConfig, progress: bool = True, executor: Executor | None = None) -> dict[str, Any]:
    """Evaluate `tasks` (those of the mapper's `categories`), writing the result file `out` after
    each one; resumes from `out`. `executor`: where the fits run (default: here, in turn)."""
    categories = getattr(factory, "categories", None)
    if categories is not None:
        tasks = [t for t in tasks if t.category in categories]
    tails = Models()
    mode = cfg.isolation.resolved()
    factory_bytes = None if mode == "none" else pickled_factory(factory)  # fails at once for a model that cannot go

    def evaluate(task: Task) -> TaskRecord:
        return evaluate_map_task(factory, suite, task, cfg, tails, mode=mode, factory_bytes=factory_bytes)

    def reusable(task: Task, rec: TaskRecord) -> bool:  # a kept record must have been scored the way this run scores
        return rec.scoring == scoring_mode(suite, mode) and image_scores.record_is_current(suite, task, rec)

    return run_tasks("map", model_identity(factory), evaluate, suite, tasks, out, cfg, progress, device="cpu",
                     reusable=reusable, executor=executor)


