"""Result files: one JSON per (model, suite version) run, validated against a schema and sealed.

The schema is ``featbench/core/schema/result.schema.json`` (JSON Schema draft 2020-12). A record is
*sealed* by its ``record_sha256``: the sha256 of `featbench.core.hashing.canonical_json` of the record
without that field, so any edit after writing (a hand-tuned number) is detected on reading.
Only `write_result` puts result files on disk: it validates, seals and replaces atomically.
`TaskRecord` is one task's record, as the tracks fill it in and as it is read back.
"""

from __future__ import annotations

import json
import math
import platform
import re
import subprocess
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import torch

from featbench.core.cache import write_bytes
from featbench.core.errors import FeatbenchError
from featbench.core.hashing import sha256_json
from featbench.core.paths import PACKAGE_DIR

# 1.1: task records say how they were scored ("scoring"); 1.2: and their provenance as named values
# ("provenance"), which earlier versions wrote into their notes only (see `TaskRecord.from_dict`).
RESULT_SCHEMA_VERSION = "1.2"
SCHEMA_PATH = Path(__file__).resolve().parent / "schema" / "result.schema.json"
HASH_FIELD = "record_sha256"
# Enough problems to fix a file in one go, few enough to read.
_MAX_REPORTED = 10
_MAX_MESSAGE = 200


class ResultError(FeatbenchError):
    """A result file is malformed, tampered with, or would overwrite another run's result."""


def load_schema() -> dict[str, Any]:
    """The result schema, freshly parsed (callers may modify their copy)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(load_schema())


def _record_sha256(obj: dict[str, Any]) -> str:
    return sha256_json({k: v for k, v in obj.items() if k != HASH_FIELD})


def seal(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy of `obj` with ``record_sha256`` set to the hash of everything else."""
    body = {k: v for k, v in obj.items() if k != HASH_FIELD}
    return {**body, HASH_FIELD: sha256_json(body)}


def _non_finite(obj: Any, path: str = "$") -> Iterator[str]:
    """JSON paths of NaN / ±inf floats: valid for jsonschema's "number" but not JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        yield path
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _non_finite(value, f"{path}.{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _non_finite(value, f"{path}[{i}]")


def _problems(obj: Any) -> list[str]:
    """Every schema violation (sorted by field path), non-finite number and duplicate task id."""
    errors = sorted(_validator().iter_errors(obj), key=lambda e: e.json_path)
    problems = [f"at {e.json_path}: {e.message[:_MAX_MESSAGE]}" for e in errors]
    problems += [f"at {path}: not a finite number (NaN and infinity are not JSON)" for path in _non_finite(obj)]
    if not errors:
        ids = [task["task_id"] for task in obj["tasks"]]
        problems += [f"at $.tasks: task_id {tid!r} occurs {ids.count(tid)} times"
                     for tid in sorted(set(ids)) if ids.count(tid) > 1]
    return problems


def validate_result(obj: Any, where: str = "result") -> None:
    """Raise `ResultError` unless `obj` is a valid, untampered result record.

    The message starts with `where` (a file name, say) and names each offending field by its
    JSON path, e.g. ``at $.tasks[0]: 'reason' is a required property``.
    """
    problems = _problems(obj)
    if problems:
        shown = "\n  ".join(problems[:_MAX_REPORTED])
        more = f"\n  ... and {len(problems) - _MAX_REPORTED} more" if len(problems) > _MAX_REPORTED else ""
        raise ResultError(f"{where}: invalid result ({len(problems)} problem(s)):\n  {shown}{more}")
    if obj[HASH_FIELD] != _record_sha256(obj):
        raise ResultError(f"{where}: record_sha256 does not match the record's content: "
                          "it was edited after it was written")


# Before 1.2, provenance lived in notes of the form "key: value" with these keys ...
_NOTED_KEYS = ("threads", "stopped_by", "ridge", "epochs", "steps", "sampler", "weights_sha256",
               "isolation limits", "isolation overhead_s", "image scores unavailable")
# ... and in the image-score note, which names a checkpoint by the first 12 digits of its sha256.
_IMAGE_SCORES_NOTE = re.compile(r"image-level scores on (\d+) test images at (\d+) px, "
                                r"inverter (.+) \(checkpoint sha256 ([0-9a-f]{12})…\)")
IMAGE_SCORES_KEYS = ("image_scores n_images", "image_scores resolution", "image_scores inverter",
                     "image_scores checkpoint_sha256")


def _provenance_from_notes(notes: list[str]) -> dict[str, str]:
    """A pre-1.2 task record's provenance, read back from its notes (the last note of a key wins)."""
    provenance = {}
    for text in notes:
        key, sep, value = text.partition(": ")
        if sep and key in _NOTED_KEYS:
            provenance[key] = value
        elif match := _IMAGE_SCORES_NOTE.fullmatch(text):
            provenance |= dict(zip(IMAGE_SCORES_KEYS, match.groups()))
    return provenance


