"""The invert-track evaluator: fit an inverter on each invert task's training split, reconstruct the
test images from their feature maps, score the reconstructions against the true images.

Scores (docs/design.md, "Metrics", invert track), each with a seeded bootstrap interval over test images,
on reconstructions at the suite's image size S (``invert.image_size``, default 64 px; an inverter
working at another resolution R has its output resized to S, bicubic with antialiasing):

- ``lpips``: LPIPS v0.1 (AlexNet) between reconstruction and true image (`featbench.scoring.metrics.lpips`);
- ``ssim``: SSIM (Wang et al., Gaussian window) between them (`featbench.scoring.metrics.ssim`);
- ``lpips_shuffled``: LPIPS between each reconstruction and the true image of the next test row
  (a fixed derangement), and ``lpips_gap`` = lpips_shuffled − lpips: how much closer a
  reconstruction is to its own image than to another's, i.e. how much it uses its condition
  (0 for any image that ignores the map, such as the mean image);
- ``top1_agree``, ``jsd``, ``top1_acc``: the suite's classifier (``invert.classifier``, default
  efficientnet_lite0, for every backbone) on the reconstruction, resized to its input size, vs
  on the true image at the backbone's input size (`featbench.scoring.metrics.logit_components`);
- ``feat_cos``: the task's backbone applied to the reconstruction (resized to its input size):
  per image, the median over positions of the cosine between its map at the task's layer and the
  given map, averaged over images (the map track's ``cos_median`` aggregation);
- ``predict_per_s``: reconstructed images per second (the task record's throughput field);
  ``fit_s`` as for the map track.

Reference points beside every score: ``mean`` (the mean training image, for every test image),
``downsampled`` (the true image at S: LPIPS 0 and SSIM 1 by construction; its classifier and
feature scores are the ceiling that scoring at S allows), and, for inverters that can sample
without their condition (``invert_unconditional(n)``), ``unconditional``. An inverter that raises,
overruns its budget, or returns anything but N×3×R×R finite floats in [0, 1] fails that task with
the reason recorded; the run goes on, and, as on the map track, the result file is rewritten
after every task so that an interrupted run resumes. The inverter's fit and invert run in an
isolated child process by default, as the map track's mapper does (`featbench.scoring.isolation`:
it gets the training pairs, the `InvertInfo`, the test maps, the files of `child_files` and its
own checkpoint folder (`child_checkpoints`: what it trains there is kept), never the test images;
this process scores).

The targets are derived from the suite's pinned images as `featbench.interfaces.inverter.target_images`
documents (each row's own view, resized, 8-bit), cached by key.
"""

from __future__ import annotations

import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from featbench.core.cache import cached_json
from featbench.core.errors import FeatbenchError
from featbench.core.hashing import sha256_json
from featbench.core.paths import cache_dir
from featbench.core.results import TaskRecord
from featbench.data.images import seed_for
from featbench.data.storage import TaskData, column_tensor, load_task
from featbench.data.suites import Suite, Task
from featbench.data.targets import aligned_targets, as_unit, manipulated_images, network_input, resize_images
from featbench.interfaces.checkpoints import read_record
from featbench.interfaces.inverter import (CheckpointedInverter, InvertData, InvertInfo, Inverter, checkpoint_dir,
                                           resolve_inverter)
from featbench.scoring import metrics
from featbench.scoring.executors import Executor
from featbench.scoring.isolation import pickled_factory
from featbench.scoring.runner import (Models, RunConfig, failed_submission, isolated_fit, model_identity,
                                      new_task_record, record_described, run_tasks, scoring_mode)
from featbench.scoring.submission import Fitted, check_images, fit_and_invert
from featbench.zoo import BACKBONES, assets

SCORE_BATCH = 32
# The suite's ``invert:`` section overrides these (and may pin ``sampler: {steps, guidance}``).
DEFAULT_SETTINGS: dict[str, Any] = {"classifier": "efficientnet_lite0", "image_size": 64}
# Bump when the invert metrics change, so cached reference points are recomputed.
REFERENCE_CACHE_VERSION = 2


