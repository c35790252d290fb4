"""End to end: `dvc repro` in a copy of the repository, on a tiny data set, checked output by output.

The run is the session's `tiny_pipeline` (conftest), read as it is. What changes a workspace (edits, forced
and further runs) happens in this module's copy of that run, `tiny_workspace`, which goes on as a user would:
a run without drift; then the user's own files (data.source: directory); then a user file that breaks the
contract."""
import json

import pandas as pd
import pytest
import yaml

from helpers import ROOT, run, sha256, update_params
from devchange.catalog import OUTPUTS as OUTPUTS_BY_NAME

STAGES = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
OUTPUTS = sorted({path for path, _ in OUTPUTS_BY_NAME.values() if path != "data/stream"}
                 | {"data/stream/2020-10-31/features.feather", "data/stream/2020-11-30/targets.feather"})


@pytest.fixture(scope="module")
def project(tiny_pipeline):
    "The shared run, read only."
    return tiny_pipeline.root, tiny_pipeline.result


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
    for stage in ("cross_validate", "train", "score", "monitor"):
        assert "data:image/png;base64" in (root / "reports" / f"{stage}.html").read_text(), f"{stage}: no plot"


def test_second_repro_has_nothing_to_do(project):
    root, _ = project
    out = run(["dvc", "repro"], root).stdout
    assert "Running stage" not in out, out
    assert "up to date" in run(["dvc", "status"], root).stdout


def test_a_forced_rerun_reproduces_every_output_byte_for_byte(tiny_workspace, tiny_pipeline):
    "Every hash in dvc.lock (data, models, metrics, executed reports) is a function of code, data and params."
    root = tiny_workspace
    before = (root / "dvc.lock").read_text()
    assert before == tiny_pipeline.lock  # the copy of the run is the run
    run(["dvc", "repro", "--force"], root)
    after = (root / "dvc.lock").read_text()
    assert after == before, "outputs differ between two runs of the same inputs: " + "; ".join(
        l.strip() for l in after.splitlines() if l not in before.splitlines())[:2000]


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


def _drifted_features(root) -> list[str]:
    "The generator's drifting numeric features, and the brand, which gains a level in the scoring month."
    from devchange.config import load_params
    from devchange.generate import feature_roles
    roles = feature_roles(load_params(root / "params.yaml").generate)
    return sorted(roles.loc[roles["drifts"] | (roles["role"] == "brand"), "feature"])


def test_monitor_puts_the_drifted_features_on_top_and_is_not_ok(project):
    root, _ = project
    doc = json.loads((root / "reports/metrics/monitoring.json").read_text())
    drifted = _drifted_features(root)
    assert sorted(list(doc["drift"]["features"])[:len(drifted)]) == drifted, list(doc["drift"]["features"])[:8]
    assert doc["verdict"]["status"] != "ok", doc["verdict"]
    from devchange.config import load_params
    from devchange.generate import feature_roles
    roles = feature_roles(load_params(root / "params.yaml").generate)
    brand = roles.loc[roles["role"] == "brand", "feature"].item()
    assert doc["drift"]["features"][brand]["psi"] >= 0.1  # 3% of the month's rows carry a brand never seen in training
    assert doc["performance"]["n_with_target"] == doc["drift"]["n"] > 0
    assert doc["performance"]["oracle_lift_at_k"] > 1


def test_tracking_settings_rerun_nothing(tiny_workspace):
    root = tiny_workspace
    update_params(root, {"tracking.timeout_s": 7, "tracking.model_name": "another-name"})
    status = json.loads(run(["dvc", "status", "--json"], root).stdout)
    assert status == {}, status
    run(["git", "checkout", "params.yaml"], root)


@pytest.mark.parametrize("module, stages", [
    ("metrics", {"cross_validate", "train", "score", "monitor"}),
    # train reads cv.json through cross_validation.CVSummary, which imports folds; score and monitor never do
    ("folds", {"cross_validate", "train"}),
    ("models", {"cross_validate", "train", "score"}),
])
def test_a_code_change_reruns_every_stage_that_uses_it(tiny_workspace, module, stages):
    from test_dvc_deps import stages_using
    root = tiny_workspace
    path = root / "devchange" / f"{module}.py"
    path.write_text(path.read_text() + "\n# an edit\n")
    status = json.loads(run(["dvc", "status", "--json"], root).stdout)
    run(["git", "checkout", f"devchange/{module}.py"], root)
    assert set(status) == stages_using(module) == stages, status


def test_one_parameter_reruns_only_its_stages(tiny_workspace):
    root = tiny_workspace
    update_params(root, {"featurize.float32": False})
    status = json.loads(run(["dvc", "status", "--json"], root).stdout)
    assert set(status) == {"featurize"}, status
    run(["git", "checkout", "params.yaml"], root)


def test_a_run_without_drift_is_ok(tiny_workspace):
    root = tiny_workspace
    update_params(root, {"generate.drift": 0.0, "generate.concept_drift": 0.0, "generate.unseen_category_share": 0.0})
    run(["dvc", "repro"], root)
    doc = json.loads((root / "reports/metrics/monitoring.json").read_text())
    assert doc["verdict"]["status"] == "ok", doc["verdict"]
    assert doc["drift"]["max_feature_psi"] < 0.1 and doc["drift"]["score_psi"] < 0.1
    run(["git", "checkout", "params.yaml"], root)


@pytest.fixture(scope="module")
def own_data(tiny_workspace, tmp_path_factory):
    "The user's own files: the brief's schema, categoricals as plain strings, no oracle."
    root = tiny_workspace
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
    assert sha256(root / "data/raw/target.feather") == sha256(folder / "target.feather")
    assert len(pd.read_feather(root / "data/raw/oracle.feather")) == 0
    cv = json.loads((root / "reports/metrics/cv.json").read_text())
    assert set(cv["candidates"]) == {"lightgbm", "logreg"}  # no oracle for real users
    assert (root / "data/predictions/scoring.parquet").is_file()


VIOLATIONS = [  # (what is wrong in your target.feather, how to spoil it, what the message must say)
    ("a target of 2", lambda t: t.assign(target=t["target"].where(~t.index.isin([3, 7, 11]), 2)), ("'target'", "3 rows")),
    # the generate stage copies and describes the file; the contract, in validate, says what is wrong
    ("months as text", lambda t: t.assign(month=t["month"].dt.strftime("%Y-%m")), ("'month'", "expected datetime64")),
]


@pytest.mark.parametrize("spoil, says", [v[1:] for v in VIOLATIONS], ids=[v[0] for v in VIOLATIONS])
def test_contract_violation_stops_the_pipeline_and_keeps_earlier_outputs(own_data, spoil, says):
    root, folder = own_data
    kept = {f: sha256(root / f) for f in ("data/processed/train.parquet", "reports/metrics/data.json",
                                           "reports/validate.html", "models/model.joblib")}
    good = (folder / "target.feather").read_bytes()
    try:
        spoil(pd.read_feather(folder / "target.feather")).to_feather(folder / "target.feather")
        p = run(["dvc", "repro"], root, check=False)
    finally:
        (folder / "target.feather").write_bytes(good)
    assert p.returncode != 0
    message = p.stdout + p.stderr
    assert "Running stage 'validate'" in p.stdout, message[-3000:]
    assert "target.feather" in message and all(s in message for s in says), message[-3000:]
    assert "Running stage 'featurize'" not in p.stdout
    assert {f: sha256(root / f) for f in kept} == kept
    assert (root / "reports/failed/validate.ipynb").is_file()
