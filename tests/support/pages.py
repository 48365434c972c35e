"""Page objects for the browser tests: the "Billing runs" page, its Organizations and Schedule views, its API docs and
Airflow's own trigger form, each wrapping the Playwright locators a user's step needs, so a test reads
as those steps."""

from __future__ import annotations

import contextlib

from support.live import PASSWORDS

CHROMIUM = "/usr/bin/chromium"  # Debian's package, which `make test` installs
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
# What Chromium would otherwise fetch from the internet by itself: off for the offline test.
OFFLINE_ARGS = ["--disable-quic", "--disable-component-update", "--disable-sync"]
SLOW = 60_000  # ms: the first page load of a fresh api-server, a DAG run's tasks
SETTINGS_FORM = "#settings-form"


@contextlib.contextmanager
def chromium(*extra_args: str):
    """Headless Chromium driven by Playwright, closed after."""
    # Imported when a browser test runs: collecting the tests needs no Playwright.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args])
        try:
            yield browser
        finally:
            browser.close()


class BillingRunsPage:
    """/tentman/ui/: the runs table, the charts, and (below them) the Organizations and Schedule views."""

    def __init__(self, page, base_url: str):
        self.page = page
        self.base_url = base_url
        self.organizations = OrganizationsView(page)
        self.schedule = ScheduleView(page)

    @classmethod
    def log_in(cls, context, base_url: str, user: str) -> BillingRunsPage:
        """Open the page without a session: Airflow's login comes first, then the page."""
        page = context.new_page()
        page.goto(f"{base_url}/tentman/ui/")
        page.wait_for_url("**/auth/login**")
        page.fill("input[name=username]", user)
        page.fill("input[name=password]", PASSWORDS[user])
        page.click("button[type=submit]")
        page.wait_for_url("**/tentman/ui/**", timeout=SLOW)
        return cls(page, base_url)

    def reload(self) -> None:
        self.page.goto(f"{self.base_url}/tentman/ui/")

    # The runs table

    def wait_for_run(self, text: str, timeout: int = SLOW) -> None:
        self.page.wait_for_selector(f"#runs-table >> text={text}", timeout=timeout)

    def runs_text(self) -> str:
        return self.page.inner_text("#runs-table tbody")

    def runs_headers(self) -> str:
        return self.page.inner_text("#runs-table thead")

    def run_cells(self, month: str, organization: str) -> list[str]:
        """The cells of the first run row of that billing month (YYYY-MM) and organization."""
        return self._run_row(month, organization).locator("td").all_inner_texts()

    def reconciliation(self, month: str, organization: str) -> str:
        """The Reconciled cell of that run row: ✓, — or, for violations, its folded summary."""
        return self._run_row(month, organization).locator("td.reconciliation").inner_text().strip()

    def reconciliation_details(self, month: str, organization: str) -> list[str]:
        """Unfold the ✗ of that run row: one line per failing check, with its count and first ids."""
        cell = self._run_row(month, organization).locator("td.reconciliation")
        cell.locator("summary").click()
        return cell.locator("li").all_inner_texts()

    def _run_row(self, month: str, organization: str):
        return self.page.locator("#runs-table tbody tr", has_text=month).filter(has_text=organization).first

    # The charts (ECharts' SVG renderer: legends and axes are text in the DOM)

    def show_months(self, months: int, *, then_see: str) -> None:
        """Choose the trend window; `then_see` is a text of the amount chart drawn with it."""
        self.page.select_option("#trend-months", str(months))
        self.page.wait_for_selector(f"#chart-amount svg text >> text={then_see}", timeout=30_000)

    def chart_texts(self, chart: str) -> set[str]:
        return {t.strip() for t in self.page.locator(f"#{chart} svg text").all_text_contents()}

    def hover_amount_bar(self, month: str, *, until_tooltip_has: str) -> str:
        """Move the mouse onto the month's first (rent) bar of the amount chart; the tooltip's text.

        The bar's position is read from the chart, which may still be laying out (a resize, its
        animation): the mouse is moved off and back onto where the bar is now until the tooltip shows.
        """
        from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

        tooltip = self.page.locator("#chart-amount div", has_text=until_tooltip_has).last
        for attempt in range(5):
            x, y = self.page.evaluate(
                """month => {
                    const chart = window.billingCharts["chart-amount"], option = chart.getOption();
                    const i = option.xAxis[0].data.indexOf(month);
                    return chart.convertToPixel({seriesIndex: 0}, [i, option.series[0].data[i].value / 2]);
                }""",
                month,
            )
            box = self.page.locator("#chart-amount").bounding_box()
            self.page.mouse.move(0, 0)
            self.page.mouse.move(box["x"] + x, box["y"] + y)
            try:
                tooltip.wait_for(timeout=3_000)
                break
            except PlaywrightTimeoutError:
                if attempt == 4:
                    raise
        return tooltip.inner_text()

    # Elsewhere on the stack

    def open_api_docs(self) -> set[str]:
        """/tentman/docs (Swagger UI): the paths of the operations it rendered."""
        self.page.goto(f"{self.base_url}/tentman/docs")
        self.page.wait_for_selector(".opblock-summary-path", timeout=SLOW)
        return set(self.page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.dataset.path)"))

    def open_in_airflow_navigation(self, *, showing_run: str) -> None:
        """The same page inside the Airflow UI's navigation (an iframe), once it shows `showing_run`."""
        self.page.goto(f"{self.base_url}/plugin/billing-runs")
        self.page.frame_locator("iframe").locator(f"#runs-table >> text={showing_run}").first.wait_for(timeout=SLOW)

    def trigger_dag_with_defaults(self, dag_id: str, billing_month: str, *, defaults_shown: str) -> None:
        """Airflow's own trigger form: only the billing month filled in; `defaults_shown` is text it must show."""
        self.page.goto(f"{self.base_url}/dags/{dag_id}")
        self.page.get_by_role("button", name="Trigger").first.click()
        dialog = self.page.get_by_role("dialog")
        dialog.get_by_text(defaults_shown).wait_for(timeout=30_000)
        dialog.locator("#element_billing_month").fill(billing_month)
        dialog.get_by_role("button", name="Trigger").click()

    def screenshot(self, path, *, full_page: bool = True) -> None:
        self.page.screenshot(path=str(path), full_page=full_page)


