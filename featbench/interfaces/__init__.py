"""Stage 3, what a submission is written against: `Mapper` and the `MapData` / `TaskInfo` it is
fitted on (`mapper`), `Inverter` and `InvertData` / `InvertInfo` (`inverter`), the batches and
split by image that both data types share (`pairs`), and resumable,
hash-checked training checkpoints for inverters trained ahead of a run (`checkpoints`)."""

from featbench.core.lazy import lazy_exports

# Each name is imported from its module when first used (featbench.core.lazy).
_EXPORTS = {
    "featbench.data.targets": ("network_input", "resize_images"),
    "featbench.interfaces.checkpoints": ("CheckpointError", "TrainingReport", "load_checkpoint", "run_training",
                                         "save_checkpoint", "step_generator"),
    "featbench.interfaces.inverter": ("CheckpointedInverter", "InvertData", "Inverter", "InvertInfo",
                                      "checkpoint_dir", "resolve_inverter"),
    "featbench.interfaces.mapper": ("MapData", "Mapper", "TaskInfo", "with_prefix"),
}

__all__ = [
    "CheckpointError", "CheckpointedInverter", "InvertData", "InvertInfo", "Inverter", "MapData", "Mapper",
    "TaskInfo", "TrainingReport", "checkpoint_dir", "load_checkpoint", "network_input", "resize_images",
    "resolve_inverter", "run_training", "save_checkpoint", "step_generator", "with_prefix",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
