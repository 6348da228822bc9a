"""Stage 4, scoring: the shared run loop (`runner`), the metrics (`metrics`), the map track
(`map_track`), the invert track (`invert_track`), image-level scores through a suite's pinned
inverter (`image_scores`), the run summaries (`summaries`), `evaluate` (`run`) and where the fits
run: here or fanned out over a Ray cluster (`executors`)."""

from featbench.core.lazy import lazy_exports

# Each name is imported from its module when first used (featbench.core.lazy).
_EXPORTS = {
    "featbench.scoring.executors": ("LocalExecutor", "RayExecutor", "make_executor"),
    "featbench.scoring.image_scores": ("ImageScorer", "MissingCheckpointError", "pins"),
    "featbench.scoring.invert_track": ("run_invert_track", "train_inverter"),
    "featbench.scoring.map_track": ("evaluate_map_task", "run_map_track"),
    "featbench.scoring.run": ("evaluate",),
    "featbench.scoring.runner": ("Models", "RunConfig", "run_tasks"),
    "featbench.scoring.summaries": ("CATEGORY_ORDER", "HEADLINE", "LOWER_IS_BETTER", "TRACKS"),
}

__all__ = [
    "CATEGORY_ORDER", "HEADLINE", "ImageScorer", "LOWER_IS_BETTER", "LocalExecutor", "MissingCheckpointError",
    "Models", "RayExecutor", "RunConfig", "TRACKS", "evaluate", "evaluate_map_task", "make_executor", "pins",
    "run_invert_track", "run_map_track", "run_tasks", "train_inverter",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
