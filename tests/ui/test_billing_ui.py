"""The "Billing runs" plugin on live Airflow: its JSON API, its access control, its preview, and each
run's reconciliation on the page."""

from __future__ import annotations

import json
import re
import subprocess
from collections import defaultdict
from datetime import date
from decimal import Decimal
from urllib.parse import urlsplit

import httpx
import pytest
import sqlalchemy as sa

from support.factories import add_charge, add_invoice, add_lease, add_organization
from support.live import PASSWORDS, Api, live_stack
from support.pages import OFFLINE_ARGS, BillingRunsPage, chromium
from tentman.billing.periods import BillingPeriod
from tentman.billing.preview import preview_slot
from tentman.billing.reconciliation import CHECKS_OF_RUN
from tentman.names import BILLING_SETTINGS_AUDIT_TABLE, BILLING_SETTINGS_TABLE, RENT_DAG_ID, RunType
from tentman.runs.reconcile import reconcile_period
from tentman.ui.deps import CSRF_HEADER, CSRF_HEADER_VALUE, SAFE_METHODS
from tentman_dev.local import REPO_ROOT

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def ui(pg_admin_uri, tmp_path_factory):
    # No schedules: a DAG's catch-up run (its latest tick, started on unpause) would add rows to the runs listed here.
    manual = {"TENTMAN_RENT_SCHEDULE": "manual", "TENTMAN_UTILITY_SCHEDULE": "manual"}
    with live_stack(pg_admin_uri, tmp_path_factory.mktemp("airflow_ui"), extra_env=manual) as (stack, engine, _):
        admin = Api(stack.base_url, "admin")
        admin.client.patch(f"/dags/{RENT_DAG_ID}", json={"is_paused": False}).raise_for_status()
        with engine.begin() as conn:
            good = add_organization(conn, "Harbor View")
            bad = add_organization(conn, "Shaky Estates")
            leases = [
                add_lease(conn, good, date(2025, 1, 1), None, "1500.00"),
                add_lease(conn, good, date(2026, 11, 10), None, "3000.00"),
            ]
            add_charge(conn, leases[0], "60.00", date(2025, 1, 1))
            # A lease whose November invoice the app has already issued: the run skips it, so it is one of
            # the period's "other" invoices, not one the run drafted. (It ends in November: December has none.)
            issued_lease = add_lease(conn, good, date(2025, 1, 1), date(2026, 11, 30), "1650.00")
            add_invoice(conn, good, issued_lease, date(2026, 11, 1), date(2026, 11, 30), "1650.00")
            add_lease(conn, bad, date(2025, 1, 1), None, "900.00")
            broken = add_lease(conn, bad, date(2025, 1, 1), None, "-10.00")
        run = admin.trigger(RENT_DAG_ID, {"billing_month": "2026-11", "organization_ids": [good, bad]}).json()
        assert admin.wait(RENT_DAG_ID, run["dag_run_id"])["state"] == "success"
        yield {
            "stack": stack,
            "engine": engine,
            "admin": admin,
            "good": good,
            "bad": bad,
            "leases": leases,
            "broken": broken,
            "run_id": run["dag_run_id"],
        }


def plugin(stack, token: str | None = None) -> httpx.Client:
    """A client of the plugin's API; like every API client it sends the header that requests changing
    something need (tentman.ui.deps)."""
    headers = {CSRF_HEADER: CSRF_HEADER_VALUE, **({"Authorization": f"Bearer {token}"} if token else {})}
    return httpx.Client(base_url=f"{stack.base_url}/tentman", headers=headers, timeout=60)


def token(stack, user: str) -> str:
    return httpx.post(f"{stack.base_url}/auth/token", json={"username": user, "password": PASSWORDS[user]}).json()[
        "access_token"
    ]


