"""Admission: which result files enter a suite version's leaderboard, and why the others do not."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


from featbench.core.errors import FeatbenchError
from featbench.core.results import ResultError, read_result
from featbench.data.suites import DATA_FORMAT_VERSION, Suite


from featbench.board.hashes import HASHES_FILE, TaskHashes


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


def identity_problems(suite: Suite, rec: dict[str, Any]) -> list[str]:
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
        problems = identity_problems(suite, rec)
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
                                f"{HASHES_FILE} settles it (run `featbench build --suite {suite.cli_name}` and rebuild)")
            elif digest != hashes.entries[tid]["sha256"]:
                problems.append(f"task {tid}: task_sha256 {digest[:12]} is not the suite's {hashes.entries[tid]['sha256'][:12]} "
                                f"({hashes.entries[tid]['source']}): it ran on other data")
        if problems:
            _reject(excluded, name, problems)
            admitted.pop(name)
    excluded.sort(key=lambda e: e.file)
    return Collection(suite, admitted, excluded, hashes)


