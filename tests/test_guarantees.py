"""The promises the README makes about runs, each checked for real on tiny data.

- Two fresh clones give byte-identical data, metrics, predictions, models and reports.
- A run killed in the middle of `train`, at a point the test controls (the model fitted and
  registered, none of its files written yet), leaves no model file, partial or temporary, and
  no `train` in dvc.lock; started again, it ends with the uninterrupted result.
- A second `dvc repro` started while one runs is refused with DVC's lock message and writes nothing.
- Two processes logging to the embedded MLflow store at once (from its very creation) both succeed.
- A bad parameter passed with `dvc exp run -S` stops the run with one message naming the key,
  what was expected and what was found, and no output changes.

The first run is `tiny_pipeline` (conftest); this module runs a second fresh copy itself."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import BIN, env, file_hashes, run, tiny_copy

RUN_TIMEOUT_S = 1200  # a tiny full run takes 2-4 min on a busy 2-core machine


def _outputs(root: Path) -> dict[str, str]:
    "sha256 of every file the pipeline writes (data, models, reports) and of dvc.lock."
    return {f: h for f, h in file_hashes(root, ("dvc.lock", "data", "models", "reports")).items()
            if Path(f).name != ".gitignore"}


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = RUN_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, f"dvc repro ended ({proc.returncode}) before {text!r}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} within {timeout} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


# Test only, in a temporary folder on the killed run's PYTHONPATH (every Python process of the run imports it): the
# first time a process is about to create a file in models/ (the train stage's first output: `io.atomic_path`
# makes its temporary file there), it says so and waits to be killed. No project code knows about it.
HOLD_BEFORE_MODELS = """\
import os, tempfile, time
_mkstemp = tempfile.mkstemp
def _held_mkstemp(*args, **kwargs):
    folder = kwargs.get("dir", args[2] if len(args) > 2 else None)
    if folder is not None and os.path.realpath(folder) == {models!r}:
        with open({signal!r} + ".tmp", "w") as f: f.write(str(os.getpid()))
        os.replace({signal!r} + ".tmp", {signal!r})
        time.sleep({timeout})  # the test kills this process long before
        os._exit(70)
    return _mkstemp(*args, **kwargs)
tempfile.mkstemp = _held_mkstemp
"""


def _wait_for_file(path: Path, proc: subprocess.Popen, log: Path, timeout: float = RUN_TIMEOUT_S) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"dvc repro ended ({proc.returncode}) before {path.name}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {path.name} within {timeout} s:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)
    return path.read_text()


def _gone(pid: int, timeout: float = 60) -> bool:
    "Whether process `pid` ended (or is a zombie nobody reaped yet) within `timeout` s."
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z": return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.2)
    return False


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A second fresh copy: `dvc repro` in the background; a concurrent `dvc repro` while it runs; the run killed in
    `train` right before its first file in models/ (SIGKILL to DVC's process group and to the stage's kernel, which
    runs in a session of its own); then `dvc repro` once more to the end, without the hold."""
    base = tmp_path_factory.mktemp("guarantees")
    root = tiny_copy(base / "devchange")
    site, held = base / "site", base / "held-before-models"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HOLD_BEFORE_MODELS.format(
        models=os.path.realpath(root / "models"), signal=str(held), timeout=RUN_TIMEOUT_S))
    log = base / "repro.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(BIN / "dvc"), "repro"], cwd=root, stdout=out, stderr=subprocess.STDOUT,
                                env={**env(), "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(site)}, start_new_session=True)
    holder = None
    try:
        _wait_for(log, "Running stage 'featurize'", proc)
        before = _outputs(root)
        second = run(["dvc", "repro"], root, check=False)  # the first run holds the lock until it is killed
        during = _outputs(root)
        holder = int(_wait_for_file(held, proc, log))
        stage_log = log.read_text()
        os.kill(holder, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        assert _gone(holder), f"the held process {holder} survived SIGKILL"
    finally:
        if proc.poll() is None: os.killpg(proc.pid, signal.SIGKILL)
        if holder and not _gone(holder, 0): os.kill(holder, signal.SIGKILL)
    killed_lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    models_after_kill = sorted(p.name for p in (root / "models").iterdir() if p.name != ".gitignore")
    rerun = run(["dvc", "repro"], root)
    return dict(root=root, second=second, before=before, during=during, killed_lock=killed_lock, stage_log=stage_log,
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
    """Killed where the test chose: in `train` (the last stage DVC started), after cross_validate was recorded. No
    model file, partial or temporary, is left, and dvc.lock does not claim train's outputs."""
    started = [line for line in interrupted["stage_log"].splitlines() if line.startswith("Running stage")]
    assert started[-1].startswith("Running stage 'train'"), started
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
from devchange import tracking_store
tracking_store.configure(timeout_s=30)
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
