"""The project's image and compose stack, built and run on a real Docker engine.

`make test-docker` runs this file once docker/test.sh has an engine, compose and a base image.
It is not named test_*.py so that `make test` does not collect it; naming it runs it.
Environment: DEVCHANGE_COMPOSE (the compose command), BASE_IMAGE (the image's base),
DEVCHANGE_CA_BUNDLE (CA certificates the build trusts; default: the host's bundle).

One tiny copy of the project (tests/helpers.py's TINY settings, committed) is the build context,
the image's baked-in project and the clone that the compose stack mounts. In order: `make image`;
the image's default command through `make image-run`, in the background, while `docker-compose
build` and `up` bring the stack, its pipeline service runs against the stack's MLflow, `make
promote` runs from the host against it and the MLflow store survives a restart; then the default
run's outputs are checked. Timings are printed at the end, never asserted."""
import json
import os
import shlex
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest
import requests
import yaml
from mlflow import MlflowClient

from helpers import (BIN, TINY, airflow_health, airflow_healthy, airflow_session, copy_project, env, file_hashes,
                     free_port, stage_outs, update_params)

COMPOSE = shlex.split(os.environ.get("DEVCHANGE_COMPOSE", "docker-compose"))
# docker-compose v1 gives up on an engine that takes over 60 s to answer (a stop of several containers
# on a busy machine): wait longer
os.environ.setdefault("COMPOSE_HTTP_TIMEOUT", "600")
BASE_IMAGE = os.environ.get("BASE_IMAGE", "python:3.11-slim")
CA_BUNDLE = Path(os.environ.get("DEVCHANGE_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))
IMAGE = "devchange:test"
RUN = uuid.uuid4().hex[:8]
PROJECT = "/home/devchange/project"  # the project folder in the image (Dockerfile's WORKDIR)
# the image's user: the host user, or uid 1000 when the tests run as root (the copy is handed to it)
UID = os.getuid() or 1000
BUILD_TIMEOUT_S, RUN_TIMEOUT_S, START_TIMEOUT_S = 1800, 1800, 420
MODEL = "devchange"  # params.yaml tracking.model_name
# what .dockerignore keeps out of the image: environments, stores, outputs, local secrets
DECOYS = [".venv/bin/decoy", ".venv-airflow/bin/decoy", "airflow/home/airflow.db", "mlflow.db", "mlartifacts/1/decoy", "mlruns/decoy", "data/raw/decoy.feather",
          "data/production/2099-01-31/features.parquet", "models/decoy.joblib", "reports/decoy.html",
          "reports/failed/decoy.ipynb", ".dvc/cache/decoy", "config/.env", ".env", "__pycache__/decoy.pyc"]

TIMES: dict[str, float] = {}
FACTS: dict[str, str] = {}


def sh(cmd: list[str], cwd: Path | None = None, extra_env: dict | None = None, check: bool = True,
       timeout: float = 600) -> subprocess.CompletedProcess:
    "Run a command (the test venv first on PATH, no MLflow settings of the caller); fail with its output."
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**env(), **(extra_env or {})},
                           timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{shlex.join(cmd)}: no result within {timeout} s\n{(e.stdout or '')[-3000:]}") from None
    if check and p.returncode != 0:
        raise AssertionError(f"{shlex.join(cmd)} failed ({p.returncode}) in {cwd}\n--- stdout\n{p.stdout[-5000:]}"
                             f"\n--- stderr\n{p.stderr[-5000:]}")
    return p


def timed(label: str, cmd: list[str], **kw) -> subprocess.CompletedProcess:
    start = time.monotonic()
    try:
        return sh(cmd, **kw)
    finally:
        TIMES[label] = time.monotonic() - start


def wait_for(url: str, what: str, logs, **kw) -> float:
    "Poll `url` until it answers 200; returns the seconds it took. Fails with the service's log."
    start = time.monotonic()
    while True:
        try:
            if requests.get(url, timeout=5, **kw).status_code == 200: return time.monotonic() - start
        except requests.RequestException:
            pass
        if time.monotonic() - start > START_TIMEOUT_S:
            raise AssertionError(f"{what} did not answer {url} within {START_TIMEOUT_S} s\n{logs()}")
        time.sleep(1)


@pytest.fixture(scope="module", autouse=True)
def report(request):
    "The figures of this run, printed after the tests (pass or fail)."
    yield
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if tr is None or capture is None: return
    with capture.global_and_fixture_disabled():
        tr.write_sep("-", "test-docker figures")
        for k, v in FACTS.items(): tr.write_line(f"{k}: {v}")
        for k, v in TIMES.items(): tr.write_line(f"{k}: {v:.0f} s")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    "A tiny, committed copy of the project with decoys that must not reach the image, and the host's CA bundle."
    root = copy_project(tmp_path_factory.mktemp("docker") / "devchange")
    update_params(root, {**TINY, "promotion.floor": 0.0})  # tiny data: a worst fold below 1.5 must not block promote
    sh(["git", "commit", "-qam", "tiny params"], root)
    commit = sh(["git", "rev-parse", "HEAD"], root).stdout.strip()
    for rel in DECOYS:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("DECOY=must-not-be-in-the-image\n")  # also a valid env file
    # behind a TLS-intercepting proxy the build needs its CA; docker/certs/* is git-ignored
    if CA_BUNDLE.is_file(): shutil.copyfile(CA_BUNDLE, root / "docker/certs/host-ca.crt")
    return SimpleNamespace(root=root, commit=commit)


@pytest.fixture(scope="module")
def image(project):
    "`make image` in the copy (the step the workflow runs on main)."
    timed("make image (build)", ["make", "image", f"IMAGE={IMAGE}", f"BASE_IMAGE={BASE_IMAGE}", f"DEVCHANGE_UID={UID}"],
          cwd=project.root, timeout=BUILD_TIMEOUT_S)
    size = int(sh(["docker", "image", "inspect", "-f", "{{.Size}}", IMAGE]).stdout)
    FACTS["image"] = f"{IMAGE} from {BASE_IMAGE}, {size / 1e9:.2f} GB"
    FACTS["engine, compose"] = (sh(["docker", "version", "-f", "{{.Server.Version}}"]).stdout.strip() + ", "
                                + sh(COMPOSE + ["version"]).stdout.splitlines()[0])
    return IMAGE


def in_image(script: str) -> str:
    return sh(["docker", "run", "--rm", IMAGE, "sh", "-c", script]).stdout


def test_image_runs_as_a_non_root_user_with_the_kernels_and_the_extra_ca(image, project):
    facts = json.loads(in_image(
        "python -c 'import json, os, sys, jupyter_client.kernelspec as k; print(json.dumps({"
        "\"uid\": os.getuid(), \"python\": list(sys.version_info[:2]), \"cwd\": os.getcwd(), "
        "\"kernels\": sorted(k.KernelSpecManager().find_kernel_specs()), "
        "\"certs\": sorted(os.listdir(\"/usr/local/share/ca-certificates/extra\"))}))'"))
    assert facts["uid"] == UID != 0
    assert facts["python"] == [3, 11]
    assert facts["cwd"] == PROJECT
    assert {"python3", "devchange"} <= set(facts["kernels"])  # papermill's kernel and the Lab's
    if (project.root / "docker/certs/host-ca.crt").is_file():
        assert "host-ca.crt" in facts["certs"]


def test_build_context_keeps_environments_stores_outputs_and_secrets_out(image):
    listed = in_image("for f in " + " ".join([".git", *DECOYS]) + "; do [ -e \"$f\" ] && echo \"$f\"; done; "
                      "ls dvc.yaml params.yaml dvc.lock nbs/stages/train.ipynb devchange/stage.py "
                      "data/external/.gitkeep reports/metrics/cv.json; true").split()
    leaked = [f for f in listed if f == ".git" or f in DECOYS]
    assert not leaked, f"in the image although .dockerignore excludes them: {leaked}"
    assert {"dvc.yaml", "params.yaml", "dvc.lock", "nbs/stages/train.ipynb", "devchange/stage.py",
            "data/external/.gitkeep", "reports/metrics/cv.json"} <= set(listed)


def _env_file(root: Path, values: dict) -> str:
    "config/.env as the README makes it (docker/new-env.sh: random secrets), with `values` set."
    lines = sh([str(root / "docker/new-env.sh")], root).stdout.splitlines()
    keys = {line.split("=", 1)[0] for line in lines if "=" in line and not line.startswith("#")}
    assert set(values) <= keys, f"settings missing from config/.env.example: {set(values) - keys}"
    lines = [f"{line.split('=', 1)[0]}={values[line.split('=', 1)[0]]}"
             if "=" in line and not line.startswith("#") and line.split("=", 1)[0] in values else line
             for line in lines]
    empty = [k for k, v in (line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
             if not v and k not in values]
    assert not empty, f"docker/new-env.sh left settings empty: {empty}"
    return "\n".join(lines) + "\n"


def test_compose_file_needs_its_secrets_named(project, tmp_path):
    "No config/.env, or one secret missing from it: compose names it and the file instead of starting."
    for missing in (None, "REDIS_PASSWORD", "MLFLOW_SERVICE_PASSWORD"):
        env_file = tmp_path / "env"
        text = _env_file(project.root, {missing: ""} if missing else {}) if missing else "UNRELATED=1\n"
        env_file.write_text(text)
        p = sh(COMPOSE + ["--env-file", str(env_file), "config", "-q"], project.root, check=False,
               extra_env={"COMPOSE_PROJECT_NAME": f"devchange-test-{RUN}"})
        out = p.stdout + p.stderr
        assert p.returncode != 0 and "config/.env" in out, out
        if missing: assert f"set {missing} in config/.env" in out, out


def _write_env(root: Path, values: dict) -> dict:
    "config/.env (docker/new-env.sh with `values`), linked as .env, as the README says; returns its settings."
    text = _env_file(root, values)
    (root / "config/.env").write_text(text)
    (root / ".env").unlink(missing_ok=True)
    (root / ".env").symlink_to("config/.env")
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def _hand_over(root: Path, uid: int) -> None:
    "Give the clone to the containers' user, as its owner on a developer's machine would be."
    if os.getuid() != 0: return
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, "."]:
            os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)


