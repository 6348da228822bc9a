"""`featbench build` under torchrun: two CPU processes (gloo) give the datasets one process gives,
a rank that fails fails the build with nothing assembled, and the next build resumes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import featbench as fb
from featbench.core.hashing import sha256_file
from tests.conftest import make_tiny_suite

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("sharded_build.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")
SHARDS_PER_BUILD = 12 * 3  # 12 datasets × 3 chunks (two of train images, one of test)
# Chunks of 2 images (5 // 2 views), so batches of 5 rows straddle variants and chunks, and each
# rank's batches hold other rows than one process's: the bytes must not depend on it.
BATCH_SIZE = "5"


def _build_args(suite: fb.Suite) -> list[str]:
    return ["build", "--suite", str(suite.path), "--no-compile", "--batch-size", BATCH_SIZE]


def _env(cache: Path, **extra: str) -> dict[str, str]:
    # One torch thread in every process: float results may differ in the last bit between thread
    # counts (of the processes alike), so builds are compared at the same count.
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "FEATBENCH_CACHE": str(cache), "OMP_NUM_THREADS": "1", **extra}


def _torchrun(suite: fb.Suite, cache: Path, **extra: str) -> subprocess.CompletedProcess:
    cmd = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", str(WORKER), *_build_args(suite)]
    return subprocess.run(cmd, env=_env(cache, **extra), capture_output=True, text=True, timeout=600)


def _by_hand(suite: fb.Suite, cache: Path, **extra: str) -> list[subprocess.CompletedProcess]:
    """Two ranks started as a cluster launcher (srun, say) starts them: environment variables only."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, str(WORKER), *_build_args(suite)], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=_env(cache, RANK=str(r), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                       MASTER_PORT=str(port), **extra))
             for r in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, o, e) for p, (o, e) in zip(procs, outs)]


def _datasets(cache: Path) -> dict[str, object]:
    """Every file of every built dataset by path: its sha256, and featbench.json's content less its date."""
    out: dict[str, object] = {}
    for f in sorted((cache / "datasets").rglob("*")):
        if f.is_file() and ".partial" not in str(f):
            rel = str(f.relative_to(cache))
            if f.name == "featbench.json":
                out[rel] = {k: v for k, v in json.loads(f.read_text()).items() if k != "created"}
            else:
                out[rel] = sha256_file(f)
    return out


def _task_hashes(suite: fb.Suite, cache: Path, monkeypatch) -> dict[str, str]:
    monkeypatch.setenv("FEATBENCH_CACHE", str(cache))
    return {t.id: fb.load_task(suite, t).content_sha256 for t in suite.select()}


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> fb.Suite:
    return make_tiny_suite(tmp_path_factory.mktemp("sharded"))


@pytest.fixture(scope="module")
def one_process(suite, tmp_path_factory) -> Path:
    """The suite built by one process, at the torch thread count of the ranks."""
    cache = tmp_path_factory.mktemp("one-process") / "cache"
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEATBENCH_CACHE", str(cache))
        torch.set_num_threads(1)
        try:
            fb.build_suite(suite, batch_size=int(BATCH_SIZE), progress=False)
        finally:
            torch.set_num_threads(threads)
    return cache


def test_two_ranks_under_torchrun_build_the_datasets_of_one_process(suite, one_process, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    run = _torchrun(suite, cache, COUNT_SHARDS=str(tmp_path / "shards.txt"))
    assert run.returncode == 0, run.stderr
    reports = [line for line in run.stdout.splitlines() if line.startswith("suite tiny-test:")]
    assert len(reports) == 1 and "12 datasets built" in reports[0] and "in 2 processes" in reports[0], run.stdout
    writers = [line.split()[0] for line in (tmp_path / "shards.txt").read_text().splitlines()]
    assert len(writers) == SHARDS_PER_BUILD and set(writers) == {"0", "1"}  # each shard once, both ranks wrote

    sharded, single = _datasets(cache), _datasets(one_process)
    assert len([p for p in single if p.endswith(".arrow")]) == 2 * 12
    assert sharded == single
    assert _task_hashes(suite, cache, monkeypatch) == _task_hashes(suite, one_process, monkeypatch)


def test_a_failing_rank_fails_the_build_unassembled_and_the_next_build_resumes(suite, one_process, tmp_path,
                                                                               monkeypatch):
    cache, counts = tmp_path / "cache", tmp_path / "shards.txt"
    failed = _by_hand(suite, cache, FAIL_RANK="1", FAIL_AFTER="2", COUNT_SHARDS=str(counts))
    assert [p.returncode for p in failed] != [0, 0]
    assert "rank 1 stops here" in failed[1].stderr
    assert failed[0].returncode == 2, failed[0].stderr
    assert ("featbench: error: rank 1 of 2 failed while extracting tiny_random_cnn_for_tests: RuntimeError: rank 1 "
            "stops here") in failed[0].stderr
    assert "Nothing of tiny_random_cnn_for_tests was assembled" in failed[0].stderr
    assert not list((cache / "datasets").rglob("featbench.json"))  # nothing assembled, of either backbone
    written_before = len(counts.read_text().splitlines())
    assert 0 < written_before < SHARDS_PER_BUILD

    counts.unlink()
    resumed = _torchrun(suite, cache, COUNT_SHARDS=str(counts))
    assert resumed.returncode == 0, resumed.stderr
    assert len(counts.read_text().splitlines()) == SHARDS_PER_BUILD - written_before  # none written twice
    assert _datasets(cache) == _datasets(one_process)
    assert _task_hashes(suite, cache, monkeypatch) == _task_hashes(suite, one_process, monkeypatch)
