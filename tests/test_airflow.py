"""The Airflow DAGs, run for real in Airflow's own environment (.venv-airflow, `make airflow-env`).

Airflow does not share the project's environment, so everything Airflow does here runs as a
subprocess of `.venv-airflow/bin/...`: `tests/airflow_driver.py` parses the DAG folder the way
Airflow's processes do and runs `dag.test()`; the loop tests start Airflow itself with
`make airflow` and drive it through its REST API.

One copy of the session's tiny run (tests/helpers.py's WORLD: tiny data, a world that drifts fast)
and one Airflow home inside it serve the whole module, in order: the DAG folder's structure; the
first champion (`devchange promote`); the training DAG refusing to retrain with nothing labelled; then the real
scheduler runs the monthly DAG backfilled over the generated months, in order: a `retrain`
verdict triggers the training DAG, whose challenger shadows the next month and is promoted when
it wins; a month run again changes nothing, and so does `devchange emulate` afterwards.
"""
import json
import os
import re
import subprocess
import sys
import time
from datetime import date, datetime
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml
from mlflow import MlflowClient

from helpers import (BIN, ROOT, airflow_health, airflow_healthy, airflow_session, copy_run, file_hashes, free_port,
                     monitoring_doc, run, session_pids, stop_session)

AIRFLOW_BIN = ROOT / ".venv-airflow" / "bin"
DRIVER = Path(__file__).with_name("airflow_driver.py")
DAGS = ROOT / "airflow" / "dags"
TRAINING, MONTHLY = "devchange_training", "devchange_monthly"
SCHEDULER_RUN_S = 900  # bound for the scheduler to finish a training run in which DVC has nothing to do
START_S = 240          # bound for `make airflow` to answer with a healthy scheduler and both DAGs parsed
LOCKED_S = 60          # bound for a request that Airflow's SQLite database refuses as locked

if not (AIRFLOW_BIN / "airflow").exists():  # a failure, not a skip: `make test` builds it
    raise RuntimeError(f"{AIRFLOW_BIN / 'airflow'} is missing: run `make airflow-env` (make test does)")


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


MONTHS = ("2020-09-30", "2020-10-31", "2020-11-30", "2020-12-31")  # the scoring month and WORLD's 3 stream months


@pytest.fixture(scope="module")
def project(tiny_pipeline, tmp_path_factory):
    "A copy of the session's tiny run (v1 is its challenger), with a migrated Airflow home inside it."
    root = copy_run(tiny_pipeline.root, tmp_path_factory.mktemp("airflow") / "devchange")
    assert sorted(p.name for p in (root / "data/stream").iterdir()) == list(MONTHS)
    run([str(AIRFLOW_BIN / "airflow"), "db", "migrate"], root, extra_env=airflow_env(root))
    return root


@pytest.fixture(scope="module")
def champion(project):
    "The pipeline's first challenger becomes champion, as a team does before going live."
    out = run(["devchange", "promote"], project).stdout
    assert "champion: v1" in out, out
    return out


# ---------------------------------------------------------------- the DAG folder, as Airflow parses it

@pytest.fixture(scope="module")
def parsed(project):
    "The DAG folder parsed with the default settings."
    return driver(project, "dags")


def test_dag_folder_imports_without_errors(parsed):
    dags, out = parsed
    assert dags["import_errors"] == {}, dags["import_errors"]
    assert set(dags["dags"]) == {TRAINING, MONTHLY}, out[-3000:]


def test_training_dag_is_one_retrain_task(project, parsed):
    dag = parsed[0]["dags"][TRAINING]
    [task] = dag["tasks"]
    assert (task["task_id"], task["operator"]) == ("retrain", "BashOperator")
    assert 'devchange retrain ${DEVCHANGE_RETRAIN_MONTH:+--month "$DEVCHANGE_RETRAIN_MONTH"}' in task["bash_command"]
    assert str(BIN.parent / "bin") in task["bash_command"]  # the project's environment first on PATH
    assert task["cwd"] == str(project)
    assert (task["retries"], task["retry_delay_s"], task["timeout_s"], task["queue"]) == (1, 300, 7200, "default")
    assert dag["timetable"] == "NullTimetable"  # triggered: by hand, or by the monthly DAG
    assert dag["max_active_runs"] == 1


