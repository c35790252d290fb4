"""Shared fixtures: the repository, a working copy of it, and commands run in that copy."""
import os
import signal
import socket
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv that runs the tests also runs the copies


def project_files() -> list[str]:
    "Tracked files plus new ones not ignored: what a commit of the working tree would hold."
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def copy_project(dest: Path, skip_prefixes: tuple[str, ...] = ()) -> Path:
    "Copy the working tree's project files to `dest` (a new git repository with one commit)."
    for f in project_files():
        if f.startswith(skip_prefixes): continue
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, target)
    run(["git", "init", "-q", "-b", "main"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit", "-qm", "copy"], dest)
    return dest


def env() -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{BIN}{os.pathsep}{e['PATH']}"
    e.pop("DEVCHANGE_ROOT", None)
    e.pop("MLFLOW_TRACKING_URI", None)
    return e


def run(cmd: list[str], cwd: Path, check: bool = True, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**env(), **(extra_env or {})})
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}) in {cwd}\n--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-4000:]}")
    return p


def update_params(root: Path, changes: dict) -> None:
    "Set dotted keys in root/params.yaml."
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        *parents, last = key.split(".")
        node = params
        for p in parents: node = node[p]
        node[last] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


TINY = {  # small enough for seconds per stage, big enough for every fold to hold changers
    "generate.n_users": 1500,
    "models.lightgbm.params.n_estimators": 40,
    "models.lightgbm.params.min_child_samples": 20,
}


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """A fresh copy of the project (no data, reports or dvc.lock) with the TINY settings, after one
    `dvc repro`; `lock` is its dvc.lock right then (modules that share the copy may change it later)."""
    root = copy_project(tmp_path_factory.mktemp("pipeline") / "devchange", skip_prefixes=("reports/", "data/raw", "dvc.lock"))
    update_params(root, TINY)
    run(["git", "commit", "-qam", "tiny params"], root)
    result = run(["dvc", "repro"], root)
    return SimpleNamespace(root=root, result=result, lock=(root / "dvc.lock").read_text())


SERVER_START_S = 180  # a cold start on a busy 2-core runner takes 15-50 s


def free_port() -> int:
    "A port nobody listens on (free now, closed once the socket is)."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    "The live processes of session `sid`: a process started with `start_new_session=True` and all it started."
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if os.getsid(int(p.name)) == sid and (p / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    pids.append(int(p.name))
            except (ProcessLookupError, PermissionError, FileNotFoundError):
                pass
    return pids


def stop_session(proc: subprocess.Popen, term_wait_s: float = 20) -> None:
    """Stop `proc` (started with `start_new_session=True`) and every process of its session: SIGTERM, and SIGKILL
    to what is left after `term_wait_s`. Returns once none is left (`mlflow server`'s uvicorn workers, Airflow's
    components), so no server outlives its test."""
    for sig, wait in ((signal.SIGTERM, term_wait_s), (signal.SIGKILL, 10)):
        for pid in session_pids(proc.pid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while (proc.poll(), session_pids(proc.pid))[1] and time.monotonic() < deadline: time.sleep(0.5)
        if not session_pids(proc.pid): break
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    "A real `mlflow server` on 127.0.0.1 and a free port, SQLite store in a temporary folder."
    store = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job consumers: faster start and stop
    log = (store / "server.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store}/mlflow.db", "--artifacts-destination", str(store / "artifacts")],
        cwd=store, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            try:
                if requests.get(f"{uri}/health", timeout=2).ok: break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not answer /health: {(store / 'server.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield uri
    finally:
        stop_session(proc)
        log.close()
