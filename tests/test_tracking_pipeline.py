"""End to end with a real MLflow server: two pipeline runs with different parameters, the
second one a `dvc exp run` whose challenger is worse, all checked through MlflowClient."""
import json
import math
import uuid

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from conftest import TINY, copy_project, run, update_params

KIND, KEY = "devchange.kind", "devchange.pipeline_key"
FOLD_METRICS = ("precision_at_k", "recall_at_k", "lift_at_k", "roc_auc", "pr_auc")


@pytest.fixture(scope="module")
def runs(server, tmp_path_factory):
    root = copy_project(tmp_path_factory.mktemp("tracked") / "devchange", skip_prefixes=("reports/", "data/raw", "dvc.lock"))
    model_name = f"devchange-e2e-{uuid.uuid4().hex[:6]}"
    update_params(root, {**TINY, "tracking.model_name": model_name})
    run(["git", "commit", "-qam", "tiny params"], root)
    env = {"MLFLOW_TRACKING_URI": server, "MLFLOW_EXPERIMENT_NAME": model_name}
    run(["dvc", "repro"], root, extra_env=env)
    first = {"cv": json.loads((root / "reports/metrics/cv.json").read_text()),
             "promotion": json.loads((root / "reports/metrics/promotion.json").read_text()),
             "scoring": pd.read_parquet(root / "data/predictions/scoring.parquet")}
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "first run"], root)
    # a clearly weaker challenger: one shallow tree, the only candidate
    run(["dvc", "exp", "run", "-n", "weak", "-S", "cv.candidates=[lightgbm]",
         "-S", "models.lightgbm.params.n_estimators=1", "-S", "models.lightgbm.params.num_leaves=2"], root, extra_env=env)
    second = {"cv": json.loads((root / "reports/metrics/cv.json").read_text()),
              "promotion": json.loads((root / "reports/metrics/promotion.json").read_text()),
              "scoring": pd.read_parquet(root / "data/predictions/scoring.parquet")}
    client = MlflowClient(server)
    experiment = client.get_experiment_by_name(model_name)
    return {"root": root, "client": client, "exp": experiment.experiment_id, "model_name": model_name,
            "first": first, "second": second, "env": env, "server": server}


def _parents(r):
    return r["client"].search_runs([r["exp"]], f"tags.`{KIND}` = 'pipeline'", order_by=["attributes.start_time ASC"])


def _children(r, run_id, kind=None):
    found = r["client"].search_runs([r["exp"]], f"tags.`mlflow.parentRunId` = '{run_id}'")
    return [c for c in found if kind is None or c.data.tags.get(KIND) == kind]


def test_one_parent_per_pipeline_run_with_provenance_tags(runs):
    parents = _parents(runs)
    assert len(parents) == 2, [p.info.run_name for p in parents]
    first, second = parents
    for p in parents:
        tags = p.data.tags
        assert len(tags["git.commit"]) == 40 and tags["git.dirty"] in ("true", "false")
        assert len(tags["data.raw_hash"]) >= 16 and len(tags["params.hash"]) >= 16
    assert "dvc.exp_name" not in first.data.tags
    assert second.data.tags["dvc.exp_name"] == "weak"
    reports = {a.path for a in runs["client"].list_artifacts(first.info.run_id, "reports")}
    assert {f"reports/{s}.html" for s in ("generate", "validate", "cross_validate", "train", "promote", "score")} <= reports


def test_candidate_and_fold_runs_match_the_dvc_metrics_files(runs):
    first = _parents(runs)[0]
    cv = runs["first"]["cv"]
    candidates = {c.info.run_name: c for c in _children(runs, first.info.run_id) if c.data.tags.get(KIND) in ("candidate", "reference")}
    assert set(candidates) == {"lightgbm", "logreg", "oracle"}
    for name, cand in candidates.items():
        for agg in ("mean", "std", "min", "max"):
            assert cand.data.metrics[f"lift_at_k_{agg}"] == pytest.approx(cv["candidates"][name]["lift_at_k"][agg])
        folds = {int(f.data.params["fold"]): f for f in _children(runs, cand.info.run_id, "fold")}
        assert sorted(folds) == [1, 2, 3, 4]
        for fold, f in folds.items():
            expected = cv["folds"][f"fold_{fold}"]
            assert f.data.params["valid_month"] == expected["valid_month"]
            for m in FOLD_METRICS:
                value = expected[name][m]
                if value is None: assert m not in f.data.metrics
                else: assert f.data.metrics[m] == pytest.approx(value, rel=1e-12), (name, fold, m)
    assert candidates[cv["selection"]["chosen"]].data.tags["chosen"] == "true"


