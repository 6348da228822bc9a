"""Image-level scores of the map track (docs/design.md, "Metrics", image level).

A suite pins, per (backbone, layer) that it scores in image space, one trained inverter checkpoint
in its ``invert:`` section::

    invert:
      image_scores:
        - {backbone: efficientnet_lite0, layer: blocks.6, inverter: decoder,
           checkpoint_sha256: <64 hex digits>, n_images: 50}

(optional per entry: ``seed``, the ``train-inverter --seed`` it was trained with, default 0;
``checkpoint``, the checkpoint folder shipped with the suite, relative to the suite file, e.g.
``checkpoint: checkpoints/featbench-v2/efficientnet_lite0/blocks.6/decoder``, as
``featbench train-inverter ... --export`` writes it).

For a map task of a pinned (backbone, layer), the evaluator loads that inverter from
``<cache>/inverters/<suite>/<backbone>/<layer>/<preset>/`` (`featbench.interfaces.checkpoints`: the file must
hash to its record, and the record's sha256 must be the pinned one). A shipped checkpoint is
installed there first (`featbench.interfaces.checkpoints.install_checkpoint`: checked against the
pin, a tampered file is an error; another checkpoint there is moved aside, with a warning), so a
fresh clone scores in image space. Where the suite ships none and the cache lacks the pinned one
(featbench-v1's decoders exist in no cache but their trainer's, and a retraining hashes
differently), the task is scored at map level only, with that reason in its record (``image scores unavailable``)
and a warning naming the pin and the command that trains a new one; with
``RunConfig.require_image_scores`` (``featbench run --require-image-scores``) it is an error
(`MissingCheckpointError`) instead. Then, on a fixed subset of ``n_images`` test rows (drawn
once from the suite seed, the same for every task, model and run), the evaluator inverts the
prediction P and the target maps Y and scores

- ``lpips_vs_manipulated``: LPIPS v0.1 (AlexNet) between invert(P) and the manipulated image;
- ``lpips_vs_inverted_target``: LPIPS between invert(P) and invert(Y);
- ``ssim_vs_manipulated``, ``ssim_vs_inverted_target``: SSIM likewise;

each a mean over the subset with a seeded bootstrap interval (`featbench.scoring.metrics.score`). A
suite that asks for the changed region (``scores: [changed_region]``) gets the four again on its
local and semantic tasks as ``<score>_changed``, restricted to the pixels where the manipulated image
differs from the original at R (FeatMap's masked variant, in image space): per image, the mean of
the per-pixel LPIPS or SSIM map there (`metrics.lpips` / `metrics.ssim` with ``spatial=True``; for
SSIM, inside its window's border), then the mean over the images with such a pixel. Images
are compared at the inverter's resolution R (``resolution``, else the suite's invert image size).
The manipulated image is the task's manipulation applied to the test view exactly as the task
data were built (`featbench.data.storage`), then resized to R and rounded to 8 bits as the invert
track's true images are (`featbench.data.targets.to_target`). Reconstructions are rounded to 8 bits
too, so that invert(P) of a mapper that predicts Y exactly equals the cached invert(Y) and scores
LPIPS 0, SSIM 1. Seeded samplers (featinv) are reset before each inversion, so invert(P) and
invert(Y) share their noise.

The manipulated images and invert(Y) are the same for every model: they are cached in
``<cache>/image_scores/`` by a hash of everything they depend on; so are the scores of a
prediction (identity and spatial reference points cost one inversion per task).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from featbench.core.cache import cached_json, cached_tensor
from featbench.core.errors import FeatbenchError
from featbench.core.hashing import sha256_json, sha256_tensors
from featbench.core.results import IMAGE_SCORES_KEYS, TaskRecord
from featbench.core.paths import cache_dir
from featbench.data.images import seed_for
from featbench.data.storage import column_tensor, load_task
from featbench.data.targets import aligned_targets, manipulated_images, unit_to_uint8
from featbench.interfaces.checkpoints import CheckpointError, export_checkpoint, install_checkpoint, read_record
from featbench.interfaces.inverter import checkpoint_dir, resolve_inverter
from featbench.scoring import metrics
from featbench.scoring.invert_track import invert_data, invert_info
from featbench.scoring.runner import RunConfig
from featbench.scoring.submission import invert_all

# Bump when what is cached here changes meaning.
IMAGE_CACHE_VERSION = 1
METRICS = ("lpips_vs_manipulated", "lpips_vs_inverted_target", "ssim_vs_manipulated", "ssim_vs_inverted_target")
CHANGED_METRICS = tuple(f"{name}_changed" for name in METRICS)  # the same within the changed region


def metrics_of(suite, task) -> tuple[str, ...]:
    """The image-level scores a map task of a pinned layer gets."""
    return METRICS + (CHANGED_METRICS if suite.scores_changed_region(task) else ())


# The provenance key of a task scored at map level for want of its pinned checkpoint (its value: why).
UNAVAILABLE = "image scores unavailable"


class MissingCheckpointError(CheckpointError):
    """The suite pins an inverter checkpoint that is not at hand: it ships none, and the cache
    holds none or another one; or it was trained on other data than those built here."""


def _trained_on(record: dict) -> str | None:
    """The content hash of the data a checkpoint was trained on, where its record names it."""
    return (record.get("identity") or {}).get("data_sha256") or None


@dataclass(frozen=True)
class Pin:
    backbone: str
    layer: str
    inverter: str  # a registered inverter preset (or module:Class) with train()
    checkpoint_sha256: str
    n_images: int
    seed: int = 0  # the training seed (train-inverter --seed)
    shipped: Path | None = None  # the checkpoint folder shipped with the suite (its ``checkpoint:``), if any


def pins(suite) -> dict[tuple[str, str], Pin]:
    """The suite's ``invert.image_scores`` entries by (backbone, layer), checked."""
    out = {}
    for entry in (getattr(suite, "invert", None) or {}).get("image_scores", []) or []:
        try:
            pin = Pin(str(entry["backbone"]), str(entry["layer"]), str(entry["inverter"]),
                      str(entry["checkpoint_sha256"]).lower(), int(entry["n_images"]), int(entry.get("seed", 0)),
                      _shipped(suite, entry.get("checkpoint")))
        except (KeyError, TypeError, ValueError) as exc:
            raise FeatbenchError(f"suite {suite.name}: invert.image_scores entry {entry!r} is malformed ({exc}); "
                                 "each needs backbone, layer, inverter, checkpoint_sha256, n_images") from exc
        if len(pin.checkpoint_sha256) != 64 or any(c not in "0123456789abcdef" for c in pin.checkpoint_sha256):
            raise FeatbenchError(f"suite {suite.name}: image_scores pin of {pin.backbone}/{pin.layer}: "
                                 "checkpoint_sha256 must be 64 hex digits")
        if pin.layer not in suite.backbones.get(pin.backbone, []):
            raise FeatbenchError(f"suite {suite.name}: image_scores pins {pin.backbone}/{pin.layer}, "
                                 "which is not one of its layers")
        if pin.n_images < 1:
            raise FeatbenchError(f"suite {suite.name}: image_scores n_images must be at least 1")
        out[(pin.backbone, pin.layer)] = pin
    return out