SERVICES_IMAGE = "devchange-services:test"


@pytest.fixture(scope="module")
def stack(project, image, default_run_started):
    """The team stack: `docker-compose build`, then `up -d` of every service with two general Airflow
    workers, in the copy; torn down with its volumes at the end. The test process tracks to its MLflow
    as the service account (MLFLOW_TRACKING_USERNAME / _PASSWORD, as the README says)."""
    root = project.root
    ports = {k: free_port() for k in ("MLFLOW_PORT", "JUPYTER_PORT", "AIRFLOW_PORT", "POSTGRES_PORT", "REDIS_PORT")}
    settings = _write_env(root, {**ports, "GIT_CONFIG_USER_NAME": "devchange test", "GIT_CONFIG_EMAIL": "test@example.invalid",
                                 "DEVCHANGE_UID": UID, "BASE_IMAGE": BASE_IMAGE, "DEVCHANGE_IMAGE": IMAGE,
                                 "DEVCHANGE_SERVICES_IMAGE": SERVICES_IMAGE,
                                 "DEVCHANGE_RETRIES": 0})  # the monthly run unpausing schedules fails at once
    _hand_over(root, UID)
    name = f"devchange-test-{RUN}"
    compose = COMPOSE + ["-p", name]
    logs = lambda: sh(compose + ["logs", "--no-color", "--tail", "40"], root, check=False).stdout
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ["MLFLOW_TRACKING_USERNAME"] = settings["MLFLOW_SERVICE_USERNAME"]
    os.environ["MLFLOW_TRACKING_PASSWORD"] = settings["MLFLOW_SERVICE_PASSWORD"]
    try:
        sh(compose + ["config", "-q"], root)
        timed("docker-compose build (project image: layers of make image; services image)", compose + ["build"],
              cwd=root, timeout=BUILD_TIMEOUT_S)
        size = int(sh(["docker", "image", "inspect", "-f", "{{.Size}}", SERVICES_IMAGE]).stdout)
        FACTS["services image"] = f"{SERVICES_IMAGE} (PostgreSQL 15, Redis) from {BASE_IMAGE}, {size / 1e9:.2f} GB"
        start = time.monotonic()
        # the README's command: every service but the one-off pipeline (its profile), airflow-init as a dependency
        sh(compose + ["up", "-d", "--scale", "airflow-worker=2"], cwd=root, timeout=START_TIMEOUT_S + 60)
        running = sh(compose + ["ps", "--services", "--filter", "status=running"], root).stdout.split()
        assert "pipeline" not in running and "airflow-worker" in running, running
        uri = f"http://127.0.0.1:{ports['MLFLOW_PORT']}"
        s = SimpleNamespace(root=root, compose=compose, name=name, uri=uri, logs=logs, settings=settings,
                            token=settings["JUPYTER_TOKEN"], commit=project.commit,
                            jupyter=f"http://127.0.0.1:{ports['JUPYTER_PORT']}",
                            airflow=f"http://127.0.0.1:{ports['AIRFLOW_PORT']}",
                            airflow_password=settings["AIRFLOW_ADMIN_PASSWORD"])
        _wait_for_mlflow(s)
        _airflow_session(s)
        TIMES["stack start (up -d until MLflow's service account works and Airflow is healthy)"] = time.monotonic() - start
        yield s
    finally:
        print(logs())  # shown by pytest when a test failed
        sh(compose + ["down", "-v", "--remove-orphans"], root, check=False, timeout=300)
        for k, v in saved.items():
            if v is None: os.environ.pop(k, None)
            else: os.environ[k] = v