def test_training_run_logs_model_importance_and_reports(runs):
    first = _parents(runs)[0]
    training = _children(runs, first.info.run_id, "training")
    assert len(training) == 1
    run_id = training[0].info.run_id
    paths = {a.path for a in runs["client"].list_artifacts(run_id)} | {a.path for a in runs["client"].list_artifacts(run_id, "reports")}
    assert "reports/train.html" in paths and "reports/train.ipynb" in paths
    assert any("importance" in p for p in paths), paths
    models = runs["client"].search_logged_models(experiment_ids=[runs["exp"]], filter_string=f"source_run_id = '{run_id}'")
    assert len(models) == 1 and models[0].model_uri


def test_registry_versions_aliases_and_promotion_decisions(runs):
    client, name = runs["client"], runs["model_name"]
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    assert versions == [1, 2]
    p1, p2 = runs["first"]["promotion"], runs["second"]["promotion"]
    assert p1["decision"] == "promoted" and p1["challenger_version"] == 1
    assert p2["decision"] == "kept" and p2["challenger_version"] == 2 and p2["champion_version"] == 1
    assert p2["challenger_mean"] < p1["challenger_mean"]  # the premise: the second challenger is worse
    assert int(client.get_model_version_by_alias(name, "champion").version) == 1
    assert int(client.get_model_version_by_alias(name, "challenger").version) == 2
    v2 = client.get_model_version(name, "2")
    assert v2.tags["promotion.decision"] == "kept" and p2["reason"] in v2.description
    assert client.get_model_version(name, "1").tags["promotion.decision"] == "promoted"


def test_champion_reproduces_the_scoring_output(runs, monkeypatch):
    from devchange.features import FeatureSpec
    from devchange.models import predict_proba
    from devchange.tracking import load_champion
    monkeypatch.setenv("MLFLOW_TRACKING_URI", runs["server"])
    monkeypatch.setenv("DEVCHANGE_ROOT", str(runs["root"]))
    model, version = load_champion(runs["model_name"], timeout_s=30)
    assert version == 1
    root = runs["root"]
    scoring = pd.read_parquet(root / "data/processed/scoring.parquet")
    spec = FeatureSpec.from_dict(json.loads((root / "data/processed/features.json").read_text()))
    expected = scoring[["user_id"]].assign(probability=predict_proba(model, scoring, spec))
    for which in ("first", "second"):  # the weak experiment kept the champion, so the scores did not change
        got = runs[which]["scoring"].merge(expected, on="user_id", suffixes=("", "_champion"))
        assert len(got) == len(scoring)
        assert np.array_equal(got["probability"].to_numpy(), got["probability_champion"].to_numpy())


def test_dvc_exp_show_lists_the_experiment_next_to_the_workspace(runs):
    shown = json.loads(run(["dvc", "exp", "show", "--json"], runs["root"], extra_env=runs["env"]).stdout)
    names = [e.get("name") for rev in shown for e in (rev.get("experiments") or []) for e in (e.get("revs") or [])]
    assert "weak" in names, names
    def lift(rev):
        data = rev["data"]["metrics"]["reports/metrics/cv.json"]["data"]
        return data["candidates"]["lightgbm"]["lift_at_k"]["mean"]
    workspace = next(r for r in shown if r["rev"] == "workspace")
    weak = next(e for rev in shown for g in (rev.get("experiments") or []) for e in g["revs"] if e.get("name") == "weak")
    assert math.isfinite(lift(workspace)) and math.isfinite(lift(weak))
