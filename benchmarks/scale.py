"""How time and memory grow with the number of users, stage by stage (no MLflow, no papermill).

    python benchmarks/scale.py                 # 20k and 100k users
    python benchmarks/scale.py 20000 200000    # any sizes

Each size runs in a fresh process so peak memory (max RSS) belongs to that size alone.
Measurements, not assertions: compare runs on the same machine."""
import subprocess
import sys

ONE_SIZE = r"""
import json, resource, sys, time
from dataclasses import replace
from devchange import config
from devchange.contract import check_data
from devchange.cross_validation import cross_validate
from devchange.features import fit_feature_spec, training_table
from devchange.folds import fold_plan
from devchange.generate import generate_dataset

p = config.load_params()
n_users = int(sys.argv[1])
timings = {}
def timed(name, fn):
    t = time.perf_counter(); out = fn(); timings[name] = round(time.perf_counter() - t, 2); return out

tables = timed("generate", lambda: generate_dataset(replace(p.generate, n_users=n_users), p.seed))
timed("contract", lambda: check_data(tables, n_features=p.validate.n_features))
spec = fit_feature_spec(tables["features"], float32=p.featurize.float32)
train = timed("featurize", lambda: training_table(tables["target"], tables["features"], spec))
plan = fold_plan(train["month"].unique(), p.cv.n_folds)
candidates = {name: p.models[name] for name in p.cv.candidates}
timed("cross_validate (all folds, all candidates)",
      lambda: cross_validate(train, spec, plan, candidates, p.metrics.k_share, p.seed, tables["oracle"]))
print(json.dumps({"n_users": n_users, "train_rows": len(train),
                  "train_table_MB": round(train.memory_usage(deep=True).sum() / 1e6, 1),
                  "seconds": timings, "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""

if __name__ == "__main__":
    sizes = [int(a) for a in sys.argv[1:]] or [20_000, 100_000]
    for n in sizes:
        out = subprocess.run([sys.executable, "-c", ONE_SIZE, str(n)], capture_output=True, text=True, check=True)
        print(out.stdout.strip().splitlines()[-1], flush=True)