def test_runs_with_their_counts_errors_amounts_and_links(ui):
    client = plugin(ui["stack"], token(ui["stack"], "admin"))
    page = client.get("/api/runs", params={"billing_month": "2026-11"}).json()
    assert page["total"] == 2
    rows = {r["organization_id"]: r for r in page["items"]}
    good, bad = rows[ui["good"]], rows[ui["bad"]]
    assert (good["status"], good["total_leases"], good["success_count"], good["skipped_count"]) == (
        "completed",
        3,
        2,
        1,
    )
    # What the run drafted: 1500 + 60, and Nov 10..30 = 21 days: 3000 * 21 / 30 = 2100.00
    assert (good["drafted_invoices"], good["drafted_amount"]) == (2, "3660.00")
    # Apart: the issued invoice it skipped.
    assert (good["other_invoices"], good["other_amount"], good["other_statuses"]) == (1, "1650.00", ["issued"])
    # The deprecated fields keep their meaning: every invoice of the period.
    assert (good["invoices"], good["amount_billed"]) == (3, "5310.00")
    assert (bad["drafted_invoices"], bad["drafted_amount"], bad["other_invoices"], bad["other_amount"]) == (
        1,
        "900.00",
        0,
        "0.00",
    )
    assert good["duration_seconds"] is not None and good["duration_seconds"] > 0
    assert good["task_url"].startswith(f"/dags/{RENT_DAG_ID}/runs/{ui['run_id']}/tasks/bill_organization/mapped/")
    assert bad["status"] == "completed_with_errors"
    assert bad["errors"] == [{"lease_id": ui["broken"], "error": "monthly_rent -10.00 is negative"}]
    assert client.get("/api/runs", params={"status": "completed_with_errors"}).json()["total"] == 1
    assert (
        client.get("/api/runs", params={"organization_id": ui["good"]}).json()["items"][0]["organization_name"]
        == "Harbor View"
    )
    assert client.get("/api/runs", params={"limit": 1}).json()["items"].__len__() == 1
    assert client.get("/api/runs", params={"billing_month": "2026-13"}).status_code == 422
    one = client.get(f"/api/runs/{good['id']}").json()
    assert one["id"] == good["id"] and (one["drafted_amount"], one["other_amount"]) == ("3660.00", "1650.00")
    assert client.get("/api/runs/999999").status_code == 404


BIGINT_PLUS_ONE = 2**63


@pytest.mark.parametrize(
    ("method", "path", "request_args", "field"),
    [
        ("get", "/api/runs", {"params": {"billing_month": "0999-01"}}, "billing_month"),
        ("get", "/api/runs", {"params": {"organization_id": BIGINT_PLUS_ONE}}, "organization_id"),
        ("get", "/api/runs", {"params": {"offset": BIGINT_PLUS_ONE}}, "offset"),
        ("get", f"/api/runs/{BIGINT_PLUS_ONE}", {}, "run_id"),
        ("get", f"/api/organizations/{BIGINT_PLUS_ONE}/billing-settings/audit", {}, "organization_id"),
        (
            "put",
            f"/api/organizations/{BIGINT_PLUS_ONE}/billing-settings",
            {"json": {"billing_hold": False}},
            "organization_id",
        ),
        (
            "post",
            "/api/preview",
            {"json": {"organization_ids": [BIGINT_PLUS_ONE], "billing_month": "2027-01"}},
            "organization_ids",
        ),
        ("post", "/api/preview", {"json": {"organization_ids": [1], "billing_month": "1899-12"}}, "billing_month"),
        (
            "post",
            "/api/preview",
            {"json": {"organization_ids": [1], "billing_month": "2027-01", "offset": BIGINT_PLUS_ONE}},
            "offset",
        ),
    ],
)
def test_values_beyond_their_bounds_are_a_422_naming_the_field_not_a_500(ui, method, path, request_args, field):
    """A year before 1900 passed the month's pattern and failed in parsing; ids and offsets beyond a
    bigint reached the database: both answered 500."""
    client = plugin(ui["stack"], token(ui["stack"], "admin"))
    response = getattr(client, method)(path, **request_args)
    assert response.status_code == 422, response.text
    assert field in {str(part) for error in response.json()["detail"] for part in error["loc"]}, response.text


SETTINGS = "/api/organizations/{org}/billing-settings"
MONTH = {"organization_ids": [1], "billing_month": "2027-01"}
NOT_JSON = {"content": b"\xff\xfe\x0e", "headers": {"Content-Type": "application/json"}}
JSON_AS_TEXT = {"content": b'{"billing_hold": false}', "headers": {"Content-Type": "text/plain"}}