def _shipped(suite, folder: str | None) -> Path | None:
    """A pin's ``checkpoint:`` folder: relative to the suite file (absolute as given)."""
    if folder is None:
        return None
    path = Path(str(folder)).expanduser()
    if not path.is_absolute():
        if suite.path is None:
            raise FeatbenchError(f"suite {suite.name} ships checkpoint {folder} relative to its file, and has no file")
        path = Path(suite.path).resolve().parent / path
    return path


def train_command(suite, backbone: str, layer: str, preset: str, seed: int = 0) -> str:
    cmd = f"featbench train-inverter --suite {suite.cli_name} --backbone {backbone} --layer {layer} --preset {preset}"
    return cmd + (f" --seed {seed}" if seed else "")


def pinned_dir(suite, pin: Pin) -> Path:
    """The cache folder that holds `pin`'s checkpoint (named by the preset's ``name``)."""
    return checkpoint_dir(suite.name, pin.backbone, pin.layer, resolve_inverter(pin.inverter)().name)


def export_pinned(suite, backbone: str, layer: str, preset: str, out: str | Path | None = None, *, seed: int = 0,
                  dtype: torch.dtype | None = torch.float16) -> dict:
    """Export the trained `preset` checkpoint of (suite, backbone, layer) to ship with the suite
    (`featbench.interfaces.checkpoints.export_checkpoint`: weights only, in `dtype`) into `out`,
    by default ``checkpoints/<suite>/<backbone>/<layer>/<preset>`` beside the suite file. Returns
    its ``invert.image_scores`` entry (``checkpoint`` relative to the suite file; ``n_images``: the
    suite's pin of the layer, if any, else all its test images)."""
    if suite.path is None:
        raise FeatbenchError(f"suite {suite.name} has no file to ship a checkpoint beside")
    base = Path(suite.path).resolve().parent
    name = resolve_inverter(preset)().name
    out = Path(out) if out is not None else base / "checkpoints" / suite.name / backbone / layer / name
    sha = export_checkpoint(checkpoint_dir(suite.name, backbone, layer, name), out, dtype=dtype)
    pinned = pins(suite).get((backbone, layer))
    entry = {"backbone": backbone, "layer": layer, "inverter": preset, "checkpoint_sha256": sha,
             "n_images": pinned.n_images if pinned else suite.n_test,
             "checkpoint": os.path.relpath(out.resolve(), base)}
    return entry | ({"seed": seed} if seed else {})


