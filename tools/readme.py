"""Write the README's opening from nbs/index.ipynb (nbdev's `readme_nb`): `make readme`.

nbdev's own `nbdev_readme` renders through Quarto, whose PyPI package (quarto-cli, a 5 KB source
package) downloads the binary from GitHub at install time, which machines limited to package
registries cannot reach; this renders the same notebook to GitHub markdown directly: markdown cells as they are,
code cells as Python blocks followed by their saved outputs. Only the part of README.md between
the two markers is replaced. `--check` exits 1 if the README is out of date (make test runs it)."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK, README = ROOT / "nbs" / "index.ipynb", ROOT / "README.md"
BEGIN = "<!-- written by `make readme` from nbs/index.ipynb: edit the notebook, not this part -->"
END = "<!-- end of nbs/index.ipynb -->"


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else value


def render(notebook: Path = NOTEBOOK) -> str:
    "The notebook as GitHub markdown: markdown cells, then each code cell and its text outputs."
    parts = []
    for cell in json.loads(notebook.read_text())["cells"]:
        source = _text(cell["source"]).strip("\n")
        if cell["cell_type"] == "markdown":
            parts.append(source)
        elif cell["cell_type"] == "code" and source:
            parts.append(f"```python\n{source}\n```")
            for out in cell.get("outputs", []):
                text = _text(out.get("text") or out.get("data", {}).get("text/plain", "")).rstrip("\n")
                if text: parts.append(f"```\n{text}\n```")
    return "\n\n".join(parts) + "\n"


def updated(readme: str, opening: str) -> str:
    "README text with the part between the markers replaced by `opening`."
    if BEGIN not in readme or END not in readme:
        raise SystemExit(f"{README}: expected the markers {BEGIN!r} and {END!r} around the opening")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{opening}{END}{tail}"


def main(argv: list[str]) -> int:
    readme = README.read_text()
    new = updated(readme, render())
    if "--check" in argv:
        if new != readme:
            print(f"{README.name} is out of date with {NOTEBOOK.relative_to(ROOT)}: run `make readme`", file=sys.stderr)
            return 1
        return 0
    if new != readme: README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
