"""The `tentman` command, the `tentman-dev` command, the demo data set and the benchmark, run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa

from tentman.billing.rent import RENT_STAGES
from tentman.billing.utility import UTILITY_STAGES, generate_utility_invoices
from tentman.db import create_engine_from_uri
from tentman.names import RENT_DAG_ID, RENT_RUN
from tentman.runs.bill import bill_organization
from tentman.runs.organizations import list_organizations, organization_labels
from tentman.runs.record import record_invoice_runs
from tentman.runs.resolve import resolve_billing_period
from tentman_dev.bench import common as bench_common
from tentman_dev.bench import engines as bench
from tentman_dev.bench import scale as bench_scale
from tentman_dev.demo import load_demo_data


def tentman(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_CONN_TENTMAN_DB"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "tentman.cli", *args], capture_output=True, text=True, env=env)


def test_db_upgrade_applies_the_migrations(pg_admin_uri):
    from support.databases import create_database, drop_database
    from tentman_dev.local import with_database

    name = create_database(pg_admin_uri, "tentman_cli")
    try:
        uri = with_database(pg_admin_uri, name)
        out = tentman("db", "upgrade", "--with-application-tables", env_extra={"AIRFLOW_CONN_TENTMAN_DB": uri})
        assert out.returncode == 0, out.stderr
        assert "TentMan billing schema (tentman_billing) at revision 0" in out.stdout
        again = tentman("db", "upgrade", env_extra={"AIRFLOW_CONN_TENTMAN_DB": uri})
        assert again.returncode == 0
        current = tentman("db", "current", env_extra={"AIRFLOW_CONN_TENTMAN_DB": uri})
        revision = current.stdout.split()[1]
        assert current.stdout.strip() == f"current: {revision}  head: {revision}"
    finally:
        drop_database(pg_admin_uri, name)


def test_version_is_the_package_version():
    from tentman import __version__

    out = tentman("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"tentman {__version__}"


def test_the_production_command_has_no_developer_commands():
    """`tentman dev …` and `tentman demo load` are `tentman-dev`'s: the wheel does not carry them."""
    for command in (("dev", "env"), ("demo", "load")):
        out = tentman(*command)
        assert out.returncode == 2
        assert f"invalid choice: '{command[0]}'" in out.stderr


def test_dev_command_loads_the_demo_data(db_uri, engine):
    """`tentman-dev load-demo`, as `make demo` and `make up` run it: once, then left as it is."""
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_CONN_TENTMAN_DB"}
    env["AIRFLOW_CONN_TENTMAN_DB"] = db_uri
    outputs = [
        subprocess.run([sys.executable, "-m", "tentman_dev", "load-demo"], capture_output=True, text=True, env=env)
        for _ in range(2)
    ]
    assert [out.returncode for out in outputs] == [0, 0], outputs[0].stderr + outputs[1].stderr
    assert [out.stdout.strip() for out in outputs] == ["Demo data loaded.", "Demo data already present: left as it is."]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM organizations")).scalar_one() > 0


def test_missing_connection_is_a_clear_error():
    out = tentman("db", "upgrade")
    assert out.returncode == 2
    assert "no Airflow connection 'tentman_db'" in out.stderr and "or set AIRFLOW_CONN_TENTMAN_DB" in out.stderr


def test_demo_data_bills_as_documented(engine, db_uri):
    with engine.begin() as conn:
        assert load_demo_data(conn) is True
        assert load_demo_data(conn) is False  # loading twice changes nothing
    run = resolve_billing_period(
        engine,
        run_type=RENT_RUN,
        params={"billing_month": "2026-12"},
        logical_date=None,
        run_after=datetime(2026, 11, 26, 2, tzinfo=UTC),
    )
    orgs = list_organizations(engine, run)
    assert [label.rsplit(" (#", 1)[0] for label in organization_labels(engine, orgs).values()] == [
        "Harbor View Properties",
        "Maple Street Rentals",
        "Cedar Lofts",
    ]
    results = [bill_organization(engine, run, o, dag_id="demo", dag_run_id="r") for o in orgs]
    record_invoice_runs(engine, run, orgs, results, dag_id="demo", dag_run_id="r")
    harbor = results[0]
    assert harbor["errors"] == [{"lease_id": 105, "error": "monthly_rent -50.00 is negative"}]
    assert harbor["skipped_count"] == 1  # lease 106: December already issued
    with engine.connect() as conn:
        totals = dict(
            conn.execute(
                sa.text(
                    "SELECT lease_id, total FROM invoices WHERE billing_period_start = '2026-12-01' AND lease_id < 200"
                )
            ).all()
        )
    # 101: 1500 + parking 75 + pet from Dec 15 (17 days) 25 * 17 / 31 = 13.71
    # 102: moves in Dec 10 (22 days): 1800 * 22 / 31 = 1277.42, storage 40 * 22 / 31 = 28.39
    # 103: moves out Dec 20: 1200 * 20 / 31 = 774.19, parking to Dec 20: 60 * 20 / 31 = 38.71
    # 106: issued invoice kept as it was; 108: Dec 5..18 = 14 days: 2000 * 14 / 31 = 903.23
    assert totals == {
        101: Decimal("1588.71"),
        102: Decimal("1305.81"),
        103: Decimal("812.90"),
        106: Decimal("1650.00"),
        108: Decimal("903.23"),
    }

    out = tentman("runs", "summary", "--dag-id", "demo", env_extra={"AIRFLOW_CONN_TENTMAN_DB": db_uri})
    assert out.returncode == 0, out.stderr
    assert "Harbor View Properties #1" in out.stdout and "completed_with_errors" in out.stdout
    assert "lease 105: monthly_rent -50.00 is negative" in out.stdout


