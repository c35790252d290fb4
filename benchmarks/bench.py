"""make bench: the real pipeline at several sizes, stage by stage, with time, CPU and memory.

    python benchmarks/bench.py                          # 20k (the default data), 100k, 300k and 1M users
    python benchmarks/bench.py 20000 100000             # any sizes (generate.n_users)
    python benchmarks/bench.py 1500 --set models.lightgbm.params.n_estimators=40 --out /tmp/bench

Each size gets a fresh copy of the working tree (tests/helpers.py's fresh_copy, as the pipeline tests
make theirs: no data, reports or dvc.lock, so it runs from clean, with its own embedded MLflow store),
in which it runs:

1. `dvc repro`, watched by polling its process tree every INTERVAL_S. DVC starts each stage's
   command with DVC_STAGE in its environment, which names the stage of every child of dvc, so the
   stages are whatever dvc.yaml holds. Per stage: wall time; CPU time (user + system summed over
   the stage's processes, runner and kernel, as last seen); peak memory of the stage's tree (sum
   of RSS over its processes at one poll) and of its largest process (the kernel's own
   high-water mark, VmHWM). The run's total CPU is exact (getrusage of the reaped children).
   `score` users per second are the scoring rows over the score stage's wall time.
2. `dvc repro` again: the no-op.
3. At the smallest size only (a fixed cost, lost in the noise of modelling at larger sizes): each
   stage's code run directly (benchmarks/direct.py: its notebook's code cells in one plain Python
   process, same parameters, no papermill, kernel, HTML or report logging) against the stage
   through `devchange-stage`, best of --repeat runs each: the notebook-first overhead.
4. LightGBM against scikit-learn's HistGradientBoostingClassifier on the same folds, one process
   each (benchmarks/models.py); --no-models skips it.

Writes <out>/bench.json and <out>/scale.png (log-log time and memory against users) and prints
a table. Timings are measurements of this machine at this moment: compare runs on one machine."""
import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from helpers import env, fresh_copy, stages_run  # noqa: E402  (the copy the pipeline tests run in)

DEFAULT_SIZES = [20_000, 100_000, 300_000, 1_000_000]
INTERVAL_S = 0.2
MODELS = ["lightgbm", "hist_gradient_boosting"]
LIBS = ["pandas", "numpy", "pyarrow", "lightgbm", "scikit-learn", "mlflow", "dvc", "papermill", "nbconvert",
        "ipykernel", "psutil"]
MB = 1024 * 1024


def _hwm_mb(pid: int) -> float:
    "Peak RSS of a process so far, as the kernel tracks it."
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:")), 0.0)
    except OSError:
        return 0.0


def _sample(root: psutil.Process, by_stage: bool, label: dict, seen: dict) -> dict[str, int]:
    "One look at the tree under `root`: updates `seen` (label, CPU s, peak MB by process); returns RSS by group."
    try:
        tree = [root, *root.children(recursive=True)]
        parent = {p.pid: p.ppid() for p in tree}
    except psutil.Error:
        return {}
    rss = {}
    for p in tree:
        top = p.pid  # the child of root this process descends from: its stage
        while top != root.pid and parent.get(top, root.pid) != root.pid: top = parent[top]
        try:
            if top not in label:
                label[top] = ("dvc" if top == root.pid else p.environ().get("DVC_STAGE", "dvc")) if by_stage else "all"
            with p.oneshot():
                cpu, mem = sum(p.cpu_times()[:2]), p.memory_info().rss
            key = (p.pid, p.create_time())
        except psutil.Error:
            continue
        _, cpu_was, hwm_was = seen.get(key, (None, 0.0, 0.0))  # an exiting process reads as 0 MB: keep maxima
        seen[key] = (label[top], max(cpu, cpu_was), max(_hwm_mb(p.pid), mem / MB, hwm_was))
        rss[label[top]] = rss.get(label[top], 0) + mem
    return rss


def _kill_tree(root: psutil.Process) -> None:
    try:
        procs = [*root.children(recursive=True), root]
    except psutil.Error:
        procs = [root]
    for p in procs:
        try: p.kill()
        except psutil.Error: pass