@pytest.mark.parametrize(
    ("user", "method", "path", "request_args", "status", "says"),
    [
        # A boolean taken for the number 0.
        ("admin", "post", "/api/preview", {"json": {**MONTH, "offset": False}}, 422, "offset"),
        # A misspelt field, silently ignored.
        (
            "admin",
            "put",
            SETTINGS,
            {"json": {"billing_hold": False, "rent_schedule_dya": 20}},
            422,
            "rent_schedule_dya",
        ),
        ("admin", "post", "/api/preview", {"json": {**MONTH, "limts": 5}}, 422, "limts"),
        # A body that is not JSON: an undocumented 400, answered before the credentials were even looked at.
        ("admin", "put", SETTINGS, NOT_JSON, 422, "Invalid JSON"),
        ("viewer", "put", SETTINGS, NOT_JSON, 403, "needs the right to change Airflow Variables"),
        (None, "put", SETTINGS, NOT_JSON, 401, "Not authenticated"),
        ("viewer", "post", "/api/preview", NOT_JSON, 403, "Forbidden"),
        ("admin", "put", SETTINGS, JSON_AS_TEXT, 415, "expected application/json"),
        # A NUL character, which PostgreSQL's text cannot hold: a 500.
        ("admin", "put", SETTINGS, {"json": {"billing_hold": True, "hold_reason": "dispute\x00"}}, 422, "NUL"),
    ],
)
def test_what_the_fuzzing_found_is_refused_with_a_4xx(ui, user, method, path, request_args, status, says):
    """Requests answered wrongly until the API was fuzzed (by Schemathesis, below, and by hand beside it): each
    now refused with a 4xx saying why, and nothing written."""
    stack, engine = ui["stack"], ui["engine"]
    audit = f"SELECT count(*) FROM {BILLING_SETTINGS_AUDIT_TABLE}"
    with engine.connect() as conn:
        before = conn.execute(sa.text(audit)).scalar_one()
    client = plugin(stack, token(stack, user) if user else None)
    response = getattr(client, method)(path.format(org=ui["good"]), **request_args)
    assert (response.status_code, says in response.text) == (status, True), response.text
    with engine.connect() as conn:
        assert conn.execute(sa.text(audit)).scalar_one() == before


def test_trends(ui):
    client = plugin(ui["stack"], token(ui["stack"], "admin"))
    trends = client.get("/api/trends", params={"months": 24}).json()
    november = [m for m in trends["invoices_per_month"] if m["billing_period_start"] == "2026-11-01"]
    assert november == [  # every invoice of the month, the issued one included: 3660.00 + 900.00 + 1650.00
        {
            "billing_period_start": "2026-11-01",
            "invoice_type": "rent",
            "currency": "USD",
            "invoices": 4,
            "amount": "6210.00",
        }
    ]
    failures = [m for m in trends["failures_per_month"] if m["billing_period_start"] == "2026-11-01"]
    assert failures[0]["runs"] == 2 and failures[0]["failed_leases"] == 1 and failures[0]["failure_rate"] == 0.0
    assert {d["organization_id"] for d in trends["durations"]} >= {ui["good"], ui["bad"]}


def test_a_rerun_drafts_the_same_invoices_and_the_earlier_run_shows_them_as_another_runs(ui):
    """Drafted = linked to the run by invoice_run_id; a re-run links the drafts it finds unchanged."""
    admin, client = ui["admin"], plugin(ui["stack"], token(ui["stack"], "admin"))
    first = client.get("/api/runs", params={"billing_month": "2026-11", "organization_id": ui["good"]}).json()
    run = admin.trigger(RENT_DAG_ID, {"billing_month": "2026-11", "organization_ids": [ui["good"]]}).json()
    assert admin.wait(RENT_DAG_ID, run["dag_run_id"])["state"] == "success"
    rows = client.get("/api/runs", params={"billing_month": "2026-11", "organization_id": ui["good"]}).json()["items"]
    latest, earlier = rows
    assert earlier["id"] == first["items"][0]["id"] and latest["dag_run_id"] == run["dag_run_id"]
    assert (latest["drafted_invoices"], latest["drafted_amount"], latest["other_invoices"], latest["other_amount"]) == (
        2,
        "3660.00",
        1,
        "1650.00",
    )
    assert (earlier["drafted_invoices"], earlier["drafted_amount"]) == (0, "0.00")
    assert (earlier["other_invoices"], earlier["other_amount"], earlier["other_statuses"]) == (
        3,
        "5310.00",
        ["draft", "issued"],
    )


