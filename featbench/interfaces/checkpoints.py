"""Checkpoints of trained models: safetensors files with a sha256 record, atomic writes, resume.

A checkpoint folder holds ``step-<n>.safetensors`` files (the tensors: weights, EMA weights,
optimizer moments) and one ``checkpoint.json`` record::

    {"format": 1, "identity": {...}, "latest": {"file": "step-00001200.safetensors",
     "sha256": "...", "step": 1200, "state": {...}}, "history": [...]}

`identity` says what the weights are *of* (model preset and its configuration, the training data's
hash); a checkpoint whose identity differs from the caller's is refused, so a resumed run never
mixes two trainings. `state` is the JSON part of the training state (step, optimizer settings,
anything the trainer keeps). Every write goes to a temporary file in the same folder and is moved
into place with `os.replace`, so a folder holds the old checkpoint or the complete new one, never
a partial file; the record is written after the tensors it names. A file whose sha256 does not
match its record is refused with `CheckpointError` (it was damaged or edited).

A checkpoint can travel (a suite ships the inverters it pins beside its file):
`export_checkpoint` writes a folder of one safetensors file and a record naming it alone, by
default the trained module's weights only, in float16 (what loading needs: no optimizer state);
`install_checkpoint` copies such a folder into a cache folder after checking the file against
its pin. A weights-only checkpoint loads as a finished training and cannot be trained further.

`run_training` drives a resumable loop on top of this: it loads the latest checkpoint, runs steps
until `max_steps` or a wall-time limit, saves every `every` steps and at the end, and, since a
trainer that derives its randomness from the step number (`step_generator`) needs no saved RNG
state, a resumed run ends at the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from featbench.core.cache import atomic_write, save_tensors, write_json
from featbench.core.errors import FeatbenchError
from featbench.core.hashing import sha256_file, sha256_json
from featbench.data.images import seed_for

RECORD = "checkpoint.json"
FORMAT = 1
MODULE = "module."  # the prefix of the trained module's tensors in a checkpoint (the rest: optimizer state)


class CheckpointError(FeatbenchError):
    """A checkpoint is damaged, tampered with, or belongs to another training."""


def read_record(directory: str | Path) -> dict[str, Any] | None:
    """The folder's ``checkpoint.json``, or None when it has none."""
    path = Path(directory) / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint record: {exc}") from exc
    if record.get("format") != FORMAT or "latest" not in record:
        raise CheckpointError(f"{path}: not a featbench checkpoint record (format {record.get('format')!r})")
    return record


def save_checkpoint(directory: str | Path, tensors: Mapping[str, torch.Tensor], state: dict[str, Any],
                    identity: dict[str, Any], *, step: int, keep: int = 2) -> Path:
    """Write the tensors as ``step-<step>.safetensors``, then the record naming it and its sha256.

    Older step files beyond the newest `keep` are removed. Returns the tensor file's path.
    """
    directory = Path(directory)
    name = f"step-{step:08d}.safetensors"
    path = directory / name
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(flat, tmp, metadata={"step": str(step)}))
    previous = read_record(directory) if (directory / RECORD).is_file() else None
    history = [h for h in (previous or {}).get("history", []) if h["file"] != name]
    entry = {"file": name, "sha256": sha256_file(path), "step": int(step), "state": state,
             "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    history = (history + [{k: entry[k] for k in ("file", "sha256", "step")}])[-keep:]
    write_json(directory / RECORD, {"format": FORMAT, "identity": identity, "identity_sha256": sha256_json(identity),
                                     "latest": entry, "history": history}, indent=1, sort_keys=True)
    for stale in directory.glob("step-*.safetensors"):
        if stale.name not in {h["file"] for h in history}:
            stale.unlink(missing_ok=True)
    return path


def load_checkpoint(directory: str | Path, identity: dict[str, Any] | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any], int] | None:
    """(tensors, state, step) of the latest checkpoint in `directory`; None when there is none.

    Refused with `CheckpointError` when the file's sha256 does not match the record, or when
    `identity` is given and differs from the one the checkpoint was saved with.
    """
    directory = Path(directory)
    record = read_record(directory)
    if record is None:
        return None
    if identity is not None and record.get("identity_sha256") != sha256_json(identity):
        theirs, ours = record.get("identity", {}), identity
        diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise CheckpointError(
            f"the checkpoint in {directory} belongs to another training (differs in: {', '.join(diff) or '?'}); "
            "delete the folder, or train with --restart, to start afresh")
    latest = record["latest"]
    path = directory / latest["file"]
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} named by {directory / RECORD} is missing")
    got = sha256_file(path)
    if got != latest["sha256"]:
        raise CheckpointError(f"checkpoint {path} does not match its recorded sha256 ({got[:12]}… != "
                              f"{latest['sha256'][:12]}…): it was damaged or changed after it was written; "
                              "refusing to load it")
    return load_file(str(path)), latest["state"], int(latest["step"])


# --- checkpoints that travel ------------------------------------------------------------------


