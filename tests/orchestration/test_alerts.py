"""Failure alerts: e-mail through the SMTP provider and a JSON webhook, each from a connection."""

from __future__ import annotations

import email
import json
from datetime import UTC, date, datetime

import pytest
import sqlalchemy as sa

from support.dags import load_dag
from support.factories import add_invoice, add_lease, add_organization, inject_invoice_fault
from support.sinks import HttpSink, SmtpSink
from tentman.names import BILL_ORGANIZATION_TASK, RECONCILE_TASK, RECONCILIATIONS_TABLE, RECORD_RUNS_TASK, RENT_DAG_ID

pytestmark = pytest.mark.airflow


@pytest.fixture
def sinks(monkeypatch, db_uri, airflow_home):
    smtp, http = SmtpSink(), HttpSink()
    monkeypatch.setenv("AIRFLOW_CONN_TENTMAN_DB", db_uri)
    monkeypatch.setenv(
        "AIRFLOW_CONN_TENTMAN_ALERT_SMTP",
        json.dumps(
            {
                "conn_type": "smtp",
                "host": "127.0.0.1",
                "port": smtp.port,
                "extra": {
                    "to": "billing-oncall@example.test, finance@example.test",
                    "from_email": "airflow@example.test",
                    "disable_tls": True,
                    "disable_ssl": True,
                    "retry_limit": 0,
                },
            }
        ),
    )
    monkeypatch.setenv("AIRFLOW_CONN_TENTMAN_ALERT_WEBHOOK", f"http://127.0.0.1:{http.port}/hooks/billing")
    yield smtp, http
    smtp.shutdown()
    http.shutdown()


def test_failed_organization_and_failed_run_are_alerted_by_email_and_webhook(engine, sinks):
    smtp, http = sinks
    with engine.begin() as conn:
        ok = add_organization(conn, "Fine Homes")
        broken = add_organization(conn, "Broken Estates")
        add_lease(conn, ok, date(2025, 1, 1))
        add_lease(conn, broken, date(2025, 1, 1))
        inject_invoice_fault(conn, broken)
    dag_run = load_dag(RENT_DAG_ID).test(logical_date=datetime(2026, 1, 26, 2, tzinfo=UTC))
    assert dag_run.state == "failed"

    # One alert for the organization (after its retries), one for the failed aggregation.
    hooks = [r["json"] for r in http.requests]
    assert [r["path"] for r in http.requests] == ["/hooks/billing", "/hooks/billing"]
    assert [h["task_id"] for h in hooks] == [BILL_ORGANIZATION_TASK, RECORD_RUNS_TASK]
    for hook in hooks:
        assert hook["dag_id"] == RENT_DAG_ID and hook["billing_period"] == "2026-02"
        assert hook["organizations"] == [f"Broken Estates (#{broken})"]
        assert "injected fault" in hook["error"]
        assert hook["text"].startswith(
            f"TentMan billing failed: DAG {RENT_DAG_ID}, billing period 2026-02, "
            f"organization(s): Broken Estates (#{broken})"
        )

    assert len(smtp.messages) == 2
    for message in smtp.messages:
        assert message["to"] == ["<billing-oncall@example.test>", "<finance@example.test>"]
        parsed = email.message_from_string(message["data"])
        assert parsed["Subject"] == f"[TentMan billing] {RENT_DAG_ID} failed for 2026-02"
        body = next(p for p in parsed.walk() if p.get_content_type() == "text/html").get_payload(decode=True).decode()
        assert f"Broken Estates (#{broken})" in body and "injected fault" in body and "2026-02" in body


@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_alerts_are_off_without_connections(engine, db_uri, airflow_home, monkeypatch, value):
    """Unset, or empty as docker-compose.yaml passes them when .env leaves them empty."""
    monkeypatch.setenv("AIRFLOW_CONN_TENTMAN_DB", db_uri)
    for name in ("AIRFLOW_CONN_TENTMAN_ALERT_SMTP", "AIRFLOW_CONN_TENTMAN_ALERT_WEBHOOK"):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    from tentman.orchestration.alerts import SMTP_CONN_ID, WEBHOOK_CONN_ID, alert_connection

    assert alert_connection(SMTP_CONN_ID) is None and alert_connection(WEBHOOK_CONN_ID) is None
    with engine.begin() as conn:
        broken = add_organization(conn, "Broken Estates")
        add_lease(conn, broken, date(2025, 1, 1))
        inject_invoice_fault(conn, broken)
    dag_run = load_dag(RENT_DAG_ID).test(logical_date=datetime(2026, 1, 26, 2, tzinfo=UTC))
    assert dag_run.state == "failed"  # and nothing raised while no channel was configured


