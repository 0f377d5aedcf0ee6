"""Text helpers for the generated pages: API pages, the docstring check, markers, docstring conversion."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import re
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]

#: the modules that get an API page, in the nav's order
REFERENCE_MODULES = [
    "ember", "ember.poutine", "ember.poutine.runtime", "ember.poutine.util", "ember.distributions", "ember.distributions.constraints",
    "ember.distributions.transforms", "ember.distributions.util", "ember.infer", "ember.infer.autoguide",
    "ember.infer.reparam", "ember.infer.mcmc", "ember.infer.distributed", "ember.infer.inspect",
    "ember.infer.abstract_infer", "ember.infer.criticism", "ember.infer.enum", "ember.infer.smcfilter",
    "ember.infer.util", "ember.infer.threads", "ember.optim", "ember.optim.clipped_adam", "ember.optim.functional", "ember.params", "ember.nn",
    "ember.nn.auto_reg_nn", "ember.ops", "ember.ops.stats", "ember.ops.indexing", "ember.ops.einsum",
    "ember.ops.contract", "ember.settings", "ember.util", "ember.data", "ember.compat",
    "ember.contrib.examples",
]


def first_line(module: str) -> str:
    """The first sentence of a module's docstring, as one table cell."""
    doc = inspect.getdoc(importlib.import_module(module)) or ""
    line = doc.strip().split("\n\n")[0].replace("\n", " ")
    return _inline(line).replace("|", "\\|")


def public_names(module: str) -> list[str]:
    """A module's public names: its ``__all__``, or its non-underscore, non-module attributes."""
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None)
    if names is None:
        names = [n for n, v in vars(mod).items() if not n.startswith("_") and not inspect.ismodule(v)
                 and getattr(v, "__module__", "").startswith(module)]
    return list(names)


def undocumented_public_names(modules: list[str]) -> list[str]:
    """``module.name`` for every public class or function (and the modules) without a docstring of
    its own (an inherited class docstring does not count)."""
    missing = []
    for module in modules:
        mod = importlib.import_module(module)
        if not (mod.__doc__ or "").strip():
            missing.append(module)
        for name in public_names(module):
            obj = getattr(mod, name, None)
            if obj is None or inspect.ismodule(obj):
                continue
            if not (inspect.isclass(obj) or inspect.isroutine(obj) or callable(obj)):
                continue
            doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
            if not (doc or "").strip():
                missing.append(f"{module}.{name}")
    return missing



# ---- the shape check: a docstring states shapes wherever tensors go in or out ----------------------

#: parameter names that, without an annotation, stand for tensors (or for the shapes of tensors a
#: method draws) by the conventions of torch.distributions and Pyro
TENSOR_PARAM_NAMES = frozenset({
    "value", "x", "y", "obs", "loc", "scale", "logits", "probs", "input", "inputs", "context",
    "samples", "sample_shape", "batch_shape",
})

#: what counts as stating a shape: the word (shape, batch_shape, event_shape, sample_shape, shapes),
#: "scalar", "event_dim", or a written-out shape such as ``(N, D)``, ``(K,)``, ``[..., D]``, ``[*batch, D]``,
#: ``[N]``, ``[batch, dim]`` (not a call signature such as ``(x, y)`` nor an interval such as ``(0, 1)``)
_SHAPE_ELEM = r"(?:\.\.\.|\*\w+|[A-Z][A-Za-z0-9_]{0,3}|batch\w*|dim\w*|num_\w+|[a-z]+_[a-z_]+|n|d|k)"
SHAPE_STATEMENT = re.compile(
    r"(?i:shape|\bscalar|event_dim)"
    rf"|[(\[]\s*(?:\d+\s*,\s*)*{_SHAPE_ELEM}(?:\s*,\s*(?:{_SHAPE_ELEM}|\d+))+\s*[)\]]"
    rf"|[(\[]\s*(?:\d+\s*,\s*)+{_SHAPE_ELEM}\s*[)\]]"
    rf"|[(\[]\s*(?:{_SHAPE_ELEM}|\d+)\s*,\s*[)\]]|\[\s*(?:\.\.\.|\*\w+|{_SHAPE_ELEM})\s*\]")


