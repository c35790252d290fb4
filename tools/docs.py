"""Build the docs site from the notebooks: `make docs` (python tools/docs.py [--out DIR]).

nbdev's `nbdev_docs` renders through Quarto, whose PyPI package (quarto-cli, a source package)
downloads its binary from GitHub at install time, which machines limited to package registries
cannot reach. This builds the same kind of site with what the lock holds (nbconvert, Pygments):

- `index.html`, the home page: nbs/index.ipynb (the README's opening), then the list of guides;
- one page per library chapter, nbs/NN_name.ipynb -> name.html (nbdev's names: no number, so a
  renumbered chapter keeps its address), rendered as stored with its saved example outputs (`make
  examples`; nothing is executed here). As nbdev does, cells marked `#| export`, `#| hide` and
  `#| default_exp` are not shown, and after each exported cell comes the API of the public names it
  defines, read from the installed module with `inspect`: signature, docstring and the parameters'
  comments (what nbdev's `show_doc` shows). A constant is documented when a string follows it;
- one page per guide, nbs/guides/name.ipynb -> guides/name.html, with the outputs saved by
  `make guides` (a run on tiny data); their front matter (a first raw cell of YAML) gives the
  title, description and `order`.

Formulas written as TeX between `$` (inline) or `$$` (a block) become MathML (latex2mathml), which
browsers draw without a script or a network. Every page has a sidebar linking all pages. A link to
a notebook that is a page becomes a link to that page; a link to another file of the repository
points at it under settings.ini's `git_url`.
Headings get GitHub's anchors, so `#a-heading` works on GitHub and here alike."""
from __future__ import annotations

import argparse
import ast
import configparser
import html
import importlib
import inspect
import json
import re
import shutil
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = {"export", "exporti", "hide", "default_exp"}  # cells the site does not show (nbdev's rule)
DOCUMENTED = {"export", "exports"}  # cells whose public definitions get an API entry


@dataclass
class Page:
    src: Path    # the notebook
    out: str     # its page, relative to the site's root
    kind: str    # home, guide or chapter
    title: str
    description: str = ""
    order: float = 0
    module: str | None = None
    nav: str = ""  # its name in the sidebar


def settings(root: Path = ROOT) -> dict:
    cfg = configparser.ConfigParser()
    cfg.read(root / "settings.ini")
    return dict(cfg["DEFAULT"])


def _source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def front_matter(nb: dict) -> dict:
    "The YAML of a first raw cell fenced by `---` lines (nbdev's front matter), else {}."
    import yaml
    for cell in nb["cells"][:1]:
        m = re.fullmatch(r"\s*---\s*\n(.*?)\n---\s*", _source(cell), re.S)
        if cell["cell_type"] == "raw" and m: return yaml.safe_load(m.group(1)) or {}
    return {}


def directives(source: str) -> dict[str, str]:
    "nbdev's `#| name value` lines at the top of a cell."
    found = {}
    for line in source.splitlines():
        m = re.match(r"\s*#\|\s*([\w-]+):?\s*(.*)$", line)
        if not m: break
        found[m.group(1)] = m.group(2).strip()
    return found


def _h1(nb: dict) -> str:
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            m = re.search(r"^#\s+(.+)$", _source(cell), re.M)
            if m: return m.group(1).strip()
    return ""


