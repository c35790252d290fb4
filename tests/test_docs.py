"""The docs site: `make docs` builds it, every internal link and anchor resolves, every page is in
the sidebar, the chapters show their API; the README's links resolve and name the guides."""
import html
import json
import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from helpers import ROOT, run
import docs


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("docs") / "_docs"
    run(["make", "-o", ".venv/.installed", "docs", f"DOCS_DIR={out}"], ROOT)  # into a temporary folder
    return out


def _ids(page: Path) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', page.read_text()))


def _links(page: Path) -> list[str]:
    return [html.unescape(u) for u in re.findall(r'\b(?:href|src)="([^"]*)"', page.read_text())]


def broken_links(out: Path) -> list[str]:
    "Every local href/src of every page that names no file of the site, or an anchor its page lacks."
    broken = []
    for page in sorted(out.rglob("*.html")):
        for url in _links(page):
            parts = urlsplit(url)
            if parts.scheme or url.startswith("//") or url.startswith("data:"): continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            where = f"{page.relative_to(out)} -> {url}"
            if not target.is_relative_to(out.resolve()) or not target.is_file():
                broken.append(f"{where}: no such file")
            elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in _ids(target):
                broken.append(f"{where}: no such anchor")
    return broken


def test_every_page_is_built_and_in_the_sidebar(site):
    pages = docs.pages()
    kinds = {p.kind for p in pages}
    assert kinds == {"home", "guide", "chapter"}
    assert len([p for p in pages if p.kind == "chapter"]) == len(list((ROOT / "nbs").glob("[0-9]*.ipynb")))
    assert len([p for p in pages if p.kind == "guide"]) == len(list((ROOT / "nbs" / "guides").glob("*.ipynb")))
    for page in pages:
        built = site / page.out
        assert built.is_file(), page.out
        targets = {(built.parent / u).resolve() for u in _links(built)}
        assert {(site / p.out).resolve() for p in pages} <= targets, f"{page.out}: the sidebar misses a page"
    assert (site / "assets" / "site.css").is_file()


def test_every_internal_link_and_anchor_resolves(site):
    assert not broken_links(site)


def test_the_link_check_finds_a_broken_link_and_anchor(site, tmp_path):
    "The check above can fail."
    import shutil
    copy = tmp_path / "site"
    shutil.copytree(site, copy)
    (copy / "index.html").write_text((copy / "index.html").read_text()
                                     + '<a href="guides/nosuch.html">x</a><a href="guides/quick_start.html#nosuch">y</a>')
    found = broken_links(copy)
    assert len(found) == 2 and "no such file" in found[0] and "no such anchor" in found[1], found


def test_chapters_show_the_api_of_their_exported_names(site):
    "After each exported cell, the public names it defines, with signature and docstring (what show_doc shows)."
    for page in [p for p in docs.pages() if p.kind == "chapter"]:
        text = (site / page.out).read_text()
        nb_names = [n for cell in json.loads(page.src.read_text())["cells"]
                    if cell["cell_type"] == "code" and {"export", "exports"} & docs.directives("".join(cell["source"])).keys()
                    for n, _ in docs.documented_names("".join(cell["source"]))]
        for name in nb_names:
            assert f'<div class="api" id="{name.lower()}">' in text, f"{page.out}: no API entry for {name}"
        assert "#| export" not in text and "#| hide" not in text, f"{page.out} shows nbdev directives"
    metrics = (site / "metrics.html").read_text() if (site / "metrics.html").exists() else ""
    if metrics:  # one entry in full: signature and docstring
        entry = metrics.split('<div class="api" id="top_k_metrics">', 1)[1].split('<div class="api"', 1)[0]
        assert "top_k_metrics" in entry and "k_share" in entry and "precision@k" in entry


def test_formulas_are_mathml_and_code_keeps_its_dollars(site):
    "The chapters' TeX becomes MathML (no script, no network); a `$` in code or a price stays as written."
    monitoring = (site / "monitoring.html").read_text()
    assert monitoring.count('<math xmlns="http://www.w3.org/1998/Math/MathML" display="block">') == 1  # the PSI
    assert "<mtext>PSI</mtext>" in monitoring and "$$" not in monitoring
    page = docs.render_math("<p>with $e_i$ the share, a price of $5 and $6</p><pre>x = f'$y$'</pre>")
    assert page.count("<math") == 1 and "a price of $5 and $6" in page and "<pre>x = f'$y$'</pre>" in page


def test_notebook_links_become_page_links(site):
    index = (site / "index.html").read_text()
    assert ".ipynb" not in "".join(u for u in _links(site / "index.html") if not urlsplit(u).scheme)
    for page in docs.pages():
        if page.kind == "guide": assert f'href="{page.out}"' in index, f"the home page does not list {page.out}"


def test_readme_links_resolve_and_name_every_guide():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    local = [u for u in links if not urlsplit(u).scheme]
    for url in local:
        path, _, fragment = url.partition("#")
        target = ROOT / unquote(path) if path else ROOT / "README.md"
        assert target.exists(), f"README.md links to {url}: no such file"
        if fragment and target.suffix == ".md":
            anchors = {docs.slug(h) for h in re.findall(r"^#+\s+(.+)$", target.read_text(), re.M)}
            assert fragment in anchors, f"README.md links to {url}: no such heading"
    for guide in (ROOT / "nbs" / "guides").glob("*.ipynb"):
        assert f"nbs/guides/{guide.name}" in local, f"README.md does not link the guide {guide.name}"


def test_two_builds_are_byte_identical(site, tmp_path):
    "The site is a function of the notebooks: no random cell id, no memory address of a constant's value."
    again = tmp_path / "_docs"
    docs.build(again)
    files = sorted(p.relative_to(site) for p in site.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert [str(f) for f in files if (site / f).read_bytes() != (again / f).read_bytes()] == []
    models = (site / "models.html").read_text()
    assert "MODEL_KINDS" in models and " at 0x" not in models and "LGBMClassifier" in models
