"""tentman-billing as a team installs it into its Airflow: the wheel's contents and metadata, the
plugin loaded exactly once, and the wheel installed into a virtualenv holding the pinned Airflow.

The wheel is built as `make dist` builds it (`python -m build`), from a copy of the files the
build reads, so that the build leaves nothing in the checkout (setuptools writes its egg-info next
to the package, where the development venv would see the plugin's entry point a second time).
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from support.distribution import (
    DISTRIBUTION,
    PLUGIN_ENTRY_POINT,
    airflow_plugins,
    normalized,
    pip,
    uv_pip,
    venv_python,
)
from tentman import __version__
from tentman_dev.local import REPO_ROOT

# Every test here builds the wheel (`make dist`) or a virtualenv: slow, and no database of its own.
pytestmark = pytest.mark.slow


def requirement_names(path: Path) -> set[str]:
    """The distributions a requirements file names (normalized)."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {normalized(Requirement(line).name) for line in lines if line and not line.startswith("-")}


def test_airflow_loads_the_plugin_once_when_both_the_package_and_the_plugins_folder_offer_it(tmp_path):
    """The development venv has tentman-billing installed (its entry point) and the bundle's
    plugins folder holds plugins/tentman_billing_plugin.py: one plugin, no import error."""
    report = airflow_plugins(sys.executable, tmp_path / "airflow", REPO_ROOT / "plugins")
    assert report["errors"] == {}
    assert [name for name, _ in report["plugins"]] == ["tentman_billing"]
    assert f"value='{PLUGIN_ENTRY_POINT}', group='airflow.plugins'" in report["plugins"][0][1]