def _plain(md: str) -> str:
    "Markdown inline text without its markup."
    return re.sub(r"[`*_]", "", re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", md))


def pages(root: Path = ROOT) -> list[Page]:
    "Home, the guides (by their `order`) and the library chapters (by number)."
    found = [Page(root / "nbs" / "index.ipynb", "index.html", "home", settings(root)["title"], nav="Home")]
    for path in sorted((root / "nbs" / "guides").glob("*.ipynb")):
        fm = front_matter(json.loads(path.read_text()))
        title = fm.get("title") or path.stem.replace("_", " ")
        found.append(Page(path, f"guides/{path.stem}.html", "guide", title, fm.get("description", ""),
                          float(fm.get("order", 99)), nav=title))
    for path in sorted((root / "nbs").glob("[0-9]*.ipynb")):
        nb = json.loads(path.read_text())
        module = next((d["default_exp"] for c in nb["cells"] if c["cell_type"] == "code"
                       for d in [directives(_source(c))] if "default_exp" in d), None)
        name, _, about = _h1(nb).partition(" — ")
        found.append(Page(path, re.sub(r"^\d+_", "", path.stem) + ".html", "chapter", _plain(name) or path.stem,
                          _plain(about), module=module, nav=module or path.stem))
    return sorted(found, key=lambda p: ({"home": 0, "guide": 1, "chapter": 2}[p.kind], p.order))


# ---------------------------------------------------------------- API entries (what show_doc shows)

def _highlight(code: str) -> str:
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer
    return highlight(code, PythonLexer(), HtmlFormatter(cssclass="highlight"))


def _md(text: str) -> str:
    from nbconvert.filters.markdown_mistune import markdown2html_mistune
    return markdown2html_mistune(text)


_CODE = re.compile(r"(<pre\b.*?</pre>|<code\b.*?</code>)", re.S)
_DISPLAY = re.compile(r"\$\$(.+?)\$\$", re.S)
_INLINE = re.compile(r"(?<![\\$\w])\$(?=\S)([^$\n]+?)(?<=\S)\$(?![\w$])")  # "$5 and $6" is no formula


def render_math(body: str) -> str:
    "`body` with the TeX between `$$` and `$` as MathML, outside code; a formula latex2mathml cannot read stays as written."
    from latex2mathml.converter import convert
    def mathml(m: re.Match, display: str) -> str:
        try: return convert(html.unescape(m.group(1)).strip(), display=display)
        except Exception: return m.group(0)
    def outside_code(text: str) -> str:
        return _INLINE.sub(lambda m: mathml(m, "inline"), _DISPLAY.sub(lambda m: mathml(m, "block"), text))
    # split() with the group keeps the code blocks at the odd places, between the text around them
    return "".join(part if i % 2 else outside_code(part) for i, part in enumerate(_CODE.split(body)))


def _annotation(a) -> str:
    return a if isinstance(a, str) else inspect.formatannotation(a)  # as written, under `from __future__ import annotations`


def _param(p: inspect.Parameter) -> str:
    text = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
    if p.annotation is not p.empty: text += f": {_annotation(p.annotation)}"
    if p.default is not p.empty: text += (" = " if p.annotation is not p.empty else "=") + repr(p.default)
    return text


def signature(obj, name: str) -> str:
    "`def name(...)` or `class name(...)`, one parameter a line when long."
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return f"class {name}" if inspect.isclass(obj) else name
    params, seen_kw_only = [], False
    for i, p in enumerate(sig.parameters.values()):
        if i == 0 and p.name in ("self", "cls") and (inspect.isclass(obj) or "." in getattr(obj, "__qualname__", "")):
            continue
        if p.kind == p.KEYWORD_ONLY and not seen_kw_only: params.append("*"); seen_kw_only = True
        if p.kind == p.VAR_POSITIONAL: seen_kw_only = True
        params.append(_param(p))
    ret = "" if inspect.isclass(obj) or sig.return_annotation is inspect.Signature.empty else \
        " -> " + _annotation(sig.return_annotation)
    head = "class" if inspect.isclass(obj) else ("async def" if inspect.iscoroutinefunction(obj) else "def")
    one = f"{head} {name}({', '.join(params)}){ret}"
    return one if len(one) <= 88 else f"{head} {name}(\n" + "".join(f"    {p},\n" for p in params) + f"){ret}"


def _param_notes(obj) -> list[tuple[str, str]]:
    "Parameters with a comment beside them (fastcore's docments, as nbdev's show_doc tables them)."
    try:
        from fastcore.docments import docments
        return [(k, v) for k, v in docments(obj).items() if v and k != "return"]
    except Exception:
        return []


def value_repr(obj) -> str:
    """A constant's value as a reader wants it: a function or class inside it by its name. Their own
    reprs carry a memory address, which would make two builds of the site differ."""
    text = re.sub(r"<(?:built-in )?function ([\w.<>]+) at 0x[0-9a-f]+>", r"\1", repr(obj))
    return re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", text)


def _api_entry(obj, name: str, anchor: str, level: int = 3, doc: str | None = None) -> str:
    doc = inspect.getdoc(obj) if doc is None else doc
    parts = [f'<div class="api" id="{anchor}"><h{level} class="api-name"><code>{html.escape(name)}</code>'
             f'<a class="anchor-link" href="#{anchor}">¶</a></h{level}>']
    if callable(obj) or inspect.isclass(obj):
        parts.append(f'<div class="signature">{_highlight(signature(obj, name.split(".")[-1]))}</div>')
    else:
        value = value_repr(obj)
        parts.append(f'<div class="signature">{_highlight(f"{name} = " + (value if len(value) <= 120 else value[:117] + "..."))}</div>')
    if doc: parts.append(f'<div class="doc">{_md(doc)}</div>')
    notes = _param_notes(obj) if callable(obj) else []
    if notes:
        rows = "".join(f"<tr><td><code>{html.escape(k)}</code></td><td>{html.escape(v)}</td></tr>" for k, v in notes)
        parts.append(f'<table class="params"><thead><tr><th>parameter</th><th></th></tr></thead><tbody>{rows}</tbody></table>')
    if inspect.isclass(obj):
        for mname, member in vars(obj).items():
            fn = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
            if mname.startswith("_") or not callable(fn) or not inspect.getdoc(fn) or \
                    getattr(fn, "__qualname__", "").split(".")[0] != obj.__name__:
                continue
            parts.append(_api_entry(fn, f"{name}.{mname}", f"{anchor}.{mname.lower()}", 4))
    parts.append("</div>")
    return "\n".join(parts)


def documented_names(source: str) -> list[tuple[str, str | None]]:
    """Public functions and classes a cell defines, and public constants followed by a string (their
    docstring, as the project writes them): (name, docstring of a constant or None)."""
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return []
    names = []
    for i, node in enumerate(body):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if not node.name.startswith("_"): names.append((node.name, None))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and i + 1 < len(body):
            after = body[i + 1]
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
                names += [(t.id, inspect.cleandoc(after.value.value)) for t in targets
                          if isinstance(t, ast.Name) and not t.id.startswith("_")]
    return names


def api_html(module, source: str) -> str:
    "The API entries of the public names an exported cell defines, read from the installed `module`."
    out = []
    for name, doc in documented_names(source):
        if hasattr(module, name):
            out.append(_api_entry(getattr(module, name), name, name.lower(), doc=doc))
    return "\n".join(out)


# ---------------------------------------------------------------- notebook -> page

PLACEHOLDER = "DOCS-API-ENTRIES-{}"


def prepare(page: Page, nb: dict, lib: str) -> tuple[dict, list[str]]:
    """The notebook as the site shows it: front matter and hidden cells out, and a markdown cell holding a
    placeholder where API entries go; and those entries' HTML, one per placeholder."""
    import nbformat
    module = importlib.import_module(f"{lib}.{page.module}") if page.module else None
    cells, api = [], []
    for i, cell in enumerate(nb["cells"]):
        source = _source(cell)
        if i == 0 and cell["cell_type"] == "raw" and front_matter(nb): continue
        if cell["cell_type"] != "code":
            cells.append(cell); continue
        d = directives(source)
        if module is not None and DOCUMENTED & d.keys():
            if "exports" in d: cells.append(cell)
            entries = api_html(module, source)
            if entries:
                # a fixed id: nbformat's default is random, and nbconvert writes it into the page
                cells.append(nbformat.v4.new_markdown_cell(PLACEHOLDER.format(len(api)), id=f"api-{len(api)}"))
                api.append(entries)
            continue
        if HIDDEN & d.keys() or d.get("echo", "").lower() == "false": continue
        shown = dict(cell)
        shown["source"] = "\n".join(l for l in source.splitlines() if not re.match(r"\s*#\|", l))
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []): continue
        cells.append(shown)
    return nbformat.from_dict({**nb, "cells": cells}), api