def test_monthly_dag_shape(project, parsed):
    dag = parsed[0]["dags"][MONTHLY]
    assert dag["timetable"] == "CronDataIntervalTimetable" and dag["cron"] == "0 6 1 * *"
    assert dag["max_active_runs"] == 1 and dag["catchup"] is False
    tasks = {t["task_id"]: t for t in dag["tasks"]}
    assert list(tasks) == ["evaluate_previous_month", "promote", "score_month", "retrain_needed", "retrain", "report",
                           "any_step_failed"]
    assert {k: (t["upstream"], t["trigger_rule"]) for k, t in tasks.items()} == {
        "evaluate_previous_month": ([], "all_success"),
        "promote": (["evaluate_previous_month"], "none_failed"),
        "score_month": (["promote"], "none_failed"),
        "retrain_needed": (["score_month"], "none_failed"),
        "retrain": (["retrain_needed"], "all_success"),
        "report": (["retrain", "score_month"], "all_done"),
        # the run fails when any step failed, though `report` (all_done) succeeds after it
        "any_step_failed": (sorted(set(tasks) - {"any_step_failed"}), "one_failed"),
    }
    assert [tasks[k]["operator"] for k in tasks] == ["BashOperator"] * 3 + ["ShortCircuitOperator", "TriggerDagRunOperator",
                                                                              "BashOperator", "PythonOperator"]
    assert "devchange report" in tasks["report"]["bash_command"]
    assert "devchange evaluate-month --targets" in tasks["evaluate_previous_month"]["bash_command"]
    assert "devchange promote" in tasks["promote"]["bash_command"]
    assert "devchange score-month --features" in tasks["score_month"]["bash_command"]
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
    assert [t["task_id"] for t in monthly["tasks"]] == ["evaluate_previous_month", "promote", "score_month", "report",
                                                        "any_step_failed"]
    assert "/srv/stream/" in monthly["tasks"][2]["bash_command"]
    # a value the DAGs cannot use is an import error that names the variable
    broken = driver(project, "dags", DEVCHANGE_RETRIES="three")[0]
    assert set(broken["dags"]) == set() and len(broken["import_errors"]) == 2
    assert all("DEVCHANGE_RETRIES='three'" in e for e in broken["import_errors"].values()), broken["import_errors"]


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


# ---------------------------------------------------------------- training: refused with nothing labelled

def test_training_dag_refuses_to_retrain_before_any_month_is_labelled(project, champion):
    client = MlflowClient(f"sqlite:///{project}/mlflow.db")  # the embedded store at the copy's root
    before = len(client.search_model_versions("name = 'devchange'"))
    result, log = driver(project, "test", TRAINING, "2020-10-01", DEVCHANGE_RETRIES=0)
    assert result["state"] == "failed" and result["tasks"] == {"retrain": "failed"}, log[-4000:]
    assert "devchange retrain: no labelled month yet" in log, log[-4000:]
    assert len(client.search_model_versions("name = 'devchange'")) == before
    assert "refs/exps" not in run(["git", "for-each-ref"], project).stdout


def test_a_failed_step_fails_the_monthly_run(project, champion, tmp_path):
    "score_month refuses a corrupt features file: the report still runs, and the run shows as failed, not green."
    month = "2020-09-30"
    (tmp_path / month).mkdir()
    (tmp_path / month / "features.feather").write_bytes(b"not a feather file")
    result, log = driver(project, "test", MONTHLY, "2020-09-01", DEVCHANGE_RETRIES=0, DEVCHANGE_STREAM_DIR=str(tmp_path))
    tasks = result["tasks"]
    assert result["state"] == "failed", (tasks, log[-4000:])
    assert (tasks["score_month"], tasks["report"], tasks["any_step_failed"]) == ("failed", "success", "failed"), tasks
    assert tasks["evaluate_previous_month"] == "skipped" and tasks["retrain"] == "upstream_failed", tasks
    assert "not a readable feather file" in log and not (project / "data/production" / month).exists()


# ---------------------------------------------------------------- the real scheduler, through `make airflow`

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


