"""Trusted scoring (featbench.scoring.isolation): a submission's fit and predict in a child process
that never gets the test targets, under limits, sandboxed by bubblewrap where it works."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

import featbench as fb
from featbench.core.errors import FeatbenchError
from featbench.core.paths import cache_dir, suites_dir
from featbench.core.plugins import load_object, resolve_model
from featbench.core.results import RESULT_SCHEMA_VERSION, read_result
from featbench.data.storage import load_task
from featbench.scoring import isolation
from featbench.scoring.run import model_factory
from featbench.interfaces.checkpoints import read_record
from featbench.interfaces.inverter import checkpoint_dir, resolve_inverter
from featbench.scoring.invert_track import (child_files, evaluate_invert_task, fit_and_invert_isolated, invert_data,
                                            invert_info)
from featbench.scoring.isolation import Isolation, pickled_factory, sandbox_problem
from featbench.scoring.map_track import fit_and_predict_isolated, map_data, run_map_track, task_info
from featbench.scoring.runner import RunConfig, new_task_record
from tests.conftest import TINY_CNN, TINY_VIT
from tests.test_featinv import TinyFeatInv
from tests.test_inverters import TASK as INVERT_TASK, TinyDecoder, in_suite_cache, suite  # noqa: F401 (fixtures)

ATTACKER = Path(__file__).resolve().parent / "attacker_submission.py"
CNN_TASK = f"map/{TINY_CNN}/blocks.1/rot90"


def needs_sandbox() -> None:
    problem = sandbox_problem()
    if problem is not None:
        pytest.skip(f"needs a working bubblewrap sandbox ({problem}); .ci/run installs it")


def cfg(mode: str, **limits) -> RunConfig:
    return RunConfig(seed=0, n_boot=20, time_budget_s=30, isolation=Isolation(mode, **limits))


def test_baselines_score_the_same_isolated_as_in_process(tiny_suite, tmp_path):
    needs_sandbox()
    tasks = [tiny_suite.get_task(CNN_TASK), tiny_suite.get_task(f"map/{TINY_VIT}/blocks.1/noise40")]
    runs = {mode: run_map_track(resolve_model("linear"), tiny_suite, tasks, tmp_path / f"{mode}.json", cfg(mode),
                                progress=False) for mode in ("none", "sandbox")}
    for plain, isolated in zip(runs["none"]["tasks"], runs["sandbox"]["tasks"]):
        assert isolated["status"] == "ok", isolated.get("reason")
        assert isolated["scoring"] == {"isolation": "sandbox", "test_targets": "published"}
        assert plain["scoring"]["isolation"] == "none"
        for metric, score in plain["metrics"].items():
            assert isolated["metrics"][metric] == pytest.approx(score, abs=1e-6), metric
        assert isolated["linear_structure"] == pytest.approx(plain["linear_structure"], abs=1e-6)
        assert isolated["n_params"] == plain["n_params"]
        assert float(isolated["provenance"]["isolation overhead_s"]) >= 0
    assert read_result(tmp_path / "sandbox.json")["schema_version"] == RESULT_SCHEMA_VERSION


def _not_shipped(walk: list[str]) -> list[str]:
    """The files a child found, less the checkpoints that ship with the suites: public files
    beside featbench's own code, which the child imports (from a checkout's ``tasks/`` or an
    installed package's ``_suites/``, which an editable install also holds)."""
    shipped = tuple("/" + p.relative_to(suites_dir()).as_posix()
                    for p in (suites_dir() / "checkpoints").rglob("*") if p.is_file())
    return [f for f in walk if not f.endswith(shipped)] if shipped else list(walk)


def _attack(tiny_suite, mode: str):
    """The attacker fitted in a child as a run fits it; its findings and its predictions."""
    task = tiny_suite.get_task(CNN_TASK)
    data = load_task(tiny_suite, task)
    info = task_info(tiny_suite, task, data, cfg(mode))
    train, test = map_data(data.train, info), map_data(data.test, info)
    # Its file beside the suite file and the cache: the folder it comes from is visible to it, the
    # cache inside that folder must not be.
    copy = tiny_suite.path.parent / "attacker.py"
    copy.write_text(ATTACKER.read_text())
    attacker = resolve_model(f"{copy}:Attacker")(suite_file=str(tiny_suite.path),
                                                    cache=str(cache_dir()))
    record = new_task_record(task, data, cfg(mode))
    fitted = fit_and_predict_isolated(pickled_factory(model_factory(attacker)), train, test.x,
                                      test.x_prefix, cfg(mode), mode, record)
    return json.loads(fitted.described["findings"]), fitted, test


