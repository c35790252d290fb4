"""Run the guides (nbs/guides/*.ipynb) with papermill: `make guides` saves their outputs, and
tests/test_guides.py runs them the same way in `make test`.

A guide is a notebook whose `parameters` cell names `root`, the repository it works in ("../.."
when opened in JupyterLab from nbs/guides/: your own clone). Here each guide runs in its own copy
of a project that ran `dvc repro` once on the tests' tiny data (tests/helpers.py's WORLD), so a
guide may change what it works on. Its front matter may set `tiny_params`, params.yaml keys its
copy needs on tiny data. `make guides` writes the executed outputs back into the guides (what the
docs site shows), with the copy's path written as `.`, then cleans them with nbdev_clean.
tests/test_guides.py fails when a guide's saved outputs are not those of its run (`stale_outputs`).

    python tools/guides.py                # make guides: every guide
    python tools/guides.py production     # one guide, by name"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tools"))
from helpers import run, tiny_copy, update_params  # noqa: E402  (the copy the pipeline tests run in)
from docs import front_matter  # noqa: E402

KERNEL = "python3"  # ipykernel's spec: the interpreter that runs papermill, as for the stages


def guides(root: Path = ROOT) -> list[Path]:
    return sorted((root / "nbs" / "guides").glob("*.ipynb"))


def tiny_project(dest: Path) -> Path:
    "A copy of the project with the WORLD settings after one `dvc repro` (as tests/conftest.py's tiny_pipeline)."
    root = tiny_copy(dest)
    run(["dvc", "repro"], root)
    return root


def guide_copy(tiny_root: Path, dest: Path, guide: Path, source: Path = ROOT) -> Path:
    """A copy of `tiny_root` for `guide` (never changing `tiny_root`), with what `make bench` wrote
    (reports/bench/, which the tiny copy leaves out) and the guide's `tiny_params`."""
    shutil.copytree(tiny_root, dest, symlinks=True)
    bench = source / "reports" / "bench"
    if bench.is_dir() and not (dest / "reports" / "bench").exists():
        shutil.copytree(bench, dest / "reports" / "bench")
    tiny = front_matter(json.loads(guide.read_text())).get("tiny_params")
    if tiny:
        update_params(dest, tiny)
        run(["git", "commit", "-qam", f"{guide.stem}: {tiny}"], dest)
    return dest


def run_guide(guide: Path, root: Path, out: Path) -> dict:
    "Execute `guide` in `root` (papermill, parameter `root`) into `out`; the executed notebook. Raises if a cell fails."
    import papermill as pm
    declared = pm.inspect_notebook(str(guide))
    assert "root" in declared, f"{guide.name}: no `root` in its parameters cell"
    pm.execute_notebook(str(guide), str(out), parameters={"root": str(root)}, kernel_name=KERNEL, cwd=str(root),
                        progress_bar=False, log_output=False)
    return json.loads(out.read_text())


def _scrub(value, paths: list[str]):
    "`value` (a cell output) with the copy's paths written as `.`."
    if isinstance(value, str):
        for p in paths: value = value.replace(p, ".")
        return value
    if isinstance(value, list): return [_scrub(v, paths) for v in value]
    if isinstance(value, dict): return {k: _scrub(v, paths) for k, v in value.items()}
    return value


def _outputs(executed: dict, root: Path) -> dict[str, list]:
    "Each code cell's outputs in `executed` (by cell id), with the copy's paths written as `.`."
    paths = sorted({str(root), str(root.resolve())}, key=len, reverse=True)
    return {c.get("id"): _scrub(c.get("outputs", []), paths) for c in executed["cells"] if c["cell_type"] == "code"}


def save_outputs(executed: dict, guide: Path, root: Path) -> None:
    "Copy the outputs of `executed` into `guide`'s code cells (matched by cell id)."
    nb = json.loads(guide.read_text())
    outputs = _outputs(executed, root)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = outputs.get(cell.get("id"), [])
            cell["execution_count"] = None
    guide.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


