"""Where a run's (task, model) fits execute: here, one after another (`LocalExecutor`), or fanned
out over a Ray cluster (`RayExecutor`, ``featbench run --executor ray``).

`featbench.scoring.runner.run_tasks` hands an executor the tasks left to score and the track's
function that scores one task (the same unit of work either way) and writes each record into the
result file as it comes back, so the result file, its atomic rewrites and its resume are those of
a local run, and so are the scores.

Ray's workers read the suite's data where the driver does: they are given the driver's cache path
(``FEATBENCH_CACHE``), which on a cluster must be a file system that every node mounts at that
path, and they import featbench and the model as the driver does (the same environment on every
node; a model given as ``file.py:Class`` travels by value). Each fit reserves ``cpus_per_task``
CPUs (and ``gpus_per_task`` GPUs) of a node and runs with that many torch threads.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Iterator, Protocol

from featbench.core.errors import FeatbenchError
from featbench.core.paths import cache_dir
from featbench.core.plugins import USER_MODULE_PREFIX
from featbench.core.results import TaskRecord
from featbench.data.suites import Task
from featbench.zoo.backbones import BACKBONES, BackboneSpec, register_backbone

Evaluate = Callable[[Task], TaskRecord]
Lost = Callable[[Task, str], TaskRecord]


class Executor(Protocol):
    def map(self, evaluate: Evaluate, tasks: list[Task], lost: Lost) -> Iterator[tuple[Task, TaskRecord]]:
        """Each task's record from ``evaluate(task)``, as it completes (in any order); where the
        machine scoring a task is lost (not the model failing, which `evaluate` records),
        ``lost(task, reason)``'s failed record instead."""
        ...


class LocalExecutor:
    """Every task in this process, in order."""

    def map(self, evaluate: Evaluate, tasks: list[Task], lost: Lost) -> Iterator[tuple[Task, TaskRecord]]:
        for task in tasks:
            yield task, evaluate(task)


class RayExecutor:
    """Each task a Ray task on the cluster at `address` (None: the one ``RAY_ADDRESS`` or a local
    ``ray start`` names, else a Ray started in this process). `cpus_per_task` defaults to this
    process's torch threads, so that a fit gets what it would get in a local run."""

    def __init__(self, address: str | None = None, cpus_per_task: int | None = None, gpus_per_task: float = 0,
                 max_retries: int = 2):
        import torch

        self.address = address
        self.cpus_per_task = cpus_per_task or torch.get_num_threads()
        self.gpus_per_task = gpus_per_task
        self.max_retries = max_retries  # of a task whose worker died (Ray's own retry)
        self.nodes: dict[str, str] = {}  # task id → the id of the Ray node that scored it

    def map(self, evaluate: Evaluate, tasks: list[Task], lost: Lost) -> Iterator[tuple[Task, TaskRecord]]:
        if not tasks:
            return
        ray = _connect(self.address)
        self._check_resources(ray)
        for name in list(sys.modules):
            if name.startswith(USER_MODULE_PREFIX):  # a model from a file that the workers cannot import
                ray.cloudpickle.register_pickle_by_value(sys.modules[name])
        remote = ray.remote(score_on_worker).options(
            num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task, max_retries=self.max_retries,
            scheduling_strategy="SPREAD",  # over the nodes, whose disks and memory share the load
            runtime_env={"env_vars": {"FEATBENCH_CACHE": str(cache_dir())}})
        shared = ray.put(evaluate)  # sent once, not with every task
        specs = [BACKBONES.lookup(name) for name in sorted({t.backbone for t in tasks})]
        pending = {remote.remote(shared, task, self.cpus_per_task, specs): task for task in tasks}
        lost_errors = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                       ray.exceptions.OutOfMemoryError, ray.exceptions.ObjectLostError)
        try:
            while pending:
                (ready,), _ = ray.wait(list(pending), num_returns=1)
                task = pending.pop(ready)
                try:
                    record, node = ray.get(ready)
                except lost_errors as exc:
                    yield task, lost(task, f"the Ray worker scoring it was lost: {type(exc).__name__}: "
                                           f"{str(exc).strip()[:500]}")
                    continue
                self.nodes[task.id] = node
                yield task, record
        finally:
            for ref in pending:  # interrupted: nothing keeps running for nobody
                ray.cancel(ref, force=True)

    def _check_resources(self, ray: Any) -> None:
        """Refuse now, rather than wait forever, if no node could ever run a task."""
        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
        for what, wanted, option in (("CPU", self.cpus_per_task, "--cpus-per-task"),
                                     ("GPU", self.gpus_per_task, "--gpus-per-task")):
            largest = max((n.get(what, 0) for n in nodes), default=0)
            if wanted > largest:
                raise FeatbenchError(f"no node of the Ray cluster has {wanted:g} {what}s for a task (the largest "
                                     f"has {largest:g}); pass {option} {largest:g} or less, or add larger nodes")


def _connect(address: str | None) -> Any:
    try:
        import ray
    except ImportError:
        raise FeatbenchError("the ray executor needs Ray: pip install 'featbench[ray]'") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=True)
        except ConnectionError as exc:
            raise FeatbenchError(f"cannot connect to the Ray cluster at {address}: {exc}") from exc
    return ray


def score_on_worker(evaluate: Evaluate, task: Task, threads: int,
                    backbones: list[BackboneSpec]) -> tuple[TaskRecord, str]:
    """A Ray task: ``evaluate(task)`` with `threads` torch threads and the driver's `backbones`
    registered (a backbone registered at run time in the driver is unknown to a fresh worker);
    returns the record and the node's id."""
    import ray
    import torch

    cache = os.environ["FEATBENCH_CACHE"]
    if not os.path.isdir(cache):
        raise FeatbenchError(f"featbench's cache {cache} is not on Ray node {ray.util.get_node_ip_address()}: "
                             "on a cluster it must be on a file system every node mounts at the same path")
    torch.set_num_threads(threads)
    for spec in backbones:
        if spec.name not in BACKBONES:
            register_backbone(spec)
    return evaluate(task), ray.get_runtime_context().get_node_id()


def make_executor(name: str = "local", ray_address: str | None = None, cpus_per_task: int | None = None,
                  gpus_per_task: float = 0) -> LocalExecutor | RayExecutor:
    """The executor `name` (``local`` or ``ray``) with its options (``featbench run --executor``)."""
    if name == "local":
        if ray_address is not None or cpus_per_task is not None or gpus_per_task:
            raise FeatbenchError("--ray-address, --cpus-per-task and --gpus-per-task are for the ray executor; "
                                 "add --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(ray_address, cpus_per_task, gpus_per_task)
    raise FeatbenchError(f"unknown executor {name!r}; choose local or ray")