def slug(text: str) -> str:
    "GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."
    text = unicodedata.normalize("NFKC", html.unescape(re.sub(r"<[^>]+>", "", text))).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _github_anchors(body: str) -> str:
    "nbconvert's heading ids (`Heading-Text`) replaced by GitHub's (`heading-text`), unique on the page."
    seen: dict[str, int] = {}

    def sub(m):
        level, inner = m.group(1), m.group(3)
        text = re.sub(r'<a class="anchor-link"[^>]*>.*?</a>', "", inner)
        base = slug(text)
        n = seen.get(base, 0); seen[base] = n + 1
        anchor = base if n == 0 else f"{base}-{n}"
        return f'<h{level} id="{anchor}">{text}<a class="anchor-link" href="#{anchor}">¶</a></h{level}>'
    return re.sub(r'<h([1-6]) id="([^"]*)">(.*?)</h\1>', sub, body, flags=re.S)


def rewrite_links(body: str, page: Page, by_src: dict[Path, Page], root: Path, repo_url: str, branch: str = "main") -> str:
    """Links to notebooks that are pages go to those pages; links to other files of the repository go to
    `repo_url`. A link is resolved from its notebook's folder, or else from the repository root (the
    README's view, which nbs/index.ipynb is written for)."""
    depth = page.out.count("/")
    up = "../" * depth

    def sub(m):
        attr, url = m.group(1), html.unescape(m.group(2))
        if re.match(r"^([a-z][a-z0-9+.-]*:|#|//)", url, re.I): return m.group(0)
        path, _, frag = url.partition("#")
        for base in (page.src.parent, root):
            target = (base / unquote(path)).resolve()
            if target.exists(): break
        else:
            print(f"docs: {page.src.relative_to(root)}: link to {url!r}: no such file", file=sys.stderr)
            return m.group(0)
        if target in by_src:
            new = up + by_src[target].out
        elif target.is_relative_to(root):
            kind = "tree" if target.is_dir() else "blob"
            new = f"{repo_url}/{kind}/{branch}/{target.relative_to(root).as_posix()}"
        else:
            return m.group(0)
        return f'{attr}="{html.escape(new + ("#" + frag if frag else ""), quote=True)}"'
    return re.sub(r'\b(href|src)="([^"]*)"', sub, body)


