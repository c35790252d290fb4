"""
### devchange monthly: evaluate the month before, promote, score the month, retrain when told to

For the month of the run's **logical date** (its last day, e.g. 2020-11-30 for any logical
date in November; the wall clock is never used). With the monthly schedule a run's logical
date is the start of the month it covers, and the run starts once that month is over.

1. `evaluate_previous_month`: when the previous month's targets have arrived
   (`<stream>/<previous month>/targets.feather`), `devchange evaluate-month`: performance,
   drift and the verdict for the champion's list and every shadow list; the month joins the
   labelled store (DVC). Not arrived, or the month was not scored here (the first month a DAG
   runs): the task is **skipped** and its log says so.
2. `promote`: `devchange promote` compares challenger and champion on the newest month with
   targets that both scored blind, and moves `champion` only if the challenger wins.
3. `score_month`: `devchange score-month` on `<stream>/<month>/features.feather` with the
   `champion`, and with the challenger in the shadow (`data/production/<month>/`). Features
   not arrived: **skipped** (so unpausing the DAG for a backfill runs nothing for today's month).
4. `retrain_needed` → `retrain`: when the previous month's verdict is `retrain`, triggers
   `devchange_training` for the window ending at that month (run id `retrain__<month>`: a
   rerun of the month triggers nothing new) and waits for it, so the new challenger shadows
   this month before the next run compares it.
5. `report`: `devchange report`, after every other task whatever became of it: the production
   page says what happened.
6. `any_step_failed`: fails the run when a step failed, and is skipped otherwise. `report` runs
   after anything, so without this last task a month whose scoring failed would show as a
   successful run.

Settings (stream folder, environment, tracking URI, retries): see `devchange_settings.py`.
"""
from datetime import datetime, timezone

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.python import PythonOperator, ShortCircuitOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, CronDataIntervalTimetable, TriggerRule

import devchange_settings as settings

MONTH = "{{ month_end(logical_date) }}"
PREVIOUS = "{{ previous_month_end(logical_date) }}"

with DAG(
    dag_id=settings.MONTHLY_DAG_ID,
    description="evaluate the previous month, promote, score the month, retrain on a retrain verdict",
    # a data-interval schedule: the run covering November has logical date November 1st and
    # starts when November is over
    schedule=CronDataIntervalTimetable(settings.MONTHLY_CRON, timezone="UTC"),
    start_date=datetime(2020, 9, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,  # months in order: evaluating a month needs the run that scored it
    default_args=settings.default_args(settings.MONTHLY_QUEUE),
    user_defined_macros={"month_end": settings.month_end, "previous_month_end": settings.previous_month_end},
    doc_md=__doc__,
    tags=["devchange"],
) as dag:
    common = {"cwd": str(settings.ROOT), "env": settings.env(), "append_env": True}

    evaluate = BashOperator(
        task_id="evaluate_previous_month",
        bash_command=settings.project_command(
            f'targets="{settings.STREAM_DIR}/{PREVIOUS}/targets.feather"\n'
            f'if [ ! -e "$targets" ]; then\n'
            f'  echo "targets of {PREVIOUS} have not arrived ($targets): evaluation skipped"\n'
            f'  exit 99\n'
            f'fi\n'
            f'if [ ! -e "data/production/{PREVIOUS}/scores.parquet" ]; then\n'
            f'  echo "{PREVIOUS} was not scored here (no data/production/{PREVIOUS}/): nothing to evaluate"\n'
            f'  exit 99\n'
            f'fi\n'
            f'devchange evaluate-month --targets "$targets"'),
        skip_on_exit_code=99,
        **common,
    )
    promote = BashOperator(
        task_id="promote",
        bash_command=settings.project_command("devchange promote"),
        trigger_rule=TriggerRule.NONE_FAILED,  # also when there was nothing to evaluate
        **common,
    )
    score = BashOperator(
        task_id="score_month",
        bash_command=settings.project_command(
            f'features="{settings.STREAM_DIR}/{MONTH}/features.feather"\n'
            f'if [ ! -e "$features" ]; then\n'
            f'  echo "features of {MONTH} have not arrived ($features): nothing to score"\n'
            f'  exit 99\n'
            f'fi\n'
            f'devchange score-month --features "$features"'),
        skip_on_exit_code=99,
        trigger_rule=TriggerRule.NONE_FAILED,
        **common,
    )
    report = BashOperator(
        task_id="report",
        bash_command=settings.project_command("devchange report"),
        trigger_rule=TriggerRule.ALL_DONE,  # also after a failed or skipped step: the page says what happened
        **common,
    )
    evaluate >> promote >> score >> report

    if settings.RETRAIN_TRIGGERS_TRAINING:
        needed = ShortCircuitOperator(
            task_id="retrain_needed",
            python_callable=settings.retrain_needed,
            op_args=[PREVIOUS],
            trigger_rule=TriggerRule.NONE_FAILED,
            ignore_downstream_trigger_rules=False,  # skip only `retrain`: the report still runs
        )
        retrain = TriggerDagRunOperator(
            task_id="retrain",
            trigger_dag_id=settings.TRAINING_DAG_ID,
            trigger_run_id=f"retrain__{PREVIOUS}",
            conf={"month": PREVIOUS, "reason": f"devchange_monthly: the verdict of {PREVIOUS} is retrain"},
            skip_when_already_exists=True,  # a rerun of this month: that retrain exists
            wait_for_completion=True,
            deferrable=True,  # waits in the triggerer, not in a worker slot the training run needs
            poke_interval=10,
            retries=0,
        )
        score >> needed >> retrain >> report

    failed = PythonOperator(
        task_id="any_step_failed",
        python_callable=settings.fail_run,
        trigger_rule=TriggerRule.ONE_FAILED,  # skipped unless a step failed
        retries=0,
    )
    [t for t in dag.tasks if t is not failed] >> failed
