"""The billing metrics through Airflow's metrics API, in this process, with real backends.

StatsD: Airflow's StatsD logger sends to a UDP socket of the test. OpenTelemetry: Airflow's OTel
logger records into the OTel SDK's in-memory reader (what its OTLP exporter would send). The live
test (tests/live/test_metrics.py) checks the same metrics sent by real task processes.
"""

from __future__ import annotations

import socket

import pytest
from statsd import StatsClient

from support.monitoring import parse_statsd_line
from tentman.orchestration import metrics

# Airflow reads its configuration when first imported: after airflow_home has set it up.
pytestmark = [pytest.mark.airflow, pytest.mark.usefixtures("airflow_home")]

RESULT = {
    "status": "completed_with_errors",
    "total_leases": 4,
    "success_count": 2,
    "skipped_count": 1,
    "failure_count": 1,
    "invoices_created": 1,
    "invoices_updated": 1,
    "invoices_unchanged": 0,
    "stale_drafts_removed": 3,
    "statements_billed": 0,
    "amount_billed": "29703.23",
}
TAGS = metrics.billing_tags("tentman_monthly_rent_generation", "monthly_rent", 7)


def _reconciliations():
    """Organization 7's run with a failing check, organization 8's clean: only 7's violations are sent."""
    from tentman.billing.reconciliation import CHECKS_OF_RUN, CheckResult, Reconciliation
    from tentman.names import RunType

    def reconciliation(organization_id, checks):
        return Reconciliation(
            invoice_run_id=organization_id * 10,
            organization_id=organization_id,
            run_type="monthly_rent",
            billing_period_start="2027-02-01",
            dag_id="tentman_monthly_rent_generation",
            dag_run_id="scheduled__2027-01-26T02:00:00+00:00",
            checks=checks,
        )

    return [
        reconciliation(
            7,
            [
                CheckResult("rent_coverage", ok=False, violations=3, ids=[101, 102, 103]),
                CheckResult("totals", ok=True),
                CheckResult("hands_off", ok=True, note="no run window recorded"),
                CheckResult("counts", ok=True),
            ],
        ),
        reconciliation(8, [CheckResult(check, ok=True) for check in CHECKS_OF_RUN[RunType.MONTHLY_RENT]]),
    ]


def _stats():
    from airflow.sdk.observability import stats

    return stats


def _no_metrics():
    """Airflow's default: no backend (what other tests in this process expect)."""
    from airflow.sdk._shared.observability.metrics.base_stats_logger import NoStatsLogger

    _stats().initialize(factory=NoStatsLogger, export_legacy_names=True)


@pytest.fixture
def udp():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(1)
    yield sock
    sock.close()
    _no_metrics()


def _received(sock) -> list[str]:
    lines = []
    try:
        while True:
            lines.extend(sock.recv(65535).decode().splitlines())
    except TimeoutError:
        return lines


def _statsd(sock, influxdb_tags: bool = True):
    from airflow.sdk._shared.observability.metrics import statsd_logger

    port = sock.getsockname()[1]
    _stats().initialize(
        factory=lambda: statsd_logger.get_statsd_logger(
            stats_class=StatsClient,
            host="127.0.0.1",
            port=port,
            prefix="airflow",
            influxdb_tags_enabled=influxdb_tags,
            statsd_influxdb_enabled=influxdb_tags,
        ),
        export_legacy_names=True,
    )


def test_a_billed_organization_sends_every_metric_with_its_tags(udp):
    _statsd(udp)
    metrics.emit_organization_result(RESULT, tags=TAGS, engine_seconds=1.5, dry_run=False)
    lines = [parse_statsd_line(line) for line in _received(udp)]
    tags = {"dag_id": "tentman_monthly_rent_generation", "run_type": "monthly_rent", "organization_id": "7"}
    assert {(line.name, line.kind, line.value) for line in lines} == {
        ("airflow.tentman.leases_billed", "counter", 2),
        ("airflow.tentman.leases_skipped", "counter", 1),
        ("airflow.tentman.leases_failed", "counter", 1),
        ("airflow.tentman.invoices_created", "counter", 1),
        ("airflow.tentman.invoices_updated", "counter", 1),
        ("airflow.tentman.invoices_removed", "counter", 3),
        ("airflow.tentman.statements_billed", "counter", 0),
        ("airflow.tentman.amount_drafted", "counter", 29703.23),
        ("airflow.tentman.invoice_runs", "counter", 1),
        ("airflow.tentman.engine_duration", "observer", 1500),
    }
    for line in lines:
        extra = {"status": "completed_with_errors"} if line.name.endswith("invoice_runs") else {}
        assert line.tags == {**tags, **extra}, line