def test_an_attacker_in_the_sandbox_gets_no_test_targets(tiny_suite):
    needs_sandbox()
    findings, fitted, test = _attack(tiny_suite, "sandbox")
    assert not findings["load_task"].startswith("got")  # neither the suite file nor the data are there to see
    assert findings["env FEATBENCH_CACHE"] != str(cache_dir())
    assert findings["default cache"] == "absent"
    assert findings["known cache path"] == []  # its absolute path: an empty folder
    assert _not_shipped(findings["walk"]) == ["/job/in/tensors.safetensors"]  # only what it was sent
    assert torch.equal(fitted.outputs["pred"], test.x)  # so it predicts its input: the identity floor


def test_without_the_sandbox_the_child_still_gets_no_targets_through_featbench(tiny_suite):
    findings, _, _ = _attack(tiny_suite, "process")
    assert not findings["load_task"].startswith("got")
    assert findings["default cache"] == "absent" and findings["env cache"] == "absent"
    # ...but it can read files by path: what README, "Trusted scoring", says of this mode.
    assert findings["known cache path"] != []


def test_the_attacker_scores_the_identity_floor(tiny_suite, tmp_path):
    needs_sandbox()
    result = fb.evaluate(load_object(str(ATTACKER), "Attacker")(str(tiny_suite.path)), tiny_suite, CNN_TASK,
                         out=tmp_path / "attacker.json", n_boot=20, time_budget_s=30, progress=False)
    (task,) = result["tasks"]
    assert task["status"] == "ok" and task["scoring"]["isolation"] == "sandbox"
    assert task["metrics"] == task["reference_points"]["identity"]
    assert task["metrics"]["r2"]["value"] < 0.99


class Misbehaving(fb.Mapper):
    """Allocates past its memory limit on rot90, hangs in predict on mask_tl_red, else identity."""

    name, version = "misbehaving", "1"

    def fit(self, train):
        self.manipulation = train.info.manipulation.name
        if self.manipulation == "rot90":
            self.hog = torch.empty(10 * 2**30, dtype=torch.uint8)  # past 8 GiB; address space only, never touched

    def predict(self, x):
        if self.manipulation == "mask_tl_red":
            import time
            time.sleep(3600)
        return x


def test_memory_hogs_and_hangs_fail_their_task_and_the_run_goes_on(tiny_suite, tmp_path):
    tasks = [tiny_suite.get_task(f"map/{TINY_CNN}/blocks.1/{m}") for m in ("rot90", "noise40", "mask_tl_red")]
    result = run_map_track(Misbehaving, tiny_suite, tasks, tmp_path / "bad.json",
                           cfg("auto", memory_gb=8, wall_s=40), progress=False)
    status = {t["task_id"].rsplit("/", 1)[1]: t for t in result["tasks"]}
    assert status["rot90"]["status"] == "failed"
    assert "allocate" in status["rot90"]["reason"] and "memory limit: 8.0 GiB" in status["rot90"]["reason"]
    assert status["mask_tl_red"]["status"] == "failed"
    assert "wall-time limit of 40 s" in status["mask_tl_red"]["reason"]
    assert status["noise40"]["status"] == "ok"


def test_without_bwrap_auto_warns_and_sandbox_refuses(monkeypatch):
    monkeypatch.setattr(isolation, "sandbox_problem", lambda: "bwrap is not installed")
    isolation.warn_unsandboxed.cache_clear()
    with pytest.warns(RuntimeWarning, match="without a sandbox"):
        assert Isolation("auto").resolved() == "process"
    with pytest.raises(FeatbenchError, match="apt-get install bubblewrap"):
        Isolation("sandbox").resolved()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Isolation("none").resolved() == "none"


def test_a_model_that_cannot_be_sent_fails_the_run_at_once(tiny_suite, tmp_path):
    local = type("Local", (fb.Mapper,), {"fit": lambda self, train: None, "predict": lambda self, x: x})
    with pytest.raises(FeatbenchError, match="--no-isolation"):
        run_map_track(lambda: local(), tiny_suite, [tiny_suite.get_task(CNN_TASK)], tmp_path / "x.json", cfg("process"),
                      progress=False)
    assert not (tmp_path / "x.json").exists()


def test_a_record_scored_in_process_is_not_kept_by_an_isolated_run(tiny_suite, tmp_path):
    out = tmp_path / "id.json"
    task = tiny_suite.get_task(CNN_TASK)
    run_map_track(resolve_model("identity"), tiny_suite, [task], out, cfg("none"), progress=False)
    again = run_map_track(resolve_model("identity"), tiny_suite, [task], out, cfg("process"), progress=False)
    assert again["tasks"][0]["scoring"]["isolation"] == "process"  # scored again, not kept


# -- the invert track ---------------------------------------------------------------------------

