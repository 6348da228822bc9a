"""What every track's run shares: its settings, the fit's time budget, a submission's fit in an
isolated child and its failure, the models loaded once per run, a new task record
(`featbench.core.results.TaskRecord`), the model's identity, and the run loop that writes the
result file after every task (so an interrupted run resumes). The tracks themselves are
`featbench.scoring.map_track` and `featbench.scoring.invert_track`; what a submission's code does
(seed, fit under its budget, apply in checked batches) is `featbench.scoring.submission`.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

import featbench
from featbench.core.cache import cached_tensor
from featbench.core.paths import cache_dir
from featbench.core.plugins import source_sha256
from featbench.core.results import (RESULT_SCHEMA_VERSION, ResultError, TaskRecord, check_writable, environment_info,
                                    git_commit, read_result, run_identity, write_result)
from featbench.data.storage import TaskData, load_task
from featbench.data.suites import Suite, Task
from featbench.scoring.isolation import ChildFailed, Isolation, child_wall_limit, run_in_child
from featbench.scoring.executors import Executor, LocalExecutor
from featbench.scoring.submission import BATCH, Fitted, hard_limit
from featbench.zoo.backbones import Backbone, load_backbone


@dataclass
class RunConfig:
    seed: int = 0
    n_boot: int = 1000
    time_budget_s: float | None = None  # per task; None: no limit
    # Where a submission's fit and predict run (featbench.scoring.isolation): a sandboxed child by default.
    isolation: Isolation = field(default_factory=Isolation)
    # A map task whose pinned image-score checkpoint is not at hand: an error (True), or scored at
    # map level with a note (False; featbench.scoring.image_scores).
    require_image_scores: bool = False
    # Result files of earlier runs (or folders of them) whose records of the same model on the same
    # task data are copied instead of fitted again (`reuse_pool`).
    reuse: tuple[str | Path, ...] = ()


def fit_budget(factory: Any, requested: float | None, suite_default: float | None) -> float | None:
    """A model's fit budget per task: the one asked for (``--time-budget``), else the suite's run
    default (so that a demo suite stays short), else the one the model declares (a ``time_budget_s``
    attribute of its class), else none."""
    if requested is not None:
        return requested
    if suite_default is not None:
        return suite_default
    declared = getattr(factory, "time_budget_s", None)
    return None if declared is None else float(declared)


def isolated_fit(entry: str, factory_bytes: bytes, tensors: dict[str, torch.Tensor | None], meta: dict[str, Any],
                 budget_s: float | None, n_test: int, cfg: RunConfig, mode: str, record: TaskRecord,
                 files: dict[str, Path] | None = None, checkpoints: dict[str, Path] | None = None) -> Fitted:
    """A track's fit-then-apply (`entry`, a ``module:function`` of `featbench.scoring.submission`)
    in a child process (`mode` ``sandbox`` or ``process``) sent `tensors`, `meta` and `files`
    alone, with the model's own `checkpoints` folders (`run_in_child`); its outputs are unchecked here (the track checks them: nothing a child writes is
    trusted). Records the child's limits and its overhead (start-up and transfers)."""
    wall_s = child_wall_limit(cfg.isolation, hard_limit(budget_s))
    record.record("isolation limits", cfg.isolation.describe(wall_s))
    outputs, back = run_in_child(entry, factory_bytes, tensors, meta, cfg.isolation, mode, wall_s, files, checkpoints)
    fit_s, per_s = float(back["fit_s"]), float(back["per_s"])
    overhead = back["child_wall_s"] - fit_s - n_test / max(per_s, 1e-9)
    record.record("isolation overhead_s", round(max(overhead, 0.0), 2))
    return Fitted(outputs, fit_s, per_s, dict(back.get("described", {})))


def failed_submission(record: TaskRecord, exc: Exception) -> TaskRecord:
    """`record` failed by what a submission raised (called in its ``except``: a bad submission
    fails its task, never the run); a child's failure keeps the reason the child gave."""
    if isinstance(exc, ChildFailed):
        return record.fail(exc.reason, exc.details or exc.reason)
    return record.fail(f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=3)[-2000:])