def _wait_for_mlflow(stack) -> None:
    "Until the service account's request succeeds (the server creates the account once it is up)."
    auth = (stack.settings["MLFLOW_SERVICE_USERNAME"], stack.settings["MLFLOW_SERVICE_PASSWORD"])
    wait_for(f"{stack.uri}/api/2.0/mlflow/experiments/search?max_results=1", "MLflow's service account", stack.logs,
             auth=auth)


def _containers(stack, service: str | None = None) -> list[dict]:
    "docker inspect of the stack's running containers (of one service)."
    filters = ["--filter", f"label=com.docker.compose.project={stack.name}"]
    if service: filters += ["--filter", f"label=com.docker.compose.service={service}"]
    ids = sh(["docker", "ps", "-q", *filters]).stdout.split()
    return json.loads(sh(["docker", "inspect", *ids]).stdout) if ids else []


def test_host_ports_are_on_the_loopback_address_only(stack):
    "Every port any container of the stack publishes, and the host's sockets behind them, are on 127.0.0.1."
    published = {}
    for c in _containers(stack):
        for port, bindings in (c["NetworkSettings"]["Ports"] or {}).items():
            for b in bindings or []:
                published[(c["Config"]["Labels"]["com.docker.compose.service"], port)] = (b["HostIp"], int(b["HostPort"]))
    services = {service for service, _ in published}
    assert {"postgres", "redis", "mlflow", "airflow-apiserver", "jupyter"} == services, published
    assert {ip for ip, _ in published.values()} == {"127.0.0.1"}, published
    host_ports = {port for _, port in published.values()}
    listening = [line.split()[3] for line in sh(["ss", "-Hltn"]).stdout.splitlines()]
    behind = [a for a in listening if int(a.rsplit(":", 1)[1]) in host_ports]
    assert behind and all(a.startswith("127.0.0.1:") for a in behind), behind
    FACTS["published"] = ", ".join(f"{s} {ip}:{p}" for (s, _), (ip, p) in sorted(published.items()))


