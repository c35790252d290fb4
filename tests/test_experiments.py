"""Every DVC experiment reaches the workspace's MLflow store, however DVC runs it.

Queued experiments run in copies of the repository under `.dvc/tmp/exps/`, which DVC deletes
afterwards. Here `devchange sweep` (what `make sweep` runs) queues a grid of two, runs them at
once (`dvc queue start -j 2`), both writing to the one embedded SQLite store of the repository
they were queued from, and compares them from that store. Each leaves its whole run tree and a
registered version there, tagged with its experiment's name."""
import json

import pytest
from mlflow import MlflowClient

from helpers import commit, run, tiny_copy
from devchange.loop import parse_queue_status

DVC_EXP, KIND, CODE_TAG = "devchange.dvc_exp", "devchange.kind", "test.code"
LEAVES = (7, 15)  # the sweep's grid: models.lightgbm.params.num_leaves


@pytest.fixture(scope="module")
def queued(tmp_path_factory):
    root = tiny_copy(tmp_path_factory.mktemp("experiments") / "devchange", {"cv.candidates": ["lightgbm"]},
                     "tiny params, LightGBM only")
    with (root / "devchange" / "tracking.py").open("a") as f:  # code only this repository has
        f.write("\n_exp_tags = exp_tags\ndef exp_tags(): return {**_exp_tags(), CODE_TAG: 'the copy'}\n"
                f"CODE_TAG = {CODE_TAG!r}\n")
    commit(root, "a marked tracking module")
    # what `make sweep` runs: dvc exp run --queue -S <grid>, dvc queue start -j 2, wait, compare from MLflow
    sweep = run(["devchange", "sweep", "--set", "models.lightgbm.params.num_leaves=" + ",".join(map(str, LEAVES)),
                 "-j", "2"], root)
    status = run(["dvc", "queue", "status"], root).stdout
    names = list(parse_queue_status(status))
    logs = {name: run(["dvc", "queue", "logs", name], root, check=False).stdout for name in names}
    return {"root": root, "status": status, "logs": logs, "names": names, "sweep": sweep.stdout,
            "client": MlflowClient(f"sqlite:///{root}/mlflow.db")}


def _leaves(queued) -> dict[str, int]:
    "{experiment name: num_leaves} as the sweep's comparison printed them: experiment, version, num_leaves, ..."
    rows = [line.split() for line in queued["sweep"].splitlines()]
    return {r[0]: int(r[2]) for r in rows if r and r[0] in queued["names"]}


def test_the_sweep_queued_one_experiment_per_value_and_compared_them(queued):
    assert len(queued["names"]) == len(LEAVES), queued["status"]
    assert f"queued {len(LEAVES)} experiment(s)" in queued["sweep"] and "2 of 2 succeeded" in queued["sweep"], queued["sweep"]
    assert sorted(_leaves(queued).values()) == sorted(LEAVES), queued["sweep"]
    header = next(line for line in queued["sweep"].splitlines() if line.split()[:3] == ["experiment", "version", "num_leaves"])
    assert "lift_at_k mean" in header and "lift_at_k min" in header, header


def test_both_queued_experiments_succeed(queued):
    status = parse_queue_status(queued["status"])
    for name in queued["names"]:
        assert status[name] == "Success", (queued["status"], queued["logs"][name][-3000:])
    shown = json.loads(run(["dvc", "exp", "show", "--json"], queued["root"]).stdout)
    names = {e.get("name") for rev in shown for g in (rev.get("experiments") or []) for e in (g.get("revs") or [])}
    assert set(queued["names"]) <= names, names


def test_each_experiment_has_its_whole_run_tree_in_the_workspace_store(queued):
    client = queued["client"]
    exp = client.get_experiment_by_name("devchange")
    assert exp is not None, "no experiment 'devchange' in the workspace's mlflow.db"
    runs = client.search_runs([exp.experiment_id], "", max_results=1000)
    by_exp = {}
    for r in runs: by_exp.setdefault(r.data.tags.get(DVC_EXP), []).append(r)
    assert set(by_exp) == set(queued["names"]), {k: len(v) for k, v in by_exp.items()}  # every run carries its name
    kinds = {name: sorted(r.data.tags.get(KIND, "") for r in rs) for name, rs in by_exp.items()}
    first, second = queued["names"]
    assert kinds[first] == kinds[second], kinds  # the same tree, whichever finished first
    assert {"pipeline", "candidate", "reference", "fold", "training", "monitoring"} <= set(kinds[first])
    for name, rs in by_exp.items():
        parents = [r for r in rs if r.data.tags.get(KIND) == "pipeline"]
        assert len(parents) == 1 and parents[0].data.tags["dvc.exp_name"] == name
        assert parents[0].info.run_name.startswith(f"pipeline {name} ")
        assert all(r.info.status == "FINISHED" for r in rs), [(r.info.run_name, r.info.status) for r in rs]
        assert {r.data.tags.get(CODE_TAG) for r in rs} == {"the copy"}  # the runner and kernels ran the copy's code
        training = [r for r in rs if r.data.tags.get(KIND) == "training"]
        assert len(training) == 1 and training[0].data.params["num_leaves"] == str(_leaves(queued)[name])


def test_each_experiment_registered_its_version_tagged_with_its_name(queued):
    client = queued["client"]
    versions = client.search_model_versions("name = 'devchange'")
    assert sorted(v.tags.get(DVC_EXP) for v in versions) == sorted(queued["names"]), [v.tags for v in versions]
    for v in versions:
        training = client.get_run(v.run_id)
        assert training.data.tags[DVC_EXP] == v.tags[DVC_EXP] and v.tags[CODE_TAG] == "the copy"
        assert training.data.params["num_leaves"] == str(_leaves(queued)[v.tags[DVC_EXP]])
    aliases = client.get_registered_model("devchange").aliases
    assert set(aliases) == {"challenger"} and int(aliases["challenger"]) in {int(v.version) for v in versions}


def test_the_copies_left_no_store_of_their_own(queued):
    root = queued["root"]
    stray = [p for p in root.rglob("mlflow.db") if p != root / "mlflow.db"]
    assert stray == [] and not list((root / ".dvc" / "tmp" / "exps").glob("tmp*/mlflow.db"))