def invert_settings(suite: Suite) -> dict[str, Any]:
    return {**DEFAULT_SETTINGS, **(getattr(suite, "invert", None) or {})}


def invert_info(suite: Suite, task: Task, data: TaskData, cfg: RunConfig) -> InvertInfo:
    x = data.train.features["x"].shape
    prefix = data.train.features["x_prefix"].shape if "x_prefix" in data.train.column_names else None
    settings = invert_settings(suite)
    return InvertInfo(task.id, suite.name, task.backbone, task.layer, tuple(x), prefix and tuple(prefix),
                      int(settings["image_size"]), seed_for(cfg.seed, task.id), cfg.time_budget_s,
                      data.content_sha256, settings)


def invert_data(suite: Suite, data: TaskData, info: InvertInfo, resolution: int, split: str = "train") -> InvertData:
    """A split's maps with their true images at `resolution` (N×3×R×R floats in [0, 1]); the
    training split also offers its pairs under the suite's manipulations (`InvertData.with_manipulation`)."""
    ds = getattr(data, split)
    ids, views = list(ds["image_id"]), [int(v) for v in ds["view"]]
    images = aligned_targets(suite, info.backbone, split, [resolution], ids, views)[resolution]
    out = InvertData(info, column_tensor(ds, "x"), as_unit(images), ids, views, column_tensor(ds, "x_prefix"))
    if split == "train" and "map" in suite.tracks:
        out.manipulations = tuple(m.name for m in suite.manipulations)
        models = Models()  # the backbone (for its preprocessing), loaded once for all manipulations
        out.manipulated_loader = lambda name: _manipulated_train_data(suite, info, resolution, name, models)
    return out


def _manipulated_train_data(suite: Suite, info: InvertInfo, resolution: int, name: str,
                            models: Models) -> InvertData:
    """The map task's training rows: its targets y (the maps of the manipulated images) with the
    manipulated images as true images."""
    task = suite.get_task(f"map/{info.backbone}/{info.layer}/{name}")
    ds = load_task(suite, task).train
    ids, views = list(ds["image_id"]), [int(v) for v in ds["view"]]
    images = manipulated_images(suite, task, models.backbone(info.backbone), list(zip(ids, views)), resolution,
                                split="train")
    return InvertData(info, column_tensor(ds, "y"), as_unit(images), ids, views, column_tensor(ds, "y_prefix"))


# --- a submission's fit and inversion in an isolated child --------------------------------------

DESCRIBED_KEYS = ("steps", "stopped_by", "sampler", "weights_sha256")  # noted from an inverter's describe()


def _sent_data(prefix: str, data: InvertData, tensors: dict[str, torch.Tensor | None]) -> dict[str, Any]:
    """`data`'s tensors into `tensors` under `prefix`; its rows' ids and views (for the metadata)."""
    tensors |= {f"{prefix}x": data.x, f"{prefix}images": data.images, f"{prefix}x_prefix": data.x_prefix}
    return {"image_ids": data.image_ids, "views": data.views}


def child_files(suite: Suite, task: Task, inverter: Inverter) -> dict[str, Path]:
    """The files an isolated inverter may load through featbench's cache, read-only ({path in the
    cache: file here}): the task backbone's pinned weights (feature guidance runs it) and LPIPS's
    (a training loss)."""
    paths = [assets.resolve(metrics.LPIPS_NETS["alex"][1])]
    spec = BACKBONES.get(task.backbone)
    if spec is not None and spec.asset is not None:  # random-init backbones need none; timm's own: see README
        paths.append(assets.resolve(spec.asset))
    root = cache_dir()
    return {str(path.relative_to(root)): path for path in paths}


def child_checkpoints(suite: Suite, task: Task, inverter: Inverter) -> dict[str, Path]:
    """A `CheckpointedInverter`'s checkpoint folder for `task` ({folder in the cache: folder here}):
    the isolated child starts from its latest checkpoint, and what it trains there is kept."""
    if not isinstance(inverter, CheckpointedInverter):
        return {}
    directory = checkpoint_dir(suite.name, task.backbone, task.layer, inverter.name)
    return {str(directory.relative_to(cache_dir())): directory}