def test_jupyter_lab_needs_the_token_and_offers_the_project_kernel(stack):
    auth = {"Authorization": f"token {stack.token}"}
    wait_for(f"{stack.jupyter}/api/status", "JupyterLab", stack.logs, headers=auth)
    assert requests.get(f"{stack.jupyter}/api/status", timeout=10).status_code == 403
    kernels = requests.get(f"{stack.jupyter}/api/kernelspecs", headers=auth, timeout=10).json()["kernelspecs"]
    assert "devchange" in kernels
    names = {c["name"] for c in requests.get(f"{stack.jupyter}/api/contents", headers=auth, timeout=10).json()["content"]}
    assert {"stages", "02_config.ipynb"} <= names  # rooted at nbs/ of the mounted clone


@pytest.fixture(scope="module")
def pipeline(stack):
    "The pipeline service: one `dvc repro` of the mounted clone against the stack's MLflow."
    p = timed("docker-compose run pipeline (dvc repro, tiny)", stack.compose + ["run", "-T", "--rm", "pipeline"],
              cwd=stack.root, check=False, timeout=RUN_TIMEOUT_S)
    assert p.returncode == 0, f"pipeline service failed ({p.returncode})\n{p.stdout[-5000:]}\n{p.stderr[-5000:]}"
    return MlflowClient(stack.uri)


