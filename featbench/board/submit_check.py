"""`featbench submit-check`: re-run a random sample of a submitted result's tasks and compare.

A result file proves that it was not edited after it was written (its ``record_sha256``), not
that its numbers came from the model it names. The maintainers' check re-runs a seeded random
sample of the submission's scored tasks here, with the submission's model code, seed and time
budget, on this machine's copy of the task data, and compares every point estimate the
submission reports within a tolerance (training on other hardware or thread counts is not
bit-exact; closed-form models agree to many digits, gradient-trained ones less).

What is checked, in order: the file is a valid, sealed result of the suite (name, version, spec
hash; `featbench.board.leaderboard` rules); the model's source hash equals the submission's (else the
code differs from what produced it); for each sampled task, its data here hash to the
submission's ``task_sha256``, it is scored ``ok`` again, and each metric satisfies
``|here - submitted| <= atol + rtol * |submitted|``. Intervals are not compared: they are
recomputed with few bootstrap resamples (``n_boot``), which moves their ends but not the values.
Image-level scores whose pinned inverter checkpoint is not at hand here (featbench-v1's; see
`featbench.scoring.image_scores`) are not compared either, and the report says so.

The re-run is isolated (`featbench.scoring.isolation`, sandboxed where bwrap works), and the
report says in which mode the submission's tasks were scored: their ``scoring`` (isolation, and
whether the suite's test targets were published or hidden, i.e. scored by the maintainers who
hold them), or "not recorded" for results written before schema 1.1 (scored in-process).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from featbench.core.errors import FeatbenchError
from featbench.core.results import read_result
from featbench.data.suites import Suite, load_suite
from featbench.board.admission import identity_problems
from featbench.core.plugins import resolve_model, source_sha256
from featbench.scoring.isolation import Isolation
from featbench.scoring.map_track import evaluate_map_task
from featbench.scoring import image_scores
from featbench.scoring.runner import Models, RunConfig

ATOL = 0.01
RTOL = 0.02


@dataclass
class CheckReport:
    file: str
    model: str
    checked: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    submitted_modes: dict[str, int] = field(default_factory=dict)  # "isolation X, test targets Y" -> tasks
    rerun_mode: str = ""
    # Scores not compared, and why: image-level ones whose pinned inverter checkpoint is not here.
    not_compared: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def summary(self) -> str:
        head = (f"{self.file}: {self.model}: re-ran {len(self.checked)} task(s): "
                + ("all scores match" if self.ok else f"{len(self.mismatches)} mismatch(es)"))
        modes = "; ".join(f"{mode} ({n} task(s))" for mode, n in sorted(self.submitted_modes.items()))
        return "\n".join([head, f"  submitted scores: {modes}", f"  re-run here: {self.rerun_mode}",
                          *(f"  ran {t}" for t in self.checked), *(f"  NOT COMPARED {m}" for m in self.not_compared),
                          *(f"  MISMATCH {m}" for m in self.mismatches)])


def scoring_mode_text(task: dict[str, Any]) -> str:
    """How a task record was scored, in words (`featbench.scoring.runner.scoring_mode`)."""
    scoring = task.get("scoring")
    if scoring is None:
        return "not recorded (before result schema 1.1: scored in the evaluator's process)"
    return f"isolation {scoring['isolation']}, test targets {scoring['test_targets']}"


def model_spec_from_record(record: dict[str, Any]) -> str:
    """``module:Class`` from the record's ``model.metadata.class`` (``module.Class``)."""
    cls = record["model"].get("metadata", {}).get("class")
    if not isinstance(cls, str) or "." not in cls:
        raise FeatbenchError("the result does not say which class produced it (model.metadata.class); pass --model")
    module, _, name = cls.rpartition(".")
    return f"{module}:{name}"


def close(here: float | None, submitted: float | None, atol: float = ATOL, rtol: float = RTOL) -> bool:
    if here is None or submitted is None:
        return here is None and submitted is None
    return abs(here - submitted) <= atol + rtol * abs(submitted)


def submit_check(path: str | Path, *, suite: Suite | str | None = None, model: str | None = None,
                 sample: int = 3, seed: int = 0, atol: float = ATOL, rtol: float = RTOL, n_boot: int = 20,
                 factory: Callable[[], Any] | None = None, isolation: Isolation | None = None) -> CheckReport:
    """Re-run `sample` of the result's scored tasks (seeded choice) and compare their scores;
    `isolation` is how the re-run scores (default: as `featbench run` does)."""

    path = Path(path)
    record = read_result(path)
    if record["track"] != "map":
        raise FeatbenchError(f"{path}: submit-check re-runs map-track results; this one is {record['track']}")
    suite = load_suite(suite or record["suite"]["name"]) if not isinstance(suite, Suite) else suite
    problems = identity_problems(suite, record)
    if problems:
        raise FeatbenchError(f"{path}: not a result of suite {suite.name} v{suite.version}: " + "; ".join(problems))
    if factory is None:
        factory = resolve_model(model or model_spec_from_record(record))
    probe = factory()
    here = source_sha256(probe)
    if here != record["model"]["source_sha256"]:
        raise FeatbenchError(f"{path}: the model's source here hashes to {here[:12]}, the submission's to "
                             f"{record['model']['source_sha256'][:12]}: this is not the code that produced it "
                             "(check out the submitted version, or pass --model)")
    scored = sorted((t for t in record["tasks"] if t["status"] == "ok"), key=lambda t: t["task_id"])
    if not scored:
        raise FeatbenchError(f"{path}: no scored task to re-run")
    chosen = random.Random(seed).sample(scored, min(sample, len(scored)))
    report = CheckReport(path.name, f"{record['model']['name']} {record['model']['version']}")
    for sub in scored:
        mode = scoring_mode_text(sub)
        report.submitted_modes[mode] = report.submitted_modes.get(mode, 0) + 1
    isolation = isolation or Isolation()
    mode = isolation.resolved()
    report.rerun_mode = f"isolation {mode}, test targets {suite.test_targets}"
    tails = Models()
    for sub in sorted(chosen, key=lambda t: t["task_id"]):
        task = suite.get_task(sub["task_id"])
        cfg = RunConfig(seed=record["seed"], n_boot=n_boot, time_budget_s=sub["time_budget_s"], isolation=isolation)
        again = evaluate_map_task(factory, suite, task, cfg, tails, references=False, mode=mode)
        report.checked.append(task.id)
        if again.task_sha256 != sub["task_sha256"]:
            report.mismatches.append(f"{task.id}: the data here hash to {again.task_sha256[:12]}, the submission's "
                                     f"to {sub['task_sha256'][:12]} (other data; scores not compared)")
            continue
        if again.status != "ok":
            report.mismatches.append(f"{task.id}: failed here: {again.reason}")
            continue
        unavailable = again.provenance.get(image_scores.UNAVAILABLE)
        if unavailable:
            report.not_compared.append(f"{task.id} image-level scores: {unavailable}")
        for metric, score in sorted(sub["metrics"].items()):
            if unavailable and metric in image_scores.METRICS + image_scores.CHANGED_METRICS:
                continue
            mine = again.metrics.get(metric, {}).get("value")
            if not close(mine, score["value"], atol, rtol):
                report.mismatches.append(f"{task.id} {metric}: submitted {score['value']}, here {mine} "
                                         f"(tolerance {atol} + {rtol} x |submitted|)")
    return report
