"""Airflow plugin: the "Billing runs" page (runs, errors, trends, preview) and its JSON API.

The FastAPI app is mounted by the api-server under /tentman (OpenAPI at /tentman/docs); the page
is added to the Airflow UI's navigation as an external view. Every endpoint checks the Airflow
user's permissions itself: plugin apps get no authentication from Airflow otherwise.
"""

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