@dataclass
class TaskRecord:
    """One task's record in a result file: what the tracks fill in and `to_dict` writes.

    ``provenance`` holds the named values that say how the task was scored (the threads, the
    model's own account of its fit, the isolation limits, the image-score checkpoint ...), which
    resumed runs check; ``notes`` are for people (each provenance value appears there as well, as
    ``key: value``), and nothing reads them back.
    """

    task_id: str
    task_version: int
    task_sha256: str
    category: str | None
    backbone: str
    layer: str
    n_train: int
    n_test: int
    time_budget_s: float | None
    status: str | None = None  # "ok" or "failed", once scored
    reason: str | None = None  # why it failed
    n_params: int | None = None
    fit_s: float | None = None
    predict_per_s: float | None = None
    metrics: dict[str, dict] = field(default_factory=dict)
    reference_points: dict[str, dict] = field(default_factory=dict)
    linear_structure: dict[str, Any] | None = None
    scoring: dict[str, str] | None = None
    provenance: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def record(self, key: str, value: Any) -> None:
        """Set a provenance value, with its note for people (``key: value``)."""
        self.provenance[key] = str(value)
        self.notes.append(f"{key}: {value}")

    def fail(self, reason: str, details: str) -> "TaskRecord":
        self.status, self.reason = "failed", reason
        self.notes.append(details)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The record as a result file holds it (optional fields left out where unset)."""
        optional = ("reason", "n_params", "linear_structure", "scoring")
        return {k: v for k, v in asdict(self).items() if not (k in optional and v is None)}

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> "TaskRecord":
        """A task record as read from a result file of any schema version; one written before 1.2
        gets the provenance its notes gave."""
        record = cls(**obj)
        if "provenance" not in obj:
            record.provenance = _provenance_from_notes(record.notes)
        return record


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def read_result(path: str | Path) -> dict[str, Any]:
    """Read and validate a result file; `ResultError` on unreadable, non-JSON or invalid content."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ResultError(f"{path}: cannot read result file: {e}") from e
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except ValueError as e:  # JSONDecodeError included
        raise ResultError(f"{path}: not valid JSON: {e}") from e
    validate_result(obj, where=str(path))
    return obj


def run_identity(obj: Any) -> tuple[Any, ...]:
    """What makes two records results of the same run: model name/version, suite name/version."""
    model = obj.get("model") if isinstance(obj, dict) else None
    suite = obj.get("suite") if isinstance(obj, dict) else None
    model, suite = (model if isinstance(model, dict) else {}), (suite if isinstance(suite, dict) else {})
    return model.get("name"), model.get("version"), suite.get("name"), suite.get("version")


def _describe(identity: tuple[Any, ...]) -> str:
    model, model_version, suite, suite_version = identity
    return f"model {model!r} version {model_version!r} on suite {suite!r} version {suite_version!r}"


# How to get past a refusal to overwrite, for a CLI user and a Python one.
_REPLACE = "move it away or write elsewhere (featbench run --out); write_result(..., overwrite=True) replaces it"


def _check_same_run(path: Path, record: dict[str, Any]) -> None:
    try:
        existing = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ResultError(f"{path} exists and is not a readable result file ({e}); "
                          f"refusing to overwrite it ({_REPLACE})") from e
    if run_identity(existing) != run_identity(record):
        raise ResultError(f"{path} holds the result of {_describe(run_identity(existing))}; refusing to "
                          f"overwrite it with {_describe(run_identity(record))} ({_REPLACE})")


def check_writable(path: str | Path, obj: dict[str, Any]) -> None:
    """Raise `ResultError` now if `write_result(path, obj)` would refuse to replace the file there,
    so that a run finds out before it scores anything."""
    path = Path(path)
    if path.exists():
        _check_same_run(path, obj)


def write_result(path: str | Path, obj: dict[str, Any], *, overwrite: bool = False) -> dict[str, Any]:
    """Seal and validate `obj`, then write it to `path` atomically; return the sealed record.

    An existing file is replaced only if it holds a result of the same model name/version and
    suite name/version (a rerun or a resumed run), or with ``overwrite=True``. The record goes to
    a temporary file in the same folder and is moved into place with `os.replace`, so `path`
    holds either the old file or the complete new one, never a partial file.
    """
    path = Path(path)
    record = seal(obj)
    validate_result(record, where=str(path))
    if path.exists() and not overwrite:
        _check_same_run(path, record)
    # Indented for people and diffs; the hash is over canonical JSON, so layout does not matter.
    write_bytes(path, json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return record


def environment_info(device: str | torch.device | None = None) -> dict[str, Any]:
    """Where a run happened: device (``cpu`` or the CUDA device's name), threads and versions.

    `device` is the one the run used; by default the first CUDA device when there is one.
    """
    import timm  # only for its version; importing it up front would slow down `import featbench.core.results`

    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {
        "device": name, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "timm": timm.__version__, "python": platform.python_version(), "platform": platform.platform(),
    }


def git_commit() -> str | None:
    """The commit of the featbench checkout this code runs from; None outside a git checkout.

    A featbench installed into site-packages inside some other repository is not a checkout of
    featbench, hence the check that the repository's top level is featbench's own folder.
    """
    root = PACKAGE_DIR.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    if len(out) != 2 or Path(out[0]).resolve() != root.resolve():
        return None
    return out[1]


def _safe_name(name: str) -> str:
    """A file name for `name`: unsafe characters become ``_``; then a short hash keeps it unique."""
    safe = re.sub(r"[^A-Za-z0-9._+-]", "_", name).lstrip(".") or "_"
    if safe == name:
        return name
    return f"{safe}-{sha256_json(name)[:8]}"


def result_path(out_dir: str | Path, model_name: str, suite_name: str) -> Path:
    """``<out_dir>/<suite>/results/<model>.json``: with ``out_dir = leaderboard`` the leaderboard's layout."""
    return Path(out_dir) / _safe_name(suite_name) / "results" / f"{_safe_name(model_name)}.json"
