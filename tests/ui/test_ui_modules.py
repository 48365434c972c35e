"""The page's modules (tentman.ui) import each other in one direction and defer nothing but Airflow:
read from the source. No circle and no private name across modules, anywhere in the package, is
tests/test_architecture.py's."""

from __future__ import annotations

import ast
import graphlib

import pytest

from tentman_dev.local import REPO_ROOT

pytestmark = pytest.mark.unit

UI = REPO_ROOT / "include" / "tentman" / "ui"
# What a route may import on a request rather than at module level (tentman.ui.deps says why).
DEFERRED = ("airflow", "tentman.orchestration")


def _imports(module: str) -> list[tuple[str, str, bool]]:
    """(module, name, inside a function) for every `from … import name` of the module."""
    tree = ast.parse((UI / f"{module}.py").read_text())
    top_level = {id(node) for node in tree.body}
    return [
        (node.module or "", alias.name, id(node) not in top_level)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    ]


MODULES = sorted(path.stem for path in UI.glob("*.py") if path.stem != "__init__")


def _ui_module(module: str, name: str) -> str | None:
    """The tentman.ui module that `from module import name` reads, if it is one."""
    if module == "tentman.ui" and name in MODULES:
        return name
    return module.removeprefix("tentman.ui.") if module.startswith("tentman.ui.") else None


def test_the_ui_modules_import_one_another_in_one_direction():
    graph = {module: {_ui_module(source, name) for source, name, _ in _imports(module)} - {None} for module in MODULES}
    order = list(graphlib.TopologicalSorter(graph).static_order())
    assert order.index("deps") < order.index("app") and order.index("models") < order.index("runs")


@pytest.mark.parametrize("module", MODULES)
def test_only_airflow_is_imported_on_a_request(module):
    imports = _imports(module)
    assert [source for source, _, deferred in imports if deferred and not source.startswith(DEFERRED)] == []
