"""Run one stage's notebook code in this plain Python process: no papermill, kernel, HTML or report logging.

    python benchmarks/direct.py <stage> '<parameters as JSON>'     # in the repository or a copy of it

The baseline of the notebook-first overhead (benchmarks/bench.py): every code cell of
nbs/stages/<stage>.ipynb runs in order, the parameters `devchange-stage` would inject applied
right after the `parameters` cell, so the stage makes the same library calls and writes the
same outputs. Displays are not rendered: a cell's last value is simply dropped. The process exits
as a stage's kernel does (`gc.freeze` at exit, see nbs/18_stage.ipynb), so the comparison is of
the notebook machinery, not of Python's last collection."""
import atexit
import gc
import json
import sys

import matplotlib

matplotlib.use("Agg")  # figures are built (the library's plot code runs) but never shown

atexit.register(gc.freeze)
name, parameters = sys.argv[1], json.loads(sys.argv[2])
cells = json.load(open(f"nbs/stages/{name}.ipynb"))["cells"]
scope = {"__name__": "__main__"}
for i, cell in enumerate(cells):
    if cell["cell_type"] != "code": continue
    exec(compile("".join(cell["source"]), f"{name}.ipynb cell {i}", "exec"), scope)
    if "parameters" in cell["metadata"].get("tags", []): scope.update(parameters)