def test_pipeline_service_tracks_its_runs_and_registers_the_model(stack, pipeline):
    client = pipeline
    experiment = client.get_experiment_by_name("devchange")
    runs = client.search_runs([experiment.experiment_id])
    kinds = {r.data.tags.get("devchange.kind") for r in runs}
    assert {"pipeline", "candidate", "fold", "training"} <= kinds, kinds
    parents = [r for r in runs if r.data.tags.get("devchange.kind") == "pipeline"]
    assert len(parents) == 1
    # the clone is mounted with its .git: the run knows the commit it ran
    assert parents[0].data.tags["git.commit"] == stack.commit
    # artifacts go through the server (proxied), never to a path the client would need
    assert parents[0].info.artifact_uri.startswith("mlflow-artifacts:/"), parents[0].info.artifact_uri
    reports = {a.path for a in client.list_artifacts(parents[0].info.run_id, "reports")}
    assert {"reports/train.html", "reports/score.html"} <= reports
    versions = client.search_model_versions(f"name='{MODEL}'")
    assert len(versions) == 1
    assert client.get_registered_model(MODEL).aliases == {"challenger": versions[0].version}
    FACTS["MLflow after the pipeline service"] = f"{len(runs)} runs, {MODEL} v{versions[0].version} as challenger"
    # its outputs are in the clone, owned by the clone's user
    cv = stack.root / "reports/metrics/cv.json"
    assert json.loads(cv.read_text())["fold_plan"] and cv.stat().st_uid == UID
    assert (stack.root / "data/predictions/scoring.parquet").stat().st_uid == UID


def test_mlflow_refuses_anonymous_requests_and_the_service_account_owns_the_runs(stack, pipeline):
    search = f"{stack.uri}/api/2.0/mlflow/experiments/search?max_results=5"
    assert requests.get(search, timeout=30).status_code == 401  # anonymous
    assert requests.get(search, auth=(stack.settings["MLFLOW_SERVICE_USERNAME"], "wrong"), timeout=30).status_code == 401
    assert requests.get(search, auth=("admin", "password"), timeout=30).status_code == 401  # MLflow's default admin
    assert requests.get(f"{stack.uri}/health", timeout=30).status_code == 200  # the one open route
    # the admin sees who may do what: the service account created the experiment and the model, so manages them
    admin = ("admin", stack.settings["MLFLOW_ADMIN_PASSWORD"])
    user = stack.settings["MLFLOW_SERVICE_USERNAME"]
    experiment = pipeline.get_experiment_by_name("devchange").experiment_id
    for kind, resource in (("experiment", experiment), ("registered_model", MODEL)):
        r = requests.get(f"{stack.uri}/api/3.0/mlflow/users/permissions/get", auth=admin, timeout=30,
                         params={"username": user, "resource_type": kind, "resource_id": resource})
        assert r.status_code == 200 and r.json()["permission"] == "MANAGE", (kind, r.status_code, r.text[:500])


@pytest.fixture(scope="module")
def promoted(stack, pipeline):
    "`make promote` from the host, against the stack's server as the service account."
    venv = stack.root / ".venv"  # the copy runs with the test's environment (-o: never reinstalled into it)
    if venv.is_dir() and not venv.is_symlink(): shutil.rmtree(venv)  # the decoy
    if not venv.exists(): venv.symlink_to(BIN.parent)
    return timed("make promote", ["make", "-o", ".venv/.installed", "promote"], cwd=stack.root,
                 extra_env={"MLFLOW_TRACKING_URI": stack.uri})


def test_make_promote_from_the_host_moves_the_champion_on_the_server(stack, pipeline, promoted):
    "The workflow's last step on main, against the stack's server."
    challenger = pipeline.get_registered_model(MODEL).aliases["challenger"]
    assert f"champion: v{challenger}" in promoted.stdout, promoted.stdout
    assert pipeline.get_registered_model(MODEL).aliases.get("champion") == challenger
    # the champion's files come back through the server's artifact proxy
    mlflow.set_tracking_uri(stack.uri)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    assert model.metadata.run_id


