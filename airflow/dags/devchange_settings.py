"""Configuration shared by devchange's DAGs (not a DAG file: listed in .airflowignore).

Every value comes from an environment variable of the Airflow processes (DAG processor,
scheduler, workers), with a default that works in a fresh clone started by `make airflow`:

| variable                        | default                           | what                                     |
|---------------------------------|-----------------------------------|------------------------------------------|
| DEVCHANGE_ROOT                  | the repository holding this file  | project root: dvc.yaml, params.yaml      |
| DEVCHANGE_VENV                  | <root>/.venv                      | the project's environment (dvc, devchange)|
| DEVCHANGE_STREAM_DIR            | <root>/data/stream                | monthly files: <month>/features.feather, <month>/targets.feather |
| MLFLOW_TRACKING_URI             | unset: <root>/mlflow.db (SQLite)  | tracking server / registry               |
| DEVCHANGE_RETRIES               | 1                                 | retries per task                         |
| DEVCHANGE_RETRY_DELAY_S         | 300                               | wait before a retry                      |
| DEVCHANGE_TASK_TIMEOUT_S        | 7200                              | a task running longer fails              |
| DEVCHANGE_TRAINING_SCHEDULE     | unset: triggered only             | cron or preset (@weekly) for training    |
| DEVCHANGE_MONTHLY_CRON          | 0 6 1 * *                         | when a month's production run starts     |
| DEVCHANGE_RETRAIN_TRIGGERS_TRAINING | true                          | a `retrain` verdict triggers training    |
| DEVCHANGE_QUEUE                 | unset: Airflow's default queue    | executor queue of every task             |
| DEVCHANGE_TRAINING_QUEUE        | DEVCHANGE_QUEUE                   | queue of the training DAG's tasks        |
| DEVCHANGE_MONTHLY_QUEUE         | DEVCHANGE_QUEUE                   | queue of the monthly DAG's tasks         |

Tasks run the project's own commands (`dvc`, `devchange`) in the project's environment, in
the project root; nothing of the pipeline is written here.
"""
from __future__ import annotations

import calendar
import json
import os
import shlex
from datetime import date, datetime, timedelta
from pathlib import Path


class SettingsError(ValueError):
    "A DEVCHANGE_* variable has a value the DAGs cannot use."


def _path(name: str, default: Path, root: Path | None = None) -> Path:
    value = os.environ.get(name)
    if not value: return default.resolve()
    p = Path(value).expanduser()
    return (p if p.is_absolute() or root is None else root / p).resolve()


def _number(name: str, default: float, kind=int):
    value = os.environ.get(name)
    if value in (None, ""): return kind(default)
    try:
        n = kind(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r}: expected a {kind.__name__}") from None
    if n < 0: raise SettingsError(f"{name}={value!r}: must not be negative")
    return n


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if not value: return default
    if value in ("1", "true", "yes", "on"): return True
    if value in ("0", "false", "no", "off"): return False
    raise SettingsError(f"{name}={value!r}: expected true or false")


ROOT = _path("DEVCHANGE_ROOT", Path(__file__).resolve().parents[2])
VENV = _path("DEVCHANGE_VENV", ROOT / ".venv", ROOT)
STREAM_DIR = _path("DEVCHANGE_STREAM_DIR", ROOT / "data" / "stream", ROOT)
TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI") or None
RETRIES = _number("DEVCHANGE_RETRIES", 1)
RETRY_DELAY = timedelta(seconds=_number("DEVCHANGE_RETRY_DELAY_S", 300, float))
TASK_TIMEOUT = timedelta(seconds=_number("DEVCHANGE_TASK_TIMEOUT_S", 7200, float))
TRAINING_SCHEDULE = os.environ.get("DEVCHANGE_TRAINING_SCHEDULE") or None
MONTHLY_CRON = os.environ.get("DEVCHANGE_MONTHLY_CRON") or "0 6 1 * *"
RETRAIN_TRIGGERS_TRAINING = _flag("DEVCHANGE_RETRAIN_TRIGGERS_TRAINING", True)
QUEUE = os.environ.get("DEVCHANGE_QUEUE") or None  # e.g. the one worker that holds the workspace
# Celery queues: a pipeline run's stages share one workspace, so training goes to the worker(s) that hold
# it; the monthly commands need only the registry and the month's files, so any worker may run them
TRAINING_QUEUE = os.environ.get("DEVCHANGE_TRAINING_QUEUE") or QUEUE
MONTHLY_QUEUE = os.environ.get("DEVCHANGE_MONTHLY_QUEUE") or QUEUE

TRAINING_DAG_ID = "devchange_training"
MONTHLY_DAG_ID = "devchange_monthly"


def default_args(queue: str | None = QUEUE) -> dict:
    "Retries, timeout and queue (`queue`, else Airflow's default) of every task, from the environment."
    args = {"owner": "devchange", "retries": RETRIES, "retry_delay": RETRY_DELAY, "execution_timeout": TASK_TIMEOUT}
    if queue: args["queue"] = queue
    return args


def retrain_needed(month: str, root: Path = ROOT) -> bool:
    "Whether `month`'s verdict (data/production/<month>/monitoring.json, once evaluated) is `retrain`."
    path = root / "data" / "production" / month / "monitoring.json"
    if not path.is_file():
        print(f"{path}: not there: {month} was not scored here, nothing to retrain on")
        return False
    doc = json.loads(path.read_text())
    status = doc["verdict"]["status"] if doc.get("performance") else "not evaluated"
    print(f"verdict of {month}: {status}" + "".join(f"\n  - {r}" for r in doc["verdict"]["reasons"]))
    return status == "retrain"


def fail_run() -> None:
    "The monthly DAG's last task, run only when a step failed: the run then shows as failed."
    raise RuntimeError("a step of this run failed (see its log); the report was written anyway")


def project_command(command: str) -> str:
    """A bash command that runs `command` in the project root with the project's environment first on PATH.

    Task environment: the worker's, plus `env()` (BashOperator with append_env=True)."""
    venv_bin = shlex.quote(str(VENV / "bin"))
    return (f'test -x {venv_bin}/python || {{ echo "no project environment at {VENV}: run make env '
            f'or set DEVCHANGE_VENV" >&2; exit 1; }}\n'
            f'export PATH={venv_bin}:"$PATH"\n'
            f'{command}\n')


def env() -> dict[str, str]:
    "Variables every task adds to the worker's environment."
    e = {"DEVCHANGE_ROOT": str(ROOT), "VIRTUAL_ENV": str(VENV)}
    if TRACKING_URI: e["MLFLOW_TRACKING_URI"] = TRACKING_URI
    return e


def _as_date(logical_date) -> date:
    if logical_date is None:
        raise SettingsError("this DAG run has no logical date: trigger it with one (the month to run is "
                            "the logical date's month; the wall clock is never used)")
    return logical_date.date() if isinstance(logical_date, datetime) else logical_date


def month_end(logical_date) -> str:
    "The month a run is for: the last day of its logical date's calendar month, as YYYY-MM-DD."
    d = _as_date(logical_date)
    return d.replace(day=calendar.monthrange(d.year, d.month)[1]).isoformat()


def previous_month_end(logical_date) -> str:
    "The month before the run's month, as YYYY-MM-DD (its last day)."
    d = _as_date(logical_date)
    return (d.replace(day=1) - timedelta(days=1)).isoformat()
