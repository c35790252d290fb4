"""dvc.yaml's stage dependencies cannot drift from the code: a stage depends on exactly the
devchange modules its notebook imports, directly or through other modules (none missing, none
extra), so a code change re-runs exactly the stages it can affect (`dvc status` in
tests/test_pipeline.py)."""
import ast
import json

import pytest
import yaml

from helpers import ROOT, stage_outs

PACKAGE = ROOT / "devchange"


def _runs(tree: ast.AST):
    "Every node of `tree` but the body of `if TYPE_CHECKING:`: an import for annotations only never runs."
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                todo += child.orelse
            else:
                todo.append(child)


def imported_modules(source: str) -> set[str]:
    "devchange modules imported by `source` (absolute or relative), wherever the import stands, if it can run."
    found = set()
    for node in _runs(ast.parse(source)):
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


def dep_problems(stage: str, deps: list[str], uses: set[str]) -> str:
    "What is wrong with `stage`'s deps given the modules it `uses`: missing and extra devchange files, or ''."
    listed = {d for d in map(str, deps) if d.rstrip("/") == "devchange" or d.startswith("devchange/")}
    wanted = {f"devchange/{m}.py" for m in uses}
    missing, extra = sorted(wanted - listed), sorted(listed - wanted)
    problems = ([f"uses but does not depend on: {', '.join(missing)}"] if missing else []) + \
               ([f"depends on but never imports: {', '.join(extra)}"] if extra else [])
    return f"dvc.yaml: stage {stage} " + "; ".join(problems) if problems else ""


@pytest.mark.parametrize("stage", list(STAGES))
def test_stage_depends_on_exactly_the_modules_its_notebook_uses(stage):
    deps = STAGES[stage]["deps"]
    problems = dep_problems(stage, deps, notebook_modules(stage))
    assert not problems, problems
    assert f"nbs/stages/{stage}.ipynb" in map(str, deps)


def test_a_missing_or_an_extra_module_is_named():
    uses = {"config", "io"}
    assert dep_problems("x", ["nbs/stages/x.ipynb", "devchange/config.py", "devchange/io.py", "data/a"], uses) == ""
    assert dep_problems("x", ["devchange/config.py"], uses) == "dvc.yaml: stage x uses but does not depend on: devchange/io.py"
    assert dep_problems("x", ["devchange/config.py", "devchange/io.py", "devchange/folds.py"], uses) == (
        "dvc.yaml: stage x depends on but never imports: devchange/folds.py")
    assert "devchange/" in dep_problems("x", ["devchange/", "devchange/config.py", "devchange/io.py"], uses)  # the whole package


def test_the_import_scan_sees_relative_and_lazy_imports():
    src = "from .io import x\nfrom . import metrics, config\ndef f():\n    from devchange import tracking\n"
    assert imported_modules(src) == {"io", "metrics", "config", "tracking"}
    assert "tracking" in closure({"production"})  # imported inside a function, still a dependency


def test_the_import_scan_skips_imports_for_annotations_only():
    src = ("from typing import TYPE_CHECKING\nfrom .io import x\nif TYPE_CHECKING:\n    from .monitoring import R\n"
           "else:\n    from . import metrics\n")
    assert imported_modules(src) == {"io", "metrics"}


@pytest.mark.parametrize("stage", STAGES)
def test_stage_outputs_are_the_named_outputs(stage):
    """Each output path is spelled once, in devchange.catalog.OUTPUTS with the stage that writes it;
    dvc.yaml's outs of a stage are exactly those plus its report (executed notebook and HTML)."""
    from devchange.catalog import OUTPUTS
    outs = set(stage_outs(ROOT / "dvc.yaml", stages=[stage]))
    named = {path for path, writer in OUTPUTS.values() if writer == stage}
    assert outs == named | {f"reports/{stage}.ipynb", f"reports/{stage}.html"}, (
        f"dvc.yaml: stage {stage}: outs differ from catalog.OUTPUTS: only in dvc.yaml "
        f"{sorted(outs - named)}, only in OUTPUTS {sorted(named - outs)}")