def load_inverter(suite, backbone: str, layer: str, preset: str, checkpoint_sha256: str | None = None,
                  seed: int = 0, shipped: Path | None = None):
    """(inverter, resolution, checkpoint sha256): `preset` loaded from its trained checkpoint of
    (suite, backbone, layer), never trained further. With `checkpoint_sha256`, the checkpoint must
    be that one; `shipped` (a folder the suite ships it in) is installed into the cache first. A
    missing or different checkpoint raises `MissingCheckpointError` naming the command that
    trains one; a damaged or tampered one (shipped or cached), `CheckpointError`."""
    cmd = train_command(suite, backbone, layer, preset, seed)
    inverter = resolve_inverter(preset)()
    if not hasattr(inverter, "train"):
        raise FeatbenchError(f"inverter {preset!r} has no train() and no checkpoints; image-level scores need "
                             "a trained preset (decoder, featinv-tiny, featinv-sd)")
    directory = checkpoint_dir(suite.name, backbone, layer, inverter.name)
    if shipped is not None and checkpoint_sha256 is not None:
        try:
            install_checkpoint(shipped, directory, checkpoint_sha256)
        except CheckpointError as exc:
            raise CheckpointError(f"suite {suite.name} ships its {preset} checkpoint of {backbone}/{layer} in "
                                  f"{shipped}, and it cannot be used: {exc}") from exc
    try:
        record = read_record(directory)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; train it again with `{cmd} --restart`") from exc
    retrain = (f"`{cmd}` trains a new one, but a retraining does not reproduce the pinned file (its sha256 will "
               "differ), so it gives image-level scores only to a suite that pins its sha256")
    if record is None and checkpoint_sha256 is not None:
        raise MissingCheckpointError(
            f"suite {suite.name} pins the {preset} checkpoint {checkpoint_sha256} for the image-level scores of "
            f"{backbone}/{layer}, ships none, and {directory} has none; {retrain}")
    if record is None:
        raise MissingCheckpointError(f"{directory} has no {preset} checkpoint: train one with `{cmd}`")
    latest = record["latest"]
    if checkpoint_sha256 is not None and latest["sha256"] != checkpoint_sha256:
        raise MissingCheckpointError(
            f"the {preset} checkpoint in {directory} (step {latest['step']}, sha256 {latest['sha256'][:12]}…) is not "
            f"the one suite {suite.name} pins for {backbone}/{layer} ({checkpoint_sha256}), and the suite ships "
            f"none; {retrain}")
    task = suite.get_task(f"invert/{backbone}/{layer}")
    data = load_task(suite, task)
    info = invert_info(suite, task, data, RunConfig(seed=seed, time_budget_s=None))
    trained_on = _trained_on(record)
    if trained_on and trained_on != info.data_sha256:
        raise MissingCheckpointError(
            f"the {preset} checkpoint of {backbone}/{layer} in {directory} was trained on data hashing to "
            f"{trained_on[:12]}…, and {task.id}'s data built here hash to {info.data_sha256[:12]}…: these features "
            "are not the ones the suite's maintainers built (a backbone's extracted features can differ in their "
            "last bits between machines); install the suite's published data (`featbench publish` writes it, "
            "README, Leaderboard) for its image-level scores")
    resolution = int(getattr(inverter, "resolution", None) or info.image_size)
    train = invert_data(suite, data, info, resolution, "train")
    try:
        with torch.random.fork_rng():
            report = inverter.train(train, directory=directory, max_steps=int(latest["step"]), progress=False)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} (suite {suite.name}'s image-level scores of {backbone}/{layer}; "
                              f"train it with `{cmd}`)") from exc
    if report.step != report.start_step or (checkpoint_sha256 is not None and report.weights_sha256 != checkpoint_sha256):
        raise CheckpointError(f"the {preset} checkpoint in {directory} changed while it was loaded; run again")
    return inverter, resolution, report.weights_sha256


def subset(n_rows: int, n_images: int, suite_seed: int) -> list[int]:
    """The fixed test rows scored in image space: `n_images` of `n_rows`, drawn from the suite seed
    (the first n of one seeded permutation, so a smaller subset lies inside a larger one)."""
    order = np.random.default_rng(seed_for(suite_seed, "image_scores")).permutation(n_rows)
    return sorted(int(i) for i in order[:n_images])