def test_benchmark_reports_its_figures(pg_admin_uri, capsys):
    figures = bench.run(300, pg_admin_uri)
    for key in ("engine_leases_per_s", "rerun_leases_per_s", "copy_floor_leases_per_s", "peak_rss_mb"):
        assert figures[key] > 0
    assert figures["utility_vs_copy_floor"] > 0 and figures["utility_vs_invoices_lines_copy"] > 0
    assert figures["utility_vs_update_floor"] > 0 and figures["utility_update_floor_per_s"] > 0
    # The WAL each engine run and each floor wrote, metered on the server.
    for key in ("rent_wal_mb", "copy_floor_wal_mb", "utility_wal_mb", "utility_copy_floor_wal_mb"):
        assert figures[key] > 0
    assert figures["utility_update_floor_wal_mb"] > 0
    # Each floor table by table (the update floor's last part is the link UPDATE).
    assert list(figures["copy_floor_parts"]) == ["invoices", "invoice_lines"]
    assert list(figures["utility_copy_floor_parts"]) == ["invoices", "invoice_lines", "utility_statements"]
    assert list(figures["utility_update_floor_parts"]) == ["invoices", "invoice_lines", "utility_statements (UPDATE)"]
    assert all(part["seconds"] > 0 for part in figures["utility_update_floor_parts"].values())
    # Every stage of each engine, then the commit, as the stage table printed them.
    for key in ("rent_stages_s", "rent_rerun_stages_s", "rent_changed_rerun_stages_s"):
        assert tuple(figures[key]) == (*RENT_STAGES, "commit")
    assert tuple(figures["utility_stages_s"]) == (*UTILITY_STAGES, "commit")
    out = capsys.readouterr().out
    assert all(name in out for name in (*RENT_STAGES, *UTILITY_STAGES, "other", "commit"))
    assert "utility update floor: COPY of the invoices and lines, then one UPDATE linking the statements" in out
    json.dumps(figures)


def test_update_floor_writes_again_what_the_utility_engine_wrote(engine):
    """The update floor times the utility engine's output written the plainest way (COPY of the
    invoices and lines, one UPDATE for the links): afterwards the same rows are there, once."""
    with engine.begin() as conn:
        org = conn.execute(sa.text("INSERT INTO organizations (name) VALUES ('Floor') RETURNING id")).scalar_one()
        bench.generate_leases(conn, org, 30)
        bench.generate_statements(conn, org, 20)
    with engine.begin() as conn:
        generate_utility_invoices(conn, organization_id=org, period=bench_common.PERIOD, invoice_run_id=None)
    billed = sa.text(
        """SELECT s.id, il.id AS line_id, il.amount, i.lease_id, i.total, i.status
           FROM utility_statements s
           JOIN invoice_lines il ON il.id = s.invoice_line_id
           JOIN invoices i ON i.id = il.invoice_id
           WHERE s.organization_id = :org ORDER BY s.id"""
    )
    with engine.connect() as conn:
        before = conn.execute(billed, {"org": org}).all()

    phase = bench.update_floor(engine, org)

    with engine.connect() as conn:
        after = conn.execute(billed, {"org": org}).all()
        invoices = conn.execute(
            sa.text("SELECT count(*) FROM invoices WHERE organization_id = :org AND invoice_type = 'utility'"),
            {"org": org},
        ).scalar_one()
    assert len(before) == 20 and before[0].amount == before[0].total > Decimal("10.00")
    assert after == before and invoices == 20
    assert phase.seconds > 0 and phase.wal_mb > 0


def test_benchmark_refuses_a_role_that_may_not_checkpoint(engine, db_uri):
    """Every timed phase starts after a CHECKPOINT, which needs a superuser (or pg_checkpoint)."""
    role = f"tentman_bench_{uuid.uuid4().hex[:8]}"  # roles are server-wide: unique, and dropped after
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role}")
    as_role = create_engine_from_uri(db_uri, connect_args={"options": f"-c role={role}"})
    try:
        with pytest.raises(SystemExit, match=r"may not run CHECKPOINT: give TENTMAN_BENCH_DATABASE_URL a superuser"):
            bench_common.checkpoint(as_role)
    finally:
        as_role.dispose()
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP ROLE {role}")


