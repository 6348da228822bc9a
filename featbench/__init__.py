"""featbench: a benchmark for the feature space of image classifiers.

Public interface::

    import featbench as fb
    bb = fb.load_backbone("efficientnet_lite0")
    feats = bb.features(bb.preprocess(images), layers=["blocks.4"])
    suite = fb.load_suite("featbench-v1")
    data = fb.load_task(suite, "map/efficientnet_lite0/blocks.4/rot90")
    result = fb.evaluate("linear", "mini")          # score a model, as `featbench run` does

The stages behind it are subpackages (README, "How it fits together"): ``core``, ``zoo``,
``data``, ``interfaces``, ``scoring``, ``board``, ``viz``.
"""

__version__ = "0.1.0"

from featbench.core.lazy import lazy_exports

# Each name is imported from its module when first used (featbench.core.lazy).
_EXPORTS = {
    "featbench.core.errors": ("AssetError", "DataError", "FeatbenchError", "UnknownNameError"),
    "featbench.core.results": ("read_result", "validate_result"),
    "featbench.data.manipulations": ("Manipulation", "get_manipulation", "list_manipulations", "register_manipulation"),
    "featbench.data.storage": ("TaskData", "build_suite", "load_task"),
    "featbench.data.suites": ("Suite", "Task", "list_suites", "load_suite"),
    "featbench.interfaces.inverter": ("InvertData", "InvertInfo", "Inverter"),
    "featbench.interfaces.mapper": ("MapData", "Mapper", "TaskInfo"),
    "featbench.scoring.run": ("evaluate",),
    "featbench.zoo.backbones": ("Backbone", "list_backbones", "load_backbone"),
}

__all__ = [
    "AssetError", "Backbone", "DataError", "FeatbenchError", "InvertData", "InvertInfo", "Inverter",
    "Manipulation", "MapData", "Mapper", "Suite", "Task", "TaskData", "TaskInfo", "UnknownNameError",
    "build_suite", "evaluate", "get_manipulation", "list_backbones", "list_manipulations", "list_suites",
    "load_backbone", "load_suite", "load_task", "read_result", "register_manipulation", "validate_result",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
