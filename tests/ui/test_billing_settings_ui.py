"""Per-organization billing settings on live Airflow: the API's permissions and refusals, the page's form, and
a following run that honours what the form saved; an organization's own schedule, its next runs and the
schedule of the next days (API and page)."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import httpx
import pytest
import sqlalchemy as sa

from support.factories import add_lease, add_organization
from support.live import PASSWORDS, Api, live_stack, poll
from support.pages import BillingRunsPage, chromium
from tentman.names import BILLING_SETTINGS_AUDIT_TABLE, BILLING_SETTINGS_TABLE, RENT_DAG_ID, UTILITY_DAG_ID
from tentman.ui.deps import CSRF_HEADER, CSRF_HEADER_VALUE
from tentman_dev.local import REPO_ROOT

pytestmark = pytest.mark.live

HOLD = "migration from the old system until March"


# The utility DAG's cron in this stack: the schedule lists its ticks. The DAG stays paused, so it runs none.
UTILITY_CRON = "0 3 * * 1"
NEW_YORK = "America/New_York"


@pytest.fixture(scope="module")
def ui(pg_admin_uri, tmp_path_factory):
    # No scheduled run: a catch-up run would bill the organizations meanwhile. The rent DAG has no schedule
    # (and is unpaused: the browser test triggers it); the utility DAG has one, for /api/schedule's default
    # ticks, and stays paused like the organization schedules DAG.
    env = {
        "TENTMAN_RENT_SCHEDULE": "manual",
        "TENTMAN_UTILITY_SCHEDULE": UTILITY_CRON,
        "TENTMAN_SCHEDULES_TICK": "manual",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    }
    with live_stack(pg_admin_uri, tmp_path_factory.mktemp("airflow_settings"), extra_env=env) as (
        stack,
        engine,
        _,
    ):
        admin = Api(stack.base_url, "admin")
        admin.client.patch(f"/dags/{RENT_DAG_ID}", json={"is_paused": False}).raise_for_status()
        with engine.begin() as conn:
            api_org = add_organization(conn, "Api Estates")
            add_lease(conn, api_org, date(2025, 1, 1), None, "700.00")
            api_lease = add_lease(conn, api_org, date(2027, 1, 16), None, "3100.00")  # 16 of January's 31 days
            harbor = add_organization(conn, "Harbor View")
            harbor_lease = add_lease(conn, harbor, date(2026, 12, 10), None, "3000.00")  # 22 of December's 31 days
            dune = add_organization(conn, "Dune Flats")
            dune_lease = add_lease(conn, dune, date(2025, 1, 1), None, "1200.00")
            lakeside = add_organization(conn, "Lakeside Lofts")  # the schedule tests' organization
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
            "lakeside": lakeside,
        }


def token(stack, user: str) -> str:
    response = httpx.post(f"{stack.base_url}/auth/token", json={"username": user, "password": PASSWORDS[user]})
    return response.json()["access_token"]


def plugin(stack, user: str | None) -> httpx.Client:
    """A client of the plugin's API; like every API client it sends the header that requests changing
    something need (tentman.ui.deps)."""
    headers = {CSRF_HEADER: CSRF_HEADER_VALUE, **({"Authorization": f"Bearer {token(stack, user)}"} if user else {})}
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


# Cross-site request forgery: another site's page, open in the browser of a signed-in admin, sends a request with
# the admin's session cookie. A form can post url-encoded fields, or (enctype text/plain) a body that reads as JSON;
# the browser adds Origin and, in current browsers, Sec-Fetch-Site, and no custom header.
EVIL = "https://billing-login.example"
FORGED_FORMS = [
    ("application/x-www-form-urlencoded", "billing_hold=true&hold_reason=forged"),
    ("text/plain", '{"billing_hold": true, "hold_reason": "forged", "x": "="}'),
]


@pytest.mark.parametrize("content_type, body", FORGED_FORMS)
@pytest.mark.parametrize(
    "browser_headers, says",
    [
        ({"Origin": EVIL, "Sec-Fetch-Site": "cross-site"}, "comes from another site (Sec-Fetch-Site: cross-site)"),
        ({"Origin": EVIL}, f"comes from the origin '{EVIL}', not from this Airflow"),  # a browser without Sec-Fetch-*
        ({}, "needs the header 'X-Requested-By: tentman-billing' (this one has none)"),  # one that sends no Origin
    ],
)
def test_a_cross_site_form_post_is_refused_and_changes_nothing(ui, content_type, body, browser_headers, says):
    stack, org = ui["stack"], ui["dune"]
    session = {"_token": token(stack, "admin")}
    before = written(ui["engine"], org)
    for path in (f"/tentman/api/organizations/{org}/billing-settings", "/tentman/api/preview"):
        method = "PUT" if "billing-settings" in path else "POST"
        response = httpx.request(
            method,
            f"{stack.base_url}{path}",
            cookies=session,
            headers={"Content-Type": content_type, **browser_headers},
            content=body,
            timeout=30,
        )
        assert response.status_code == 403, response.text
        assert says in response.json()["detail"]
    assert written(ui["engine"], org) == before


@pytest.mark.parametrize(
    "headers, says",
    [
        ({"Origin": EVIL}, f"comes from the origin '{EVIL}'"),
        ({"Origin": "null"}, "comes from the origin 'null'"),  # a sandboxed frame, a data: URL
        ({"Sec-Fetch-Site": "same-site"}, "Sec-Fetch-Site: same-site"),  # a sibling host of the same site
        ({CSRF_HEADER: "another-app"}, "not 'another-app'"),
    ],
)
def test_a_request_from_a_foreign_origin_or_without_the_header_is_refused(ui, headers, says):
    """Even with the admin's token and the header: a browser names the page's origin, which is not this Airflow."""
    stack, org = ui["stack"], ui["dune"]
    admin = plugin(stack, "admin")
    before = written(ui["engine"], org)
    refused = admin.put(
        f"/api/organizations/{org}/billing-settings", json={"billing_hold": True, "hold_reason": "x"}, headers=headers
    )
    assert refused.status_code == 403 and says in refused.json()["detail"], refused.text
    assert written(ui["engine"], org) == before


def test_a_request_from_this_airflow_is_let_through(ui):
    """What the page's own requests carry (its origin, same-origin); and a bearer client that sends the header."""
    stack, org = ui["stack"], ui["dune"]
    admin = plugin(stack, "admin")
    own = {"Origin": stack.base_url, "Sec-Fetch-Site": "same-origin"}
    response = admin.put(f"/api/organizations/{org}/billing-settings", json={"billing_hold": False}, headers=own)
    assert response.status_code == 200, response.text
    assert admin.put(f"/api/organizations/{org}/billing-settings", json={"billing_hold": False}).status_code == 200


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
    org = ui["api_org"]
    command = (
        _docs_block('"proration_method": "ThirtyDayMonth"')
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


# An organization's own schedule, its next runs, and the schedule of the next days.

OWN_SCHEDULE = {
    "timezone": NEW_YORK,
    "rent_schedule_day": 20,
    "rent_schedule_hour": 6,
    "utility_schedule_weekday": 3,
    "utility_schedule_hour": 7,
}
DEFAULT_SCHEDULE = dict.fromkeys(OWN_SCHEDULE)


def at(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def reset_schedule(ui, organization_id: int) -> None:
    response = plugin(ui["stack"], "admin").put(
        f"/api/organizations/{organization_id}/billing-settings", json={"billing_hold": False, **DEFAULT_SCHEDULE}
    )
    assert response.status_code == 200, response.text


def assert_local(run: dict, *, hour: int, day: int | None = None, weekday: int | None = None) -> datetime:
    """The run's local time is that hour (and day or ISO weekday) in New York, and the same instant as its UTC time."""
    local, utc = at(run["local_due_at"]), at(run["due_at"])
    assert utc.utcoffset() == timedelta(0) and local == utc
    assert local.utcoffset() == utc.astimezone(ZoneInfo(NEW_YORK)).utcoffset()  # -05:00, or -04:00 in summer
    assert (local.hour, local.minute) == (hour, 0)
    assert day is None or local.day == day
    assert weekday is None or local.isoweekday() == weekday
    return local


def test_admin_sets_a_new_york_schedule_and_sees_its_next_runs_and_the_audit(ui):
    admin, org, harbor = plugin(ui["stack"], "admin"), ui["lakeside"], ui["harbor"]
    try:
        before = datetime.now(UTC)
        response = admin.put(f"/api/organizations/{org}/billing-settings", json={"billing_hold": False, **OWN_SCHEDULE})
        assert response.status_code == 200, response.text
        saved = response.json()
        assert {name: saved[name] for name in OWN_SCHEDULE} == OWN_SCHEDULE
        assert (saved["changed"], saved["updated_by"]) == (True, "admin")

        listed = {o["organization_id"]: o for o in admin.get("/api/organizations/billing-settings").json()}
        lakeside = listed[org]
        assert {name: lakeside[name] for name in OWN_SCHEDULE} == OWN_SCHEDULE
        rent, utility = lakeside["next_rent_run"], lakeside["next_utility_run"]
        assert rent["schedule"] == "day 20 at 06:00 America/New_York"
        local = assert_local(rent, hour=6, day=20)
        assert before < at(rent["due_at"]) <= before + timedelta(days=31)
        following = date(local.year + local.month // 12, local.month % 12 + 1, 1)
        assert rent["billing_period"] == f"{following:%Y-%m}"  # rent drafts the month after its day
        assert utility["schedule"] == "Wednesday at 07:00 America/New_York"
        local = assert_local(utility, hour=7, weekday=3)
        assert before < at(utility["due_at"]) <= before + timedelta(days=7)
        assert utility["billing_period"] == f"{local:%Y-%m}"

        # Harbor View has no schedule of its own: its next utility run is the default cron's next tick
        # (Monday 03:00 UTC, shown in UTC, its zone); rent has no default schedule here (manual).
        default = listed[harbor]
        assert default["timezone"] is None and default["next_rent_run"] is None
        tick = default["next_utility_run"]
        assert tick["schedule"] == "default" and tick["local_due_at"] == tick["due_at"]
        due = at(tick["due_at"])
        assert (due.isoweekday(), due.hour, due.minute) == (1, 3, 0) and before < due <= before + timedelta(days=7)
        assert tick["billing_period"] == f"{due:%Y-%m}"

        # A field left out keeps its stored value: the hour alone, then the hold switch alone.
        moved = admin.put(
            f"/api/organizations/{org}/billing-settings", json={"billing_hold": False, "rent_schedule_hour": 7}
        )
        assert moved.status_code == 200, moved.text
        assert {name: moved.json()[name] for name in OWN_SCHEDULE} == {**OWN_SCHEDULE, "rent_schedule_hour": 7}
        unchanged = admin.put(f"/api/organizations/{org}/billing-settings", json={"billing_hold": False})
        assert unchanged.json()["changed"] is False and unchanged.json()["rent_schedule_hour"] == 7

        # Clearing one of a stored pair is refused, naming it: both or neither.
        half = admin.put(
            f"/api/organizations/{org}/billing-settings", json={"billing_hold": False, "rent_schedule_hour": None}
        )
        assert half.status_code == 422
        assert half.json()["detail"].startswith("rent_schedule_day is 20 but rent_schedule_hour is null; expected both")

        audit = admin.get(f"/api/organizations/{org}/billing-settings/audit").json()
        assert [(a["changed_by"], a["old_rent_schedule_hour"], a["new_rent_schedule_hour"]) for a in audit] == [
            ("admin", 6, 7),
            ("admin", None, 6),
        ]
        first = audit[-1]
        assert {name: first[f"new_{name}"] for name in OWN_SCHEDULE} == OWN_SCHEDULE
        assert {name: first[f"old_{name}"] for name in OWN_SCHEDULE} == DEFAULT_SCHEDULE
        assert (audit[0]["old_timezone"], audit[0]["new_timezone"]) == (NEW_YORK, NEW_YORK)
        assert all(before - timedelta(seconds=5) < at(a["changed_at"]) < datetime.now(UTC) for a in audit)
        with ui["engine"].connect() as conn:
            stored = conn.execute(
                sa.text(
                    f"SELECT old_timezone, new_timezone, new_utility_schedule_weekday, changed_by "
                    f"FROM {BILLING_SETTINGS_AUDIT_TABLE} WHERE organization_id = :o ORDER BY id"
                ),
                {"o": org},
            ).all()
        assert [tuple(r) for r in stored] == [(None, NEW_YORK, 3, "admin"), (NEW_YORK, NEW_YORK, 3, "admin")]
    finally:
        reset_schedule(ui, org)


@pytest.mark.parametrize(
    "body, message",
    [
        (
            {"rent_schedule_day": 20},
            "rent_schedule_day is 20 but rent_schedule_hour is null; expected both set (the organization's own "
            "schedule) or both null (the default schedule)",
        ),
        (
            {"utility_schedule_hour": 7},
            "utility_schedule_hour is 7 but utility_schedule_weekday is null; expected both set",
        ),
        (
            {"rent_schedule_day": 29, "rent_schedule_hour": 6},
            "rent_schedule_day 29 is not valid; expected a day of the month from 1 to 28, or null",
        ),
        (
            {"rent_schedule_day": 20, "rent_schedule_hour": 24},
            "rent_schedule_hour 24 is not valid; expected an hour from 0 to 23, or null",
        ),
        (
            {"utility_schedule_weekday": 1, "utility_schedule_hour": 24},
            "utility_schedule_hour 24 is not valid; expected an hour from 0 to 23, or null",
        ),
        (
            {"timezone": "Mars/Olympus_Mons"},
            "timezone 'Mars/Olympus_Mons' is not a known time zone; expected an IANA name such as 'America/New_York'",
        ),
    ],
)
def test_a_bad_schedule_is_refused_naming_field_value_and_range_and_nothing_is_written(ui, body, message):
    admin, org = plugin(ui["stack"], "admin"), ui["lakeside"]
    before = written(ui["engine"], org)
    response = admin.put(f"/api/organizations/{org}/billing-settings", json={"billing_hold": False, **body})
    assert response.status_code == 422
    assert message in response.json()["detail"]
    assert written(ui["engine"], org) == before


@pytest.mark.parametrize("days", [0, 91])
def test_the_schedule_refuses_days_out_of_range_naming_it(ui, days):
    response = plugin(ui["stack"], "admin").get("/api/schedule", params={"days": days})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert (error["loc"], error["input"]) == (["query", "days"], str(days))
    assert error["msg"] == (
        "Input should be greater than or equal to 1" if days == 0 else "Input should be less than or equal to 90"
    )


def test_a_viewer_reads_the_schedule_and_cannot_set_one(ui):
    stack, org = ui["stack"], ui["lakeside"]
    viewer = plugin(stack, "viewer")
    before = written(ui["engine"], org)
    refused = viewer.put(f"/api/organizations/{org}/billing-settings", json={"billing_hold": False, **OWN_SCHEDULE})
    assert refused.status_code == 403
    assert written(ui["engine"], org) == before
    assert viewer.get("/api/schedule").status_code == 200
    assert plugin(stack, None).get("/api/schedule").status_code == 401


def default_organizations(engine) -> int:
    """What a default utility run bills now, counted here on its own: active, no own utility schedule, no hold."""
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                f"SELECT count(*) FROM organizations o WHERE o.is_active AND NOT EXISTS (SELECT FROM "
                f"{BILLING_SETTINGS_TABLE} s WHERE s.organization_id = o.id "
                "AND (s.billing_hold OR s.utility_schedule_weekday IS NOT NULL))"
            )
        ).scalar_one()


def test_the_schedule_lists_default_ticks_with_counts_and_an_organizations_own_due_times(ui):
    admin, org, engine = plugin(ui["stack"], "admin"), ui["lakeside"], ui["engine"]
    everyone = default_organizations(engine)
    try:
        assert (
            admin.put(
                f"/api/organizations/{org}/billing-settings", json={"billing_hold": False, **OWN_SCHEDULE}
            ).status_code
            == 200
        )
        schedule = admin.get("/api/schedule").json()  # days=30 by default
        start, end = at(schedule["start"]), at(schedule["end"])
        assert (schedule["days"], end - start) == (30, timedelta(days=30))
        assert schedule["default_schedules"] == {"monthly_rent": None, "utility": UTILITY_CRON}
        runs = schedule["runs"]
        assert [at(r["due_at"]) for r in runs] == sorted(at(r["due_at"]) for r in runs)

        ticks = [r for r in runs if r["source"] == "default"]
        assert {(r["run_type"], r["cron"]) for r in ticks} == {("utility", UTILITY_CRON)}  # rent: manual, no ticks
        due = [at(r["due_at"]) for r in ticks]
        assert len(due) in (4, 5) and all((d.isoweekday(), d.hour, d.minute) == (1, 3, 0) for d in due)
        assert start < due[0] <= start + timedelta(days=7) and end - timedelta(days=7) < due[-1] <= end
        assert all(b - a == timedelta(days=7) for a, b in zip(due, due[1:], strict=False))
        # Lakeside Lofts bills utility on its own schedule now: the ticks bill everyone else.
        assert {r["organizations"] for r in ticks} == {everyone - 1} == {default_organizations(engine)}
        assert all(r["billing_period"] == f"{at(r['due_at']):%Y-%m}" for r in ticks)

        own = [r for r in runs if r["source"] == "organization"]
        assert {(r["organization_id"], r["name"], r["timezone"]) for r in own} == {(org, "Lakeside Lofts", NEW_YORK)}
        utility = [r for r in own if r["run_type"] == "utility"]
        assert len(utility) in (4, 5)
        for run in utility:
            local = assert_local(run, hour=7, weekday=3)
            assert (
                run["billing_period"] == f"{local:%Y-%m}" and run["schedule"] == "Wednesday at 07:00 America/New_York"
            )
        # Its rent day (the 20th) falls within any 45 days; within 30 days, only if it is not more than 30 days away.
        rent = [
            r
            for r in admin.get("/api/schedule", params={"days": 45}).json()["runs"]
            if r["source"] == "organization" and r["run_type"] == "monthly_rent"
        ]
        assert rent and all(assert_local(r, hour=6, day=20) for r in rent)
        # What the Organizations view shows as its next runs are the first of these.
        listed = {o["organization_id"]: o for o in admin.get("/api/organizations/billing-settings").json()}
        assert listed[org]["next_utility_run"]["due_at"] == utility[0]["due_at"]
        assert listed[org]["next_rent_run"]["due_at"] == rent[0]["due_at"]
        # The utility DAG, paused, ran none of its ticks.
        assert ui["admin"].client.get(f"/dags/{UTILITY_DAG_ID}/dagRuns").json()["total_entries"] == 0

        openapi = admin.get("/openapi.json").json()
        assert {"/api/schedule", "/api/organizations/billing-settings"} <= set(openapi["paths"])
        schemas = openapi["components"]["schemas"]
        assert {"Schedule", "ScheduledRun", "NextRun"} <= set(schemas)
        assert {"timezone", "rent_schedule_day", "next_rent_run"} <= set(
            schemas["OrganizationBillingSettings"]["properties"]
        )
        assert "new_utility_schedule_hour" in schemas["AuditEntry"]["properties"]
    finally:
        reset_schedule(ui, org)


def test_the_documented_schedule_commands_set_a_schedule_and_list_the_next_runs(ui):
    """The schedule's curl commands of docs/operations.md, run as shown against this Airflow."""
    org = ui["lakeside"]
    command = (
        _docs_block("/tentman/api/schedule")
        .replace("http://127.0.0.1:8080", ui["stack"].base_url)
        .replace('"password": "…"', f'"password": "{PASSWORDS["admin"]}"')
        .replace("/organizations/3/", f"/organizations/{org}/")
    )
    try:
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", command], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        decoder = json.JSONDecoder()
        saved, end = decoder.raw_decode(out.stdout)
        schedule, _ = decoder.raw_decode(out.stdout[end:].lstrip())
        assert {name: saved[name] for name in OWN_SCHEDULE} == OWN_SCHEDULE
        assert schedule["days"] == 30
        assert any(r["source"] == "organization" and r["organization_id"] == org for r in schedule["runs"])
        assert any(r["source"] == "default" for r in schedule["runs"])
    finally:
        reset_schedule(ui, org)


def test_browser_admin_sets_a_schedule_viewer_cannot_and_the_schedule_view_lists_it(ui):
    """Headless Chromium: an admin sets an organization's New York schedule in the form (a day 29 is refused
    with the API's message), the Organizations view shows it and its next runs in local time and UTC, a viewer
    sees it without a form, and the Schedule view lists the organization's own due times beside the default
    ticks, day by day with their counts."""
    artifacts = REPO_ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    base, engine, org = ui["stack"].base_url, ui["engine"], ui["lakeside"]
    try:
        with chromium() as browser:
            billing_runs = _log_in(browser, base, "admin")
            organizations = billing_runs.organizations
            organizations.wait_for_form()
            before = written(engine, org)
            organizations.fill_schedule(
                org, timezone=NEW_YORK, rent_day="29", rent_hour="6", utility_weekday="3", utility_hour="7"
            )
            organizations.submit(
                then_see=".error-box >> text=rent_schedule_day 29 is not valid; expected a day of the month"
            )
            assert written(engine, org) == before

            organizations.fill_schedule(
                org, timezone=NEW_YORK, rent_day="20", rent_hour="6", utility_weekday="3", utility_hour="7"
            )
            organizations.submit(then_see=".ok >> text=Saved by admin")
            organizations.wait_for_row(org, "day 20 at 06:00")
            listed = {
                o["organization_id"]: o
                for o in plugin(ui["stack"], "admin").get("/api/organizations/billing-settings").json()
            }
            rent, utility = listed[org]["next_rent_run"], listed[org]["next_utility_run"]
            assert NEW_YORK in organizations.row_text(org)
            assert organizations.cell_text(org, "utility-schedule") == "Wednesday at 07:00"
            for cell, run in (("next-rent-run", rent), ("next-utility-run", utility)):
                local, utc = at(run["local_due_at"]), at(run["due_at"])
                text = organizations.cell_text(org, cell)
                assert f"{local:%Y-%m-%d %H:%M} (UTC{run['local_due_at'][19:]})" in text
                assert f"{utc:%Y-%m-%d %H:%M} UTC" in text and f"bills {run['billing_period']}" in text

            schedule = billing_runs.schedule
            schedule.wait_for_organization(org, "Lakeside Lofts")
            rows = schedule.organization_rows(org)
            assert any("Wednesday at 07:00 America/New_York" in r and "07:00 (UTC-0" in r for r in rows)
            ticks = schedule.default_ticks()
            assert ticks and all(
                f"{default_organizations(engine)} organizations" in t and UTILITY_CRON in t for t in ticks
            )
            first_day = at(utility["due_at"])  # a Wednesday in UTC too (07:00 in New York is 11:00 or 12:00 UTC)
            header = schedule.day_header(f"{first_day:%Y-%m-%d}")
            assert header.startswith(f"Wednesday {first_day:%Y-%m-%d}") and "1 organization's own" in header
            assert "no default rent ticks (manual)" in schedule.summary()
            billing_runs.screenshot(artifacts / "schedule-admin.png")

            viewer = _log_in(browser, base, "viewer")
            viewer.organizations.wait_for_read_only_note()
            assert not viewer.organizations.has_form()
            viewer.organizations.wait_for_row(org, "day 20 at 06:00")
            viewer.schedule.wait_for_organization(org, "Lakeside Lofts")
            assert viewer.organizations.put_from_this_session(org, {"billing_hold": False, **DEFAULT_SCHEDULE}) == 403
    finally:
        reset_schedule(ui, org)
