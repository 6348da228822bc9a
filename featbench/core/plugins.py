"""Named things and how they are found: one registry type (backbones, manipulations, assets) and
one resolver for submissions (an entry-point name, ``module.path:Class`` or ``path/to/file.py:Class``).

Mappers are registered under the ``featbench.mappers`` entry-point group, inverters under
``featbench.inverters``; the reference baselines are entry points of featbench itself, found
exactly as a third-party package's would be.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Generic, TypeVar

from featbench.core.errors import FeatbenchError, UnknownNameError

MAPPERS = "featbench.mappers"
INVERTERS = "featbench.inverters"

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
    """A model's identity in results: the hash of the source that defines its class.

    That is the class's module and the modules of its own code that it imports, directly or through
    one another (`local_modules`): a change to a helper module changes the model's identity as a
    change to its own module does. A module that imports none of its own code hashes as its source
    alone (sha256 of the text); several hash as the sorted list of ``name sha256`` lines."""
    cls = obj if inspect.isclass(obj) else type(obj)
    try:
        sources = {m.__name__: inspect.getsource(m) for m in local_modules(sys.modules[cls.__module__])}
    except (OSError, TypeError, KeyError) as exc:
        raise FeatbenchError(f"cannot read the source of {cls.__qualname__}: {exc}") from exc
    digests = {name: hashlib.sha256(src.encode()).hexdigest() for name, src in sources.items()}
    if len(digests) == 1:
        return next(iter(digests.values()))
    return hashlib.sha256("".join(f"{n} {d}\n" for n, d in sorted(digests.items())).encode()).hexdigest()


def local_modules(root: ModuleType) -> list[ModuleType]:
    """`root` and the modules of its own code it imports, transitively, read from the import
    statements of their sources: those of the same top-level package (``baselines.neural`` →
    ``baselines.linear``) or, for a module loaded from a file, those in that file's folder. featbench
    itself is the harness (its version is recorded apart), not part of a model."""
    top = root.__name__.split(".")[0]
    folder = Path(root.__file__).resolve().parent if root.__name__.startswith(USER_MODULE_PREFIX) else None

    def local(module: ModuleType) -> bool:
        if module.__name__.split(".")[0] == "featbench" and top != "featbench":
            return False
        if module.__name__.split(".")[0] == top:
            return True
        file = getattr(module, "__file__", None)
        return folder is not None and file is not None and Path(file).resolve().parent == folder

    found, todo = {root.__name__: root}, [root]
    while todo:
        module = todo.pop()
        for name in _imported_names(module):
            dep = sys.modules.get(name)
            if isinstance(dep, ModuleType) and name not in found and local(dep):
                found[name] = dep
                todo.append(dep)
    return [found[n] for n in sorted(found)]


def _imported_names(module: ModuleType) -> list[str]:
    """The module names an import statement of `module` names: ``import a.b`` → a.b;
    ``from a import b`` → a.b where that is a module, else a; relative imports resolved."""
    names = []
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = (module.__package__ or "").split(".")
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            names += [f"{base}.{a.name}" if f"{base}.{a.name}" in sys.modules else base for a in node.names]
    return names
