"""The leaderboard: which result files get in, the numbers in its tables, byte-identical rebuilds."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

import featbench as fb
from featbench.board import hashes as task_hashes
from featbench.board import ranking
from featbench.board import leaderboard as lb
from featbench.cli import main
from featbench.core.results import seal
from tests.conftest import make_tiny_suite
from featbench.core.results import write_result
from tests.leaderboard_helpers import QUALITY, fake_task_hash, result_record, scores_for, task_record, write_model


@pytest.fixture
def suite(tmp_path, private_cache):
    return make_tiny_suite(tmp_path / "suite")


@pytest.fixture
def root(tmp_path, suite):
    """A leaderboard folder with three valid map results; `bad` failed one task."""
    root = tmp_path / "lb"
    first = suite.select(track="map")[0].id
    write_model(root, suite, "good", scores_for("good"), fit_s=10.0, predict_per_s=50.0, n_params=1000)
    write_model(root, suite, "mid", scores_for("mid"), fit_s=1.0, predict_per_s=500.0, n_params=100)
    write_model(root, suite, "bad", scores_for("bad"), failed=(first,), fit_s=0.1, predict_per_s=5000.0, n_params=0)
    return root


def _collect(suite, root):
    return lb.collect(suite, root, use_built_data=False)


def _models(board, track="map"):
    return [e["model"] for e in board["tracks"][track]["models"]]


# -- what gets in ------------------------------------------------------------------------------

def test_valid_results_are_admitted_and_hashes_recorded(suite, root):
    c = _collect(suite, root)
    assert sorted(c.results) == ["bad.json", "good.json", "mid.json"] and c.excluded == []
    map_ids = [t.id for t in suite.select(track="map")]
    assert sorted(c.hashes.entries) == sorted(map_ids)  # invert tasks: nobody reported them
    entry = c.hashes.entries[map_ids[0]]
    assert entry == {"sha256": fake_task_hash(map_ids[0]), "source": "results: bad.json, good.json, mid.json"}


def test_wrong_task_hash_is_named_and_left_out(suite, root):
    lb.build(suite, root, use_built_data=False)  # writes task_hashes.json from the agreeing results
    task = suite.select(track="map")[4]
    write_model(root, suite, "other-data", scores_for("good"),
                hash_of=lambda t: fake_task_hash(t.id, "rebuilt elsewhere" if t.id == task.id else ""))
    report = lb.build(suite, root, use_built_data=False)
    (ex,) = report.board["excluded"]
    assert ex["file"] == "other-data.json"
    assert task.id in ex["reason"] and "ran on other data" in ex["reason"]
    assert "other-data" not in _models(report.board)
    md = (root / "LEADERBOARD.md").read_text()
    assert "## Left out" in md and "`other-data.json`" in md
    assert "other-data" not in set(pd.read_csv(root / "leaderboard.csv")["model"])
    assert "other-data.json" in (root / "index.html").read_text()


def test_results_that_disagree_with_no_reference_are_all_left_out(suite, root):
    task = suite.select(track="map")[2]
    write_model(root, suite, "x", scores_for("good"),
                hash_of=lambda t: fake_task_hash(t.id, "x" if t.id == task.id else ""))
    c = _collect(suite, root)
    assert sorted(e.file for e in c.excluded) == ["bad.json", "good.json", "mid.json", "x.json"]
    assert all("disagree" in e.reason and task.id in e.reason for e in c.excluded)
    assert task.id not in c.hashes.entries


def test_task_hash_file_is_authoritative_and_only_extended(suite, root):
    task = suite.select(track="map")[0]
    hashes = task_hashes.TaskHashes(suite, {task.id: {"sha256": fake_task_hash(task.id, "maintainers"), "source": "built data"}})
    (root / lb.HASHES_FILE).write_text(hashes.to_json())
    c = _collect(suite, root)
    # All three ran on other data for that task (bad.json failed it, but on the same other data).
    assert sorted(e.file for e in c.excluded) == ["bad.json", "good.json", "mid.json"]
    assert all(task.id in e.reason and "built data" in e.reason for e in c.excluded)
    assert c.hashes.entries[task.id]["sha256"] == fake_task_hash(task.id, "maintainers")
    # The other tasks' entries came from the results and are added to the file on build.
    lb.build(suite, root, use_built_data=False)
    written = json.loads((root / lb.HASHES_FILE).read_text())["tasks"]
    assert written[task.id]["source"] == "built data" and len(written) == len(suite.select(track="map"))


def test_task_hash_file_of_another_spec_is_refused(suite, root, tmp_path):
    other = make_tiny_suite(tmp_path / "other", manipulations=["rot90", "hflip"])
    (root / lb.HASHES_FILE).write_text(task_hashes.TaskHashes(other).to_json().replace(other.name, suite.name))
    with pytest.raises(fb.FeatbenchError, match="never changes"):
        _collect(suite, root)


def test_another_suite_version_or_spec_or_data_format_is_left_out(suite, root, tmp_path):
    v2 = make_tiny_suite(tmp_path / "v2", version=2)
    write_model(root, v2, "from-v2", scores_for("good"))
    changed = make_tiny_suite(tmp_path / "changed", split={"n_test": 3})
    write_model(root, changed, "from-changed", scores_for("good"))
    path = write_model(root, suite, "format-99", scores_for("good"))
    rec = json.loads(path.read_text())
    rec["suite"]["data_format_version"] = 99
    path.write_text(json.dumps(seal(rec)))
    c = _collect(suite, root)
    reasons = {e.file: e.reason for e in c.excluded}
    assert "not tiny-test v1" in reasons["from-v2.json"]
    assert "spec hash" in reasons["from-changed.json"]
    assert "data format 99" in reasons["format-99.json"]
    assert sorted(c.results) == ["bad.json", "good.json", "mid.json"]


def test_malformed_or_edited_files_are_left_out(suite, root):
    path = root / "results" / "mid.json"
    rec = json.loads(path.read_text())
    rec["tasks"][0]["n_test"] = "four"
    (root / "results" / "malformed.json").write_text(json.dumps(seal(rec)))
    rec = json.loads(path.read_text())
    rec["tasks"][0]["metrics"]["r2"]["value"] = 0.999
    (root / "results" / "edited.json").write_text(json.dumps(rec))
    (root / "results" / "broken.json").write_text("{not json")
    c = _collect(suite, root)
    reasons = {e.file: e.reason for e in c.excluded}
    assert "$.tasks[0].n_test" in reasons["malformed.json"]
    assert "record_sha256" in reasons["edited.json"]
    assert "not valid JSON" in reasons["broken.json"]
    assert sorted(c.results) == ["bad.json", "good.json", "mid.json"]


def test_duplicate_model_is_left_out_with_both_files_named(suite, root):
    shutil.copyfile(root / "results" / "mid.json", root / "results" / "mid-again.json")
    c = _collect(suite, root)
    reasons = {e.file: e.reason for e in c.excluded}
    assert set(reasons) == {"mid.json", "mid-again.json"}
    assert "mid-again.json" in reasons["mid.json"] and "mid.json" in reasons["mid-again.json"]
    assert sorted(c.results) == ["bad.json", "good.json"]


def test_unknown_task_or_wrong_task_version_is_left_out(suite, root):
    path = root / "results" / "good.json"
    rec = json.loads(path.read_text())
    rec["model"]["name"] = "renamed"
    rec["tasks"][0]["task_id"] = "map/nope/blocks.1/rot90"
    rec["tasks"][1]["task_version"] = 7
    (root / "results" / "renamed.json").write_text(json.dumps(seal(rec)))
    reason = {e.file: e.reason for e in _collect(suite, root).excluded}["renamed.json"]
    assert "not a task of suite" in reason and "version 7" in reason


# -- the numbers --------------------------------------------------------------------------------

def test_tables_hold_the_means_counts_and_order(suite, root):
    board = lb.build(suite, root, use_built_data=False).board
    summary = board["tracks"]["map"]
    assert _models(board) == ["good", "mid", "bad"]  # best mean rank first
    assert summary["metrics"] == ["r2", "cos_median", "top1_agree", "emb_cos"]
    by = {e["model"]: e for e in summary["models"]}
    n_map = len(suite.select(track="map"))
    assert (by["bad"]["tasks_ok"], by["bad"]["tasks_failed"], by["good"]["tasks_ok"]) == (n_map - 1, 1, n_map)
    assert by["good"]["mean_rank"]["value"] == 1.0 and by["good"]["mean_rank"]["ci_high"] <= 1.5
    assert (by["good"]["n_params"], by["mid"]["fit_s_mean"], by["bad"]["predict_per_s_mean"]) == (1000, 1.0, 5000.0)
    # A category mean, recomputed here from the inputs; the failed task is not in bad's mean.
    for model in QUALITY:
        failed = {suite.select(track="map")[0].id} if model == "bad" else set()
        tasks = [t for t in suite.select(track="map") if t.category == "geometric" and t.id not in failed]
        want = np.mean([scores_for(model)(t)["r2"] for t in tasks])
        got = by[model]["categories"]["geometric"]["r2"]
        assert got["value"] == pytest.approx(want) and got["n_tasks"] == len(tasks)
        assert got["ci_low"] == pytest.approx(want - 0.01) and got["ci_high"] == pytest.approx(want + 0.01)
    md = (root / "LEADERBOARD.md").read_text()
    assert md.index("| good") < md.index("| mid") < md.index("| bad")
    assert f"{n_map - 1}/{n_map}" in md and "#### tiny_random_cnn_for_tests/blocks.3" in md
    csv = pd.read_csv(root / "leaderboard.csv")
    n_metrics = len(scores_for("good")(suite.select(track="map")[0]))
    assert len(csv) == 3 * n_map * n_metrics - n_metrics + 1  # bad's failed task: one row, no metric
    failed_rows = csv[csv["status"] == "failed"]
    assert len(failed_rows) == 1 and failed_rows["metric"].isna().all()
    assert json.loads((root / "leaderboard.json").read_text()) == board


def test_tables_count_the_fits_a_budget_ended(suite, root):
    """"budget stops": of a model's scored tasks, those whose training its time budget ended (a
    mapper's time_budget, an inverter's time limit; a pre-1.2 record's notes count too); "-" for
    a model that records no stopped_by."""
    tasks = suite.select(track="map")
    said = ["time_budget", "converged", "early_stopping"]
    recs = [task_record(t, scores_for("mid")(t)) for t in tasks]
    for i, rec in enumerate(recs):
        rec["provenance"] = {"stopped_by": said[i % 3]}
    recs[1] = task_record(tasks[1], scores_for("mid")(tasks[1])) | {"notes": ["stopped_by: time_budget"]}  # pre-1.2
    write_result(root / "results" / "trained.json", result_record(suite, "trained", recs))
    board = lb.build(suite, root, use_built_data=False).board
    by = {e["model"]: e for e in board["tracks"]["map"]["models"]}
    want = sum(i % 3 == 0 or i == 1 for i in range(len(tasks)))
    assert by["trained"]["budget_stops"] == want and by["mid"]["budget_stops"] is None
    md = (root / "LEADERBOARD.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| trained"))
    cells = [c.strip() for c in row.split("|")]
    header = [c.strip() for c in next(line for line in md.splitlines() if line.startswith("| model")).split("|")]
    assert cells[header.index("budget stops")] == f"{want}/{len(tasks)}"
    mid = [c.strip() for c in next(line for line in md.splitlines() if line.startswith("| mid")).split("|")]
    assert mid[header.index("budget stops")] == "-"


def test_invert_results_get_their_own_table(suite, root):
    write_model(root, suite, "decoder", lambda t: {"lpips": 0.4, "ssim": 0.5}, track="invert")
    board = lb.build(suite, root, use_built_data=False).board
    assert _models(board, "invert") == ["decoder"] and "decoder" not in _models(board, "map")
    assert board["tracks"]["invert"]["metrics"] == ["lpips", "ssim"]
    assert "## Invert track" in (root / "LEADERBOARD.md").read_text()


def test_build_twice_gives_identical_bytes(suite, root, tmp_path):
    lb.build(suite, root, tmp_path / "one", use_built_data=False)
    lb.build(suite, root, tmp_path / "two", use_built_data=False)
    for name in lb.OUTPUT_FILES:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    lb.build(suite, root, use_built_data=False)  # in place: now task_hashes.json is read back
    first = {name: (root / name).read_bytes() for name in lb.OUTPUT_FILES}
    lb.build(suite, root, use_built_data=False)
    assert first == {name: (root / name).read_bytes() for name in lb.OUTPUT_FILES}
    assert first["index.html"] == (tmp_path / "one" / "index.html").read_bytes()


def test_show_sorts_and_refuses_unknown_keys(suite, root, capsys):
    text = lb.show(suite, root, sort="predict_per_s", use_built_data=False)
    assert text.index("bad ") < text.index("mid ") < text.index("good ")
    text = lb.show(suite, root, sort="geometric/r2", use_built_data=False, wide=True)
    assert text.index("good ") < text.index("mid ") < text.index("bad ")
    with pytest.raises(fb.FeatbenchError, match="cannot sort by"):
        lb.show(suite, root, sort="nope", use_built_data=False)
    assert main(["leaderboard", "show", "--suite", str(suite.path), "--root", str(root), "--sort", "model",
                 "--no-built-data"]) == 0
    out = capsys.readouterr().out
    assert out.index("bad ") < out.index("good ") < out.index("mid ")


def test_cli_build(suite, root, capsys):
    assert main(["leaderboard", "build", "--suite", str(suite.path), "--root", str(root), "--no-built-data"]) == 0
    assert "3 result file(s) in, 0 left out" in capsys.readouterr().out
    assert all((root / name).is_file() for name in lb.OUTPUT_FILES)


# -- rank intervals -----------------------------------------------------------------------------

def test_ranks_with_ties_and_missing_scores():
    v = np.array([[[0.9]], [[0.5]], [[0.5]], [[np.nan]]])  # models x tasks x metrics
    assert ranking._ranks(v, np.array([True]))[:, 0, 0].tolist() == [1.0, 2.5, 2.5, 4.0]
    assert ranking._ranks(v, np.array([False]))[:, 0, 0].tolist() == [3.0, 1.5, 1.5, 4.0]
    v = np.array([[[np.nan]], [[np.nan]], [[0.1]]])
    assert ranking._ranks(v, np.array([True]))[:, 0, 0].tolist() == [2.5, 2.5, 1.0]


def test_rank_interval_on_a_hand_checked_example():
    # Two tasks, one score. Ranks: A = (1, 2), B = (2, 1), C = (3, 3); mean ranks 1.5, 1.5, 3.
    values = np.array([[[0.9], [0.5]],
                       [[0.8], [0.7]],
                       [[0.1], [0.2]]])
    point, low, high = ranking.rank_interval(values, [True], n_boot=2000, seed=1)
    assert point.tolist() == [1.5, 1.5, 3.0]
    # Resampling 2 tasks: A's mean rank is 1 (both draws task 1, p = 1/4), 1.5 (p = 1/2) or 2
    # (p = 1/4); the central 95 % of 2000 replicates spans the extremes.
    assert low.tolist() == [1.0, 1.0, 3.0] and high.tolist() == [2.0, 2.0, 3.0]
    # A score that is lower-is-better flips the order.
    point, _, _ = ranking.rank_interval(values, [False], n_boot=10)
    assert point.tolist() == [2.5, 2.5, 1.0]
    # Zero-width score intervals: the normal draw changes nothing.
    p2, l2, h2 = ranking.rank_interval(values, [True], sigma=np.zeros_like(values), n_boot=2000, seed=1)
    assert (p2.tolist(), l2.tolist(), h2.tolist()) == ([1.5, 1.5, 3.0], [1.0, 1.0, 3.0], [2.0, 2.0, 3.0])


def test_models_are_ranked_only_on_the_tasks_they_apply_to():
    # Three models, two tasks, one score; C applies to task 1 only (say, a geometric-only mapper).
    values = np.array([[[0.5], [0.9]],
                       [[0.7], [0.4]],
                       [[0.9], [np.nan]]])
    applies = np.array([[True, True], [True, True], [True, False]])
    # Task 1, all three compete: C 1, B 2, A 3. Task 2, A and B only: places 1 and 2 rescale to
    # the range of three models, A 1 and B 3. Mean ranks: A (3 + 1)/2 = 2, B (2 + 3)/2 = 2.5, C 1.
    ranks = ranking._ranks(values, np.array([True]), applies)
    assert ranks[:2, :, 0].tolist() == [[3.0, 1.0], [2.0, 3.0]] and ranks[2, 0, 0] == 1.0 and np.isnan(ranks[2, 1, 0])
    point, low, high = ranking.rank_interval(values, [True], applies=applies, n_boot=2000, seed=1)
    assert point.tolist() == [2.0, 2.5, 1.0]
    # C's only task is task 1, so every replicate that draws it ranks C first.
    assert low[2] == high[2] == 1.0
    # Counted as applying everywhere, C's missing task 2 ranks it last there (A 1, B 2, C 3).
    point, _, _ = ranking.rank_interval(values, [True], n_boot=10)
    assert point.tolist() == [2.0, 2.0, 2.0]
    # A lone model on a task sits in the middle of the range.
    alone = ranking._ranks(np.array([[[0.3]], [[0.2]]]), np.array([True]), np.array([[True], [False]]))
    assert alone[0, 0, 0] == 1.5 and np.isnan(alone[1, 0, 0])


def test_rank_interval_widens_with_score_uncertainty_and_is_seeded():
    # A beats B by 0.01 on every task: with no score uncertainty, A is always first.
    values = np.array([[[0.51]] * 5, [[0.50]] * 5])
    _, low, high = ranking.rank_interval(values, [True], n_boot=500)
    assert (low.tolist(), high.tolist()) == ([1.0, 2.0], [1.0, 2.0])
    # Intervals of +-0.1 around scores 0.01 apart: the two swap places often.
    sigma = np.full_like(values, ranking.sigma_from_interval(0.4, 0.6))
    _, low, high = ranking.rank_interval(values, [True], sigma=sigma, n_boot=500)
    assert low[0] < 1.5 < high[0] and low[1] < 1.5 < high[1]
    again = ranking.rank_interval(values, [True], sigma=sigma, n_boot=500)
    assert np.array_equal(again[1], low) and np.array_equal(again[2], high)


def test_rank_interval_ignores_tasks_nobody_scored():
    values = np.array([[[0.9], [np.nan]], [[0.1], [np.nan]]])
    point, low, high = ranking.rank_interval(values, [True], n_boot=50)
    assert point.tolist() == low.tolist() == high.tolist() == [1.0, 2.0]


def test_compare_puts_models_side_by_side_per_category_and_layer(suite, tmp_path):
    root = tmp_path / "cmp"
    # Scores that identify their task, so each cell can be checked against its mean by hand.
    code = {t.id: i for i, t in enumerate(suite.select(track="map"))}
    write_model(root, suite, "a", lambda t: {"r2": code[t.id] / 100})
    write_model(root, suite, "b", lambda t: {"r2": 1 - code[t.id] / 100}, failed=(suite.select(track="map")[0].id,))
    table = lb.compare(suite, ["a", "b"], ["r2"], root, use_built_data=False)
    lines = table.splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == ["category", "layer", "a r2", "b r2"]
    cells = {(r[0], r[1]): r[2:] for r in ([c.strip() for c in line.split("|")[1:-1]] for line in lines[2:])}
    for (category, layer), (a, b) in cells.items():
        ids = [t.id for t in suite.select(track="map") if t.category == category and f"{t.backbone}/{t.layer}" == layer]
        assert float(a) == pytest.approx(np.mean([code[i] / 100 for i in ids]), abs=5e-4)
        scored_b = [i for i in ids if i != suite.select(track="map")[0].id]  # b failed that task
        assert b == ("-" if not scored_b else f"{np.mean([1 - code[i] / 100 for i in scored_b]):.3f}")
    assert len(cells) == len({(t.category, f"{t.backbone}/{t.layer}") for t in suite.select(track="map")})
    # With intervals, each mean carries the mean of its tasks' interval ends (the helper's are +-0.01).
    wide = lb.compare(suite, ["a", "b"], ["r2"], root, use_built_data=False, intervals=True).splitlines()
    for line in wide[2:]:
        row = [c.strip() for c in line.split("|")[1:-1]]
        for cell, plain in zip(row[2:], cells[(row[0], row[1])]):
            if plain == "-":
                assert cell == "-"
                continue
            mean, low, high = map(float, cell.replace("[", "").replace("]", "").replace(",", "").split())
            assert f"{mean:.3f}" == plain and (low, high) == pytest.approx((mean - 0.01, mean + 0.01), abs=1e-3)
    with pytest.raises(fb.FeatbenchError, match="'nope'"):
        lb.compare(suite, ["a", "nope"], ["r2"], root, use_built_data=False)


@pytest.mark.parametrize("suite_name", ["featbench-v1", "featbench-v2"])
def test_committed_leaderboard_rebuilds_byte_identically(tmp_path, suite_name):
    """What is published under leaderboard/<suite>/ is exactly what its result files give."""
    from featbench.core.paths import PACKAGE_DIR

    root = PACKAGE_DIR.parent / "leaderboard" / suite_name
    if not (root / "LEADERBOARD.md").is_file():
        pytest.skip(f"no committed leaderboard at {root} (featbench installed outside its checkout)")
    # Only the committed task_hashes.json decides which data the results must have run on.
    report = lb.build(fb.load_suite(suite_name), root, tmp_path, use_built_data=False)
    assert report.board["excluded"] == []
    for name in lb.OUTPUT_FILES:
        assert (tmp_path / name).read_bytes() == (root / name).read_bytes(), name
