"""The command line as a user drives it: build, tasks, run, validate, submit-check, leaderboard
build on a tiny suite (six made-up images, one random-weight backbone layer), and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from featbench.cli import main
from featbench.core.results import read_result, seal
from tests.conftest import TINY_CNN, make_tiny_suite

REPO = Path(__file__).resolve().parents[1]
TASK = f"map/{TINY_CNN}/blocks.3/rot90"


def _suite(root: Path):
    return make_tiny_suite(root, n_images=6, backbones={TINY_CNN: ["blocks.3"]}, manipulations=["rot90"])


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """(suite file, result file) of `featbench run` of identity on the tiny suite, built in a cache
    of its own (FEATBENCH_CACHE points there for the module's tests)."""
    root = tmp_path_factory.mktemp("cli")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEATBENCH_CACHE", str(root / "cache"))
        suite = _suite(root)
        assert main(["build", "--suite", str(suite.path), "--batch-size", "8", "--no-compile"]) == 0
        out = root / "leaderboard" / "results" / "identity.json"
        assert main(["run", "--suite", str(suite.path), "--model", "identity", "--out", str(out), "--n-boot", "20",
                     "--no-isolation"]) == 0
        yield suite.path, out


def test_build_makes_the_tasks_data_that_tasks_lists(private_cache, tmp_path, capsys):
    path = str(_suite(tmp_path).path)
    assert main(["tasks", "--suite", path]) == 0
    listed = capsys.readouterr().out
    assert "tiny-test (version 1" in listed and "1 map + 1 invert tasks" in listed
    assert f"{TASK}  geometric" in listed and listed.rstrip().endswith("no")  # nothing built yet
    assert main(["build", "--suite", path, "--batch-size", "8", "--no-compile"]) == 0
    assert "2 datasets built" in capsys.readouterr().out
    assert main(["tasks", "--suite", path, "--tasks", "map/*"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("map/")]
    assert len(rows) == 1 and rows[0].split()[-1] == "yes"


def test_run_writes_a_result_that_validate_accepts(scored, capsys):
    suite_file, out = scored
    result = read_result(out)
    assert result["model"]["name"] == "identity" and [t["task_id"] for t in result["tasks"]] == [TASK]
    assert result["tasks"][0]["status"] == "ok" and "threads" in result["tasks"][0]["provenance"]
    assert main(["validate", str(out), "--suite", str(suite_file)]) == 0
    assert "valid (identity 1 on tiny-test v1, 1 tasks)" in capsys.readouterr().out
    # Against another suite's spec the same file is refused, by name.
    assert main(["validate", str(out), "--suite", "mini"]) == 2
    assert "was scored on suite tiny-test" in capsys.readouterr().err


def test_run_with_threads_scores_with_them_and_records_them(scored, tmp_path, monkeypatch):
    import torch

    suite_file, out = scored
    monkeypatch.setenv("FEATBENCH_CACHE", str(out.parents[2] / "cache"))
    threads = torch.get_num_threads()
    try:
        assert main(["run", "--suite", str(suite_file), "--model", "identity", "--out", str(tmp_path / "r.json"),
                     "--n-boot", "20", "--no-isolation", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1  # the scoring process too, not only a fit's child
    finally:
        torch.set_num_threads(threads)
    assert read_result(tmp_path / "r.json")["tasks"][0]["provenance"]["threads"] == "1"


def test_submit_check_reruns_a_result_and_catches_an_altered_score(scored, tmp_path, capsys):
    suite_file, out = scored
    assert main(["submit-check", str(out), "--suite", str(suite_file), "--sample", "1", "--isolation", "none"]) == 0
    assert "re-ran 1 task(s): all scores match" in capsys.readouterr().out
    # A score changed and the file sealed again: valid, but not what the code gives.
    altered = json.loads(out.read_text())
    altered["tasks"][0]["metrics"]["r2"]["value"] += 0.5
    forged = tmp_path / "identity.json"
    forged.write_text(json.dumps(seal(altered)))
    assert main(["submit-check", str(forged), "--suite", str(suite_file), "--sample", "1", "--isolation", "none"]) == 2
    captured = capsys.readouterr()
    assert f"{TASK} r2: submitted" in captured.out and "score(s) do not match the re-run" in captured.err


def test_leaderboard_build_writes_the_board(scored, tmp_path, capsys):
    suite_file, out = scored
    assert main(["leaderboard", "build", "--suite", str(suite_file), "--root", str(out.parent.parent),
                 "--out", str(tmp_path)]) == 0
    assert "1 result file(s) in, 0 left out" in capsys.readouterr().out
    assert {"LEADERBOARD.md", "leaderboard.csv", "leaderboard.json", "index.html"} <= {p.name for p in tmp_path.iterdir()}
    assert "identity" in (tmp_path / "LEADERBOARD.md").read_text()


@pytest.mark.parametrize("argv, says", [
    (["tasks", "--suite", "no-such-suite"], "unknown suite 'no-such-suite'; known: "),
    (["tasks", "--suite", "{bad}"], "is not valid YAML"),
    (["tasks", "--suite", "{list}"], "is malformed"),
    (["tasks", "--suite", "{missing}"], "does not exist"),
    (["run", "--suite", "{suite}", "--model", "no-such-model", "--out", "{out}", "--no-isolation"],
     "unknown model 'no-such-model'; registered: "),
    (["validate", "{suite}"], "not valid JSON"),
], ids=["unknown suite", "suite file not YAML", "suite file not a mapping", "no suite file", "unknown model",
        "result not JSON"])
def test_a_bad_argument_is_a_clear_error(scored, tmp_path, capsys, argv, says):
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    (tmp_path / "list.yaml").write_text("- name\n- version\n")
    paths = {"bad": tmp_path / "bad.yaml", "list": tmp_path / "list.yaml", "missing": tmp_path / "missing.yaml",
             "suite": scored[0], "out": tmp_path / "out.json"}
    assert main([a.format(**paths) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "featbench: error: " in err and says in err and "Traceback" not in err  # after any warning
    assert not (tmp_path / "out.json").exists()


def test_the_process_exits_nonzero_with_a_message_not_a_traceback(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for argv, says in ((["tasks", "--suite", str(tmp_path / "bad.yaml")], "featbench: error: suite file"),
                       (["run", "--n-boot", "many"], "argument --n-boot: invalid int value: 'many'"),
                       (["no-such-command"], "invalid choice: 'no-such-command'")):
        done = subprocess.run([sys.executable, "-m", "featbench.cli", *argv], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=300)
        assert done.returncode == 2, (argv, done.stderr)
        assert says in done.stderr and "Traceback" not in done.stderr, (argv, done.stderr)


def test_build_says_whether_its_data_match_the_leaderboards_task_hashes(private_cache, tmp_path, capsys, monkeypatch):
    """Data that hash differently from the board's ledger (another machine's kernels) make results
    that the board leaves out: the build says so at once, not the leaderboard later."""
    from featbench.board import leaderboard
    from featbench.board.hashes import TaskHashes

    suite = _suite(tmp_path)
    build = ["build", "--suite", str(suite.path), "--batch-size", "8", "--no-compile"]
    monkeypatch.setattr(leaderboard, "default_root", lambda name: tmp_path / "lb" / name)
    assert main(build) == 0
    assert "task hashes" not in capsys.readouterr().out  # no ledger: nothing to compare
    ledger = TaskHashes(suite)
    ledger.fill(suite.tasks, {}, use_built_data=True)
    path = tmp_path / "lb" / suite.name / "task_hashes.json"
    path.parent.mkdir(parents=True)
    path.write_text(ledger.to_json())
    assert main(build) == 0
    assert "task hashes: all 2 built tasks match the leaderboard's task_hashes.json" in capsys.readouterr().out
    ledger.entries[TASK]["sha256"] = "0" * 64  # as written from another machine's data
    path.write_text(ledger.to_json())
    assert main(build) == 0
    out = capsys.readouterr().out
    assert f"task hashes: 1 of 2 built tasks differ from the leaderboard's task_hashes.json (e.g. {TASK}:" in out
    assert "000000000000 there" in out and "left out of that leaderboard" in out
    assert "computes a backbone in float64 (its precision)" in out  # the way out, named
    path.write_text(ledger.to_json().replace(suite.spec_sha256(), "1" * 64))  # a ledger for another spec
    assert main(build) == 0  # the data built stay; the build says why it cannot compare
    out = capsys.readouterr().out
    assert "task hashes: not compared with the leaderboard's:" in out and "(spec 111111111111" in out


def test_run_names_a_missing_reuse_file_before_it_fits(scored, tmp_path, capsys):
    suite_file, _ = scored
    assert main(["run", "--suite", str(suite_file), "--model", "identity", "--reuse", str(tmp_path / "gone.json"),
                 "--out", str(tmp_path / "out.json"), "--no-isolation"]) == 2
    assert f"--reuse: no such result file or folder: {tmp_path / 'gone.json'}" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("load, busy", [(0.2, False), (3.5, True)])
def test_run_says_when_the_machine_is_too_busy_for_its_budgets(scored, tmp_path, capsys, monkeypatch, load, busy):
    """Budgets are wall time: a run started where other work holds the cores warns that its fits may
    stop early on the budget."""
    import torch

    suite_file, out = scored
    monkeypatch.setenv("FEATBENCH_CACHE", str(out.parents[2] / "cache"))
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    threads = torch.get_num_threads()
    try:
        assert main(["run", "--suite", str(suite_file), "--model", "identity", "--out", str(tmp_path / "r.json"),
                     "--n-boot", "20", "--no-isolation", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert ("this machine is busy (load 3.5 on 2 CPUs" in err) == busy
