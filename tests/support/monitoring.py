"""The monitoring profile's configuration, read the way its components read it.

- StatsD lines as Airflow sends them with [metrics] statsd_influxdb_enabled (tags in the name);
- the StatsD exporter's glob mapping (deploy/monitoring/statsd-mapping.yml): which Prometheus
  metric, with which labels, a line becomes — first matching rule wins, `*` is one dot-free part;
- the metric names a PromQL expression (dashboard query, alert rule) reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

import yaml

from tentman.orchestration.metrics import METRICS
from tentman_dev.local import REPO_ROOT

MONITORING = REPO_ROOT / "deploy" / "monitoring"
STATSD_PREFIX = "airflow"

# Airflow's own metrics the dashboard and alert rules read (Airflow 3 names, tags not in the name;
# airflow-core's metrics_template.yaml defines them): StatsD name → kind as the exporter sees it.
AIRFLOW_METRICS = {
    "ti.finish": "counter",
    "ti.start": "counter",
    "ti_failures": "counter",
    "ti_successes": "counter",
    "task.duration": "observer",
    "task.scheduled_duration": "observer",
    "dagrun.duration.success": "observer",
    "dagrun.duration.failed": "observer",
    "pool.queued_slots": "gauge",
    "pool.starving_tasks": "gauge",
    "pool.open_slots": "gauge",
    "pool.running_slots": "gauge",
}
KINDS = {"c": "counter", "g": "gauge", "ms": "observer", "h": "observer", "d": "observer"}
# What a histogram is stored as in Prometheus.
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def statsd_env(host: str, port: int) -> dict[str, str]:
    """Airflow's [metrics] settings for StatsD with tags: docs/monitoring.md, the
    compose profile (tests/test_deployment.py compares) and the live test (tests/live/test_metrics.py)."""
    return {
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": host,
        "AIRFLOW__METRICS__STATSD_PORT": str(port),
        "AIRFLOW__METRICS__STATSD_PREFIX": STATSD_PREFIX,
        "AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED": "True",
    }


@dataclass(frozen=True)
class StatsdLine:
    name: str
    tags: dict[str, str]
    value: float
    kind: str  # counter, gauge or observer


def parse_statsd_line(line: str) -> StatsdLine:
    """`airflow.tentman.leases_billed,dag_id=x,run_type=rent:2|c` (InfluxDB-style tags)."""
    head, _, rest = line.rpartition(":")
    value, _, kind = rest.partition("|")
    name, *tags = head.split(",")
    return StatsdLine(name, dict(tag.split("=", 1) for tag in tags), float(value), KINDS[kind.split("|")[0]])


@cache
def mapping() -> dict:
    return yaml.safe_load((MONITORING / "statsd-mapping.yml").read_text())


def _glob(pattern: str) -> re.Pattern:
    parts = ("([^.]+)" if part == "*" else re.escape(part) for part in pattern.split("."))
    return re.compile("^" + r"\.".join(parts) + "$")


def map_statsd_name(name: str, kind: str) -> tuple[str, dict[str, str]] | None:
    """(Prometheus name, labels from the rule) for a StatsD name; None when a rule drops it.

    Unmatched names keep the exporter's default: dots and dashes become underscores.
    """
    for rule in mapping()["mappings"]:
        if rule.get("match_metric_type") not in (None, kind):
            continue
        found = _glob(rule["match"]).match(name)
        if not found:
            continue
        if rule.get("action") == "drop":
            return None

        def substitute(text: str, found: re.Match = found) -> str:
            return re.sub(r"\$\{?(\d+)\}?", lambda m: found.group(int(m.group(1))), text)

        return substitute(rule["name"]), {k: substitute(v) for k, v in (rule.get("labels") or {}).items()}
    return re.sub(r"[.-]", "_", name), {}


def stored_names(prometheus_name: str, kind: str) -> set[str]:
    """The names Prometheus stores for one exporter metric (a histogram is three series)."""
    if kind == "observer":
        return {prometheus_name + suffix for suffix in HISTOGRAM_SUFFIXES}
    return {prometheus_name}


def emitted_prometheus_names() -> dict[str, str]:
    """Every Prometheus name the tasks' and Airflow's metrics we rely on become → its StatsD name."""
    names = {}
    sources = [(m.name, "observer" if m.kind == "timer" else m.kind) for m in METRICS]
    sources += list(AIRFLOW_METRICS.items())
    for stat, kind in sources:
        statsd_name = f"{STATSD_PREFIX}.{stat}"
        mapped = map_statsd_name(statsd_name, kind)
        assert mapped is not None, f"{statsd_name} is dropped by the mapping"
        for name in stored_names(mapped[0], kind):
            names[name] = statsd_name
    return names


# PromQL words that look like metric names but are functions, keywords or label names.
_PROMQL_WORDS = re.compile(r"\b((?:tentman|airflow)_[a-zA-Z0-9_]+)\b(?!\s*=)")


def metric_names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (ours and Airflow's all start with their prefix)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    return set(_PROMQL_WORDS.findall(without_strings))


_LABEL_USES = (
    re.compile(r"\b(?:by|without)\s*\(([^)]*)\)"),  # sum by (run_type, organization_id)
    re.compile(r"[{,]\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)"),  # {dag_id=~"tentman_.*"}
)


def labels_in(expr: str) -> set[str]:
    """The label names a PromQL expression groups or filters by."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    found = set()
    for pattern in _LABEL_USES:
        for match in pattern.findall(without_strings):
            found |= {label.strip() for label in match.split(",") if label.strip()}
    return found


def queries() -> dict[str, str]:
    """Every PromQL expression of the dashboard and the alert rules, by where it is."""
    import json

    dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "tentman-billing.json").read_text())
    rules = yaml.safe_load((MONITORING / "alert-rules.yml").read_text())
    found = {
        f"panel {panel['title']!r} {target['refId']}": target["expr"]
        for panel in dashboard["panels"]
        for target in panel["targets"]
    }
    found |= {f"alert {rule['alert']}": rule["expr"] for group in rules["groups"] for rule in group["rules"]}
    return found