# What changes at every run of a guide, whatever the code: a git commit made in the copy (its hash holds the
# clock), DVC's name for an experiment commit, MLflow's random run ids and pandas' random ids of styled tables.
# Everything else a guide prints is a function of the code and the tiny world, so a saved output that differs
# from a run's is stale.
VOLATILE = [
    (re.compile(r"\b(?=[0-9a-f]*[a-f])[0-9a-f]{32}\b"), "<run id>"),          # MLflow run id
    (re.compile(r"(pipeline \S+ )[0-9a-f]{8}\b"), r"\1<run id>"),           # a run's name: stage, exp, id[:8]
    (re.compile(r"\b[0-9a-f]{40}\b"), "<commit>"),                           # a full git commit
    (re.compile(r"(── )[0-9a-f]{7}( \[)"), r"\1<commit>\2"),                # dvc exp show's experiment commits
    (re.compile(r"\bT_[0-9a-f]{5}(?=[_\"\s])"), "T_<uuid>"),                 # a pandas Styler table's random id
]


def _stable(text: str) -> str:
    for pattern, mask in VOLATILE: text = pattern.sub(mask, text)
    return text


def _shown(outputs: list) -> list[str]:
    "What a reader sees of a cell's outputs, volatile values masked (execution counts and metadata left out)."
    shown = []
    for o in outputs:
        if o["output_type"] == "stream":
            shown.append(f"{o['name']}: " + _stable("".join(o["text"])))
        elif o["output_type"] in ("display_data", "execute_result"):
            for kind, v in sorted(o.get("data", {}).items()):
                v = "".join(v) if isinstance(v, list) else str(v)
                shown.append(f"{kind}: " + (hashlib.sha256(v.encode()).hexdigest()[:12] if kind.startswith("image/")
                                            else _stable(v)))  # a plot's bytes, by hash: a diff of base64 says nothing
        else:
            shown.append(f"{o['output_type']}: {o.get('ename')}: {o.get('evalue')}")
    return shown


def stale_outputs(executed: dict, guide: Path, root: Path) -> list[str]:
    "The cells of `guide` whose saved outputs differ from those of `executed` (run in `root`), each with a diff."
    import difflib
    ran = _outputs(executed, root)
    stale = []
    for i, cell in enumerate(json.loads(guide.read_text())["cells"]):
        if cell["cell_type"] != "code": continue
        saved, now = _shown(cell.get("outputs", [])), _shown(ran.get(cell.get("id"), []))
        if saved != now:
            diff = difflib.unified_diff("\n".join(saved).splitlines(), "\n".join(now).splitlines(),
                                        "saved", "this run", n=1, lineterm="")
            stale.append(f"cell {i} ({cell.get('id')}):\n" + "\n".join(list(diff)[:40]))
    return stale


def main(argv: list[str]) -> int:
    chosen = [g for g in guides() if not argv or g.stem in argv]
    with tempfile.TemporaryDirectory(prefix="devchange-guides-") as tmp:
        t = time.monotonic()
        tiny = tiny_project(Path(tmp) / "tiny" / "devchange")
        print(f"tiny project: dvc repro in {time.monotonic() - t:.0f} s", flush=True)
        for guide in chosen:
            t = time.monotonic()
            copy = guide_copy(tiny, Path(tmp) / guide.stem / "devchange", guide)
            executed = run_guide(guide, copy, Path(tmp) / f"{guide.stem}.ipynb")
            save_outputs(executed, guide, copy)
            print(f"{guide.relative_to(ROOT)}: ran in {time.monotonic() - t:.0f} s, outputs saved", flush=True)
    subprocess.run([str(Path(sys.executable).parent / "nbdev_clean"), "--fname", str(ROOT / "nbs" / "guides")], cwd=ROOT, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
