"""Production inputs, as a data engineer's exports really arrive: the commands refuse each bad
one cleanly and accept the good ones.

A copy of the session's tiny run (`tiny_workspace`: its model v1 is the challenger in the copy's
embedded MLflow store): `devchange promote` makes v1 champion, `devchange score-month` scores October.
Then every malformed file below goes through the real command: exit code 1, one line on stderr naming
the file and what is wrong, no traceback, nothing written or changed under `data/production/` and no
production run logged. Good files, in the shapes the documentation accepts, go through."""
import hashlib
import json
import os

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from devchange.metrics import top_k_metrics

from helpers import run, update_params

SCORED, FRESH, DECEMBER = "2020-10-31", "2020-11-30", "2020-12-31"  # October is scored first; the others later


@pytest.fixture(scope="module")
def prod(tiny_workspace):
    root = tiny_workspace  # WORLD's promotion floor is 0: the first model becomes champion on tiny data
    assert "champion: v1" in run(["devchange", "promote"], root).stdout
    run(["devchange", "score-month", "--features", f"data/stream/{SCORED}/features.feather"], root)
    return root


def _features(root, month=FRESH) -> pd.DataFrame:
    return pd.read_feather(root / f"data/stream/{month}/features.feather")


def _targets(root, month=SCORED) -> pd.DataFrame:
    return pd.read_feather(root / f"data/stream/{month}/targets.feather")


def _write(df: pd.DataFrame, path) -> None:
    if path.suffix == ".feather": df.reset_index(drop=True).to_feather(path)
    else: df.to_parquet(path, index=False)


