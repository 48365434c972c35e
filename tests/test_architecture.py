"""Each folder of the package keeps to the imports its place allows (docs/architecture.md), and the
shipped package never imports the developer tooling (dev/tentman_dev), which is not in its wheel.

Read from the source (every import statement, module level or inside a function), so a forbidden
import fails here before anything runs it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tentman_dev.local import REPO_ROOT

pytestmark = pytest.mark.unit

PACKAGE = REPO_ROOT / "include" / "tentman"
DEV_PACKAGE = REPO_ROOT / "dev" / "tentman_dev"
SHARED_MODULES = {"__init__", "names", "settings", "deployment", "db", "migrate", "application_schema", "cli", "errors"}
# Airflow's entry into the package (the plugin of the distribution's entry point).
AIRFLOW_ENTRY_MODULES = {"plugin"}
FOLDERS = {"billing", "runs", "orchestration", "ui", "migrations"}


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, whether the import is inside a function) for every import in the file."""
    found = []

    class Visitor(ast.NodeVisitor):
        depth = 0

        def visit_FunctionDef(self, node):
            self.depth += 1
            self.generic_visit(node)
            self.depth -= 1

        visit_AsyncFunctionDef = visit_FunctionDef

        def visit_Import(self, node):
            found.extend((alias.name, self.depth > 0) for alias in node.names)

        def visit_ImportFrom(self, node):
            module = node.module or ""
            # `from tentman import x` imports the module tentman.x when x is one.
            found.extend((f"{module}.{alias.name}", self.depth > 0) for alias in node.names)

    Visitor().visit(ast.parse(path.read_text(), filename=str(path)))
    return found


def _modules(folder: str | None = None, *, package: Path = PACKAGE) -> dict[str, list[tuple[str, bool]]]:
    root = package / folder if folder else package
    return {_module_name(path, package): _imports(path) for path in sorted(root.rglob("*.py"))}


def _violations(modules: dict, forbidden: tuple[str, ...], *, allow_in_functions: bool = False) -> list[str]:
    return [
        f"{module} imports {imported}"
        for module, imports in modules.items()
        for imported, in_function in imports
        if imported.startswith(forbidden) and not (allow_in_functions and in_function)
    ]