@pytest.mark.parametrize("inverter", [TinyDecoder, TinyFeatInv], ids=["decoder", "featinv-tiny"])
def test_reference_inverters_score_the_same_isolated_as_in_process(suite, in_suite_cache, inverter):  # noqa: F811
    needs_sandbox()
    task = suite.get_task(INVERT_TASK)
    directory = checkpoint_dir(suite.name, task.backbone, task.layer, inverter.name)
    shutil.rmtree(directory, ignore_errors=True)
    plain = evaluate_invert_task(inverter, suite, task, cfg("none"))  # trains here, leaves its checkpoint
    assert plain.status == "ok", plain.reason
    shutil.rmtree(directory)
    trained_there = evaluate_invert_task(inverter, suite, task, cfg("sandbox"))  # with the manipulated pairs
    # What the child trained is kept, as in-process training keeps it.
    assert read_record(directory)["latest"]["sha256"] == trained_there.provenance["weights_sha256"]
    loaded = evaluate_invert_task(inverter, suite, task, cfg("sandbox"))  # the child gets that checkpoint
    assert loaded.provenance["weights_sha256"] == read_record(directory)["latest"]["sha256"]
    for isolated in trained_there, loaded:
        assert isolated.status == "ok", isolated.reason
        assert isolated.scoring == {"isolation": "sandbox", "test_targets": "published"}
        assert isolated.n_params == plain.n_params
        # The reference points too: ``unconditional`` is drawn by the inverter.
        for name, scores in {"model": plain.metrics, **plain.reference_points}.items():
            got = isolated.metrics if name == "model" else isolated.reference_points[name]
            for metric, score in scores.items():
                assert got[metric] == pytest.approx(score, abs=1e-5), (name, metric)


class TrainsThenFails(TinyDecoder):
    """Trains (leaving its checkpoint), then fails its task, saying where its training started."""

    name = "trains-then-fails"

    def fit(self, train):
        super().fit(train)
        raise RuntimeError(f"failed after training from step {self.report.start_step} to {self.report.step}")


def test_a_checkpoint_trained_in_a_failing_child_is_kept_for_the_next_run(suite, in_suite_cache):  # noqa: F811
    task = suite.get_task(INVERT_TASK)
    directory = checkpoint_dir(suite.name, task.backbone, task.layer, TrainsThenFails.name)
    shutil.rmtree(directory, ignore_errors=True)
    steps = TinyDecoder.config.max_steps
    first = evaluate_invert_task(TrainsThenFails, suite, task, cfg("process"), references=False)
    assert first.status == "failed" and f"from step 0 to {steps}" in first.reason
    kept = read_record(directory)
    assert kept is not None and kept["latest"]["step"] == steps
    # The next run's child starts from it (and trains no further), so the cache keeps it as it was.
    second = evaluate_invert_task(TrainsThenFails, suite, task, cfg("process"), references=False)
    assert f"from step {steps} to {steps}" in second.reason
    assert read_record(directory) == kept


def _invert_attack(suite, mode: str):
    """(findings, what it inverted, training data, test maps) of the inverter attacker in `mode`."""
    task = suite.get_task(INVERT_TASK)
    data = load_task(suite, task)
    info = invert_info(suite, task, data, cfg(mode))
    train = invert_data(suite, data, info, info.image_size)
    copy = suite.path.parent / "attacker.py"  # beside the suite file and the cache, as for the mapper
    copy.write_text(ATTACKER.read_text())
    attacker = resolve_inverter(f"{copy}:InverterAttacker")(suite_file=str(suite.path), cache=str(cache_dir()))
    record = new_task_record(task, data, cfg(mode))
    test_x = torch.tensor(data.test["x"]).float()
    inverted = fit_and_invert_isolated(pickled_factory(model_factory(attacker)), train, test_x, None,
                                       child_files(suite, task, attacker), cfg(mode), mode, record)
    return json.loads(inverted.described["findings"]), inverted, train, test_x


def test_an_inverter_attacker_in_the_sandbox_gets_no_test_images(suite, in_suite_cache):  # noqa: F811
    needs_sandbox()
    findings, inverted, train, test_x = _invert_attack(suite, "sandbox")
    assert not findings["target_images"].startswith("got")
    assert findings["default cache"] == "absent" and findings["known cache path"] == []
    given = [p for p in _not_shipped(findings["walk"]) if p != "/job/in/tensors.safetensors"]
    # Besides what it was sent, LPIPS's public weights alone (the tiny backbone has no weights file).
    assert given and all(p.startswith("/job/out/home/cache/assets/lpips_alex") for p in given)
    mean = train.images.mean(dim=0).expand(len(test_x), -1, -1, -1)
    assert torch.equal(inverted.outputs["recon"], mean)  # so it returns the mean training image


def test_without_the_sandbox_an_inverter_attacker_still_gets_no_test_images_through_featbench(
        suite, in_suite_cache):  # noqa: F811
    findings, inverted, train, test_x = _invert_attack(suite, "process")
    assert not findings["target_images"].startswith("got")
    assert findings["default cache"] == "absent"
    assert findings["known cache path"] != []  # by path it can read the cache: not trusted (README)
    mean = train.images.mean(dim=0).expand(len(test_x), -1, -1, -1)
    assert torch.equal(inverted.outputs["recon"], mean)
