"""The house's import rules, read from the source with `ast` (nothing is imported, so a slow or broken module
cannot hide an edge):

- no cycle among bcc_lightning's modules (function-level imports count: they still tie two modules together);
- no module in bcc_lightning/tasks imports another task module, and nothing else in the package imports a task;
- no `_private` name of a bcc_lightning module is used outside it, neither imported (`from m import _x`) nor reached
  as an attribute (`m._x`), in the package or in benchmarks/*.py.

The one exception is the CLI dispatcher, tasks/entry.py: every task's `main()` calls back into it (to run under
the shared Hydra wrapper and exit statuses), and it reaches each task by `importlib.import_module` on a name from
its table, which `ast` does not see as an import. So the allowed edges are exactly task -> tasks.entry.

KNOWN lists what is left to untangle in files this change did not own, each with its reason: the test fails on
anything new and warns when a listed item is gone (then delete its line). Keep it empty where you can.
"""
from __future__ import annotations

import ast
import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Left to untangle (issue #28), each written as the test prints it.
KNOWN_CYCLES: set[frozenset[str]] = set()
KNOWN_PRIVATE: set[str] = set()
PACKAGE = "bcc_lightning"
DISPATCHER = f"{PACKAGE}.tasks.entry"
TASKS = f"{PACKAGE}.tasks"


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported module (resolved to a module of the package when it is one)
    names: tuple[str, ...]  # names taken with `from target import ...`
    where: str  # file:line

    def __str__(self) -> str:
        taken = f" ({', '.join(self.names)})" if self.names else ""
        return f"{self.source} -> {self.target}{taken}  at {self.where}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules(root: Path = ROOT) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted((root / PACKAGE).rglob("*.py"))}


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    """`from ..x import y` inside `module` -> the absolute name of `..x`."""
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


@functools.cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imports(path: Path, module: str, modules: dict[str, Path]) -> tuple[list[Edge], list[str]]:
    """Every import of `path` (function-level ones included) as edges to package modules, and every `m._x`
    attribute reached through a name bound to a package module."""
    tree = _tree(path)
    is_package = path.name == "__init__.py"
    where = path.relative_to(ROOT).as_posix()
    edges: list[Edge] = []
    bound: dict[str, str] = {}  # local name -> package module it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != PACKAGE:
                    continue
                edges.append(Edge(module, alias.name, (), f"{where}:{node.lineno}"))
                if alias.asname:
                    bound[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, is_package, node.level, node.module)
            if target.split(".")[0] != PACKAGE:
                continue
            plain: list[str] = []
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in modules:  # `from pkg import mod` imports the module mod
                    edges.append(Edge(module, submodule, (), f"{where}:{node.lineno}"))
                    bound[alias.asname or alias.name] = submodule
                else:
                    plain.append(alias.name)
            if plain or not node.names:
                edges.append(Edge(module, target, tuple(plain), f"{where}:{node.lineno}"))
    private_attributes = [
        f"{bound[node.value.id]}.{node.attr}  at {where}:{node.lineno}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
        and _is_private(node.attr)
    ]
    return edges, private_attributes


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def package_edges(root: Path = ROOT) -> list[Edge]:
    modules = package_modules(root)
    return [edge for module, path in modules.items() for edge in imports(path, module, modules)[0]]


def find_cycle(edges: list[Edge]) -> list[str] | None:
    """One cycle among the package's modules (as a closed path of module names), or None."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if edge.source != edge.target:
            graph.setdefault(edge.source, set()).add(edge.target)
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _is_task(module: str) -> bool:
    return module.startswith(TASKS + ".")


def _parent_packages(module: str) -> set[str]:
    """A package's `__init__` runs whenever one of its modules is imported: an edge to a.b.c also reaches a.b and
    a, which is not a cycle through those modules' own code, so cycles are looked for between the modules named."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_parser_resolves_relative_and_function_level_imports(tmp_path: Path) -> None:
    """The reader itself: a relative import, a function-level import, `from pkg import module`, and `m._x`."""
    package = tmp_path / PACKAGE
    (package / "tasks").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "tasks" / "__init__.py").write_text("")
    (package / "tasks" / "a.py").write_text(
        "from . import b\n\ndef f():\n    from .b import _hidden\n    return b._x\n")
    (package / "tasks" / "b.py").write_text("def g():\n    import bcc_lightning.tasks.a\n")
    modules = package_modules(tmp_path)
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        edges_a, private_a = imports(package / "tasks" / "a.py", "bcc_lightning.tasks.a", modules)
        edges_b, _ = imports(package / "tasks" / "b.py", "bcc_lightning.tasks.b", modules)
    finally:
        ROOT = saved
    assert {(e.target, e.names) for e in edges_a} == {("bcc_lightning.tasks.b", ()),
                                                      ("bcc_lightning.tasks.b", ("_hidden",))}
    assert private_a == ["bcc_lightning.tasks.b._x  at bcc_lightning/tasks/a.py:5"]
    assert find_cycle(edges_a + edges_b) == ["bcc_lightning.tasks.a", "bcc_lightning.tasks.b", "bcc_lightning.tasks.a"]


