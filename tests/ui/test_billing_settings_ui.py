"""Per-organization billing settings on live Airflow: the API's permissions and refusals, the page's form, and
a following run that honours what the form saved."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import httpx
import pytest
import sqlalchemy as sa

from support.factories import add_lease, add_organization
from support.live import PASSWORDS, Api, live_stack, poll
from support.pages import BillingRunsPage, chromium
from tentman.names import BILLING_SETTINGS_AUDIT_TABLE, BILLING_SETTINGS_TABLE, RENT_DAG_ID, UTILITY_DAG_ID
from tentman_dev.local import REPO_ROOT

pytestmark = pytest.mark.live

HOLD = "migration from the old system until March"


@pytest.fixture(scope="module")
def ui(pg_admin_uri, tmp_path_factory):
    # No schedules: a catch-up run would bill the organizations meanwhile.
    manual = {"TENTMAN_RENT_SCHEDULE": "manual", "TENTMAN_UTILITY_SCHEDULE": "manual"}
    with live_stack(pg_admin_uri, tmp_path_factory.mktemp("airflow_settings"), extra_env=manual) as (
        stack,
        engine,
        _,
    ):
        admin = Api(stack.base_url, "admin")
        for dag_id in (RENT_DAG_ID, UTILITY_DAG_ID):
            admin.client.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
        with engine.begin() as conn:
            api_org = add_organization(conn, "Api Estates")
            add_lease(conn, api_org, date(2025, 1, 1), None, "700.00")
            api_lease = add_lease(conn, api_org, date(2027, 1, 16), None, "3100.00")  # 16 of January's 31 days
            harbor = add_organization(conn, "Harbor View")
            harbor_lease = add_lease(conn, harbor, date(2026, 12, 10), None, "3000.00")  # 22 of December's 31 days
            dune = add_organization(conn, "Dune Flats")
            dune_lease = add_lease(conn, dune, date(2025, 1, 1), None, "1200.00")
        yield {
            "stack": stack,
            "engine": engine,
            "admin": admin,
            "api_org": api_org,
            "api_lease": api_lease,
            "harbor": harbor,
            "harbor_lease": harbor_lease,
            "dune": dune,
            "dune_lease": dune_lease,
        }


def token(stack, user: str) -> str:
    response = httpx.post(f"{stack.base_url}/auth/token", json={"username": user, "password": PASSWORDS[user]})
    return response.json()["access_token"]


def plugin(stack, user: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token(stack, user)}"} if user else {}
    return httpx.Client(base_url=f"{stack.base_url}/tentman", headers=headers, timeout=60)


def written(engine, organization_id: int) -> tuple:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                f"SELECT (SELECT count(*) FROM {BILLING_SETTINGS_TABLE} WHERE organization_id = :o), "
                f"(SELECT count(*) FROM {BILLING_SETTINGS_AUDIT_TABLE} WHERE organization_id = :o)"
            ),
            {"o": organization_id},
        ).one()


def test_admin_changes_the_settings_and_the_change_is_audited(ui):
    admin, org = plugin(ui["stack"], "admin"), ui["api_org"]
    assert admin.get("/ui/whoami").json() == {"user": "admin", "can_edit_billing_settings": True}
    body = {"billing_hold": True, "hold_reason": "dispute", "proration_method": "NoProration"}
    response = admin.put(f"/api/organizations/{org}/billing-settings", json=body)
    assert response.status_code == 200, response.text
    saved = response.json()
    assert (saved["billing_hold"], saved["hold_reason"], saved["proration_method"], saved["updated_by"]) == (
        True,
        "dispute",
        "NoProration",
        "admin",
    )
    assert saved["changed"] is True
    assert admin.put(f"/api/organizations/{org}/billing-settings", json=body).json()["changed"] is False
    with ui["engine"].connect() as conn:
        row = conn.execute(
            sa.text(f"SELECT * FROM {BILLING_SETTINGS_TABLE} WHERE organization_id = :o"),
            {"o": org},
        ).one()
        audit = conn.execute(
            sa.text(f"SELECT * FROM {BILLING_SETTINGS_AUDIT_TABLE} WHERE organization_id = :o"),
            {"o": org},
        ).all()
    assert (row.billing_hold, row.hold_reason, row.proration_method, row.updated_by) == (
        True,
        "dispute",
        "NoProration",
        "admin",
    )
    assert [
        (a.changed_by, a.old_billing_hold, a.new_billing_hold, a.new_hold_reason, a.old_proration_method) for a in audit
    ] == [("admin", False, True, "dispute", None)]
    assert [
        a["new_proration_method"] for a in admin.get(f"/api/organizations/{org}/billing-settings/audit").json()
    ] == ["NoProration"]
    listed = {o["organization_id"]: o for o in admin.get("/api/organizations/billing-settings").json()}
    assert listed[org]["billing_hold"] is True and listed[org]["effective_proration_method"] == "NoProration"
    assert listed[ui["harbor"]]["effective_proration_method"] == "ActualDaysInMonth"
    assert listed[ui["harbor"]]["updated_at"] is None and listed[ui["harbor"]]["last_rent_run"] is None
    # Back to the defaults, for the page's run below.
    cleared = admin.put(f"/api/organizations/{org}/billing-settings", json={"billing_hold": False})
    assert cleared.status_code == 200 and cleared.json()["proration_method"] is None


def test_a_viewer_sees_the_settings_and_cannot_change_them(ui):
    stack, org = ui["stack"], ui["api_org"]
    viewer = plugin(stack, "viewer")
    assert viewer.get("/ui/whoami").json() == {"user": "viewer", "can_edit_billing_settings": False}
    assert viewer.get("/api/organizations/billing-settings").status_code == 200
    before = written(ui["engine"], org)
    refused = viewer.put(f"/api/organizations/{org}/billing-settings", json={"billing_hold": True, "hold_reason": "x"})
    assert refused.status_code == 403
    assert "needs the right to change Airflow Variables" in refused.json()["detail"]
    anonymous = plugin(stack, None)
    assert anonymous.put(f"/api/organizations/{org}/billing-settings", json={"billing_hold": False}).status_code == 401
    assert anonymous.get("/api/organizations/billing-settings").status_code == 401
    assert written(ui["engine"], org) == before


@pytest.mark.parametrize(
    "path_org, body, status, message",
    [
        (
            None,
            {"billing_hold": False, "proration_method": "Daily"},
            422,
            "proration_method 'Daily' is not supported; expected one of ActualDaysInMonth, ThirtyDayMonth, Annual365, "
            "NoProration, or null for the platform default (ActualDaysInMonth)",
        ),
        (
            None,
            {"billing_hold": True, "hold_reason": "  "},
            422,
            "hold_reason '  ' is empty; a billing hold needs a reason",
        ),
        (None, {"billing_hold": True}, 422, "hold_reason None is empty; a billing hold needs a reason"),
        (424242, {"billing_hold": False}, 404, "organization 424242 does not exist"),
    ],
)
def test_bad_values_are_refused_naming_them_and_nothing_is_written(ui, path_org, body, status, message):
    admin, org = plugin(ui["stack"], "admin"), path_org or ui["api_org"]
    before = written(ui["engine"], ui["api_org"])
    response = admin.put(f"/api/organizations/{org}/billing-settings", json=body)
    assert response.status_code == status
    assert message in response.json()["detail"]
    assert written(ui["engine"], ui["api_org"]) == before
    not_a_bool = admin.put(f"/api/organizations/{org}/billing-settings", json={"billing_hold": "yes"})
    assert not_a_bool.status_code == 422 and not_a_bool.json()["detail"][0]["input"] == "yes"


def test_the_trigger_form_offers_each_organizations_own_method_by_default(ui):
    admin = ui["admin"]
    params = admin.client.get(f"/dags/{RENT_DAG_ID}/details").json()["params"]["proration_method"]
    assert params["value"] is None
    assert params["schema"]["type"] == ["null", "string"]
    assert params["schema"]["enum"] == [None, "ActualDaysInMonth", "ThirtyDayMonth", "Annual365", "NoProration"]
    assert params["schema"]["values_display"]["null"] == "Each organization's own (else ActualDaysInMonth)"
    refused = admin.trigger(RENT_DAG_ID, {"billing_month": "2027-01", "proration_method": "Daily"})
    assert refused.status_code == 400 and "Invalid input for param proration_method" in refused.json()["detail"]


def test_the_preview_without_a_method_uses_the_organizations_own(ui):
    admin, org = plugin(ui["stack"], "admin"), ui["api_org"]
    own = {"billing_hold": False, "proration_method": "ThirtyDayMonth"}
    assert admin.put(f"/api/organizations/{org}/billing-settings", json=own).status_code == 200
    try:

        def preview(**method):
            body = {"organization_ids": [org], "billing_month": "2027-01", **method}
            response = admin.post("/api/preview", json=body)
            assert response.status_code == 200, response.text
            (organization,) = response.json()["organizations"]
            return {lease["lease_id"]: lease["total"] for lease in organization["leases"]}[ui["api_lease"]]

        assert preview() == "1653.33"  # 3100 * 16 / 30: the organization's ThirtyDayMonth
        assert preview(proration_method=None) == "1653.33"
        assert preview(proration_method="ActualDaysInMonth") == "1600.00"  # 3100 * 16 / 31: the request's wins
    finally:
        admin.put(f"/api/organizations/{org}/billing-settings", json={"billing_hold": False})


def _docs_block(containing: str) -> str:
    """The ```bash block of docs/operations.md that contains `containing`."""
    text = (REPO_ROOT / "docs" / "operations.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```bash\n")[1:]]
    (block,) = [b for b in blocks if containing in b]
    return block


