"""Stage 6, pictures: `featbench show`'s PNG grids of what models predict, through a suite's pinned inverter."""

from featbench.core.lazy import lazy_exports

# Each name is imported from its module when first used (featbench.core.lazy).
_EXPORTS = {
    "featbench.viz.show": ("models_by_name", "models_from_results", "show"),
}

__all__ = ["models_by_name", "models_from_results", "show"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
