"""No import circles in any package: the modules form layers a newcomer can read bottom-up.

Every module's module-level imports are parsed with ``ast`` (imports inside functions run
later and ``if TYPE_CHECKING:`` blocks never run, so neither can make a circle at import
time). A cycle fails the test with the modules that form it, in order. A second walk adds
the imports inside functions: a lazy import may keep start-up quick, but not hide a circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "pipeloom": ROOT / "packages/pipeloom-core/src/pipeloom",
    "pipeloom_cli": ROOT / "packages/pipeloom-cli/src/pipeloom_cli",
    "pipeloom_observe": ROOT / "packages/pipeloom-observe/src/pipeloom_observe",
}


def modules(packages: dict[str, Path]) -> dict[str, tuple[Path, bool]]:
    """Every module's dotted name, its file and whether it is a package's ``__init__``."""
    found: dict[str, tuple[Path, bool]] = {}
    for name, root in packages.items():
        for path in sorted(root.rglob("*.py")):
            parts = [name, *path.relative_to(root).with_suffix("").parts]
            is_package = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(body: list[ast.stmt], deferred: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run: at module level, and with ``deferred`` inside functions too.

    ``if TYPE_CHECKING:`` blocks never run, so they never count.
    """
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node):
                yield from _imports(node.body, deferred)
            yield from _imports(node.orelse, deferred)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _imports(block, deferred)
            for handler in node.handlers:
                yield from _imports(handler.body, deferred)
        elif isinstance(node, ast.With | ast.For | ast.While) or (
            deferred and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        ):
            yield from _imports(node.body, deferred)


def import_graph(
    found: dict[str, tuple[Path, bool]], *, deferred: bool = False
) -> dict[str, set[str]]:
    """Which of ``found`` each module imports (at module level; ``deferred``: anywhere)."""
    graph: dict[str, set[str]] = {name: set() for name in found}
    for name, (path, is_package) in found.items():
        package = name if is_package else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text()).body, deferred):
            if isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name in found)
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                if submodule in found:
                    graph[name].add(submodule)
                elif target in found:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected group of modules, as the path that closes it."""
    found: list[list[str]] = []
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        stack: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        path, on_path = [start], {start}
        while stack:
            node, targets = stack[-1]
            target = next(targets, None)
            if target is None:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
            elif target in on_path:
                circle = [*path[path.index(target) :], target]
                if not any(set(circle) <= set(c) for c in found):
                    found.append(circle)
            elif target not in done:
                stack.append((target, iter(sorted(graph[target]))))
                path.append(target)
                on_path.add(target)
    return found


def test_no_package_has_an_import_circle() -> None:
    circles = cycles(import_graph(modules(PACKAGES)))
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_no_import_inside_a_function_hides_a_circle() -> None:
    # An import moved into a function to dodge a circle leaves the two modules tangled: what
    # one needs of the other belongs in a third module below both.
    circles = cycles(import_graph(modules(PACKAGES), deferred=True))
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_the_walk_sees_every_module_and_its_imports() -> None:
    graph = import_graph(modules(PACKAGES))
    assert len(graph) > 60
    assert "pipeloom.messages" in graph["pipeloom.writer"]
    assert "pipeloom.errors" in graph["pipeloom_cli.commands.run"]


def test_a_circle_is_named(tmp_path: Path) -> None:
    package = tmp_path / "loop"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from loop.b import B\nA = 1\n")
    (package / "b.py").write_text("from . import c\nB = 1\n")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from loop.d import D\n"
        "def late():\n    from loop import d\n"
        "from .a import A\n"
    )
    (package / "d.py").write_text("from loop.c import late\n")
    assert cycles(import_graph(modules({"loop": package}), deferred=True)) == [
        ["loop.a", "loop.b", "loop.c", "loop.a"],
        ["loop.c", "loop.d", "loop.c"],
    ]
    assert cycles(import_graph(modules({"loop": package}))) == [
        ["loop.a", "loop.b", "loop.c", "loop.a"]
    ]
