"""The leaderboard of a suite version: result files in, tables (Markdown, CSV, JSON, HTML) out.

Layout, for a suite ``S`` (docs/design.md, "Results and leaderboard")::

    leaderboard/S/results/*.json    one result file per (model, track), as `featbench run` writes them
    leaderboard/S/task_hashes.json  the expected content hash of every task (see `TaskHashes`)
    leaderboard/S/LEADERBOARD.md    tabulate tables: per track one row per model, then per layer
    leaderboard/S/leaderboard.csv   tidy: one row per model x task x metric
    leaderboard/S/leaderboard.json  the same numbers as the tables, plus what was left out and why
    leaderboard/S/index.html        a static page (`featbench.board.html`)

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tabulate import tabulate

import featbench
from featbench.core.errors import FeatbenchError
from featbench.data.suites import Suite

from featbench.board.admission import collect
from featbench.board.hashes import HASHES_FILE
from featbench.board.ranking import RANK_BOOT, RANK_SEED
from featbench.board.tables import (csv_text, fmt, fmt_score, layer_key, main_table, mean_score, overall_table,
                                   render_markdown, summarize, tidy_frame)
from featbench.scoring.summaries import CATEGORY_ORDER, TRACKS
from featbench.core.cache import write_bytes

OUTPUT_FILES = ("LEADERBOARD.md", "leaderboard.csv", "leaderboard.json", "index.html", HASHES_FILE)


def default_root(suite_name: str) -> Path:
    """``leaderboard/<suite>`` of the checkout when run from one, else of the working directory."""
    checkout = Path(featbench.__file__).resolve().parents[1] / "leaderboard"
    base = checkout if checkout.is_dir() else Path("leaderboard")
    return base / suite_name


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
    from featbench.board.html import render_html

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
        write_bytes(out_dir / name, text)
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
            track: str = "map", use_built_data: bool = True, intervals: bool = False) -> str:
    """A Markdown table of `models` side by side: per manipulation category and layer, the mean of
    each of `metrics` over the tasks each model scored there (README-ready; "-" where none), with
    its interval (`mean_score`) if `intervals`."""
    root = Path(root) if root is not None else default_root(suite.name)
    frame = tidy_frame(collect(suite, root, use_built_data=use_built_data).results)
    frame = frame[(frame["track"] == track) & (frame["status"] == "ok")]
    unknown = sorted(set(models) - set(frame["model"])) + sorted(set(metrics) - set(frame["metric"].dropna()))
    if unknown:
        raise FeatbenchError(f"no admitted {track}-track result has {', '.join(map(repr, unknown))}")
    groups = dict(tuple(frame[frame["model"].isin(models) & frame["metric"].isin(metrics)]
                        .groupby(["category", "backbone", "layer", "model", "metric"])))
    layers = [(b, layer) for b, ls in suite.backbones.items() for layer in ls]
    rows = []
    for category in [c for c in CATEGORY_ORDER if c in set(frame["category"])]:
        for backbone, layer in layers:
            cells = [groups.get((category, backbone, layer, m, metric)) for metric in metrics for m in models]
            if any(c is not None for c in cells):
                scores = [None if c is None else mean_score(c) for c in cells]
                shown = [fmt_score(s) if intervals else fmt(None if s is None else s["value"]) for s in scores]
                rows.append([category, layer_key(backbone, layer), *shown])
    headers = ["category", "layer", *(f"{m} {metric}" for metric in metrics for m in models)]
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
