"""Stage 6, pictures: `featbench show`'s PNG grids of what models predict, through a suite's pinned inverter."""

from featbench.viz.show import models_by_name, models_from_results, show

__all__ = ["models_by_name", "models_from_results", "show"]
