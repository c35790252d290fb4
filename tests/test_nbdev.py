"""The nbdev contract: notebooks are committed clean, devchange/ is exactly what they export, and the
README opens with nbs/index.ipynb.

Both checks run nbdev in a copy of the project, so they never modify the working tree."""
import ast
import filecmp
import importlib.util
import io
import json
import tokenize
from pathlib import Path

from helpers import BIN, ROOT, copy_project, run


def _changed(a: Path, b: Path, pattern: str) -> list[str]:
    files = sorted({p.relative_to(a) for p in a.glob(pattern)} | {p.relative_to(b) for p in b.glob(pattern)})
    return [str(f) for f in files if not ((a / f).exists() and (b / f).exists() and filecmp.cmp(a / f, b / f, shallow=False))]


def test_notebooks_are_clean(tmp_path):
    copy = copy_project(tmp_path / "copy", skip_prefixes=("reports/", "data/"))
    run([str(BIN / "nbdev_clean")], copy)
    changed = _changed(ROOT / "nbs", copy / "nbs", "**/*.ipynb")
    assert not changed, f"notebooks not clean (run `make export` and commit): {changed}"


def test_library_in_sync_with_notebooks(tmp_path):
    copy = copy_project(tmp_path / "copy", skip_prefixes=("reports/", "data/"))
    run([str(BIN / "nbdev_export")], copy)
    changed = _changed(ROOT / "devchange", copy / "devchange", "*.py")
    assert not changed, f"devchange/ differs from what nbs/ exports (edit the notebook, run `make export`): {changed}"


def test_readme_opening_is_the_index_notebook(tmp_path):
    """README.md opens with nbs/index.ipynb as `make readme` renders it, and the outputs saved in the
    notebook (which the README shows) are what its cells print when run now."""
    p = run([str(BIN / "python"), "tools/readme.py", "--check"], ROOT, check=False)
    assert p.returncode == 0, p.stderr
    executed = tmp_path / "index.ipynb"
    run([str(BIN / "jupyter"), "nbconvert", "--to", "notebook", "--execute", "--output", str(executed),
         str(ROOT / "nbs" / "index.ipynb")], ROOT / "nbs")
    spec = importlib.util.spec_from_file_location("readme", ROOT / "tools" / "readme.py")
    readme = importlib.util.module_from_spec(spec); spec.loader.exec_module(readme)
    assert readme.render(executed) == readme.render(), "nbs/index.ipynb's saved outputs are stale: run it, then `make readme`"


def _shows_a_value(source: str) -> bool:
    "Whether a cell ends in an expression Jupyter displays: not silenced by a last `;`, not a `test_*` helper."
    try: body = ast.parse(source).body
    except SyntaxError: return False  # IPython syntax (%magic): not an example
    last = body[-1] if body else None
    code = [t for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.ENDMARKER)]
    return (isinstance(last, ast.Expr) and not (code and code[-1].string == ";")
            and not (isinstance(last.value, ast.Call) and getattr(last.value.func, "id", "").startswith("test_")))


def test_library_notebooks_show_their_examples():
    """A reader sees every example of the library notebooks without running them: each visible cell
    that ends in a value has its output saved (`make examples`), and no saved output is an error.
    Hidden cells (the tests) and exported code are not examples."""
    missing, errors = [], []
    for path in sorted((ROOT / "nbs").glob("[0-9]*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            source = "".join(cell["source"])
            if cell["cell_type"] != "code" or source.lstrip().startswith("#|"): continue
            where = f"{path.name}, cell {i}: {source.strip().splitlines()[-1][:60]}"
            if _shows_a_value(source) and not cell["outputs"]: missing.append(where)
            errors += [where for o in cell["outputs"] if o["output_type"] == "error"]
    assert not missing, f"examples without their output (run `make examples`): {missing}"
    assert not errors, f"examples saved with an error: {errors}"