def _cache_path(kind: str, key: str, suffix: str = "safetensors") -> Path:
    return cache_dir() / "image_scores" / kind / f"{key[:40]}.{suffix}"


def _rows_of(ds, rows: list[int]) -> list[tuple[str, int]]:
    ids, views = ds["image_id"], ds["view"]
    return [(ids[r], int(views[r])) for r in rows]


# --- the scorer --------------------------------------------------------------------------------


class ImageScorer:
    """Image-level scores of one map task's predictions (see the module docstring)."""

    def __init__(self, suite, task, data, pin: Pin, tails, cfg, inverter=None):
        self.task, self.pin, self.cfg = task, pin, cfg
        loaded = tails.inverters if hasattr(tails, "inverters") else {}
        if pin not in loaded:
            loaded[pin] = inverter or load_inverter(suite, pin.backbone, pin.layer, pin.inverter,
                                                    pin.checkpoint_sha256, pin.seed, pin.shipped)
        self.inverter, self.resolution, self.checkpoint_sha256 = loaded[pin]
        test = data.test
        self.rows = subset(len(test), pin.n_images, suite.seed)
        self.row_ids = _rows_of(test, self.rows)
        self.manipulated = manipulated_images(suite, task, tails.backbone(task.backbone), self.row_ids, self.resolution)
        self._original_args = (suite, task.backbone, test)
        # Where the manipulation changed each image, at R and 8 bits (None: no changed-region scores).
        self.changed = (self.manipulated != self.originals()).any(1) if suite.scores_changed_region(task) else None
        self.manipulated_key = sha256_tensors({"manipulated": self.manipulated}
                                              | ({"changed": self.changed} if self.changed is not None else {}))
        y, y_prefix = column_tensor(test, "y"), column_tensor(test, "y_prefix")
        self.target_key = sha256_json({"version": IMAGE_CACHE_VERSION, "y": data.record["y"]["key"], "rows": self.rows,
                                       "checkpoint": self.checkpoint_sha256, "inverter": pin.inverter,
                                       "resolution": self.resolution})
        self.inverted_target = cached_tensor(_cache_path("inverted_target", self.target_key), self.target_key,
                                              lambda: self.invert_rows(y, y_prefix))

    def record(self, record: TaskRecord) -> None:
        """Put the subset and the checkpoint these scores are made with into `record`'s provenance."""
        values = (len(self.rows), self.resolution, self.pin.inverter, self.checkpoint_sha256)
        record.provenance |= {key: str(value) for key, value in zip(IMAGE_SCORES_KEYS, values)}
        record.notes.append(f"image-level scores on {len(self.rows)} test images at {self.resolution} px, inverter "
                            f"{self.pin.inverter} (checkpoint sha256 {self.checkpoint_sha256[:12]}…)")

    def invert_rows(self, maps: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
        """invert() of the subset's rows of `maps` (all test rows), as uint8 images N×3×R×R."""
        index = torch.tensor(self.rows)
        reset = getattr(self.inverter, "reset_sampler", None)  # seeded samplers: the same noise every time
        if reset is not None:
            reset()
        out = invert_all(self.inverter, maps[index], None if prefix is None else prefix[index], self.resolution)
        return unit_to_uint8(out)

    def originals(self) -> torch.Tensor:
        """The subset's true (unmanipulated) test views at R, uint8, as the invert track's targets."""
        suite, backbone, test = self._original_args
        images = aligned_targets(suite, backbone, "test", [self.resolution], list(test["image_id"]),
                                 [int(v) for v in test["view"]])[self.resolution]
        return images[torch.tensor(self.rows)]

    def score(self, pred: torch.Tensor, prefix: torch.Tensor | None) -> dict[str, dict]:
        """The image-level scores (`metrics_of`) of a prediction of all test rows, with bootstrap intervals."""
        index = torch.tensor(self.rows)
        tensors = {"pred": pred[index]} | ({"prefix": prefix[index]} if prefix is not None else {})
        key = sha256_json([sha256_tensors(tensors), self.target_key, self.manipulated_key, self.task.id,
                           self.cfg.seed, self.cfg.n_boot, IMAGE_CACHE_VERSION])

        def make() -> dict[str, dict]:
            recon = self.invert_rows(pred, prefix)
            components = {
                "lpips_vs_manipulated": metrics.lpips(recon, self.manipulated, net="alex").numpy(),
                "lpips_vs_inverted_target": metrics.lpips(recon, self.inverted_target, net="alex").numpy(),
                "ssim_vs_manipulated": metrics.ssim(recon, self.manipulated).numpy(),
                "ssim_vs_inverted_target": metrics.ssim(recon, self.inverted_target).numpy(),
            }
            stats = {name: (lambda c, n=name: float(np.mean(c[n]))) for name in METRICS}
            if self.changed is not None:
                components |= self._changed_components(recon)
                stats |= {name: (lambda c, n=name: metrics.mean_where_changed(c, n + ".")) for name in CHANGED_METRICS}
            seed = seed_for(self.cfg.seed, self.task.id, "bootstrap")
            return {k: v.to_dict() for k, v in metrics.score(components, stats, n_boot=self.cfg.n_boot, seed=seed).items()}

        return cached_json(_cache_path("scores", key, "json"), make)

    def _changed_components(self, recon: torch.Tensor) -> dict[str, np.ndarray]:
        """`metrics.region_components` of each per-pixel comparison over the changed pixels, keyed
        ``<score>_changed.sum`` / ``.n``."""
        out = {}
        for versus, reference in (("manipulated", self.manipulated), ("inverted_target", self.inverted_target)):
            maps = {"lpips": (metrics.lpips(recon, reference, net="alex", spatial=True), 0),
                    "ssim": (metrics.ssim(recon, reference, spatial=True), metrics.SSIM_BORDER)}
            for kind, (per_pixel, border) in maps.items():
                parts = metrics.region_components(per_pixel, self.changed, border)
                out |= {f"{kind}_vs_{versus}_changed.{part}": values for part, values in parts.items()}
        return out


def available(suite, pin: Pin) -> bool:
    """Whether `pin`'s checkpoint is at hand (shipped with the suite, or in the cache) and was
    trained on the data built here."""
    try:
        record = read_record(pin.shipped if pin.shipped is not None else pinned_dir(suite, pin))
    except CheckpointError:
        return True  # a damaged record: scoring again says so
    if record is None or (pin.shipped is None and record["latest"]["sha256"] != pin.checkpoint_sha256):
        return False  # (a shipped one is checked against its pin when it is installed)
    trained_on = _trained_on(record)
    return not trained_on or trained_on == load_task(suite, f"invert/{pin.backbone}/{pin.layer}").content_sha256


def record_is_current(suite, task, record: TaskRecord) -> bool:
    """Whether a map task's stored record has the image-level scores that `suite` asks for: none
    where it pins no inverter for the task's layer, those of the pinned checkpoint and subset where
    it does, or none with the `UNAVAILABLE` reason while that checkpoint is still not at hand. A
    resumed run rescores the tasks whose records are not (pinning a layer after results were made
    rescores that layer's tasks and keeps the others)."""
    pin = pins(suite).get((task.backbone, task.layer))
    scored = set(METRICS + CHANGED_METRICS) & set(record.metrics)
    if pin is None or task.manipulation is None:
        return not scored
    if UNAVAILABLE in record.provenance:
        return not scored and not available(suite, pin)
    n_images, _, inverter, sha256 = (record.provenance.get(key) for key in IMAGE_SCORES_KEYS)
    # A record written before schema 1.2 names the checkpoint by the first 12 digits of its sha256.
    return (scored == set(metrics_of(suite, task)) and n_images == str(pin.n_images) and inverter == pin.inverter
            and sha256 is not None and len(sha256) >= 12 and pin.checkpoint_sha256.startswith(sha256))


def for_task(suite, task, data, tails, cfg, record: TaskRecord) -> ImageScorer | None:
    """The image scorer of a map task whose (backbone, layer) the suite pins, its provenance put
    into `record`; None where the suite pins none. Where the pinned checkpoint is not at hand, None
    as well, with the `UNAVAILABLE` reason in `record` and a warning (once per pin), or, with
    ``cfg.require_image_scores``, `MissingCheckpointError` naming the train-inverter command. A
    damaged or tampered checkpoint is always a `CheckpointError`."""
    pin = pins(suite).get((task.backbone, task.layer))
    if pin is None or task.manipulation is None:
        return None
    try:
        scorer = ImageScorer(suite, task, data, pin, tails, cfg)
    except MissingCheckpointError as exc:
        if cfg.require_image_scores:
            raise
        record.record(UNAVAILABLE, f"{exc}. This task is scored at map level only")
        warnings.warn(f"featbench: {UNAVAILABLE} for {pin.backbone}/{pin.layer}: {exc}. Its tasks are scored at "
                      "map level only (`featbench run --require-image-scores` makes this an error)", stacklevel=2)
        return None
    scorer.record(record)
    return scorer
