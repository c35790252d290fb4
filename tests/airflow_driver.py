"""Runs inside Airflow's own environment (.venv-airflow/bin/python), driven by tests/test_airflow.py.

    airflow_driver.py dags                      the DAG folder as Airflow's processes parse it, as JSON
    airflow_driver.py test DAG_ID LOGICAL_DATE  one real run with dag.test(); JSON summary on the last line

The DAG folder and the metadata database come from the AIRFLOW__* / AIRFLOW_HOME environment.
"""
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from airflow.configuration import conf
from airflow.dag_processing.dagbag import BundleDagBag


def dag_bag() -> BundleDagBag:
    # the DAG processor, the task runner and dag.test() all parse with BundleDagBag: the DAG
    # folder is on sys.path, so the DAGs can import their settings module
    folder = Path(conf.get("core", "dags_folder"))
    return BundleDagBag(dag_folder=folder, bundle_path=folder)


def describe(bag: BundleDagBag) -> dict:
    dags = {}
    for dag_id, dag in bag.dags.items():
        dags[dag_id] = {
            "schedule": repr(dag.timetable),
            "timetable": type(dag.timetable).__name__,
            "cron": getattr(dag.timetable, "expression", None),
            "max_active_runs": dag.max_active_runs,
            "catchup": dag.catchup,
            "tasks": [{"task_id": t.task_id, "retries": t.retries,
                       "retry_delay_s": t.retry_delay.total_seconds(),
                       "timeout_s": t.execution_timeout.total_seconds() if t.execution_timeout else None,
                       "trigger_rule": str(t.trigger_rule.value),
                       "upstream": sorted(t.upstream_task_ids),
                       "operator": type(t).__name__,
                       "queue": t.queue,
                       "bash_command": getattr(t, "bash_command", None),
                       "cwd": getattr(t, "cwd", None)}
                      for t in dag.topological_sort()],
        }
    return {"import_errors": {str(k): v for k, v in bag.import_errors.items()}, "dags": dags}


def test_run(dag_id: str, logical_date: str) -> dict:
    bag = dag_bag()
    if dag_id not in bag.dags:
        return {"error": f"no DAG {dag_id}", "import_errors": {str(k): v for k, v in bag.import_errors.items()}}
    when = datetime.fromisoformat(logical_date).replace(tzinfo=timezone.utc)
    dr = bag.dags[dag_id].test(logical_date=when)
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    with create_session() as session:
        runs = session.query(DagRun).all()
        all_runs = [{"dag_id": r.dag_id, "run_id": r.run_id, "state": str(r.state), "conf": r.conf,
                     "logical_date": r.logical_date.isoformat() if r.logical_date else None} for r in runs]
    return {"dag_id": dag_id, "run_id": dr.run_id, "state": str(dr.state),
            "tasks": {ti.task_id: (str(ti.state) if ti.state else None) for ti in dr.get_task_instances()},
            "runs": all_runs}


if __name__ == "__main__":
    if sys.argv[1] == "dags":
        out = describe(dag_bag())
    elif sys.argv[1] == "test":
        out = test_run(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(__doc__)
    print("\nRESULT " + json.dumps(out))