AIRFLOW_DAGS = {"devchange_training", "devchange_monthly"}
AIRFLOW_RUN_TIMEOUT_S = 900


def _airflow_session(stack) -> requests.Session:
    "A session logged in to the Airflow service as admin, once its scheduler and DAG processor are healthy."
    start, health = time.monotonic(), {}
    while not airflow_healthy(health, ("metadatabase", "scheduler", "dag_processor")):
        assert time.monotonic() - start < START_TIMEOUT_S, f"Airflow not healthy: {health}\n{stack.logs()}"
        time.sleep(2)
        health = airflow_health(stack.airflow)
    return airflow_session(stack.airflow, stack.airflow_password)  # AIRFLOW_ADMIN_PASSWORD


def _hostnames(stack, service: str) -> set[str]:
    return {c["Config"]["Hostname"] for c in _containers(stack, service)}


def _run_dag(stack, s: requests.Session, dag_id: str, logical_date: str | None) -> tuple[str, dict, str]:
    "Unpause `dag_id`, trigger a run, wait for its end; (state, task instances by id, run URL)."
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        dags = s.get(f"{stack.airflow}/api/v2/dags", timeout=30).json()["dags"]
        if {d["dag_id"] for d in dags} >= AIRFLOW_DAGS: break
        assert time.monotonic() < deadline, f"DAGs not parsed: {dags}\n{stack.logs()}"
        time.sleep(2)
    errors = s.get(f"{stack.airflow}/api/v2/importErrors", timeout=30).json()
    assert errors["total_entries"] == 0, errors
    dag = f"{stack.airflow}/api/v2/dags/{dag_id}"
    assert s.patch(dag, json={"is_paused": False}, timeout=30).ok
    started = time.monotonic()
    r = s.post(f"{dag}/dagRuns", json={"logical_date": logical_date}, timeout=30)
    assert r.ok, r.text
    run = f"{dag}/dagRuns/{r.json()['dag_run_id']}"
    while (state := s.get(run, timeout=30).json()["state"]) not in ("success", "failed"):
        assert time.monotonic() - started < AIRFLOW_RUN_TIMEOUT_S, f"{dag_id} run still {state}\n{stack.logs()}"
        time.sleep(3)
    TIMES[f"Airflow: {dag_id} run"] = time.monotonic() - started
    tis = {t["task_id"]: t for t in s.get(f"{run}/taskInstances", timeout=30).json()["task_instances"]}
    return state, tis, run


def _log(s: requests.Session, run: str, task: str) -> str:
    log = s.get(f"{run}/taskInstances/{task}/logs/1", params={"full_content": "true"}, timeout=30).json()["content"]
    return "\n".join(json.dumps(e) if isinstance(e, dict) else str(e) for e in log)


@pytest.fixture(scope="module")
def monthly_runs(stack, promoted):
    """September, then October 2020 with the champion, through Celery on the general workers: October evaluates
    September, which joins the labelled store (DVC). The training DAG is unpaused first: a `retrain` verdict
    triggers it and waits for it."""
    s = _airflow_session(stack)
    dags = s.get(f"{stack.airflow}/api/v2/dags", timeout=30).json()["dags"]
    assert all(d["is_paused"] for d in dags)  # nothing runs before someone says so
    assert s.patch(f"{stack.airflow}/api/v2/dags/devchange_training", json={"is_paused": False}, timeout=30).ok
    runs = {month: _run_dag(stack, s, "devchange_monthly", f"{month}-01T00:00:00Z") for month in ("2020-09", "2020-10")}
    return SimpleNamespace(session=s, runs=runs)


@pytest.fixture(scope="module")
def training_run(stack, monthly_runs):
    """The training DAG triggered by hand: `devchange retrain` on the newest labelled month (September), a DVC
    experiment in a temporary copy of the mounted clone, on the training queue."""
    s = monthly_runs.session
    state, tis, run = _run_dag(stack, s, "devchange_training", None)
    return SimpleNamespace(session=s, state=state, tis=tis, run=run)