def test_the_documented_command_changes_the_settings(ui):
    """The curl commands of docs/operations.md, run as shown against this Airflow, for one of its organizations."""
    import json
    import subprocess

    org = ui["api_org"]
    command = (
        _docs_block("/billing-settings")
        .replace("http://127.0.0.1:8080", ui["stack"].base_url)
        .replace('"password": "…"', f'"password": "{PASSWORDS["admin"]}"')
        .replace("/organizations/3/", f"/organizations/{org}/")
    )
    try:
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", command], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        saved = json.loads(out.stdout)
        assert (saved["billing_hold"], saved["hold_reason"], saved["proration_method"], saved["updated_by"]) == (
            True,
            HOLD,
            "ThirtyDayMonth",
            "admin",
        )
        with ui["engine"].connect() as conn:
            assert (
                conn.execute(
                    sa.text(f"SELECT hold_reason FROM {BILLING_SETTINGS_TABLE} WHERE organization_id = :o"),
                    {"o": org},
                ).scalar_one()
                == HOLD
            )
    finally:
        plugin(ui["stack"], "admin").put(f"/api/organizations/{org}/billing-settings", json={"billing_hold": False})


def _log_in(browser, base: str, user: str) -> BillingRunsPage:
    billing_runs = BillingRunsPage.log_in(browser.new_context(viewport={"width": 1400, "height": 1100}), base, user)
    billing_runs.organizations.wait_for("Harbor View")
    return billing_runs


