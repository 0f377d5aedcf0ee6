"""Pages of the site generated from the code at build time (run by the ``gen-files`` plugin).

- ``reference/<module>.md``: one API page per public module (``REFERENCE_MODULES``), rendered by
  mkdocstrings from the docstrings; the list is the one in ``mkdocs.yml``'s nav.
- ``concepts/protocol.md``: ``ember.runtime``'s module docstring (the message protocol).
- ``tutorials/<name>.md``: each ``docs/tutorials/<name>.py`` (percent cells) executed, with its
  printed output and its figures (``docs/_gen/tutorials.py``).
- ``examples/*.md`` get the commands' ``--help`` text through ``{{ember-help NAME}}`` markers.
- ``performance.md``: tables from ``benchmarks/results/*.jsonl`` (``docs/_gen/benchmarks.py``).

A failing tutorial, an undocumented public name or a malformed result line fails the build.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchmarks_tables  # noqa: E402
import docs_text  # noqa: E402
import tutorials  # noqa: E402

log = logging.getLogger("mkdocs.plugins.ember_docs")

#: the modules that get an API page, in the nav's order (tests/test_docs.py checks the nav agrees)
REFERENCE_MODULES = docs_text.REFERENCE_MODULES


def _write(path: str, text: str) -> None:
    with mkdocs_gen_files.open(path, "w") as f:
        f.write(text)


def reference_pages() -> None:
    rows = []
    for mod in REFERENCE_MODULES:
        summary = docs_text.first_line(mod)
        rows.append(f"| [`{mod}`]({mod}.md) | {summary} |")
        _write(f"reference/{mod}.md", docs_text.reference_page(mod))
    missing = docs_text.undocumented_public_names(REFERENCE_MODULES)
    for name in missing:
        log.warning("public name without a docstring: %s", name)
    _write("reference/index.md", "# API reference\n\nOne page per public module, generated from the docstrings.\n\n"
           "| module | what it holds |\n|---|---|\n" + "\n".join(rows) + "\n")


def protocol_page() -> None:
    import ember.runtime

    _write("concepts/protocol.md", "# The message protocol\n\n"
           "This page is `ember.runtime`'s own docstring, the reference for anyone writing a handler or an "
           "inference algorithm (see [Handlers and messages](handlers.md) for the introduction).\n\n"
           + docs_text.rst_like_to_markdown(ember.runtime.__doc__ or "", top_level=2))


def marker_pages() -> None:
    """Hand-written pages with ``{{ember-help ...}}`` / ``{{docstring ...}}`` markers, filled in."""
    docs = ROOT / "docs"
    for path in sorted(docs.rglob("*.md")):
        rel = path.relative_to(docs)
        if rel.parts[0].startswith("_"):
            continue
        text = path.read_text()
        new = docs_text.expand_markers(text)
        if new != text:
            _write(rel.as_posix(), new)


def tutorial_pages() -> None:
    for path in sorted((ROOT / "docs" / "tutorials").glob("*.py")):
        page, figures, seconds = tutorials.render(path)
        name = path.stem
        for fig_name, data in figures.items():
            with mkdocs_gen_files.open(f"tutorials/{fig_name}", "wb") as f:
                f.write(data)
        _write(f"tutorials/{name}.md", page)
        log.info("tutorial %s executed in %.1f s", name, seconds)


def performance_page() -> None:
    _write("performance.md", benchmarks_tables.page(ROOT / "benchmarks"))


reference_pages()
protocol_page()
marker_pages()
tutorial_pages()
performance_page()