def test_training_dag_runs_its_tasks_on_the_training_worker(stack, training_run):
    s, tis, run = training_run.session, training_run.tis, training_run.run
    assert training_run.state == "success" and {k: t["state"] for k, t in tis.items()} == {"retrain": "success"}, \
        (training_run.state, {k: t["state"] for k, t in tis.items()}, _log(s, run, "retrain")[-3000:], stack.logs())
    hosts = _hostnames(stack, "airflow-training-worker")
    assert len(hosts) == 1
    assert {t["hostname"] for t in tis.values()} == hosts and {t["queue"] for t in tis.values()} == {"training"}
    text = _log(s, run, "retrain")
    assert "retrain-2020-09" in text, text[-3000:]
    assert next(iter(hosts)) in text, text[-3000:]  # the log says which worker ran it
    client = MlflowClient(stack.uri)
    windows = {v.tags.get("devchange.window_last") for v in client.search_model_versions(f"name='{MODEL}'")}
    assert "2020-09-30" in windows, windows
    FACTS["Airflow training DAG"] = f"devchange retrain (retrain-2020-09) on the training worker {next(iter(hosts))}"


def test_monthly_dag_scores_and_evaluates_on_the_general_workers(stack, monthly_runs):
    "October 2020: September evaluated and October scored on the general workers, never the training worker."
    s = monthly_runs.session
    state, tis, run = monthly_runs.runs["2020-10"]
    assert state == "success", ({k: t["state"] for k, t in tis.items()}, _log(s, run, "score_month")[-3000:])
    assert tis["score_month"]["state"] == "success" and tis["evaluate_previous_month"]["state"] == "success"
    general = _hostnames(stack, "airflow-worker")
    assert len(general) == 2  # --scale airflow-worker=2
    for task in ("evaluate_previous_month", "score_month"):
        assert tis[task]["hostname"] in general and tis[task]["queue"] == "default"
        assert tis[task]["hostname"] in _log(s, run, task)
    assert tis["score_month"]["hostname"] not in _hostnames(stack, "airflow-training-worker")
    assert (stack.root / "data/production/2020-10-31").is_dir() and (stack.root / "data/labelled/2020-09-30.dvc").is_file()
    FACTS["Airflow monthly DAG"] = (f"2020-10: evaluate_previous_month on {tis['evaluate_previous_month']['hostname']}, "
                                    f"score_month on {tis['score_month']['hostname']}")


def _state(stack, client: MlflowClient, s: requests.Session) -> dict:
    experiment = client.get_experiment_by_name("devchange").experiment_id
    return {"runs": {r.info.run_id for r in client.search_runs([experiment])},
            "versions": {v.version for v in client.search_model_versions(f"name='{MODEL}'")},
            "aliases": client.get_registered_model(MODEL).aliases,
            "dag runs": {(r["dag_id"], r["dag_run_id"], r["state"]) for dag in AIRFLOW_DAGS
                         for r in s.get(f"{stack.airflow}/api/v2/dags/{dag}/dagRuns", timeout=30).json()["dag_runs"]}}


def test_restarting_postgres_mlflow_and_the_scheduler_keeps_every_record(stack, pipeline, promoted, training_run):
    s = training_run.session
    before = _state(stack, pipeline, s)
    assert before["runs"] and before["versions"] and "champion" in before["aliases"] and before["dag runs"]
    timed("docker-compose restart postgres mlflow airflow-scheduler",
          stack.compose + ["restart", "postgres", "mlflow", "airflow-scheduler"], cwd=stack.root, timeout=300)
    _wait_for_mlflow(stack)
    s = _airflow_session(stack)
    assert _state(stack, MlflowClient(stack.uri), s) == before


