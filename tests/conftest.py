"""Shared fixtures: the tiny pipeline run, copies of it, and a real MLflow server. The functions they use (and
that the test modules and benchmarks/ import) are in tests/helpers.py."""
import os
import subprocess
import time
from types import SimpleNamespace

import pytest
import requests

from helpers import BIN, copy_run, free_port, run, stop_session, tiny_copy


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory):
    """A fresh copy of the project (no data, reports or dvc.lock) with the WORLD settings, after one `dvc repro`:
    the one pipeline run that every end-to-end test reading its results shares (one per pytest-xdist worker: a
    session is a worker's). `lock` is its dvc.lock right then.
    Read it; a test that changes a workspace works in `tiny_workspace` (a copy) instead."""
    root = tiny_copy(tmp_path_factory.mktemp("pipeline") / "devchange")
    result = run(["dvc", "repro"], root)
    return SimpleNamespace(root=root, result=result, lock=(root / "dvc.lock").read_text())


@pytest.fixture(scope="module")
def tiny_workspace(tiny_pipeline, tmp_path_factory):
    "A module's own copy of the finished tiny run (git, DVC cache, outputs, its MLflow store moved with it)."
    return copy_run(tiny_pipeline.root, tmp_path_factory.mktemp("workspace") / "devchange")


SERVER_START_S = 180  # a cold start on a busy 2-core runner takes 15-50 s


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    "A real `mlflow server` on 127.0.0.1 and a free port, SQLite store in a temporary folder: one for the session."
    store = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    server_env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no background job consumers: faster start and stop
    log = (store / "server.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store}/mlflow.db", "--artifacts-destination", str(store / "artifacts")],
        cwd=store, env=server_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
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
