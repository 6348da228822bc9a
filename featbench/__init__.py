"""featbench: a benchmark for the feature space of image classifiers.

Public interface::

    import featbench as fb
    bb = fb.load_backbone("efficientnet_lite0")
    feats = bb.features(bb.preprocess(images), layers=["blocks.4"])
    suite = fb.load_suite("featbench-v1")
    data = fb.load_task(suite, "map/efficientnet_lite0/blocks.4/rot90")
"""

__version__ = "0.1.0"

from featbench.backbones import Backbone, list_backbones, load_backbone
from featbench.errors import AssetError, DataError, FeatbenchError, UnknownNameError
from featbench.inverters import InvertData, InvertInfo, Inverter
from featbench.mappers import MapData, Mapper, TaskInfo
from featbench.manipulations import Manipulation, get_manipulation, list_manipulations, register_manipulation
from featbench.storage import TaskData, build_suite, load_task
from featbench.suites import Suite, Task, list_suites, load_suite

__all__ = [
    "AssetError", "Backbone", "DataError", "FeatbenchError", "InvertData", "InvertInfo", "Inverter",
    "Manipulation", "MapData", "Mapper", "Suite",
    "Task", "TaskData", "TaskInfo",
    "UnknownNameError", "build_suite", "get_manipulation", "list_backbones", "list_manipulations",
    "list_suites", "load_backbone", "load_suite", "load_task", "register_manipulation",
]
