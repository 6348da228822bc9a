"""Stage 2, the pinned data: image sources and splits (`images`), manipulations (`manipulations`),
given edit pairs (`edit_pairs`) and the generative edits that make them (`editing`), suite
definitions (`suites`), the object-level semantic edits (`semantic`), the cached task datasets
(`storage`), and the true and manipulated target images (`targets`)."""

from featbench.core.lazy import lazy_exports

# Each name is imported from its module when first used (featbench.core.lazy).
_EXPORTS = {
    "featbench.data.images": ("ImageRecord", "ImageSource", "folder_source", "seed_for", "split_by_name"),
    "featbench.data.manipulations": ("CATEGORIES", "Manipulation", "get_manipulation", "list_manipulations",
                                     "register_manipulation"),
    "featbench.data.storage": ("TaskData", "build_suite", "column_tensor", "is_built", "load_task", "variant_refs"),
    "featbench.data.suites": ("Suite", "Task", "list_suites", "load_suite"),
    "featbench.data.edit_pairs": ("EditPair", "EditPairs", "add_pair", "load_edit_pairs", "read_edit_pairs",
                                  "write_edit_pairs"),
    "featbench.data.targets": ("aligned_targets", "manipulated_images", "network_input", "resize_images",
                               "target_images"),
}

__all__ = [
    "CATEGORIES", "ImageRecord", "ImageSource", "Manipulation", "Suite", "Task", "TaskData", "aligned_targets",
    "build_suite", "column_tensor", "folder_source", "get_manipulation", "is_built", "list_manipulations",
    "list_suites", "load_suite", "load_task", "manipulated_images", "network_input", "register_manipulation",
    "resize_images", "seed_for", "split_by_name", "target_images", "variant_refs",
    "EditPair", "EditPairs", "add_pair", "load_edit_pairs", "read_edit_pairs", "write_edit_pairs",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
