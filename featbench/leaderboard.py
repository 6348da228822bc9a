"""The leaderboard of a suite version: result files in, tables (Markdown, CSV, JSON, HTML) out.

Layout, for a suite ``S`` (DESIGN.md, "Results and leaderboard")::

    leaderboard/S/results/*.json    one result file per (model, track), as `featbench run` writes them
    leaderboard/S/task_hashes.json  the expected content hash of every task (see `TaskHashes`)
    leaderboard/S/LEADERBOARD.md    tabulate tables: per track one row per model, then per layer
    leaderboard/S/leaderboard.csv   tidy: one row per model x task x metric
    leaderboard/S/leaderboard.json  the same numbers as the tables, plus what was left out and why
    leaderboard/S/index.html        a static page (`featbench.leaderboard_html`)

`collect` reads every result file and admits it only if it is a valid, sealed record of *this*
suite: same name and version, same ``spec_sha256`` (which covers the data-format version, see
`Suite.spec_dict`), same data-format version where the record states one, task ids and task
versions of the suite, task hashes equal to the expected ones, and a model name no other file
of the same track uses. Anything else is left out *whole* and named with its reason; nothing is
mixed in silently, and results of another suite version or data format never share a table.

Scores. A failed task counts as missing: it enters no mean, and the tables show how many tasks
each model has scored ("tasks ok"). A category mean is the plain mean over the model's scored
tasks of that category; its interval is the mean of the tasks' interval ends, which is exact
when the tasks' errors move together (they share the test images) and wider than the truth
otherwise: conservative. The mean rank and its interval are `rank_interval`'s.

Building is a pure function of the result files and ``task_hashes.json``: no dates, no paths of
the machine, seeded bootstraps, sorted orders; building twice gives byte-identical files.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
from tabulate import tabulate

import featbench
from featbench.errors import FeatbenchError
from featbench.results import ResultError, read_result
from featbench.suites import DATA_FORMAT_VERSION, Suite, Task

TRACKS = ("map", "invert")
# The scores a track is ranked and summarised on; those no result reports are left out of the
# tables. emb_cos is the semantic score of backbones without a classification head (no top1_agree).
HEADLINE = {
    "map": ("r2", "cos_median", "top1_agree", "emb_cos", "lpips_vs_manipulated"),  # the last: image level
    "invert": ("lpips", "lpips_gap", "ssim", "top1_agree", "feat_cos"),
}
LOWER_IS_BETTER = frozenset({"mse", "jsd", "lpips", "lpips_vs_manipulated", "lpips_vs_inverted_target"})
CATEGORY_ORDER = ("geometric", "photometric", "local", "semantic")
Z95 = 1.959963984540054
RANK_BOOT = 1000
RANK_SEED = 0
HASHES_FILE = "task_hashes.json"
OUTPUT_FILES = ("LEADERBOARD.md", "leaderboard.csv", "leaderboard.json", "index.html", HASHES_FILE)


def default_root(suite_name: str) -> Path:
    """``leaderboard/<suite>`` of the checkout when run from one, else of the working directory."""
    checkout = Path(featbench.__file__).resolve().parents[1] / "leaderboard"
    base = checkout if checkout.is_dir() else Path("leaderboard")
    return base / suite_name


# --------------------------------------------------------------------------------------------
# expected task hashes


def built_task_sha256(suite: Suite, task: Task) -> str | None:
    """The content hash of `task` from the built data in this machine's cache; None when not built.

    Only the datasets' records are read (their keys and per-file sha256), not the files: the
    hash is defined by the records (`TaskData.content_sha256`), and `load_task` checks the files
    against them whenever the data are used.
    """
    from featbench.storage import TaskData, read_record, variant_refs
    from featbench.suites import ORIGINAL

    try:
        refs = variant_refs(suite, task.backbone, task.layer)
        records = {"x": {"key": refs[ORIGINAL].key, "files": read_record(refs[ORIGINAL], check_files=False)["files"]}}
        if task.manipulation is not None:
            ref = refs[task.manipulation.name]
            records["y"] = {"key": ref.key, "files": read_record(ref, check_files=False)["files"]}
    except (FeatbenchError, OSError, KeyError):
        return None
    return TaskData(task, None, None, records).content_sha256  # type: ignore[arg-type]


@dataclass
class TaskHashes:
    """The expected content hash of each task of a suite, and where each came from.

    Checking a result's ``task_sha256`` needs the hash of data that may not be on the machine
    that builds the leaderboard (a suite's data take gigabytes; the leaderboard is rebuilt from
    the result files alone). So the expected hashes are kept in ``task_hashes.json`` beside the
    results, committed with them, and every build reads and extends that file:

    1. an entry already in ``task_hashes.json`` is authoritative and never changes (a reviewer
       saw it in the pull request that added it);
    2. a task it lacks takes its hash from built data in this machine's cache when there are
       some (``source: "built data"``): the maintainers' own build is the reference;
    3. otherwise from the result files, if every admitted file that reports the task agrees
       (``source: "results: a.json, b.json"``). If they disagree, nobody can tell which data are
       the suite's: the task stays without an entry and every file reporting it is left out,
       until the maintainers build the data (or write the entry) to settle it.

    Where built data exist and disagree with an entry, the entry still holds and the build says
    so (`warnings`): this machine's data differ from the ones the leaderboard was checked on.
    The file also records the suite's spec hash and data-format version; one written for another
    spec is refused, so a changed suite file can never reuse old hashes.
    """

    suite: Suite
    entries: dict[str, dict[str, str]] = field(default_factory=dict)  # task id -> {sha256, source}
    conflicts: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # task id -> {hash: files}
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, suite: Suite, path: Path) -> "TaskHashes":
        hashes = cls(suite)
        if not path.is_file():
            return hashes
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            meta = (raw["suite"], raw["version"], raw["spec_sha256"], raw["data_format_version"])
            entries = {tid: {"sha256": e["sha256"], "source": e["source"]} for tid, e in raw["tasks"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FeatbenchError(f"{path}: not a readable task-hash file ({type(exc).__name__}: {exc})") from exc
        want = (suite.name, suite.version, suite.spec_sha256(), DATA_FORMAT_VERSION)
        if meta != want:
            raise FeatbenchError(
                f"{path} was written for suite {meta[0]} v{meta[1]} (spec {str(meta[2])[:12]}, data format {meta[3]}); "
                f"the suite is now {want[0]} v{want[1]} (spec {want[2][:12]}, data format {want[3]}). A published "
                "suite never changes: restore its suite file, or publish the change as a new suite version.")
        unknown = sorted(set(entries) - {t.id for t in suite.tasks})
        if unknown:
            raise FeatbenchError(f"{path} lists tasks that suite {suite.name} does not have: {', '.join(unknown[:5])}")
        hashes.entries = entries
        return hashes

    def fill(self, tasks: Iterable[Task], reported: dict[str, dict[str, list[str]]], use_built_data: bool) -> None:
        """Add entries for `tasks` not yet known: from built data, else from agreeing results.

        `reported` maps task id -> {hash: [files reporting it]}, over the admitted files only.
        """
        for task in tasks:
            built = built_task_sha256(self.suite, task) if use_built_data else None
            known = self.entries.get(task.id)
            if known is not None:
                if built is not None and built != known["sha256"]:
                    self.warnings.append(
                        f"task {task.id}: the data built on this machine hash to {built[:12]}, "
                        f"{HASHES_FILE} says {known['sha256'][:12]} ({known['source']}); results are checked "
                        f"against {HASHES_FILE}")
                continue
            if built is not None:
                self.entries[task.id] = {"sha256": built, "source": "built data"}
                continue
            seen = reported.get(task.id, {})
            if len(seen) == 1:
                (digest, files), = seen.items()
                self.entries[task.id] = {"sha256": digest, "source": "results: " + ", ".join(sorted(files))}
            elif len(seen) > 1:
                self.conflicts[task.id] = seen

    def to_json(self) -> str:
        obj = {
            "suite": self.suite.name, "version": self.suite.version, "spec_sha256": self.suite.spec_sha256(),
            "data_format_version": DATA_FORMAT_VERSION,
            "note": "Expected task_sha256 of each task, checked against every result file; see "
                    "featbench.leaderboard.TaskHashes. Entries are only ever added.",
            "tasks": {t.id: self.entries[t.id] for t in self.suite.tasks if t.id in self.entries},
        }
        return json.dumps(obj, indent=1, sort_keys=True) + "\n"


# --------------------------------------------------------------------------------------------
# collecting result files


@dataclass
class Excluded:
    file: str
    reason: str


@dataclass
class Collection:
    """The admitted result files (by file name) of one suite, and those left out with reasons."""

    suite: Suite
    results: dict[str, dict[str, Any]]
    excluded: list[Excluded]
    hashes: TaskHashes

    def by_track(self, track: str) -> dict[str, dict[str, Any]]:
        return {f: r for f, r in self.results.items() if r["track"] == track}


def _identity_problems(suite: Suite, rec: dict[str, Any]) -> list[str]:
    got = rec["suite"]
    problems = []
    if got["name"] != suite.name or got["version"] != suite.version:
        problems.append(f"it is a result of suite {got['name']} v{got['version']}, not {suite.name} v{suite.version}")
    elif got["spec_sha256"] != suite.spec_sha256():
        problems.append(f"its suite spec hash {got['spec_sha256'][:12]} is not the suite's {suite.spec_sha256()[:12]} "
                        "(the suite file it ran on differs from this one)")
    fmt = got.get("data_format_version")
    if fmt is not None and fmt != DATA_FORMAT_VERSION:
        problems.append(f"it was run on featbench data format {fmt}, this suite's data are format {DATA_FORMAT_VERSION}")
    if problems:
        return problems
    for t in rec["tasks"]:
        try:
            task = suite.get_task(t["task_id"])
        except FeatbenchError:
            problems.append(f"task {t['task_id']!r} is not a task of suite {suite.name}")
            continue
        if task.track != rec["track"]:
            problems.append(f"task {task.id} belongs to the {task.track} track, the result is a {rec['track']} result")
        if t["task_version"] != task.version:
            problems.append(f"task {task.id} has version {t['task_version']}, the suite's is {task.version}")
    return problems


def _reject(excluded: list[Excluded], name: str, problems: list[str]) -> None:
    shown = problems[:5] + ([f"... and {len(problems) - 5} more"] if len(problems) > 5 else [])
    excluded.append(Excluded(name, "; ".join(shown)))


def collect(suite: Suite, root: str | Path, use_built_data: bool = True) -> Collection:
    """Read and check ``<root>/results/*.json`` against `suite` (see the module docstring)."""
    root = Path(root)
    results_dir = root / "results"
    files = sorted(results_dir.glob("*.json")) if results_dir.is_dir() else []
    hashes = TaskHashes.read(suite, root / HASHES_FILE)
    excluded: list[Excluded] = []
    admitted: dict[str, dict[str, Any]] = {}
    for path in files:
        try:
            rec = read_result(path)
        except ResultError as exc:
            msg = str(exc)
            msg = msg[len(str(path)) + 2:] if msg.startswith(f"{path}: ") else msg
            excluded.append(Excluded(path.name, msg.replace("\n  ", " ").replace("\n", " ")))
            continue
        problems = _identity_problems(suite, rec)
        if problems:
            _reject(excluded, path.name, problems)
        else:
            admitted[path.name] = rec
    # One model name per track: two files claiming it cannot both be the model's result.
    owners: dict[tuple[str, str], list[str]] = {}
    for name, rec in admitted.items():
        owners.setdefault((rec["track"], rec["model"]["name"]), []).append(name)
    for (track, model), names in sorted(owners.items()):
        if len(names) > 1:
            for name in names:
                others = ", ".join(n for n in names if n != name)
                _reject(excluded, name, [f"model {model!r} ({track} track) also has a result in {others}; "
                                         "remove all but one"])
                admitted.pop(name)
    reported: dict[str, dict[str, list[str]]] = {}
    for name, rec in admitted.items():
        for t in rec["tasks"]:
            reported.setdefault(t["task_id"], {}).setdefault(t["task_sha256"], []).append(name)
    hashes.fill(suite.tasks, reported, use_built_data)
    for name in list(admitted):
        problems = []
        for t in admitted[name]["tasks"]:
            tid, digest = t["task_id"], t["task_sha256"]
            if tid in hashes.conflicts:
                seen = "; ".join(f"{h[:12]} in {', '.join(sorted(fs))}" for h, fs in sorted(hashes.conflicts[tid].items()))
                problems.append(f"task {tid}: result files disagree on its hash ({seen}) and neither built data nor "
                                f"{HASHES_FILE} settles it (run `featbench build --suite {suite.name}` and rebuild)")
            elif digest != hashes.entries[tid]["sha256"]:
                problems.append(f"task {tid}: task_sha256 {digest[:12]} is not the suite's {hashes.entries[tid]['sha256'][:12]} "
                                f"({hashes.entries[tid]['source']}): it ran on other data")
        if problems:
            _reject(excluded, name, problems)
            admitted.pop(name)
    excluded.sort(key=lambda e: e.file)
    return Collection(suite, admitted, excluded, hashes)


# --------------------------------------------------------------------------------------------
# the tidy frame

FRAME_COLUMNS = ["track", "model", "model_version", "task_id", "backbone", "layer", "category", "manipulation",
                 "status", "metric", "value", "ci_low", "ci_high", "n_test", "fit_s", "predict_per_s", "n_params",
                 "file"]


def _manipulation(task_id: str, track: str) -> str | None:
    return task_id.rsplit("/", 1)[-1] if track == "map" else None


def tidy_frame(results: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per model x task x metric (a failed task: one row, metric and value empty)."""
    rows = []
    for name, rec in sorted(results.items()):
        for t in rec["tasks"]:
            base = {"track": rec["track"], "model": rec["model"]["name"], "model_version": rec["model"]["version"],
                    "task_id": t["task_id"], "backbone": t["backbone"], "layer": t["layer"],
                    "category": t["category"], "manipulation": _manipulation(t["task_id"], rec["track"]),
                    "status": t["status"], "n_test": t["n_test"], "fit_s": t["fit_s"],
                    "predict_per_s": t["predict_per_s"], "n_params": t.get("n_params"), "file": name}
            scored = t["status"] == "ok" and t["metrics"]
            for metric, score in sorted(t["metrics"].items()) if scored else [(None, {})]:
                rows.append({**base, "metric": metric, "value": score.get("value"), "ci_low": score.get("ci_low"),
                             "ci_high": score.get("ci_high")})
    frame = pd.DataFrame(rows, columns=FRAME_COLUMNS)
    for col in ("value", "ci_low", "ci_high", "fit_s", "predict_per_s"):
        frame[col] = frame[col].astype("float64")
    frame["n_params"] = frame["n_params"].astype("Int64")
    frame["n_test"] = frame["n_test"].astype("Int64")
    return frame.sort_values(["track", "model", "task_id", "metric"], na_position="first", kind="stable",
                             ignore_index=True)


# --------------------------------------------------------------------------------------------
# ranks


def _ranks(values: np.ndarray, higher: np.ndarray, applies: np.ndarray | None = None) -> np.ndarray:
    """Rank (1 = best, ties share the mean of their places) of each model along axis -3, among
    the models that apply to the task, rescaled to the range of all models.

    `values`: (..., models, tasks, metrics) with NaN for missing; a missing score ranks last,
    tied with the other missing ones. `higher`: (metrics,) bool, True where higher is better.
    `applies`: (..., models, tasks) bool, default all True. With n of M models applying to a task, a place r among
    them counts as 1 + (r - 1)(M - 1)/(n - 1), so that a task where fewer models compete weighs
    as much as any other (first is 1, last is M); a lone model sits at (M + 1)/2. Models that do
    not apply get NaN.
    """
    n_models = values.shape[-3]
    if applies is None:
        applies = np.ones(values.shape[:-1], dtype=bool)
    signed = np.where(higher, values, -values)
    signed = np.where(np.isnan(signed), -np.inf, signed)
    a = signed[..., :, None, :, :]  # model i
    b = signed[..., None, :, :, :]  # model j
    rivals = applies[..., None, :, :, None]  # (..., 1, M, T, 1): model j applies
    better = ((b > a) & rivals).sum(axis=-3)
    ties = ((b == a) & rivals).sum(axis=-3) - 1
    place = better + 0.5 * ties  # 0-based place among the n applying models
    n = applies.sum(axis=-2, keepdims=True)[..., None]  # (..., 1, T, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(n > 1, 1.0 + place * (n_models - 1) / (n - 1), (n_models + 1) / 2)
    return np.where(applies[..., None], scaled, np.nan)


def rank_interval(values: np.ndarray, higher: Sequence[bool], sigma: np.ndarray | None = None,
                  n_boot: int = RANK_BOOT, seed: int = RANK_SEED, level: float = 0.95,
                  applies: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean rank of each model and its percentile-bootstrap interval.

    `values` is (models, tasks, metrics), NaN where a model has no score (a failed or missing
    task). `applies` (models, tasks; default all True) says which tasks each model is meant for
    (a mapper's declared `categories`): a model is ranked only on those, against the models that
    apply there, with places rescaled to the range of all models (`_ranks`). So a model made for
    geometric manipulations alone is neither ranked last on the others nor pushes the others'
    places there. On each (task, metric) that at least one model scored, the applying models are
    ranked (1 = best; ties share the mean of their places; a missing score ranks last); a model's
    rank on a task is its mean rank over that task's metrics, and its mean rank the mean over the
    tasks it applies to.

    The interval: each of `n_boot` seeded replicates draws the tasks with replacement and, where
    `sigma` (same shape as `values`) is given, each score from a normal distribution around it
    with that standard deviation (`sigma_from_interval`), and recomputes the mean ranks; the
    interval holds the central `level` of them. Resampling *test images* exactly would need each
    task's per-image scores, which result files do not keep; the normal draw stands in for it.
    It draws each model's score independently, whereas models are scored on the same images
    (their errors move together), so it overstates how often close models swap places: the
    rank intervals err on the wide side. With ``sigma=None`` only tasks are resampled.

    Returns (mean rank, low, high), each of shape (models,).
    """
    values = np.asarray(values, dtype=np.float64)
    higher = np.asarray(higher, dtype=bool)
    if values.ndim != 3 or higher.shape != (values.shape[2],):
        raise ValueError("values must be (models, tasks, metrics) and higher one flag per metric")
    applies = np.ones(values.shape[:2], dtype=bool) if applies is None else np.asarray(applies, dtype=bool)
    if applies.shape != values.shape[:2]:
        raise ValueError("applies must be (models, tasks)")
    scored = ~np.isnan(values).all(axis=0)  # (tasks, metrics): someone has a score
    keep = scored.any(axis=1)
    values, scored, applies = values[:, keep], scored[keep], applies[:, keep]
    if sigma is not None:
        sigma = np.nan_to_num(np.asarray(sigma, dtype=np.float64)[:, keep], nan=0.0)
    n_models, n_tasks, _ = values.shape
    if n_tasks == 0:
        nan = np.full(n_models, np.nan)
        return nan, nan.copy(), nan.copy()

    def mean_rank(v: np.ndarray, mask: np.ndarray, app: np.ndarray) -> np.ndarray:
        # v: (..., M, T, K); mask: (..., T, K); app: (..., M, T)
        r = np.where(mask[..., None, :, :], _ranks(v, higher, app), np.nan)
        with warnings.catch_warnings():  # all-NaN: a model with no task in a replicate; NaN is the answer
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(np.nanmean(r, axis=-1), axis=-1)

    point = mean_rank(values, scored, applies)
    rng = np.random.default_rng(seed)
    reps = np.empty((n_boot, n_models))
    chunk = 100
    for start in range(0, n_boot, chunk):
        n = min(chunk, n_boot - start)
        idx = rng.integers(0, n_tasks, size=(n, n_tasks))
        v = values[:, idx].transpose(1, 0, 2, 3)  # (n, M, T, K)
        if sigma is not None:
            v = v + rng.standard_normal(v.shape) * sigma[:, idx].transpose(1, 0, 2, 3)
        reps[start:start + n] = mean_rank(v, scored[idx], applies[:, idx].transpose(1, 0, 2))
    tail = (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanquantile(reps, [tail, 1 - tail], axis=0)
    return point, low, high


def sigma_from_interval(ci_low: np.ndarray, ci_high: np.ndarray) -> np.ndarray:
    """The standard deviation of a normal whose central 95 % interval is (ci_low, ci_high)."""
    return (np.asarray(ci_high, dtype=np.float64) - np.asarray(ci_low, dtype=np.float64)) / (2 * Z95)


# --------------------------------------------------------------------------------------------
# summaries


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _mean_score(part: pd.DataFrame) -> dict[str, Any]:
    return {"value": _num(part["value"].mean()), "ci_low": _num(part["ci_low"].mean()),
            "ci_high": _num(part["ci_high"].mean()), "n_tasks": int(part["value"].notna().sum())}


def _layer_key(backbone: str, layer: str) -> str:
    return f"{backbone}/{layer}"


def headline_metrics(frame: pd.DataFrame, track: str) -> list[str]:
    present = set(frame.loc[frame["track"] == track, "metric"].dropna())
    return [m for m in HEADLINE[track] if m in present]


def summarize_track(suite: Suite, frame: pd.DataFrame, results: dict[str, dict[str, Any]], track: str,
                    n_boot: int = RANK_BOOT, seed: int = RANK_SEED) -> dict[str, Any]:
    """The numbers behind a track's tables, one entry per model, best mean rank first."""
    tasks = suite.select(track=track)
    metrics = headline_metrics(frame, track)
    categories = [c for c in CATEGORY_ORDER if any(t.category == c for t in tasks)]
    categories += sorted({t.category for t in tasks if t.category and t.category not in CATEGORY_ORDER})
    layers = list(dict.fromkeys(_layer_key(t.backbone, t.layer) for t in tasks))
    track_frame = frame[(frame["track"] == track)]
    ok = track_frame[(track_frame["status"] == "ok") & track_frame["metric"].isin(metrics)]
    files = {rec["model"]["name"]: name for name, rec in results.items() if rec["track"] == track}
    models = sorted(files)
    task_ids = [t.id for t in tasks]
    values = np.full((len(models), len(task_ids), len(metrics)), np.nan)
    sigma = np.zeros_like(values)
    mi, ti, ki = ({m: i for i, m in enumerate(xs)} for xs in (models, task_ids, metrics))
    for row in ok.itertuples(index=False):
        if pd.notna(row.value) and row.task_id in ti:
            i, j, k = mi[row.model], ti[row.task_id], ki[row.metric]
            values[i, j, k] = row.value
            if pd.notna(row.ci_low) and pd.notna(row.ci_high):
                sigma[i, j, k] = (row.ci_high - row.ci_low) / (2 * Z95)
    declared = {m: results[files[m]]["model"].get("categories") for m in models}
    applies = np.array([[declared[m] is None or t.category in declared[m] for t in tasks] for m in models],
                       dtype=bool).reshape(len(models), len(tasks))
    if models and metrics:
        rank, low, high = rank_interval(values, [m not in LOWER_IS_BETTER for m in metrics], sigma, n_boot, seed,
                                        applies=applies)
    else:
        rank = low = high = np.full(len(models), np.nan)
    entries = []
    for i, model in enumerate(models):
        rec = results[files[model]]
        mine = track_frame[track_frame["model"] == model]
        status = mine.drop_duplicates("task_id")
        ok_tasks = status[status["status"] == "ok"]
        scored = ok[ok["model"] == model]
        entry = {
            "model": model, "version": rec["model"]["version"], "file": files[model],
            "record_sha256": rec["record_sha256"], "n_params": rec["model"]["n_params"],
            "tasks_ok": int(len(ok_tasks)), "tasks_failed": int((status["status"] == "failed").sum()),
            "tasks_total": int(applies[i].sum()),
            "applies_to": declared[model],  # None: every category
            "mean_rank": {"value": _num(rank[i]), "ci_low": _num(low[i]), "ci_high": _num(high[i])},
            "fit_s_mean": _num(ok_tasks["fit_s"].mean()), "predict_per_s_mean": _num(ok_tasks["predict_per_s"].mean()),
            "overall": {m: _mean_score(scored[scored["metric"] == m]) for m in metrics},
            "categories": {c: {m: _mean_score(scored[(scored["category"] == c) & (scored["metric"] == m)])
                               for m in metrics} for c in categories},
            "layers": {},
            "layer_tasks_ok": {},
        }
        for key in layers:
            backbone, layer = key.split("/", 1)
            at = scored[(scored["backbone"] == backbone) & (scored["layer"] == layer)]
            entry["layers"][key] = {m: _mean_score(at[at["metric"] == m]) for m in metrics}
            entry["layer_tasks_ok"][key] = int(((ok_tasks["backbone"] == backbone) & (ok_tasks["layer"] == layer)).sum())
        entries.append(entry)
    entries.sort(key=lambda e: (math.inf if e["mean_rank"]["value"] is None else e["mean_rank"]["value"], e["model"]))
    return {"track": track, "metrics": metrics, "categories": categories, "layers": layers,
            "n_tasks": len(tasks), "models": entries,
            "rank": {"n_boot": n_boot, "seed": seed, "level": 0.95, "metrics": metrics}}


def summarize(collection: Collection, n_boot: int = RANK_BOOT, seed: int = RANK_SEED) -> dict[str, Any]:
    """Everything the leaderboard shows, as JSON-able data (also ``leaderboard.json``)."""
    suite = collection.suite
    frame = tidy_frame(collection.results)
    tracks = {}
    for track in suite.tracks:
        if any(r["track"] == track for r in collection.results.values()):
            tracks[track] = summarize_track(suite, frame, collection.results, track, n_boot, seed)
    return {
        "suite": {"name": suite.name, "version": suite.version, "spec_sha256": suite.spec_sha256(),
                  "data_format_version": DATA_FORMAT_VERSION, "n_tasks": {t: len(suite.select(track=t)) for t in suite.tracks}},
        "built_by": f"featbench {featbench.__version__}",
        "results": [{"file": f, "model": r["model"]["name"], "track": r["track"], "record_sha256": r["record_sha256"]}
                    for f, r in sorted(collection.results.items())],
        "excluded": [{"file": e.file, "reason": e.reason} for e in collection.excluded],
        "hash_warnings": list(collection.hashes.warnings),
        "tracks": tracks,
    }


# --------------------------------------------------------------------------------------------
# text tables


def fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def fmt_tasks(entry: dict[str, Any]) -> str:
    """The "tasks ok" cell: scored / applicable, and the categories of a model that declares them."""
    cell = f"{entry['tasks_ok']}/{entry['tasks_total']}"
    return cell if entry["applies_to"] is None else f"{cell} ({', '.join(entry['applies_to'])})"


def fmt_score(s: dict[str, Any] | None, digits: int = 3) -> str:
    if not s or s.get("value") is None:
        return "-"
    if s.get("ci_low") is None or s.get("ci_high") is None:
        return fmt(s["value"], digits)
    return f"{s['value']:.{digits}f} [{s['ci_low']:.{digits}f}, {s['ci_high']:.{digits}f}]"


def fmt_count(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def main_table(summary: dict[str, Any], sort: str | None = None) -> tuple[list[str], list[list[Any]]]:
    """Header and rows of a track's model table (cells as strings)."""
    metrics, categories = summary["metrics"], summary["categories"]
    headers = ["model", "tasks ok", "mean rank [95 % interval]"]
    headers += [f"{c} {m}" for c in categories for m in metrics]
    headers += ["params", "fit s / task", "predict maps / s"]
    rows = []
    for e in sort_models(summary, sort):
        r = e["mean_rank"]
        rank = "-" if r["value"] is None else f"{r['value']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        row = [e["model"], fmt_tasks(e), rank]
        row += [fmt_score(e["categories"][c][m]) for c in categories for m in metrics]
        row += [fmt_count(e["n_params"]), fmt(e["fit_s_mean"], 2), fmt(e["predict_per_s_mean"], 0)]
        rows.append(row)
    return headers, rows


def overall_table(summary: dict[str, Any], sort: str | None = None) -> tuple[list[str], list[list[Any]]]:
    """The narrow form of `main_table`: each headline score's mean over all of a model's tasks."""
    metrics = summary["metrics"]
    headers = ["model", "tasks ok", "mean rank [95 %]", *metrics, "params", "fit s / task", "predict maps / s"]
    rows = []
    for e in sort_models(summary, sort):
        r = e["mean_rank"]
        rank = "-" if r["value"] is None else f"{r['value']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        rows.append([e["model"], fmt_tasks(e), rank,
                     *(fmt_score(e["overall"][m]) for m in metrics),
                     fmt_count(e["n_params"]), fmt(e["fit_s_mean"], 2), fmt(e["predict_per_s_mean"], 0)])
    return headers, rows


def layer_table(summary: dict[str, Any], key: str) -> tuple[list[str], list[list[Any]]]:
    metrics = summary["metrics"]
    headers = ["model", "tasks ok", *metrics]
    rows = [[e["model"], str(e["layer_tasks_ok"][key]), *(fmt_score(e["layers"][key][m]) for m in metrics)]
            for e in summary["models"]]
    return headers, rows


def sort_keys(summary: dict[str, Any]) -> list[str]:
    """What `sort_models` accepts: rank, params, fit_s, predict_per_s, model, a headline metric
    (its mean over all tasks) or ``<category>/<metric>``."""
    keys = ["rank", "model", "params", "fit_s", "predict_per_s", *summary["metrics"]]
    return keys + [f"{c}/{m}" for c in summary["categories"] for m in summary["metrics"]]


def sort_models(summary: dict[str, Any], key: str | None) -> list[dict[str, Any]]:
    """The models ordered by `key` (best first for scores; missing values last)."""
    models = summary["models"]
    if key in (None, "rank"):
        return list(models)
    if key not in sort_keys(summary):
        raise FeatbenchError(f"cannot sort by {key!r}; choose one of: {', '.join(sort_keys(summary))}")
    if key == "model":
        return sorted(models, key=lambda e: e["model"])
    metric = key.split("/")[-1]

    def value(e: dict[str, Any]) -> float | None:
        if key == "params":
            return e["n_params"]
        if key in ("fit_s", "predict_per_s"):
            return e[f"{key}_mean"]
        score = e["overall"][metric] if "/" not in key else e["categories"][key.split("/")[0]][metric]
        return score["value"]

    # Scores: best first. Parameters and fit time: smallest first. Throughput: largest first.
    descending = key == "predict_per_s" or (key not in ("params", "fit_s") and metric not in LOWER_IS_BETTER)
    present = [e for e in models if value(e) is not None]
    missing = [e for e in models if value(e) is None]
    return sorted(present, key=lambda e: (-value(e) if descending else value(e), e["model"])) + missing


def render_markdown(board: dict[str, Any]) -> str:
    s = board["suite"]
    lines = [f"# Leaderboard: {s['name']} v{s['version']}", "",
             f"Suite spec `{s['spec_sha256'][:16]}`, data format {s['data_format_version']}; built by "
             f"{board['built_by']} from {len(board['results'])} result file(s) with `featbench leaderboard build "
             f"--suite {s['name']}`. Do not edit: rebuild.", "",
             "Scores are means over a model's scored tasks (a failed task counts as missing; see *tasks ok*), with "
             "the mean of the tasks' 95 % bootstrap interval ends. The mean rank averages each model's rank per task "
             "(1 = best, a missing score ranks last) over the headline scores and the tasks it applies to (a model that "
             "declares categories is ranked on theirs only, its places rescaled to the range of all models); its interval comes from a "
             "seeded bootstrap over tasks and over each task's score interval (see featbench.leaderboard.rank_interval).",
             ""]
    if board["excluded"]:
        lines += ["## Left out", "", *(f"- `{e['file']}`: {e['reason']}" for e in board["excluded"]), ""]
    if board["hash_warnings"]:
        lines += ["## Data warnings", "", *(f"- {w}" for w in board["hash_warnings"]), ""]
    for track, summary in board["tracks"].items():
        lines += [f"## {track.capitalize()} track", "",
                  f"{len(summary['models'])} model(s), {summary['n_tasks']} tasks; headline scores: "
                  + ", ".join(f"`{m}` ({'lower' if m in LOWER_IS_BETTER else 'higher'} is better)"
                              for m in summary["metrics"]) + ".", ""]
        headers, rows = main_table(summary)
        lines += [tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True), ""]
        lines += [f"### {track.capitalize()} track per layer", ""]
        for key in summary["layers"]:
            headers, rows = layer_table(summary, key)
            lines += [f"#### {key}", "", tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True), ""]
    if not board["tracks"]:
        lines += ["No result admitted yet.", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


# --------------------------------------------------------------------------------------------
# building


def _write(path: Path, data: str | bytes) -> None:
    """Replace `path` atomically (a reader never sees half a file)."""
    data = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def csv_text(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, lineterminator="\n", float_format="%.10g")


@dataclass
class BuildReport:
    out_dir: Path
    board: dict[str, Any]
    written: list[Path]

    def summary(self) -> str:
        b = self.board
        lines = [f"leaderboard {b['suite']['name']} v{b['suite']['version']}: {len(b['results'])} result file(s) in, "
                 f"{len(b['excluded'])} left out; wrote {', '.join(p.name for p in self.written)} to {self.out_dir}"]
        lines += [f"  left out {e['file']}: {e['reason']}" for e in b["excluded"]]
        lines += [f"  warning: {w}" for w in b["hash_warnings"]]
        return "\n".join(lines)


def build(suite: Suite, root: str | Path | None = None, out_dir: str | Path | None = None, *,
          use_built_data: bool = True, n_boot: int = RANK_BOOT, seed: int = RANK_SEED) -> BuildReport:
    """Build the leaderboard of `suite` from ``<root>/results`` into `out_dir` (default `root`).

    Writes LEADERBOARD.md, leaderboard.csv, leaderboard.json, index.html and the (extended)
    task_hashes.json. Files left out are listed in all of them and in the report.
    """
    from featbench.leaderboard_html import render_html

    root = Path(root) if root is not None else default_root(suite.name)
    out_dir = Path(out_dir) if out_dir is not None else root
    collection = collect(suite, root, use_built_data=use_built_data)
    board = summarize(collection, n_boot, seed)
    frame = tidy_frame(collection.results)
    outputs = {
        "LEADERBOARD.md": render_markdown(board),
        "leaderboard.csv": csv_text(frame),
        "leaderboard.json": json.dumps(board, indent=1, sort_keys=True, allow_nan=False) + "\n",
        "index.html": render_html(board),
        HASHES_FILE: collection.hashes.to_json(),
    }
    written = []
    for name, text in outputs.items():
        _write(out_dir / name, text)
        written.append(out_dir / name)
    return BuildReport(out_dir, board, written)


def show(suite: Suite, root: str | Path | None = None, track: str | None = None, sort: str | None = None,
         use_built_data: bool = True, wide: bool = False) -> str:
    """The model table(s) as text for a terminal, built in memory from the result files.

    Scores are means over all of a model's tasks; `wide` gives one column per category and
    score instead, as in LEADERBOARD.md.
    """
    root = Path(root) if root is not None else default_root(suite.name)
    collection = collect(suite, root, use_built_data=use_built_data)
    board = summarize(collection)
    if track is not None and track not in TRACKS:
        raise FeatbenchError(f"unknown track {track!r}; tracks: {', '.join(TRACKS)}")
    tracks = [track] if track else list(board["tracks"])
    out = [f"{suite.name} v{suite.version}: {len(board['results'])} result file(s), {len(board['excluded'])} left out"]
    out += [f"  left out {e['file']}: {e['reason']}" for e in board["excluded"]]
    for name in tracks:
        summary = board["tracks"].get(name)
        if summary is None:
            out.append(f"\n{name} track: no results")
            continue
        headers, rows = (main_table if wide else overall_table)(summary, sort)
        out += [f"\n{name} track (sorted by {sort or 'rank'}; {'per category' if wide else 'means over all tasks'})",
                tabulate(rows, headers=headers, disable_numparse=True)]
    return "\n".join(out)


def compare(suite: Suite, models: Sequence[str], metrics: Sequence[str], root: str | Path | None = None,
            track: str = "map", use_built_data: bool = True) -> str:
    """A Markdown table of `models` side by side: per manipulation category and layer, the mean of
    each of `metrics` over the tasks each model scored there (README-ready; "-" where none)."""
    root = Path(root) if root is not None else default_root(suite.name)
    frame = tidy_frame(collect(suite, root, use_built_data=use_built_data).results)
    frame = frame[(frame["track"] == track) & (frame["status"] == "ok")]
    unknown = sorted(set(models) - set(frame["model"])) + sorted(set(metrics) - set(frame["metric"].dropna()))
    if unknown:
        raise FeatbenchError(f"no admitted {track}-track result has {', '.join(map(repr, unknown))}")
    means = (frame[frame["model"].isin(models) & frame["metric"].isin(metrics)]
             .groupby(["category", "backbone", "layer", "model", "metric"])["value"].mean())
    layers = [(b, layer) for b, ls in suite.backbones.items() for layer in ls]
    rows = []
    for category in [c for c in CATEGORY_ORDER if c in set(frame["category"])]:
        for backbone, layer in layers:
            cells = [means.get((category, backbone, layer, m, metric)) for metric in metrics for m in models]
            if any(c is not None for c in cells):
                rows.append([category, _layer_key(backbone, layer), *(fmt(c) for c in cells)])
    headers = ["category", "layer", *(f"{m} {metric}" for metric in metrics for m in models)]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
