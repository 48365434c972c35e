"""Shared fixtures: a real PostgreSQL for every test, and an Airflow environment for DAG tests.

The server is the one named by TENTMAN_TEST_DATABASE_URL (an admin URI, e.g.
postgresql://postgres@127.0.0.1:5432/postgres) or, when unset, an embedded PostgreSQL started
from the pgserver wheel in a temporary folder. Every test gets its own database, cloned from a
migrated template, with a unique name; nothing is shared with a running scheduler.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from support.databases import create_database, drop_database
from support.distribution import airflow_venv, dist  # noqa: F401 (session fixtures: the wheel, a venv with it)
from support.live import drop_metadata_templates
from tentman.db import create_engine_from_uri
from tentman.migrate import upgrade
from tentman_dev.local import REPO_ROOT, airflow_metadata_uri, server_uri, start_embedded_postgres, with_database


@pytest.fixture(scope="session")
def pg_admin_uri(tmp_path_factory):
    url = os.environ.get("TENTMAN_TEST_DATABASE_URL")
    if url:
        yield url
        drop_metadata_templates(url)
        return
    server = start_embedded_postgres(tmp_path_factory.mktemp("pg") / "data", cleanup_mode="delete")
    yield server_uri(server)
    drop_metadata_templates(server_uri(server))
    server.cleanup()


@pytest.fixture(scope="session")
def template_db(pg_admin_uri):
    """A database with the TentMan schema migrated, cloned by each test."""
    name = create_database(pg_admin_uri, "tentman_tpl")
    engine = create_engine_from_uri(with_database(pg_admin_uri, name))
    upgrade(engine, with_application_tables=True)
    engine.dispose()
    yield name
    drop_database(pg_admin_uri, name)


@pytest.fixture
def db_uri(pg_admin_uri, template_db):
    """URI of a fresh, migrated TentMan database for this test."""
    name = create_database(pg_admin_uri, "tentman_test", template=template_db)
    yield with_database(pg_admin_uri, name)
    drop_database(pg_admin_uri, name)


@pytest.fixture
def engine(db_uri):
    engine = create_engine_from_uri(db_uri)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def airflow_home(pg_admin_uri, tmp_path_factory):
    """Environment of in-process Airflow (dag.test): its own migrated metadata DB.

    Set before Airflow is first imported in this process; the DAG tests import it lazily.
    """
    if "airflow.settings" in sys.modules:
        pytest.fail("Airflow was imported before its test environment was configured")
    metadata_db = create_database(pg_admin_uri, "airflow_meta")
    home = tmp_path_factory.mktemp("airflow_home")
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_metadata_uri(with_database(pg_admin_uri, metadata_db)),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex * 2,
        # Organization tasks fail fast in tests: dag.test() would otherwise wait out the backoff.
        "TENTMAN_ORG_TASK_RETRIES": "0",
    }
    os.environ.update(env)
    airflow = str(Path(sys.executable).with_name("airflow"))
    subprocess.run([airflow, "db", "migrate"], check=True, capture_output=True, env=dict(os.environ))
    _share_one_in_process_execution_api()
    yield home
    if "airflow.settings" in sys.modules:
        sys.modules["airflow.settings"].dispose_orm()
    drop_database(pg_admin_uri, metadata_db)


def _share_one_in_process_execution_api() -> None:
    """dag.test() runs each task against an in-process execution API that it builds anew for every
    task. On Airflow 3.2 building it (Cadwyn's versioned routes) costs seconds of CPU each time, on
    3.3 a fraction of one, and that made the lowest-Airflow run of test_distribution.py several
    times slower than the same tests on the pinned Airflow. The session's DAG tests share one, as the
    tasks of a deployment share one api-server; each task still sets its own DAG bag on it.
    """
    from airflow.sdk.execution_time import supervisor

    supervisor.in_process_api_server = functools.cache(supervisor.in_process_api_server)


# The fixtures a `unit` test may not use: `make test-unit` runs with no database and no Airflow metadata.
_SERVER_FIXTURES = {"pg_admin_uri", "template_db", "db_uri", "engine", "airflow_home"}


# `make test` runs the suite in two pytest-xdist processes. A module of tests that start Airflow
# processes (marked live) is one work unit: its tests share the module's stack, so they run in one
# process, one after the other. These modules are queued first (most tests first: pytest-xdist's
# reorder), so the two processes start on the two longest-running units and the single tests fill
# in behind them. Two stacks may run at once: each has its own api-server and log-server ports
# (tentman_dev.airflow_stack.free_port, log_server_ports) and its own databases.
AIRFLOW_PROCESS_TESTS = ("tests/live/", "tests/ui/test_billing_ui.py", "tests/ui/test_billing_settings_ui.py")


# optionalhook: the lowest supported Airflow's virtualenv (tests/test_distribution.py) runs some of
# these tests with a pytest that has no pytest-xdist.
@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class AirflowStackModulesWhole(LoadScopeScheduling):
        """One work unit per module of tests that start Airflow processes; every other test alone.
        (pytest-xdist's own `xdist_group` marks do not group under this pytest.)"""

        def _split_scope(self, nodeid: str) -> str:
            return nodeid.split("::", 1)[0] if nodeid.startswith(AIRFLOW_PROCESS_TESTS) else nodeid

    return AirflowStackModulesWhole(config, log)


def pytest_collection_modifyitems(config, items):
    for item in items:
        used = _SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("unit") and used:
            raise pytest.UsageError(f"{item.nodeid} is marked unit but uses {', '.join(sorted(used))}")
        if item.get_closest_marker("live") and not item.nodeid.startswith(AIRFLOW_PROCESS_TESTS):
            raise pytest.UsageError(
                f"{item.nodeid} is marked live but is not in {', '.join(AIRFLOW_PROCESS_TESTS)}, where `make test` "
                "keeps each module of tests that start Airflow processes in one process (tests/conftest.py)"
            )


# --- Reliability scenarios: each ends with an audit, and `make reliability-report` tabulates them.

_REPORTS = pytest.StashKey[dict]()
_ROWS = pytest.StashKey[list]()


def pytest_addoption(parser):
    parser.addoption(
        "--reliability-report",
        action="store_true",
        help="print the table of reliability scenarios and write test-artifacts/reliability-report.md",
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


@pytest.fixture
def audited(request):
    """`audited(engine, before=snapshot)`: run the audit, check that the production reconciliation's
    stored verdicts agree with it over the same organizations (support.agreement), count both for the
    report, fail on anomalies or on a disagreement."""
    from support.agreement import ReconciliationDisagrees, assert_reconciliation_agrees
    from support.audit import audit

    row = {"scenario": request.node.name, "invoices": 0, "anomalies": 0, "reconciliation": "—"}

    def check(engine, **kwargs):
        with engine.connect() as conn:
            report = audit(conn, **kwargs)
            row["invoices"] += report.invoices_checked
            row["anomalies"] += len(report.anomalies)
            try:
                verdicts = assert_reconciliation_agrees(conn, report, organization_ids=kwargs.get("organization_ids"))
            except ReconciliationDisagrees as disagreement:
                row["reconciliation"] = disagreement.verdicts.summary()
                raise
        row["reconciliation"] = verdicts.summary()
        report.assert_clean()
        return report

    yield check
    reports = request.node.stash.get(_REPORTS, {})
    call = reports.get("call")
    row["outcome"] = "passed" if call is not None and call.passed else "FAILED"
    request.config.stash.setdefault(_ROWS, []).append(row)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = config.stash.get(_ROWS, [])
    if not rows or not config.getoption("--reliability-report"):
        return
    width = max(len(r["scenario"]) for r in rows)
    verdict_width = max(len("reconciliation"), *(len(r["reconciliation"]) for r in rows))
    table = [
        f"| {'scenario':<{width}} | outcome | invoices checked | anomalies | {'reconciliation':<{verdict_width}} |",
        f"|{'-' * (width + 2)}|---------|------------------|-----------|{'-' * (verdict_width + 2)}|",
    ]
    table += [
        f"| {r['scenario']:<{width}} | {r['outcome']:<7} | {r['invoices']:>16} | {r['anomalies']:>9} | "
        f"{r['reconciliation']:<{verdict_width}} |"
        for r in rows
    ]
    reconciled = sum(1 for r in rows if r["reconciliation"].startswith("✓"))
    table.append(
        f"| {'TOTAL (' + str(len(rows)) + ' scenarios)':<{width}} | "
        f"{'passed' if all(r['outcome'] == 'passed' for r in rows) else 'FAILED':<7} | "
        f"{sum(r['invoices'] for r in rows):>16} | {sum(r['anomalies'] for r in rows):>9} | "
        f"{str(reconciled) + ' reconciled':<{verdict_width}} |"
    )
    terminalreporter.write_sep("=", "reliability report")
    for line in table:
        terminalreporter.write_line(line)
    out = REPO_ROOT / "test-artifacts" / "reliability-report.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(table) + "\n")
