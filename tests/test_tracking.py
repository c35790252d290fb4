"""devchange.tracking and devchange.registry against a real MLflow server (the session's `server`) on tiny synthetic data.

The server is `mlflow server` with its own SQLite store and proxied artifacts in a temporary
folder; every test gets its own experiment, registered model name and throw-away repository
root (a params.yaml and a dvc.yaml, which is what `devchange.catalog.repo_root` looks for)."""
import math
import os
import shutil
import subprocess
import time
import socket
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import ROOT, child_runs, free_port
from mlflow import MlflowClient

from devchange import registry, tracking, tracking_store
from devchange.config import ModelParams
from devchange.cross_validation import aggregate_folds, select_candidate
from devchange.features import FeatureSpec
from devchange.models import feature_importance, fit, make_model, predict_proba
from devchange.monitoring import ReferenceProfile, reference_profile
from devchange.names import METRIC_NAMES, TARGET, AGGREGATES, CHAMPION
from devchange.promotion import promotion_decision
from devchange.tracking_store import TrackingError


def _sandbox_root(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for f in ("params.yaml", "dvc.yaml"): shutil.copy(ROOT / f, path / f)
    return path


@pytest.fixture
def repo(tmp_path, monkeypatch, server, request):
    "A repository root in tmp, MLflow pointed at the test server, a fresh experiment."
    root = _sandbox_root(tmp_path / "repo")
    monkeypatch.setenv("DEVCHANGE_ROOT", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"test-{request.node.name}-{uuid.uuid4().hex[:6]}")
    for k in ("DVC_EXP_NAME", "DEVCHANGE_RUN_ID", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(k, raising=False)  # also restores them after configure() sets them
    yield root
    while mlflow.active_run(): mlflow.end_run()  # a failed test must not leave a run active


@pytest.fixture
def model_name():
    return f"devchange-test-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------- tiny synthetic data

@pytest.fixture(scope="module")
def toy():
    "A small table with a numeric signal, missing values and a categorical; a fitted model of each kind."
    rng = np.random.default_rng(0)
    n = 600
    table = pd.DataFrame({"feature_0": rng.normal(size=n).astype("float32"),
                          "feature_1": rng.normal(size=n).astype("float32"),
                          "feature_2": pd.Categorical(rng.choice(["a", "b", "c"], size=n), categories=["a", "b", "c"])})
    table.loc[rng.random(n) < 0.1, "feature_1"] = np.nan
    table[TARGET] = ((table["feature_0"] + (table["feature_2"] == "c") + rng.normal(scale=0.5, size=n)) > 1.2).astype("int8")
    spec = FeatureSpec(numeric={"feature_0": "float32", "feature_1": "float32"}, categorical={"feature_2": ["a", "b", "c"]})
    models = {"lightgbm": ModelParams("lightgbm", {"n_estimators": 20, "min_child_samples": 5}),
              "logreg": ModelParams("logistic_regression", {"C": 1.0, "max_iter": 500})}
    fitted = {name: fit(make_model(cfg, spec, seed=0), table, spec) for name, cfg in models.items()}
    return {"table": table, "spec": spec, "models": models, "fitted": fitted}


@pytest.fixture(scope="module")
def cv():
    "Cross-validation results in the shapes devchange.cross_validation produces (values made up)."
    rows = []
    for i, (cand, base) in enumerate([("lightgbm", 3.0), ("logreg", 2.5), ("oracle", 4.0)]):
        for fold, month in ((1, "2020-06-30"), (2, "2020-07-31")):
            lift = base + 0.25 * fold
            rows.append({"candidate": cand, "fold": fold, "valid_month": pd.Timestamp(month), "n_train": 1000 * fold,
                         "n": 500, "k": 25, "positives": 20 + i, "base_rate": 0.04 + 0.002 * i,
                         "precision_at_k": 0.04 * lift, "recall_at_k": 0.05 * lift, "lift_at_k": lift,
                         "roc_auc": 0.7 + 0.01 * fold + 0.05 * i, "pr_auc": 0.1 + 0.01 * i})
    fold_metrics = pd.DataFrame(rows)
    fold_metrics.loc[(fold_metrics["candidate"] == "logreg") & (fold_metrics["fold"] == 2), "pr_auc"] = np.nan
    aggregates = aggregate_folds(fold_metrics)
    plan_table = pd.DataFrame({"fold": [1, 2], "train_months": ["2020-04-30..2020-05-31", "2020-04-30..2020-06-30"],
                               "n_train_months": [2, 3], "valid_month": ["2020-06-30", "2020-07-31"]})
    selection = select_candidate(aggregates, "lift_at_k", "mean", ["lightgbm", "logreg"])
    return {"fold_metrics": fold_metrics, "aggregates": aggregates, "plan_table": plan_table, "selection": selection}


def _summary(mean: float, minimum: float) -> dict:
    "A CV summary of the chosen candidate, shaped like cv.json's candidates[chosen]."
    return {"lift_at_k": {"mean": mean, "std": 0.1, "min": minimum, "max": mean + 0.2},
            "roc_auc": {"mean": 0.75, "std": 0.01, "min": 0.74, "max": 0.76}}


def _profile(toy, kind: str, summary: dict) -> ReferenceProfile:
    "The monitoring reference of the toy model of `kind`, with a CV band from the summary's lift@k min and max."
    model, table, spec = toy["fitted"][kind], toy["table"], toy["spec"]
    band = pd.DataFrame({"lift_at_k": [summary["lift_at_k"]["min"], summary["lift_at_k"]["max"]]})
    return reference_profile(table, spec, predict_proba(model, table, spec), band, k_share=0.05, bins=10)


def _train(toy, kind: str, summary: dict, model_name: str, timeout_s: float = 30) -> dict:
    model, spec = toy["fitted"][kind], toy["spec"]
    with tracking.pipeline_run(timeout_s=timeout_s):
        return registry.log_training(model, spec, toy["table"].head(50), feature_importance(model, spec),
                                     summary, model_name, profile=_profile(toy, kind, summary),
                                     version_tags={"devchange.last_train_month": "2020-08-31"})


def _decide_and_apply(model_name: str, version: int, lifts: dict, margin: float = 0.1, floor: float = 1.5) -> dict:
    "The production rule (a pure function) on given lifts of the evaluation month, recorded in the registry; its JSON form."
    client = MlflowClient()
    cv_min = lambda v: float(client.get_model_version(model_name, str(v)).tags["cv_lift_at_k_min"])
    champion = registry.alias_version(client, model_name, CHAMPION)
    decision = promotion_decision(model_name, {"version": version, "lift": lifts[version], "cv_min": cv_min(version)},
                                  None if champion is None else {"version": champion, "lift": lifts[champion],
                                                                 "cv_min": cv_min(champion)},
                                  margin, floor, "2020-09-30")
    registry.apply_promotion(client, model_name, decision)
    return decision.to_dict()


def _children(client: MlflowClient, run) -> list:
    return child_runs(client, run.info.experiment_id, run.info.run_id)


# ---------------------------------------------------------------- the run tree

def test_run_tree_parent_candidates_folds(repo, cv):
    with tracking.pipeline_run(timeout_s=30) as parent:
        runs = tracking.log_cross_validation(cv["fold_metrics"], cv["aggregates"], cv["plan_table"],
                                             {"lightgbm": ModelParams("lightgbm", {"n_estimators": 20, "learning_rate": 0.05}),
                                              "logreg": ModelParams("logistic_regression", {"C": 1.0})},
                                             cv["selection"])
    client = MlflowClient()
    parent = client.get_run(parent.info.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["devchange.kind"] == "pipeline" and parent.data.tags["cv.chosen"] == "lightgbm"
    children = _children(client, parent)
    assert sorted(r.info.run_name for r in children) == ["lightgbm", "logreg", "oracle"]
    assert {r.info.run_name: r.info.run_id for r in children} == runs

    fm, agg = cv["fold_metrics"], cv["aggregates"]
    for run in children:
        name = run.info.run_name
        expected = {f"{r.metric}_{a}": getattr(r, a) for r in agg[agg["candidate"] == name].itertuples()
                    for a in AGGREGATES if not math.isnan(getattr(r, a))}
        assert run.data.metrics == expected, name
        folds = sorted(_children(client, run), key=lambda r: int(r.data.params["fold"]))
        assert [r.info.run_name for r in folds] == [f"{name} fold 1", f"{name} fold 2"]
        for fold_run, row in zip(folds, fm[fm["candidate"] == name].to_dict("records")):
            wanted = {m: float(row[m]) for m in (*METRIC_NAMES, "k", "n", "positives", "n_train", "base_rate")
                      if not math.isnan(row[m])}
            assert fold_run.data.metrics == wanted, fold_run.info.run_name
            assert fold_run.data.params["valid_month"] == row["valid_month"].strftime("%Y-%m-%d")
            assert fold_run.data.params["train_months"] == cv["plan_table"].set_index("fold").loc[row["fold"], "train_months"]
            assert fold_run.info.status == "FINISHED"

    lgbm, logreg, oracle = (client.get_run(runs[n]) for n in ("lightgbm", "logreg", "oracle"))
    assert lgbm.data.tags["chosen"] == "true" and logreg.data.tags["chosen"] == "false"
    assert lgbm.data.params == {"kind": "lightgbm", "n_estimators": "20", "learning_rate": "0.05"}
    assert oracle.data.tags["devchange.kind"] == "reference" and "chosen" not in oracle.data.tags
    assert oracle.data.params == {}
    nan_fold = [r for r in _children(client, logreg) if r.data.params["fold"] == "2"][0]
    assert "pr_auc" not in nan_fold.data.metrics  # NaN is left out, not logged
    artifacts = {f.path for f in client.list_artifacts(parent.info.run_id, "cross_validation")}
    assert "cross_validation/selection.json" in artifacts and "cross_validation/fold_metrics.csv" in artifacts

    # a re-run under the same parent supersedes the earlier candidate runs
    with tracking.pipeline_run(timeout_s=30):
        again = tracking.log_cross_validation(fm, agg, cv["plan_table"], {}, cv["selection"])
    assert client.get_run(runs["lightgbm"]).data.tags["devchange.superseded"] == "true"
    assert "devchange.superseded" not in client.get_run(again["lightgbm"]).data.tags


def test_same_inputs_same_parent(repo):
    with tracking.pipeline_run(timeout_s=30) as a: pass
    with tracking.pipeline_run(timeout_s=30) as b: pass
    assert a.info.run_id == b.info.run_id
    run = MlflowClient().get_run(a.info.run_id)
    assert run.data.tags["git.commit"] == "unknown" and run.data.tags["data.raw_hash"] == "none"
    assert run.data.params["models.lightgbm.kind"] == "lightgbm"  # params.yaml, flattened


def test_different_inputs_different_parent(repo, monkeypatch):
    def parent_id():
        with tracking.pipeline_run(timeout_s=30) as run: return run.info.run_id

    first = parent_id()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["seed"] += 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    new_params = parent_id()
    assert new_params != first

    (repo / "data" / "raw").mkdir(parents=True)
    (repo / "data" / "raw" / "target.feather").write_bytes(b"not really feather")
    new_data = parent_id()
    assert new_data not in (first, new_params)

    monkeypatch.setenv("DVC_EXP_NAME", "brisk-lark")
    in_experiment = parent_id()
    monkeypatch.setenv("DEVCHANGE_RUN_ID", "scheduled__2026-11-01")
    scheduled = parent_id()
    assert len({first, new_params, new_data, in_experiment, scheduled}) == 5
    tags = MlflowClient().get_run(scheduled).data.tags
    assert tags["dvc.exp_name"] == "brisk-lark" and tags["devchange.run_id"] == "scheduled__2026-11-01"


def test_git_commit_and_dirty(tmp_path):
    root = _sandbox_root(tmp_path / "repo")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-C", str(root)]
    (root / "code.py").write_text("x = 1\n")
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    assert tracking.git_state(root) == (head, "false")
    # what a pipeline run writes does not make the code dirty
    for f in ("dvc.lock", "reports/cv.html", "data/raw/target.feather", "models/model.joblib", "mlflow.db",
              "mlartifacts/1/x"):
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("out")
    (root / "params.yaml").write_text((root / "params.yaml").read_text() + "# dvc exp run -S rewrote me\n")
    assert tracking.git_state(root) == (head, "false")
    (root / "code.py").write_text("x = 2\n")
    assert tracking.git_state(root) == (head, "true")
    assert tracking.pipeline_context(root).tags["git.commit"] == head


def test_default_store_is_absolute_at_repo_root(tmp_path, monkeypatch):
    root = _sandbox_root(tmp_path / "repo")
    elsewhere = tmp_path / "kernel-cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # as a papermill kernel or an Airflow task would
    monkeypatch.setenv("DEVCHANGE_ROOT", str(root))
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "DVC_EXP_NAME", "DEVCHANGE_RUN_ID"):
        monkeypatch.delenv(k, raising=False)
    assert tracking_store.configure(timeout_s=5) == f"sqlite:///{root}/mlflow.db"
    exp = mlflow.get_experiment_by_name("devchange")
    assert exp.artifact_location == (root / "mlartifacts").as_uri()
    report = elsewhere / "validate.html"
    report.write_text("<html/>")
    with tracking.pipeline_run(timeout_s=5):
        tracking.log_stage_report("validate", [report])
    assert list(root.glob("mlartifacts/**/reports/validate.html"))
    assert sorted(p.name for p in elsewhere.iterdir()) == ["validate.html"]  # no stray mlflow.db or mlruns/


# ---------------------------------------------------------------- training and the registry

def test_training_logs_model_and_registers_challenger(repo, toy, model_name):
    out = _train(toy, "lightgbm", _summary(3.2, 2.9), model_name)
    client = MlflowClient()
    run = client.get_run(out["run_id"])
    assert run.data.tags["devchange.stage"] == "train" and run.data.tags["devchange.kind"] == "training"
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.data.tags["devchange.kind"] == "pipeline"
    assert run.data.metrics["cv_lift_at_k_mean"] == 3.2 and run.data.metrics["cv_lift_at_k_min"] == 2.9
    assert {f"importance_{c}" for c in toy["spec"].columns} <= set(run.data.metrics)
    assert run.data.params["estimator"] == "LGBMClassifier" and run.data.params["n_estimators"] == "20"
    assert {"importance.csv", "feature_spec.json", "reference_profile.json"} <= {f.path for f in client.list_artifacts(out["run_id"])}

    info = mlflow.models.get_model_info(out["model_uri"])
    assert "lightgbm" in info.flavors and info.signature is not None
    files = os.listdir(mlflow.artifacts.download_artifacts(out["model_uri"]))
    assert "MLmodel" in files and "input_example.json" in files

    assert registry.model_aliases(client, model_name) == {"challenger": out["version"]}
    mv = client.get_model_version(model_name, str(out["version"]))
    assert float(mv.tags["cv_lift_at_k_mean"]) == 3.2 and float(mv.tags["cv_lift_at_k_min"]) == 2.9
    assert mv.run_id == out["run_id"] and mv.tags["devchange.last_train_month"] == "2020-08-31"


def test_first_model_becomes_champion(repo, toy, model_name):
    v1 = _train(toy, "lightgbm", _summary(3.0, 2.0), model_name)["version"]
    decision = _decide_and_apply(model_name, v1, {v1: 3.1})
    assert decision["decision"] == "promoted" and decision["promoted"]
    assert decision["champion_version"] is None and decision["challenger_cv_min"] == 2.0
    assert "no champion yet" in decision["reason"]
    client = MlflowClient()
    assert registry.model_aliases(client, model_name) == {"champion": v1, "challenger": v1}
    mv = client.get_model_version(model_name, str(v1))
    assert mv.description == decision["reason"] and mv.tags["promotion.decision"] == "promoted"


def test_worse_challenger_keeps_champion_better_one_takes_over(repo, toy, model_name):
    v1 = _train(toy, "lightgbm", _summary(3.0, 2.0), model_name)["version"]
    _decide_and_apply(model_name, v1, {v1: 3.0})
    v2 = _train(toy, "logreg", _summary(3.05, 2.5), model_name)["version"]
    kept = _decide_and_apply(model_name, v2, {v1: 3.0, v2: 3.05}, margin=0.1)  # better, but within the margin
    assert kept["decision"] == "kept" and kept["champion_version"] == v1 and kept["champion_lift"] == 3.0
    client = MlflowClient()
    assert registry.model_aliases(client, model_name) == {"champion": v1, "challenger": v2}
    assert client.get_model_version(model_name, str(v2)).tags["promotion.champion_before"] == str(v1)

    v3 = _train(toy, "logreg", _summary(3.5, 2.5), model_name)["version"]
    promoted = _decide_and_apply(model_name, v3, {v1: 3.0, v3: 3.5}, margin=0.1)
    assert promoted["decision"] == "promoted" and promoted["champion_version"] == v1
    # the replaced champion keeps an alias: it scores the months after the promotion in the shadow
    assert registry.model_aliases(client, model_name) == {"champion": v3, "challenger": v3, "previous_champion": v1}


def test_challenger_below_floor_is_not_promoted(repo, toy, model_name):
    v1 = _train(toy, "lightgbm", _summary(3.0, 1.2), model_name)["version"]  # good mean, one bad month
    decision = _decide_and_apply(model_name, v1, {v1: 3.5}, floor=1.5)
    assert decision["decision"] == "kept" and "below the floor" in decision["reason"]
    assert registry.model_aliases(MlflowClient(), model_name) == {"challenger": v1}
    with pytest.raises(TrackingError, match="no 'champion' alias"):
        registry.load_version(MlflowClient(), model_name, alias=CHAMPION)


@pytest.mark.parametrize("kind", ["lightgbm", "logreg"])
def test_load_champion_reproduces_predict_proba(repo, toy, model_name, kind):
    v1 = _train(toy, kind, _summary(3.0, 2.0), model_name)["version"]
    _decide_and_apply(model_name, v1, {v1: 3.0})
    tracking_store.configure(timeout_s=30)
    champion = registry.load_version(MlflowClient(), model_name, alias=CHAMPION)
    model, version = champion.model, champion.version
    assert version == v1 and hasattr(model, "predict_proba") and champion.spec == toy["spec"]
    assert champion.profile == _profile(toy, kind, _summary(3.0, 2.0))  # the monitoring reference travels with it
    table, spec = toy["table"], toy["spec"]
    assert np.array_equal(predict_proba(model, table, spec), predict_proba(toy["fitted"][kind], table, spec))


# ---------------------------------------------------------------- failures are bounded and named
# The bound is a behaviour, not a speed: MLflow's own retries take about 4 minutes on a dead
# port, so a generous ceiling (BOUND_S) still tells a bounded failure from an unbounded one.
BOUND_S = 20

def test_unreachable_server_fails_within_bound(repo, toy, model_name, server, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    t0 = time.monotonic()
    with pytest.raises(TrackingError) as err:
        _train(toy, "lightgbm", _summary(3.0, 2.0), model_name, timeout_s=2)
    assert time.monotonic() - t0 < BOUND_S
    assert dead in str(err.value)
    assert MlflowClient(server).search_model_versions(f"name = '{model_name}'") == []


def test_silent_server_fails_within_bound(repo, monkeypatch):
    with socket.socket() as listener:  # accepts connections (kernel backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        silent = f"http://127.0.0.1:{listener.getsockname()[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", silent)
        t0 = time.monotonic()
        with pytest.raises(TrackingError, match=silent):
            tracking_store.configure(timeout_s=2)
        assert time.monotonic() - t0 < BOUND_S


def test_stage_reports_go_to_parent_and_training_run(repo, toy, model_name, tmp_path):
    out = _train(toy, "lightgbm", _summary(3.0, 2.0), model_name)
    files = [tmp_path / "train.ipynb", tmp_path / "train.html"]
    for f in files: f.write_text("{}")
    with pytest.raises(TrackingError, match="no pipeline run is active"):
        tracking.log_stage_report("train", files)
    with tracking.pipeline_run(timeout_s=30) as parent:
        targets = tracking.log_stage_report("train", files)
        only_parent = tracking.log_stage_report("validate", files[:1])
        with pytest.raises(FileNotFoundError):
            tracking.log_stage_report("score", [tmp_path / "missing.html"])
    assert targets == [parent.info.run_id, out["run_id"]] and only_parent == [parent.info.run_id]
    client = MlflowClient()
    for run_id in targets:
        assert {f.path for f in client.list_artifacts(run_id, "reports")} == {"reports/train.ipynb", "reports/train.html"}
