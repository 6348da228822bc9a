"""``featbench show``: a PNG grid of what the map track's models predict, seen through an inverter.

One row per (task, test image), columns: the original test view, the manipulated one, the
inversion of the true target map invert(Y), and the inversion invert(P) of each model's prediction
(titled with its LPIPS to the manipulated image; an empty tile where the model does not take the
task, e.g. ``spatial`` on a non-geometric one, or its fit fails). Images are at the inverter's resolution R,
drawn with nearest-neighbour scaling into square tiles.

The inverter is the suite's pinned one for the task's (backbone, layer) (``invert.image_scores``,
`featbench.scoring.image_scores`), or, with ``preset``, that preset's trained checkpoint in the cache as
its record names it. The images are the first ``n`` rows of the seeded subset that the image-level
scores use (a smaller subset lies inside the scored one).

Models are re-fitted here, as `featbench run` fits them: from result files (``models_from``: each
map-track result of the suite names its class, ``model.metadata.class``; it is fitted with the
result's seed and the task's recorded time budget), or by name (``models``: with ``seed`` and the
suite's default budget). The mapper's source is checked against the result's ``source_sha256`` and
a tile says "source changed" when it differs. Closed-form and fixed mappers (identity, spatial,
linear, linear+spatial) are rebuilt exactly; a model whose training the time budget stopped may end
a little differently from the scored run (wall time decides its last epoch). The figure is
deterministic for deterministic models (fixed layout, no timestamps in the PNG).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from featbench.core.errors import FeatbenchError
from featbench.board.submit_check import model_spec_from_record
from featbench.core.plugins import resolve_model, source_sha256
from featbench.core.results import read_result
from featbench.data.storage import load_task
from featbench.interfaces.checkpoints import read_record
from featbench.interfaces.inverter import checkpoint_dir, resolve_inverter
from featbench.scoring import metrics
from featbench.scoring.image_scores import ImageScorer, MissingCheckpointError, Pin, pins, train_command
from featbench.scoring.map_track import map_data, task_info
from featbench.scoring.runner import Models, RunConfig
from featbench.scoring.submission import fit_and_predict

TILE_MIN = 128  # px: a tile is max(TILE_MIN, R) pixels square
LEFT = 190  # px for the row labels
TITLE = 30  # px above each tile for its title
GAP = 8  # px between tiles
DPI = 100
FIXED_COLUMNS = ("original", "manipulated", "inverted target")


@dataclasses.dataclass
class Model:
    label: str
    factory: Callable[[], Any]
    seed: int
    budgets: dict[str, float | None]  # task id -> time budget (from a result file)
    default_budget: float | None


def tile_size(resolution: int) -> int:
    return max(TILE_MIN, int(resolution))


def grid_pixels(n_rows: int, n_cols: int, resolution: int) -> tuple[int, int]:
    """(width, height) in pixels of a grid of n_rows × n_cols tiles."""
    t = tile_size(resolution)
    return LEFT + n_cols * (t + GAP), n_rows * (TITLE + t + GAP) + GAP


def tile_box(row: int, col: int, resolution: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) pixel box of a tile's image in the PNG."""
    t = tile_size(resolution)
    left = LEFT + col * (t + GAP)
    top = GAP + row * (TITLE + t + GAP) + TITLE
    return left, top, left + t, top + t


def models_from_results(folder: str | Path, suite) -> list[Model]:
    """The map-track models of the suite's result files in `folder`, to be re-fitted as they were run."""

    out = []
    for path in sorted(Path(folder).glob("*.json")):
        rec = read_result(path)
        if rec["track"] != "map" or rec["suite"]["name"] != suite.name:
            continue
        factory = resolve_model(model_spec_from_record(rec))
        label = rec["model"]["name"]
        if source_sha256(factory()) != rec["model"]["source_sha256"]:
            label += " (source changed)"
        out.append(Model(label, factory, int(rec["seed"]), {t["task_id"]: t["time_budget_s"] for t in rec["tasks"]},
                         suite.run_defaults.get("time_budget_s")))
    if not out:
        raise FeatbenchError(f"{folder}: no map-track result files of suite {suite.name}")
    return out


def models_by_name(specs: list[str], suite, seed: int = 0, time_budget_s: float | None = None) -> list[Model]:

    budget = time_budget_s if time_budget_s is not None else suite.run_defaults.get("time_budget_s")
    out = []
    for spec in specs:
        factory = resolve_model(spec)
        out.append(Model(str(getattr(factory(), "name", spec)), factory, seed, {}, budget))
    return out


