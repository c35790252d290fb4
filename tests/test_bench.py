"""`make bench` cannot rot: the harness runs at a tiny size and reports every dvc.yaml stage.

Timings are reported, never asserted: this only checks that each measurement exists and is positive."""
import math
import sys

import yaml

from helpers import ROOT, TINY

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench  # noqa: E402


def test_bench_measures_every_stage(tmp_path, capsys):
    report = bench.run([TINY["generate.n_users"]], tmp_path, TINY)
    stages = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    assert report["stages"] == stages
    assert {"cpu_model", "logical_cores", "memory_gb", "python", "libraries"} <= set(report["machine"])
    assert {"load_avg_before", "load_avg_after", "commit", "nice"} <= set(report["run"])
    (size,) = report["sizes"]
    assert size["n_users"] == TINY["generate.n_users"] and size["train_rows"] > 0 and size["scoring_rows"] > 0
    assert sorted(size["full_run"]["order"]) == sorted(stages)
    for s in stages:
        m = size["full_run"]["stages"][s]
        assert all(m[k] > 0 for k in ("wall_s", "cpu_s", "peak_tree_mb", "peak_process_mb")), (s, m)
        o = size["overhead"][s]
        assert o["stage_s"] > 0 and o["direct_s"] > 0 and o["direct_peak_mb"] > 0, (s, o)
    assert size["full_run"]["wall_s"] > 0 and size["full_run"]["cpu_s"] > 0
    assert size["noop"]["wall_s"] > 0 and size["noop"]["stages_run"] == []
    assert size["score"]["users"] == size["scoring_rows"] and size["score"]["users_per_s"] > 0
    for kind in bench.MODELS:
        m = size["models"][kind]
        assert m["fit_s"] > 0 and m["peak_mb"] > 0 and math.isfinite(m["mean_lift_at_k"])
        assert len(m["folds"]) == yaml.safe_load((ROOT / "params.yaml").read_text())["cv"]["n_folds"]
    assert (tmp_path / "bench.json").is_file() and (tmp_path / "scale.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert all(f"| {s} |" in printed for s in stages)