def watch(cmd: list[str], cwd: Path, by_stage: bool = False) -> dict:
    """Run `cmd` in `cwd`, polling its process tree. by_stage: group dvc's children by DVC_STAGE
    (dvc's own process is group "dvc"); otherwise the whole tree is one group "all"."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = ru.ru_utime + ru.ru_stime
    label, groups, seen = {}, {}, {}
    with tempfile.TemporaryFile("w+") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env(), stdout=log, stderr=subprocess.STDOUT, text=True)
        root = psutil.Process(proc.pid)
        try:
            while proc.poll() is None:
                now = time.perf_counter() - t0
                for name, total in _sample(root, by_stage, label, seen).items():
                    g = groups.setdefault(name, {"first": now, "last": now, "peak_tree_mb": 0.0})
                    g["last"], g["peak_tree_mb"] = now, max(g["peak_tree_mb"], total / MB)
                time.sleep(INTERVAL_S)
        except BaseException:  # interrupted: end what this call started
            _kill_tree(root)
            raise
        wall = time.perf_counter() - t0
        log.seek(0)
        output = log.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}) in {cwd}:\n{output[-4000:]}")
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    stats = {}
    for name, g in groups.items():
        mine = [v for v in seen.values() if v[0] == name]
        stats[name] = {"wall_s": round(g["last"] - g["first"] + INTERVAL_S, 2),  # seen from .. to, ± one interval
                       "cpu_s": round(sum(v[1] for v in mine), 2), "peak_tree_mb": round(g["peak_tree_mb"]),
                       "peak_process_mb": round(max(v[2] for v in mine))}
    return {"wall_s": round(wall, 2), "cpu_s": round(ru.ru_utime + ru.ru_stime - cpu0, 2), "groups": stats,
            "output": output}


def _rows(path: Path) -> int | None:
    return pq.ParquetFile(path).metadata.num_rows if path.is_file() else None


def overhead(root: Path, stages: list[str], in_repro: dict, repeat: int) -> dict:
    """Each stage through devchange-stage against its notebook's code run directly (benchmarks/direct.py).

    The stage's time inside `dvc repro` is the first sample of devchange-stage; each further
    repeat runs `devchange-stage <stage>` and the direct code once more, alternately. Overhead is
    the difference of the minima: on a shared machine the minimum is the least disturbed run."""
    from devchange.stage import stage_parameters  # what devchange-stage injects; imports papermill and MLflow
    out = {}
    for s in stages:
        staged, direct = [in_repro[s]], []
        for i in range(repeat):
            if i: staged.append(watch(["devchange-stage", s], root)["groups"]["all"])
            direct.append(watch([sys.executable, str(ROOT / "benchmarks/direct.py"), s,
                                 json.dumps(stage_parameters(s, root))], root)["groups"]["all"])
        best = lambda runs, k: min(r[k] for r in runs)
        out[s] = {"stage_s": best(staged, "wall_s"), "direct_s": best(direct, "wall_s"),
                  "overhead_s": round(best(staged, "wall_s") - best(direct, "wall_s"), 2),
                  "stage_cpu_s": best(staged, "cpu_s"), "direct_cpu_s": best(direct, "cpu_s"),
                  "overhead_cpu_s": round(best(staged, "cpu_s") - best(direct, "cpu_s"), 2),
                  "direct_peak_mb": max(r["peak_process_mb"] for r in direct),
                  "samples": {"stage_s": [r["wall_s"] for r in staged], "direct_s": [r["wall_s"] for r in direct]}}
        print(f"  {s}: through devchange-stage {out[s]['stage_s']} s, direct {out[s]['direct_s']} s "
              f"(best of {len(staged)} and {len(direct)})", flush=True)
    return out


def one_size(n_users: int, overrides: dict, repeat: int, keep: bool, models: bool = True) -> dict:
    "Every measurement at one size, in a fresh copy of the working tree; the overhead only if `repeat` > 0."
    folder = Path(tempfile.mkdtemp(prefix=f"devchange-bench-{n_users}-"))
    print(f"\n== {n_users:,} users in {folder}", flush=True)
    result = {"n_users": n_users, "started": dt.datetime.now().isoformat(timespec="seconds"), "nice": os.nice(0),
              "mem_available_gb_before": round(psutil.virtual_memory().available / 1024**3, 1),
              "load_avg_before": os.getloadavg()}
    try:
        root = fresh_copy(folder / "devchange", {**overrides, "generate.n_users": n_users}, f"bench: {n_users} users")
        stages = list(yaml.safe_load((root / "dvc.yaml").read_text())["stages"])

        full = watch(["dvc", "repro"], root, by_stage=True)
        ran = stages_run(full["output"])
        result["full_run"] = {"wall_s": full["wall_s"], "cpu_s": full["cpu_s"], "order": ran,
                              "stages": {s: full["groups"].get(s) for s in stages}, "dvc": full["groups"].get("dvc")}
        result["train_rows"] = _rows(root / "data/processed/train.parquet")
        result["scoring_rows"] = _rows(root / "data/processed/scoring.parquet")
        _print_stages(result)

        noop = watch(["dvc", "repro"], root)
        result["noop"] = {"wall_s": noop["wall_s"], "cpu_s": noop["cpu_s"],
                          "stages_run": stages_run(noop["output"])}
        print(f"  no-op dvc repro: {noop['wall_s']} s", flush=True)

        score = result["full_run"]["stages"].get("score")
        if score and result["scoring_rows"]:
            result["score"] = {"users": result["scoring_rows"], "wall_s": score["wall_s"],
                               "users_per_s": round(result["scoring_rows"] / score["wall_s"])}

        if repeat:
            result["overhead"] = overhead(root, ran, result["full_run"]["stages"], repeat)

        result["models"] = {}
        for kind in MODELS if models else []:
            run = watch([sys.executable, str(ROOT / "benchmarks/models.py"), kind], root)
            result["models"][kind] = {**json.loads(run["output"].strip().splitlines()[-1]),
                                      "wall_s": run["wall_s"], "peak_mb": run["groups"]["all"]["peak_process_mb"]}
            m = result["models"][kind]
            print(f"  {kind}: fit {m['fit_s']} s over {len(m['folds'])} folds, mean lift@k {m['mean_lift_at_k']:.3f}",
                  flush=True)
    finally:
        result["load_avg_after"] = os.getloadavg()
        if not keep: shutil.rmtree(folder, ignore_errors=True)
    return result


def _print_stages(r: dict) -> None:
    for s, m in r["full_run"]["stages"].items():
        print(f"  {s:<16} " + ("not run" if m is None else
              f"{m['wall_s']:>8.1f} s wall {m['cpu_s']:>8.1f} s CPU {m['peak_tree_mb']:>7,} MB tree {m['peak_process_mb']:>7,} MB process"),
              flush=True)
    print(f"  dvc repro total {r['full_run']['wall_s']} s wall, {r['full_run']['cpu_s']} s CPU", flush=True)


def machine() -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    return {"cpu_model": cpu, "logical_cores": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
            "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1), "os": platform.platform(),
            "python": platform.python_version(), "libraries": {lib: version(lib) for lib in LIBS}}


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def growth(sizes: list[dict]) -> list[dict]:
    "Time and memory ratios between each size and the next, and first to last."
    pairs = list(zip(sizes, sizes[1:])) + ([(sizes[0], sizes[-1])] if len(sizes) > 2 else [])
    peak = lambda r: max(m["peak_process_mb"] for m in r["full_run"]["stages"].values() if m)
    return [{"from": a["n_users"], "to": b["n_users"], "users_ratio": round(b["n_users"] / a["n_users"], 2),
             "time_ratio": round(b["full_run"]["wall_s"] / a["full_run"]["wall_s"], 2),
             "peak_memory_ratio": round(peak(b) / peak(a), 2)} for a, b in pairs]


def table(report: dict) -> str:
    "The results as Markdown: one row per stage and size, then the summary rows."
    sizes = report["sizes"]
    head = "| stage | " + " | ".join(f"{r['n_users']:,} users" for r in sizes) + " |"
    lines = [head, "|---" * (len(sizes) + 1) + "|"]
    cell = lambda m: "–" if m is None else f"{m['wall_s']:.1f} s, {m['cpu_s']:.0f} s CPU, {m['peak_process_mb'] / 1024:.2f} GB"
    for s in report["stages"]:
        lines.append(f"| {s} | " + " | ".join(cell(r["full_run"]["stages"].get(s)) for r in sizes) + " |")
    rows = {"**dvc repro from clean**": lambda r: f"**{r['full_run']['wall_s']:.0f} s**, {r['full_run']['cpu_s']:.0f} s CPU",
            "no-op dvc repro": lambda r: f"{r['noop']['wall_s']:.1f} s",
            "score, users per second": lambda r: f"{r['score']['users_per_s']:,}" if "score" in r else "–",
            **{f"{k}: fit s (sum over folds) / mean lift@k": (lambda r, k=k: f"{r['models'][k]['fit_s']:.1f} s / "
                                                                      f"{r['models'][k]['mean_lift_at_k']:.3f}"
                                                                      if k in r.get("models", {}) else "–")
               for k in MODELS}}
    lines += [f"| {name} | " + " | ".join(fn(r) for r in sizes) + " |" for name, fn in rows.items()]
    out = "\n".join(lines)
    for r in sizes:
        if "overhead" not in r: continue
        out += (f"\n\nNotebook-first overhead at {r['n_users']:,} users (stage through devchange-stage vs its "
                f"notebook's code run directly; best of {report['run']['overhead_repeat']}):\n\n"
                "| stage | devchange-stage | direct | overhead | overhead, CPU |\n|---|---|---|---|---|\n")
        out += "\n".join(f"| {s} | {o['stage_s']:.1f} s | {o['direct_s']:.1f} s | {o['overhead_s']:.1f} s | "
                         f"{o['overhead_cpu_s']:.1f} s |" for s, o in r["overhead"].items())
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sizes = report["sizes"]
    users = [r["n_users"] for r in sizes]
    fig, (t_ax, m_ax) = plt.subplots(1, 2, figsize=(12, 4.8))
    for s in report["stages"]:
        pts = [(r["n_users"], r["full_run"]["stages"][s]) for r in sizes if r["full_run"]["stages"].get(s)]
        t_ax.plot([u for u, _ in pts], [m["wall_s"] for _, m in pts], marker="o", label=s)
        m_ax.plot([u for u, _ in pts], [m["peak_tree_mb"] / 1024 for _, m in pts], marker="o", label=s)
    t_ax.plot(users, [r["full_run"]["wall_s"] for r in sizes], marker="s", color="black", label="dvc repro (all)")
    t_ax.set(title="wall time per stage", xlabel="users", ylabel="seconds", xscale="log", yscale="log")
    m_ax.set(title="peak memory of the stage's process tree", xlabel="users", ylabel="GB", xscale="log", yscale="log")
    for ax in (t_ax, m_ax): ax.grid(True, which="both", alpha=0.3)
    t_ax.legend(fontsize="small")
    fig.suptitle(f"devchange pipeline on {report['machine']['logical_cores']} cores, {report['machine']['memory_gb']} GB "
                 f"({report['run']['started'][:10]})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(sizes: list[int], out: Path, overrides: dict | None = None, repeat: int = 1, keep: bool = False,
        append: bool = False, models: bool = True) -> dict:
    "Measure `sizes`; the overhead at the smallest of them if `repeat` > 0; `append`: keep out/bench.json's other sizes."
    out.mkdir(parents=True, exist_ok=True)
    earlier = json.loads((out / "bench.json").read_text()) if append and (out / "bench.json").is_file() else None
    report = {"machine": machine(),
              "run": {"started": dt.datetime.now().isoformat(timespec="seconds"), "sizes": sizes,
                      "overrides": overrides or {}, "overhead_repeat": repeat, "models": models, "commit": _git("rev-parse", "HEAD"),
                      "dirty": bool(_git("status", "--porcelain")), "nice": os.nice(0), "interval_s": INTERVAL_S,
                      "load_avg_before": os.getloadavg(),
                      "mem_available_gb_before": round(psutil.virtual_memory().available / 1024**3, 1)},
              "stages": list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]), "sizes": []}
    if earlier:
        report["earlier_runs"] = [*earlier.get("earlier_runs", []), earlier["run"]]
        report["sizes"] = [r for r in earlier["sizes"] if r["n_users"] not in sizes]
    for i, n in enumerate(sorted(sizes)):
        report["sizes"].append(one_size(n, overrides or {}, repeat if i == 0 else 0, keep, models))
        report["sizes"].sort(key=lambda r: r["n_users"])
        me = resource.getrusage(resource.RUSAGE_SELF)
        report["run"]["monitor_cpu_s"] = round(me.ru_utime + me.ru_stime, 1)  # this process's own load on the machine
        report["run"]["load_avg_after"] = os.getloadavg()
        report["run"]["finished"] = dt.datetime.now().isoformat(timespec="seconds")
        report["growth"] = growth(report["sizes"])
        (out / "bench.json").write_text(json.dumps(report, indent=1) + "\n")  # after each size: a long run keeps what it measured
        plot(report, out / "scale.png")
    print("\n" + table(report))
    print(f"\nwrote {out / 'bench.json'} and {out / 'scale.png'}")
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=DEFAULT_SIZES, help="numbers of users")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params.yaml override (dotted key)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side of the overhead comparison (0: skip it)")
    parser.add_argument("--append", action="store_true", help="add to the sizes already in <out>/bench.json")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copies")
    parser.add_argument("--no-models", dest="models", action="store_false",
                        help="skip the LightGBM / HistGradientBoosting comparison (step 4)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # clean up copies and processes
    run(args.sizes, args.out, {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}, args.repeat,
        args.keep, args.append, args.models)
