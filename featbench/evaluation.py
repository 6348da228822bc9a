"""The map-track evaluator: fit a mapper on each task's training split, score its test predictions.

For each task: a fresh mapper is fitted (timed, under the task's time budget), predicts the test
split in batches (timed), and is scored against the targets: map metrics (mse, r2, cos_median),
semantic fidelity through the backbone's tail (top1_agree / jsd / top1_acc with a head,
emb_cos / retrieval_agree without), each with a seeded bootstrap interval over test images, and,
where the suite pins an inverter for the task's layer, image-level scores (`featbench.image_scores`);
the `identity` and, for geometric manipulations, `spatial` reference points are scored beside it.
A mapper that raises, overruns its budget, or returns a wrong shape, a wrong dtype, NaN or inf
fails that task with the reason recorded; the run goes on. The result file is rewritten after
every task, so an interrupted run resumes from the tasks already scored.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

import featbench
from featbench import image_scores, metrics
from featbench.backbones import Backbone, load_backbone
from featbench.errors import FeatbenchError
from featbench.hashing import sha256_json, sha256_tensors
from featbench.images import seed_for
from featbench.paths import cache_dir
from featbench.mappers import MapData, Mapper, TaskInfo, source_sha256
from featbench.results import (ResultError, check_writable, environment_info, git_commit, read_result, run_identity,
                               write_result)
from featbench.storage import TaskData, column_array, load_task
from featbench.suites import Suite, Task

PREDICT_BATCH = 64
# Bump when the metrics change, so cached scores are recomputed.
SCORE_CACHE_VERSION = 1
# A fit may overrun its budget by this much (the mapper is told the budget and should stop in
# time; the grace absorbs the last step) before it is interrupted and the task fails.
BUDGET_GRACE = 1.25


@dataclass
class RunConfig:
    seed: int = 0
    n_boot: int = 1000
    time_budget_s: float | None = None  # per task; None: no limit


class BudgetExceeded(FeatbenchError):
    pass


def hard_limit(budget_s: float | None) -> float | None:
    """When a fit given `budget_s` seconds is interrupted."""
    return None if budget_s is None else budget_s * BUDGET_GRACE + 5


@contextlib.contextmanager
def _deadline(budget_s: float | None):
    """Interrupt the body at `hard_limit(budget_s)` (main thread only; elsewhere checked afterwards)."""
    seconds = hard_limit(budget_s)
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise BudgetExceeded(f"fit interrupted after {seconds:.0f} s: over its time budget ({budget_s:g} s)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def timed_fit(fit: Callable[[], Any], budget_s: float | None) -> float:
    """Run `fit` under its time budget; its wall seconds, or `BudgetExceeded` past the hard limit."""
    start = time.perf_counter()
    with _deadline(budget_s):
        fit()
    fit_s = round(time.perf_counter() - start, 3)
    limit = hard_limit(budget_s)
    if limit is not None and fit_s > limit:  # where no alarm could interrupt it (not the main thread)
        raise BudgetExceeded(f"fit took {fit_s:.0f} s, over its time budget ({budget_s:g} s)")
    return fit_s


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _as_tensor(ds, column: str) -> torch.Tensor | None:
    if column not in ds.column_names:
        return None
    return torch.from_numpy(column_array(ds, column)).float()


def task_info(suite: Suite, task: Task, data: TaskData, cfg: RunConfig) -> TaskInfo:
    x = data.train.features["x"].shape
    prefix = data.train.features["x_prefix"].shape if "x_prefix" in data.train.column_names else None
    return TaskInfo(task.id, task.backbone, task.layer, tuple(x), prefix and tuple(prefix), task.manipulation,
                    seed_for(cfg.seed, task.id), cfg.time_budget_s)


def map_data(ds, info: TaskInfo) -> MapData:
    return MapData(info, _as_tensor(ds, "x"), _as_tensor(ds, "y"), list(ds["image_id"]),
                   _as_tensor(ds, "x_prefix"), _as_tensor(ds, "y_prefix"))


def _with_prefix(x: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
    if prefix is not None:
        x.prefix = prefix
    return x


def _check_prediction(pred: Any, x: torch.Tensor, prefix: torch.Tensor | None):
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


def _predict_all(mapper: Mapper, x: torch.Tensor, prefix: torch.Tensor | None):
    maps, prefixes, any_prefix = [], [], False
    for i in range(0, len(x), PREDICT_BATCH):
        xb = x[i:i + PREDICT_BATCH].clone()
        pb = None if prefix is None else prefix[i:i + PREDICT_BATCH].clone()
        with torch.inference_mode():
            m, p = _check_prediction(mapper.predict(_with_prefix(xb, pb)), xb, pb)
        maps.append(m)
        any_prefix |= p is not None
        prefixes.append(p if p is not None else pb)
    return torch.cat(maps), (torch.cat(prefixes) if prefix is not None else None), any_prefix


class _Tails:
    """Backbones, loaded once per run, and the tail outputs of each task's test targets (cached
    on disk by the targets' data key: every model's run of a task needs the same ones)."""

    def __init__(self):
        self.backbones: dict[str, Backbone] = {}
        self.inverters: dict = {}  # the suite's pinned inverters for image-level scores, loaded once

    def backbone(self, name: str) -> Backbone:
        if name not in self.backbones:
            self.backbones[name] = load_backbone(name)
        return self.backbones[name]

    def run(self, task: Task, maps: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
        bb = self.backbone(task.backbone)
        return torch.cat([bb.tail(task.layer, maps[i:i + PREDICT_BATCH],
                                  None if prefix is None else prefix[i:i + PREDICT_BATCH])
                          for i in range(0, len(maps), PREDICT_BATCH)])

    def target(self, task: Task, key: str, maps: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
        path = cache_dir() / "tails" / f"{key}.safetensors"
        if path.is_file():
            return load_file(path)["out"]
        out = self.run(task, maps, prefix)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        save_file({"out": out.contiguous()}, str(tmp))
        os.replace(tmp, path)
        return out


def _scores(task: Task, tails: _Tails, pred: torch.Tensor, pred_prefix, y: torch.Tensor, y_prefix,
            target_key: str, labels: torch.Tensor, cfg: RunConfig) -> dict[str, dict]:
    """The scores of `pred`, cached on disk by a hash of the prediction itself: they depend on
    nothing else but the task's targets and the bootstrap settings, so the identity and spatial
    reference points, and models that predict them (`identity`, `spatial`), cost one tail pass
    per task, not one per model."""
    key = sha256_json([sha256_tensors({"pred": pred, **({"prefix": pred_prefix} if pred_prefix is not None else {})}),
                       target_key, task.id, cfg.seed, cfg.n_boot, SCORE_CACHE_VERSION])
    path = cache_dir() / "scores" / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    seed = seed_for(cfg.seed, task.id, "bootstrap")
    out = metrics.score_maps(pred, y, n_boot=cfg.n_boot, seed=seed)
    tp = tails.run(task, pred, pred_prefix)
    ty = tails.target(task, target_key, y, y_prefix)
    if tails.backbone(task.backbone).spec.has_head:
        out |= metrics.score_logits(tp, ty, labels, n_boot=cfg.n_boot, seed=seed)
    else:
        out |= metrics.score_embeddings(tp, ty, n_boot=cfg.n_boot, seed=seed)
    scores = {k: v.to_dict() for k, v in out.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(scores))
    os.replace(tmp, path)
    return scores


def _reference_points(task: Task, tails: _Tails, test: MapData, target_key: str, labels: torch.Tensor,
                      cfg: RunConfig, images: image_scores.ImageScorer | None = None) -> dict[str, dict]:
    """identity (P = X) and, for geometric manipulations, spatial (P = the exact grid action of X)."""
    refs = {"identity": test.x}
    if task.manipulation.is_geometric:
        refs["spatial"] = task.manipulation.grid_action(test.x)
    return {name: _scores(task, tails, pred, test.x_prefix, test.y, test.y_prefix, target_key, labels, cfg)
            | (images.score(pred, test.x_prefix) if images else {}) for name, pred in refs.items()}


def new_task_record(task: Task, data: TaskData, cfg: RunConfig, notes: list[str] | None = None) -> dict[str, Any]:
    """A task's record in a result file, before it is fitted and scored. Its first note gives the
    threads it is scored with: the file's `environment` is that of its last run only, and a
    resumed file can hold tasks scored under different settings (fit_s and predict_per_s vary)."""
    return {
        "task_id": task.id, "task_version": task.version, "task_sha256": data.content_sha256,
        "category": task.category, "backbone": task.backbone, "layer": task.layer,
        "n_train": len(data.train), "n_test": len(data.test), "fit_s": None, "predict_per_s": None,
        "time_budget_s": cfg.time_budget_s, "metrics": {}, "reference_points": {},
        "notes": [note("threads", torch.get_num_threads()), *(notes or [])],
    }


def note(key: str, value: Any) -> str:
    """A task record's note of a named value (``key: value``), read back by `noted`."""
    return f"{key}: {value}"


