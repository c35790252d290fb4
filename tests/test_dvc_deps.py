"""dvc.yaml's stage dependencies cannot drift from the code: every devchange module a stage
notebook imports, directly or through other modules, is a dependency of that stage, so a code
change re-runs exactly the stages it can affect (`dvc status` in tests/test_pipeline.py)."""
import ast
import json

import pytest
import yaml

from conftest import ROOT

PACKAGE = ROOT / "devchange"


def imported_modules(source: str) -> set[str]:
    "devchange modules imported by `source` (absolute or relative), wherever the import stands."
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 0 and module.startswith("devchange."): found.add(module.split(".")[1])
            elif node.level == 1 and module: found.add(module.split(".")[0])
            elif module in ("devchange", "") and (node.level == 1 or module == "devchange"):
                found |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("devchange.")}
    return {m for m in found if (PACKAGE / f"{m}.py").is_file()}


def closure(start: set[str]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += imported_modules((PACKAGE / f"{m}.py").read_text())
    return seen


def notebook_modules(stage: str) -> set[str]:
    nb = json.loads((ROOT / "nbs" / "stages" / f"{stage}.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    return closure(imported_modules(code))


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def stages_using(module: str) -> set[str]:
    return {s for s in STAGES if module in notebook_modules(s)}


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_depends_on_every_module_its_notebook_uses(stage):
    deps = set(map(str, STAGES[stage]["deps"]))
    missing = sorted(f"devchange/{m}.py" for m in notebook_modules(stage) if f"devchange/{m}.py" not in deps)
    assert not missing, f"dvc.yaml: stage {stage} uses but does not depend on: {', '.join(missing)}"
    assert f"nbs/stages/{stage}.ipynb" in deps


def test_the_import_scan_sees_relative_and_lazy_imports():
    src = "from .io import x\nfrom . import metrics, config\ndef f():\n    from devchange import tracking\n"
    assert imported_modules(src) == {"io", "metrics", "config", "tracking"}
    assert "tracking" in closure({"production"})  # imported inside a function, still a dependency