def test_dvc_push_in_one_container_and_pull_in_a_fresh_clone_give_identical_files(stack, pipeline, tmp_path_factory):
    root = stack.root
    p = sh(stack.compose + ["run", "-T", "--rm", "pipeline", "dvc", "push"], root, timeout=600)
    assert "pushed" in p.stdout + p.stderr, p.stdout + p.stderr
    # the clone belongs to the containers' user: git (and the upload-pack of a clone, which reads only the
    # global and system files for safe.directory) may read it anyway
    gitconfig = tmp_path_factory.mktemp("gitconfig") / "gitconfig"
    gitconfig.write_text("[safe]\n\tdirectory = *\n")
    trust = {"GIT_CONFIG_GLOBAL": str(gitconfig)}
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    sh(git + ["commit", "-qm", "the tiny run", "dvc.lock"], root, extra_env=trust)  # what a person pushes after dvc push
    fresh = tmp_path_factory.mktemp("fresh-clone") / "devchange"
    sh(git + ["clone", "-q", str(root), str(fresh)], extra_env=trust)
    _hand_over(fresh.parent, UID)
    inside = "/home/devchange/fresh"
    timed("dvc pull in a fresh clone", stack.compose + ["run", "-T", "--rm", "-v", f"{fresh}:{inside}", "-w", inside,
                                                         "pipeline", "sh", "-c", "dvc pull && dvc status"],
          cwd=root, timeout=600)
    outs = stage_outs(root / "dvc.yaml", ("outs", "metrics"), cached_only=True)
    pulled, original = file_hashes(fresh, outs), file_hashes(root, outs)
    assert pulled == original and len(pulled) >= len(outs), set(pulled.items()) ^ set(original.items())
    assert "url = /home/devchange/dvc-remote" in (fresh / ".dvc/config.local").read_text()
    FACTS["DVC remote"] = f"{len(pulled)} files pushed from the clone and pulled into a fresh clone, identical"


@pytest.fixture(scope="module")
def default_run_started(image, project, tmp_path_factory):
    """`make image-run`: the image's default command (dvc repro) on its tiny project, with the embedded
    MLflow store. Started in the background: it runs while the compose stack runs its own pipeline,
    two mostly single-threaded pipelines on two cores."""
    name = f"devchange-test-run-{RUN}"
    log = tmp_path_factory.mktemp("default-run-log") / "run.log"
    with log.open("w") as f:
        proc = subprocess.Popen(["make", "image-run", f"IMAGE={IMAGE}", f"DOCKER_RUN_FLAGS=--name {name}"],
                                cwd=project.root, env=env(), stdout=f, stderr=subprocess.STDOUT)
    started = time.monotonic()
    yield SimpleNamespace(name=name, proc=proc, log=log, started=started)
    if proc.poll() is None: proc.kill()
    proc.wait()
    sh(["docker", "rm", "-f", name], check=False)


@pytest.fixture(scope="module")
def default_run(default_run_started, tmp_path_factory):
    "The finished default run: its outputs copied out, and the same container started once more."
    run = default_run_started
    try:
        code = run.proc.wait(timeout=max(1, RUN_TIMEOUT_S - (time.monotonic() - run.started)))
    except subprocess.TimeoutExpired:
        raise AssertionError(f"make image-run: no result within {RUN_TIMEOUT_S} s\n{run.log.read_text()[-3000:]}")
    TIMES["make image-run (dvc repro, tiny; beside the stack)"] = time.monotonic() - run.started
    assert code == 0, f"make image-run failed ({code})\n{run.log.read_text()[-5000:]}"
    out = tmp_path_factory.mktemp("default-run")
    for rel in ("data", "models", "reports", "dvc.lock", "mlflow.db"):
        sh(["docker", "cp", f"{run.name}:{PROJECT}/{rel}", str(out / rel)])
    second = timed("the same container again (nothing to do)", ["docker", "start", "-a", run.name],
                   timeout=RUN_TIMEOUT_S)
    return SimpleNamespace(out=out, second=second)


def test_default_command_runs_the_pipeline_on_tiny_data(default_run, project):
    out = default_run.out
    missing = [o for o in stage_outs(project.root / "dvc.yaml", ("outs", "metrics")) if not (out / o).exists()]
    assert not missing, f"outputs the image's `dvc repro` did not write: {missing}"
    lock = yaml.safe_load((out / "dvc.lock").read_text())
    assert lock["stages"]["generate"]["params"]["params.yaml"]["generate"]["n_users"] == TINY["generate.n_users"]
    scoring = pd.read_parquet(out / "data/predictions/scoring.parquet")
    assert 0 < len(scoring) <= TINY["generate.n_users"] and scoring["user_id"].is_unique
    assert scoring["probability"].between(0, 1).all()
    assert (out / "mlflow.db").stat().st_size > 0  # no MLFLOW_TRACKING_URI: the embedded store
    # the snapshot has no git (core.no_scm): DVC still knows that everything is up to date
    second = default_run.second.stdout + default_run.second.stderr
    assert "Data and pipelines are up to date" in second and "Running stage" not in second
