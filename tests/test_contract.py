"""The data contract (devchange.contract): one test per kind of violation, plus the findings report."""
import json

import numpy as np
import pandas as pd
import pytest

from devchange.catalog import RAW_FILES
from devchange.contract import DataContractError, check_data, feature_kinds, read_raw

TRAIN_MONTHS = pd.to_datetime(["2020-04-30", "2020-05-31", "2020-06-30"])
SCORING_MONTH = pd.Timestamp("2020-07-31")
N_USERS = 6
N_FEATURES = 6


def _features(keys: pd.DataFrame, colours: list[str], seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = len(keys)
    return keys.assign(
        feature_0=rng.normal(size=n),
        feature_1=rng.integers(0, 10, size=n),
        feature_2=rng.normal(size=n).astype("float32"),
        feature_3=rng.integers(0, 2, size=n).astype(bool),
        feature_4=pd.Categorical(rng.choice(["ios", "android"], size=n)),  # pandas category
        feature_5=[colours[i % len(colours)] for i in range(n)],  # plain strings
    )


def make_tables() -> dict[str, pd.DataFrame]:
    "A small valid data set: 6 users, 3 training months + 1 scoring month, 6 features (2 categorical)."
    users = np.arange(1, N_USERS + 1)
    keys = pd.DataFrame({"user_id": np.repeat(users, len(TRAIN_MONTHS)), "month": np.tile(TRAIN_MONTHS, N_USERS)})
    target = keys.assign(target=(np.arange(len(keys)) % 4 == 0).astype("int64"))
    skeys = pd.DataFrame({"user_id": users, "month": SCORING_MONTH})
    return {
        "target": target,
        "features": _features(keys, ["red", "green", "blue"], seed=0),
        "scoring_features": _features(skeys, ["red", "green", "blue"], seed=1),
        "scoring_target": skeys.assign(target=np.array([0, 1, 0, 0, 1, 0])),
    }


def write(tables: dict[str, pd.DataFrame], folder) -> None:
    for role, df in tables.items():
        df.reset_index(drop=True).to_feather(folder / RAW_FILES[role])


@pytest.fixture
def tables():
    return make_tables()


def check_folder(tables, folder, **kw) -> dict:
    write(tables, folder)
    return check_data(read_raw(folder), source=folder, **kw)


def test_valid_data_pass(tables, tmp_path):
    report = check_folder(tables, tmp_path, n_features=N_FEATURES)
    assert report["ok"] is True
    assert report["n_features"] == N_FEATURES
    assert report["categorical_features"] == ["feature_4", "feature_5"]
    assert report["files"]["target"]["rows"] == N_USERS * len(TRAIN_MONTHS)
    assert report["files"]["scoring_target"]["months"] == ["2020-07-31"]
    assert [m["month"] for m in report["training_months"]] == ["2020-04-30", "2020-05-31", "2020-06-30"]
    assert sum(m["positives"] for m in report["training_months"]) == int(tables["target"]["target"].sum())
    assert report["warnings"] == []
    json.dumps(report, allow_nan=False)


# ---- one case per kind of violation: (mutation, file, column, count) ------------------------------

def _drop_col(role, col):
    def mutate(t): t[role] = t[role].drop(columns=col)
    return mutate


def _astype(role, col, dtype):
    def mutate(t): t[role] = t[role].assign(**{col: t[role][col].astype(dtype)})
    return mutate


def _null(role, col, idx, dtype=None):
    def mutate(t):
        df = t[role].copy()
        if dtype: df[col] = df[col].astype(dtype)
        df.loc[idx, col] = pd.NaT if col == "month" else pd.NA
        t[role] = df
    return mutate


def _months(role, idx, when):
    def mutate(t):
        df = t[role].copy()
        df.loc[idx, "month"] = when(df.loc[idx, "month"])
        t[role] = df
    return mutate


def _duplicate(role, idx):
    def mutate(t): t[role] = pd.concat([t[role], t[role].loc[idx]], ignore_index=True)
    return mutate


def _target_values(values):
    def mutate(t):
        df = t["target"].copy()
        df.loc[df.index[: len(values)], "target"] = values
        t["target"] = df
    return mutate


def _drop_rows(role, idx):
    def mutate(t): t[role] = t[role].drop(index=idx).reset_index(drop=True)
    return mutate


def _rename(role, old, new):
    def mutate(t): t[role] = t[role].rename(columns={old: new})
    return mutate


def _scoring_in_training():
    def mutate(t):
        for role in ("scoring_features", "scoring_target"):
            t[role] = t[role].assign(month=TRAIN_MONTHS[-1])
    return mutate


def _empty(role):
    def mutate(t): t[role] = t[role].iloc[:0]
    return mutate


CASES = {
    "target column missing": (_drop_col("target", "target"), "target.feather", "column 'target'", "18 rows"),
    "user_id column missing": (_drop_col("scoring_features", "user_id"), "scoring_user_features.feather",
                               "column 'user_id'", "6 rows"),
    "month column missing": (_drop_col("features", "month"), "user_features.feather", "column 'month'", "18 rows"),
    "user_id not integer": (_astype("target", "user_id", "float64"), "target.feather", "column 'user_id'", "18 rows"),
    "user_id as strings": (_astype("features", "user_id", "str"), "user_features.feather", "column 'user_id'",
                           "18 rows"),
    "month not datetime": (_astype("features", "month", "str"), "user_features.feather", "column 'month'", "18 rows"),
    "month with timezone": (lambda t: t.update(scoring_target=t["scoring_target"].assign(
        month=t["scoring_target"]["month"].dt.tz_localize("UTC"))), "scoring_target.feather", "column 'month'",
        "6 rows"),
    "target not integer": (_astype("target", "target", "float64"), "target.feather", "column 'target'", "18 rows"),
    "target as strings": (_astype("scoring_target", "target", "str"), "scoring_target.feather", "column 'target'",
                          "6 rows"),
    "feature neither numeric nor categorical": (
        lambda t: t.update(features=t["features"].assign(feature_2=pd.Timestamp("2020-01-01"))),
        "user_features.feather", "column 'feature_2'", "18 rows"),
    "feature as durations": (
        lambda t: t.update(scoring_features=t["scoring_features"].assign(feature_1=pd.to_timedelta(1, unit="D"))),
        "scoring_user_features.feather", "column 'feature_1'", "6 rows"),
    "null user_id": (_null("target", "user_id", [0, 5], "Int64"), "target.feather", "column 'user_id'", "2 rows"),
    "null month": (_null("features", "month", [1, 2, 3]), "user_features.feather", "column 'month'", "3 rows"),
    "null target": (_null("target", "target", [4], "Int64"), "target.feather", "column 'target'", "1 row"),
    "month not month-end": (_months("target", [0, 1, 2], lambda m: m - pd.Timedelta(days=10)), "target.feather",
                            "column 'month'", "3 rows"),
    "month with time part": (_months("scoring_features", [0, 1], lambda m: m + pd.Timedelta(hours=12)),
                             "scoring_user_features.feather", "column 'month'", "2 rows"),
    "duplicate key in target": (_duplicate("target", [0, 1]), "target.feather", "(user_id, month)", "2 rows"),
    "duplicate key in features": (_duplicate("features", [3]), "user_features.feather", "(user_id, month)", "1 row"),
    "duplicate key in scoring target": (_duplicate("scoring_target", [0, 1, 2]), "scoring_target.feather",
                                        "(user_id, month)", "3 rows"),
    "target outside 0/1": (_target_values([2, 5, -1]), "target.feather", "column 'target'", "3 rows outside {0, 1}"),
    "target without features": (_drop_rows("features", [0, 4, 7]), "target.feather", "(user_id, month)",
                                "3 rows without a features row"),
    "scoring target without features": (_drop_rows("scoring_features", [2, 3]), "scoring_target.feather",
                                        "(user_id, month)", "2 rows without a features row"),
    "feature column badly named": (_rename("features", "feature_1", "age"), "user_features.feather", "['age']",
                                   "1 column not named feature_<int>"),
    "target column in features": (lambda t: t.update(features=t["features"].assign(target=0)),
                                  "user_features.feather", "column 'target'", "18 rows"),
    "wrong number of features": (_drop_col("features", "feature_5"), "user_features.feather",
                                 "columns feature_<int>", "5 found, expected 6"),
    "scoring lacks a training column": (_drop_col("scoring_features", "feature_3"), "scoring_user_features.feather",
                                        "['feature_3']", "1 training feature column"),
    "scoring has an extra column": (
        lambda t: t.update(scoring_features=t["scoring_features"].assign(feature_6=1.0)),
        "scoring_user_features.feather", "['feature_6']", "1 column not in the training features"),
    "feature kind differs": (_astype("scoring_features", "feature_0", "str"), "scoring_user_features.feather",
                             "column 'feature_0'", "6 rows categorical"),
    "categorical turned numeric in scoring": (
        lambda t: t.update(scoring_features=t["scoring_features"].assign(feature_5=np.arange(N_USERS))),
        "scoring_user_features.feather", "column 'feature_5'", "6 rows numeric"),
    "scoring month not after training": (_scoring_in_training(), "scoring_target.feather", "column 'month'",
                                         "6 rows not after the last training month 2020-06-30"),
    "empty target file": (_empty("target"), "target.feather", "empty file", "0 rows"),
    "empty scoring features file": (_empty("scoring_features"), "scoring_user_features.feather", "empty file",
                                    "0 rows"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_violation_is_named(case, tables, tmp_path):
    mutate, name, column, count = CASES[case]
    mutate(tables)
    with pytest.raises(DataContractError) as e:
        check_folder(tables, tmp_path, n_features=N_FEATURES)
    path = str(tmp_path / name)
    lines = str(e.value).splitlines()
    assert any(line.startswith(f"{path}: ") and column in line and count in line for line in lines), str(e.value)
    assert e.value.violations == lines[1:]
    assert isinstance(e.value, ValueError)


def test_every_violation_listed(tables, tmp_path):
    _target_values([3])(tables)
    _drop_col("scoring_features", "feature_3")(tables)
    _months("features", [5], lambda m: m + pd.Timedelta(hours=1))(tables)
    with pytest.raises(DataContractError) as e:
        check_folder(tables, tmp_path)
    msg = str(e.value)
    assert msg.splitlines()[0] == f"{tmp_path}: {len(e.value.violations)} data contract violations:"
    assert "target.feather: column 'target': 1 row outside {0, 1}, e.g. [3]" in msg
    assert "scoring_user_features.feather: columns ['feature_3']" in msg
    assert "user_features.feather: column 'month': 1 row not a month-end date" in msg


def test_examples_are_capped_at_five(tables, tmp_path):
    _target_values([2, 3, 4, 5, 6, 7, 8])(tables)
    with pytest.raises(DataContractError, match=r"7 rows outside \{0, 1\}, e.g. \[2, 3, 4, 5, 6\]$"):
        check_folder(tables, tmp_path)


def test_n_features_zero_accepts_any_count(tables, tmp_path):
    _drop_col("features", "feature_5")(tables)
    _drop_col("scoring_features", "feature_5")(tables)
    assert check_folder(tables, tmp_path, n_features=0)["n_features"] == N_FEATURES - 1


def test_features_file_without_features(tables):
    tables["features"] = tables["features"][["user_id", "month"]]
    tables["scoring_features"] = tables["scoring_features"][["user_id", "month"]]
    with pytest.raises(DataContractError, match=r"user_features.feather: columns feature_<int>: none found \(18 rows\)"):
        check_data(tables)


def test_source_names_the_files(tables):
    _target_values([2])(tables)
    with pytest.raises(DataContractError, match=r"data/raw/target.feather: column 'target': 1 row"):
        check_data(tables, source="data/raw")


def test_missing_table_named(tables):
    del tables["scoring_target"]
    with pytest.raises(DataContractError, match="scoring_target.feather: no table for role 'scoring_target'"):
        check_data(tables)


# ---- accepted variants ----------------------------------------------------------------------------

def test_string_and_category_both_accepted(tables, tmp_path):
    tables["features"]["feature_4"] = tables["features"]["feature_4"].astype(str)  # category -> strings
    tables["scoring_features"]["feature_5"] = tables["scoring_features"]["feature_5"].astype("category")
    tables["features"]["feature_5"] = tables["features"]["feature_5"].astype(object)  # object strings
    report = check_folder(tables, tmp_path, n_features=N_FEATURES)
    assert report["categorical_features"] == ["feature_4", "feature_5"]
    assert report["unseen_categories"] == {}


def test_bool_and_nullable_types_accepted(tables, tmp_path):
    tables["target"]["target"] = tables["target"]["target"].astype(bool)
    tables["scoring_target"]["user_id"] = tables["scoring_target"]["user_id"].astype("Int64")
    tables["features"]["feature_1"] = tables["features"]["feature_1"].astype("Int32")
    report = check_folder(tables, tmp_path)
    assert report["training_months"][0]["positives"] >= 0


def test_feature_kinds(tables):
    assert feature_kinds(tables["features"]) == {
        "feature_0": "numeric", "feature_1": "numeric", "feature_2": "numeric", "feature_3": "numeric",
        "feature_4": "categorical", "feature_5": "categorical"}
    mixed = tables["features"].assign(feature_5=[1, "a"] * 9)
    with pytest.raises(DataContractError, match="feature_5"):
        feature_kinds(mixed)


def test_mixed_object_column_rejected(tables):
    tables["features"]["feature_5"] = pd.Series(["a", 1, 2.5] * 6, dtype=object)
    with pytest.raises(DataContractError,
                       match=r"user_features.feather: column 'feature_5': 12 rows with non-string values"):
        check_data(tables)


# ---- non-fatal findings ---------------------------------------------------------------------------

def test_findings_reported_not_raised(tables, tmp_path):
    tables["features"] = pd.concat([tables["features"], tables["features"].iloc[:2].assign(user_id=99)],
                                   ignore_index=True)  # feature rows without a target row
    sf = tables["scoring_features"]
    sf["feature_5"] = ["red", "purple", "purple", "red", "teal", "red"]  # unseen categories
    tables["features"]["feature_2"] = np.nan  # all missing in training
    tables["features"].loc[[0, 1, 2], "feature_0"] = np.nan  # partly missing
    t = tables["target"]
    t.loc[t["month"] == TRAIN_MONTHS[1], "target"] = 0  # a month without positives
    report = check_folder(tables, tmp_path, n_features=N_FEATURES)

    assert report["ok"] is True
    assert report["unseen_categories"] == {"feature_5": {"levels": 2, "rows": 3, "examples": ["purple", "teal"]}}
    assert report["all_missing_features"] == {"features": ["feature_2"], "scoring_features": []}
    assert report["missing_share"]["features"] == {"feature_0": round(3 / 20, 6), "feature_2": 1.0}
    assert report["missing_share"]["scoring_features"] == {}
    assert report["months_without_positives"] == ["2020-05-31"]
    assert report["features_without_target"] == {"features": 2, "scoring_features": 0}
    w = "\n".join(report["warnings"])
    assert "month 2020-05-31 has no positive target" in w
    assert "column 'feature_5': 3 rows with categories never seen in training" in w
    assert "columns ['feature_2']" in w
    assert "2 rows without a target row" in w
    json.dumps(report, allow_nan=False)


def test_report_is_json(tables, tmp_path):
    tables["features"].loc[0, "feature_0"] = np.nan
    report = check_folder(tables, tmp_path)
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    assert set(report) == {"ok", "source", "files", "training_months", "scoring_months", "months_without_positives",
                           "n_features", "categorical_features", "all_missing_features", "missing_share",
                           "unseen_categories", "features_without_target", "warnings"}


# ---- reading files ------------------------------------------------------------------------------

def test_missing_files_named(tables, tmp_path):
    write(tables, tmp_path)
    (tmp_path / "target.feather").unlink()
    (tmp_path / "scoring_target.feather").unlink()
    with pytest.raises(DataContractError) as e:
        read_raw(tmp_path)
    msg = str(e.value)
    assert f"{tmp_path / 'target.feather'}: file not found; expected the training target" in msg
    assert f"{tmp_path / 'scoring_target.feather'}: file not found" in msg
    assert "user_features.feather" not in msg


def test_unreadable_file_named(tables, tmp_path):
    write(tables, tmp_path)
    (tmp_path / "user_features.feather").write_text("not feather")
    with pytest.raises(DataContractError, match="user_features.feather: not a readable feather file"):
        read_raw(tmp_path)


def test_read_raw_roles(tables, tmp_path):
    write(tables, tmp_path)
    got = read_raw(tmp_path)
    assert set(got) == set(RAW_FILES)
    pd.testing.assert_frame_equal(got["target"], tables["target"], check_dtype=False)


def test_full_size_data_passes():
    "150k rows x 52 columns of valid data pass (speed is measured by benchmarks, not asserted here)."
    rng = np.random.default_rng(0)
    n_users, months = 30_000, pd.date_range("2020-04-30", periods=6, freq="ME")
    keys = pd.DataFrame({"user_id": np.repeat(np.arange(n_users), 5), "month": np.tile(months[:5], n_users)})
    skeys = pd.DataFrame({"user_id": np.arange(n_users), "month": months[5]})

    def feats(k):
        cols = {f"feature_{i}": rng.normal(size=len(k)) for i in range(45)}
        cols |= {f"feature_{i}": pd.Categorical(rng.choice(list("abcdefgh"), size=len(k))) for i in range(45, 50)}
        return pd.concat([k, pd.DataFrame(cols)], axis=1)

    tables = {"target": keys.assign(target=rng.integers(0, 2, len(keys))), "features": feats(keys),
              "scoring_features": feats(skeys), "scoring_target": skeys.assign(target=rng.integers(0, 2, n_users))}
    report = check_data(tables, n_features=50)
    assert report["files"]["features"]["rows"] == 150_000
