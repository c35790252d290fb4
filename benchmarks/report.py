"""The production report's render time for 1, 7 (the default emulation's: the scoring month and generate.stream_months = 6) and 24 months.

    python benchmarks/report.py                     # writes reports/bench/report.json and prints a table
    python benchmarks/report.py --out /tmp/bench --repeat 3

In a fresh copy of the working tree (tests/helpers.py's tiny_copy, its own embedded MLflow store),
on tiny data with 24 generated production months (the scoring month and generate.stream_months = 23 more):

1. `dvc repro` trains v1 and `devchange promote` makes it champion;
2. every stream month is scored and evaluated with the champion by the real production functions
   (`devchange.production.score_month` / `evaluate_month`, what `devchange score-month` and
   `evaluate-month` call), in one process: 24 months of production files as production writes them;
3. for N in 1, 7 and 24: a production folder holding the first N months (links to those month
   folders), and `devchange report --production-dir <it>` timed end to end (process start, the
   notebook run by papermill, the HTML, the MLflow run), best of --repeat runs, with the CPU time of each
   (user + system of the command and its kernel: what the wall time comes down to on an idle machine).
   Each size's page is kept as <out>/production-<N>.html.

Timings are measurements of this machine at this moment; nothing is asserted."""
import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import BIN, run, tiny_copy  # noqa: E402

SIZES = (1, 7, 24)
WRITE_MONTHS = """
import sys
from pathlib import Path
from devchange.config import load_params
from devchange.production import evaluate_month, score_month
params = load_params()
for month in sorted(p.name for p in Path("data/stream").iterdir()):
    score_month(f"data/stream/{month}/features.feather", params)
    print(month, evaluate_month(f"data/stream/{month}/targets.feather", params).verdict.status, flush=True)
"""


def _children_cpu() -> float:
    "CPU seconds (user + system) of the reaped child processes so far: the command, its kernel, their children."
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "reports" / "bench"), help="folder of report.json")
    parser.add_argument("--repeat", type=int, default=2, help="runs per size; the best is reported")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="devchange-report-bench-") as tmp:
        root = tiny_copy(Path(tmp) / "devchange", {"generate.stream_months": 23, "promotion.floor": 0.0})  # the scoring month + 23
        setup = {}
        t = time.perf_counter(); run(["dvc", "repro"], root); setup["dvc_repro_s"] = time.perf_counter() - t
        run(["devchange", "promote"], root)
        t = time.perf_counter()
        verdicts = run([str(BIN / "python"), "-c", WRITE_MONTHS], root).stdout.split("\n")
        setup["write_24_months_s"] = time.perf_counter() - t
        months = sorted(p.name for p in (root / "data" / "production").iterdir() if p.is_dir())
        assert len(months) == 24, months
        rows = []
        for n in SIZES:
            folder = root / "bench" / f"production-{n}"
            folder.mkdir(parents=True)
            for m in months[:n]: os.symlink(root / "data" / "production" / m, folder / m)
            times, cpu = [], []
            for _ in range(args.repeat):
                t, c = time.perf_counter(), _children_cpu()
                run(["devchange", "report", "--production-dir", str(folder), "--stream-dir", str(folder)], root)
                times.append(time.perf_counter() - t)
                cpu.append(_children_cpu() - c)
            page = root / "reports" / "production.html"
            shutil.copyfile(page, out / f"production-{n}.html")  # to look at
            rows.append({"months": n, "best_s": min(times), "runs_s": times, "cpu_s": cpu, "html_bytes": page.stat().st_size})
            print(f"{n:>3} months: best {min(times):5.1f} s of {', '.join(f'{x:.1f}' for x in times)} "
                  f"(CPU {', '.join(f'{x:.1f}' for x in cpu)} s); HTML {page.stat().st_size / 1024:.0f} KiB", flush=True)
    result = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "load_avg_at_end": os.getloadavg()},
              "setup": setup, "verdicts": [v for v in verdicts if v], "report": rows}
    (out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
