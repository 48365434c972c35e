"""Billing metrics on live Airflow, received by a real StatsD listener (a UDP socket of the test).

Airflow runs with the [metrics] settings docs/monitoring.md gives (StatsD on, tags
in InfluxDB form, pointed at this test's socket). One rent run on two organizations of known
leases; the lines the task processes sent are checked for names, values (the amount to the cent)
and tags, and Airflow's own task and DAG-run metrics must have arrived beside them. Every line is
then mapped the way the monitoring profile's StatsD exporter maps it, and must give the
Prometheus names the dashboard and alert rules read (tests/test_deployment.py checks those).
"""

from __future__ import annotations

import gzip
import http.server
import socket
import threading
from collections import defaultdict
from datetime import date

import pytest

from support.factories import add_lease, add_organization, inject_invoice_fault
from support.live import Api, live_stack, poll
from support.monitoring import (
    AIRFLOW_METRICS,
    emitted_prometheus_names,
    labels_in,
    map_statsd_name,
    metric_names_in,
    parse_statsd_line,
    queries,
    statsd_env,
    stored_names,
)
from tentman.names import DAG_IDS, RENT_DAG_ID, RunType
from tentman.orchestration import metrics

pytestmark = pytest.mark.live


class StatsdListener:
    """Every datagram sent to a UDP port of 127.0.0.1, one line per metric."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            self.lines.extend(line for line in data.decode().splitlines() if line)

    def close(self):
        self._stop.set()
        self._thread.join()
        self.sock.close()


def metrics_env(port: int) -> dict[str, str]:
    return {
        **statsd_env("127.0.0.1", port),
        # Quick retries: the fault below fails one organization's first attempt.
        "TENTMAN_ORG_TASK_RETRIES": "2",
        "TENTMAN_ORG_TASK_RETRY_DELAY_SECONDS": "2",
    }


def test_one_rent_run_sends_its_billing_metrics_and_airflows_own(pg_admin_uri, tmp_path):
    listener = StatsdListener()
    try:
        with live_stack(pg_admin_uri, tmp_path, extra_env=metrics_env(listener.port)) as (stack, engine, _):
            _run_and_check(stack, engine, listener)
    finally:
        listener.close()


def _bill_one_rent_run(stack, engine) -> tuple[int, int]:
    """Two organizations of known leases, one rent run: (North, South)."""
    admin = Api(stack.base_url, "admin")
    for dag_id in DAG_IDS:
        admin.client.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
    # Each DAG's latest scheduled tick runs (catchup=False): let them end before the data exists,
    # so that they bill none of the organizations below.
    poll(
        lambda: all(
            run["state"] in ("success", "failed")
            for dag_id in DAG_IDS
            for run in admin.client.get(f"/dags/{dag_id}/dagRuns").json()["dag_runs"]
        ),
        timeout=300,
        interval=2,
        what="the scheduled ticks ended",
    )
    with engine.begin() as conn:
        north, south = add_organization(conn, "Metrics North"), add_organization(conn, "Metrics South")
        add_lease(conn, north, date(2025, 1, 1), None, "1000.00")
        add_lease(conn, north, date(2025, 1, 1), None, "1234.56", unit="1B")
        add_lease(conn, north, date(2025, 1, 1), None, None, unit="1C")  # no rent: that lease fails
        add_lease(conn, south, date(2025, 1, 1), None, "800.10")
        inject_invoice_fault(conn, south, failures=1)  # its first attempt fails, the retry bills it
    response = admin.trigger(RENT_DAG_ID, {"billing_month": "2027-03", "organization_ids": [north, south]})
    assert response.status_code == 200, response.text
    run = admin.wait(RENT_DAG_ID, response.json()["dag_run_id"], timeout=300)
    assert run["state"] == "success"
    return north, south


def _run_and_check(stack, engine, listener):
    north, south = _bill_one_rent_run(stack, engine)

    def received() -> list:
        return [parse_statsd_line(line) for line in list(listener.lines)]

    # The DAG run's duration is sent by the scheduler once it has marked the run finished.
    poll(
        lambda: any(line.name == "airflow.dagrun.duration.success" for line in received()),
        timeout=60,
        what="Airflow's DAG-run duration received",
    )
    lines = received()

    # --- Ours: one line per metric and organization, the values of the run, the three tags.
    ours = defaultdict(list)
    for line in lines:
        if line.name.startswith("airflow.tentman.") and line.tags.get("organization_id") in (str(north), str(south)):
            ours[(line.name.removeprefix("airflow."), line.tags["organization_id"])].append(line)
    for (name, org), found in ours.items():
        for line in found:
            expected = {"dag_id": RENT_DAG_ID, "run_type": RunType.MONTHLY_RENT, "organization_id": org}
            if name == metrics.INVOICE_RUNS.name:
                expected["status"] = line.tags["status"]
            assert line.tags == expected, line
    counts = {key: [line.value for line in found] for key, found in ours.items()}
    expected_counts = {
        # North: two leases billed, one without rent failed; 1000.00 + 1234.56.
        (metrics.LEASES_BILLED.name, str(north)): [2],
        (metrics.LEASES_SKIPPED.name, str(north)): [0],
        (metrics.LEASES_FAILED.name, str(north)): [1],
        (metrics.INVOICES_CREATED.name, str(north)): [2],
        (metrics.INVOICES_UPDATED.name, str(north)): [0],
        (metrics.INVOICES_REMOVED.name, str(north)): [0],
        (metrics.STATEMENTS_BILLED.name, str(north)): [0],
        (metrics.AMOUNT_DRAFTED.name, str(north)): [2234.56],
        (metrics.INVOICE_RUNS.name, str(north)): [1],
        # South: the first attempt failed (counted), the retry billed its one lease.
        (metrics.LEASES_BILLED.name, str(south)): [1],
        (metrics.LEASES_SKIPPED.name, str(south)): [0],
        (metrics.LEASES_FAILED.name, str(south)): [0],
        (metrics.INVOICES_CREATED.name, str(south)): [1],
        (metrics.INVOICES_UPDATED.name, str(south)): [0],
        (metrics.INVOICES_REMOVED.name, str(south)): [0],
        (metrics.STATEMENTS_BILLED.name, str(south)): [0],
        (metrics.AMOUNT_DRAFTED.name, str(south)): [800.10],
        (metrics.INVOICE_RUNS.name, str(south)): [1],
        (metrics.ORGANIZATION_FAILURES.name, str(south)): [1],
    }
    assert {k: v for k, v in counts.items() if k[0] != metrics.ENGINE_DURATION.name} == expected_counts
    # The amount as sent, to the cent (no float noise on the wire).
    amounts = [line for line in listener.lines if line.startswith(f"airflow.{metrics.AMOUNT_DRAFTED.name},")]
    assert {line.rsplit(":", 1)[1] for line in amounts if f"organization_id={north}" in line} == {"2234.56|c"}
    assert {line.rsplit(":", 1)[1] for line in amounts if f"organization_id={south}" in line} == {"800.1|c"}
    statuses = {line.tags["organization_id"]: line.tags["status"] for (n, _), f in ours.items() for line in f
                if n == metrics.INVOICE_RUNS.name}  # fmt: skip
    assert statuses == {str(north): "completed_with_errors", str(south): "completed"}
    # Engine seconds: one timing per attempt (South: the failed one and the retry), in ms on the wire.
    durations = {org: found for (name, org), found in ours.items() if name == metrics.ENGINE_DURATION.name}
    assert {org: len(found) for org, found in durations.items()} == {str(north): 1, str(south): 2}
    assert all(line.kind == "observer" and 0 < line.value < 120_000 for found in durations.values() for line in found)

    # --- Airflow's own task and DAG-run metrics arrived too, tagged with the DAG.
    airflow_lines = defaultdict(list)
    for line in lines:
        airflow_lines[line.name.removeprefix("airflow.")].append(line)
    for name in ("ti.start", "ti.finish", "ti_successes", "task.duration", "task.scheduled_duration"):
        tagged = [line for line in airflow_lines[name] if line.tags.get("dag_id") == RENT_DAG_ID]
        assert {line.tags.get("task_id") for line in tagged} >= {"bill_organization", "record_invoice_runs"}, name
    assert any(line.tags.get("dag_id") == RENT_DAG_ID for line in airflow_lines["dagrun.duration.success"])
    finished = [line for line in airflow_lines["ti.finish"] if line.tags.get("task_id") == "bill_organization"]
    assert {line.tags["state"] for line in finished} >= {"success", "up_for_retry"}
    assert any(line.tags.get("pool_name") for line in airflow_lines["pool.open_slots"])

    # --- What the StatsD exporter makes of these lines: the Prometheus names the dashboard reads.
    relied_on_names = emitted_prometheus_names()
    received_labels = defaultdict(set)  # Prometheus name → the labels its received lines carry
    for line in lines:
        mapped = map_statsd_name(line.name, line.kind)
        if mapped is not None:
            for name in stored_names(mapped[0], line.kind):
                received_labels[name] |= (
                    set(line.tags) | set(mapped[1]) | ({"le"} if name.endswith("_bucket") else set())
                )
    relied_on = {f"airflow.{m.name}" for m in metrics.METRICS} | {f"airflow.{n}" for n in AIRFLOW_METRICS}
    # Every name the dashboard may read, from a line that a successful run sends, arrived mapped.
    not_sent_by_a_successful_run = {
        "airflow.ti_failures",
        "airflow.dagrun.duration.failed",
        f"airflow.{metrics.RECONCILIATION_VIOLATIONS.name}",  # a clean reconciliation sends nothing
    }
    for prometheus_name, statsd_name in relied_on_names.items():
        assert statsd_name in relied_on
        if statsd_name not in not_sent_by_a_successful_run:
            assert prometheus_name in received_labels, (prometheus_name, statsd_name)
    assert "tentman_leases_billed_total" in received_labels
    assert "tentman_engine_duration_seconds_bucket" in received_labels
    # Every label a query groups or filters by is one that the lines of its metrics carry.
    for where, expr in queries().items():
        names = metric_names_in(expr)
        if names <= set(received_labels):
            available = set().union(*(received_labels[name] for name in names))
            assert labels_in(expr) <= available, (where, sorted(labels_in(expr) - available))


class OtlpReceiver:
    """An OTLP/HTTP metrics endpoint (protobuf), as an OpenTelemetry collector exposes it."""

    def __init__(self):
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceRequest,
            ExportMetricsServiceResponse,
        )

        self.requests: list = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.requests.append((self.path, ExportMetricsServiceRequest.FromString(body)))
                reply = ExportMetricsServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def points(self) -> dict:
        """(metric, attributes, stream start) → the stream's last value (a sum; a histogram's count and sum).

        Each task process exports its own cumulative streams, told apart by their start time."""
        found = {}
        for _, request in list(self.requests):
            for resource in request.resource_metrics:
                for scope in resource.scope_metrics:
                    for metric in scope.metrics:
                        kind = metric.WhichOneof("data")
                        for point in getattr(metric, kind).data_points:
                            attributes = tuple(sorted((a.key, a.value.string_value) for a in point.attributes))
                            if kind == "sum":
                                value = point.as_double if point.WhichOneof("value") == "as_double" else point.as_int
                            elif kind in ("histogram", "exponential_histogram"):
                                value = (point.count, point.sum)
                            else:
                                value = point.as_double if point.WhichOneof("value") == "as_double" else point.as_int
                            found[(metric.name, attributes, point.start_time_unix_nano)] = value
        return found

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()


def test_with_opentelemetry_the_same_metrics_reach_an_otlp_endpoint(pg_admin_uri, tmp_path):
    """[metrics] otel_on instead of StatsD: each task process exports its metrics over OTLP/HTTP,
    flushed when the process ends; the tags arrive as attributes."""
    receiver = OtlpReceiver()
    env = {
        "AIRFLOW__METRICS__OTEL_ON": "True",
        "AIRFLOW__METRICS__OTEL_PREFIX": "airflow",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"http://127.0.0.1:{receiver.port}/v1/metrics",
        "OTEL_METRIC_EXPORT_INTERVAL": "2000",
        "TENTMAN_ORG_TASK_RETRIES": "2",
        "TENTMAN_ORG_TASK_RETRY_DELAY_SECONDS": "2",
    }
    try:
        with live_stack(pg_admin_uri, tmp_path, extra_env=env) as (stack, engine, _):
            north, south = _bill_one_rent_run(stack, engine)

            def ours() -> dict:
                totals = defaultdict(float)
                for (name, attributes, _), value in receiver.points().items():
                    tags = dict(attributes)
                    if name.startswith("airflow.tentman.") and tags.get("organization_id") in (str(north), str(south)):
                        assert (tags["dag_id"], tags["run_type"]) == (RENT_DAG_ID, RunType.MONTHLY_RENT), tags
                        key = (name.removeprefix("airflow."), tags["organization_id"])
                        totals[key] += value[0] if isinstance(value, tuple) else value
                return dict(totals)

            expected = {
                (metrics.LEASES_BILLED.name, str(north)): 2,
                (metrics.LEASES_FAILED.name, str(north)): 1,
                (metrics.INVOICES_CREATED.name, str(north)): 2,
                (metrics.AMOUNT_DRAFTED.name, str(north)): 2234.56,
                (metrics.LEASES_BILLED.name, str(south)): 1,
                (metrics.AMOUNT_DRAFTED.name, str(south)): 800.10,
                (metrics.ORGANIZATION_FAILURES.name, str(south)): 1,
                # Engine time: one observation per attempt.
                (metrics.ENGINE_DURATION.name, str(north)): 1,
                (metrics.ENGINE_DURATION.name, str(south)): 2,
            }
            try:
                poll(lambda: all(ours().get(k) == v for k, v in expected.items()), timeout=60, what="OTLP metrics")
            except TimeoutError:
                assert ours() == expected  # shows what did arrive
            names = {name for name, _, _ in receiver.points()}
            assert {"airflow.ti.finish", "airflow.task.duration"} <= names
    finally:
        receiver.close()
