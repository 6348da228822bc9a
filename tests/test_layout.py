"""The package's layout: each stage a subpackage that imports only from the stages below it, no
import cycles, no module that uses another's underscored names (README, "How it fits together")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "featbench"
# Lowest first: a module may import from its own stage and the stages before it.
STAGES = ("core", "zoo", "data", "interfaces", "scoring", "board", "viz")
TOP = ("featbench", "featbench.cli")  # the public interface and the command line sit above all stages


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), filename=str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The featbench module that `name` (a dotted import target) is or lies in."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(tree: ast.Module) -> list[tuple[str, str | None, int]]:
    """(module imported, name taken from it or None, line) for every import, local ones included."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name.startswith("featbench")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("featbench") and not node.level:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.append((sub, None, node.lineno) if sub in MODULES else (node.module, a.name, node.lineno))
    return out


def _edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, tree in MODULES.items():
        for target, _, _ in _imports(tree):
            dep = _resolve(target)
            if dep and dep != mod and dep != "featbench":
                graph[mod].add(dep)
    return graph


def _stage(module: str) -> int:
    if module in TOP:
        return len(STAGES)
    return STAGES.index(module.split(".")[1])


def test_every_module_belongs_to_a_stage():
    stray = [m for m in MODULES if m not in TOP and (m.count(".") < 1 or m.split(".")[1] not in STAGES)]
    assert not stray, f"modules outside the stage subpackages: {stray}"


def test_no_import_cycles():
    graph, state, cycles = _edges(), {}, []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(path[path.index(dep):] + [dep] if dep in path else [node, dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = "done"

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])
    assert not cycles, "import cycles: " + "; ".join(" → ".join(c) for c in cycles)


def test_stages_import_only_from_below():
    upward = [f"{mod} imports {dep}" for mod, deps in _edges().items() for dep in deps
              if mod not in TOP and _stage(dep) > _stage(mod)]
    assert not upward, "imports that climb to a later stage: " + "; ".join(sorted(upward))


def test_no_private_names_across_modules():
    borrowed = []
    for mod, tree in MODULES.items():
        for target, name, line in _imports(tree):
            if name and name.startswith("_") and not name.startswith("__") and _resolve(target) != mod:
                borrowed.append(f"{mod}:{line} takes {name} from {target}")
        aliases = {a.asname or a.name.split(".")[-1]: a.name for node in ast.walk(tree)
                   if isinstance(node, (ast.Import, ast.ImportFrom)) for a in node.names
                   if _resolve(f"{getattr(node, 'module', None) or ''}.{a.name}".lstrip(".")) not in (None, mod)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases \
                    and node.attr.startswith("_") and not node.attr.startswith("__"):
                borrowed.append(f"{mod}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not borrowed, "private names used across modules: " + "; ".join(borrowed)


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_states_its_public_names(stage):
    """A stage's ``__init__`` documents it and lists, in ``__all__``, what the next stages use."""
    tree = MODULES[f"featbench.{stage}"]
    assert ast.get_docstring(tree), f"featbench.{stage} has no docstring"
    assert any(isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in n.targets)
               for n in tree.body), f"featbench.{stage} has no __all__"


def test_every_import_of_featbench_names_resolves():
    """Function-local imports included, which importing the modules alone would not run."""
    import importlib

    missing = []
    for mod, tree in MODULES.items():
        for target, name, line in _imports(tree):
            module = importlib.import_module(target if name is None or _resolve(target) == target else target)
            if name is not None and not hasattr(module, name) and f"{target}.{name}" not in MODULES:
                missing.append(f"{mod}:{line} imports {name} from {target}")
    assert not missing, "; ".join(missing)
