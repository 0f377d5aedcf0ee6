"""The documentation site (docs/, mkdocs.yml; issue 18).

Fast tests check what the build is made of: every public name has a docstring, the API nav lists
every reference module, the generators (docstring conversion, benchmark tables, the tutorial
runner) do what they say and fail loudly. The slow tests build the site with
``mkdocs build --strict`` (the tutorials execute) and open it in headless Chromium.
"""

from __future__ import annotations

import contextlib
import functools
import html.parser
import http.server
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import threading
import types
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GEN = ROOT / "docs" / "_gen"


def _load(name: str) -> types.ModuleType:
    """A module of docs/_gen, imported from its file (docs/_gen is not a package)."""
    if str(GEN) not in sys.path:
        sys.path.insert(0, str(GEN))
    spec = importlib.util.spec_from_file_location(f"_ember_docs_{name}", GEN / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---- fast: what the site is built from ------------------------------------------------------------


def test_every_public_name_has_a_docstring():
    docs_text = _load("docs_text")
    missing = docs_text.undocumented_public_names(docs_text.REFERENCE_MODULES)
    assert not missing, f"public names without a docstring (they would be empty on the API pages): {missing}"


def test_the_docstring_check_sees_a_missing_docstring(monkeypatch):
    docs_text = _load("docs_text")
    fake = types.ModuleType("ember_fake_docs_module", "A module.")

    def documented():
        """Has one."""

    def bare():
        pass

    class Bare(Exception):  # a class does not count its base's docstring
        pass

    fake.documented, fake.bare, fake.Bare = documented, bare, Bare
    fake.__all__ = ["documented", "bare", "Bare"]
    monkeypatch.setitem(sys.modules, "ember_fake_docs_module", fake)
    assert docs_text.undocumented_public_names(["ember_fake_docs_module"]) == [
        "ember_fake_docs_module.bare", "ember_fake_docs_module.Bare"]


def test_nav_lists_every_reference_module():
    docs_text = _load("docs_text")
    nav = re.findall(r"reference/([\w.]+)\.md", (ROOT / "mkdocs.yml").read_text())
    assert [m for m in nav if m != "index"] == docs_text.REFERENCE_MODULES


def test_reference_page_uses_mkdocstrings_or_the_live_object():
    pytest.importorskip("griffe", reason="griffe comes with the docs extra")
    docs_text = _load("docs_text")
    page = docs_text.reference_page("ember.infer")
    assert "::: ember.infer.SVI" in page  # found statically: rendered by mkdocstrings
    page = docs_text.reference_page("ember.distributions")
    # Normal is built at import time: rendered from the live object, with an anchor and signature
    assert "{ #ember.distributions.Normal }" in page and "\nNormal(loc: " in page


def test_rst_like_docstrings_become_markdown():
    docs_text = _load("docs_text")
    md = docs_text.rst_like_to_markdown(
        "Title line.\n\nThe part\n========\n\nA ``code`` word and :class:`Message`.\n\n"
        "``a``    one column\n``b``    another\n")
    assert "## The part" in md and "A `code` word and `Message`." in md
    assert "| `a` | one column |\n| `b` | another |" in md  # a two-column block becomes a table
    md = docs_text.rst_like_to_markdown("Title.\n\nAn example::\n\n    x = 1  # one\n    y = 2\n")
    assert "An example:\n\n```text\n    x = 1  # one\n    y = 2\n```" in md  # anything else stays preformatted


def test_rst_roles_become_code_spans_on_api_pages():
    pytest.importorskip("griffe", reason="griffe comes with the docs extra")
    import griffe

    ext = _load("griffe_rst_roles").RstRoles()
    obj = types.SimpleNamespace(docstring=griffe.Docstring("See :class:`~ember.infer.SVI` and :func:`sample`; a: b."))
    ext.on_instance(obj=obj)
    assert obj.docstring.value == "See `ember.infer.SVI` and `sample`; a: b."


def test_cli_help_names_the_models_not_the_seeds():
    docs_text = _load("docs_text")
    text = docs_text.cli_help([])
    assert "Kingma" in text and "Eslami" in text and "scale" in text and "docs" in text
    assert "seed 00" not in text


def test_the_package_names_models_not_seed_numbers():
    # help texts, docstrings and comments name the models as a user knows them (issue 18 point 4)
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in sorted((ROOT / "ember").rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), start=1) if re.search(r"\bseed 00\d", line, re.I)]
    assert not hits, "say 'the introductory scale model', 'the VAE of Kingma and Welling', 'Attend-Infer-Repeat':\n" + "\n".join(hits)


