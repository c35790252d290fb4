"""The Airflow DAGs, run for real in Airflow's own environment (.venv-airflow, `make airflow-env`).

Airflow does not share the project's environment, so everything Airflow does here runs as a
subprocess of `.venv-airflow/bin/...`: `tests/airflow_driver.py` parses the DAG folder the way
Airflow's processes do and runs `dag.test()`; the last test starts Airflow itself with
`make airflow` and drives it through its REST API.

One copy of the repository (tiny data) and one Airflow home inside it, migrated once, serve
the whole module, in order: the DAG folder's structure; a training run with `dag.test()` (the
whole pipeline); the monthly production runs on that run's model; then the real scheduler,
which triggers training again (DVC finds everything up to date).
"""
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import date, datetime
from pathlib import Path

import pytest
import requests
import yaml
from mlflow import MlflowClient

from conftest import BIN, ROOT, TINY, copy_project, free_port, run, update_params

AIRFLOW_BIN = ROOT / ".venv-airflow" / "bin"
DRIVER = Path(__file__).with_name("airflow_driver.py")
DAGS = ROOT / "airflow" / "dags"
TRAINING, MONTHLY = "devchange_training", "devchange_monthly"
SCHEDULER_RUN_S = 900  # bound for the scheduler to finish a training run in which DVC has nothing to do
START_S = 240          # bound for `make airflow` to answer with a healthy scheduler and both DAGs parsed

if not (AIRFLOW_BIN / "airflow").exists():  # a failure, not a skip: `make test` builds it
    raise RuntimeError(f"{AIRFLOW_BIN / 'airflow'} is missing: run `make airflow-env` (make test does)")


def stages(root: Path) -> list[str]:
    return list(yaml.safe_load((root / "dvc.yaml").read_text())["stages"])


