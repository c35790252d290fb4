"""Another machine gets the same bytes: the pipeline's outputs do not depend on how many threads
the BLAS library runs.

The session's `tiny_pipeline` ran with the BLAS libraries at their default, one thread per core
(two on the 2-core CI machine). One more fresh copy runs `dvc repro` with BLAS limited to 1 thread
in every Python process of the run (DVC, the stage runner, the stage's kernel): a `sitecustomize`
module in a temporary folder on PYTHONPATH loads numpy's and scipy's OpenBLAS and limits them with
`threadpoolctl`. The `OPENBLAS_*` variables are left alone: some machines set them for correctness.
Every hash `dvc.lock` records (data, predictions, model, metrics, plots, executed reports) must be
equal."""
import json
import os

import pytest
import yaml

from helpers import BIN, ROOT, run, tiny_copy

SITECUSTOMIZE = """\
# Test only: limit the BLAS libraries of this process to {threads} thread(s) and say so in {log}.
import json, os, sys
import numpy, scipy.linalg  # load numpy's and scipy's OpenBLAS, so the limit reaches both
from threadpoolctl import threadpool_info, threadpool_limits
threadpool_limits({threads}, user_api="blas")
with open(os.path.join({log!r}, f"{{os.getpid()}}.json"), "w") as _f:
    json.dump({{"argv": sys.orig_argv, "blas": [(i["filepath"], i["num_threads"]) for i in threadpool_info()
                                          if i["user_api"] == "blas"]}}, _f)
"""

DEFAULT_BLAS = """\
import json, numpy, scipy.linalg
from threadpoolctl import threadpool_info
print(json.dumps([i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]))
"""


@pytest.fixture(scope="module")
def one_thread(tmp_path_factory) -> dict:
    "A fresh tiny copy run with BLAS limited to 1 thread: its lock and what each process saw."
    base = tmp_path_factory.mktemp("blas1")
    root = tiny_copy(base / "devchange")
    site, log = base / "site", base / "blas-log"
    site.mkdir()
    log.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(threads=1, log=str(log)))
    run(["dvc", "repro"], root, extra_env={"PYTHONPATH": str(site)})
    seen = [json.loads(f.read_text()) for f in log.glob("*.json")]
    return {"lock": yaml.safe_load((root / "dvc.lock").read_text()), "seen": seen}


def _hashes(lock: dict) -> dict[str, str]:
    "path -> md5 of every output and dependency dvc.lock records, stage by stage."
    return {f"{stage}: {kind} {entry['path']}": entry["md5"]
            for stage, spec in lock["stages"].items() for kind in ("deps", "outs") for entry in spec.get(kind, [])}


def test_the_limit_reached_every_stage_kernel(one_thread):
    "Not vacuous: the stages' kernels ran with both OpenBLAS libraries (numpy's, scipy's) at 1 thread."
    kernels = [s for s in one_thread["seen"] if any("ipykernel" in a for a in s["argv"])]
    assert len(kernels) >= 7, f"{len(kernels)} kernels logged, expected one per stage"
    for s in kernels:
        assert len(s["blas"]) >= 2 and all(n == 1 for _, n in s["blas"]), s


def test_the_shared_run_used_more_than_one_blas_thread():
    "Not vacuous either: a process started as the shared run's were (no limit) runs BLAS on every core."
    if (os.cpu_count() or 1) < 2:
        pytest.fail("this machine has one core: the default and the limit are the same (the test needs 2 or more)")
    threads = json.loads(run([str(BIN / "python"), "-c", DEFAULT_BLAS], ROOT).stdout)  # the environment the run had
    assert len(threads) >= 2 and min(threads) >= 2, threads


def test_every_output_is_the_same_bytes_with_one_blas_thread_and_the_default(one_thread, tiny_pipeline):
    one, default = _hashes(one_thread["lock"]), _hashes(yaml.safe_load(tiny_pipeline.lock))
    assert len(one) > 40 and one.keys() == default.keys()
    differ = sorted(k for k in one if one[k] != default[k])
    assert not differ, "outputs differ between BLAS limited to 1 thread and the default: " + "; ".join(differ)
    assert one_thread["lock"] == yaml.safe_load(tiny_pipeline.lock)  # sizes and file counts too
