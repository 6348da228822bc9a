"""`featbench run --executor ray` on a real two-node Ray cluster on this machine (a head and a
second node, each a `ray start` process with one CPU): its result files equal a local run's task
by task, it resumes, and a lost worker fails its task, not the run."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

import featbench as fb
from featbench.cli import main
from featbench.core.errors import FeatbenchError
from featbench.core.results import read_result
from featbench.scoring.executors import LocalExecutor, RayExecutor, make_executor

ray = pytest.importorskip("ray", reason="the ray executor's tests need Ray (pip install 'featbench[ray]')")

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).with_name("ray")
TASKS = "map/*/blocks.1/*"  # 6 tasks: two backbones, three manipulations
TIMING = ("fit_s", "predict_per_s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start(*args: str, temp: Path, log: str) -> subprocess.Popen:
    # --block keeps `ray start` in the foreground: ending it (by its id) stops that node's processes.
    # PYTHONPATH: the workers import this checkout's featbench and tests, as the driver does.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "RAY_USAGE_STATS_ENABLED": "0"}
    with open(temp / log, "w") as out:
        return subprocess.Popen([str(RAY), "start", "--block", "--num-cpus=1", "--object-store-memory=80000000",
                                 *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    try:  # anything of that node left behind: its process group, which `ray start` led
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def cluster():
    """The head's address; the cluster has two live nodes."""
    temp = Path(tempfile.mkdtemp(prefix="fbray", dir="/tmp"))  # short: Ray's socket paths have a length limit
    port = _free_port()
    address = f"127.0.0.1:{port}"
    nodes = [_ray_start("--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                        f"--temp-dir={temp}", temp=temp, log="head.log")]
    try:
        deadline = time.monotonic() + 90
        while True:  # the second node can join once the head answers
            try:
                ray.init(address=address, log_to_driver=False)
                break
            except ConnectionError:
                if time.monotonic() > deadline or nodes[0].poll() is not None:
                    raise RuntimeError(f"the Ray head did not start: {(temp / 'head.log').read_text()[-2000:]}")
                time.sleep(1)
        nodes.append(_ray_start(f"--address={address}", temp=temp, log="node.log"))
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            if time.monotonic() > deadline or nodes[1].poll() is not None:
                raise RuntimeError(f"the second Ray node did not join: {(temp / 'node.log').read_text()[-2000:]}")
            time.sleep(1)
        ray.shutdown()  # the runs connect by themselves, as `featbench run --ray-address` does
        yield address
    finally:
        ray.shutdown()
        for node in reversed(nodes):
            _stop(node)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def one_thread():
    """Fits here with the one thread a worker's one CPU gives it, so that the two runs compute alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _forget_scores() -> None:
    """Drop the cached scores and tail outputs, so that the next run computes its own."""
    cache = Path(os.environ["FEATBENCH_CACHE"])
    for sub in ("scores", "tails"):
        shutil.rmtree(cache / sub, ignore_errors=True)


def _untimed(result: dict) -> dict[str, dict]:
    """Task records without their timings (fit_s, predict_per_s and isolation's overhead)."""
    def untimed(t: dict) -> dict:
        out = {k: v for k, v in t.items() if k not in TIMING}
        out["notes"] = [n for n in t.get("notes", []) if not n.startswith("isolation overhead_s")]
        out["provenance"] = {k: v for k, v in t.get("provenance", {}).items() if k != "isolation overhead_s"}
        return out

    return {t["task_id"]: untimed(t) for t in result["tasks"]}


def _run(model, tiny_suite, out, executor, tasks=TASKS):
    return fb.evaluate(model, tiny_suite, tasks, out=out, n_boot=50, time_budget_s=30, progress=False, executor=executor)


@pytest.mark.slow
def test_ray_run_equals_local_run_task_by_task_and_resumes(cluster, tiny_suite, tmp_path, one_thread):
    for model in ("identity", "linear"):
        local = _run(model, tiny_suite, tmp_path / "local" / f"{model}.json", LocalExecutor())
        _forget_scores()
        out = tmp_path / "ray" / f"{model}.json"
        first = RayExecutor(cluster)
        _run(model, tiny_suite, out, first, tasks="map/*/blocks.1/rot90")  # then interrupted, say
        rest = RayExecutor(cluster)
        remote = _run(model, tiny_suite, out, rest)
        assert len(first.nodes) == 2 and len(rest.nodes) == 4, "a resumed run scores only the tasks left"
        assert len(set(first.nodes.values()) | set(rest.nodes.values())) == 2, "both nodes scored tasks"
        assert [t["status"] for t in remote["tasks"]] == ["ok"] * 6
        assert _untimed(remote) == _untimed(local)
        assert read_result(out)["model"] == local["model"]
        again = RayExecutor(cluster)
        assert _untimed(_run(model, tiny_suite, out, again)) == _untimed(local) and not again.nodes


@pytest.mark.slow
def test_cli_runs_on_ray(cluster, tiny_suite, tmp_path, one_thread, capsys):
    local = _run("identity", tiny_suite, tmp_path / "local.json", LocalExecutor())
    _forget_scores()
    out = tmp_path / "ray.json"
    assert main(["run", "--executor", "ray", "--ray-address", cluster, "--cpus-per-task", "1",
                 "--suite", str(tiny_suite.path), "--tasks", TASKS, "--model", "identity", "--n-boot", "50",
                 "--time-budget", "30", "--out", str(out)]) == 0
    assert _untimed(read_result(out)) == _untimed(local)


class CrashOnRot90(fb.Mapper):
    """Kills the process it is fitted in on rot90 tasks (a segfault, an out-of-memory kill)."""

    name, version = "crash-on-rot90", "1"

    def fit(self, train: fb.MapData) -> None:
        if train.info.manipulation.name == "rot90":
            os._exit(1)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.slow
def test_a_lost_worker_fails_its_task_and_the_run_goes_on(cluster, tiny_suite, tmp_path, one_thread):
    result = _run(CrashOnRot90, tiny_suite, tmp_path / "crash.json", RayExecutor(cluster, max_retries=0))
    status = sorted((t["task_id"].rsplit("/", 1)[1], t["status"]) for t in result["tasks"])
    assert status == [("mask_tl_red", "ok")] * 2 + [("noise40", "ok")] * 2 + [("rot90", "failed")] * 2
    assert all(t["reason"] for t in result["tasks"] if t["status"] == "failed")


@pytest.mark.slow
def test_a_task_too_large_for_every_node_is_refused(cluster, tiny_suite, tmp_path):
    with pytest.raises(FeatbenchError, match="no node of the Ray cluster has 8 CPUs.*--cpus-per-task 1"):
        _run("identity", tiny_suite, tmp_path / "big.json", RayExecutor(cluster, cpus_per_task=8))


def test_ray_options_need_the_ray_executor():
    with pytest.raises(FeatbenchError, match="add --executor ray"):
        make_executor("local", ray_address="127.0.0.1:6379")
    with pytest.raises(FeatbenchError, match="unknown executor 'dask'; choose local or ray"):
        make_executor("dask")