def _predict(model: Model, suite, task, data) -> tuple[torch.Tensor, torch.Tensor | None]:

    cfg = RunConfig(seed=model.seed, time_budget_s=model.budgets.get(task.id, model.default_budget))
    info = task_info(suite, task, data, cfg)
    train, test = map_data(data.train, info), map_data(data.test, info)
    outputs = fit_and_predict(model.factory, train, test.x, test.x_prefix).outputs
    return outputs["pred"], outputs.get("pred_prefix", test.x_prefix)


def _scorer(suite, task, data, n: int, tails, preset: str | None):

    pin = pins(suite).get((task.backbone, task.layer))
    if preset is not None and (pin is None or pin.inverter != preset):
        directory = checkpoint_dir(suite.name, task.backbone, task.layer, resolve_inverter(preset)().name)
        record = read_record(directory)
        if record is None:
            raise MissingCheckpointError(f"{directory} has no {preset} checkpoint: train it with "
                                         f"`{train_command(suite, task.backbone, task.layer, preset)}`")
        pin = Pin(task.backbone, task.layer, preset, record["latest"]["sha256"], n)
    if pin is None:
        raise FeatbenchError(f"suite {suite.name} pins no inverter for {task.backbone}/{task.layer} "
                             "(invert.image_scores); pass --preset to use a trained one")
    return ImageScorer(suite, task, data, dataclasses.replace(pin, n_images=n), tails, RunConfig())


def show(suite, pattern: str, n_images: int, models: list[Model], out: str | Path, preset: str | None = None,
         progress: bool = True) -> Path:
    """Write the grid for the map tasks matching `pattern` and `n_images` images each; returns `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    tasks = suite.select(pattern, track="map")
    tails = Models()
    rows: list[tuple[str, list[tuple[str, torch.Tensor | None]]]] = []
    resolution = None
    for task in tasks:
        data = load_task(suite, task)
        scorer = _scorer(suite, task, data, n_images, tails, preset)
        if resolution not in (None, scorer.resolution):
            raise FeatbenchError("the chosen tasks' inverters work at different resolutions; choose fewer tasks")
        resolution = scorer.resolution
        recons: list[torch.Tensor | None] = []
        for model in models:
            categories = getattr(model.factory, "categories", None)
            if categories is not None and task.category not in categories:
                recons.append(None)  # e.g. spatial on a non-geometric task: an empty tile
                continue
            if progress:
                print(f"{task.id}: fitting {model.label}")
            try:
                pred, prefix = _predict(model, suite, task, data)
            except Exception as exc:  # a model that fails here gets an empty tile, as its task failed
                print(f"{task.id}: {model.label} failed: {type(exc).__name__}: {exc}")
                recons.append(None)
                continue
            recons.append(scorer.invert_rows(pred, prefix))
        originals = scorer.originals()
        for i, (image_id, view) in enumerate(scorer.row_ids):
            tiles = [("original", originals[i]), ("manipulated", scorer.manipulated[i]),
                     ("inverted target", scorer.inverted_target[i])]
            for model, recon in zip(models, recons):
                if recon is None:
                    tiles.append((f"{model.label}\nn/a", None))
                    continue
                d = float(metrics.lpips(recon[i:i + 1], scorer.manipulated[i:i + 1])[0])
                tiles.append((f"{model.label}\nLPIPS {d:.3f}", recon[i]))
            label = f"{task.backbone} {task.layer}\n{task.manipulation.name}\n{image_id}" + (f" (view {view})" if view else "")
            rows.append((label, tiles))
    n_cols = len(FIXED_COLUMNS) + len(models)
    width, height = grid_pixels(len(rows), n_cols, resolution)
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    for r, (label, tiles) in enumerate(rows):
        _, top, _, bottom = tile_box(r, 0, resolution)
        fig.text(6 / width, 1 - (top + bottom) / 2 / height, label, fontsize=7, va="center", ha="left")
        for c, (title, image) in enumerate(tiles):
            left, top, right, bottom = tile_box(r, c, resolution)
            if image is not None:
                ax = fig.add_axes((left / width, 1 - bottom / height, (right - left) / width, (bottom - top) / height))
                ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest", aspect="auto")
                ax.set_axis_off()
            fig.text((left + right) / 2 / width, 1 - (top - 2) / height, title, fontsize=7, ha="center", va="bottom")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return out


def tile_pixels(png: str | Path, row: int, col: int, resolution: int) -> np.ndarray:
    """A tile's pixels (H×W×3 uint8) read back from a grid PNG (for checks)."""
    from PIL import Image

    left, top, right, bottom = tile_box(row, col, resolution)
    return np.asarray(Image.open(png).convert("RGB"))[top:bottom, left:right]