def export_checkpoint(directory: str | Path, out: str | Path, *, dtype: torch.dtype | None = torch.float16) -> str:
    """Write the latest checkpoint of `directory` into the folder `out`, to ship: one safetensors
    file of the module's tensors alone (no optimizer state), floating ones cast to `dtype` (None
    keeps them), and a record naming it alone, with the same identity. Returns the file's sha256
    (its pin)."""
    directory, out = Path(directory), Path(out)
    loaded = load_checkpoint(directory)
    if loaded is None:
        raise CheckpointError(f"{directory} holds no checkpoint to export; train one first")
    tensors, state, step = loaded
    record = read_record(directory)
    tensors = {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v
               for k, v in tensors.items() if k.startswith(MODULE)}
    state = {k: v for k, v in state.items() if k != "optimizer"}
    name = f"step-{step:08d}.safetensors"
    save_tensors(out / name, tensors, metadata={"step": str(step)})
    for stale in out.glob("step-*.safetensors"):  # an earlier export into the same folder
        if stale.name != name:
            stale.unlink()
    sha = sha256_file(out / name)
    exported = {"from_sha256": record["latest"]["sha256"], "dtype": None if dtype is None else str(dtype)}
    entry = {"file": name, "sha256": sha, "step": step, "state": state | {"exported": exported},
             "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json(out / RECORD, {"format": FORMAT, "identity": record["identity"],
                              "identity_sha256": record["identity_sha256"], "latest": entry,
                              "history": [{k: entry[k] for k in ("file", "sha256", "step")}]},
               indent=1, sort_keys=True)
    return sha


def install_checkpoint(source: str | Path, directory: str | Path, sha256: str, *, same_training_replaces: bool = False
                       ) -> bool:
    """Copy the latest checkpoint of the folder `source` (as `export_checkpoint` writes it, or any
    checkpoint folder) into `directory`, where its file must hash to `sha256`: that file and a
    record naming it alone. Returns False when `directory` holds it already.

    A source that is incomplete or does not hash to `sha256` is refused with `CheckpointError`
    (nothing is installed). Another checkpoint in `directory` is never overwritten: it is moved
    aside to ``<directory>.replaced-<its sha256[:12]>`` with a warning saying so; with
    `same_training_replaces`, one of the same training (identity) is replaced instead, its step
    files removed once the new record is written (a training's later step). The file is
    written before the record that names it, each atomically, so a reader sees either no
    checkpoint or the complete one.
    """
    source, directory = Path(source), Path(directory)
    record = read_record(source)
    if record is None:
        raise CheckpointError(f"{source} holds no checkpoint ({RECORD} is missing)")
    latest = record["latest"]
    shipped = source / latest["file"]
    if latest["sha256"] != sha256 or not shipped.is_file():
        raise CheckpointError(f"{source / RECORD} names {shipped.name} with sha256 {latest['sha256'][:12]}…, not "
                              f"the pinned {sha256[:12]}…, or that file is missing")

    def check(path: str | Path) -> None:
        got = sha256_file(path)
        if got != sha256:
            raise CheckpointError(f"{shipped} does not hash to its pin ({got[:12]}… != {sha256[:12]}…): it was "
                                  "damaged or changed after it was exported; refusing to install it")

    check(shipped)  # before anything in `directory` is touched
    try:
        mine = read_record(directory)
    except CheckpointError:
        mine = {"latest": {"sha256": "damaged", "step": "?"}}
    if mine is not None and mine["latest"]["sha256"] == sha256:
        return False
    replaces = same_training_replaces and mine is not None and mine.get("identity_sha256") == record.get("identity_sha256")
    if mine is not None and not replaces:
        aside = directory.with_name(f"{directory.name}.replaced-{mine['latest']['sha256'][:12]}")
        n = 1
        while aside.exists():  # moved aside before: keep that one too
            n += 1
            aside = aside.with_name(f"{directory.name}.replaced-{mine['latest']['sha256'][:12]}-{n}")
        directory.rename(aside)
        warnings.warn(f"featbench: {directory} held another checkpoint (step {mine['latest']['step']}, sha256 "
                      f"{mine['latest']['sha256'][:12]}…) than the pinned {sha256[:12]}…; moved it to {aside} and "
                      f"installed the pinned one from {source}", stacklevel=2)

    def copy(tmp: str) -> None:
        shutil.copyfile(shipped, tmp)
        check(tmp)  # what is installed is what was checked

    atomic_write(directory / latest["file"], copy)
    history = [{k: latest[k] for k in ("file", "sha256", "step")}]
    write_json(directory / RECORD, record | {"history": history}, indent=1, sort_keys=True)
    for stale in directory.glob("step-*.safetensors"):
        if stale.name != latest["file"]:
            stale.unlink(missing_ok=True)
    return True


def adopt_checkpoint(source: str | Path, directory: str | Path) -> bool:
    """Take the latest checkpoint a training left in `source` (an isolated scoring process's own
    copy of `directory`) into `directory`, checked against its own record (`install_checkpoint`):
    it replaces the checkpoint there when that is of the same training and an earlier step, and
    moves one of another training aside. Returns whether it took anything."""
    record = read_record(source)
    if record is None:
        return False
    try:
        mine = read_record(directory)
    except CheckpointError:
        mine = None  # damaged: install_checkpoint moves it aside
    if (mine is not None and mine.get("identity_sha256") == record.get("identity_sha256")
            and int(mine["latest"]["step"]) >= int(record["latest"]["step"])):
        return False
    return install_checkpoint(source, directory, record["latest"]["sha256"], same_training_replaces=True)