def test_every_endpoint_refuses_anonymous_and_unauthorized_calls(ui):
    stack = ui["stack"]
    anonymous = plugin(stack)
    for path in (
        "/api/runs",
        "/api/runs/1",
        "/api/organizations",
        "/api/trends",
        "/openapi.json",
        "/docs",
        "/ui/whoami",
    ):
        assert anonymous.get(path).status_code == 401, path
    assert anonymous.post("/api/preview", json={"organization_ids": [1], "billing_month": "2026-12"}).status_code == 401
    assert anonymous.get("/ui/", follow_redirects=False).status_code in (302, 303, 307)  # to Airflow's login
    forged = plugin(stack, "not-a-token")
    assert forged.get("/api/runs").status_code == 403
    viewer = plugin(stack, token(stack, "viewer"))
    assert viewer.get("/api/runs").status_code == 200  # viewers may read runs
    refused = viewer.post("/api/preview", json={"organization_ids": [ui["good"]], "billing_month": "2026-12"})
    assert refused.status_code == 403  # but not run the engine


def test_openapi_documents_the_endpoints(ui):
    schema = plugin(ui["stack"], token(ui["stack"], "admin")).get("/openapi.json").json()
    assert {"/api/runs", "/api/runs/{run_id}", "/api/organizations", "/api/trends", "/api/preview"} <= set(
        schema["paths"]
    )
    schemas = schema["components"]["schemas"]
    assert {"Run", "Trends", "RunReconciliation", "ReconciliationCheck"} <= set(schemas)
    assert "reconciliation" in schemas["Run"]["properties"]
    assert set(schemas["ReconciliationCheck"]["properties"]) == {"check", "ok", "violations", "ids", "note"}
    refusals = schema["paths"]["/api/preview"]["post"]["responses"]
    assert {"409", "429", "503"} <= set(refusals)
    assert "Previews are limited to 2 at a time" in refusals["429"]["description"]
    assert "Retry-After" in refusals["429"]["headers"]
    assert refusals["429"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_a_third_preview_at_once_is_a_429(ui):
    """Previews are limited to two at a time across every api-server process: the test holds both
    slots as two running previews would, through the same session advisory locks."""
    client = plugin(ui["stack"], token(ui["stack"], "admin"))
    body = {"organization_ids": [ui["good"]], "billing_month": "2026-11"}
    with preview_slot(ui["engine"]), preview_slot(ui["engine"]):
        refused = client.post("/api/preview", json=body)
    assert refused.status_code == 429, refused.text
    assert refused.headers["Retry-After"] == "5"
    assert refused.json() == {"detail": "previews are limited to 2 at a time and 2 are running; try again in 5 seconds"}
    assert client.post("/api/preview", json=body).status_code == 200  # a slot free again: it runs


def test_preview_equals_what_the_real_run_then_writes(ui):
    stack, engine, admin = ui["stack"], ui["engine"], ui["admin"]
    client = plugin(stack, token(stack, "admin"))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE leases SET monthly_rent = 1550.00 WHERE id = :l"), {"l": ui["leases"][0]})
    counts = (
        "SELECT (SELECT count(*) FROM invoices), (SELECT count(*) FROM invoice_lines), "
        "(SELECT count(*) FROM invoice_runs)"
    )
    with engine.connect() as conn:
        before = conn.execute(sa.text(counts)).one()
    body = {"organization_ids": [ui["good"]], "billing_month": "2026-12", "proration_method": "ThirtyDayMonth"}
    response = client.post("/api/preview", json=body)
    assert response.status_code == 200, response.text
    (org,) = response.json()["organizations"]
    with engine.connect() as conn:
        assert conn.execute(sa.text(counts)).one() == before  # the preview wrote nothing
    preview = {lease["lease_id"]: lease for lease in org["leases"]}
    assert {k: v["total"] for k, v in preview.items()} == {ui["leases"][0]: "1610.00", ui["leases"][1]: "3000.00"}

    run = admin.trigger(
        RENT_DAG_ID,
        {"billing_month": "2026-12", "organization_ids": [ui["good"]], "proration_method": "ThirtyDayMonth"},
    ).json()
    assert admin.wait(RENT_DAG_ID, run["dag_run_id"])["state"] == "success"
    with engine.connect() as conn:
        for lease_id, item in preview.items():
            invoice = conn.execute(
                sa.text("SELECT * FROM invoices WHERE lease_id = :l AND billing_period_start = '2026-12-01'"),
                {"l": lease_id},
            ).one()
            assert invoice.total == Decimal(item["total"])
            written = conn.execute(
                sa.text(
                    "SELECT line_type, source_id, description, amount FROM invoice_lines WHERE invoice_id = :i "
                    "ORDER BY line_type DESC, source_id"
                ),
                {"i": invoice.id},
            ).all()
            assert [(r.line_type, r.source_id, r.description, str(r.amount)) for r in written] == [
                (x["line_type"], x["source_id"], x["description"], x["amount"]) for x in item["lines"]
            ]


def test_the_page_is_served_to_a_logged_in_user(ui):
    stack = ui["stack"]
    cookies = {"_token": token(stack, "viewer")}
    page = httpx.get(f"{stack.base_url}/tentman/ui/", cookies=cookies, timeout=30)
    assert page.status_code == 200 and "<h1>Billing runs</h1>" in page.text
    runs = httpx.get(f"{stack.base_url}/tentman/api/runs", cookies=cookies, timeout=30)  # the page's own calls
    assert runs.status_code == 200 and runs.json()["total"] >= 2


def test_browser_sees_runs_charts_and_api_docs_with_no_network(ui):
    """Headless Chromium driven by Playwright, as a property manager would, with every request to
    another host than the stack's aborted (and recorded): an offline deployment."""
    artifacts = REPO_ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    base = ui["stack"].base_url
    host = urlsplit(base).netloc
    outside, loaded = [], []

    def only_the_stack(route):
        if urlsplit(route.request.url).netloc == host:
            loaded.append(urlsplit(route.request.url).path)
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with chromium(*OFFLINE_ARGS) as browser:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.route("**/*", only_the_stack)
        billing_runs = BillingRunsPage.log_in(context, base, "admin")
        billing_runs.wait_for_run("Shaky Estates")
        runs = billing_runs.runs_text()
        assert "Harbor View" in runs and "completed_with_errors" in runs
        assert f"lease {ui['broken']}: monthly_rent -10.00 is negative" in runs
        headers = billing_runs.runs_headers()
        assert "Drafted invoices" in headers and "Other invoices of the period" in headers
        # Harbor View's November run: drafted 2 for 3,660.00; its issued invoice apart, labelled.
        cells = billing_runs.run_cells("2026-11", "Harbor View")
        assert cells[9:12] == ["2", "3,660.00", "1 · 1,650.00 (issued, left alone by this run)"], cells

        # The charts: legends, axes with their units, month labels and value ticks.
        billing_runs.show_months(24, then_see="Rent (USD)")
        amount = billing_runs.chart_texts("chart-amount")
        assert {"Rent (USD)", "Utility (USD)", "Amount (USD)", "Billing month"} <= amount
        assert {"Rent", "Utility", "Invoices", "Billing month"} <= billing_runs.chart_texts("chart-invoices")
        failures = billing_runs.chart_texts("chart-failures")
        assert {"Rent", "Utility", "Organizations failed (%)", "0%", "100%"} <= failures
        durations = billing_runs.chart_texts("chart-durations")
        assert {"Rent", "Utility", "Seconds", f"Harbor View #{ui['good']}"} <= durations
        assert any(re.fullmatch(r"\d{4}-\d{2}", t) for t in amount)  # month labels
        assert any(re.fullmatch(r"[\d,]+", t) and t != "0" for t in amount)  # value ticks

        # Hover November's rent bar: the tooltip shows the month's exact amount (the API's decimal string).
        tooltip = billing_runs.hover_amount_bar("2026-11", until_tooltip_has="USD 6,210.00")
        assert "Rent (USD): USD 6,210.00 (4 invoices)" in tooltip
        billing_runs.screenshot(artifacts / "billing-runs.png")

        # The API docs: Swagger UI from the bundle renders every operation, with no network.
        paths = billing_runs.open_api_docs()
        assert {"/api/runs", "/api/runs/{run_id}", "/api/organizations", "/api/trends", "/api/preview"} <= paths
        billing_runs.screenshot(artifacts / "api-docs-offline.png", full_page=False)

        billing_runs.open_in_airflow_navigation(showing_run="Shaky Estates")
        billing_runs.screenshot(artifacts / "billing-runs-in-airflow.png", full_page=False)
    assert outside == []  # nothing was even attempted outside the stack
    assert {
        "/tentman/static/vendor/echarts/echarts.common.min.js",
        "/tentman/static/vendor/swagger-ui/swagger-ui-bundle.js",
        "/tentman/static/vendor/swagger-ui/swagger-ui.css",
    } <= set(loaded)
    assert (artifacts / "billing-runs.png").stat().st_size > 10_000


def test_the_page_shows_each_runs_reconciliation(ui):
    """✓ for a clean run, — for a run without a verdict, and ✗ with the failing checks and their ids once
    a run's data is broken and its period reconciled again (`reconcile_period`, as `tentman runs
    reconcile` does)."""
    stack, engine, admin = ui["stack"], ui["engine"], ui["admin"]
    client = plugin(stack, token(stack, "admin"))
    with engine.begin() as conn:
        org = add_organization(conn, "Audited <Arms>")  # tenant-controlled text, escaped by the page
        lost = add_lease(conn, org, date(2025, 1, 1), None, "1000.00")
        add_lease(conn, org, date(2025, 1, 1), None, "700.00")
        # A run row of an earlier release: no verdict.
        conn.execute(
            sa.text(
                "INSERT INTO invoice_runs (organization_id, run_type, billing_period_start, billing_period_end, "
                "status, errors, dag_id, dag_run_id, started_at, completed_at) VALUES (:org, 'monthly_rent', "
                "'2026-10-01', '2026-10-31', 'failed', '[]', :dag, 'before-reconciliation', now(), now())"
            ),
            {"org": org, "dag": RENT_DAG_ID},
        )
    run = admin.trigger(RENT_DAG_ID, {"billing_month": "2027-01", "organization_ids": [org]}).json()
    assert admin.wait(RENT_DAG_ID, run["dag_run_id"])["state"] == "success"
    january, october = client.get("/api/runs", params={"organization_id": org}).json()["items"]
    assert october["reconciliation"] is None
    assert january["reconciliation"]["ok"] is True
    assert [c["check"] for c in january["reconciliation"]["checks"]] == list(CHECKS_OF_RUN[RunType.MONTHLY_RENT])

    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        billing_runs = BillingRunsPage.log_in(context, stack.base_url, "admin")
        billing_runs.wait_for_run("Audited <Arms>")
        assert "Reconciled" in billing_runs.runs_headers()
        assert billing_runs.reconciliation("2027-01", "Audited <Arms>") == "✓"
        assert billing_runs.reconciliation("2026-11", "Harbor View") == "✓"
        assert billing_runs.reconciliation("2026-10", "Audited <Arms>") == "—"

        with engine.begin() as conn:  # a "fix" in the application that loses one lease's invoice
            conn.execute(sa.text("DELETE FROM invoices WHERE lease_id = :l"), {"l": lost})
        [verdict] = reconcile_period(
            engine, run_type=RunType.MONTHLY_RENT, period=BillingPeriod.for_month(2027, 1), organization_id=org
        )
        assert verdict.invoice_run_id == january["id"] and not verdict.ok
        rec = client.get(f"/api/runs/{january['id']}").json()["reconciliation"]
        assert rec["ok"] is False
        assert {c["check"]: c["ids"] for c in rec["checks"] if not c["ok"]} == {
            "rent_coverage": [lost],
            "counts": [january["id"]],
        }

        billing_runs.reload()
        billing_runs.wait_for_run("Audited <Arms>")
        assert billing_runs.reconciliation("2027-01", "Audited <Arms>") == "✗ 2 checks failed"
        assert billing_runs.reconciliation_details("2027-01", "Audited <Arms>") == [
            f"rent_coverage: 1 violation (lease {lost})",
            f"counts: 1 violation (invoice run {january['id']})",
        ]
        assert billing_runs.reconciliation("2026-11", "Harbor View") == "✓"  # other runs keep theirs
        artifacts = REPO_ROOT / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        billing_runs.screenshot(artifacts / "billing-runs-reconciliation.png")


# Fuzzed by a tool we did not write: Schemathesis reads the plugin's own openapi.json from this stack and sends
# what it generates from it to every operation (docs/testing.md "Fuzzing the API"). The command is the one the
# docs show, run as shown against this stack.


def fuzzing_command(stack, user: str) -> str:
    """docs/testing.md's Schemathesis command, for `user` and this stack."""
    text = (REPO_ROOT / "docs" / "testing.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```bash\n")[1:]]
    (block,) = [b for b in blocks if "schemathesis" in b]
    return (
        block.replace("http://127.0.0.1:8080", stack.base_url)
        .replace('"username": "admin", "password": "…"', f'"username": "{user}", "password": "{PASSWORDS[user]}"')
        .replace("schemathesis-admin.har", f"schemathesis-{user}.har")
    )


