"""Airflow plugin: the "Billing runs" page (runs, errors, trends, preview) and its JSON API.

The FastAPI app is mounted by the api-server under /tentman (API docs at /tentman/docs, OpenAPI at
/tentman/openapi.json); the page is added to the Airflow UI's navigation as an external view. Every
endpoint checks the Airflow user's permissions itself (tentman.ui.deps): plugin apps get no
authentication from Airflow otherwise.

Airflow finds the plugin through the `airflow.plugins` entry point of the tentman-billing
distribution. plugins/tentman_billing_plugin.py offers it to folder-based deployments, where the
package is importable but not installed; it steps aside when the entry point exists (see
`registered_by_entry_point`), so Airflow never loads it twice.
"""

from importlib.metadata import PackageNotFoundError, distribution

from airflow.plugins_manager import AirflowPlugin

from tentman.ui import billing_app


class TentmanBillingPlugin(AirflowPlugin):
    name = "tentman_billing"
    fastapi_apps = [{"app": billing_app, "url_prefix": "/tentman", "name": "TentMan billing runs"}]
    external_views = [
        {
            "name": "Billing runs",
            "href": "/tentman/ui/",
            "destination": "nav",
            "url_route": "billing-runs",
        }
    ]


# The distribution pyproject.toml builds, and how its [project.entry-points."airflow.plugins"] names the class.
DISTRIBUTION = "tentman-billing"
ENTRY_POINT = f"{__name__}:{TentmanBillingPlugin.__name__}"


def registered_by_entry_point() -> bool:
    """Whether the installed tentman-billing distribution offers this plugin to Airflow through its
    entry point.

    Airflow loads the plugins folder first, then the entry points, and keeps only the first plugin
    of a name: the second is reported as an import error ("already registered") on every start.

    Only this distribution's entry points are read, not every installed distribution's: Airflow
    loads the plugins folder in every task process, so this runs once per task of the deployment,
    and reading the entry points of all ~190 distributions of an Airflow image cost each task about
    7 ms of CPU (docs/scaling.md).
    """
    try:
        offered = distribution(DISTRIBUTION).entry_points.select(group="airflow.plugins")
    except PackageNotFoundError:  # the package is on the path, not installed
        return False
    return any(entry_point.value == ENTRY_POINT for entry_point in offered)