def test_every_module_lives_in_a_known_place():
    top_level = {path.stem for path in PACKAGE.glob("*.py")}
    folders = {path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__"}
    assert top_level == SHARED_MODULES | AIRFLOW_ENTRY_MODULES
    assert folders == FOLDERS


def test_the_billing_engines_import_neither_airflow_nor_the_layers_above_it():
    forbidden = (
        "airflow",
        "fastapi",
        "tentman.runs",
        "tentman.orchestration",
        "tentman.ui",
        "tentman_dev",
        "tentman.cli",
        "tentman.plugin",
    )
    assert _violations(_modules("billing"), forbidden) == []


def test_the_run_steps_import_neither_airflow_nor_the_ui_nor_tooling():
    forbidden = (
        "airflow",
        "fastapi",
        "tentman.orchestration",
        "tentman.ui",
        "tentman_dev",
        "tentman.cli",
        "tentman.plugin",
    )
    assert _violations(_modules("runs"), forbidden) == []


def test_shared_modules_import_only_shared_modules():
    modules = _modules()
    shared = {name: modules["tentman" if name == "__init__" else f"tentman.{name}"] for name in SHARED_MODULES}
    forbidden = ("airflow", "tentman.billing", "tentman.runs", "tentman.orchestration", "tentman.ui", "tentman.plugin")
    cli = {"cli": shared.pop("cli")}
    assert _violations(shared, forbidden) == []
    # The CLI's commands import what they run inside their functions, so `tentman --help` stays cheap.
    assert _violations(cli, forbidden, allow_in_functions=True) == []
    # names is read at DAG-parse time by everything: the standard library only.
    assert [imported for imported, _ in shared["names"] if not imported.startswith(("__future__", "enum"))] == []
    # deployment's settings are read by tooling that must not load anything: no import at all.
    assert shared["deployment"] == []


def test_the_plugin_brings_only_the_ui_to_airflow():
    plugin = {"tentman.plugin": _modules()["tentman.plugin"]}
    forbidden = ("tentman.billing", "tentman.runs", "tentman.orchestration", "tentman_dev", "tentman.cli")
    assert _violations(plugin, forbidden) == []


def test_nothing_in_production_imports_developer_tooling():
    """Not even inside a function: the developer tooling is not installed where the package runs."""
    assert _violations(_modules(), ("tentman_dev", "tentman.dev")) == []
    for folder in ("dags", "plugins", "config"):
        files = {path.name: _imports(path) for path in (REPO_ROOT / folder).glob("*.py")}
        assert _violations(files, ("tentman_dev", "tentman.dev")) == []


def test_the_developer_tooling_is_a_package_of_its_own():
    """tentman_dev lives outside the shipped package's folder and uses it like any user: by import."""
    assert not (PACKAGE / "dev").exists()
    dev_modules = _modules(package=DEV_PACKAGE)
    assert "tentman_dev.cli" in dev_modules and "tentman_dev.bench.engines" in dev_modules
    # The production package's deployment settings are imported, not copied.
    assert ("tentman.deployment.FAILURE_DETECTION", False) in dev_modules["tentman_dev.airflow_stack"]
    assert ("tentman.deployment.SCHEDULING", False) in dev_modules["tentman_dev.airflow_stack"]


def test_the_ui_and_the_airflow_glue_stay_apart():
    assert _violations(_modules("orchestration"), ("tentman.ui", "tentman_dev")) == []
    assert _violations(_modules("ui"), ("tentman.runs", "tentman_dev")) == []


def _package_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module → the package's modules it imports (at any depth in the file)."""
    modules = _modules(package=package)
    graph = {}
    for module, imports in modules.items():
        targets = set()
        for imported, _ in imports:
            # `from a.b import c` is module a.b.c when that is a module, else a name of module a.b.
            target = imported if imported in modules else imported.rpartition(".")[0]
            if target in modules and target != module:
                targets.add(target)
        graph[module] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, once each, as the modules along it (first module repeated at the end)."""
    found = set()

    def walk(path: list[str]) -> None:
        for target in sorted(graph.get(path[-1], ())):
            if target in path:
                circle = path[path.index(target) :]
                start = circle.index(min(circle))
                found.add(tuple(circle[start:] + circle[:start]))
            else:
                walk([*path, target])

    for module in graph:
        walk([module])
    return [[*circle, circle[0]] for circle in sorted(found)]


@pytest.mark.parametrize("package", [PACKAGE, DEV_PACKAGE], ids=["tentman", "tentman_dev"])
def test_the_import_graph_has_no_circles(package):
    """Not even through an import inside a function, which only hides a circle until it bites."""
    assert _cycles(_package_graph(package)) == []


def _private_imports(modules: dict[str, list[tuple[str, bool]]]) -> list[str]:
    return [
        f"{module} imports {imported}"
        for module, imports in modules.items()
        for imported, _ in imports
        if imported.startswith(("tentman.", "tentman_dev."))
        and (name := imported.rpartition(".")[2]).startswith("_")
        and not name.startswith("__")
        and imported.rpartition(".")[0] != module
    ]


def test_no_private_name_is_imported_across_modules():
    """A leading underscore says "this module's own": another module needing it means it is shared
    and deserves a public name (or belongs elsewhere). Tests included."""
    modules = _modules() | _modules(package=DEV_PACKAGE)
    modules |= {str(path): _imports(path) for path in sorted((REPO_ROOT / "tests").rglob("*.py"))}
    assert _private_imports(modules) == []


def test_the_checks_see_a_circle_and_a_private_import():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    modules = {"tentman.ui.x": [("tentman.ui.app._engine", True), ("tentman.__version__", False)]}
    assert _private_imports(modules) == ["tentman.ui.x imports tentman.ui.app._engine"]


def test_the_check_sees_a_forbidden_import():
    """The checker itself: an engine module importing Airflow is reported, at any depth."""
    modules = {"tentman.billing.example": _imports_of_source("def f():\n    from airflow.sdk import task\n")}
    assert _violations(modules, ("airflow",)) == ["tentman.billing.example imports airflow.sdk.task"]
    assert _violations(modules, ("airflow",), allow_in_functions=True) == []


def _imports_of_source(source: str) -> list[tuple[str, bool]]:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as handle:
        handle.write(source)
    path = Path(handle.name)
    try:
        return _imports(path)
    finally:
        path.unlink()
