"""The "Billing runs" page and API. `billing_app` is what the Airflow plugin mounts.

The FastAPI app is built on its first request: every Airflow component imports plugins (task
processes included), and only the api-server ever serves this app, so the others do not pay for
importing it.
"""


class _LazyASGIApp:
    def __init__(self, factory_path: str):
        self._factory_path = factory_path
        self._app = None

    async def __call__(self, scope, receive, send):
        if self._app is None:
            module, _, name = self._factory_path.rpartition(".")
            self._app = getattr(__import__(module, fromlist=[name]), name)()
        await self._app(scope, receive, send)


billing_app = _LazyASGIApp("tentman.ui.app.create_app")