def test_benchmark_tables_come_from_the_json_lines(tmp_path):
    tables = _load("benchmarks_tables")
    (tmp_path / "results").mkdir()
    (tmp_path / "toy.py").write_text('"""A toy benchmark: µs per step."""\n')
    (tmp_path / "results" / "toy.jsonl").write_text(
        '{"benchmark": "toy", "threads": 1, "us": {"ember": 1.0, "torch": 2.0}, "ratio": {"ember": 0.5, "torch": 1.0}}\n'
        '{"benchmark": "toy", "threads": 1, "us": {"ember": 3.25, "torch": 4.0}, "ratio": {"ember": 0.8125, "torch": 1.0}}\n')
    page = tables.page(tmp_path)
    assert "A toy benchmark" in page
    assert "| ember | 3.25 | 0.8125 |" in page  # the last run: one row per variant, a column per dict
    assert "| ember | 1 | 0.5 |" in page  # the earlier run, folded away
    (tmp_path / "results" / "toy.jsonl").write_text("not json\n")
    with pytest.raises(ValueError, match=r"toy.jsonl:1"):
        tables.page(tmp_path)


def test_tutorial_runner_embeds_output_and_figures_and_fails_loudly(tmp_path):
    pytest.importorskip("matplotlib")
    tutorials = _load("tutorials")
    good = tmp_path / "good.py"
    good.write_text("# %% [markdown]\n# # Title\n# Some text.\n# %%\nimport matplotlib.pyplot as plt\n"
                    "x = 6 * 7\nprint('answer', x)\nplt.plot([0, 1], [0, x])\n# %%\nprint(x + 1)\n")
    page, figures, _ = tutorials.render(good)
    assert "# Title\nSome text." in page
    assert "```text\nanswer 42\n```" in page and "```text\n43\n```" in page
    assert list(figures) == ["good-1.png"] and figures["good-1.png"].startswith(b"\x89PNG")
    assert "](good-1.png)" in page
    bad = tmp_path / "bad.py"
    bad.write_text("# %%\nx = 1\n# %%\ny = x / 0\n")
    with pytest.raises(tutorials.TutorialError, match=r"bad.py: the cell at line 4 raised:(.|\n)*ZeroDivisionError"):
        tutorials.render(bad)


# ---- slow: the whole site -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings_handlers") is None:
        pytest.skip('MkDocs is not installed (the docs extra: pip install -e ".[docs]")')
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "DISABLE_MKDOCS_2_WARNING": "true", "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return out


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        for key in ("href", "src"):
            if a.get(key) and not (tag == "link" and a.get("rel") in ("canonical",)):
                self.links.append(a[key])


def _parse(path: Path) -> _Links:
    p = _Links()
    p.feed(path.read_text(errors="replace"))
    return p


def test_site_builds_strict_with_every_page(site):
    for page in ["index.html", "getting-started/index.html", "pyro/index.html", "performance/index.html",
                 "concepts/protocol/index.html", "reference/ember.infer/index.html", "tutorials/vae/index.html"]:
        assert (site / page).is_file(), page
    assert "Trace_ELBO" in (site / "reference/ember.infer/index.html").read_text()
    assert (site / "tutorials/vae-1.png").is_file()  # the tutorial's figure, beside its page


