"""The nbdev contract: notebooks are committed clean, and devchange/ is exactly what they export.

Both checks run nbdev in a copy of the project, so they never modify the working tree."""
import filecmp
import shutil
from pathlib import Path

from conftest import BIN, ROOT, copy_project, run


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