class OrganizationsView:
    """The Organizations view: each organization's billing settings, and the form that changes them."""

    def __init__(self, page):
        self.page = page

    def wait_for(self, organization: str) -> None:
        self.page.wait_for_selector(f"#organizations-table >> text={organization}", timeout=SLOW)

    def row_text(self, organization_id: int) -> str:
        return self.page.inner_text(self._row(organization_id))

    def wait_for_row(self, organization_id: int, text: str) -> None:
        self.page.wait_for_selector(f"{self._row(organization_id)} >> text={text}")

    # The form (shown only to users who may change the settings)

    def has_form(self) -> bool:
        return self.page.locator(SETTINGS_FORM).count() > 0

    def wait_for_form(self) -> None:
        self.page.wait_for_selector(SETTINGS_FORM)

    def wait_for_read_only_note(self) -> None:
        self.page.wait_for_selector("#settings-read-only")

    def fill(self, organization_id: int, *, hold: bool, reason: str = "", method: str | None = None) -> None:
        """Choose the organization and set the form's fields (`method` None: leave the method as shown)."""
        self.page.select_option(f"{SETTINGS_FORM} select[name=organization_id]", str(organization_id))
        self.page.set_checked(f"{SETTINGS_FORM} input[name=billing_hold]", hold)
        self.page.fill(f"{SETTINGS_FORM} input[name=hold_reason]", reason)
        if method is not None:
            self.page.select_option(f"{SETTINGS_FORM} select[name=proration_method]", method)

    def fill_schedule(
        self,
        organization_id: int,
        *,
        timezone: str = "",
        rent_day: str = "",
        rent_hour: str = "",
        utility_weekday: str = "",
        utility_hour: str = "",
    ) -> None:
        """Choose the organization and set its time zone and own schedules ("": UTC, the default schedule);
        the hold and method stay as shown. `utility_weekday` is the ISO number ("3": Wednesday)."""
        self.page.select_option(f"{SETTINGS_FORM} select[name=organization_id]", str(organization_id))
        self.page.fill(f"{SETTINGS_FORM} input[name=timezone]", timezone)
        self.page.fill(f"{SETTINGS_FORM} input[name=rent_schedule_day]", rent_day)
        self.page.fill(f"{SETTINGS_FORM} input[name=rent_schedule_hour]", rent_hour)
        self.page.select_option(f"{SETTINGS_FORM} select[name=utility_schedule_weekday]", utility_weekday)
        self.page.fill(f"{SETTINGS_FORM} input[name=utility_schedule_hour]", utility_hour)

    def cell_text(self, organization_id: int, cell: str) -> str:
        """One cell of the organization's row: rent-schedule, utility-schedule, next-rent-run, next-utility-run."""
        return self.page.inner_text(f"{self._row(organization_id)} td.{cell}")

    def submit(self, *, then_see: str) -> None:
        """Save the form; `then_see` is a selector of the result it must show (e.g. `.ok >> text=Saved`)."""
        # The previous save's message goes first, so the one waited for is this save's.
        self.page.eval_on_selector("#settings-result", "el => { el.className = ''; el.textContent = ''; }")
        self.page.click(f"{SETTINGS_FORM} button[type=submit]")
        self.page.wait_for_selector(f"#settings-result{then_see}", timeout=30_000)

    def save(self, organization_id: int, *, hold: bool, reason: str = "", method: str = "", by: str = "admin") -> None:
        """Fill the form (`method` "": the platform default) and save it, until it says who saved it."""
        self.fill(organization_id, hold=hold, reason=reason, method=method)
        self.submit(then_see=f".ok >> text=Saved by {by}")

    def put_from_this_session(self, organization_id: int, body: dict) -> int:
        """The request the form sends (with the page's headers), made with this browser session whether or not it
        shows a form: its status."""
        return self.page.evaluate(
            """([org, body]) => fetch(`/tentman/api/organizations/${org}/billing-settings`, {method: "PUT",
                 credentials: "same-origin", headers: NAMES.change_headers,
                 body: JSON.stringify(body)}).then(r => r.status)""",
            [organization_id, body],
        )

    @staticmethod
    def _row(organization_id: int) -> str:
        return f"#organizations-table tr[data-organization-id='{organization_id}']"


class ScheduleView:
    """The Schedule view: the billing runs of the next days, grouped by day (UTC) with their count."""

    def __init__(self, page):
        self.page = page

    def wait_for_organization(self, organization_id: int, text: str) -> None:
        """Until a due time of the organization's own schedule shows `text`."""
        self.page.wait_for_selector(f"{self._organization(organization_id)} >> text={text}", timeout=30_000)

    def organization_rows(self, organization_id: int) -> list[str]:
        return self.page.locator(self._organization(organization_id)).all_inner_texts()

    def default_ticks(self) -> list[str]:
        return self.page.locator("#schedule-table tr.source-default").all_inner_texts()

    def day_header(self, day: str) -> str:
        """The header of a day (YYYY-MM-DD, UTC): its weekday and its counts."""
        return self.page.inner_text(f"#schedule-table tr.day[data-day='{day}']")

    def summary(self) -> str:
        return self.page.inner_text("#schedule-summary")

    @staticmethod
    def _organization(organization_id: int) -> str:
        return f"#schedule-table tr.source-organization[data-organization-id='{organization_id}']"