def test_the_amount_goes_on_the_wire_to_the_cent(udp):
    _statsd(udp)
    for amount, wire in (("29703.23", "29703.23"), ("0.10", "0.1"), ("1234567.89", "1234567.89"), ("0.00", "0.0")):
        metrics.emit_organization_result(
            {**RESULT, "amount_billed": amount}, tags=TAGS, engine_seconds=0, dry_run=False
        )
        sent = [line for line in _received(udp) if line.startswith("airflow.tentman.amount_drafted,")]
        assert [line.rsplit(":", 1)[1] for line in sent] == [f"{wire}|c"], amount


def test_a_failed_attempt_is_counted_and_a_dry_run_sends_nothing(udp):
    _statsd(udp)
    metrics.emit_organization_failure(tags=TAGS, engine_seconds=0.25)
    assert [(line.name, line.value) for line in map(parse_statsd_line, _received(udp))] == [
        ("airflow.tentman.organization_failures", 1),
        ("airflow.tentman.engine_duration", 250),
    ]
    metrics.emit_organization_result(RESULT, tags=TAGS, engine_seconds=1, dry_run=True)
    assert _received(udp) == []


def test_a_reconciliation_violation_is_counted_per_check(udp):
    _statsd(udp)
    metrics.emit_reconciliation_violations(_reconciliations(), dag_id="tentman_monthly_rent_generation")
    assert [(line.name, line.kind, line.value, line.tags) for line in map(parse_statsd_line, _received(udp))] == [
        (
            "airflow.tentman.reconciliation_violations",
            "counter",
            3,
            {
                "dag_id": "tentman_monthly_rent_generation",
                "run_type": "monthly_rent",
                "organization_id": "7",
                "check": "rent_coverage",
            },
        )
    ]


def test_a_backend_that_fails_never_fails_billing(caplog):
    class Broken:
        def __getattr__(self, name):
            raise OSError("the StatsD host is gone")

    _stats().initialize(factory=Broken, export_legacy_names=True)
    try:
        metrics.emit_organization_result(RESULT, tags=TAGS, engine_seconds=1, dry_run=False)
        metrics.emit_organization_failure(tags=TAGS, engine_seconds=1)
        metrics.emit_reconciliation_violations(_reconciliations(), dag_id="tentman_monthly_rent_generation")
    finally:
        _no_metrics()
    assert caplog.text.count("Could not send the billing") == 2
    assert caplog.text.count("Could not send the reconciliation metrics") == 1


def test_opentelemetry_records_the_same_metrics_with_the_tags_as_attributes():
    from airflow.sdk._shared.observability.metrics import otel_logger
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    _stats().initialize(factory=lambda: otel_logger.SafeOtelLogger(provider, "airflow"), export_legacy_names=True)
    try:
        metrics.emit_organization_result(RESULT, tags=TAGS, engine_seconds=1.5, dry_run=False)
        metrics.emit_organization_failure(tags=TAGS, engine_seconds=0.5)
        metrics.emit_reconciliation_violations(_reconciliations(), dag_id="tentman_monthly_rent_generation")
    finally:
        _no_metrics()
    recorded = {}
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    extra = point.attributes.get("status") or point.attributes.get("check")
                    assert (metric.name, extra) not in recorded, (metric.name, extra)
                    recorded[(metric.name, extra)] = (
                        dict(point.attributes),
                        getattr(point, "value", None) if hasattr(point, "value") else (point.count, point.sum),
                    )
    attributes = {"dag_id": "tentman_monthly_rent_generation", "run_type": "monthly_rent", "organization_id": "7"}
    assert recorded[("airflow.tentman.leases_billed", None)] == (attributes, 2)
    assert recorded[("airflow.tentman.amount_drafted", None)] == (attributes, 29703.23)
    assert recorded[("airflow.tentman.organization_failures", None)] == (attributes, 1)
    assert recorded[("airflow.tentman.invoice_runs", "completed_with_errors")][1] == 1
    # Engine time: a histogram of both attempts, in ms (OTel's unit for Airflow's timers).
    assert recorded[("airflow.tentman.engine_duration", None)] == (attributes, (2, 2000.0))
    # Organization 7's failing check only: 8's clean checks and 7's passing ones send nothing.
    assert [key for key in recorded if key[0] == "airflow.tentman.reconciliation_violations"] == [
        ("airflow.tentman.reconciliation_violations", "rent_coverage")
    ]
    assert recorded[("airflow.tentman.reconciliation_violations", "rent_coverage")] == (
        {**attributes, "check": "rent_coverage"},
        3,
    )
    assert {name for name, _ in recorded} == {f"airflow.{m.name}" for m in metrics.METRICS}
