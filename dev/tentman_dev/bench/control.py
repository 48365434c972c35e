"""The benchmark's control DAG: Airflow's own floor beside billing, in the same run (`make bench-scale`).

`tentman_bench_control` is the rent DAG — built by the same factory, so the same frame (no
catch-up, one run at a time, the rent weight and weight rule), the same graph (resolve → list →
one mapped task per organization → record → reconcile) and the same task settings (pool, retries
and delays, concurrency per run, trigger rules, callbacks, mapping label) — with bodies that do
nothing: the listing returns the organization ids it is given, each organization task returns at
once, the aggregation and the reconciliation return. What its organization task costs is what any
mapped task costs on this stack; what rent's costs beyond it is ours.

It belongs to the benchmark only: its DAG file is put beside the bundle's in the benchmark
stack's own DAGs folder (benchmark_dags_folder), never in `dags/`.
"""

from __future__ import annotations

from pathlib import Path

from tentman_dev.local import REPO_ROOT

CONTROL_DAG_ID = "tentman_bench_control"
CONTROL_DAG_FILE = Path(__file__).parent / "control_dags" / f"{CONTROL_DAG_ID}.py"

DOC_MD = """
# Benchmark control (not billing)

The monthly rent DAG's frame, settings and graph with task bodies that do nothing, over the
organization ids it is given: Airflow's own cost per mapped task, measured by `make bench-scale`
beside the rent run. Bills nothing, reads and writes no TentMan table.
"""


def resolve_nothing(run_type: str) -> dict:
    return {"run_type": run_type}


# The control's param: the organization ids it maps, as ranges of consecutive ids.
ORGANIZATION_ID_RANGES_PARAM = "organization_id_ranges"


def id_ranges(ids: list[int]) -> list[list[int]]:
    """`ids` (in order) as [first, last] ranges of consecutive ids: the control's conf.

    Not the list itself: Airflow's scheduler loads every task instance of a running run with its DAG
    run, `conf` included, on each loop (DagRun.fetch_task_instances), so a conf of N ids costs the
    scheduler N × N ids decoded per loop. With 10,000 ids that was 17 s a loop (the control mapped 55
    organizations a minute where rent, whose conf holds a month, mapped 260): it measured the conf,
    not Airflow's floor. Ranges keep the conf the size of rent's.
    """
    ranges: list[list[int]] = []
    for organization_id in ids:
        if ranges and organization_id == ranges[-1][1] + 1:
            ranges[-1][1] = organization_id
        else:
            ranges.append([organization_id, organization_id])
    return ranges


def ids_of_ranges(ranges: list[list[int]]) -> list[int]:
    """The ids id_ranges was given, in their order."""
    return [organization_id for first, last in ranges for organization_id in range(first, last + 1)]


def control_conf(organization_ids: list[int]) -> dict:
    """The conf of a control run over `organization_ids`, as the benchmarks trigger it."""
    return {ORGANIZATION_ID_RANGES_PARAM: id_ranges(organization_ids)}


def list_given_organizations(run: dict) -> list[int]:
    from airflow.sdk import get_current_context

    return ids_of_ranges(get_current_context()["params"][ORGANIZATION_ID_RANGES_PARAM] or [])


def bill_nothing(organization_id: int, run: dict) -> dict:
    from airflow.sdk import get_current_context

    from tentman.names import organization_label

    # The mapping label rent renders for every instance, from a value at hand (no database read).
    get_current_context()["organization_label"] = organization_label(None, organization_id)
    return {"organization_id": organization_id}


def aggregate_nothing(run: dict | None, organization_ids: list[int] | None, results) -> list[dict]:
    # One slice request for every result, as rent's aggregation reads them.
    return list(results[:]) if results is not None else []


def reconcile_nothing(summary) -> int:
    return 0


def build_control_dag():
    """The control DAG (imported by its DAG file, in the dag-processor)."""
    from airflow.sdk import Param

    from tentman.names import RunType
    from tentman.orchestration.dag_factory import BILLING_TASKS, build_billing_dag

    return build_billing_dag(
        dag_id=CONTROL_DAG_ID,
        run_type=RunType.MONTHLY_RENT,
        schedule=None,
        params={
            ORGANIZATION_ID_RANGES_PARAM: Param(
                None,
                type=["null", "array"],
                items={"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
                title="Organization id ranges",
                description="[first, last] ranges of the organization ids to map (id_ranges).",
            )
        },
        doc_md=DOC_MD,
        tags=["bench"],
        tasks=BILLING_TASKS.with_bodies(
            resolve_period=resolve_nothing,
            list_organizations=list_given_organizations,
            bill_organization=bill_nothing,
            record_runs=aggregate_nothing,
            reconcile=reconcile_nothing,
        ),
    )


def benchmark_dags_folder(folder: Path) -> Path:
    """`folder` made a DAGs folder of the bundle's DAG files and the control's (symbolic links): a
    benchmark stack's, so that the control runs beside billing and nowhere else."""
    folder.mkdir(parents=True, exist_ok=True)
    for dag_file in [*sorted((REPO_ROOT / "dags").glob("*.py")), CONTROL_DAG_FILE]:
        (folder / dag_file.name).symlink_to(dag_file)
    return folder
