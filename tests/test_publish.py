"""Publishing: the dry-run folder loads back with `datasets` and reproduces the task hashes;
without a token or the network, publish fails at once. Plus built data as the source of
expected task hashes, and `submit-check` re-running a result's tasks (both need built data)."""

from __future__ import annotations

import dataclasses
import json
import time

import datasets
import pytest

import featbench as fb
from featbench.board import hashes as task_hashes
from featbench.board import leaderboard as lb
from featbench.cli import main
from featbench.scoring.map_track import run_map_track
from featbench.scoring.runner import RunConfig
from featbench.core.plugins import resolve_model
from featbench.board.publish import check_hub_access, config_name, install_published, publish
from featbench.core.results import write_result
from featbench.board.submit_check import submit_check
from featbench.scoring.isolation import Isolation
from tests.conftest import TINY_CNN, make_tiny_suite


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tiny suite built in its own cache, and a result of `linear` on three of its tasks."""
    root = tmp_path_factory.mktemp("publish")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEATBENCH_CACHE", str(root / "cache"))
        mp.setenv("HF_DATASETS_CACHE", str(root / "hf-datasets"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        suite = make_tiny_suite(root, n_images=6)
        fb.build_suite(suite, batch_size=8, progress=False)
        result = root / "lb" / "results" / "linear.json"
        run_map_track(resolve_model("linear"), suite, suite.select(f"map/{TINY_CNN}/*/*")[:3], result,
                      RunConfig(seed=0, n_boot=20, time_budget_s=30), progress=False)
        yield suite, root


def test_dry_run_round_trips_through_datasets(built, tmp_path, monkeypatch):
    suite, root = built
    lb.build(suite, root / "lb")
    out = tmp_path / "dry"
    assert main(["publish", "--suite", str(suite.path), "--repo", "org/tiny", "--dry-run", str(out),
                 "--leaderboard", str(root / "lb")]) == 0
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "configs:" in card and suite.spec_sha256() in card
    assert (out / "leaderboard" / "LEADERBOARD.md").is_file() and (out / "leaderboard" / "results" / "linear.json").is_file()
    want = {t.id: fb.load_task(suite, t).content_sha256 for t in suite.tasks}
    assert json.loads((out / "featbench" / "task_hashes.json").read_text()) == want
    # Every config loads with datasets.load_dataset and holds the stored rows, in order.
    task = suite.select(f"map/{TINY_CNN}/blocks.3/rot90")[0]
    loaded = datasets.load_dataset(str(out), name=config_name(TINY_CNN, "blocks.3", "rot90"))
    data = fb.load_task(suite, task)
    assert loaded["test"]["image_id"] == data.test["image_id"]
    assert loaded["test"].features["features"] == data.test.features["y"]
    # Installed into an empty cache, the published rows give the publisher's task hashes.
    monkeypatch.setenv("FEATBENCH_CACHE", str(tmp_path / "fresh-cache"))
    with pytest.raises(fb.DataError):
        fb.load_task(suite, task)
    assert len(install_published(out, suite)) == sum(len(ls) for ls in suite.backbones.values()) * 4
    assert {t.id: fb.load_task(suite, t).content_sha256 for t in suite.tasks} == want


def test_dry_run_needs_built_data_and_an_empty_folder(built, tmp_path, monkeypatch):
    suite, root = built
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["publish", "--suite", str(suite.path), "--repo", "org/t", "--dry-run", str(tmp_path / "full")]) == 2
    monkeypatch.setenv("FEATBENCH_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(fb.FeatbenchError, match="not fully built"):
        publish(suite, "org/t", dry_run=tmp_path / "new")


def test_publish_fails_at_once_without_token_or_network(built, tmp_path, monkeypatch, capsys):
    suite, _ = built
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored token there
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    start = time.perf_counter()
    assert main(["publish", "--suite", str(suite.path), "--repo", "org/tiny"]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fake")
    with pytest.raises(fb.FeatbenchError, match="cannot reach the Hugging Face Hub"):
        check_hub_access("http://127.0.0.1:9", timeout=2)  # nothing listens on the discard port
    assert time.perf_counter() - start < 5


def test_built_data_give_the_expected_task_hashes(built):
    suite, root = built
    for task in suite.select(f"map/{TINY_CNN}/blocks.1/*"):
        assert task_hashes.built_task_sha256(suite, task) == fb.load_task(suite, task).content_sha256
    hashes = lb.collect(suite, root / "lb").hashes.entries
    assert {e["source"] for e in hashes.values()} == {"built data"}
    assert len(hashes) == len(suite.tasks)


def test_submit_check_passes_an_honest_result_and_catches_an_edited_one(built, tmp_path, capsys):
    suite, root = built
    result = root / "lb" / "results" / "linear.json"
    report = submit_check(result, suite=suite, sample=2, seed=0)
    assert report.ok and len(report.checked) == 2, report.summary()
    mode = Isolation().resolved()  # the run and the re-run both score isolated, as `featbench run` does
    assert report.submitted_modes == {f"isolation {mode}, test targets published": 3}
    assert f"re-run here: isolation {mode}, test targets published" in report.summary()
    record = json.loads(result.read_text())
    record.pop("record_sha256")
    for t in record["tasks"]:
        t["metrics"]["r2"]["value"] += 0.2  # sealed again: valid, but not what the model scores
    edited = write_result(tmp_path / "edited.json", record)
    report = submit_check(tmp_path / "edited.json", suite=suite, sample=2, seed=0, isolation=Isolation("none"))
    assert not report.ok and all(" r2: submitted" in m for m in report.mismatches)
    assert len(report.mismatches) == 2 and edited["model"]["name"] == "linear"
    assert main(["submit-check", str(tmp_path / "edited.json"), "--suite", str(suite.path), "--sample", "1"]) == 2
    assert "MISMATCH" in capsys.readouterr().out


def test_hidden_target_mode_publishes_the_test_inputs_only(built, tmp_path, monkeypatch):
    suite, root = built
    hidden = dataclasses.replace(suite, test_targets="hidden")
    assert hidden.spec_sha256() != suite.spec_sha256()  # another suite version, not a flag on this one
    out = tmp_path / "hidden"
    publish(hidden, "org/tiny", dry_run=out, leaderboard_root=root / "lb")
    parquet = {f"{p.parent.name}/{p.name.split('-')[0]}" for p in (out / "data").rglob("*.parquet")}
    for backbone, layers in suite.backbones.items():
        for layer in layers:
            assert {f"{config_name(backbone, layer, 'original')}/train", f"{config_name(backbone, layer, 'original')}/test",
                    f"{config_name(backbone, layer, 'rot90')}/train"} <= parquet
            assert f"{config_name(backbone, layer, 'rot90')}/test" not in parquet  # the targets stay here
    assert "Hidden test targets" in (out / "README.md").read_text()
    monkeypatch.setenv("FEATBENCH_CACHE", str(tmp_path / "fresh-cache"))
    installed = install_published(out, hidden)
    assert sum(i.startswith("not installed (test targets kept by the maintainers)") for i in installed) == \
        sum(len(ls) for ls in suite.backbones.values()) * len(suite.manipulations)
