"""Trusted scoring: a submission's code runs in a child process that never holds the test targets.

The parent (the evaluator) writes what the child may have into a private temporary folder made
for this one job (never the cache): the training pairs, the task's public metadata and the test
*inputs*, plus the pickled model factory, and, read-only in the job's own cache, the few files it
may load through featbench (an inverter's checkpoint for its task, public pinned weights). The
child (``python -m featbench.scoring.isolation JOB``) fits and predicts and writes its predictions back; the parent checks them again and
scores them. The child's environment is scrubbed (no ``FEATBENCH_CACHE``; ``HOME`` and the
featbench cache point at empty folders of the job), and it runs under limits:

- wall time: the parent kills it past ``wall_s`` (derived from the fit budget by default);
- CPU: ``threads`` torch / OpenMP / BLAS threads, and ``RLIMIT_CPU`` of threads × wall seconds;
- memory: ``RLIMIT_AS`` of ``memory_gb`` GiB of address space (``RLIMIT_FSIZE`` likewise per
  file): an allocation past it fails inside the child (the task fails with the reason).

Modes (`Isolation.mode`):

- ``sandbox``: the child runs under bubblewrap (Debian's ``bubblewrap``, ``bwrap``): new user,
  PID, IPC, UTS and network namespaces (no network), a read-only file view of the system and
  Python folders and of the folders the model's code comes from, the job folder, a fresh
  ``/tmp`` and ``/dev``, and empty folders over the featbench cache and ``~/.cache`` wherever
  they fall inside those. Nothing else of the file system exists for it.
- ``process``: the same child without the sandbox. The targets still never reach it through
  featbench, but it can read whatever files this user can (the cache included, if it looks for
  it by path) and use the network: not a boundary against a submission that hunts for files.
- ``auto`` (the default): ``sandbox`` where ``bwrap`` works, else ``process`` with a warning
  (and the reason in each task record's notes).
- ``none``: in the evaluator's own process (for debugging; ``featbench run --no-isolation``).

Both tracks run this way: `featbench.scoring.map_track` (fit and predict) and
`featbench.scoring.invert_track` (fit and invert; the test images stay with the parent), through
the entry points of `featbench.scoring.submission`, the one module a child imports beyond torch
(so that its start-up costs about the import of torch).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Callable

import platformdirs
import torch
from safetensors.torch import load_file

from featbench.core.cache import save_tensors
from featbench.core.errors import FeatbenchError
from featbench.core.paths import cache_dir, weights_files
from featbench.core.plugins import USER_MODULE_PREFIX, load_module_file

MODES = ("auto", "sandbox", "process", "none")
GIB = 2**30
# Seconds a child may take beyond its fit's hard limit: starting Python and torch, reading its
# inputs, predicting the test split, writing the predictions.
CHILD_SLACK_S = 600.0
# The wall limit of a child whose fit has no budget.
UNBUDGETED_WALL_S = 6 * 3600.0
# The system folders a sandboxed child sees (read-only; those absent here are skipped).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/opt")
_JOB_IN, _JOB_OUT = "in", "out"


class ChildFailed(FeatbenchError):
    """The isolated child failed: its fit or predict raised, it ran past a limit, or it died.
    `reason` is the task record's reason (``Type: message``, as an in-process failure gives)."""

    def __init__(self, reason: str, details: str = ""):
        super().__init__(reason)
        self.reason, self.details = reason, details


@dataclass(frozen=True)
class Isolation:
    """How a submission's fit and predict run, and the child's limits (None: the defaults)."""

    mode: str = "auto"
    wall_s: float | None = None  # default: the fit's hard limit + CHILD_SLACK_S
    threads: int | None = None  # default: the evaluator's torch thread count
    memory_gb: float | None = None  # address space; default: 3/4 of this machine's memory

    def __post_init__(self):
        if self.mode not in MODES:
            raise FeatbenchError(f"unknown isolation mode {self.mode!r}; choose one of {', '.join(MODES)}")

    def resolved(self) -> str:
        """The mode a task runs in here: ``sandbox``, ``process`` or ``none``. ``sandbox`` asked
        for where bwrap does not work is an error; ``auto`` then falls back to ``process``."""
        if self.mode in ("process", "none"):
            return self.mode
        problem = sandbox_problem()
        if problem is None:
            return "sandbox"
        if self.mode == "sandbox":
            raise FeatbenchError(f"isolation mode sandbox needs bubblewrap: {problem}. Install it "
                                 "(apt-get install bubblewrap), or choose --isolation process")
        warn_unsandboxed(problem)
        return "process"

    def memory_bytes(self) -> int:
        if self.memory_gb is not None:
            return int(self.memory_gb * GIB)
        return int(0.75 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))

    def thread_count(self) -> int:
        return int(self.threads or torch.get_num_threads())

    def describe(self, wall_s: float | None) -> str:
        """The limits as a task record's note gives them."""
        wall = "none" if wall_s is None else f"{wall_s:g} s"
        return f"wall {wall}, {self.thread_count()} threads, memory {self.memory_bytes() / GIB:.1f} GiB"


