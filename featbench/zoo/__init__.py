"""Stage 1, the models featbench reads features with (and edits images with): pinned weight assets
(`assets`, from PyPI or the hub), their conversions to timm / torchvision layouts (`conversions`),
the backbone registry with layers, preprocessing and tails (`backbones`), and the generative image
editors that make semantic edits (`editors`)."""

from featbench.core.lazy import lazy_exports

# Each name is imported from its module when first used (featbench.core.lazy).
_EXPORTS = {
    "featbench.zoo.assets": ("Asset", "get_asset", "load_asset", "register_asset"),
    "featbench.zoo.backbones": ("BACKBONES", "Backbone", "BackboneSpec", "Preprocessing", "WeightsSource",
                                "backbone_fingerprint", "list_backbones", "load_backbone", "register_backbone",
                                "use_weights_file", "weights_source"),
    "featbench.zoo.editors": ("EDITORS", "Editor", "EditorPreset", "load_editor", "register_editor"),
}

__all__ = [
    "Asset", "BACKBONES", "Backbone", "BackboneSpec", "Preprocessing", "backbone_fingerprint", "get_asset",
    "list_backbones", "load_asset", "load_backbone", "register_asset", "register_backbone", "WeightsSource",
    "use_weights_file", "weights_source", "EDITORS", "Editor", "EditorPreset", "load_editor", "register_editor",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