def noted(record: dict, key: str) -> list[str]:
    """The values of a record's `note(key, ...)` notes, in order."""
    mark = note(key, "")
    return [n[len(mark):] for n in record.get("notes", []) if n.startswith(mark)]


def add_described_notes(record: dict, described: dict, keys: tuple[str, ...]) -> None:
    """Note the model's own account (its ``describe()``) of each of `keys` that it gives."""
    record["notes"].extend(note(key, described[key]) for key in keys if described.get(key) is not None)


def evaluate_map_task(factory: Callable[[], Mapper], suite: Suite, task: Task, cfg: RunConfig,
                      tails: _Tails | None = None, references: bool = True) -> dict[str, Any]:
    """Fit and score one map task; returns its task record (status "ok" or "failed")."""
    tails = tails or _Tails()
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
        _seed_everything(info.seed)
        mapper = factory()
        record["fit_s"] = timed_fit(lambda: mapper.fit(train), cfg.time_budget_s)
        start = time.perf_counter()
        pred, pred_prefix, predicted_prefix = _predict_all(mapper, test.x, test.x_prefix)
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
    described = mapper.describe() if hasattr(mapper, "describe") else {}
    if "linear" in described:
        W, b = described["linear"]
        record["linear_structure"] = metrics.linear_structure(W, b, test.x)
    if described.get("n_params") is not None:
        record["n_params"] = int(described["n_params"])
    add_described_notes(record, described, ("stopped_by", "ridge", "epochs", "steps"))
    record["status"] = "ok"
    return record