# --- optimizer state as flat tensors + JSON ----------------------------------------------------


def optimizer_to_flat(optimizer: torch.optim.Optimizer, prefix: str = "optimizer.") -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer's state dict as {name: tensor} (its per-parameter tensors) plus JSON (the rest)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, slots in sd["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: dict,
                        prefix: str = "optimizer.") -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix):
            index, key = name[len(prefix):].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# --- a resumable training loop -----------------------------------------------------------------


def step_generator(seed: int, step: int, what: str = "") -> torch.Generator:
    """A generator for one training step's randomness, derived from (seed, step): nothing to save."""
    return torch.Generator().manual_seed(seed_for(seed, step, what))


@dataclass
class TrainingReport:
    directory: str
    start_step: int  # the step it resumed from (0: a fresh start)
    step: int  # steps done in all
    max_steps: int
    stopped_by: str  # "max_steps" | "time limit" | "already trained" (resumed at max_steps: nothing done)
    seconds: float = 0.0  # this session's wall time
    s_per_step: float | None = None
    last_loss: float | None = None
    weights_sha256: str | None = None  # sha256 of the last checkpoint file
    losses: list[float] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.step >= self.max_steps

    def summary(self) -> str:
        if self.step == self.start_step and self.step >= self.max_steps:
            return f"already trained to step {self.step} (max {self.max_steps}): nothing to do; checkpoint in {self.directory}"
        rate = f", {self.s_per_step:.2f} s/step" if self.s_per_step else ""
        return (f"{self.step}/{self.max_steps} steps ({self.step - self.start_step} this session, "
                f"{self.seconds:.0f} s{rate}), stopped by {self.stopped_by}; checkpoint in {self.directory}")


def run_training(*, directory: str | Path, identity: dict[str, Any], module: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, step_fn: Callable[[int], float], max_steps: int,
                 max_seconds: float | None = None, every: int = 200, progress: bool = False,
                 desc: str = "train", extra_state: Callable[[], dict] | None = None,
                 on_resume: Callable[[dict], None] | None = None) -> TrainingReport:
    """Resume from `directory` (if it holds a checkpoint of `identity`), run `step_fn(step)` for
    the remaining steps, checkpointing every `every` steps, at the end and on KeyboardInterrupt.

    `module` holds everything trained (its state dict is saved: weights, EMA copies, buffers);
    `step_fn(step)` does one optimisation step and returns its loss; it must draw its randomness
    from `step_generator` so that a resumed run equals an uninterrupted one. `extra_state()` adds
    JSON to the record; `on_resume(state)` gets it back.
    """
    directory = Path(directory)
    start = 0
    loaded = load_checkpoint(directory, identity)
    report_sha = None
    if loaded is not None:
        tensors, state, start = loaded
        if "optimizer" not in state and start < max_steps:
            raise CheckpointError(f"the checkpoint in {directory} holds weights only (it was exported for shipping, "
                                  f"at step {start}), so it cannot be trained on to step {max_steps}; delete the "
                                  "folder, or train with --restart, to start afresh")
        module.load_state_dict({k[len(MODULE):]: v for k, v in tensors.items() if k.startswith(MODULE)})
        if "optimizer" in state:
            optimizer_from_flat(optimizer, tensors, state["optimizer"])
        if on_resume is not None:
            on_resume(state.get("extra", {}))
        report_sha = read_record(directory)["latest"]["sha256"]
    report = TrainingReport(str(directory), start, start, max_steps,
                            "already trained" if loaded is not None and start >= max_steps else "max_steps",
                            weights_sha256=report_sha)

    def save(step: int) -> None:
        opt_tensors, opt_meta = optimizer_to_flat(optimizer)
        tensors = {f"{MODULE}{k}": v for k, v in module.state_dict().items()} | opt_tensors
        state = {"optimizer": opt_meta, "extra": extra_state() if extra_state else {}}
        path = save_checkpoint(directory, tensors, state, identity, step=step)
        report.weights_sha256 = read_record(directory)["latest"]["sha256"]
        del path

    t0 = time.perf_counter()
    step = start
    bar = tqdm(total=max_steps, initial=start, desc=desc, unit="step", disable=not progress, dynamic_ncols=True)
    try:
        while step < max_steps:
            if max_seconds is not None and time.perf_counter() - t0 >= max_seconds:
                report.stopped_by = "time limit"
                break
            loss = float(step_fn(step))
            step += 1
            report.last_loss = loss
            report.losses.append(loss)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if step % every == 0 and step < max_steps:
                save(step)
    except KeyboardInterrupt:
        if step > start:
            save(step)
        raise
    finally:
        bar.close()
    if step > start or loaded is None:
        save(step)
    report.step = step
    report.seconds = time.perf_counter() - t0
    if step > start:
        report.s_per_step = report.seconds / (step - start)
    return report
