"""The project's image and compose stack, built and run on a real Docker engine.

`make test-docker` runs this file once docker/test.sh has an engine, compose and a base image.
It is not named test_*.py so that `make test` does not collect it; naming it runs it.
Environment: DEVCHANGE_COMPOSE (the compose command), BASE_IMAGE (the image's base),
DEVCHANGE_CA_BUNDLE (CA certificates the build trusts; default: the host's bundle).

One tiny copy of the project (tests/conftest.py's TINY settings, committed) is the build context,
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

from conftest import BIN, TINY, copy_project, env, free_port, update_params

COMPOSE = shlex.split(os.environ.get("DEVCHANGE_COMPOSE", "docker-compose"))
BASE_IMAGE = os.environ.get("BASE_IMAGE", "python:3.11-slim")
CA_BUNDLE = Path(os.environ.get("DEVCHANGE_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt"))
IMAGE = "devchange:test"
RUN = uuid.uuid4().hex[:8]
PROJECT = "/home/devchange/project"  # the project folder in the image (Dockerfile's WORKDIR)
# the image's user: the host user, or uid 1000 when the tests run as root (the copy is handed to it)
UID = os.getuid() or 1000
BUILD_TIMEOUT_S, RUN_TIMEOUT_S, START_TIMEOUT_S = 1800, 1800, 180
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
    update_params(root, TINY)
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


def test_compose_file_needs_its_settings_named(project):
    "Without config/.env, compose names the setting and the file instead of starting half configured."
    p = sh(COMPOSE + ["config", "-q"], project.root, check=False,
           extra_env={"COMPOSE_PROJECT_NAME": f"devchange-test-{RUN}"})
    assert p.returncode != 0
    assert "config/.env" in p.stdout + p.stderr and "GIT_CONFIG_USER_NAME" in p.stdout + p.stderr


def _write_env(root: Path, values: dict) -> None:
    "config/.env from config/.env.example with `values`, linked as .env, as the README says."
    example = (root / "config/.env.example").read_text().splitlines()
    keys = {line.split("=", 1)[0] for line in example if "=" in line and not line.startswith("#")}
    assert set(values) <= keys, f"settings missing from config/.env.example: {set(values) - keys}"
    lines = [f"{line.split('=', 1)[0]}={values[line.split('=', 1)[0]]}"
             if "=" in line and not line.startswith("#") and line.split("=", 1)[0] in values else line
             for line in example]
    (root / "config/.env").write_text("\n".join(lines) + "\n")
    (root / ".env").unlink(missing_ok=True)
    (root / ".env").symlink_to("config/.env")


def _hand_over(root: Path, uid: int) -> None:
    "Give the clone to the containers' user, as its owner on a developer's machine would be."
    if os.getuid() != 0: return
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, "."]:
            os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)


@pytest.fixture(scope="module")
def stack(project, image, default_run_started):
    "`docker-compose build` and `up` of MLflow and JupyterLab in the copy, torn down at the end."
    root = project.root
    mlflow_port, jupyter_port, token = free_port(), free_port(), uuid.uuid4().hex
    _write_env(root, {"GIT_CONFIG_USER_NAME": "devchange test", "GIT_CONFIG_EMAIL": "test@example.invalid",
                      "JUPYTER_TOKEN": token, "MLFLOW_PORT": mlflow_port, "JUPYTER_PORT": jupyter_port,
                      "DEVCHANGE_UID": UID, "BASE_IMAGE": BASE_IMAGE, "DEVCHANGE_IMAGE": IMAGE})
    _hand_over(root, UID)
    compose = COMPOSE + ["-p", f"devchange-test-{RUN}"]
    logs = lambda: sh(compose + ["logs", "--no-color", "--tail", "40"], root, check=False).stdout
    try:
        sh(compose + ["config", "-q"], root)
        timed("docker-compose build (layers of make image)", compose + ["build"], cwd=root, timeout=BUILD_TIMEOUT_S)
        timed("docker-compose up -d mlflow jupyter", compose + ["up", "-d", "mlflow", "jupyter"], cwd=root,
              timeout=START_TIMEOUT_S + 60)
        uri = f"http://127.0.0.1:{mlflow_port}"
        wait_for(f"{uri}/health", "the MLflow service", logs)
        yield SimpleNamespace(root=root, compose=compose, uri=uri, logs=logs, token=token, commit=project.commit,
                              jupyter=f"http://127.0.0.1:{jupyter_port}")
    finally:
        print(logs())  # shown by pytest when a test failed
        sh(compose + ["down", "-v", "--remove-orphans"], root, check=False, timeout=300)


def test_services_publish_on_the_loopback_address_only(stack):
    for service, port in (("mlflow", 5000), ("jupyter", 8888)):
        published = sh(stack.compose + ["port", service, str(port)], stack.root).stdout.strip()
        assert published.startswith("127.0.0.1:"), f"{service}: published on {published}"


def test_jupyter_lab_needs_the_token_and_offers_the_project_kernel(stack):
    auth = {"Authorization": f"token {stack.token}"}
    wait_for(f"{stack.jupyter}/api/status", "JupyterLab", stack.logs, headers=auth)
    assert requests.get(f"{stack.jupyter}/api/status", timeout=10).status_code == 403
    kernels = requests.get(f"{stack.jupyter}/api/kernelspecs", headers=auth, timeout=10).json()["kernelspecs"]
    assert "devchange" in kernels
    names = {c["name"] for c in requests.get(f"{stack.jupyter}/api/contents", headers=auth, timeout=10).json()["content"]}
    assert {"stages", "00_config.ipynb"} <= names  # rooted at nbs/ of the mounted clone


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


def test_make_promote_from_the_host_moves_the_champion_on_the_server(stack, pipeline):
    "The workflow's last step on main, against the stack's server."
    venv = stack.root / ".venv"  # the copy runs with the test's environment (-o: never reinstalled into it)
    if venv.is_dir() and not venv.is_symlink(): shutil.rmtree(venv)  # the decoy
    if not venv.exists(): venv.symlink_to(BIN.parent)
    p = timed("make promote", ["make", "-o", ".venv/.installed", "promote"], cwd=stack.root,
              extra_env={"MLFLOW_TRACKING_URI": stack.uri})
    challenger = pipeline.get_registered_model(MODEL).aliases["challenger"]
    assert f"champion: v{challenger}" in p.stdout, p.stdout
    assert pipeline.get_registered_model(MODEL).aliases.get("champion") == challenger
    # the champion's files come back through the server's artifact proxy
    mlflow.set_tracking_uri(stack.uri)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    assert model.metadata.run_id


def test_tracking_store_survives_a_restart_of_the_stack(stack, pipeline):
    before = {r.info.run_id for r in pipeline.search_runs([pipeline.get_experiment_by_name("devchange").experiment_id])}
    aliases = pipeline.get_registered_model(MODEL).aliases
    sh(stack.compose + ["down"], stack.root, timeout=300)  # containers go, the mlflow-store volume stays
    timed("docker-compose up -d mlflow (restart)", stack.compose + ["up", "-d", "mlflow"], cwd=stack.root,
          timeout=START_TIMEOUT_S + 60)
    wait_for(f"{stack.uri}/health", "the restarted MLflow service", stack.logs)
    client = MlflowClient(stack.uri)
    after = {r.info.run_id for r in client.search_runs([client.get_experiment_by_name("devchange").experiment_id])}
    assert after == before and len(after) > 0
    assert client.get_registered_model(MODEL).aliases == aliases


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


def _outs(root: Path) -> list[str]:
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return [next(iter(o)) if isinstance(o, dict) else o
            for s in stages.values() for kind in ("outs", "metrics") for o in s.get(kind, [])]


def test_default_command_runs_the_pipeline_on_tiny_data(default_run, project):
    out = default_run.out
    missing = [o for o in _outs(project.root) if not (out / o).exists()]
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
