"""Result files: schema, seal, atomic writes and overwrite protection."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from featbench.scoring.metrics import Score
from featbench.core.results import (
    RESULT_SCHEMA_VERSION, ResultError, TaskRecord, environment_info, git_commit, load_schema, read_result,
    result_path, seal, validate_result, write_result,
)

HEX = "ab" * 32


def _task(**overrides: Any) -> dict[str, Any]:
    task = {
        "task_id": "map/efficientnet_lite0/blocks.4/rot90", "task_version": 1, "task_sha256": HEX,
        "category": "geometric", "backbone": "efficientnet_lite0", "layer": "blocks.4", "status": "ok",
        "n_train": 800, "n_test": 200, "fit_s": 1.5, "predict_per_s": 900.0, "time_budget_s": None,
        "metrics": {"mse": Score(0.25, 0.2, 0.3).to_dict(), "top1_acc": Score(None, None, None).to_dict()},
        "reference_points": {"identity": {"mse": Score(1.0, 0.9, 1.1).to_dict()}},
        "linear_structure": {"effective_rank": 12.5, "spectral_norm": 3.0},
        "notes": ["prefix carried over from the source"],
    }
    return {**task, **overrides}


def _record(**overrides: Any) -> dict[str, Any]:
    record = {
        "schema_version": RESULT_SCHEMA_VERSION, "featbench_version": "0.1.0", "git_commit": None,
        "suite": {"name": "featbench-v1", "version": 1, "spec_sha256": HEX}, "track": "map",
        "model": {"name": "linear", "version": "1", "n_params": 12_656, "source_sha256": HEX,
                  "metadata": {"ridge": 1.0}},
        "seed": 0, "environment": environment_info("cpu"), "started_at": "2025-01-02T03:04:05.678+00:00",
        "duration_s": 12.0, "tasks": [_task()],
    }
    return seal({**record, **overrides})


def _refused(record: dict[str, Any], *fragments: str) -> None:
    with pytest.raises(ResultError) as info:
        validate_result(seal(record), where="r.json")
    for fragment in ("r.json", *fragments):
        assert fragment in str(info.value)


def test_schema_is_valid_draft_2020_12_and_versioned():
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert RESULT_SCHEMA_VERSION in schema["properties"]["schema_version"]["enum"]


def test_round_trip(tmp_path):
    path = result_path(tmp_path, "linear", "featbench-v1")
    written = write_result(path, _record())
    assert read_result(path) == written
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temporary left


def test_hash_detects_an_edited_value(tmp_path):
    path = tmp_path / "r.json"
    write_result(path, _record())
    obj = json.loads(path.read_text())
    obj["tasks"][0]["metrics"]["mse"]["value"] = 0.01
    path.write_text(json.dumps(obj))
    with pytest.raises(ResultError, match="record_sha256 does not match"):
        read_result(path)


def test_missing_field_is_named():
    record = _record()
    del record["seed"]
    _refused(record, "'seed' is a required property")


def test_wrong_type_is_named():
    record = _record()
    record["tasks"][0]["n_test"] = "200"
    _refused(record, "$.tasks[0].n_test", "not of type 'integer'")


def test_extra_field_is_refused_at_top_level_and_in_tasks():
    _refused(_record(score=1.0), "'score' was unexpected")
    _refused(_record(tasks=[_task(bonus=True)]), "$.tasks[0]", "'bonus' was unexpected")


def test_failed_task_needs_a_reason():
    _refused(_record(tasks=[_task(status="failed", metrics={})]), "$.tasks[0]", "'reason' is a required property")
    validate_result(_record(tasks=[_task(status="failed", reason="out of memory", metrics={})]))


def test_bad_hashes_scores_and_numbers_are_refused():
    _refused(_record(tasks=[_task(task_sha256="abc")]), "$.tasks[0].task_sha256")
    _refused(_record(tasks=[_task(metrics={"mse": {"value": 1.0}})]), "'ci_low' is a required property")
    _refused(_record(duration_s=float("nan")), "$.duration_s", "not a finite number")
    _refused(_record(started_at="yesterday"), "$.started_at")


def test_duplicate_task_ids_are_refused():
    _refused(_record(tasks=[_task(), _task()]), "occurs 2 times")


def test_invalid_json_is_refused_clearly(tmp_path):
    path = tmp_path / "r.json"
    path.write_text('{"schema_version": "1.0",')
    with pytest.raises(ResultError, match="not valid JSON"):
        read_result(path)
    path.write_text('{"duration_s": NaN}')
    with pytest.raises(ResultError, match="NaN is not a JSON number"):
        read_result(path)


def test_failed_validation_leaves_the_old_file_intact(tmp_path):
    path = tmp_path / "r.json"
    write_result(path, _record())
    before = path.read_bytes()
    with pytest.raises(ResultError):
        write_result(path, _record(seed="zero"))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_rerun_of_the_same_model_and_suite_overwrites(tmp_path):
    path = tmp_path / "r.json"
    write_result(path, _record())
    write_result(path, _record(duration_s=99.0))
    assert read_result(path)["duration_s"] == 99.0


@pytest.mark.parametrize("field, change", [
    ("model", {"name": "mlp"}), ("model", {"version": "2"}),
    ("suite", {"name": "mini"}), ("suite", {"version": 2}),
])
def test_overwrite_protection(tmp_path, field, change):
    path = tmp_path / "r.json"
    write_result(path, _record())
    before = path.read_bytes()
    other = _record()
    other[field] = {**other[field], **change}
    with pytest.raises(ResultError, match="refusing to overwrite"):
        write_result(path, other)
    assert path.read_bytes() == before
    write_result(path, other, overwrite=True)
    assert read_result(path)[field] == other[field]


def test_seal_ignores_a_stale_hash_and_copies():
    record = _record()
    stale = {**copy.deepcopy(record), "seed": 7, "record_sha256": record["record_sha256"]}
    resealed = seal(stale)
    assert resealed["record_sha256"] != record["record_sha256"] and stale["record_sha256"] == record["record_sha256"]
    validate_result(resealed)


def test_result_path_is_filesystem_safe_and_unique(tmp_path):
    assert result_path(tmp_path, "linear", "featbench-v1") == tmp_path / "featbench-v1" / "results" / "linear.json"
    a, b = result_path(tmp_path, "my/model v2", "s"), result_path(tmp_path, "my_model_v2", "s")
    assert a != b and a.parent == tmp_path / "s" / "results" and "/" not in a.name and " " not in a.name
    assert not result_path(tmp_path, "../up", "s").name.startswith(".")


def test_environment_and_git_commit():
    env = environment_info("cpu")
    assert env["device"] == "cpu" and env["threads"] >= 1
    commit = git_commit()
    assert commit is None or re.fullmatch("[0-9a-f]{40}", commit)


def test_a_task_record_writes_its_provenance_and_keeps_its_notes(tmp_path):
    record = TaskRecord.from_dict(_task())
    record.record("ridge", 0.1)
    record.record("isolation limits", "wall 60 s")
    written = record.to_dict()
    assert written["provenance"] == {"ridge": "0.1", "isolation limits": "wall 60 s"}
    assert written["notes"] == ["prefix carried over from the source", "ridge: 0.1", "isolation limits: wall 60 s"]
    assert "reason" not in written and "n_params" not in written  # optional fields unset: left out
    write_result(tmp_path / "r.json", _record(tasks=[written]))
    assert TaskRecord.from_dict(read_result(tmp_path / "r.json")["tasks"][0]) == record


def test_records_before_1_2_get_their_provenance_from_their_notes():
    old = _task(notes=["threads: 2", "Traceback (most recent call last): ...", "ridge: 0.1", "stopped_by: time_budget",
                       "image-level scores on 200 test images at 64 px, inverter decoder (checkpoint sha256 "
                       "d18f05f2edd1…)", "the mapper predicts no class-token prefix: the source's prefix was carried over"])
    record = TaskRecord.from_dict(old)
    assert record.provenance == {
        "threads": "2", "ridge": "0.1", "stopped_by": "time_budget", "image_scores n_images": "200",
        "image_scores resolution": "64", "image_scores inverter": "decoder",
        "image_scores checkpoint_sha256": "d18f05f2edd1"}
    assert {k: v for k, v in record.to_dict().items() if k != "provenance"} == old  # nothing else changes


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "leaderboard").glob("*/results/*.json")),
                         ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_committed_results_read_as_task_records(path):
    for task in read_result(path)["tasks"]:
        written = TaskRecord.from_dict(task).to_dict()
        if "provenance" not in task:  # a pre-1.2 record: its provenance is read from its notes, not written back
            written.pop("provenance", None)
        assert written == task