def test_the_wheel_carries_the_package_and_nothing_else(dist):
    """Every file of include/tentman under version control, the migrations and the UI's vendored
    files included; no DAG, test or developer tooling."""
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = wheel.namelist()
    dist_info = f"{DISTRIBUTION}-{__version__}.dist-info"
    assert {name.split("/", 1)[0] for name in names} == {"tentman", dist_info}
    tracked = subprocess.run(
        ["git", "ls-files", "include/tentman"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert {name for name in names if name.startswith("tentman/")} == {
        path.removeprefix("include/") for path in tracked
    }
    assert "tentman/migrations/env.py" in names and "tentman/ui/static/vendor/echarts/echarts.common.min.js" in names
    assert f"{dist_info}/licenses/LICENSE" in names


def test_the_wheel_names_airflow_as_a_range_and_no_development_tool(dist):
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        dist_info = f"{DISTRIBUTION}-{__version__}.dist-info"
        metadata = Parser().parsestr(wheel.read(f"{dist_info}/METADATA").decode())
        entry_points = configparser.ConfigParser(delimiters=("=",))
        entry_points.read_string(wheel.read(f"{dist_info}/entry_points.txt").decode())
    assert metadata["Name"] == "tentman-billing" and metadata["Version"] == __version__
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["Requires-Python"] == ">=3.11"
    requirements = [Requirement(line) for line in metadata.get_all("Requires-Dist")]
    runtime = {normalized(r.name): r for r in requirements if r.marker is None}
    airflow = runtime["apache-airflow"]
    # A range that holds the tested Airflow and never pins it: installing the wheel moves no Airflow.
    assert all(spec.operator not in ("==", "===") for spec in airflow.specifier)
    assert airflow.specifier.contains("3.3.2") and not airflow.specifier.contains("4.0.0")
    assert set(runtime) == {
        "apache-airflow",
        "apache-airflow-providers-postgres",
        "apache-airflow-providers-smtp",
        "sqlalchemy",
        "alembic",
        "psycopg",
        "pendulum",
    }
    assert runtime["psycopg"].extras == {"binary"}
    # Nothing of requirements-dev.txt, not even behind an extra; the Celery provider only as one.
    every_name = {normalized(r.name) for r in requirements}
    assert every_name & requirement_names(REPO_ROOT / "requirements-dev.txt") == set()
    by_extra = {
        normalized(r.name): str(r.marker).split('"')[1]
        for r in requirements
        if r.marker is not None and "extra" in str(r.marker)
    }
    assert by_extra == {"apache-airflow-providers-celery": "celery", "celery": "celery", "statsd": "statsd"}
    assert dict(entry_points["airflow.plugins"]) == {"tentman_billing": PLUGIN_ENTRY_POINT}
    assert dict(entry_points["console_scripts"]) == {"tentman": "tentman.cli:main"}


def test_the_sdist_carries_the_licence_and_the_package_only(dist):
    with tarfile.open(dist["sdist"]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {"LICENSE", "pyproject.toml", "README.md", "include/tentman/plugin.py"} <= names
    assert {name.split("/", 1)[0] for name in names} == {
        "LICENSE",
        "MANIFEST.in",
        "PKG-INFO",
        "README.md",
        "pyproject.toml",
        "setup.cfg",
        "include",
    }
    assert not any(name.startswith(("include/tentman_dev", "include/tentman/dev/")) for name in names)


# --- The wheel installed into a fresh virtualenv that holds the pinned Airflow (minutes: once).


def test_installing_the_wheel_into_an_airflow_adds_the_package_and_moves_nothing(airflow_venv):
    before, after = airflow_venv["before"], airflow_venv["after"]
    assert before["apache-airflow"] == "3.3.2"
    assert after == {**before, "tentman-billing": __version__}
    pip(airflow_venv["venv"], "check")  # raises with pip's report unless every requirement is met
    bin_dir = airflow_venv["venv"] / "bin"
    version = subprocess.run([str(bin_dir / "tentman"), "--version"], capture_output=True, text=True)
    assert (version.returncode, version.stdout.strip()) == (0, f"tentman {__version__}")
    assert not (bin_dir / "tentman-dev").exists()
    imported = subprocess.run(
        [str(bin_dir / "python"), "-c", "import tentman.plugin, tentman.orchestration.dag_factory; import tentman_dev"],
        capture_output=True,
        text=True,
        cwd=airflow_venv["venv"],
    )
    # The package imports; the developer tooling is not there.
    assert imported.returncode == 1 and "No module named 'tentman_dev'" in imported.stderr, imported.stderr


def test_the_plugin_loads_once_from_the_wheel_or_once_from_the_plugins_folder(airflow_venv, tmp_path):
    # Before the wheel: a folder deployment, the plugin comes from the plugins folder.
    folder = airflow_venv["folder_deployment"]
    assert folder["errors"] == {}
    assert folder["plugins"] == [["tentman_billing", "$PLUGINS_FOLDER/tentman_billing_plugin.py"]]
    # With the wheel, the same plugins folder present: the entry point's plugin, once.
    installed = airflow_plugins(venv_python(airflow_venv["venv"]), tmp_path / "airflow", REPO_ROOT / "plugins")
    assert installed["errors"] == {}
    assert [name for name, _ in installed["plugins"]] == ["tentman_billing"]
    assert installed["plugins"][0][1].startswith(f"tentman-billing=={__version__}: EntryPoint(name='tentman_billing'")


# --- The lowest Airflow the package declares (pyproject.toml: apache-airflow>=3.2.2): both DAGs run.

LOWEST_AIRFLOW = "3.2.2"
# uv resolves Airflow 3.2.2 as of its time: with today's index pip pulls fastapi and cadwyn releases
# that Airflow 3.2.2 cannot run with.
LOWEST_AIRFLOW_INDEX_DATE = "2026-06-05"


def test_the_lowest_tested_airflow_is_the_floor_pyproject_declares():
    """Moving the floor (apache-airflow>=…) moves the Airflow the slow test below installs."""
    dependencies = [
        Requirement(line)
        for line in tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ]
    airflow = next(r for r in dependencies if normalized(r.name) == "apache-airflow")
    assert [spec.version for spec in airflow.specifier if spec.operator == ">="] == [LOWEST_AIRFLOW]


def dev_pin(name: str) -> str:
    """`name==version` as requirements-dev.lock pins it: the inner test run uses the same tools."""
    for line in (REPO_ROOT / "requirements-dev.lock").read_text().splitlines():
        if normalized(line.partition("==")[0]) == name:
            return line
    raise AssertionError(f"{name} is not pinned in requirements-dev.lock")


@pytest.fixture(scope="module")
def lowest_airflow_venv(tmp_path_factory, dist) -> dict:
    """A virtualenv holding apache-airflow[postgres]==3.2.2 alone (resolved by uv as of its time),
    before and after the wheel is installed into it; then the test runner on top (the DAG tests of
    this checkout run in it)."""
    venv = tmp_path_factory.mktemp("airflow-lowest")
    subprocess.run(
        [sys.executable, "-m", "uv", "venv", "-q", "--python", sys.executable, str(venv)], check=True, timeout=120
    )

    def versions() -> dict[str, str]:
        pinned = (line.partition("==") for line in uv_pip(venv, "freeze").splitlines() if "==" in line)
        return {normalized(name): version for name, _, version in pinned}

    as_of_airflow = ["--exclude-newer", LOWEST_AIRFLOW_INDEX_DATE]
    uv_pip(venv, "install", "-q", *as_of_airflow, f"apache-airflow[postgres]=={LOWEST_AIRFLOW}")
    before = versions()
    uv_pip(venv, "install", "-q", *as_of_airflow, str(dist["wheel"]))
    after = versions()
    uv_pip(venv, "check")
    # The test tools, pinned as in the dev lock (newer than that date), on top.
    uv_pip(venv, "install", "-q", dev_pin("pytest"), dev_pin("hypothesis"))
    return {"venv": venv, "before": before, "after": after}


def test_the_wheel_installs_into_the_lowest_supported_airflow_and_moves_nothing(lowest_airflow_venv):
    before, after = lowest_airflow_venv["before"], lowest_airflow_venv["after"]
    assert before["apache-airflow"] == LOWEST_AIRFLOW
    assert {name: after.get(name) for name in before} == before  # added to, never changed


def test_the_lowest_supported_airflow_parses_and_runs_both_dags(lowest_airflow_venv, pg_admin_uri):
    venv = lowest_airflow_venv["venv"]
    python = venv_python(venv)
    versions = subprocess.run(
        [str(python), "-c", "import airflow, tentman, tentman.plugin; print(airflow.__version__, tentman.__file__)"],
        capture_output=True,
        text=True,
        cwd=venv,
    )
    assert versions.returncode == 0, versions.stderr
    airflow_version, tentman_file = versions.stdout.split()
    assert airflow_version == LOWEST_AIRFLOW
    assert tentman_file.startswith(str(venv))  # the wheel's package, not the checkout's
    # In that venv: tests/orchestration/test_dags.py (both DAG files parse, and dag.test() runs each
    # against a real TentMan database and an Airflow 3.2.2 metadata database, migrated by that
    # Airflow), and test_adoption.py (that venv's `tentman db upgrade` adopts an application-made
    # database and checks its schema, and both DAGs bill it as the documented role).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TENTMAN_", "PYTHON"))}
    env.update({"PYTHONPATH": str(REPO_ROOT / "dev"), "TENTMAN_TEST_DATABASE_URL": pg_admin_uri})
    inner_basetemp = Path(tempfile.mkdtemp(prefix="tentman-lowest-airflow-")) / "pytest"
    run = subprocess.run(
        [
            str(python),
            "-m",
            "pytest",
            "tests/orchestration/test_dags.py",
            "tests/orchestration/test_adoption.py",
            # What this Airflow decides (parsing, params, mapping, retries or not, dag.test runs), not
            # what the billing code alone does: each organization's settings honoured is the engine's
            # (a dag.test of 30 s on this Airflow; the outer session runs it on the pinned one).
            "--deselect",
            "tests/orchestration/test_dags.py::test_dag_test_run_honours_each_organizations_billing_settings",
            "-q",
            "-p",
            "no:cacheprovider",
            # Its own temporary root: a second pytest session under /tmp/pytest-of-<user> makes that
            # folder private again (0700), and the embedded server of this session, running as its own
            # system user with its data below it, would lose its data directory (PANIC: permission denied).
            f"--basetemp={inner_basetemp}",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    shutil.rmtree(inner_basetemp.parent, ignore_errors=True)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    assert re.search(r"\b\d+ passed\b", run.stdout) and " failed" not in run.stdout and "skipped" not in run.stdout