def child_wall_limit(isolation: Isolation, fit_hard_limit_s: float | None) -> float:
    """The child's wall limit: the one asked for, else the fit's hard limit plus slack."""
    if isolation.wall_s is not None:
        return float(isolation.wall_s)
    return UNBUDGETED_WALL_S if fit_hard_limit_s is None else fit_hard_limit_s + CHILD_SLACK_S


@cache
def sandbox_problem() -> str | None:
    """Why a bubblewrap sandbox cannot be used here (None: it can): bwrap missing, or failing
    to start (no user namespaces, say)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bwrap (Debian package bubblewrap) is not installed"
    try:
        probe = subprocess.run([bwrap, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bwrap does not start: {exc}"
    if probe.returncode != 0:
        return f"bwrap does not start here: {probe.stderr.strip()[:300] or f'exit status {probe.returncode}'}"
    return None


@cache
def warn_unsandboxed(problem: str) -> None:
    """Warn once per process that children run without the sandbox."""
    warnings.warn(f"featbench: scoring children run without a sandbox ({problem}): they cannot get the "
                  "test targets through featbench, but can read this user's files, the cache included. "
                  "Install bubblewrap for trusted scores.", RuntimeWarning, stacklevel=3)


# --- the parent --------------------------------------------------------------------------------


def _user_module_files(factory_bytes: bytes) -> list[str]:
    """The files loaded as modules by path (``file.py:Class`` models) that the pickled factory
    names: the child loads them first, and sees their folders. Others this process loaded (earlier
    models') stay out of its view."""
    named = {op_arg.split()[0] for _, op_arg, _ in pickletools.genops(factory_bytes)
             if isinstance(op_arg, str) and op_arg.startswith(USER_MODULE_PREFIX)}
    return sorted(str(Path(m.__file__).resolve()) for name, m in list(sys.modules.items())
                  if name in named and getattr(m, "__file__", None))


def pickled_factory(factory: Callable[[], Any]) -> bytes:
    """The model factory as the child receives it; a clear error for one that cannot be sent."""
    try:
        return pickle.dumps(factory)
    except Exception as exc:  # pickling raises many types (PicklingError, AttributeError, TypeError)
        raise FeatbenchError(f"cannot send the model {getattr(factory, '__qualname__', factory)!r} to an isolated "
                             f"scoring process ({type(exc).__name__}: {exc}): define it at the top level of a module "
                             "or file, or score in-process for debugging (--no-isolation, isolation='none')") from exc


def _python_paths() -> list[str]:
    """sys.path as the child gets it (the working directory's '' left out: named explicitly)."""
    return [p for p in sys.path if p and Path(p).exists()]


def _within(path: Path, roots: list[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def _sandbox_command(job: Path, visible: list[str], files: dict[Path, str]) -> list[str]:
    # A fresh /tmp, /proc and /dev first: the binds after them may lie inside (a model file in /tmp).
    cmd = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
           "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for path in SYSTEM_PATHS:
        p = Path(path)
        if p.is_symlink():
            cmd += ["--symlink", os.readlink(p), path]
        elif p.is_dir():
            cmd += ["--ro-bind", path, path]
    roots = []
    for path in sorted({str(Path(p).resolve()) for p in visible}):
        if not _within(Path(path), [Path(s) for s in SYSTEM_PATHS]):
            cmd += ["--ro-bind", path, path]
            roots.append(Path(path))
    cmd += ["--ro-bind", str(job / _JOB_IN), f"/job/{_JOB_IN}", "--bind", str(job / _JOB_OUT), f"/job/{_JOB_OUT}"]
    for placeholder, host in files.items():  # each over its empty placeholder in the job's cache
        cmd += ["--ro-bind", host, "/job/" + str(placeholder.relative_to(job))]
    # Empty folders over the caches wherever a visible folder holds them.
    for hidden in {cache_dir().resolve(), Path(platformdirs.user_cache_dir()).resolve(), Path.home() / ".cache"}:
        if _within(hidden, roots) and hidden.is_dir():
            cmd += ["--tmpfs", str(hidden)]
    return cmd


def _limits(memory: int, cpu_s: int | None) -> Callable[[], None]:
    def apply() -> None:  # in the forked child, before exec: inherited by bwrap and Python alike
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_FSIZE, (memory, memory))
        if cpu_s is not None:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))
    return apply


