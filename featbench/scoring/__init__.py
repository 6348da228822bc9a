"""Stage 4, scoring: the shared run loop (`runner`), the metrics (`metrics`), the map track
(`map_track`), the invert track (`invert_track`), image-level scores through a suite's pinned
inverter (`image_scores`), the run summaries (`summaries`), `evaluate` (`run`) and where the fits
run: here or fanned out over a Ray cluster (`executors`)."""

from featbench.scoring.executors import LocalExecutor, RayExecutor, make_executor
from featbench.scoring.image_scores import ImageScorer, MissingCheckpointError, pins
from featbench.scoring.invert_track import run_invert_track, train_inverter
from featbench.scoring.map_track import evaluate_map_task, run_map_track
from featbench.scoring.run import evaluate
from featbench.scoring.runner import Models, RunConfig, run_tasks
from featbench.scoring.summaries import CATEGORY_ORDER, HEADLINE, LOWER_IS_BETTER, TRACKS

__all__ = [
    "CATEGORY_ORDER", "HEADLINE", "ImageScorer", "LOWER_IS_BETTER", "LocalExecutor", "MissingCheckpointError",
    "Models", "RayExecutor", "RunConfig", "TRACKS", "evaluate", "evaluate_map_task", "make_executor", "pins",
    "run_invert_track", "run_map_track", "run_tasks", "train_inverter",
]