def test_no_import_cycle() -> None:
    edges = [e for e in package_edges() if e.target not in _parent_packages(e.source) | {e.source}]
    modules = {e.source for e in edges} | {e.target for e in edges}
    for known in KNOWN_CYCLES:
        if find_cycle([e for e in edges if {e.source, e.target} <= known]) is None:
            warnings.warn(f"the known cycle among {sorted(known)} is gone: delete it from KNOWN_CYCLES", stacklevel=1)
        assert known <= modules, f"KNOWN_CYCLES names a module that does not exist: {sorted(known - modules)}"
    # A known cycle's edges inside its own set are set aside; any other cycle (through them or not) still shows.
    rest = [e for e in edges if not any({e.source, e.target} <= known for known in KNOWN_CYCLES)]
    cycle = find_cycle(rest)
    if cycle:
        steps = [next(str(e) for e in rest if e.source == a and e.target == b) for a, b in zip(cycle, cycle[1:])]
        pytest.fail("import cycle among bcc_lightning's modules:\n  " + "\n  ".join(steps), pytrace=False)


def test_no_task_imports_another_task() -> None:
    bad = [e for e in package_edges() if _is_task(e.source) and _is_task(e.target) and e.source != e.target
           and e.target != DISPATCHER]
    if bad:
        pytest.fail("a task imports another task; move what they share into a wing (data, models, reports, ...):\n  "
                    + "\n  ".join(map(str, bad)), pytrace=False)


def test_nothing_outside_tasks_imports_a_task() -> None:
    bad = [e for e in package_edges() if not _is_task(e.source) and e.source != TASKS
           and (_is_task(e.target) or e.target == TASKS)]
    if bad:
        pytest.fail("a module outside tasks/ imports a task (nothing imports tasks):\n  " + "\n  ".join(map(str, bad)),
                    pytrace=False)


def private_uses(root: Path = ROOT) -> list[str]:
    """Every use of another module's `_private` name, in the package and in benchmarks/*.py."""
    modules = package_modules(root)
    files = dict(modules) | {f"benchmarks.{p.stem}": p for p in sorted((root / "benchmarks").glob("*.py"))}
    bad: list[str] = []
    for module, path in files.items():
        edges, attributes = imports(path, module, modules)
        bad += [f"{e}  -> private: {', '.join(n for n in e.names if _is_private(n))}"
                for e in edges if e.target != module and any(_is_private(n) for n in e.names)]
        bad += [f"{module} reaches {attribute}" for attribute in attributes]
    return bad


def test_no_private_name_used_across_modules() -> None:
    uses = private_uses()
    for known in KNOWN_PRIVATE - {use.split("  at ")[0] for use in uses}:
        warnings.warn(f"{known} is gone: delete it from KNOWN_PRIVATE", stacklevel=1)
    bad = [use for use in uses if use.split("  at ")[0] not in KNOWN_PRIVATE]
    if bad:
        pytest.fail("a `_private` name is used outside its module; make it public in a wing or do without:\n  "
                    + "\n  ".join(bad), pytrace=False)


# Rooms from the bottom up (DESIGN.md, "Who may import whom"): a module imports its own room and the rooms below it.
ROOMS: list[tuple[str, ...]] = [("utils",), ("data",), ("models",), ("callbacks",), ("reports",),
                                ("prediction", "serving", "training"), ("tasks",)]
# The metric registry is one table read by training-time logging (models.module, callbacks.history) and by every
# report; it lives beside the metrics' functions in reports/ but imports nothing above data, so reading it from a
# lower room ties no knot (checked below).
SHARED_TABLES = {f"{PACKAGE}.reports.metrics"}


def _rank(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None
    return next((rank for rank, rooms in enumerate(ROOMS) if parts[1] in rooms), None)


def test_rooms_import_only_downwards() -> None:
    edges = package_edges()
    rooms = {module.split(".")[1] for module in package_modules() if module.count(".") >= 2}
    assert rooms <= {room for group in ROOMS for room in group}, f"rooms missing from ROOMS: {rooms}"
    upward = [e for e in edges if e.target not in SHARED_TABLES and _rank(e.source) is not None
              and _rank(e.target) is not None and _rank(e.target) > _rank(e.source)]
    if upward:
        pytest.fail("a module imports a room above its own (move the shared code down, or the caller up):\n  "
                    + "\n  ".join(map(str, upward)), pytrace=False)
    table_imports = [e for e in edges if e.source in SHARED_TABLES and (_rank(e.target) or 0) > 1]
    assert not table_imports, f"a shared table imports above data: {[str(e) for e in table_imports]}"