def _snapshot(root: Path) -> dict:
    "Every file production wrote, with its bytes' hash, and the registry's versions and aliases."
    files = file_hashes(root, ["data/production"])
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    versions = sorted((int(v.version), tuple(sorted(v.tags.items()))) for v in client.search_model_versions("name = 'devchange'"))
    return {"files": files, "versions": versions, "aliases": dict(client.get_registered_model("devchange").aliases),
            "exps": run(["git", "for-each-ref", "refs/exps"], root).stdout}


class Airflow:
    "`make airflow` in the copy, and a REST session logged in as admin."

    def __init__(self, root: Path, log_path: Path):
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DEVCHANGE_RETRIES": "0"}
        for k in ("MLFLOW_TRACKING_URI", "DEVCHANGE_ROOT", "AIRFLOW_HOME"): env.pop(k, None)
        self.log_path, t0 = log_path, time.monotonic()
        with log_path.open("w") as log:
            self.proc = subprocess.Popen(
                ["make", "airflow", f"AIRFLOW_PORT={self.port}", f"VENV={BIN.parent}",
                 f"AIRFLOW_VENV={AIRFLOW_BIN.parent}"],
                cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_S
        while True:  # up: the scheduler, the DAG processor and the triggerer report healthy
            assert self.proc.poll() is None, f"make airflow exited ({self.proc.returncode}):\n{log_path.read_text()[-4000:]}"
            health = airflow_health(self.api)
            if airflow_healthy(health, ("metadatabase", "scheduler", "dag_processor", "triggerer")): break
            assert time.monotonic() < deadline, f"not healthy after {START_S} s: {health}\n{log_path.read_text()[-4000:]}"
            time.sleep(2)
        self.started_s = time.monotonic() - t0
        password = json.loads((root / "airflow/home/simple_auth_manager_passwords.json.generated").read_text())["admin"]
        self.s = airflow_session(self.api, password)
        deadline = time.monotonic() + START_S
        while True:
            self.dags = self.s.get(f"{self.api}/api/v2/dags", timeout=30).json()["dags"]
            if {d["dag_id"] for d in self.dags} >= {TRAINING, MONTHLY}: break
            assert time.monotonic() < deadline, f"DAGs not parsed after {START_S} s: {self.dags}"
            time.sleep(2)

    def get(self, path: str, **params) -> dict:
        r = self.s.get(f"{self.api}/api/v2/{path}", params=params, timeout=30)
        assert r.ok, r.text
        return r.json()

    def send(self, method: str, path: str, body: dict) -> dict:
        # Airflow on SQLite answers 503 "Database is locked" when a write meets the scheduler's (seen creating a
        # backfill): a person would try again, and so does this, for up to LOCKED_S
        deadline = time.monotonic() + LOCKED_S
        while True:
            r = self.s.request(method, f"{self.api}/api/v2/{path}", json=body, timeout=30)
            if not (r.status_code == 503 and "Database is locked" in r.text) or time.monotonic() > deadline: break
            time.sleep(2)
        assert r.ok, r.text
        return r.json()

    def runs(self, dag_id: str) -> list[dict]:
        return self.get(f"dags/{dag_id}/dagRuns", order_by="logical_date", limit=100)["dag_runs"]

    def wait(self, done, what: str, timeout_s: float = SCHEDULER_RUN_S):
        deadline = time.monotonic() + timeout_s
        while not (result := done()):
            assert time.monotonic() < deadline, f"{what}: not done after {timeout_s} s; " + json.dumps(
                {d: [(r["dag_run_id"], r["state"]) for r in self.runs(d)] for d in (MONTHLY, TRAINING)})
            time.sleep(3)
        return result

    def task_logs(self, dag_id: str, run_id: str) -> dict[str, str]:
        "Each task's log (for the assertions' messages; a log the API server cannot find says so instead)."
        run = f"dags/{dag_id}/dagRuns/{quote(run_id, safe='')}"
        logs = {}
        for t in self.get(f"{run}/taskInstances")["task_instances"]:
            if t["state"] in ("skipped", None): continue
            r = self.s.get(f"{self.api}/api/v2/{run}/taskInstances/{t['task_id']}/logs/{max(t['try_number'], 1)}",
                           params={"full_content": "true"}, timeout=30)
            logs[t["task_id"]] = ("\n".join(str(e.get("event", "")) if isinstance(e, dict) else str(e)
                                            for e in r.json()["content"]) if r.ok
                                  else f"(no log: {r.status_code} {r.text}; task state {t['state']})")
        return logs

    def stop(self):
        stop_session(self.proc, term_wait_s=60)
        assert not session_pids(self.proc.pid), "processes of make airflow still running"


def _backfilled(af: Airflow) -> list[dict] | None:
    runs = [r for r in af.runs(MONTHLY) if r["run_type"] == "backfill"]
    return runs if len(runs) == len(MONTHS) and all(r["state"] in ("success", "failed") for r in runs) \
        and all(r["state"] in ("success", "failed") for r in af.runs(TRAINING)) else None


@pytest.fixture(scope="module")
def scheduled(project, champion, tmp_path_factory):
    """The monthly DAG backfilled over the generated months by the real scheduler, then one month run again."""
    af = Airflow(project, tmp_path_factory.mktemp("airflow-log") / "make-airflow.log")
    out = {"airflow": af, "started_s": af.started_s, "paused_at_start": all(d["is_paused"] for d in af.dags),
           "listening": _listening(session_pids(af.proc.pid))}
    try:
        t0 = time.monotonic()
        af.send("PATCH", f"dags/{TRAINING}", {"is_paused": False})
        af.send("POST", "backfills", {"dag_id": MONTHLY, "from_date": "2020-09-01T00:00:00Z",
                                      "to_date": "2020-12-01T12:00:00Z", "max_active_runs": 1})
        af.send("PATCH", f"dags/{MONTHLY}", {"is_paused": False})
        out["monthly"] = af.wait(lambda: _backfilled(af), "the backfill")
        out["backfill_s"] = time.monotonic() - t0
        out["training"] = af.runs(TRAINING)
        out["logs"] = {r["dag_run_id"]: af.task_logs(MONTHLY, r["dag_run_id"]) for r in out["monthly"]}
        out["logs"].update({r["dag_run_id"]: af.task_logs(TRAINING, r["dag_run_id"]) for r in out["training"]})
        out["before_rerun"] = _snapshot(project)
        # run November again: clear its tasks, the scheduler runs them again
        november = next(r for r in out["monthly"] if r["logical_date"].startswith("2020-11-01"))
        af.send("POST", f"dags/{MONTHLY}/clearTaskInstances",
                {"dry_run": False, "only_failed": False, "reset_dag_runs": True, "dag_run_id": november["dag_run_id"]})
        out["rerun"] = af.wait(lambda: next((r for r in af.runs(MONTHLY) if r["dag_run_id"] == november["dag_run_id"]
                                             and r["state"] in ("success", "failed")), None), "the rerun")
        out["rerun_logs"] = af.task_logs(MONTHLY, november["dag_run_id"])
        out["training_after_rerun"] = af.runs(TRAINING)
        out["after_rerun"] = _snapshot(project)
        print(f"make airflow healthy after {af.started_s:.0f} s; backfill of {len(MONTHS)} months "
              f"with {len(out['training'])} retrains: {out['backfill_s']:.0f} s")
    finally:
        af.stop()
    return out


def test_airflow_starts_paused_and_listens_on_localhost_only(scheduled):
    assert scheduled["paused_at_start"]  # nothing runs before someone says so
    assert {a for a, _ in scheduled["listening"]} == {"127.0.0.1"}, scheduled["listening"]


def test_the_scheduler_runs_every_month_in_order(project, scheduled):
    runs = scheduled["monthly"]
    assert [r["logical_date"][:10] for r in runs] == ["2020-09-01", "2020-10-01", "2020-11-01", "2020-12-01"]
    assert [r["state"] for r in runs] == ["success"] * 4, {k: {t: v[-2000:] for t, v in logs.items()}
                                                            for k, logs in scheduled["logs"].items()}
    for month in MONTHS:
        assert monitoring_doc(project, month)["model"]["version"] >= 1 and (project / f"data/production/{month}/scores.parquet").is_file()
    for month in MONTHS[:-1]:  # evaluated by the next month's run, and in the labelled store
        assert monitoring_doc(project, month)["performance"]["n_with_target"] > 0
        assert (project / f"data/labelled/{month}.dvc").is_file()
    for r in runs:  # the last task renders the production report, logged to MLflow
        assert "devchange report: wrote reports/production.html" in scheduled["logs"][r["dag_run_id"]]["report"]
    assert (project / "reports/production.html").stat().st_size > 0
    first = scheduled["logs"][runs[0]["dag_run_id"]]
    assert "targets of 2020-08-31 have not arrived" not in first.get("evaluate_previous_month", "")  # skipped: no log


def test_a_retrain_verdict_triggers_training_on_the_window_ending_at_that_month(project, scheduled):
    retrained = [m for m in MONTHS[:-1] if monitoring_doc(project, m)["verdict"]["status"] == "retrain"]
    assert retrained, {m: monitoring_doc(project, m)["verdict"] for m in MONTHS}  # the world drifts: the loop must turn
    training = [r for r in scheduled["training"] if r["run_type"] != "manual"]  # not the dag.test() refusal above
    assert sorted(r["dag_run_id"] for r in training) == [f"retrain__{m}" for m in retrained]
    assert all(r["state"] == "success" for r in training), {r["dag_run_id"]: scheduled["logs"][r["dag_run_id"]]
                                                            for r in training}
    assert all(r["conf"]["month"] == r["dag_run_id"].split("__")[1] for r in training)
    client = MlflowClient(f"sqlite:///{project}/mlflow.db")
    records = json.loads((project / "data/production/retrains.json").read_text())
    assert [r["month"] for r in records] == retrained
    for r in records:
        tags = client.get_model_version("devchange", str(r["version"])).tags
        assert tags["devchange.window_last"] == r["month"] and tags["devchange.dvc_exp"] == f"retrain-{r['month'][:7]}"
        assert r["experiment"] in scheduled["logs"][f"retrain__{r['month']}"]["retrain"]


def test_the_new_challenger_shadows_the_next_month_and_is_promoted_when_it_wins(project, scheduled):
    records = json.loads((project / "data/production/retrains.json").read_text())
    decisions = json.loads((project / "data/production/promotions.json").read_text())
    margin = yaml.safe_load((project / "params.yaml").read_text())["promotion"]["margin"]
    for r in records:
        nxt = MONTHS[MONTHS.index(r["month"]) + 1]
        shadow = monitoring_doc(project, nxt, r["version"])  # scored blind: trained up to r["month"], before nxt's targets
        assert shadow["shadow"] in ("challenger", "previous_champion")
        assert shadow["model"]["last_train_month"] == r["month"]
        if nxt == MONTHS[-1]: continue  # December's targets come after the backfill
        decided = [d for d in decisions if d["challenger_version"] == r["version"] and d["evaluation_month"] == nxt]
        if not decided: continue  # a newer retrain took its place as challenger before it was decided
        d = decided[0]
        assert d["challenger_lift"] == shadow["performance"]["lift_at_k"]
        assert d["champion_lift"] == monitoring_doc(project, nxt)["performance"]["lift_at_k"]
        assert d["promoted"] == (d["challenger_lift"] > d["champion_lift"] + margin), d
    assert any(d["evaluation_month"] is not None for d in decisions), decisions  # the loop decided at least once


def test_running_a_month_again_changes_nothing(scheduled):
    assert scheduled["rerun"]["state"] == "success", scheduled["rerun_logs"]
    assert scheduled["after_rerun"] == scheduled["before_rerun"]
    assert len(scheduled["training_after_rerun"]) == len(scheduled["training"])  # no second retrain of a month


def test_emulate_afterwards_changes_no_month_the_scheduler_ran(project, scheduled):
    before = scheduled["after_rerun"]
    out = run(["devchange", "emulate"], project).stdout
    after = _snapshot(project)
    changed = {f for f in set(before["files"]) | set(after["files"]) if before["files"].get(f) != after["files"].get(f)}
    assert all(f.startswith(f"data/production/{MONTHS[-1]}/") or f.endswith(("promotions.json", "retrains.json"))
               for f in changed), changed  # only December, whose targets it evaluated
    for month in MONTHS:
        assert month in out