def nav_html(all_pages: list[Page], current: Page) -> str:
    up = "../" * current.out.count("/")
    groups = [("", [p for p in all_pages if p.kind == "home"]), ("Guides", [p for p in all_pages if p.kind == "guide"]),
              ("Library", [p for p in all_pages if p.kind == "chapter"])]
    parts = []
    for label, items in groups:
        if not items: continue
        if label: parts.append(f'<h2 class="nav-group">{label}</h2>')
        current_class = ' class="current"'
        parts.append("<ul>" + "".join(
            f'<li{current_class if p is current else ""}><a href="{up}{p.out}"'
            f' title="{html.escape(p.description, quote=True)}">{html.escape(p.nav)}</a></li>' for p in items) + "</ul>")
    return "\n".join(parts)


def guides_list(all_pages: list[Page]) -> str:
    items = "".join(f'<li><a href="{p.out}">{html.escape(p.title)}</a>{" — " + html.escape(p.description) if p.description else ""}</li>'
                    for p in all_pages if p.kind == "guide")
    return f'<h2 id="guides">Guides<a class="anchor-link" href="#guides">¶</a></h2>\n<ul class="guides">{items}</ul>' if items else ""


TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="{up}assets/site.css">
</head><body>
<header><a class="site" href="{up}index.html">{site}</a><span class="tagline">{tagline}</span></header>
<div class="layout">
<nav class="sidebar">
{nav}
</nav>
<main>
{body}
</main>
</div>
<footer>Built from the notebooks by <code>make docs</code> (tools/docs.py).</footer>
</body></html>
"""

CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg-code:#f6f8fa; --accent:#0969da; }
* { box-sizing: border-box; }
body { margin:0; font: 16px/1.55 -apple-system, "Segoe UI", "Noto Sans", Helvetica, Arial, sans-serif; color:var(--fg); }
header { padding:.7rem 1.5rem; border-bottom:1px solid var(--line); display:flex; gap:1rem; align-items:baseline; }
header .site { font-weight:700; font-size:1.25rem; color:var(--fg); text-decoration:none; }
header .tagline { color:var(--muted); font-size:.95rem; }
.layout { display:flex; align-items:flex-start; }
.sidebar { flex:0 0 15rem; position:sticky; top:0; max-height:100vh; overflow-y:auto; padding:1rem 1rem 2rem 1.5rem;
  border-right:1px solid var(--line); font-size:.93rem; }
.sidebar ul { list-style:none; margin:0 0 .6rem; padding:0; }
.sidebar li a { display:block; padding:.12rem .5rem; border-radius:4px; color:var(--fg); text-decoration:none; }
.sidebar li a:hover { background:var(--bg-code); }
.sidebar li.current a { background:#ddf4ff; font-weight:600; }
.sidebar .nav-group { font-size:.78rem; text-transform:uppercase; letter-spacing:.05em; color:var(--muted); margin:1rem 0 .3rem .5rem; }
main { flex:1; min-width:0; max-width:70rem; padding:1rem 2.5rem 3rem; }
footer { border-top:1px solid var(--line); color:var(--muted); font-size:.85rem; padding:.8rem 1.5rem; }
a { color:var(--accent); }
h1 { font-size:2rem; margin:.6rem 0 1rem; } h2 { border-bottom:1px solid var(--line); padding-bottom:.2rem; margin-top:2rem; }
.anchor-link { visibility:hidden; margin-left:.3rem; text-decoration:none; font-size:.8em; }
h1:hover .anchor-link, h2:hover .anchor-link, h3:hover .anchor-link, h4:hover .anchor-link { visibility:visible; }
code { background:var(--bg-code); padding:.1em .3em; border-radius:4px; font-size:.88em; }
pre { background:var(--bg-code); padding:.7rem .9rem; border-radius:6px; overflow-x:auto; font-size:.85rem; line-height:1.45; margin:.3rem 0; }
pre code { background:none; padding:0; }
.highlight pre { margin:0; }
table { border-collapse:collapse; margin:.6rem 0; font-size:.9rem; display:block; overflow-x:auto; }
th, td { border:1px solid var(--line); padding:.3rem .6rem; text-align:left; vertical-align:top; }
thead th { background:var(--bg-code); }
.cell { margin:.4rem 0; }
.code_cell .input_area { border-left:3px solid #9ec5fe; border-radius:6px; }
.output_area pre, .output_subarea pre { background:#fff; border:1px solid var(--line); }
.output_subarea { overflow-x:auto; }
.output_area img, .output_subarea img { max-width:100%; height:auto; }
.output_stderr pre { background:#fff5f5; }
.api { border:1px solid var(--line); border-radius:8px; padding:.2rem 1rem .6rem; margin:1rem 0; background:#fcfdff; }
.api .api { background:#fff; margin:.6rem 0; }
.api-name { margin:.6rem 0 .3rem; font-size:1.05rem; } .api-name code { background:none; font-size:1.05rem; padding:0; }
.api .signature pre { background:var(--bg-code); }
.api .doc p { margin:.4rem 0; }
.guides li { margin:.3rem 0; }
.rendered_html :where(p, ul, ol) { margin:.5rem 0; }
@media (max-width: 50rem) { .layout { display:block; } .sidebar { position:static; max-height:none; border-right:0;
  border-bottom:1px solid var(--line); } main { padding:1rem; } }
"""


