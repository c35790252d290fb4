"""The promises the README makes about runs, each checked for real on tiny data.

- Two fresh clones give byte-identical data, metrics, predictions, models and reports.
- A run killed in the middle of `train` and started again ends with the uninterrupted result.
- A second `dvc repro` started while one runs is refused with DVC's lock message and writes nothing.
- Two processes logging to the embedded MLflow store at once (from its very creation) both succeed.
- A bad parameter passed with `dvc exp run -S` stops the run with one message naming the key,
  what was expected and what was found, and no output changes.

The first run is `tiny_pipeline` (conftest); this module runs a second fresh copy itself."""
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import BIN, TINY, copy_project, env, run, update_params

RUN_TIMEOUT_S = 1200  # a tiny full run takes 2-4 min on a busy 2-core machine


def _outputs(root: Path) -> dict[str, str]:
    "sha256 of every file the pipeline writes (data, models, reports) and of dvc.lock."
    files = [root / "dvc.lock", *(f for d in ("data", "models", "reports") for f in (root / d).rglob("*")
                                   if f.is_file() and f.name != ".gitignore")]
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(files)}


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = RUN_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, f"dvc repro ended ({proc.returncode}) before {text!r}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A second fresh copy: `dvc repro` in the background; a concurrent `dvc repro` while it runs; the
    run killed (SIGKILL to its whole process group: DVC, papermill, the kernel) a few seconds into
    `train`; then `dvc repro` once more to the end."""
    root = copy_project(tmp_path_factory.mktemp("guarantees") / "devchange",
                       skip_prefixes=("reports/", "data/raw", "dvc.lock"))
    update_params(root, TINY)
    run(["git", "commit", "-qam", "tiny params"], root)
    log = root.parent / "repro.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(BIN / "dvc"), "repro"], cwd=root, stdout=out, stderr=subprocess.STDOUT,
                                env={**env(), "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    try:
        _wait_for(log, "Running stage 'featurize'", proc)
        before = _outputs(root)
        second = run(["dvc", "repro"], root, check=False)
        during = _outputs(root)
        _wait_for(log, "Running stage 'train'", proc)
        time.sleep(5)  # the kernel is up and training has started
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None: os.killpg(proc.pid, signal.SIGKILL)
    killed_lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    models_after_kill = sorted(p.name for p in (root / "models").iterdir() if p.name != ".gitignore")
    rerun = run(["dvc", "repro"], root)
    return dict(root=root, second=second, before=before, during=during, killed_lock=killed_lock,
                models_after_kill=models_after_kill, rerun=rerun, log=log.read_text())


def test_a_concurrent_repro_is_refused_and_does_nothing(interrupted):
    second = interrupted["second"]
    message = second.stdout + second.stderr
    assert second.returncode != 0, message
    # DVC's locks: the repository lock, or (what `dvc repro` holds while it runs) the read/write lock
    # on the stages' files, naming the process that holds it
    assert "Unable to acquire lock" in message or "is busy, it is being blocked by" in message, message[-3000:]
    assert "Running stage" not in message
    # what the first run had written is untouched by the refused one (the first was still in featurize)
    written = {f: h for f, h in interrupted["before"].items() if f.startswith("data/raw/")}
    assert written and {f: interrupted["during"][f] for f in written} == written


def test_a_run_killed_in_train_leaves_no_half_written_model(interrupted):
    assert "train" not in interrupted["killed_lock"] and "cross_validate" in interrupted["killed_lock"]
    assert interrupted["models_after_kill"] == [], interrupted["models_after_kill"]


def test_the_rerun_after_the_kill_gives_the_uninterrupted_result(interrupted, tiny_pipeline):
    """Two fresh copies in different folders, one killed in `train` and rerun, one uninterrupted
    (`tiny_pipeline`): dvc.lock holds the hash of every output (data, predictions, model, metrics,
    plots, executed reports), so equal locks mean byte-identical results."""
    assert "Running stage 'train'" in interrupted["rerun"].stdout
    ran = (interrupted["root"] / "dvc.lock").read_text()
    assert ran == tiny_pipeline.lock, "outputs differ between two fresh copies: " + "; ".join(
        line.strip() for line in ran.splitlines() if line not in tiny_pipeline.lock.splitlines())[:2000]


LOGGER = """
import sys, mlflow
from devchange import tracking
tracking.configure(timeout_s=30)
for i in range(int(sys.argv[2])):
    with mlflow.start_run(run_name=f"{sys.argv[1]}-{i}"):
        mlflow.log_params({"writer": sys.argv[1], "i": i})
        mlflow.log_metrics({"lift_at_k": i / 10, "step": i})
        mlflow.set_tag("devchange.kind", "concurrency-test")
print("done", sys.argv[1])
"""


def test_two_processes_logging_to_the_embedded_store_at_once_both_succeed(tmp_path):
    "From an empty folder: both create the SQLite store and the experiment and log 15 runs each, at once."
    (tmp_path / "params.yaml").write_text("seed: 1\n")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    e = {**env(), "DEVCHANGE_ROOT": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", LOGGER, name, "15"], cwd=tmp_path, env=e,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    from mlflow import MlflowClient
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exps = [x for x in client.search_experiments() if x.name == "devchange"]
    assert len(exps) == 1
    runs = client.search_runs([exps[0].experiment_id], "tags.`devchange.kind` = 'concurrency-test'", max_results=100)
    assert sorted(r.info.run_name for r in runs) == sorted(f"{w}-{i}" for w in "ab" for i in range(15))
    assert all(r.info.status == "FINISHED" and r.data.metrics["step"] == int(r.info.run_name.split("-")[1]) for r in runs)


BAD_PARAMETERS = [  # -S value, the key the message names, what it expects, what it found
    ("metrics.k_share=0", "metrics.k_share", "a share in (0, 1]", "0.0"),
    ("metrics.k_share=1.5", "metrics.k_share", "a share in (0, 1]", "1.5"),
    ("cv.candidates=[lightgbm,xgboost]", "cv.candidates", "names defined under models", "'xgboost'"),
    ("+models.oracle={kind:lightgbm,params:{}}", "models.oracle", "a name other than 'oracle'", "'oracle'"),
    ("generate.n_users=-5", "generate.n_users", "at least 10", "-5"),
    ("cv.n_folds=5", "cv.n_folds", "fewer than the 5 months of the training window", "5"),
    ("cv.n_folds=four", "cv.n_folds", "an integer", "'four'"),
]


@pytest.mark.parametrize("override, key, expected, found", BAD_PARAMETERS, ids=[b[0] for b in BAD_PARAMETERS])
def test_a_bad_parameter_stops_the_run_naming_key_expected_and_found(interrupted, override, key, expected, found):
    root = interrupted["root"]
    before = _outputs(root)
    p = run(["dvc", "exp", "run", "-S", override], root, check=False)
    message = p.stdout + p.stderr
    run(["git", "checkout", "params.yaml"], root)
    assert p.returncode != 0, message[-3000:]
    lines = [line for line in message.splitlines() if f"params.yaml: {key}:" in line]
    assert len(set(lines)) == 1, message[-3000:]
    assert f"expected {expected}" in lines[0] and f"found {found}" in lines[0], lines[0]
    assert "Traceback" not in message, message[-3000:]
    assert _outputs(root) == before
