"""Stage 3, what a submission is written against: `Mapper` and the `MapData` / `TaskInfo` it is
fitted on (`mapper`), `Inverter` and `InvertData` / `InvertInfo` (`inverter`), the batches and
split by image that both data types share (`pairs`), and resumable,
hash-checked training checkpoints for inverters trained ahead of a run (`checkpoints`)."""

from featbench.data.targets import network_input, resize_images
from featbench.interfaces.checkpoints import (CheckpointError, TrainingReport, load_checkpoint, run_training,
                                              save_checkpoint, step_generator)
from featbench.interfaces.inverter import (CheckpointedInverter, InvertData, Inverter, InvertInfo, checkpoint_dir,
                                           resolve_inverter)
from featbench.interfaces.mapper import MapData, Mapper, TaskInfo, with_prefix

__all__ = [
    "CheckpointError", "CheckpointedInverter", "InvertData", "InvertInfo", "Inverter", "MapData", "Mapper",
    "TaskInfo", "TrainingReport", "checkpoint_dir", "load_checkpoint", "network_input", "resize_images",
    "resolve_inverter", "run_training", "save_checkpoint", "step_generator", "with_prefix",
]