def airflow_env(root: Path, **extra) -> dict:
    "The environment `make airflow` gives Airflow, for the copy at `root` (plus test settings)."
    return {"AIRFLOW_HOME": str(root / "airflow" / "home"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(root / "airflow" / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "DEVCHANGE_VENV": str(BIN.parent),  # the copy has no .venv of its own: the one running the tests
            **{k: str(v) for k, v in extra.items()}}


def driver(root: Path, *args: str, check: bool = True, **extra_env) -> tuple[dict, str]:
    "Run tests/airflow_driver.py with Airflow's Python; its JSON result and its whole output."
    p = run([str(AIRFLOW_BIN / "python"), str(DRIVER), *args], root, check=check,
            extra_env=airflow_env(root, **extra_env))
    out = p.stdout + p.stderr
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"driver printed no result:\n{out[-4000:]}"
    return json.loads(lines[-1][len("RESULT "):]), out


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    "A copy of the repository on tiny data, with a migrated Airflow home inside it."
    root = copy_project(tmp_path_factory.mktemp("airflow") / "devchange",
                        skip_prefixes=("reports/", "data/raw", "data/production", "dvc.lock"))
    update_params(root, TINY)
    run(["git", "commit", "-qam", "tiny params"], root)
    run([str(AIRFLOW_BIN / "airflow"), "db", "migrate"], root, extra_env=airflow_env(root))
    return root


@pytest.fixture(scope="module")
def trained(project):
    "One training run through `dag.test()`: the whole pipeline, each stage a task."
    t0 = time.monotonic()
    result, log = driver(project, "test", TRAINING, "2020-10-01", DEVCHANGE_RETRIES=0)
    (project / "airflow" / "home" / "training-dag-test.log").write_text(log)  # kept for a post-mortem
    print(f"training DAG with dag.test(): {time.monotonic() - t0:.0f} s")
    return result, log


# ---------------------------------------------------------------- the DAG folder, as Airflow parses it

@pytest.fixture(scope="module")
def parsed(project):
    "The DAG folder parsed with the default settings."
    return driver(project, "dags")


def test_dag_folder_imports_without_errors(parsed):
    dags, out = parsed
    assert dags["import_errors"] == {}, dags["import_errors"]
    assert set(dags["dags"]) == {TRAINING, MONTHLY}, out[-3000:]


def test_training_dag_is_the_dvc_pipeline(project, parsed):
    dag = parsed[0]["dags"][TRAINING]
    tasks = dag["tasks"]
    assert [t["task_id"] for t in tasks] == stages(project)  # dvc.yaml's order
    for previous, t in zip([None] + tasks, tasks):
        assert t["upstream"] == ([previous["task_id"]] if previous else [])  # a chain: one stage at a time
        assert t["operator"] == "BashOperator"
        assert f"dvc repro --single-item {t['task_id']}" in t["bash_command"]
        assert str(BIN.parent / "bin") in t["bash_command"]  # the project's environment first on PATH
        assert t["cwd"] == str(project)
        assert (t["retries"], t["retry_delay_s"], t["timeout_s"], t["queue"]) == (1, 300, 7200, "default")  # defaults
    assert dag["timetable"] == "NullTimetable"  # triggered: by hand, or by the monthly DAG
    assert dag["max_active_runs"] == 1


def test_monthly_dag_shape(project, parsed):
    dag = parsed[0]["dags"][MONTHLY]
    assert dag["timetable"] == "CronDataIntervalTimetable" and dag["cron"] == "0 6 1 * *"
    assert dag["max_active_runs"] == 1 and dag["catchup"] is False
    tasks = {t["task_id"]: t for t in dag["tasks"]}
    assert list(tasks) == ["score_month", "evaluate_previous_month", "promote", "trigger_training"]
    assert {k: (t["upstream"], t["trigger_rule"]) for k, t in tasks.items()} == {
        "score_month": ([], "all_success"),
        "evaluate_previous_month": (["score_month"], "all_done"),
        "promote": (["evaluate_previous_month", "score_month"], "none_failed"),
        "trigger_training": (["evaluate_previous_month"], "one_failed"),
    }
    assert [tasks[k]["retries"] for k in tasks] == [1, 0, 1, 0]  # a verdict is not retried
    assert "devchange score-month --features" in tasks["score_month"]["bash_command"]
    assert "--fail-on-retrain" in tasks["evaluate_previous_month"]["bash_command"]
    assert "devchange promote" in tasks["promote"]["bash_command"]
    assert all(tasks[k]["cwd"] == str(project) for k in ("score_month", "evaluate_previous_month", "promote"))


def test_settings_come_from_the_environment(project):
    dags = driver(project, "dags", DEVCHANGE_RETRIES=3, DEVCHANGE_RETRY_DELAY_S=30, DEVCHANGE_TASK_TIMEOUT_S=600,
                  DEVCHANGE_TRAINING_SCHEDULE="@weekly", DEVCHANGE_MONTHLY_CRON="0 2 3 * *",
                  DEVCHANGE_RETRAIN_TRIGGERS_TRAINING="false", DEVCHANGE_STREAM_DIR="/srv/stream",
                  DEVCHANGE_QUEUE="devchange")[0]["dags"]
    training, monthly = dags[TRAINING], dags[MONTHLY]
    assert {(t["retries"], t["retry_delay_s"], t["timeout_s"]) for t in training["tasks"]} == {(3, 30, 600)}
    assert {t["queue"] for t in training["tasks"] + monthly["tasks"]} == {"devchange"}
    assert training["cron"] == "0 0 * * 0"  # @weekly
    assert monthly["cron"] == "0 2 3 * *"
    assert [t["task_id"] for t in monthly["tasks"]] == ["score_month", "evaluate_previous_month", "promote"]
    assert "/srv/stream/" in monthly["tasks"][0]["bash_command"]
    # a value the DAGs cannot use is an import error that names the variable
    broken = driver(project, "dags", DEVCHANGE_RETRIES="three")[0]
    assert set(broken["dags"]) == set() and len(broken["import_errors"]) == 2
    assert all("DEVCHANGE_RETRIES='three'" in e for e in broken["import_errors"].values()), broken["import_errors"]


def test_training_and_monthly_tasks_have_their_own_queues(project):
    "The team stack's routing: training to the workspace's worker, monthly tasks to any (DEVCHANGE_QUEUE: both)."
    dags = driver(project, "dags", DEVCHANGE_QUEUE="both", DEVCHANGE_TRAINING_QUEUE="training")[0]["dags"]
    assert {t["queue"] for t in dags[TRAINING]["tasks"]} == {"training"}
    assert {t["queue"] for t in dags[MONTHLY]["tasks"]} == {"both"}
    dags = driver(project, "dags", DEVCHANGE_MONTHLY_QUEUE="monthly")[0]["dags"]
    assert {t["queue"] for t in dags[TRAINING]["tasks"]} == {"default"}  # Airflow's default queue
    assert {t["queue"] for t in dags[MONTHLY]["tasks"]} == {"monthly"}


def test_month_of_a_logical_date():
    sys.path.insert(0, str(DAGS))
    try:
        import devchange_settings as s
    finally:
        sys.path.remove(str(DAGS))
    assert s.month_end(datetime(2020, 11, 1, 6)) == "2020-11-30"
    assert s.month_end(date(2024, 2, 10)) == "2024-02-29"
    assert s.previous_month_end(datetime(2020, 11, 1)) == "2020-10-31"
    assert s.previous_month_end(datetime(2021, 1, 31)) == "2020-12-31"
    with pytest.raises(ValueError, match="no logical date"):
        s.month_end(None)


# ---------------------------------------------------------------- training: dag.test() runs the pipeline

def test_training_dag_runs_every_stage(project, trained):
    result, log = trained
    assert result["state"] == "success", log[-6000:]
    assert result["tasks"] == {s: "success" for s in stages(project)}
    for stage in stages(project):
        assert f"Running stage '{stage}'" in log, f"{stage}: DVC did not run it"
        assert (project / "reports" / f"{stage}.html").stat().st_size > 0
    for f in ("data/raw/user_features.feather", "data/processed/train.parquet", "data/predictions/oof.parquet",
              "models/model.joblib", "reports/metrics/cv.json", "data/predictions/scoring.parquet"):
        assert (project / f).stat().st_size > 0, f
    # the tasks ran DVC in the copy: its pipeline is now up to date
    assert "up to date" in run(["dvc", "status"], project).stdout


def test_training_dag_tracks_to_the_project_store(project, trained):
    assert trained[0]["state"] == "success"
    client = MlflowClient(f"sqlite:///{project}/mlflow.db")  # the embedded store at the copy's root
    runs = client.search_runs([client.get_experiment_by_name("devchange").experiment_id])
    names = {r.info.run_name for r in runs}
    assert "train" in names and any(n.startswith("pipeline") for n in names), names
    assert {"lightgbm", "logreg"} <= names
    model = client.get_registered_model("devchange")
    assert "challenger" in model.aliases


# ---------------------------------------------------------------- monthly production: dag.test() month by month

@pytest.fixture(scope="module")
def champion(project, trained):
    "The trained challenger becomes champion (`make promote`), as a team would before going live."
    assert trained[0]["state"] == "success"
    out = run(["devchange", "promote"], project).stdout
    assert "champion: v1" in out, out
    return out


def monthly_run(project: Path, logical_date: str) -> tuple[dict, str]:
    t0 = time.monotonic()
    result, log = driver(project, "test", MONTHLY, logical_date, DEVCHANGE_RETRIES=0)
    print(f"monthly DAG for {logical_date} with dag.test(): {time.monotonic() - t0:.0f} s")
    return result, log


def production(project: Path, month: str) -> Path:
    return project / "data" / "production" / month


@pytest.fixture(scope="module")
def october(project, champion):
    "October 2020: scored; September's targets are not in the stream, so nothing to evaluate."
    return monthly_run(project, "2020-10-01T06:00:00")


@pytest.fixture(scope="module")
def november_before_targets(project, october):
    "November 2020, while October's targets have not arrived yet."
    targets = project / "data/stream/2020-10-31/targets.feather"
    late = targets.with_name("targets.feather.late")
    targets.rename(late)
    try:
        return monthly_run(project, "2020-11-01T06:00:00")
    finally:
        late.rename(targets)


@pytest.fixture(scope="module")
def november_after_targets(project, november_before_targets):
    "November 2020 again (another logical date in November), now that October's targets are in."
    return monthly_run(project, "2020-11-15T00:00:00")


def test_monthly_scores_the_logical_dates_month(project, october):
    result, log = october
    assert result["state"] == "success", log[-6000:]
    assert result["tasks"] == {"score_month": "success", "evaluate_previous_month": "skipped",
                               "promote": "success", "trigger_training": "skipped"}
    out = production(project, "2020-10-31")
    assert {"features.parquet", "scores.parquet", "monitoring.json"} <= {f.name for f in out.iterdir()}
    assert json.loads((out / "monitoring.json").read_text())["model"]["version"] == 1  # the champion
    assert "targets of 2020-09-30 have not arrived" in log
    assert "champion: v1" in log  # promote ran and kept the champion


def test_monthly_skips_evaluation_until_targets_arrive(project, november_before_targets):
    result, log = november_before_targets
    assert result["state"] == "success", log[-6000:]
    assert result["tasks"] == {"score_month": "success", "evaluate_previous_month": "skipped",
                               "promote": "success", "trigger_training": "skipped"}
    assert (production(project, "2020-11-30") / "scores.parquet").is_file()  # this month's scores are written
    assert re.search(r"targets of 2020-10-31 have not arrived \(\S*data/stream/2020-10-31/targets.feather\): "
                     r"evaluation skipped", log), log[-6000:]
    october = json.loads((production(project, "2020-10-31") / "monitoring.json").read_text())
    assert not october.get("performance") and not (production(project, "2020-10-31") / "targets.parquet").exists()


def test_monthly_fails_with_the_verdicts_reasons_on_retrain(project, november_after_targets):
    result, log = november_after_targets
    assert result["state"] == "failed", log[-6000:]
    assert result["tasks"] == {"score_month": "success", "evaluate_previous_month": "failed",
                               "promote": "upstream_failed", "trigger_training": "success"}
    verdict = json.loads((production(project, "2020-10-31") / "monitoring.json").read_text())["verdict"]
    assert verdict["status"] == "retrain" and verdict["reasons"]
    assert "month 2020-10-31 needs retraining" in log
    for reason in verdict["reasons"]:
        assert reason in log, reason
    assert "Command exited with return code 3" in log  # the verdict failed the task, not an error
    # the training DAG was triggered, saying why
    training = [r for r in result["runs"] if r["dag_id"] == TRAINING and r["conf"]]
    assert [r["conf"] for r in training] == [{"reason": "devchange_monthly: evaluation of 2020-10-31 failed"}]
    # every production command logged its run to the copy's store
    client = MlflowClient(f"sqlite:///{project}/mlflow.db")
    exp = client.get_experiment_by_name("devchange-production")
    kinds = {(r.data.tags["devchange.kind"], r.data.tags["devchange.month"]): r
             for r in client.search_runs([exp.experiment_id])}
    assert {("production-score", "2020-10-31"), ("production-score", "2020-11-30"),
            ("production-evaluate", "2020-10-31")} <= set(kinds)
    assert kinds[("production-evaluate", "2020-10-31")].data.tags["devchange.verdict"] == "retrain"


# ---------------------------------------------------------------- the real scheduler, through `make airflow`

def _session_pids(sid: int) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if os.getsid(int(p.name)) == sid: pids.append(int(p.name))
            except (ProcessLookupError, PermissionError):
                pass
    return pids


def _listening(pids: list[int]) -> set[tuple[str, int]]:
    "(address, port) of every TCP socket these processes listen on."
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))
                if m: inodes.add(m.group(1))
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                addr, port = fields[1].split(":")
                if len(addr) == 8:
                    ip = ".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0))
                else:
                    ip = "::1" if addr == "0" * 24 + "01000000" else ("::" if set(addr) == {"0"} else addr)
                found.add((ip, int(port, 16)))
    return found