def test_no_internal_link_is_broken(site):
    # 404.html links from the site's root on purpose (it is served at any depth)
    pages = {p: _parse(p) for p in site.rglob("*.html") if p.name != "404.html"}
    broken = []
    for page, parsed in pages.items():
        for link in parsed.links:
            url = urllib.parse.urlsplit(link)
            if url.scheme or url.netloc or link.startswith(("mailto:", "data:", "javascript:")):
                continue
            target = (page.parent / urllib.parse.unquote(url.path)).resolve() if url.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(site)} -> {link}")
            elif url.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if urllib.parse.unquote(url.fragment) not in ids:
                    broken.append(f"{page.relative_to(site)} -> {link} (no such anchor)")
    assert not broken, "broken internal links:\n" + "\n".join(broken[:50])


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the docs extra)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("no headless browser: install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver_path), options=opts)


@contextlib.contextmanager
def _serve(directory: Path):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address) -> None:
            pass  # the browser dropping a prefetch it no longer needs

    server = Server(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


_IMAGES = "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]);"


def test_site_renders_in_a_browser(site):
    driver = _browser()
    try:
        with _serve(site) as base:
            driver.get(base + "/")
            assert "Ember" in driver.title
            assert driver.find_element("css selector", "article h1").text.strip() == "Ember"
            images = driver.execute_script(_IMAGES)
            assert images and all(ok for _, ok in images), f"home page images: {images}"

            driver.get(base + "/reference/ember.infer/")
            assert driver.find_elements("id", "ember.infer.SVI"), "the API page has no entry for ember.infer.SVI"
            text = driver.find_element("css selector", "article").text
            assert "SVI" in text and "Trace_ELBO" in text

            driver.get(base + "/tutorials/intro_inference/")
            article = driver.find_element("css selector", "article").text
            assert "exact posterior: Normal(9.14, 0.60)" in article  # the executed cell's output
            images = driver.execute_script(_IMAGES)
            assert images and all(ok for _, ok in images), f"tutorial images: {images}"

            # every internal link on these pages answers
            import urllib.request

            for page in ("/", "/reference/ember.infer/", "/tutorials/intro_inference/"):
                driver.get(base + page)
                hrefs = driver.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href);")
                for href in {h.split("#")[0] for h in hrefs if h.startswith(base)}:
                    with urllib.request.urlopen(href) as r:
                        assert r.status == 200, href
    finally:
        driver.quit()


def test_ember_docs_without_mkdocs_says_how_to_install(monkeypatch, capsys):
    import importlib.util as iu

    from ember import cli

    real = iu.find_spec
    monkeypatch.setattr(iu, "find_spec", lambda name, *a: None if name == "mkdocs" else real(name, *a))
    assert cli.main(["docs", "--build"]) == 2
    assert 'install the docs extra: pip install -e ".[docs]"' in capsys.readouterr().err


def test_ember_docs_runs_mkdocs_on_the_checkout(monkeypatch):
    import importlib.util as iu
    import subprocess as sp

    from ember import cli

    # what `ember docs` runs, whether or not MkDocs is installed here (the docs extra is optional)
    real = iu.find_spec
    monkeypatch.setattr(iu, "find_spec", lambda name, *a: object() if name == "mkdocs" else real(name, *a))
    calls = []
    monkeypatch.setattr(sp, "call", lambda cmd, cwd, env: calls.append((cmd, cwd)) or 0)
    assert cli.main(["docs", "--build"]) == 0
    assert cli.main(["docs", "--dev-addr", "127.0.0.1:8123"]) == 0
    (build, cwd), (serve, _) = calls
    assert build[1:4] == ["-m", "mkdocs", "build"] and "--strict" in build and build[-1] == str(ROOT / "mkdocs.yml")
    assert serve[3:6] == ["serve", "--dev-addr", "127.0.0.1:8123"] and cwd == ROOT
