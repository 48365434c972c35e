"""Airflow DAG `tentman_bench_control`: the benchmark's control (tentman_dev.bench.control), not billing."""

from tentman_dev.bench.control import build_control_dag

dag = build_control_dag()