def _cut(path, df):  # a transfer cut short: the first half of a good file's bytes
    _write(df, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _one_gap(df, col):
    out = df.copy()
    out[col] = out[col].astype("Int64" if col == "user_id" else "float64")
    out.loc[3, col] = pd.NA if col == "user_id" else np.nan
    return out


# (id, command, file name, how to make it from the good table and the folder, what the message says)
SCORE_CASES = [
    ("random bytes as feather", "x.feather", lambda f, p: p.write_bytes(os.urandom(4096)), "not a readable feather file"),
    ("truncated feather", "x.feather", lambda f, p: _cut(p, f), "not a readable feather file"),
    ("truncated parquet", "x.parquet", lambda f, p: _cut(p, f), "not a readable parquet file"),
    ("parquet named .feather", "x.feather", lambda f, p: f.to_parquet(p), "not a readable feather file"),
    ("empty file of 0 bytes", "x.parquet", lambda f, p: p.write_bytes(b""), "not a readable parquet file"),
    ("csv export", "x.csv", lambda f, p: f.to_csv(p, index=False), "expected a .feather or .parquet file"),
    ("file not found", "x.feather", lambda f, p: None, "file not found"),
    ("no rows", "x.parquet", lambda f, p: _write(f.head(0), p), "empty file (0 rows)"),
    ("user_id renamed", "x.parquet", lambda f, p: _write(f.rename(columns={"user_id": "customer_id"}), p),
     "missing column(s) user_id"),
    ("user_id as text", "x.parquet", lambda f, p: _write(f.assign(user_id="u" + f["user_id"].astype(str)), p),
     "expected an integer dtype"),
    ("user_id as float", "x.parquet", lambda f, p: _write(f.assign(user_id=f["user_id"].astype("float64")), p),
     "of dtype float64, expected an integer dtype"),
    ("user_id missing once", "x.parquet", lambda f, p: _write(_one_gap(f, "user_id"), p), "column 'user_id': 1 row missing"),
    ("month at month start", "x.parquet", lambda f, p: _write(f.assign(month=pd.Timestamp("2020-11-01")), p),
     "not a month-end date"),
    ("month as text", "x.parquet", lambda f, p: _write(f.assign(month=FRESH), p), "expected datetime64"),
    ("month with a timezone", "x.parquet", lambda f, p: _write(f.assign(month=f["month"].dt.tz_localize("UTC")), p),
     "drop the timezone"),
    ("month with a time of day", "x.parquet",
     lambda f, p: _write(f.assign(month=pd.Timestamp(f"{FRESH} 23:59:59")), p), "not a month-end date without time part"),
    ("two months in one file", "x.parquet",
     lambda f, p: _write(pd.concat([f, f.assign(month=pd.Timestamp("2020-12-31"))]), p), "expected rows of one month, found 2"),
    ("a user twice", "x.parquet", lambda f, p: _write(pd.concat([f, f.head(3)]), p), "with a repeated (user_id, month) key"),
    ("a feature column missing", "x.parquet", lambda f, p: _write(f.drop(columns="feature_3"), p),
     "does not match the model's features: missing feature column(s) feature_3"),
    ("a numeric feature as text", "x.parquet", lambda f, p: _write(f.assign(feature_0=f["feature_0"].astype(str)), p),
     "feature_0 is categorical, the model expects numeric"),
    ("a feature of dates", "x.feather", lambda f, p: _write(f.assign(feature_5=pd.Timestamp("2020-11-02")), p),
     "column 'feature_5'"),  # ... of dtype datetime64, neither numeric nor categorical/string
    ("an extra column", "x.parquet", lambda f, p: _write(f.assign(region="north"), p), "not named feature_<int>"),
    ("the target shipped with the features", "x.parquet", lambda f, p: _write(f.assign(target=0), p),
     "the target belongs in the target file only"),
]

EVALUATE_CASES = [
    ("targets of another id space", "t.parquet", lambda t, p: _write(t.assign(user_id=t["user_id"] + 10_000_000), p),
     "column 'user_id': none of its"),
    ("targets for half the users", "t.parquet", lambda t, p: _write(t.iloc[::2], p),
     "(50.0%), expected at least 90% (production.min_target_coverage)"),
    ("target as text", "t.parquet", lambda t, p: _write(t.assign(target=t["target"].astype(str)), p),
     "expected integer or bool (0/1)"),
    ("target missing once", "t.parquet", lambda t, p: _write(_one_gap(t, "target"), p), "column 'target': 1 row missing"),
    ("target of 2", "t.parquet", lambda t, p: _write(t.assign(target=t["target"] * 2), p), "outside {0, 1}"),
    ("target column missing", "t.feather", lambda t, p: _write(t.drop(columns="target"), p), "missing column(s) target"),
    ("user_id as text", "t.feather", lambda t, p: _write(t.assign(user_id=t["user_id"].astype(str)), p),
     "expected an integer dtype"),
    ("month at month start", "t.parquet", lambda t, p: _write(t.assign(month=pd.Timestamp("2020-10-01")), p),
     "not a month-end date"),
    ("a month never scored", "t.parquet", lambda t, p: _write(t.assign(month=pd.Timestamp("2021-06-30")), p),
     "month 2021-06-30 was never scored"),
    ("truncated parquet", "t.parquet", lambda t, p: _cut(p, t), "not a readable parquet file"),
]


def _state(root) -> dict:
    "Every file and folder under data/production and data/labelled with its bytes' hash, and the production runs."
    files = {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
             for d in ("data/production", "data/labelled") for p in sorted((root / d).rglob("*"))}
    client = MlflowClient(f"sqlite:///{root}/mlflow.db")
    exp = client.get_experiment_by_name("devchange-production")
    runs = sorted((r.info.run_id, json.dumps(r.data.metrics, sort_keys=True), json.dumps(r.data.tags, sort_keys=True))
                  for r in client.search_runs([exp.experiment_id], "", max_results=1000))
    return {"files": files, "runs": runs}


def _refused(root, tmp_path, command, option, name, make, says):
    path = tmp_path / name
    make(path)
    before = _state(root)
    p = run(["devchange", command, option, str(path)], root, check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and len(lines) == 1, p.stderr
    assert lines[0].startswith(f"devchange {command}: {path}") and says in lines[0], lines[0]
    assert _state(root) == before  # nothing written or changed, no run logged
    return lines[0]


@pytest.mark.parametrize("name, make, says", [c[1:] for c in SCORE_CASES], ids=[c[0] for c in SCORE_CASES])
def test_score_month_refuses(prod, tmp_path, name, make, says):
    _refused(prod, tmp_path, "score-month", "--features", name, lambda p: make(_features(prod), p), says)
    assert not (prod / "data/production/2020-11-01").exists() and not (prod / f"data/production/{FRESH}").exists()


@pytest.mark.parametrize("name, make, says", [c[1:] for c in EVALUATE_CASES], ids=[c[0] for c in EVALUATE_CASES])
def test_evaluate_month_refuses(prod, tmp_path, name, make, says):
    _refused(prod, tmp_path, "evaluate-month", "--targets", name, lambda p: make(_targets(prod), p), says)
    assert not (prod / f"data/production/{SCORED}/targets.parquet").exists()


def test_the_coverage_threshold_is_a_param(prod, tmp_path):
    "`production.min_target_coverage` decides: half of December's targets are refused at 0.9 and accepted at 0.5."
    run(["devchange", "score-month", "--features", f"data/stream/{DECEMBER}/features.feather"], prod)
    _write(_targets(prod, DECEMBER).iloc[::2], tmp_path / "half.parquet")
    evaluate = lambda: run(["devchange", "evaluate-month", "--targets", str(tmp_path / "half.parquet")], prod, check=False)
    p = evaluate()
    assert p.returncode == 1 and "(production.min_target_coverage)" in p.stderr, p.stderr
    update_params(prod, {"production.min_target_coverage": 1.5})
    p = evaluate()
    assert p.returncode == 1 and "production.min_target_coverage: expected a share of the scored users in (0, 1]" in p.stderr
    update_params(prod, {"production.min_target_coverage": 0.5})
    try:
        p = evaluate()
        assert p.returncode == 0, p.stderr
        assert (prod / f"data/production/{DECEMBER}/targets.parquet").is_file()
    finally:
        update_params(prod, {"production.min_target_coverage": 0.9})


def test_good_inputs_in_the_documented_shapes_are_accepted(prod, tmp_path):
    # November as parquet, user_id as int32, rows in any order
    f = _features(prod).sample(frac=1.0, random_state=0).astype({"user_id": "int32"})
    _write(f, tmp_path / "nov.parquet")
    p = run(["devchange", "score-month", "--features", str(tmp_path / "nov.parquet")], prod)
    assert "verdict:" in p.stdout and (prod / f"data/production/{FRESH}/scores.parquet").is_file()
    scores = pd.read_parquet(prod / f"data/production/{FRESH}/scores.parquet")
    assert len(scores) == len(f) and scores["user_id"].is_unique
    # its targets: 0/1 as bool, for 95% of the scored users, plus a few users production never scored
    t = _targets(prod, FRESH)
    kept = t.iloc[: int(len(t) * 0.95) + 1]
    extra = pd.DataFrame({"user_id": [10**9, 10**9 + 1], "month": pd.Timestamp(FRESH), "target": [0, 1]})
    _write(pd.concat([kept, extra]).astype({"target": "bool"}), tmp_path / "nov_targets.feather")
    p = run(["devchange", "evaluate-month", "--targets", str(tmp_path / "nov_targets.feather")], prod)
    doc = json.loads((prod / f"data/production/{FRESH}/monitoring.json").read_text())
    assert doc["performance"]["n_with_target"] == len(kept), doc["performance"]
    assert "lift@k" in p.stdout and (prod / f"data/production/{FRESH}/targets.parquet").is_file()
    # its coverage, said and written: targets for 95% of the scored users, 2 rows of users never scored
    assert doc["coverage"] == {"scored_users": len(f), "with_target": len(kept), "share": len(kept) / len(f),
                               "unmatched_target_rows": 2}, doc["coverage"]
    assert f"targets for {len(kept)} of {len(f)} scored users" in p.stdout and "2 target rows match no scored user" in p.stdout
    # generated data has true probabilities: the month's oracle lift@k, from data/raw/oracle.feather
    oracle = pd.read_feather(prod / "data/raw/oracle.feather")
    oracle = scores[["user_id"]].merge(oracle[oracle["month"] == pd.Timestamp(FRESH)], on="user_id")
    scored = oracle.merge(kept[["user_id", "target"]].astype({"target": "int64"}), on="user_id")
    k_share = yaml.safe_load((prod / "params.yaml").read_text())["metrics"]["k_share"]
    assert len(oracle) == len(scores) and doc["performance"]["oracle_lift_at_k"] == pytest.approx(top_k_metrics(
        scored["target"], scored["probability"], k_share)["lift_at_k"], rel=1e-12), doc["performance"]
