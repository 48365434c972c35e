"""The tentman-billing wheel as `make dist` builds it, and a virtualenv holding the pinned Airflow
with the wheel installed (once per session: minutes), for the tests of a team's installation.
The two fixtures are registered in conftest.py."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tentman import __version__
from tentman_dev.local import REPO_ROOT

DISTRIBUTION = "tentman_billing"
PLUGIN_ENTRY_POINT = "tentman.plugin:TentmanBillingPlugin"

# Run by a Python with Airflow installed: the plugins Airflow loaded (name, where from) and the
# import errors it reported, as one JSON line.
PLUGIN_REPORT = """
import json
from airflow import plugins_manager
info = plugins_manager.get_plugin_info(attrs_to_dump=["source"])
print(json.dumps({
    "plugins": [[plugin["name"], str(plugin["source"])] for plugin in info],
    "errors": plugins_manager.get_import_errors(),
}))
"""


def airflow_plugins(python: Path | str, home: Path, plugins_folder: Path, **env_extra: str) -> dict:
    """What Airflow's plugins manager loads in `python`'s environment, with `plugins_folder`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TENTMAN_", "PYTHON"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            **env_extra,
        }
    )
    done = subprocess.run([str(python), "-c", PLUGIN_REPORT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="session")
def dist(tmp_path_factory) -> dict[str, Path]:
    """The wheel and sdist of `make dist` (the command docs/deployment.md shows), copied out of dist/."""
    out = tmp_path_factory.mktemp("dist")
    # One build at a time in the checkout: under `make test` each pytest-xdist process that needs
    # the wheel builds it, and two builds at once would empty each other's dist/. (The parent of a
    # pytest-xdist process's temporary root is the session's, which both processes share.)
    with open(tmp_path_factory.getbasetemp().parent / "tentman-dist.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = subprocess.run(["make", "-s", "dist"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        # `make dist` builds from a copy: no egg-info beside the package, neither during the build
        # nor after it (the dev venv would see the entry point twice).
        assert not list((REPO_ROOT / "include").glob("*.egg-info"))
        for built in (REPO_ROOT / "dist").iterdir():
            shutil.copy(built, out / built.name)
    wheels, sdists = list(out.glob("*.whl")), list(out.glob("*.tar.gz"))
    assert [path.name for path in wheels] == [f"{DISTRIBUTION}-{__version__}-py3-none-any.whl"]
    assert [path.name for path in sdists] == [f"{DISTRIBUTION}-{__version__}.tar.gz"]
    return {"wheel": wheels[0], "sdist": sdists[0]}


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def pip(venv: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    done = subprocess.run([str(venv_python(venv)), "-m", "pip", *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"pip {' '.join(args)}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done


def uv_pip(venv: Path, *args: str, timeout: float = 1800) -> str:
    """`uv pip ARGS` on the venv's Python (uv from the development venv); its output."""
    done = subprocess.run(
        [sys.executable, "-m", "uv", "pip", *args, "--python", str(venv_python(venv))],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"uv pip {' '.join(args)}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


def installed(venv: Path) -> dict[str, str]:
    """Every distribution in the venv and its version (pip list: a wheel from a file has no `==` in pip freeze)."""
    listed = json.loads(pip(venv, "list", "--format=json").stdout)
    return {
        normalized(entry["name"]): entry["version"] for entry in listed if entry["name"] not in ("pip", "setuptools")
    }


@pytest.fixture(scope="session")
def airflow_venv(tmp_path_factory, dist) -> dict:
    """A virtualenv with requirements.lock (Airflow 3.3.2 and its providers), before and after
    `pip install` of the wheel; before it, what a folder deployment (package on PYTHONPATH, the
    plugins folder holding the bundle's file) loads."""
    venv = tmp_path_factory.mktemp("airflow-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The lock by uv: the same pins, in seconds where pip takes minutes (unpacking and compiling ~150
    # distributions). The wheel itself goes in by pip below, as a team installs it.
    uv_pip(venv, "install", "-q", "-r", str(REPO_ROOT / "requirements.lock"))
    before = installed(venv)
    folder_deployment = airflow_plugins(
        venv_python(venv),
        tmp_path_factory.mktemp("af-folder"),
        REPO_ROOT / "plugins",
        PYTHONPATH=str(REPO_ROOT / "include"),
    )
    pip(venv, "install", "-q", str(dist["wheel"]))
    return {"venv": venv, "before": before, "after": installed(venv), "folder_deployment": folder_deployment}
