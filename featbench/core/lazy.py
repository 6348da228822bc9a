"""Lazy package attributes: a stage's public names, imported from their modules on first use.

A stage's ``__init__`` names what it exports and where each name lives; importing one module of
the stage (an isolated scoring child's entry, say) then no longer imports the whole stage and
every stage below it. ``featbench.X.name`` and ``from featbench.X import name`` work as before.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]) -> tuple[Callable[[str], Any], Callable[[], list]]:
    """The module ``__getattr__`` and ``__dir__`` of `package`: each of the names `exports` gives
    per module ({module: names}) is imported from that module on first access, and kept."""
    home = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = home.get(name)
        if module is None:  # for a submodule, the import system then imports it
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list:
        return sorted(set(vars(sys.modules[package])) | set(home))

    return __getattr__, __dir__


__all__ = ["lazy_exports"]
