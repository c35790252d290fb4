"""
### devchange training: retrain a challenger on the newest labelled months

One task, `devchange retrain`: the DVC pipeline as an experiment named after the month the
training window ends at (`retrain-2020-11`), run in a temporary copy of the workspace
(`dvc exp run --temp`), so the workspace is left as it was. The new version is registered
with the alias `challenger` and tagged with its window, data hash and experiment; it then
scores the months waiting for their targets in the shadow, and the monthly DAG promotes it
when it wins.

Triggered by `devchange_monthly` on a `retrain` verdict, with `{"month": "<the evaluated
month>"}` as conf: the window ends at that month. Triggered by hand without conf: the window
ends at the newest labelled month. A retrain that exists already changes nothing.
Settings: see `devchange_settings.py`.
"""
from datetime import datetime, timezone

from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG

import devchange_settings as settings

with DAG(
    dag_id=settings.TRAINING_DAG_ID,
    description="devchange retrain: the pipeline as a DVC experiment on the newest labelled window",
    schedule=settings.TRAINING_SCHEDULE,
    start_date=datetime(2020, 9, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,  # one DVC experiment per workspace at a time
    default_args=settings.default_args(),
    doc_md=__doc__,
    tags=["devchange"],
) as dag:
    BashOperator(
        task_id="retrain",
        # the month travels in an environment variable, never pasted into the shell
        bash_command=settings.project_command(
            'devchange retrain ${DEVCHANGE_RETRAIN_MONTH:+--month "$DEVCHANGE_RETRAIN_MONTH"}'),
        cwd=str(settings.ROOT),
        env={**settings.env(), "DEVCHANGE_RETRAIN_MONTH": "{{ (dag_run.conf or {}).get('month', '') }}"},
        append_env=True,
    )
