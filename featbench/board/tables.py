"""The tidy frame of admitted results (one row per model × task × metric), the per-track summaries
built from it, and their text tables (Markdown, CSV)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

import featbench
from featbench.core.errors import FeatbenchError
from featbench.core.results import TaskRecord
from featbench.data.suites import DATA_FORMAT_VERSION, Suite

from featbench.scoring.summaries import CATEGORY_ORDER, HEADLINE, LOWER_IS_BETTER

from featbench.board.admission import Collection
from featbench.board.ranking import RANK_BOOT, RANK_SEED, Z95, rank_interval


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




# What a mapper's and an inverter's ``stopped_by`` say when the budget, not the model, ended training.
BUDGET_STOPPED = ("time_budget", "time limit")


def budget_stops(rec: dict[str, Any]) -> int | None:
    """How many of a result's scored tasks ended training on the budget; None where its model
    records no ``stopped_by`` (a closed-form fit)."""
    said = [TaskRecord.from_dict(t).provenance.get("stopped_by") for t in rec["tasks"] if t["status"] == "ok"]
    said = [s for s in said if s is not None]
    return sum(s in BUDGET_STOPPED for s in said) if said else None


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def mean_score(part: pd.DataFrame) -> dict[str, Any]:
    """A mean over tasks and its interval: the mean of the tasks' 95 % interval ends. The tasks share
    their test images, so their errors move together; where they do not, this interval is wider than
    a joint bootstrap's (under a normal approximation, the sd of a mean is at most the mean of the sds)."""
    return {"value": _num(part["value"].mean()), "ci_low": _num(part["ci_low"].mean()),
            "ci_high": _num(part["ci_high"].mean()), "n_tasks": int(part["value"].notna().sum())}


def layer_key(backbone: str, layer: str) -> str:
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
    layers = list(dict.fromkeys(layer_key(t.backbone, t.layer) for t in tasks))
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
            "budget_stops": budget_stops(rec),
            "overall": {m: mean_score(scored[scored["metric"] == m]) for m in metrics},
            "categories": {c: {m: mean_score(scored[(scored["category"] == c) & (scored["metric"] == m)])
                               for m in metrics} for c in categories},
            "layers": {},
            "layer_tasks_ok": {},
        }
        for key in layers:
            backbone, layer = key.split("/", 1)
            at = scored[(scored["backbone"] == backbone) & (scored["layer"] == layer)]
            entry["layers"][key] = {m: mean_score(at[at["metric"] == m]) for m in metrics}
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


def fmt_budget_stops(entry: dict[str, Any]) -> str:
    """The "budget stops" cell: tasks whose training the budget ended, of those scored."""
    return "-" if entry["budget_stops"] is None else f"{entry['budget_stops']}/{entry['tasks_ok']}"


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
    headers = ["model", "version", "tasks ok", "mean rank [95 % interval]"]
    headers += [f"{c} {m}" for c in categories for m in metrics]
    headers += ["params", "fit s / task", "budget stops", "predict maps / s"]
    rows = []
    for e in sort_models(summary, sort):
        r = e["mean_rank"]
        rank = "-" if r["value"] is None else f"{r['value']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        row = [e["model"], e["version"], fmt_tasks(e), rank]
        row += [fmt_score(e["categories"][c][m]) for c in categories for m in metrics]
        row += [fmt_count(e["n_params"]), fmt(e["fit_s_mean"], 2), fmt_budget_stops(e), fmt(e["predict_per_s_mean"], 0)]
        rows.append(row)
    return headers, rows


def overall_table(summary: dict[str, Any], sort: str | None = None) -> tuple[list[str], list[list[Any]]]:
    """The narrow form of `main_table`: each headline score's mean over all of a model's tasks."""
    metrics = summary["metrics"]
    headers = ["model", "version", "tasks ok", "mean rank [95 %]", *metrics, "params", "fit s / task", "budget stops",
               "predict maps / s"]
    rows = []
    for e in sort_models(summary, sort):
        r = e["mean_rank"]
        rank = "-" if r["value"] is None else f"{r['value']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        rows.append([e["model"], e["version"], fmt_tasks(e), rank,
                     *(fmt_score(e["overall"][m]) for m in metrics),
                     fmt_count(e["n_params"]), fmt(e["fit_s_mean"], 2), fmt_budget_stops(e),
                     fmt(e["predict_per_s_mean"], 0)])
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
             "seeded bootstrap over tasks and over each task's score interval (see featbench.board.ranking.rank_interval).",
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


def csv_text(frame: pd.DataFrame) -> str:
    return frame.to_csv(index=False, lineterminator="\n", float_format="%.10g")