def build(out: Path, root: Path = ROOT) -> list[Path]:
    "Write the site into `out` (emptied first); the pages written."
    from nbconvert import HTMLExporter
    from pygments.formatters import HtmlFormatter
    cfg = settings(root)
    repo_url = cfg["git_url"].rstrip("/")
    sys.path.insert(0, str(root))  # the library of this checkout, even when another is installed
    all_pages = pages(root)
    by_src = {p.src.resolve(): p for p in all_pages}
    exporter = HTMLExporter(template_name="basic", exclude_input_prompt=True, exclude_output_prompt=True)
    if out.exists(): shutil.rmtree(out)
    (out / "assets").mkdir(parents=True)
    (out / "assets" / "site.css").write_text(CSS + HtmlFormatter().get_style_defs(".highlight"))
    written = []
    for page in all_pages:
        import nbformat
        nb, api = prepare(page, nbformat.reads(page.src.read_text(), as_version=4), cfg["lib_name"])
        body, _ = exporter.from_notebook_node(nb)
        for i, entries in enumerate(api):
            body = re.sub(rf"<p>{PLACEHOLDER.format(i)}</p>", lambda m: entries, body, count=1)
        body = render_math(_github_anchors(body))
        body = rewrite_links(body, page, by_src, root, repo_url, cfg.get("branch", "main"))
        if page.kind == "home": body += "\n" + guides_list(all_pages)
        target = out / page.out
        target.parent.mkdir(parents=True, exist_ok=True)
        title = cfg["title"] if page.kind == "home" else f"{page.title} – {cfg['title']}"
        target.write_text(TEMPLATE.format(title=html.escape(title), up="../" * page.out.count("/"), site=html.escape(cfg["title"]),
                                          tagline=html.escape(cfg.get("description", "")), nav=nav_html(all_pages, page), body=body))
        written.append(target)
    return written


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / settings()["doc_path"], help="the site's folder (default: settings.ini doc_path)")
    args = ap.parse_args(argv)
    written = build(args.out.resolve())
    print(f"wrote {len(written)} pages to {args.out}/ (open {args.out}/index.html)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