def _task_log(session: requests.Session, url: str) -> str:
    "A task's log as the UI gets it from the API server (read from airflow/home/logs: no log server)."
    r = session.get(url, params={"full_content": "true"}, timeout=30)
    assert r.ok, r.text
    content = r.json()["content"]
    return "\n".join(str(e.get("event", "")) if isinstance(e, dict) else str(e) for e in content)


def _stop(proc: subprocess.Popen) -> None:
    "Stop `make airflow` and everything it started (its own session)."
    for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
        if not _session_pids(proc.pid): break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + wait
        while _session_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
    proc.wait(timeout=10)


def test_scheduler_runs_the_training_dag(project, trained, tmp_path):
    assert trained[0]["state"] == "success"
    port = free_port()
    log_path = tmp_path / "make-airflow.log"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DEVCHANGE_RETRIES": "0"}
    for k in ("MLFLOW_TRACKING_URI", "DEVCHANGE_ROOT", "AIRFLOW_HOME"): env.pop(k, None)
    t0 = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            ["make", "airflow", f"AIRFLOW_PORT={port}", f"VENV={BIN.parent}", f"AIRFLOW_VENV={AIRFLOW_BIN.parent}"],
            cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://127.0.0.1:{port}"
    try:
        # up: the UI answers, the scheduler and the DAG processor report healthy, both DAGs parsed
        deadline, health = time.monotonic() + START_S, {}
        while True:
            assert proc.poll() is None, f"make airflow exited ({proc.returncode}):\n{log_path.read_text()[-4000:]}"
            try:
                health = requests.get(f"{api}/api/v2/monitor/health", timeout=5).json()
                if all(health.get(c, {}).get("status") == "healthy" for c in ("metadatabase", "scheduler", "dag_processor")):
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"not healthy after {START_S} s: {health}\n{log_path.read_text()[-4000:]}"
            time.sleep(2)
        started = time.monotonic() - t0
        out = log_path.read_text()
        assert "airflow/home/simple_auth_manager_passwords.json.generated" in out  # make airflow says where
        password = json.loads((project / "airflow/home/simple_auth_manager_passwords.json.generated").read_text())["admin"]
        token = requests.post(f"{api}/auth/token", json={"username": "admin", "password": password},
                              timeout=30).json()["access_token"]
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {token}"
        assert "<html" in requests.get(f"{api}/", timeout=30).text.lower()  # the UI
        deadline = time.monotonic() + START_S
        while True:
            dags = s.get(f"{api}/api/v2/dags", timeout=30).json()["dags"]
            if {d["dag_id"] for d in dags} >= {TRAINING, MONTHLY}: break
            assert time.monotonic() < deadline, f"DAGs not parsed after {START_S} s: {dags}"
            time.sleep(2)
        assert all(d["is_paused"] for d in dags)  # nothing runs before someone says so
        # every listening socket of everything `make airflow` started is on 127.0.0.1
        listening = _listening(_session_pids(proc.pid))
        assert ("127.0.0.1", port) in listening and {a for a, _ in listening} == {"127.0.0.1"}, listening

        # trigger the training DAG through the REST API and wait for the scheduler to run it
        assert s.patch(f"{api}/api/v2/dags/{TRAINING}", json={"is_paused": False}, timeout=30).ok
        t1 = time.monotonic()
        r = s.post(f"{api}/api/v2/dags/{TRAINING}/dagRuns", json={"logical_date": None, "conf": {"by": "test"}}, timeout=30)
        assert r.ok, r.text
        run_id = r.json()["dag_run_id"]
        deadline = time.monotonic() + SCHEDULER_RUN_S
        while True:
            state = s.get(f"{api}/api/v2/dags/{TRAINING}/dagRuns/{run_id}", timeout=30).json()["state"]
            if state in ("success", "failed"): break
            assert time.monotonic() < deadline, f"run {run_id} still {state} after {SCHEDULER_RUN_S} s"
            time.sleep(3)
        took = time.monotonic() - t1
        tis = s.get(f"{api}/api/v2/dags/{TRAINING}/dagRuns/{run_id}/taskInstances", timeout=30).json()["task_instances"]
        states = {t["task_id"]: t["state"] for t in tis}
        logs = {t: _task_log(s, f"{api}/api/v2/dags/{TRAINING}/dagRuns/{run_id}/taskInstances/{t}/logs/1")
                for t in states}
        assert state == "success", (states, {t: logs[t][-3000:] for t, st in states.items() if st != "success"})
        assert states == {stage: "success" for stage in stages(project)}
        for stage in stages(project):  # DVC decided: the dag.test() run left nothing to do
            assert f"Stage '{stage}' didn't change, skipping" in logs[stage], logs[stage][-3000:]
        print(f"make airflow healthy after {started:.0f} s; triggered training run (all stages up to date) took {took:.0f} s")
    finally:
        _stop(proc)
    assert not _session_pids(proc.pid), "processes of make airflow still running"