class Models:
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
        return torch.cat([bb.tail(task.layer, maps[i:i + BATCH],
                                  None if prefix is None else prefix[i:i + BATCH])
                          for i in range(0, len(maps), BATCH)])

    def target(self, task: Task, key: str, maps: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
        return cached_tensor(cache_dir() / "tails" / f"{key}.safetensors", key, lambda: self.run(task, maps, prefix))


def new_task_record(task: Task, data: TaskData, cfg: RunConfig) -> TaskRecord:
    """A task's record in a result file, before it is fitted and scored. It records the threads it
    is scored with: the file's `environment` is that of its last run only, and a resumed file can
    hold tasks scored under different settings (fit_s and predict_per_s vary)."""
    record = TaskRecord(task.id, task.version, data.content_sha256, task.category, task.backbone, task.layer,
                        len(data.train), len(data.test), cfg.time_budget_s)
    record.record("threads", torch.get_num_threads())
    return record


def scoring_mode(suite: Suite, mode: str) -> dict[str, str]:
    """A task record's ``scoring``: where the submission ran, and whether the suite's test targets
    are published (anyone can score) or hidden (scored by the maintainers, who hold them)."""
    return {"isolation": mode, "test_targets": suite.test_targets}


def record_described(record: TaskRecord, described: dict, keys: tuple[str, ...]) -> dict:
    """The model's own account of its fit (its ``describe()``, as the fit's process returns it):
    its ``n_params`` into the record, and each of `keys` that it gives into its provenance.
    Returns the account."""
    if described.get("n_params") is not None:
        record.n_params = int(described["n_params"])
    for key in keys:
        if described.get(key) is not None:
            record.record(key, described[key])
    return described


def model_identity(factory: Callable[[], Any]) -> dict[str, Any]:
    probe = factory()
    identity = {"name": str(getattr(probe, "name", type(probe).__name__)),
                "version": str(getattr(probe, "version", "0")), "n_params": None,
                "source_sha256": source_sha256(probe),
                "metadata": {"class": f"{type(probe).__module__}.{type(probe).__qualname__}"}}
    categories = getattr(probe, "categories", None)
    if categories is not None:  # the leaderboard ranks the model on these categories' tasks only
        identity["categories"] = sorted(categories)
    return identity


def reuse_pool(paths: tuple[str | Path, ...], track: str, model: dict[str, Any],
               seed: int) -> dict[tuple[str, str], tuple[TaskRecord, str]]:
    """The scored records of earlier result files (`paths`: files, or folders of ``*.json`` files)
    that a run of `model` may copy instead of fitting: those of files with the same track, seed and
    model (name, version, source sha256), keyed by (task id, task sha256), each with the suite it
    was scored in. Files of other models are passed over; a file that does not validate is a
    `ResultError`. Task hashes cover a task's data, so one suite version's record stands for
    another's task with the same hash (featbench-v2 repeats featbench-v1's efficientnet_lite0 tasks)."""
    pool: dict[tuple[str, str], tuple[TaskRecord, str]] = {}
    files = [f for p in map(Path, paths) for f in (sorted(p.glob("*.json")) if p.is_dir() else [p])]
    identity = (track, seed, model["name"], model["version"], model["source_sha256"])
    for path in files:
        prev = read_result(path)
        if (prev["track"], prev["seed"], prev["model"]["name"], prev["model"]["version"],
                prev["model"]["source_sha256"]) != identity:
            continue
        where = f"{prev['suite']['name']} v{prev['suite']['version']}"
        for task in prev["tasks"]:
            if task["status"] == "ok":
                pool[(task["task_id"], task["task_sha256"])] = (TaskRecord.from_dict(task), where)
    return pool


def run_tasks(track: str, model: dict[str, Any], evaluate: Callable[[Task], TaskRecord], suite: Suite,
              tasks: list[Task], out: str | Path, cfg: RunConfig, progress: bool = True,
              device: str | None = None, reusable: Callable[[Task, TaskRecord], bool] | None = None,
              executor: Executor | None = None) -> dict[str, Any]:
    """Score `tasks` with `evaluate`, rewriting the result file `out` after each.

    A file left by an interrupted run of the same track, model (name, version and source), suite
    version and seed is resumed: its scored tasks are kept where the task data and the time budget
    are still the same, and its records of tasks outside `tasks` are carried over as they are (a
    run of some tasks adds to the file; it never drops the others). The file lists tasks in the
    suite's order. `reusable(task, record)`, if given, must also accept a kept record (else the
    task is scored again). A task still to score whose record `reuse_pool` finds in ``cfg.reuse``
    (kept on the same terms) is copied, noted ``reused from``. `device` is the one recorded (default: the first CUDA device when there is one).
    `executor` runs the `evaluate` calls (default: here, one after another; `executors.RayExecutor`
    fans them out over a cluster); the file is rewritten as each record comes back.
    """
    out = Path(out)
    done: dict[str, TaskRecord] = {}
    kept: list[TaskRecord] = []
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
            records = [TaskRecord.from_dict(t) for t in prev["tasks"]]
            done = {t.task_id: t for t in records if t.status == "ok"}
            selected = {t.id for t in tasks}
            kept = [t for t in records if t.task_id not in selected]
            started, previous_duration = prev["started_at"], prev["duration_s"]
    order = {t.id: i for i, t in enumerate(suite.tasks)}
    record = {  # its tasks as `TaskRecord`s, serialised by `save`
        "schema_version": RESULT_SCHEMA_VERSION, "featbench_version": featbench.__version__, "git_commit": git_commit(),
        "suite": suite.result_identity(), "track": track, "model": model, "seed": cfg.seed,
        "environment": environment_info(device), "started_at": started, "duration_s": previous_duration,
        "tasks": kept,
    }
    check_writable(out, record)
    run_start = time.perf_counter()

    def add(result: TaskRecord) -> None:
        record["tasks"] = sorted([t for t in record["tasks"] if t.task_id != result.task_id] + [result],
                                 key=lambda t: order.get(t.task_id, len(order)))

    def current(task: Task, sha: str, rec: TaskRecord | None) -> bool:
        """Whether `rec` scored `task` on the same data, version and budget, as this run scores."""
        return rec is not None and rec.task_sha256 == sha and rec.task_version == task.version \
            and rec.time_budget_s == cfg.time_budget_s and (reusable is None or reusable(task, rec))

    pool = reuse_pool(cfg.reuse, track, model, cfg.seed)
    pooled = {task_id for task_id, _ in pool}
    todo, reused = [], 0
    for task in tasks:
        if task.id not in done and task.id not in pooled:
            todo.append(task)
            continue
        sha = load_task(suite, task).content_sha256
        if current(task, sha, done.get(task.id)):
            add(done[task.id])  # scored before
            continue
        earlier, where = pool.get((task.id, sha), (None, None))
        if current(task, sha, earlier):
            earlier.record("reused from", where)
            add(earlier)
            reused += 1
        else:
            todo.append(task)
    if reused and progress:
        tqdm.write(f"{model['name']}: {reused} task record(s) reused from earlier results (same task hashes)")

    def lost(task: Task, reason: str) -> TaskRecord:
        failed = new_task_record(task, load_task(suite, task), cfg)
        failed.status, failed.reason = "failed", reason
        return failed

    def save() -> dict[str, Any]:
        record["duration_s"] = round(previous_duration + time.perf_counter() - run_start, 3)
        sizes = [t.n_params for t in record["tasks"] if t.n_params is not None]
        record["model"]["n_params"] = max(sizes) if sizes else None  # the largest task's instance
        return write_result(out, record | {"tasks": [t.to_dict() for t in record["tasks"]]})

    bar = tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc=f"{model['name']} on {suite.name} ({track})",
               unit="task", disable=not progress)
    for task, result in (executor or LocalExecutor()).map(evaluate, todo, lost):
        bar.set_postfix_str(task.id)
        bar.update()
        add(result)
        save()
    bar.close()
    return save()
