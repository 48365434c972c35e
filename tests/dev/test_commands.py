"""The `tentman-dev` command (dev/tentman_dev/commands.py) as `make demo` runs it: demo data, both DAGs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import sqlalchemy as sa

from tentman.db import create_engine_from_uri
from tentman.names import RENT_DAG_ID


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