@pytest.fixture
def settings_restored(ui):
    """The organizations' billing settings as they were before the test (an admin's fuzzing changes them)."""
    with ui["engine"].connect() as conn:
        before = [dict(r._mapping) for r in conn.execute(sa.text(f"SELECT * FROM {BILLING_SETTINGS_TABLE}"))]
    yield
    with ui["engine"].begin() as conn:
        conn.execute(sa.text(f"DELETE FROM {BILLING_SETTINGS_TABLE}"))
        if before:
            columns = ", ".join(before[0])
            values = ", ".join(f":{c}" for c in before[0])
            conn.execute(sa.text(f"INSERT INTO {BILLING_SETTINGS_TABLE} ({columns}) VALUES ({values})"), before)


@pytest.mark.parametrize("user", ["admin", "viewer"])
def test_schemathesis_finds_no_error_and_every_answer_as_documented(ui, user, settings_restored):
    """No 5xx; every status, content type and body as the document says; invalid values refused, valid ones
    not; no credentials refused. Then, from the requests it sent (its HAR file): the admin got through to
    every operation, and every request of the viewer to an operation that changes something was refused."""
    stack = ui["stack"]
    out = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", fuzzing_command(stack, user)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    har = json.loads((REPO_ROOT / "test-artifacts" / f"schemathesis-{user}.har").read_text())
    document = plugin(stack, token(stack, user)).get("/openapi.json").json()
    answers = defaultdict(set)  # (method, path template): the statuses
    for entry in har["log"]["entries"]:
        method, path = entry["request"]["method"], urlsplit(entry["request"]["url"]).path.removeprefix("/tentman")
        for template in document["paths"]:
            if method.lower() in document["paths"][template] and re.fullmatch(
                re.sub(r"\\{\w+\\}", "[^/]+", re.escape(template)), path
            ):
                answers[(method, template)].add(entry["response"]["status"])
    operations = {(method.upper(), path) for path, methods in document["paths"].items() for method in methods}
    assert set(answers) == operations  # every operation was called
    changing = {operation for operation in operations if operation[0] not in SAFE_METHODS}
    assert changing == {("POST", "/api/preview"), ("PUT", "/api/organizations/{organization_id}/billing-settings")}
    if user == "admin":
        assert all(any(200 <= status < 300 for status in answers[operation]) for operation in operations), answers
    else:
        assert all(answers[operation] == {403} for operation in changing), answers
        assert all(200 in answers[operation] for operation in operations - changing), answers
