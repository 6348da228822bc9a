"""Synthetic result files for the leaderboard tests, written through `featbench.core.results.write_result`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import featbench as fb
from featbench.core.hashing import sha256_json
from featbench.core.results import write_result

SOURCE = "0" * 64


def fake_task_hash(task_id: str, salt: str = "") -> str:
    return sha256_json(["fake task data", task_id, salt])


def task_record(task: fb.Task, scores: dict[str, float], *, status: str = "ok", task_sha256: str | None = None,
                half_width: float = 0.01, fit_s: float = 1.0, predict_per_s: float = 100.0) -> dict[str, Any]:
    rec = {
        "task_id": task.id, "task_version": task.version, "task_sha256": task_sha256 or fake_task_hash(task.id),
        "category": task.category, "backbone": task.backbone, "layer": task.layer, "status": status,
        "n_train": 8, "n_test": 4, "fit_s": fit_s if status == "ok" else None,
        "predict_per_s": predict_per_s if status == "ok" else None, "time_budget_s": 30, "notes": [],
        "metrics": {} if status != "ok" else {
            m: {"value": v, "ci_low": v - half_width, "ci_high": v + half_width} for m, v in scores.items()},
        "reference_points": {},
    }
    if status != "ok":
        rec["reason"] = "RuntimeError: boom"
    return rec


def result_record(suite: fb.Suite, model: str, tasks: list[dict[str, Any]], track: str = "map",
                  n_params: int | None = 10, suite_version: int | None = None,
                  spec_sha256: str | None = None) -> dict[str, Any]:
    return {
        "schema_version": "1.0", "featbench_version": fb.__version__, "git_commit": None,
        "suite": {"name": suite.name, "version": suite_version or suite.version,
                  "spec_sha256": spec_sha256 or suite.spec_sha256()},
        "track": track,
        "model": {"name": model, "version": "1", "n_params": n_params, "source_sha256": SOURCE,
                  "metadata": {"class": f"tests.{model}"}},
        "seed": 0,
        "environment": {"device": "cpu", "threads": 1, "torch": "x", "timm": "x", "python": "3", "platform": "test"},
        "started_at": "2026-01-01T00:00:00+00:00", "duration_s": 1.0, "tasks": tasks,
    }


def write_model(root: Path, suite: fb.Suite, model: str, score: Callable[[fb.Task], dict[str, float]], *,
                failed: tuple[str, ...] = (), file: str | None = None, track: str = "map",
                hash_of: Callable[[fb.Task], str] | None = None, fit_s: float = 1.0,
                predict_per_s: float = 100.0, **kw) -> Path:
    """A sealed result file for `model` on every task of `track`: scores from `score(task)`."""
    tasks = [task_record(t, score(t), status="failed" if t.id in failed else "ok",
                         task_sha256=hash_of(t) if hash_of else None, fit_s=fit_s, predict_per_s=predict_per_s)
             for t in suite.select(track=track)]
    path = root / "results" / (file or f"{model}.json")
    write_result(path, result_record(suite, model, tasks, track=track, **kw))
    return path


# Three map models with clear, different quality: good > mid > bad on every task and score.
QUALITY = {"good": 0.9, "mid": 0.6, "bad": 0.3}


def scores_for(model: str) -> Callable[[fb.Task], dict[str, float]]:
    q = QUALITY[model]

    def score(task: fb.Task) -> dict[str, float]:
        bump = 0.01 * len(task.id) % 0.05  # varies by task, never enough to change the order
        out = {"r2": q + bump, "cos_median": q / 2 + bump, "mse": 1 - q}
        out["top1_agree" if "cnn" in task.backbone else "emb_cos"] = q - bump
        return out

    return score
