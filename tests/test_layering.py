"""The package layering, checked statically: imports point down the layers, and no module cycle exists.

Every ``.py`` file of the layered packages (outside their ``tests/`` folders) is parsed with ``ast``, nothing is
imported. Every import counts, wherever it is written: at module level, inside a function, under ``if
TYPE_CHECKING`` or ``if __name__ == "__main__"``. Relative imports are resolved to absolute module names, and
``from package import name`` counts as an import of the submodule ``package.name`` when that file exists.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

# ---------------------------------------------------------------------------------------------- the rules
# Package -> layer. A module may import from its own layer or from a lower one, never from a higher one.
#
#     arcface_bridge         the ``arcface-bridge`` command
#       ↓
#     train                  training: configs, data, Partial FC, the loop
#       ↓
#     eval                   verification packs' protocol, embedders, results
#       ↓
#     converters             conversion, parity, and the helpers every layer shares (errors, images, ...)
#       ↓
#     paddle_models  torch_reference     the models (torch_reference also backs the converters' checks)
#       ↓
#     architectures          the registry: names, family specs and state_dict layouts, framework-free
LAYERS = {
    "architectures": -1,
    "paddle_models": 0,
    "torch_reference": 0,
    "converters": 1,
    "eval": 2,
    "train": 3,
    "arcface_bridge": 4,  # the one installed command, dispatching to every layer's entry points
}

# Packages of the same layer that must not import each other: the two frameworks' models stay independent.
# The one exception is a framework-free module (one that imports neither framework, directly or through the
# project modules it imports), such as a registry of architecture names and hyper-parameters.
SEPARATE = {
    ("paddle_models", "torch_reference"),
    ("torch_reference", "paddle_models"),
}
FRAMEWORKS = ("paddle", "torch")

# Everything else in the repository (bench/, tests/, parity_tests/, conftest.py) may import anything, and no
# package may import it.
# ----------------------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, e.g. "converters.inputs"
    path: Path
    line: int
    target: str  # the imported module, e.g. "eval.binfile"
    statement: str  # the import as written


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_files() -> dict[str, Path]:
    """Module name -> file, for every module of the layered packages outside their tests/ folders."""
    files = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "tests" in path.relative_to(ROOT).parts:
                continue
            files[module_name(path)] = path
    return files


MODULES = package_files()
TOP_LEVEL = {p.name for p in ROOT.iterdir() if p.is_dir() and any(p.rglob("*.py"))} | {
    p.stem for p in ROOT.glob("*.py")}
TOP_LEVEL -= {"weights", "outputs"}


def _resolve_relative(source: str, is_package: bool, level: int, module: str | None) -> str:
    parts = source.split(".")
    base = parts if is_package else parts[:-1]
    if level - 1 > len(base) - 1:
        raise AssertionError(f"{source}: relative import beyond the top-level package")
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imports_of(source: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(source, path, node.lineno, alias.name, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom):
            names = ", ".join(a.name for a in node.names)
            written = f"from {'.' * node.level}{node.module or ''} import {names}"
            base = node.module or ""
            if node.level:
                base = _resolve_relative(source, is_package, node.level, node.module)
            for alias in node.names:
                submodule = f"{base}.{alias.name}" if base else alias.name
                target = submodule if submodule in MODULES else base
                found.append(Import(source, path, node.lineno, target, written))
    return found


ALL_IMPORTS = [imp for name, path in MODULES.items() for imp in imports_of(name, path)]


def project_target(target: str) -> str | None:
    """The project module ``target`` names (itself or its nearest existing parent), or None if external."""
    name = target
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def framework_free(module: str, seen: set[str] | None = None) -> bool:
    """True if ``module`` imports neither framework, directly or through the project modules it imports."""
    seen = set() if seen is None else seen
    if module in seen:
        return True
    seen.add(module)
    for imp in ALL_IMPORTS:
        if imp.source != module:
            continue
        if imp.target.split(".")[0] in FRAMEWORKS:
            return False
        dep = project_target(imp.target)
        if dep is not None and not framework_free(dep, seen):
            return False
    return True


def where(imp: Import) -> str:
    return f"{imp.path.relative_to(ROOT)}:{imp.line}: {imp.statement}"


def layering_violations() -> list[str]:
    problems = []
    for imp in ALL_IMPORTS:
        src_pkg = imp.source.split(".")[0]
        dst_pkg = imp.target.split(".")[0]
        if dst_pkg == src_pkg:
            continue
        if dst_pkg in LAYERS:
            if LAYERS[dst_pkg] > LAYERS[src_pkg]:
                problems.append(f"{where(imp)}  ({src_pkg}, layer {LAYERS[src_pkg]}, imports {dst_pkg}, "
                                f"layer {LAYERS[dst_pkg]})")
            elif (src_pkg, dst_pkg) in SEPARATE:
                dep = project_target(imp.target)
                if dep is None or dep == dst_pkg or not framework_free(dep):
                    problems.append(f"{where(imp)}  ({src_pkg} may import from {dst_pkg} only a framework-free "
                                    "module)")
        elif dst_pkg in TOP_LEVEL:
            problems.append(f"{where(imp)}  (a package imports {dst_pkg}/, which is not part of any layer)")
    return list(dict.fromkeys(problems))  # one line per statement, even when it imports several names


def module_graph() -> dict[str, dict[str, Import]]:
    """Module -> {imported project module: the first import of it}."""
    graph: dict[str, dict[str, Import]] = {name: {} for name in MODULES}
    for imp in ALL_IMPORTS:
        dep = project_target(imp.target)
        if dep is not None:
            graph[imp.source].setdefault(dep, imp)
    return graph


def strongly_connected(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def cycle_in(component: list[str], graph: dict[str, dict[str, Import]]) -> list[Import]:
    """One concrete cycle through the component, as the imports that close it."""
    members = set(component)
    start = component[0]
    # breadth-first from start back to start, staying inside the component
    previous: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for dep, imp in sorted(graph[node].items()):
                if dep not in members:
                    continue
                if dep == start:
                    chain = [imp]
                    while chain[0].source != start:
                        chain.insert(0, previous[chain[0].source])
                    return chain
                if dep not in previous:
                    previous[dep] = imp
                    following.append(dep)
        frontier = following
    raise AssertionError(f"no cycle found in {component}")


def import_cycles() -> list[str]:
    graph = module_graph()
    reports = []
    for component in strongly_connected(graph):
        if len(component) == 1 and component[0] not in graph[component[0]]:
            continue
        chain = cycle_in(component, graph)
        steps = "\n".join(f"    {where(imp)}" for imp in chain)
        reports.append(f"{' -> '.join([imp.source for imp in chain] + [chain[0].source])}\n{steps}")
    return reports


def test_the_packages_are_found():
    for package in LAYERS:
        assert package in MODULES, f"{package}/__init__.py is missing"
    assert len(ALL_IMPORTS) > 100


def test_imports_point_down_the_layers():
    problems = layering_violations()
    assert not problems, "imports against the layering (lowest first: " + ", ".join(
        f"{p} {n}" for p, n in LAYERS.items()) + "):\n" + "\n".join(problems)


def test_no_import_cycles():
    cycles = import_cycles()
    assert not cycles, "import cycles between project modules:\n" + "\n".join(cycles)


# --------------------------------------------------------------------------- the checker checks itself


@pytest.fixture
def fake_tree(tmp_path):
    """Point the checker at a small tree of files written by the test."""

    def build(files: dict[str, str]):
        for rel, text in files.items():
            path = tmp_path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        for package in LAYERS:
            init = tmp_path / package / "__init__.py"
            init.parent.mkdir(parents=True, exist_ok=True)
            if not init.exists():
                init.write_text("")
        module = globals()
        module["ROOT"] = tmp_path
        module["MODULES"] = package_files()
        module["TOP_LEVEL"] = {p.name for p in tmp_path.iterdir() if p.is_dir()}
        module["ALL_IMPORTS"] = [imp for n, p in module["MODULES"].items() for imp in imports_of(n, p)]

    saved = {k: globals()[k] for k in ("ROOT", "MODULES", "TOP_LEVEL", "ALL_IMPORTS")}
    yield build
    globals().update(saved)


def test_checker_finds_an_upward_import_inside_a_function(fake_tree):
    fake_tree({"converters/inputs.py": "def f():\n    from eval.binfile import read_bin\n",
               "eval/binfile.py": ""})
    (problem,) = layering_violations()
    assert problem.startswith("converters/inputs.py:2: from eval.binfile import read_bin")


def test_checker_resolves_relative_and_submodule_imports(fake_tree):
    fake_tree({"train/data/a.py": "from . import b\n", "train/data/b.py": "from ..data import a\n",
               "train/data/__init__.py": "", "train/config.py": "",
               "converters/c.py": "from train import config, data\n"})
    assert layering_violations() == ["converters/c.py:1: from train import config, data  (converters, layer 1, "
                                     "imports train, layer 3)"]
    assert {imp.target for imp in ALL_IMPORTS if imp.source == "converters.c"} == {"train.config", "train.data"}
    (cycle,) = import_cycles()
    assert cycle.startswith("train.data.a -> train.data.b -> train.data.a")


def test_checker_keeps_the_two_model_packages_apart(fake_tree):
    fake_tree({"paddle_models/m.py": "from torch_reference.nets import Net\nfrom torch_reference.names import N\n",
               "torch_reference/nets.py": "import torch\n", "torch_reference/names.py": "N = 1\n"})
    (problem,) = layering_violations()
    assert problem.startswith("paddle_models/m.py:1: from torch_reference.nets import Net")


def test_checker_finds_a_self_import(fake_tree):
    fake_tree({"eval/x.py": "def f():\n    from eval import x\n"})
    (cycle,) = import_cycles()
    assert cycle.startswith("eval.x -> eval.x")


def test_the_architecture_registry_imports_no_framework():
    registry = [name for name in MODULES if name.split(".")[0] == "architectures"]
    assert registry and all(framework_free(name) for name in registry)
