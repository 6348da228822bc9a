"""Named things and how they are found: one registry type (backbones, manipulations, assets) and
one resolver for submissions (an entry-point name, ``module.path:Class`` or ``path/to/file.py:Class``).

Mappers are registered under the ``featbench.mappers`` entry-point group, inverters under
``featbench.inverters``; the reference baselines are entry points of featbench itself, found
exactly as a third-party package's would be.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

from featbench.core.errors import FeatbenchError, UnknownNameError

MAPPERS = "featbench.mappers"
INVERTERS = "featbench.inverters"
# The module name of a model loaded from a file (by `load_object`): not importable elsewhere, so
# the Ray executor sends such modules by value.

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """Name → item, in registration order. ``add`` refuses a name twice; ``lookup`` names the
    known ones when asked for another. Being a dict, ``get``, ``in`` and iteration work as usual."""

    def __init__(self, kind: str, error: type[FeatbenchError] = FeatbenchError):
        super().__init__()
        self.kind, self.error = kind, error

    def add(self, name: str, item: T) -> T:
        if name in self:
            raise self.error(f"{self.kind} {name!r} is already registered")
        self[name] = item
        return item

    def lookup(self, name: str) -> T:
        try:
            return self[name]
        except KeyError:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self))}") from None

    def copy(self) -> "Registry[T]":
        """A registry of the same kind with the same entries (tests register into a copy)."""
        out = Registry(self.kind, self.error)
        out.update(self)
        return out


USER_MODULE_PREFIX = "featbench_user_"  # modules loaded from a file path (`load_module_file`)


def load_module_file(path: str | Path) -> Any:
    """The module of a Python file, registered as ``featbench_user_<hash of its path>``: the same
    name in every process, so that objects of its classes pickle by reference (an isolated
    scoring child loads the same files first)."""
    path = Path(path)
    name = USER_MODULE_PREFIX + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling need the module registered
    spec.loader.exec_module(module)
    return module


def load_object(module_path: str, attr: str) -> Any:
    """``attr`` of a module given by dotted path, or of a Python file given by its path."""
    if module_path.endswith(".py") or "/" in module_path:
        path = Path(module_path)
        if not path.is_file():
            raise UnknownNameError(f"no such file {path} (from model spec {module_path}:{attr})")
        module = load_module_file(path)
    else:
        module = importlib.import_module(module_path)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UnknownNameError(f"{module_path} has no attribute {attr!r}") from None


def registered_models(group: str = MAPPERS) -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=group)}


def resolve_model(spec: str, group: str = MAPPERS) -> Callable[[], Any]:
    """A factory for the model named by `spec`: an entry-point name, ``module:Class`` or ``file.py:Class``."""
    models = registered_models(group)
    if spec in models:
        return models[spec].load()
    if ":" not in spec:
        raise UnknownNameError(f"unknown model {spec!r}; registered: {', '.join(sorted(models))}; "
                               "or give module.path:Class or path/to/file.py:Class")
    module_path, attr = spec.rsplit(":", 1)
    return load_object(module_path, attr)


def source_sha256(obj: Any) -> str:
    """Hash of the source file that defines a model's class (its identity in results)."""
    cls = obj if inspect.isclass(obj) else type(obj)
    try:
        source = inspect.getsource(sys.modules[cls.__module__])
    except (OSError, TypeError, KeyError) as exc:
        raise FeatbenchError(f"cannot read the source of {cls.__qualname__}: {exc}") from exc
    return hashlib.sha256(source.encode()).hexdigest()
