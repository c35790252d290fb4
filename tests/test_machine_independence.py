"""Another machine gets the same bytes: the pipeline's outputs do not depend on how many threads
the BLAS library runs.

Two fresh copies run `dvc repro` on tiny data, one with BLAS limited to 1 thread, one to 2, in
every Python process of the run (DVC, the stage runner, the stage's kernel): a `sitecustomize`
module in a temporary folder on PYTHONPATH loads numpy's and scipy's OpenBLAS and limits them
with `threadpoolctl`. The `OPENBLAS_*` variables are left alone: some machines set them for
correctness. Every hash `dvc.lock` records (data, predictions, model, metrics, plots, executed
reports) must be equal."""
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from helpers import run, tiny_copy

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


def _limited_run(base: Path, threads: int) -> dict:
    "A fresh tiny copy under `base`, `dvc repro` with BLAS limited to `threads`; its lock and what each process saw."
    root = tiny_copy(base / "devchange")
    site, log = base / "site", base / "blas-log"
    site.mkdir()
    log.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(threads=threads, log=str(log)))
    run(["dvc", "repro"], root, extra_env={"PYTHONPATH": str(site)})
    seen = [json.loads(f.read_text()) for f in log.glob("*.json")]
    return {"lock": yaml.safe_load((root / "dvc.lock").read_text()), "seen": seen}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    "The two runs, side by side (each is mostly one busy thread)."
    bases = {n: tmp_path_factory.mktemp(f"blas{n}") for n in (1, 2)}
    with ThreadPoolExecutor(2) as pool:
        futures = {n: pool.submit(_limited_run, base, n) for n, base in bases.items()}
        return {n: f.result() for n, f in futures.items()}


def _hashes(lock: dict) -> dict[str, str]:
    "path -> md5 of every output and dependency dvc.lock records, stage by stage."
    return {f"{stage}: {kind} {entry['path']}": entry["md5"]
            for stage, spec in lock["stages"].items() for kind in ("deps", "outs") for entry in spec.get(kind, [])}


def test_the_limit_reached_every_stage_kernel(runs):
    "Not vacuous: the stages' kernels ran with both OpenBLAS libraries (numpy's, scipy's) at the limit."
    for threads, r in runs.items():
        kernels = [s for s in r["seen"] if any("ipykernel" in a for a in s["argv"])]
        assert len(kernels) >= 7, f"{threads} thread(s): {len(kernels)} kernels logged, expected one per stage"
        for s in kernels:
            assert len(s["blas"]) >= 2 and all(n == threads for _, n in s["blas"]), s


def test_every_output_is_the_same_bytes_with_one_and_two_blas_threads(runs):
    one, two = _hashes(runs[1]["lock"]), _hashes(runs[2]["lock"])
    assert len(one) > 40 and one.keys() == two.keys()
    differ = sorted(k for k in one if one[k] != two[k])
    assert not differ, "outputs differ between BLAS limited to 1 and to 2 threads: " + "; ".join(differ)
    assert runs[1]["lock"] == runs[2]["lock"]  # sizes and file counts too