def _mentions_tensors(fn: object) -> bool:
    """Whether ``fn``'s signature takes or returns tensors: an annotation naming ``Tensor``, or a
    parameter with one of the conventional tensor names (:data:`TENSOR_PARAM_NAMES`)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    if "Tensor" in str(sig.return_annotation):
        return True
    return any("Tensor" in str(p.annotation) or p.name in TENSOR_PARAM_NAMES for p in sig.parameters.values())


def _inherited_doc(cls: type, attr: str) -> str:
    """The docstring of ``cls.attr`` as a reader finds it: the first class in the MRO that defines
    ``attr`` with a docstring (an override without one inherits its base's, as ``inspect.getdoc`` does)."""
    for klass in cls.__mro__:
        if attr in vars(klass):
            member = vars(klass)[attr]
            member = getattr(member, "__func__", member)
            doc = getattr(member, "__doc__", None)
            if doc and doc.strip():
                return doc
    return ""


def _routine(member: object) -> object | None:
    """The function behind a class attribute (plain, static or class method); None for anything else."""
    member = getattr(member, "__func__", member)
    return member if inspect.isfunction(member) else None


def tensor_routines(modules: list[str]) -> dict[str, str]:
    """Every public function, method and class in ``modules`` whose signature takes or returns tensors,
    mapped to the docstring a reader sees for it (own or inherited).

    Functions: the public names that are functions defined in Ember. Classes: the class itself
    when its constructor takes tensors (its docstring, own or a base's, says the shapes of what it
    is built from), and each public method (plus ``__call__``) defined in an Ember class, found once
    under the class that defines it (methods of torch's classes are torch's to document)."""
    found: dict[str, str] = {}
    for module in modules:
        mod = importlib.import_module(module)
        for name in public_names(module):
            obj = getattr(mod, name, None)
            if inspect.isclass(obj):
                _class_routines(obj, found)
            elif inspect.isfunction(obj) and (obj.__module__ or "").startswith("ember") and _mentions_tensors(obj):
                found[f"{obj.__module__}.{obj.__qualname__}"] = inspect.getdoc(obj) or ""
    return found


def _class_routines(cls: type, found: dict[str, str]) -> None:
    if not (cls.__module__ or "").startswith("ember"):
        return
    key = f"{cls.__module__}.{cls.__qualname__}"
    if key not in found and _mentions_tensors(cls):
        found[key] = inspect.getdoc(cls) or ""
    for attr in sorted(set(dir(cls)) - {"__init__"}):
        if attr.startswith("_") and attr != "__call__":
            continue
        owner = next((k for k in cls.__mro__ if attr in vars(k)), None)
        fn = _routine(vars(owner)[attr]) if owner is not None else None
        if fn is None or not (owner.__module__ or "").startswith("ember") or not _mentions_tensors(fn):
            continue
        found.setdefault(f"{owner.__module__}.{owner.__qualname__}.{attr}", _inherited_doc(owner, attr))


def shapeless_docstrings(modules: list[str]) -> list[str]:
    """The names from :func:`tensor_routines` whose docstring states no shape."""
    return sorted(name for name, doc in tensor_routines(modules).items() if not SHAPE_STATEMENT.search(doc))


_GRIFFE: dict = {}


def _static_ok(dotted: str) -> bool:
    """Whether mkdocstrings (griffe's static analysis) can find ``dotted`` inside Ember's sources."""
    if "pkg" not in _GRIFFE:
        import griffe

        _GRIFFE["pkg"] = griffe.load("ember", search_paths=[str(_ROOT)], resolve_aliases=False)
    try:
        obj = _GRIFFE["pkg"][dotted.split(".", 1)[1]] if "." in dotted else _GRIFFE["pkg"]
        if obj.is_alias:
            obj = obj.final_target
        return obj.path.startswith("ember")
    except Exception:
        return False


def _runtime_entry(module: str, name: str, obj: object) -> str:
    """A reference entry from the live object, for names griffe cannot see statically (classes
    Ember builds at import time, names re-exported from torch)."""
    origin = getattr(obj, "__module__", None) or module
    kind = "class" if inspect.isclass(obj) else "function" if inspect.isroutine(obj) else "object"
    sig = ""
    if callable(obj):
        try:
            sig = str(inspect.signature(obj, eval_str=True))
        except Exception:
            try:
                sig = str(inspect.signature(obj))
            except (TypeError, ValueError):
                sig = "(...)"
    doc = inspect.getdoc(obj) or ""
    if not origin.startswith("ember"):
        doc = doc.split("\n\n")[0] + f"\n\n(Re-exported from `{origin}`; see PyTorch's documentation.)"
    body = rst_like_to_markdown(doc, top_level=4) if doc else "*(no docstring)*\n"
    return (f"## `{module}.{name}` {{ #{module}.{name} }}\n\n<small>{kind}, defined in `{origin}`</small>\n\n"
            f"```python\n{name}{sig}\n```\n\n{body}")


def reference_page(module: str) -> str:
    """One API page: the module's docstring, then each public name (``__all__``) in its order;
    mkdocstrings renders what griffe finds in Ember's sources, the live object the rest."""
    names = public_names(module)
    mod = importlib.import_module(module)
    members = [n for n in names if not inspect.ismodule(getattr(mod, n, None))]
    submodules = [n for n in names if inspect.ismodule(getattr(mod, n, None))]
    out = [f"# `{module}`\n", f"::: {module}\n    options:\n      members: false\n      show_root_heading: false\n"]
    if submodules:
        out.append("Submodules: " + ", ".join(f"`{module}.{s}`" for s in submodules) + "\n")
    for name in members:
        if _static_ok(f"{module}.{name}"):
            out.append(f"::: {module}.{name}\n")
        else:
            out.append(_runtime_entry(module, name, getattr(mod, name)))
    return "\n".join(out)


def _inline(text: str) -> str:
    """reST-style inline markup to Markdown: ``x`` -> `x`, :class:`X` -> `X`."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


_UNDERLINES = {"=": 0, "-": 1, "~": 2}


def _column_table(block: list[str]) -> list[str] | None:
    """A two-column plain-text table (terms at column 0, their text from one fixed column on,
    continuation lines indented to it) as a Markdown table; None if the block is not one."""
    starts = [m.end() for ln in block if not ln.startswith(" ") for m in [re.search(r"\S {2,}(?=\S)", ln)] if m]
    if not starts:
        return None
    off = max(set(starts), key=starts.count)
    rows: list[list[str]] = []
    for ln in block:
        left, right = ln[:off].strip(), ln[off:].strip()
        if ln[:off].strip() and not ln.startswith(" ") and len(ln) > off and ln[off - 1] != " ":
            return None  # text runs across the column boundary: not this layout
        if left and not (rows and rows[-1][0].endswith(",")):
            rows.append([left, right])
        elif rows:
            rows[-1][0] = (rows[-1][0] + " " + left).strip()
            rows[-1][1] = (rows[-1][1] + " " + right).strip()
        else:
            return None
    cell = lambda t: _inline(t).replace("|", "\\|")  # noqa: E731
    return ["| | |", "|---|---|", *(f"| {cell(a)} | {cell(b)} |" for a, b in rows)]


def rst_like_to_markdown(doc: str, top_level: int = 2) -> str:
    """Ember's module docstrings are plain text with reST-style underlined headings and column
    tables; turn headings into Markdown headings and keep column blocks as preformatted text."""
    lines = inspect.cleandoc(doc).splitlines()
    out: list[str] = []
    block: list[str] = []

    def flush() -> None:
        if not block:
            return
        columnar = any(re.search(r"\S {2,}\S", ln) for ln in block) or any(ln.startswith(" ") for ln in block)
        table = _column_table(block) if columnar else None
        if table:
            out.extend([*table, ""])
        elif columnar:
            out.extend(["```text", *block, "```", ""])
        else:
            text = _inline(" ".join(ln.strip() for ln in block))
            out.extend([text[:-1] if text.endswith("::") else text, ""])
        block.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and nxt and set(nxt.strip()) <= set(_UNDERLINES) and len(set(nxt.strip())) == 1 and len(nxt.strip()) >= 3:
            flush()
            level = top_level + _UNDERLINES[nxt.strip()[0]]
            out.extend(["#" * level + " " + _inline(line.strip()), ""])
            i += 2
            continue
        if not line.strip():
            flush()
        elif line.lstrip().startswith(("- ", "* ")) and not block:
            out.append(_inline(line))
            if not nxt.strip():
                out.append("")
        else:
            block.append(line)
        i += 1
    flush()
    return "\n".join(out).rstrip() + "\n"


def cli_help(args: list[str]) -> str:
    """The text ``ember ARGS --help`` prints (argparse's own, at 100 columns)."""
    import os

    from ember.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
            build_parser().parse_args([*args, "--help"])
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return buf.getvalue()


def object_doc(dotted: str) -> str:
    """The docstring of ``module.attr[.attr...]`` (a private method is fine), as Markdown."""
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        for attr in parts[k:]:
            obj = getattr(obj, attr)
        return rst_like_to_markdown(inspect.getdoc(obj) or "", top_level=3)
    raise ImportError(dotted)


def expand_markers(text: str) -> str:
    """``{{ember-help vae}}`` -> the help text in a code block; ``{{docstring a.b.c}}`` -> that
    object's docstring."""
    text = re.sub(r"\{\{ember-help ([^}]*)\}\}", lambda m: "```text\n" + cli_help(m.group(1).split()).rstrip() + "\n```", text)
    text = re.sub(r"\{\{docstring ([^}]*)\}\}", lambda m: object_doc(m.group(1).strip()), text)
    if "{{pyro-coverage}}" in text:
        import pyro_names

        text = text.replace("{{pyro-coverage}}", pyro_names.coverage_table())
    return text
