"""
### devchange monthly: score a month, evaluate the month before, promote

For the month of the run's **logical date** (its last day, e.g. 2020-11-30 for any logical
date in November; the wall clock is never used). With the monthly schedule a run's logical
date is the start of the month it covers, and the run starts once that month is over.

1. `score_month`: `devchange score-month` on `<stream>/<month>/features.feather` with the
   registry's `champion` (writes `data/production/<month>/`).
2. `evaluate_previous_month`: when the previous month's targets have arrived
   (`<stream>/<previous month>/targets.feather`), `devchange evaluate-month --fail-on-retrain`:
   performance, drift and the verdict. Not arrived: the task is **skipped** and its log says so.
   Verdict `retrain`: the task fails with the verdict's reasons in its log, so the run fails;
   it is not retried (the same files give the same verdict).
3. `promote`: `devchange promote` moves `champion` only if the challenger wins.
4. `trigger_training`: only when the evaluation failed, triggers `devchange_training`.

Settings (stream folder, environment, tracking URI, retries): see `devchange_settings.py`.
"""
from datetime import datetime, timezone

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, CronDataIntervalTimetable, TriggerRule

import devchange_settings as settings

MONTH = "{{ month_end(logical_date) }}"
PREVIOUS = "{{ previous_month_end(logical_date) }}"

with DAG(
    dag_id=settings.MONTHLY_DAG_ID,
    description="score the month with the champion, evaluate the previous month, promote",
    # a data-interval schedule: the run covering November has logical date November 1st and
    # starts when November is over
    schedule=CronDataIntervalTimetable(settings.MONTHLY_CRON, timezone="UTC"),
    start_date=datetime(2020, 10, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,  # months in order: evaluating a month needs the run that scored it
    default_args=settings.default_args(settings.MONTHLY_QUEUE),
    user_defined_macros={"month_end": settings.month_end, "previous_month_end": settings.previous_month_end},
    doc_md=__doc__,
    tags=["devchange"],
) as dag:
    common = {"cwd": str(settings.ROOT), "env": settings.env(), "append_env": True}

    score = BashOperator(
        task_id="score_month",
        bash_command=settings.project_command(
            f'devchange score-month --features "{settings.STREAM_DIR}/{MONTH}/features.feather"'),
        **common,
    )
    evaluate = BashOperator(
        task_id="evaluate_previous_month",
        bash_command=settings.project_command(
            f'targets="{settings.STREAM_DIR}/{PREVIOUS}/targets.feather"\n'
            f'if [ ! -e "$targets" ]; then\n'
            f'  echo "targets of {PREVIOUS} have not arrived ($targets): evaluation skipped"\n'
            f'  exit 99\n'
            f'fi\n'
            f'devchange evaluate-month --targets "$targets" --fail-on-retrain'),
        skip_on_exit_code=99,
        retries=0,  # its failure is a verdict (or bad input): a retry would say the same
        trigger_rule=TriggerRule.ALL_DONE,  # the previous month is evaluated even if scoring this one failed
        **common,
    )
    promote = BashOperator(
        task_id="promote",
        bash_command=settings.project_command("devchange promote"),
        trigger_rule=TriggerRule.NONE_FAILED,  # also when there was nothing to evaluate
        **common,
    )
    score >> evaluate
    [score, evaluate] >> promote  # a failed scoring or evaluation fails the run through here

    if settings.RETRAIN_TRIGGERS_TRAINING:
        trigger = TriggerDagRunOperator(
            task_id="trigger_training",
            trigger_dag_id=settings.TRAINING_DAG_ID,
            conf={"reason": f"devchange_monthly: evaluation of {PREVIOUS} failed"},
            trigger_rule=TriggerRule.ONE_FAILED,
            retries=0,
        )
        evaluate >> trigger