def _inside_cache(relative: str) -> str:
    if Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise FeatbenchError(f"a file for the scoring process must lie inside its cache: {relative!r}")
    return relative


def _cache_files(job: Path, files: dict[str, str | Path], mode: str) -> dict[Path, str]:
    """Put `files` (path in the child's cache → file here) into the job's own cache: in the sandbox
    an empty placeholder each, mounted over read-only (`_sandbox_command`); else a read-only copy."""
    placed = {}
    for relative, host in files.items():
        inside = job / _JOB_OUT / "home" / "cache" / _inside_cache(relative)
        inside.parent.mkdir(parents=True, exist_ok=True)
        host = str(Path(host).resolve())
        if mode == "sandbox":
            inside.touch()
        else:
            shutil.copyfile(host, inside)
            inside.chmod(0o444)
        placed[inside] = host
    return placed


def run_in_child(entry: str, factory_bytes: bytes, tensors: dict[str, torch.Tensor | None], meta: dict[str, Any],
                 isolation: Isolation, mode: str, wall_s: float, files: dict[str, str | Path] | None = None,
                 checkpoints: dict[str, Path] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Run ``entry(factory, tensors, meta)`` (a ``module:function`` name) in a child process in
    `mode` (``sandbox`` or ``process``) under `isolation`'s limits; its (tensors, meta).

    The child sees only what is passed here: `tensors`, `meta`, and `files` ({path in its cache:
    file here}, read-only: public weights and checkpoints it may load through featbench's cache,
    never the cache itself); `checkpoints` ({folder in its cache: folder here}) are the model's own
    checkpoint folders: their latest checkpoint is copied in, writable, and the one the child leaves
    there is taken back (`featbench.interfaces.checkpoints.adopt_checkpoint`), also when it fails
    or runs past its limit, so that a training interrupted in a child resumes in the next.
    `ChildFailed` when it raises, runs past its wall limit, or dies; its `reason` names the cause.
    """
    # Here, not at the top: the child imports this module, and needs none of it.
    from featbench.interfaces.checkpoints import adopt_checkpoint, install_checkpoint, read_record

    threads, memory = isolation.thread_count(), isolation.memory_bytes()
    own_folders = {_inside_cache(relative): Path(here) for relative, here in (checkpoints or {}).items()}
    job = Path(tempfile.mkdtemp(prefix="featbench-job-"))  # mode 0700: this user's alone
    own = {job / _JOB_OUT / "home" / "cache" / relative: here for relative, here in own_folders.items()}
    try:
        (job / _JOB_IN).mkdir()
        (job / _JOB_OUT).mkdir()
        home = job / _JOB_OUT / "home"
        home.mkdir()
        placed = _cache_files(job, files or {}, mode)
        for inside, here in own.items():
            record = read_record(here)
            if record is not None:
                install_checkpoint(here, inside, record["latest"]["sha256"])
        user_modules = _user_module_files(factory_bytes)
        save_tensors(job / _JOB_IN / "tensors.safetensors", {k: v for k, v in tensors.items() if v is not None})
        (job / _JOB_IN / "factory.pkl").write_bytes(factory_bytes)
        (job / _JOB_IN / "job.json").write_text(json.dumps(
            {"entry": entry, "meta": meta, "threads": threads, "user_modules": user_modules}))
        inside = Path("/job") if mode == "sandbox" else job
        paths = _python_paths()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "PYTHONPATH": os.pathsep.join(paths),
               "HOME": str(inside / _JOB_OUT / "home"), "FEATBENCH_CACHE": str(inside / _JOB_OUT / "home" / "cache"),
               "XDG_CACHE_HOME": str(inside / _JOB_OUT / "home" / "cache"), "PYTHONDONTWRITEBYTECODE": "1",
               "HF_HUB_OFFLINE": "1", **{v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                                   "OPENBLAS_NUM_THREADS")},
               **weights_files()}  # public backbone weights, which a model may load (feature guidance)
        cmd = [sys.executable, "-m", "featbench.scoring.isolation", str(inside)]
        if mode == "sandbox":
            visible = [sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(sys.executable).resolve().parent),
                       *paths, *(str(Path(f).parent) for f in user_modules),  # the model's own folders
                       *weights_files().values()]
            cmd = _sandbox_command(job, visible, placed) + ["--chdir", "/tmp", "--"] + cmd
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, cwd=str(home), capture_output=True, timeout=wall_s,
                                  preexec_fn=_limits(memory, int(wall_s * threads) + 30), start_new_session=True)
        except subprocess.TimeoutExpired as exc:
            raise ChildFailed(f"WallTimeExceeded: the scoring process ran past its wall-time limit of {wall_s:g} s "
                              "and was killed", _tail(exc.stderr)) from None
        elapsed = time.perf_counter() - start
        out = job / _JOB_OUT / "result.json"
        if not out.is_file():
            raise ChildFailed(_death(proc.returncode, isolation, wall_s), _tail(proc.stderr))
        result = json.loads(out.read_text())
        if "error" in result:
            reason = result["error"]
            if "MemoryError" in reason or "can't allocate memory" in reason or "Cannot allocate memory" in reason:
                reason += f" (the scoring process's memory limit: {memory / GIB:.1f} GiB of address space)"
            raise ChildFailed(reason, result.get("traceback", ""))
        found = job / _JOB_OUT / "result.safetensors"
        out_tensors = load_file(str(found)) if found.is_file() else {}
        result["meta"]["child_wall_s"] = round(elapsed, 3)
        return out_tensors, result["meta"]
    finally:
        for inside, here in own.items():
            try:
                adopt_checkpoint(inside, here)
            except Exception as exc:  # noqa: BLE001 - a checkpoint not kept costs a retraining, not the task
                warnings.warn(f"featbench: the checkpoint the scoring process trained in {here.name} is not kept: "
                              f"{exc}", stacklevel=2)
        shutil.rmtree(job, ignore_errors=True)


def _tail(stderr: bytes | str | None) -> str:
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else (stderr or "")
    return text[-2000:]


def _death(returncode: int, isolation: Isolation, wall_s: float) -> str:
    """The reason for a child that left no result."""
    if returncode < 0 or returncode > 128:  # killed by a signal (bwrap reports 128 + signal)
        number = -returncode if returncode < 0 else returncode - 128
        name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else str(number)
        why = {"SIGXCPU": f"past its CPU-time limit ({isolation.thread_count()} threads x {wall_s:g} s)",
               "SIGKILL": "killed (out of memory?)", "SIGSEGV": "crashed"}.get(name, "killed")
        return f"ChildDied: the scoring process died of {name}: {why}"
    return f"ChildDied: the scoring process exited with status {returncode} without a result"


# --- the child ---------------------------------------------------------------------------------


def _serve(job: Path) -> None:
    spec = json.loads((job / _JOB_IN / "job.json").read_text())
    torch.set_num_threads(int(spec["threads"]))
    out = job / _JOB_OUT
    try:
        for path in spec["user_modules"]:
            load_module_file(path)
        factory = pickle.loads((job / _JOB_IN / "factory.pkl").read_bytes())
        tensors = load_file(str(job / _JOB_IN / "tensors.safetensors"))
        module, _, name = spec["entry"].partition(":")
        run = getattr(__import__(module, fromlist=[name]), name)
        out_tensors, meta = run(factory, tensors, spec["meta"])
    except BaseException as exc:  # everything the submission does fails its task, reported to the parent
        buf = io.StringIO()
        traceback.print_exc(limit=3, file=buf)
        (out / "result.json").write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}",
                                                     "traceback": buf.getvalue()[-2000:]}))
        return
    save_tensors(out / "result.safetensors", out_tensors)
    (out / "result.json").write_text(json.dumps({"meta": meta}))


__all__ = ["CHILD_SLACK_S", "ChildFailed", "Isolation", "MODES", "child_wall_limit", "pickled_factory",
           "run_in_child", "sandbox_problem"]

if __name__ == "__main__":
    _serve(Path(sys.argv[1]))