def test_bad_params_alert_names_the_run_level_failure(engine, sinks):
    smtp, http = sinks
    dag_run = load_dag(RENT_DAG_ID).test(
        logical_date=datetime(2026, 1, 26, 2, tzinfo=UTC), run_conf={"organization_ids": [424242]}
    )
    assert dag_run.state == "failed"
    (hook,) = [r["json"] for r in http.requests]
    assert hook["task_id"] == RECORD_RUNS_TASK and hook["billing_period"] is None
    assert hook["organizations"] == [] and "billing period could not be resolved" in hook["error"]
    assert "none (run level)" in hook["text"]


def test_a_reconciliation_violation_fails_the_run_and_alerts_naming_organization_check_and_ids(engine, sinks):
    """An issued invoice edited by a concurrent writer while the run bills (a trigger plays the writer,
    in the billing transaction itself): every organization task succeeds, the reconciliation fails."""
    smtp, http = sinks
    with engine.begin() as conn:
        org = add_organization(conn, "Watched Homes")
        lease = add_lease(conn, org, date(2025, 1, 1))
        issued = add_invoice(conn, org, lease, date(2026, 1, 1), date(2026, 1, 31), "0.00")
        conn.execute(
            sa.text(
                f"""
                CREATE FUNCTION test_concurrent_writer() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN UPDATE invoices SET due_date = due_date + 1 WHERE id = {issued}; RETURN NEW; END $$;
                CREATE TRIGGER test_concurrent_writer AFTER UPDATE OF status ON invoice_runs
                FOR EACH ROW WHEN (NEW.status = 'completed') EXECUTE FUNCTION test_concurrent_writer();
                """
            )
        )
    dag_run = load_dag(RENT_DAG_ID).test(logical_date=datetime(2026, 1, 26, 2, tzinfo=UTC))
    assert dag_run.state == "failed"
    states = {(ti.task_id, ti.map_index): ti.state for ti in _task_instances(dag_run)}
    assert states[(BILL_ORGANIZATION_TASK, 0)] == states[(RECORD_RUNS_TASK, -1)] == "success"
    assert states[(RECONCILE_TASK, -1)] == "failed"
    [hook] = [r["json"] for r in http.requests]
    assert (hook["task_id"], hook["organizations"]) == (RECONCILE_TASK, [f"Watched Homes (#{org})"])
    assert f"Watched Homes (#{org}): hands_off: 1 violation ({issued})" in hook["error"]
    assert len(smtp.messages) == 1
    with engine.connect() as conn:
        stored = conn.execute(sa.text(f"SELECT ok, checks FROM {RECONCILIATIONS_TABLE}")).one()
    assert stored.ok is False
    assert [c for c in stored.checks if not c["ok"]] == [
        {"check": "hands_off", "ok": False, "violations": 1, "ids": [issued], "note": None}
    ]


def _task_instances(dag_run):
    from airflow.utils.session import create_session

    with create_session() as session:
        return dag_run.get_task_instances(session=session)


EVIL_NAME = "<!channel> <https://evil.example|Billing login expired – sign in>"


def test_tenant_text_reaches_the_webhook_escaped_and_the_email_escaped_and_no_sql_anywhere(engine, sinks):
    smtp, http = sinks
    with engine.begin() as conn:
        evil = add_organization(conn, EVIL_NAME)
        add_lease(conn, evil, date(2025, 1, 1))
        inject_invoice_fault(conn, evil)
    dag_run = load_dag(RENT_DAG_ID).test(logical_date=datetime(2026, 1, 26, 2, tzinfo=UTC))
    assert dag_run.state == "failed"

    raw = [r["body"] if "body" in r else json.dumps(r["json"]) for r in http.requests]
    for body in raw:
        assert "<!channel>" not in body and "<https://" not in body
    for hook in (r["json"] for r in http.requests):
        assert hook["organizations"] == [
            f"&lt;!channel&gt; &lt;https://evil.example|Billing login expired – sign in&gt; (#{evil})"
        ]
        assert "[SQL:" not in hook["error"] and "[parameters:" not in hook["error"]
        assert "injected fault" in hook["error"]
    for message in smtp.messages:
        body = email.message_from_string(message["data"])
        html = next(p for p in body.walk() if p.get_content_type() == "text/html").get_payload(decode=True).decode()
        assert "&lt;!channel&gt;" in html and "<!channel>" not in html
        assert "[SQL:" not in html
    with engine.connect() as conn:
        [errors] = conn.execute(
            sa.text("SELECT errors FROM invoice_runs WHERE organization_id = :o"), {"o": evil}
        ).scalars()
    assert errors[0]["error"].startswith("RaiseException: injected fault")
    assert "[SQL:" not in errors[0]["error"] and "INSERT" not in errors[0]["error"]
