"""The expected content hash of every task of a suite version (`task_hashes.json`): the ledger a
result file's task hashes are checked against before it enters the leaderboard."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable


from featbench.core.errors import FeatbenchError
from featbench.data.suites import DATA_FORMAT_VERSION, Suite, Task


HASHES_FILE = "task_hashes.json"


def built_task_sha256(suite: Suite, task: Task) -> str | None:
    """The content hash of `task` from the built data in this machine's cache; None when not built.

    Only the datasets' records are read (their keys and per-file sha256), not the files: the
    hash is defined by the records (`TaskData.content_sha256`), and `load_task` checks the files
    against them whenever the data are used.
    """
    from featbench.data.storage import TaskData, read_record, variant_refs
    from featbench.data.suites import ORIGINAL

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

    def agreement(self, tasks: Iterable[Task]) -> str | None:
        """Whether the data built on this machine for `tasks` hash as this ledger says, in a line
        for `featbench build` to print; None where no built task has an entry. Where they differ,
        results scored on these data are left out of the suite's board."""
        built = {t.id: built_task_sha256(self.suite, t) for t in tasks if t.id in self.entries}
        built = {tid: sha for tid, sha in built.items() if sha is not None}
        if not built:
            return None
        differ = sorted(tid for tid, sha in built.items() if sha != self.entries[tid]["sha256"])
        if not differ:
            return f"task hashes: all {len(built)} built tasks match the leaderboard's {HASHES_FILE}"
        first = differ[0]
        return (f"task hashes: {len(differ)} of {len(built)} built tasks differ from the leaderboard's {HASHES_FILE} "
                f"(e.g. {first}: {built[first][:12]} here, {self.entries[first]['sha256'][:12]} there); results "
                "scored on these data are left out of that leaderboard. Features computed in float32 depend on "
                "the machine that extracts them: score on the suite's published data (README, \"Task hashes can "
                "depend on the machine\"); a suite that computes a backbone in float64 (its precision) does not "
                "have this problem")

    def to_json(self) -> str:
        obj = {
            "suite": self.suite.name, "version": self.suite.version, "spec_sha256": self.suite.spec_sha256(),
            "data_format_version": DATA_FORMAT_VERSION,
            "note": "Expected task_sha256 of each task, checked against every result file; see "
                    "featbench.board.hashes.TaskHashes. Entries are only ever added.",
            "tasks": {t.id: self.entries[t.id] for t in self.suite.tasks if t.id in self.entries},
        }
        return json.dumps(obj, indent=1, sort_keys=True) + "\n"