def model_identity(factory: Callable[[], Mapper]) -> dict[str, Any]:
    probe = factory()
    identity = {"name": str(getattr(probe, "name", type(probe).__name__)),
                "version": str(getattr(probe, "version", "0")), "n_params": None,
                "source_sha256": source_sha256(probe),
                "metadata": {"class": f"{type(probe).__module__}.{type(probe).__qualname__}"}}
    categories = getattr(probe, "categories", None)
    if categories is not None:  # the leaderboard ranks the model on these categories' tasks only
        identity["categories"] = sorted(categories)
    return identity


def run_map_track(factory: Callable[[], Mapper], suite: Suite, tasks: list[Task], out: str | Path,
                  cfg: RunConfig, progress: bool = True) -> dict[str, Any]:
    """Evaluate `tasks` (those of the mapper's `categories`), writing the result file `out` after
    each one; resumes from `out`."""
    categories = getattr(factory, "categories", None)
    if categories is not None:
        tasks = [t for t in tasks if t.category in categories]
    tails = _Tails()
    return run_tasks("map", model_identity(factory), lambda task: evaluate_map_task(factory, suite, task, cfg, tails),
                     suite, tasks, out, cfg, progress, device="cpu",
                     reusable=lambda task, rec: image_scores.record_is_current(suite, task, rec))


