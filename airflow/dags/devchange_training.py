"""
### devchange training: the DVC pipeline, one task per stage

One task per stage of `dvc.yaml`, in its order, each running
`dvc repro --single-item <stage>` in the project root with the project's environment.
DVC decides what is up to date: a stage whose code, data and params did not change is
skipped by DVC (the task succeeds in a second or two). The `train` stage registers a new
model version with the alias `challenger`; the monthly DAG promotes it when it wins.

Runs when triggered (by hand, or by `devchange_monthly` when monitoring says `retrain`), or
on `DEVCHANGE_TRAINING_SCHEDULE`. Settings: see `devchange_settings.py`.
"""
import shlex
from datetime import datetime, timezone

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, chain

import devchange_settings as settings

with DAG(
    dag_id=settings.TRAINING_DAG_ID,
    description="dvc repro, one task per stage of dvc.yaml",
    schedule=settings.TRAINING_SCHEDULE,
    start_date=datetime(2020, 10, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,  # one `dvc repro` per workspace at a time (DVC holds a lock)
    default_args=settings.default_args(settings.TRAINING_QUEUE),
    doc_md=__doc__,
    tags=["devchange"],
) as dag:
    chain(*[
        BashOperator(
            task_id=stage,
            bash_command=settings.project_command(f"dvc repro --single-item {shlex.quote(stage)}"),
            cwd=str(settings.ROOT),
            env=settings.env(),
            append_env=True,
        )
        for stage in settings.dvc_stages()
    ])
