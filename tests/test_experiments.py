"""Every DVC experiment reaches the workspace's MLflow store, however DVC runs it.

Queued experiments run in copies of the repository under `.dvc/tmp/exps/`, which DVC deletes
afterwards; two of them run at once here (`dvc queue start -j 2`), both writing to the one
embedded SQLite store of the repository they were queued from. Each leaves its whole run tree
and a registered version there, tagged with its experiment's name."""
import json
import subprocess
import time

import pytest
from mlflow import MlflowClient

from conftest import TINY, copy_project, env, run, update_params

DVC_EXP, KIND, CODE_TAG = "devchange.dvc_exp", "devchange.kind", "test.code"
EXPERIMENTS = {"leaves7": 7, "leaves15": 15}  # name: models.lightgbm.params.num_leaves
QUEUE_DEADLINE_S = 1800  # a bound on waiting for the workers, not a timing assertion


def _queue_status(root) -> str:
    return run(["dvc", "queue", "status"], root).stdout


@pytest.fixture(scope="module")
def queued(tmp_path_factory):
    root = copy_project(tmp_path_factory.mktemp("experiments") / "devchange",
                        skip_prefixes=("reports/", "data/raw", "dvc.lock"))
    update_params(root, {**TINY, "cv.candidates": ["lightgbm"]})
    with (root / "devchange" / "tracking.py").open("a") as f:  # code only this repository has
        f.write("\n_exp_tags = exp_tags\ndef exp_tags(): return {**_exp_tags(), CODE_TAG: 'the copy'}\n"
                f"CODE_TAG = {CODE_TAG!r}\n")
    run(["git", "commit", "-qam", "tiny params, LightGBM only, a marked tracking module"], root)
    for name, leaves in EXPERIMENTS.items():
        run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"models.lightgbm.params.num_leaves={leaves}"], root)
    assert not (root / "mlflow.db").exists()  # nothing ran yet: the workers create the store
    # the workers outlive `dvc queue start` and inherit its environment (PATH to the project's venv)
    subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=root, env=env(), check=True, capture_output=True)
    deadline = time.monotonic() + QUEUE_DEADLINE_S
    while any(w in (status := _queue_status(root)) for w in ("Queued", "Running")):
        if time.monotonic() > deadline:
            run(["dvc", "queue", "kill", *EXPERIMENTS], root, check=False)
            raise AssertionError(f"queued experiments still unfinished:\n{status}")
        time.sleep(5)
    logs = {name: run(["dvc", "queue", "logs", name], root, check=False).stdout for name in EXPERIMENTS}
    return {"root": root, "status": status, "logs": logs,
            "client": MlflowClient(f"sqlite:///{root}/mlflow.db")}


def test_both_queued_experiments_succeed(queued):
    lines = {line.split()[1]: line for line in queued["status"].splitlines()[1:] if len(line.split()) > 2}
    for name in EXPERIMENTS:
        assert name in lines and "Success" in lines[name], (queued["status"], queued["logs"][name][-3000:])
    shown = json.loads(run(["dvc", "exp", "show", "--json"], queued["root"]).stdout)
    names = {e.get("name") for rev in shown for g in (rev.get("experiments") or []) for e in (g.get("revs") or [])}
    assert set(EXPERIMENTS) <= names, names


def test_each_experiment_has_its_whole_run_tree_in_the_workspace_store(queued):
    client = queued["client"]
    exp = client.get_experiment_by_name("devchange")
    assert exp is not None, "no experiment 'devchange' in the workspace's mlflow.db"
    runs = client.search_runs([exp.experiment_id], "", max_results=1000)
    by_exp = {}
    for r in runs: by_exp.setdefault(r.data.tags.get(DVC_EXP), []).append(r)
    assert set(by_exp) == set(EXPERIMENTS), {k: len(v) for k, v in by_exp.items()}  # every run carries its name
    kinds = {name: sorted(r.data.tags.get(KIND, "") for r in rs) for name, rs in by_exp.items()}
    assert kinds["leaves7"] == kinds["leaves15"], kinds  # the same tree, whichever finished first
    assert {"pipeline", "candidate", "reference", "fold", "training", "monitoring"} <= set(kinds["leaves7"])
    for name, rs in by_exp.items():
        parents = [r for r in rs if r.data.tags.get(KIND) == "pipeline"]
        assert len(parents) == 1 and parents[0].data.tags["dvc.exp_name"] == name
        assert parents[0].info.run_name.startswith(f"pipeline {name} ")
        assert all(r.info.status == "FINISHED" for r in rs), [(r.info.run_name, r.info.status) for r in rs]
        assert {r.data.tags.get(CODE_TAG) for r in rs} == {"the copy"}  # the runner and kernels ran the copy's code
        training = [r for r in rs if r.data.tags.get(KIND) == "training"]
        assert len(training) == 1 and training[0].data.params["num_leaves"] == str(EXPERIMENTS[name])


def test_each_experiment_registered_its_version_tagged_with_its_name(queued):
    client = queued["client"]
    versions = client.search_model_versions("name = 'devchange'")
    assert sorted(v.tags.get(DVC_EXP) for v in versions) == sorted(EXPERIMENTS), [v.tags for v in versions]
    for v in versions:
        training = client.get_run(v.run_id)
        assert training.data.tags[DVC_EXP] == v.tags[DVC_EXP] and v.tags[CODE_TAG] == "the copy"
        assert training.data.params["num_leaves"] == str(EXPERIMENTS[v.tags[DVC_EXP]])
    aliases = client.get_registered_model("devchange").aliases
    assert set(aliases) == {"challenger"} and int(aliases["challenger"]) in {int(v.version) for v in versions}


def test_the_copies_left_no_store_of_their_own(queued):
    root = queued["root"]
    stray = [p for p in root.rglob("mlflow.db") if p != root / "mlflow.db"]
    assert stray == [] and not list((root / ".dvc" / "tmp" / "exps").glob("tmp*/mlflow.db"))
