"""Run the guides (nbs/guides/*.ipynb) with papermill: `make guides` saves their outputs, and
tests/test_guides.py runs them the same way in `make test`.

A guide is a notebook whose `parameters` cell names `root`, the repository it works in ("../.."
when opened in JupyterLab from nbs/guides/: your own clone). Here each guide runs in its own copy
of a project that ran `dvc repro` once on the tests' tiny data (tests/helpers.py's WORLD), so a
guide may change what it works on. Its front matter may set `tiny_params`, params.yaml keys its
copy needs on tiny data. `make guides` writes the executed outputs back into the guides (what the
docs site shows), with the copy's path written as `.`, then cleans them with nbdev_clean.

    python tools/guides.py                # make guides: every guide
    python tools/guides.py production     # one guide, by name"""
from __future__ import annotations

import json
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


def save_outputs(executed: dict, guide: Path, root: Path) -> None:
    "Copy the outputs of `executed` into `guide`'s code cells (matched by cell id)."
    nb = json.loads(guide.read_text())
    outputs = {c.get("id"): c.get("outputs", []) for c in executed["cells"] if c["cell_type"] == "code"}
    paths = sorted({str(root), str(root.resolve())}, key=len, reverse=True)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"] = _scrub(outputs.get(cell.get("id"), []), paths)
            cell["execution_count"] = None
    guide.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


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