def run_tasks(track: str, model: dict[str, Any], evaluate: Callable[[Task], dict[str, Any]], suite: Suite,
              tasks: list[Task], out: str | Path, cfg: RunConfig, progress: bool = True,
              device: str | None = None, reusable: Callable[[Task, dict], bool] | None = None) -> dict[str, Any]:
    """Score `tasks` one by one with `evaluate`, rewriting the result file `out` after each.

    A file left by an interrupted run of the same track, model (name, version and source), suite
    version and seed is resumed: its scored tasks are kept where the task data are still the same,
    and its records of tasks outside `tasks` are carried over as they are (a run of some tasks adds
    to the file; it never drops the others). The file lists tasks in the suite's order.
    `reusable(task, record)`, if given, must also accept a kept record (else the task is scored
    again). `device` is the one recorded (default: the first CUDA device when there is one).
    """
    out = Path(out)
    done: dict[str, dict] = {}
    kept: list[dict] = []
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    previous_duration = 0.0
    if out.exists():
        prev = read_result(out)
        same_run = run_identity(prev) == run_identity({"model": model, "suite": suite.result_identity()})
        changed = [f"{what} {a!r} → {b!r}" for what, a, b in (
            ("track", prev["track"], track), ("seed", prev["seed"], cfg.seed),
            ("model source sha256", prev["model"]["source_sha256"], model["source_sha256"])) if a != b]
        if same_run and changed and prev["tasks"]:
            # Starting over would drop the file's records of tasks this run does not score.
            raise ResultError(f"{out} holds {len(prev['tasks'])} task record(s) of {model['name']} "
                              f"version {model['version']} that this run cannot resume ({'; '.join(changed)}); "
                              "refusing to start the file over: bump the model's version, or move the file "
                              "away or write elsewhere (featbench run --out)")
        if same_run and not changed:
            done = {t["task_id"]: t for t in prev["tasks"] if t["status"] == "ok"}
            selected = {t.id for t in tasks}
            kept = [t for t in prev["tasks"] if t["task_id"] not in selected]
            started, previous_duration = prev["started_at"], prev["duration_s"]
    order = {t.id: i for i, t in enumerate(suite.tasks)}
    record = {
        "schema_version": "1.0", "featbench_version": featbench.__version__, "git_commit": git_commit(),
        "suite": suite.result_identity(), "track": track, "model": model, "seed": cfg.seed,
        "environment": environment_info(device), "started_at": started, "duration_s": previous_duration,
        "tasks": kept,
    }
    check_writable(out, record)
    run_start = time.perf_counter()
    bar = tqdm(tasks, desc=f"{model['name']} on {suite.name} ({track})", unit="task", disable=not progress)
    for task in bar:
        bar.set_postfix_str(task.id)
        if task.id in done and done[task.id]["task_sha256"] == load_task(suite, task).content_sha256 \
                and (reusable is None or reusable(task, done[task.id])):
            result = done[task.id]  # scored before, on the same data
        else:
            result = evaluate(task)
        record["tasks"] = sorted([t for t in record["tasks"] if t["task_id"] != task.id] + [result],
                                 key=lambda t: order.get(t["task_id"], len(order)))
        record["duration_s"] = round(previous_duration + time.perf_counter() - run_start, 3)
        sizes = [t["n_params"] for t in record["tasks"] if t.get("n_params") is not None]
        record["model"]["n_params"] = max(sizes) if sizes else None  # the largest task's instance
        record = write_result(out, record)
        record.pop("record_sha256")
    return write_result(out, record)
