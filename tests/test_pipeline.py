"""End to end: `dvc repro` in a copy of the repository, on a tiny data set, checked output by output.

One copy goes through three runs, as a user would: the synthetic data; then the user's own
files (data.source: directory); then a user file that breaks the contract."""
import hashlib
import json

import pandas as pd
import pytest

from conftest import TINY, copy_project, run, update_params

STAGES = ["generate", "validate", "featurize", "cross_validate", "train", "promote", "score"]
OUTPUTS = ["data/raw/target.feather", "data/raw/user_features.feather", "data/raw/scoring_user_features.feather",
           "data/raw/scoring_target.feather", "data/raw/oracle.feather",
           "data/processed/train.parquet", "data/processed/scoring.parquet", "data/processed/features.json",
           "data/predictions/oof.parquet", "data/predictions/scoring.parquet",
           "models/model.joblib", "models/model.json",
           "reports/metrics/data.json", "reports/metrics/cv.json", "reports/metrics/train.json",
           "reports/metrics/promotion.json", "reports/metrics/score.json", "reports/plots/cv_folds.csv", "reports/plots/gains.csv",
           "reports/plots/importance.csv"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = copy_project(tmp_path_factory.mktemp("pipeline") / "devchange", skip_prefixes=("reports/", "data/raw", "dvc.lock"))
    update_params(root, TINY)
    run(["git", "commit", "-qam", "tiny params"], root)
    result = run(["dvc", "repro"], root)
    return root, result


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_stage_writes_its_outputs_and_report(project):
    root, _ = project
    missing = [f for f in OUTPUTS if not (root / f).is_file()]
    assert not missing, missing
    for stage in STAGES:
        nb, html = root / "reports" / f"{stage}.ipynb", root / "reports" / f"{stage}.html"
        assert nb.stat().st_size > 0 and html.stat().st_size > 0
        text = html.read_text()
        assert "Key figures" in text, f"{stage}: the report does not end with its key figures"
        assert str(root) not in nb.read_text(), f"{stage}: machine-specific path in the report"
    for stage in ("cross_validate", "train", "score"):
        assert "data:image/png;base64" in (root / "reports" / f"{stage}.html").read_text(), f"{stage}: no plot"


def test_second_repro_has_nothing_to_do(project):
    root, _ = project
    out = run(["dvc", "repro"], root).stdout
    assert "Running stage" not in out, out
    assert "up to date" in run(["dvc", "status"], root).stdout


def test_cross_validation_metrics(project):
    root, _ = project
    cv = json.loads((root / "reports/metrics/cv.json").read_text())
    plan = cv["fold_plan"]
    assert [plan[str(f)]["valid_month"] for f in (1, 2, 3, 4)] == ["2020-05-31", "2020-06-30", "2020-07-31", "2020-08-31"]
    assert [plan[str(f)]["n_train_months"] for f in (1, 2, 3, 4)] == [1, 2, 3, 4]
    assert set(cv["candidates"]) == {"lightgbm", "logreg", "oracle"}
    for name, metrics in cv["candidates"].items():
        assert set(metrics["lift_at_k"]) == {"mean", "std", "min", "max"}
    assert cv["selection"]["chosen"] in {"lightgbm", "logreg"}
    assert cv["selection"]["metric"] == "lift_at_k" and cv["selection"]["reason"]
    # every fold metric can be recomputed from the out-of-fold predictions
    from devchange.metrics import top_k_metrics
    oof = pd.read_parquet(root / "data/predictions/oof.parquet")
    fold = oof[(oof["candidate"] == "logreg") & (oof["fold"] == 3)]
    recomputed = top_k_metrics(fold["target"], fold["probability"], 0.05)["lift_at_k"]
    assert recomputed == pytest.approx(cv["folds"]["fold_3"]["logreg"]["lift_at_k"])


def test_scoring_output(project):
    root, _ = project
    pred = pd.read_parquet(root / "data/predictions/scoring.parquet")
    scoring = pd.read_feather(root / "data/raw/scoring_user_features.feather")
    summary = json.loads((root / "reports/metrics/score.json").read_text())
    assert len(pred) == len(scoring) == summary["n"]
    assert list(pred.columns) == ["user_id", "month", "probability", "rank", "in_top_k"]
    assert pred["in_top_k"].sum() == summary["k"] == -(-len(pred) * 5 // 100)
    assert sorted(pred["rank"]) == list(range(1, len(pred) + 1))
    assert pred["month"].dt.strftime("%Y-%m-%d").unique().tolist() == ["2020-09-30"]


def test_one_parameter_reruns_only_its_stages(project):
    root, _ = project
    update_params(root, {"featurize.float32": False})
    status = json.loads(run(["dvc", "status", "--json"], root).stdout)
    assert set(status) == {"featurize"}, status
    run(["git", "checkout", "params.yaml"], root)


@pytest.fixture(scope="module")
def own_data(project, tmp_path_factory):
    "The user's own files: the brief's schema, categoricals as plain strings, no oracle."
    root, _ = project
    folder = tmp_path_factory.mktemp("own_data")
    for name in ("target", "user_features", "scoring_user_features", "scoring_target"):
        df = pd.read_feather(root / "data/raw" / f"{name}.feather")
        for c in df.select_dtypes("category"):
            df[c] = df[c].astype(object)
        df.to_feather(folder / f"{name}.feather")
    update_params(root, {"data.source": "directory", "data.dir": str(folder)})
    run(["dvc", "repro"], root)
    return root, folder


def test_pipeline_runs_unchanged_on_own_data(own_data):
    root, folder = own_data
    assert _digest(root / "data/raw/target.feather") == _digest(folder / "target.feather")
    assert len(pd.read_feather(root / "data/raw/oracle.feather")) == 0
    cv = json.loads((root / "reports/metrics/cv.json").read_text())
    assert set(cv["candidates"]) == {"lightgbm", "logreg"}  # no oracle for real users
    assert (root / "data/predictions/scoring.parquet").is_file()


def test_contract_violation_stops_the_pipeline_and_keeps_earlier_outputs(own_data):
    root, folder = own_data
    kept = {f: _digest(root / f) for f in ("data/processed/train.parquet", "reports/metrics/data.json",
                                           "reports/validate.html", "models/model.joblib")}
    target = pd.read_feather(folder / "target.feather")
    target.loc[[3, 7, 11], "target"] = 2
    target.to_feather(folder / "target.feather")
    p = run(["dvc", "repro"], root, check=False)
    assert p.returncode != 0
    message = p.stdout + p.stderr
    assert "target.feather" in message and "'target'" in message and "3 rows" in message, message[-3000:]
    assert "Running stage 'featurize'" not in p.stdout
    assert {f: _digest(root / f) for f in kept} == kept
    assert (root / "reports/failed/validate.ipynb").is_file()