def _batched(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([fn(x[i:i + SCORE_BATCH]) for i in range(0, len(x), SCORE_BATCH)])


def _logits(models: Models, name: str, images: torch.Tensor) -> torch.Tensor:
    """The classifier's logits of [0, 1] images, resized to its input size."""
    clf = models.backbone(name)
    if not clf.spec.has_head:
        raise FeatbenchError(f"the suite's invert classifier {name} has no classification head")
    return _batched(lambda b: clf.model(network_input(clf, b).contiguous(
        memory_format=clf.input_memory_format)).float(), images)


def _features(models: Models, task: Task, images: torch.Tensor) -> torch.Tensor:
    bb = models.backbone(task.backbone)
    return _batched(lambda b: bb.features(network_input(bb, b), [task.layer])[task.layer].float(), images)


def _statistics() -> dict[str, Callable]:
    stats = {"lpips": lambda c: float(np.mean(c["lpips"])), "ssim": lambda c: float(np.mean(c["ssim"])),
             "lpips_shuffled": lambda c: float(np.mean(c["lpips_shuffled"])),
             "lpips_gap": lambda c: float(np.mean(c["lpips_shuffled"]) - np.mean(c["lpips"]))}
    stats |= metrics.LOGIT_STATISTICS
    stats["feat_cos"] = lambda c: float(np.mean(c["feat_cos"]))
    return stats


class _Truth:
    """A task's test targets: true images at the scored size, and the classifier's logits of the
    true images at the backbone's input size."""

    def __init__(self, suite: Suite, task: Task, data: TaskData, info: InvertInfo, models: Models):
        ds = data.test
        ids, views = list(ds["image_id"]), [int(v) for v in ds["view"]]
        size, crop = info.image_size, models.backbone(task.backbone).spec.preprocessing.crop
        imgs = aligned_targets(suite, task.backbone, "test", sorted({size, crop}), ids, views)
        self.images = as_unit(imgs[size])
        self.logits = _logits(models, info.settings["classifier"], as_unit(imgs[crop]))
        self.x = column_tensor(ds, "x")
        self.labels = torch.tensor(ds["label"])


def score_images(recon: torch.Tensor, truth: _Truth, task: Task, info: InvertInfo, models: Models,
                 cfg: RunConfig) -> dict[str, dict]:
    """Every invert-track score of reconstructions at the scored size, with bootstrap intervals."""
    components = {
        "lpips": metrics.lpips(recon, truth.images, net="alex").numpy(),
        # Each reconstruction against the next test row's true image (a fixed derangement).
        "lpips_shuffled": metrics.lpips(recon, truth.images.roll(1, dims=0), net="alex").numpy(),
        "ssim": metrics.ssim(recon, truth.images).numpy(),
        **metrics.logit_components(_logits(models, info.settings["classifier"], recon), truth.logits, truth.labels),
        "feat_cos": metrics.map_components(_features(models, task, recon), truth.x)["cos_median"],
    }
    seed = seed_for(cfg.seed, task.id, "bootstrap")
    return {k: v.to_dict() for k, v in metrics.score(components, _statistics(), n_boot=cfg.n_boot, seed=seed).items()}


def _reference_points(suite: Suite, task: Task, data: TaskData, info: InvertInfo, truth: _Truth, models: Models,
                      cfg: RunConfig) -> dict[str, dict]:
    """``mean`` and ``downsampled``, the same for every inverter: cached on disk."""
    key = sha256_json([data.content_sha256, info.settings, cfg.seed, cfg.n_boot, REFERENCE_CACHE_VERSION, "invert"])

    def make() -> dict[str, dict]:
        ds = data.train
        ids, views = list(ds["image_id"]), [int(v) for v in ds["view"]]
        train_images = as_unit(aligned_targets(suite, task.backbone, "train", [info.image_size], ids, views)[info.image_size])
        mean = train_images.mean(dim=0, keepdim=True).expand(len(truth.images), -1, -1, -1).contiguous()
        return {"mean": score_images(mean, truth, task, info, models, cfg),
                "downsampled": score_images(truth.images, truth, task, info, models, cfg)}

    return cached_json(cache_dir() / "references" / f"{key}.json", make)


def fit_and_invert_isolated(factory_bytes: bytes, train: InvertData, test_x: torch.Tensor,
                            test_prefix: torch.Tensor | None, files: dict[str, Path], cfg: RunConfig, mode: str,
                            record: TaskRecord, checkpoints: dict[str, Path] | None = None) -> Fitted:
    """`fit_and_invert` in a child process (`mode` ``sandbox`` or ``process``) that is sent the
    training pairs (with those under the manipulations `train` offers, loaded here), the task's
    metadata, the test maps, `files` (`child_files`) and `checkpoints` (`child_checkpoints`) alone:
    never a test image. Its images are
    checked here again (nothing a child writes is trusted)."""
    tensors: dict[str, torch.Tensor | None] = {"test.x": test_x, "test.x_prefix": test_prefix}
    meta = {"info": {f.name: getattr(train.info, f.name) for f in fields(InvertInfo)},
            "train": _sent_data("train.", train, tensors),
            "manipulated": {name: _sent_data(f"{name}.", train.with_manipulation(name), tensors)
                            for name in train.manipulations}}
    n, size = len(test_x), train.resolution
    fitted = isolated_fit("featbench.scoring.submission:invert_child_job", factory_bytes, tensors, meta,
                          train.info.time_budget_s, n, cfg, mode, record, files, checkpoints)
    if "recon" not in fitted.outputs:
        raise FeatbenchError("the scoring process returned no reconstructions")
    fitted.outputs = {name: check_images(images, n, size) for name, images in fitted.outputs.items()
                      if name in ("recon", "unconditional")}
    return fitted


def evaluate_invert_task(factory: Callable[[], Inverter], suite: Suite, task: Task, cfg: RunConfig,
                         models: Models | None = None, references: bool = True, mode: str | None = None,
                         factory_bytes: bytes | None = None) -> TaskRecord:
    """Fit and score one invert task; returns its task record (status "ok" or "failed").

    `mode` is ``cfg.isolation.resolved()`` and `factory_bytes` the pickled factory, both found
    here unless a run passes them once (as `featbench.scoring.map_track.evaluate_map_task`)."""
    models = models or Models()
    mode = mode or cfg.isolation.resolved()
    data = load_task(suite, task)
    info = invert_info(suite, task, data, cfg)
    record = new_task_record(task, data, cfg)
    record.notes.append(f"scored at {info.image_size} px; classifier {info.settings['classifier']}; "
                        "predict_per_s is reconstructed images per second")
    record.scoring = scoring_mode(suite, mode)
    truth = _Truth(suite, task, data, info, models)
    if references:
        record.reference_points = _reference_points(suite, task, data, info, truth, models, cfg)
    try:
        probe = factory()  # what the inverter is (its resolution, its checkpoint); fitted afresh below
        resolution = int(getattr(probe, "resolution", None) or info.image_size)
        train = invert_data(suite, data, info, resolution, "train")
        test_prefix = column_tensor(data.test, "x_prefix")
        if mode == "none":
            fitted = fit_and_invert(factory, train, truth.x, test_prefix)
        else:
            if not _trains_in_fit(suite, task, probe):  # its fit loads a checkpoint: no extra pairs to send
                train.manipulations = ()
            fitted = fit_and_invert_isolated(factory_bytes or pickled_factory(factory), train, truth.x, test_prefix,
                                               child_files(suite, task, probe), cfg, mode, record,
                                               child_checkpoints(suite, task, probe))
    except Exception as exc:
        return failed_submission(record, exc)
    record.fit_s, record.predict_per_s = fitted.fit_s, fitted.per_s
    if resolution != info.image_size:
        record.notes.append(f"reconstructions at {resolution} px resized to {info.image_size} px (bicubic, antialiased)")
    record.metrics = score_images(resize_images(fitted.outputs["recon"], info.image_size).clamp(0, 1), truth, task,
                                  info, models, cfg)
    if "unconditional" in fitted.outputs:
        record.reference_points["unconditional"] = score_images(
            resize_images(fitted.outputs["unconditional"], info.image_size).clamp(0, 1), truth, task, info, models, cfg)
    record_described(record, fitted.described, DESCRIBED_KEYS)
    record.status = "ok"
    return record


def _trains_in_fit(suite: Suite, task: Task, inverter: Inverter) -> bool:
    """False for a `CheckpointedInverter` whose checkpoint for `task` is in the cache: its fit
    loads it as it is (and needs no training pairs beyond its task's)."""
    return not (isinstance(inverter, CheckpointedInverter)
                and read_record(checkpoint_dir(suite.name, task.backbone, task.layer, inverter.name)) is not None)


def run_invert_track(factory: Callable[[], Inverter], suite: Suite, tasks: list[Task], out: str | Path,
                     cfg: RunConfig, progress: bool = True, executor: Executor | None = None) -> dict[str, Any]:
    """Evaluate invert `tasks`, writing the result file `out` after each one; resumes from `out`.
    `executor`: where the fits run (default: here, in turn)."""
    model = model_identity(factory)
    model["metadata"]["invert_settings"] = invert_settings(suite)
    models = Models()
    mode = cfg.isolation.resolved()
    factory_bytes = None if mode == "none" else pickled_factory(factory)  # fails at once for a model that cannot go

    def evaluate(task: Task) -> TaskRecord:
        return evaluate_invert_task(factory, suite, task, cfg, models, mode=mode, factory_bytes=factory_bytes)

    def reusable(task: Task, rec: TaskRecord) -> bool:  # scored the way this run scores, of the checkpoint at hand
        return rec.scoring == scoring_mode(suite, mode) and scored_current_checkpoint(suite, task,
                                                                                             model["name"], rec)

    return run_tasks("invert", model, evaluate, suite, tasks, out, cfg, progress, reusable=reusable,
                     executor=executor)


def scored_current_checkpoint(suite: Suite, task: Task, inverter: str, record: TaskRecord) -> bool:
    """Whether a kept task record still stands for the inverter's checkpoint in the cache: False
    when `train-inverter` has since left a checkpoint other than the one the record names (so a
    resumed run scores the new training); True when the record names none or no checkpoint is here."""
    named = record.provenance.get("weights_sha256")
    latest = read_record(checkpoint_dir(suite.name, task.backbone, task.layer, inverter))
    return not named or latest is None or latest["latest"]["sha256"] == named


# --- training ahead of a run -------------------------------------------------------------------


def train_inverter(suite: Suite, backbone: str, layer: str, preset: str, *, seed: int = 0,
                   max_steps: int | None = None, max_minutes: float | None = None, restart: bool = False,
                   progress: bool = True):
    """Train one (suite, backbone, layer) with a preset that has ``train`` (``featbench train-inverter``).

    Checkpoints go to ``<cache>/inverters/<suite>/<backbone>/<layer>/<preset name>/``; a later call
    (or `featbench run`'s fit, with the same seed) resumes from them.
    """
    task = suite.get_task(f"invert/{backbone}/{layer}")
    inverter = resolve_inverter(preset)()
    if not hasattr(inverter, "train"):
        raise FeatbenchError(f"inverter {preset!r} has no train(); it is fitted by `featbench run` alone")
    data = load_task(suite, task)
    info = invert_info(suite, task, data, RunConfig(seed=seed, time_budget_s=None))
    directory = checkpoint_dir(suite.name, backbone, layer, inverter.name)
    if restart and directory.exists():
        shutil.rmtree(directory)
    train = invert_data(suite, data, info, int(getattr(inverter, "resolution", None) or info.image_size), "train")
    return inverter.train(train, directory=directory, max_steps=max_steps,
                          max_seconds=None if max_minutes is None else 60 * max_minutes, progress=progress)
