"""The guides (nbs/guides/*.ipynb) run on tiny data: each in its own copy of the shared tiny pipeline
run, executed with papermill as `make guides` does (tools/guides.py). A cell that fails, an assert
included, fails the test; every guide checks at least one output of a command it runs; and the
outputs saved in the guide (what the docs site shows) must be this run's, but for the values that
change at every run (tools/guides.py's VOLATILE: MLflow run ids, commits made in the copy)."""
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
    stale = guides.stale_outputs(executed, guide, copy)  # what the docs site shows is what the code prints
    assert not stale, f"{guide.name}: saved outputs differ from this run's, run `make guides`:\n" + "\n\n".join(stale)


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


def test_only_the_volatile_values_are_masked(tmp_path):
    "Two runs that differ in run ids and the copy's commits agree; a changed figure is a stale output, with its diff."
    def nb(text):
        return {"cells": [{"cell_type": "code", "id": "c1", "source": "", "metadata": {}, "execution_count": None,
                           "outputs": [{"output_type": "stream", "name": "stdout", "text": [text]}]}]}
    saved = ("run 3f2a9c0e8b7d4e1f9a6b5c4d3e2f1a0b, pipeline strict-drift 3f2a9c0e\n├── e5270c0 [strict-drift]\n"
             '<table id="T_9c0e8"><td id="T_9c0e8_row0_col0">lift 1.87 of user 1000025</td></table>\n')
    guide = tmp_path / "guide.ipynb"
    guide.write_text(json.dumps(nb(saved)))
    rerun = saved.replace("3f2a9c0e", "0b1c2d3e").replace("e5270c0", "1234567").replace("9c0e8", "a41b2")
    assert guides.stale_outputs(nb(rerun), guide, tmp_path) == []
    [stale] = guides.stale_outputs(nb(rerun.replace("1.87", "1.88")), guide, tmp_path)
    assert ('-<table id="T_<uuid>"><td id="T_<uuid>_row0_col0">lift 1.87 of user 1000025</td></table>' in stale
            and "+<table" in stale and "lift 1.88" in stale), stale
    assert guides.stale_outputs(nb(rerun.replace("1000025", "1000026")), guide, tmp_path)  # a user id is no hash
