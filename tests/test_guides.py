"""The guides (nbs/guides/*.ipynb) run on tiny data: each in its own copy of the shared tiny pipeline
run, executed with papermill as `make guides` does (tools/guides.py). A cell that fails, an assert
included, fails the test; every guide checks at least one output of a command it runs."""
import ast
import json

import pytest

from helpers import ROOT
import guides

GUIDES = guides.guides()
EXPECTED = {"quick_start", "own_data", "experiments", "production", "airflow", "team", "performance"}


def _code(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _asserts(source: str) -> bool:
    try:
        return any(isinstance(n, ast.Assert) for n in ast.walk(ast.parse(source)))
    except SyntaxError:
        return False


def test_every_guide_is_there():
    assert {g.stem for g in GUIDES} == EXPECTED


@pytest.mark.parametrize("guide", GUIDES, ids=lambda g: g.stem)
def test_guide_runs_on_tiny_data(guide, tiny_pipeline, tmp_path):
    copy = guides.guide_copy(tiny_pipeline.root, tmp_path / "devchange", guide)
    executed = guides.run_guide(guide, copy, tmp_path / guide.name)  # raises on a failing cell
    checked = [c for c in _code(executed) if _asserts("".join(c["source"])) and c["execution_count"]]
    assert checked, f"{guide.name}: no executed cell checks an output"
    assert all(c["execution_count"] for c in _code(executed)), f"{guide.name}: a code cell did not run"


@pytest.mark.parametrize("guide", GUIDES, ids=lambda g: g.stem)
def test_guide_is_skipped_by_nbdev_test_and_shows_saved_outputs(guide):
    """nbdev_test (which walks nbs/ recursively) skips the guides: they need a pipeline run (their front
    matter says skip_exec). The docs site shows their saved outputs: `make guides` wrote them."""
    from nbdev.test import test_nb
    assert test_nb(guide) == (True, 0)
    nb = json.loads(guide.read_text())
    ran = [c for c in _code(nb) if c["outputs"]]
    assert ran, f"{guide.name} has no saved output: run `make guides`"
    errors = [o for c in _code(nb) for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, f"{guide.name} saved an error: run `make guides` again"
    text = json.dumps(nb)
    for path in ("devchange-guides-", "/tmp/pytest-", str(ROOT)):  # make guides' copies, the tests', this clone
        assert path not in text, f"{guide.name}: a saved output names a machine's path ({path})"