def test_browser_admin_edits_viewer_cannot_and_the_next_run_honours_it(ui):
    """Headless Chromium driven by Playwright: an admin holds one organization and sets another's
    method in the form, a viewer sees them and may not change them, and a run from Airflow's own
    trigger form bills accordingly."""
    artifacts = REPO_ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    base, engine, harbor, dune, admin = ui["stack"].base_url, ui["engine"], ui["harbor"], ui["dune"], ui["admin"]
    with chromium() as browser:
        billing_runs = _log_in(browser, base, "admin")
        organizations = billing_runs.organizations
        organizations.wait_for_form()
        # A form that would hold without a reason is refused, naming the value; nothing is written.
        organizations.fill(dune, hold=True, reason="")
        organizations.submit(then_see=".error-box >> text=hold_reason '' is empty")
        assert written(engine, dune) == (0, 0)

        organizations.save(dune, hold=True, reason=HOLD)
        organizations.save(harbor, hold=False, method="ThirtyDayMonth")
        organizations.wait_for_row(harbor, "ThirtyDayMonth")
        row = organizations.row_text(dune)
        assert "on hold" in row and HOLD in row and "admin" in row

        viewer = _log_in(browser, base, "viewer")
        viewer.organizations.wait_for_read_only_note()
        assert not viewer.organizations.has_form()
        assert HOLD in viewer.organizations.row_text(dune)
        # The same request the form sends, from the viewer's session: refused.
        assert viewer.organizations.put_from_this_session(dune, {"billing_hold": False}) == 403
        viewer.screenshot(artifacts / "organizations-viewer.png")

        # A run for all organizations, as a schedule or backfill would start it, from Airflow's own
        # trigger form: its proration method is left at "each organization's own".
        billing_runs.trigger_dag_with_defaults(
            RENT_DAG_ID, "2026-12", defaults_shown="Each organization's own (else ActualDaysInMonth)"
        )
        poll(lambda: admin.client.get(f"/dags/{RENT_DAG_ID}/dagRuns").json()["total_entries"] == 1, 60, what="run")
        (run,) = admin.client.get(f"/dags/{RENT_DAG_ID}/dagRuns").json()["dag_runs"]
        assert run["conf"]["proration_method"] is None and run["conf"]["organization_ids"] is None
        assert admin.wait(RENT_DAG_ID, run["dag_run_id"])["state"] == "success"
        billing_runs.reload()
        organizations.wait_for_row(dune, "on_hold")
        billing_runs.wait_for_run(f"billing hold: {HOLD}", timeout=30_000)
        billing_runs.screenshot(artifacts / "organizations-admin.png")

    with engine.connect() as conn:
        rows = {
            r.organization_id: r
            for r in conn.execute(sa.text("SELECT * FROM invoice_runs WHERE dag_run_id = :r"), {"r": run["dag_run_id"]})
        }
        totals = dict(
            conn.execute(
                sa.text("SELECT lease_id, total FROM invoices WHERE billing_period_start = '2026-12-01'")
            ).all()
        )
        audit = conn.execute(
            sa.text(
                f"SELECT changed_by, new_billing_hold FROM {BILLING_SETTINGS_AUDIT_TABLE} WHERE organization_id = :o"
            ),
            {"o": dune},
        ).all()
    assert (rows[dune].status, rows[dune].total_leases, rows[dune].errors) == (
        "on_hold",
        0,
        [{"lease_id": None, "error": f"billing hold: {HOLD}"}],
    )
    assert ui["dune_lease"] not in totals
    # 3000 * 22 / 30 = 2200.00 by Harbor View's own ThirtyDayMonth (ActualDaysInMonth would give 2129.03).
    assert totals[ui["harbor_lease"]] == Decimal("2200.00")
    assert (rows[harbor].status, rows[harbor].proration_method) == ("completed", "ThirtyDayMonth")
    assert audit == [("admin", True)]
