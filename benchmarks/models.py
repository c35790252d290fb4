"""LightGBM against scikit-learn's HistGradientBoostingClassifier on the pipeline's own folds.

    python benchmarks/models.py lightgbm|hist_gradient_boosting    # in a repository where featurize ran

Both models fit on data/processed/train.parquet over the fold plan of params.yaml, through the
library's own split, fit, predict and metric functions; prints one JSON line with fit and
predict seconds summed over folds and lift@k per fold. The scikit-learn model takes its
settings from the LightGBM candidate in params.yaml (`hist_settings`), so they stay comparable
when that candidate changes."""
import json
import sys
import time

from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from devchange import catalog, config, io
from devchange.features import FeatureSpec
from devchange.names import TARGET
from devchange.folds import fold_plan, split
from devchange.metrics import ranking_metrics
from devchange.models import fit, make_model, predict_proba


def hist_settings(lgbm: dict, seed: int) -> dict:
    "The HistGradientBoostingClassifier closest to a LightGBM parameter set."
    return {"max_iter": lgbm.get("n_estimators", 100), "learning_rate": lgbm.get("learning_rate", 0.1),
            "max_leaf_nodes": lgbm.get("num_leaves", 31), "min_samples_leaf": lgbm.get("min_child_samples", 20),
            "l2_regularization": lgbm.get("reg_lambda", 0.0),
            # per split in scikit-learn, per tree in LightGBM; neither subsamples rows the same way
            # (scikit-learn has no bagging), so the sklearn model sees every row in every tree
            "max_features": lgbm.get("colsample_bytree", 1.0),
            "categorical_features": "from_dtype", "early_stopping": False, "random_state": seed}


def main(kind: str) -> dict:
    p = config.load_params()
    P = catalog.paths()
    lgbm_name = next(n for n, m in p.models.items() if m.kind == "lightgbm")
    lgbm = p.models[lgbm_name]
    threads = lgbm.params.get("n_jobs", 1)
    spec = FeatureSpec.from_dict(io.read_json(P.processed / "features.json"))
    table = io.read_table(P.processed / "train.parquet")
    folds, fit_s, predict_s = [], 0.0, 0.0
    for fold in fold_plan(table["month"].unique(), p.cv.n_folds):
        train, valid = split(table, fold)
        model = (make_model(lgbm, spec, p.seed) if kind == "lightgbm"
                 else HistGradientBoostingClassifier(**hist_settings(lgbm.params, p.seed)))
        with threadpool_limits(threads, user_api="openmp"):  # scikit-learn would take every core; LightGBM takes n_jobs
            t = time.perf_counter()
            model = fit(model, train, spec)
            fit_s += time.perf_counter() - t
            t = time.perf_counter()
            prob = predict_proba(model, valid, spec)
            predict_s += time.perf_counter() - t
        m = ranking_metrics(valid[TARGET], prob, p.metrics.k_share)
        folds.append({"fold": fold.fold, "n_train": len(train), "lift_at_k": m["lift_at_k"], "roc_auc": m["roc_auc"]})
    settings = (make_model(lgbm, spec, p.seed).get_params() if kind == "lightgbm"
                else hist_settings(lgbm.params, p.seed))
    return {"model": kind, "threads": threads, "fit_s": round(fit_s, 2), "predict_s": round(predict_s, 2),
            "mean_lift_at_k": sum(f["lift_at_k"] for f in folds) / len(folds), "folds": folds,
            "settings": {k: v for k, v in settings.items() if v is not None}}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
