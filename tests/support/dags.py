"""The bundle's DAGs as Airflow parses them, for tests that run or inspect a DAG in-process."""

from __future__ import annotations

from tentman_dev.local import REPO_ROOT

DAGS = REPO_ROOT / "dags"


def load_dag(dag_id: str):
    """The DAG `dag_id` from the bundle's folder, parsed with no import error in any file."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
    return bag.dags[dag_id]