def test_bench_scale_engine_only_times_the_largest_organization_in_the_population():
    """`make bench-scale BENCH_ARGS="--engine-only"` at a small scale: the whole population billed by
    the engines, then the largest organization alone beside its COPY floor (its own embedded
    PostgreSQL, in a process of its own as `make` runs it)."""
    done = subprocess.run(
        [sys.executable, "-m", "tentman_dev.bench.scale", "--scale", "0.002", "--engine-only"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    figures = json.loads(out.strip().splitlines()[-1])
    largest = max(bench_scale.organization_sizes(4, 2000))
    assert (figures["organizations"], figures["leases"], figures["largest_organization_leases"]) == (4, 2000, largest)
    assert "billed 2026-03 for 4 organizations" in out
    assert figures["largest_org_engine_alone_leases_per_s"] > 0 and figures["largest_org_vs_copy_floor"] > 0
    assert figures["largest_org_wal_mb"] > 0
    assert list(figures["largest_org_copy_floor_parts"]) == ["invoices", "invoice_lines"]
    assert tuple(figures["largest_org_stages_s"]) == (*RENT_STAGES, "commit")


def test_demo_utility_statements_bill_as_documented(engine):
    with engine.begin() as conn:
        load_demo_data(conn)
    run = resolve_billing_period(
        engine,
        run_type="utility",
        params={},
        logical_date=datetime(2026, 12, 7, 3, tzinfo=UTC),
        run_after=datetime(2026, 12, 7, 3, tzinfo=UTC),
    )
    assert run.billing_period_start == "2026-12-01"
    orgs = list_organizations(engine, run)
    results = {o: bill_organization(engine, run, o, dag_id="demo-utility", dag_run_id="r") for o in orgs}
    assert results[1]["statements_billed"] == 6
    assert results[1]["errors"] == [{"lease_id": 106, "error": "utility statement 5006 of lease 106 has no amount"}]
    assert results[2]["errors"] == [
        {"lease_id": None, "error": "utility statement 5007 names lease null, which does not exist"}
    ]
    with engine.connect() as conn:
        totals = dict(
            conn.execute(sa.text("SELECT lease_id, total FROM invoices WHERE invoice_type = 'utility'")).all()
        )
        pending = (
            conn.execute(sa.text("SELECT id FROM utility_statements WHERE invoice_line_id IS NULL ORDER BY id"))
            .scalars()
            .all()
        )
    # 101: water 42.17 + electricity 88.40 + December water 40.00; 102: late October water 19.95;
    # 104: moved-out tenant 27.30; 108: a credit of -12.50.
    assert totals == {101: Decimal("170.57"), 102: Decimal("19.95"), 104: Decimal("27.30"), 108: Decimal("-12.50")}
    assert pending == [5004, 5006, 5007]  # a draft statement, and the two bad ones


@pytest.mark.airflow
def test_make_demo_runs_both_dags_and_a_second_run_updates_the_same_drafts(pg_admin_uri, tmp_path):
    """What `make demo` runs (`tentman-dev demo`), twice, on fresh databases and a temporary .local."""
    from support.databases import create_database, drop_database
    from tentman_dev.local import airflow_metadata_uri, with_database

    tentman_db, metadata_db = (
        create_database(pg_admin_uri, "tentman_demo"),
        create_database(pg_admin_uri, "airflow_demo"),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TENTMAN_"))}
    env.update(
        {
            "TENTMAN_LOCAL_DIR": str(tmp_path / "local"),
            "AIRFLOW_CONN_TENTMAN_DB": with_database(pg_admin_uri, tentman_db),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_metadata_uri(with_database(pg_admin_uri, metadata_db)),
        }
    )
    engine = create_engine_from_uri(with_database(pg_admin_uri, tentman_db))
    try:
        totals = []
        for _ in range(2):
            out = subprocess.run(
                [sys.executable, "-m", "tentman_dev", "demo"],
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
            with engine.connect() as conn:
                totals.append(
                    conn.execute(
                        sa.text(
                            "SELECT invoice_type, count(*), sum(total) FROM invoices GROUP BY invoice_type ORDER BY 1"
                        )
                    ).all()
                )
        assert {row[0] for row in totals[0]} == {"rent", "utility"}
        assert totals[1] == totals[0]  # the second run updated the same drafts
        assert (tmp_path / "local" / f"{RENT_DAG_ID}.log").exists()
    finally:
        engine.dispose()
        drop_database(pg_admin_uri, tentman_db)
        drop_database(pg_admin_uri, metadata_db)
