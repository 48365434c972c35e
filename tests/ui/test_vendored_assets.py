"""The third-party files the page and the API docs load: in the package, with their licences, served
by the plugin app itself (no CDN), and shipped by the package data. No Airflow, no database."""

from __future__ import annotations

import hashlib
import re
import tomllib

import httpx
import pytest
from a2wsgi import ASGIMiddleware

from tentman.ui.app import create_app
from tentman.ui.page import STATIC, VENDOR, VENDOR_URL
from tentman_dev.local import REPO_ROOT

pytestmark = pytest.mark.unit

# name, version, files (the licence files first) and a string that only that version's main file holds.
VENDORED = {
    "echarts": (
        "6.1.0",
        ["LICENSE", "NOTICE", "LICENSE-d3", "echarts.common.min.js"],
        ("echarts.common.min.js", 't.version="6.1.0"'),
    ),
    "swagger-ui": (
        "5.35.0",
        [
            "LICENSE",
            "NOTICE",
            "swagger-ui-bundle.js.LICENSE.txt",
            "swagger-ui-bundle.js",
            "swagger-ui.css",
            "favicon-32x32.png",
        ],
        ("swagger-ui-bundle.js", 'PACKAGE_VERSION:"5.35.0"'),
    ),
}


@pytest.mark.parametrize("directory", sorted(VENDORED))
def test_each_vendored_library_is_there_with_its_licence_and_version(directory):
    version, files, (main, marker) = VENDORED[directory]
    folder = VENDOR / directory
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)
    licence = (folder / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    assert "Copyright" in (folder / "NOTICE").read_text()
    assert marker in (folder / main).read_text()
    # The README names each one with its version, licence and the files taken.
    row = next(line for line in (VENDOR / "README.md").read_text().splitlines() if line.startswith(f"| `{directory}/`"))
    assert f"| {version} |" in row and "Apache-2.0" in row
    assert all(f"`{name}`" in row or f"/{name}`" in row for name in files), row


def test_the_bundled_d3_code_keeps_its_bsd_licence():
    assert "BSD" in (VENDOR / "echarts" / "LICENSE").read_text()
    assert "Mike Bostock" in (VENDOR / "echarts" / "LICENSE-d3").read_text()


def test_the_app_serves_them_and_the_page_and_docs_load_nothing_else_from_outside():
    app = create_app()
    # httpx's own transport (through a2wsgi, which Airflow brings): starlette's TestClient now wants httpx2.
    client = httpx.Client(transport=httpx.WSGITransport(app=ASGIMiddleware(app)), base_url="http://testserver")
    for directory, (_, files, _) in VENDORED.items():
        for name in files:
            response = client.get(f"/static/vendor/{directory}/{name}")  # mounted under /tentman by the plugin
            assert response.status_code == 200, name
            assert (
                hashlib.sha256(response.content).digest()
                == hashlib.sha256((VENDOR / directory / name).read_bytes()).digest()
            )
    assert client.get("/static/vendor/../index.html").status_code == 404  # only the vendor folder is public

    docs = next(route for route in app.routes if getattr(route, "path", None) == "/docs").endpoint().body.decode()
    page = (STATIC / "index.html").read_text()
    for html in (docs, page):
        loaded = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert not [url for url in loaded if "//" in url], loaded  # nothing from another host (no CDN)
        for url in loaded:
            if url.startswith(VENDOR_URL):
                assert (VENDOR / url.removeprefix(VENDOR_URL + "/")).is_file(), url
    assert f"{VENDOR_URL}/swagger-ui/swagger-ui-bundle.js" in docs and '"validatorUrl": null' in docs
    assert f"{VENDOR_URL}/echarts/echarts.common.min.js" in page


def test_package_data_ships_every_static_file():
    """setuptools' package-data globs (pyproject.toml) match every file under ui/static."""
    patterns = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "tentman"
    ]
    package = REPO_ROOT / "include" / "tentman"
    shipped = {path for pattern in patterns for path in package.glob(pattern) if path.is_file()}
    static_files = {path for path in STATIC.rglob("*") if path.is_file()}
    assert static_files - shipped == set()
    # The image installs the wheel built from that tree (tests/test_distribution.py opens the wheel).
    assert "COPY --chown=airflow:root include /tmp/tentman/include" in (REPO_ROOT / "Dockerfile").read_text()
