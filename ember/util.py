"""Utilities shared across Ember (Pyro's ``pyro.util``).

- Keyword-argument checking: :func:`check_kwargs` makes constructors strict. An unknown
  keyword raises ``TypeError`` naming the closest valid one; a Pyro option that Ember
  accepts but does not implement warns once, naming it.
- Random state: :func:`set_rng_seed`, :func:`get_rng_state`, :func:`set_rng_state` (torch,
  numpy and Python's ``random`` together).
- Non-finite values: :func:`torch_isnan`, :func:`torch_isinf`, :func:`warn_if_nan`,
  :func:`warn_if_inf` (also on the gradient, when the tensor requires one).
- Trace checks: :func:`check_site_shape`, :func:`check_traces_match`,
  :func:`check_model_guide_match`, :func:`check_if_enumerated`,
  :func:`check_traceenum_requirements`.
- Small helpers: :func:`ignore_jit_warnings`, :func:`jit_iter`, :class:`optional`,
  :class:`ExperimentalWarning`, :func:`ignore_experimental_warning`, :func:`deep_getattr`,
  :class:`timed`, :func:`torch_float`.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import math
import numbers
import random
import sys
import timeit
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from itertools import zip_longest
from typing import Any

import numpy as np
import torch

from ember.primitives import set_rng_seed

__all__ = [
    "ExperimentalWarning",
    "check_if_enumerated",
    "check_kwargs",
    "check_model_guide_match",
    "check_site_shape",
    "check_traceenum_requirements",
    "check_traces_match",
    "deep_getattr",
    "get_rng_state",
    "ignore_experimental_warning",
    "ignore_jit_warnings",
    "jit_iter",
    "optional",
    "save_visualization",
    "set_rng_seed",
    "set_rng_state",
    "site_is_subsample",
    "timed",
    "torch_float",
    "torch_isinf",
    "torch_isnan",
    "warn_if_inf",
    "warn_if_nan",
]

_WARNED_IGNORED: set = set()


def check_kwargs(
    owner: str,
    kwargs: Mapping[str, Any],
    valid: Iterable[str] = (),
    ignored: Mapping[str, str] | None = None,
) -> None:
    """Validate the extra keyword arguments ``kwargs`` given to ``owner``.

    ``valid`` lists every keyword ``owner`` accepts (used for the "did you mean" hint);
    ``ignored`` maps accepted-but-unimplemented Pyro options to the reason they have no
    effect: each warns once per (owner, name). Anything else raises ``TypeError``.
    """
    ignored = ignored or {}
    for name in kwargs:
        if name in ignored:
            key = (owner, name)
            if key not in _WARNED_IGNORED:
                _WARNED_IGNORED.add(key)
                warnings.warn(f"{owner}: the Pyro option {name}= is accepted but has no effect in Ember: {ignored[name]}", UserWarning, stacklevel=3)
            continue
        candidates = list(valid) + list(ignored)
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}=?" if close else ""
        raise TypeError(f"{owner} got an unexpected keyword argument {name}={kwargs[name]!r}{hint} (valid: {', '.join(sorted(candidates))})")


# ---- random state ---------------------------------------------------------------------------


def get_rng_state() -> dict[str, Any]:
    """The state of torch's CPU generator, numpy's global generator and Python's ``random``:
    ``{"torch": ByteTensor, "random": tuple, "numpy": tuple}``, for :func:`set_rng_state`.
    (``set_rng_seed`` seeds the three.)"""
    return {"torch": torch.get_rng_state(), "random": random.getstate(), "numpy": np.random.get_state()}


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore a state from :func:`get_rng_state`: the draws that follow repeat those that
    followed it. ``"numpy"`` may be missing (Pyro's states from machines without numpy)."""
    missing = [k for k in ("torch", "random") if k not in state]
    if missing:
        raise KeyError(f"set_rng_state: the state lacks {missing}; pass what get_rng_state() returned (keys 'torch', 'random', 'numpy')")
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])


# ---- non-finite values ----------------------------------------------------------------------


def torch_isnan(x: torch.Tensor | numbers.Number) -> bool | torch.Tensor:
    """Whether ``x`` (a tensor or a number) contains a NaN: a bool, or a bool tensor of shape ``()``
    for a tensor ``x`` of any shape."""
    if isinstance(x, numbers.Number):
        return x != x
    return torch.isnan(x).any()


def torch_isinf(x: torch.Tensor | numbers.Number) -> bool | torch.Tensor:
    """Whether ``x`` (a tensor or a number) contains +inf or -inf: a bool, or a bool tensor of shape ``()`` for a tensor ``x`` of any shape."""
    if isinstance(x, numbers.Number):
        return x in (math.inf, -math.inf)
    return torch.isinf(x).any()


def _caller(filename: str | None, lineno: int | None) -> tuple[str, int]:
    if filename is not None:
        return filename, lineno or 0
    try:
        frame = sys._getframe(2)
    except ValueError:
        return "sys", 1
    return frame.f_code.co_filename, frame.f_lineno


def warn_if_nan(value: Any, msg: str = "", *, filename: str | None = None, lineno: int | None = None) -> Any:
    """Warn (``UserWarning``, attributed to the caller's line) if ``value`` contains a NaN,
    and, for a tensor that requires grad, if its gradient does in the backward pass.
    Returns ``value`` unchanged (a tensor of any shape, or a number)."""
    filename, lineno = _caller(filename, lineno)
    if isinstance(value, torch.Tensor) and value.requires_grad:
        value.register_hook(lambda g: warn_if_nan(g, "backward " + msg, filename=filename, lineno=lineno))
    if torch_isnan(value):
        warnings.warn_explicit(f"Encountered NaN{': ' + msg if msg else '.'}", UserWarning, filename, lineno)
    return value


def warn_if_inf(
    value: Any, msg: str = "", allow_posinf: bool = False, allow_neginf: bool = False, *, filename: str | None = None, lineno: int | None = None
) -> Any:
    """Warn if ``value`` contains +inf (unless ``allow_posinf``) or -inf (unless
    ``allow_neginf``), and likewise for its gradient in the backward pass. Returns ``value``
    unchanged (a tensor of any shape, or a number)."""
    filename, lineno = _caller(filename, lineno)
    if isinstance(value, torch.Tensor) and value.requires_grad:
        value.register_hook(lambda g: warn_if_inf(g, "backward " + msg, allow_posinf, allow_neginf, filename=filename, lineno=lineno))
    is_tensor = isinstance(value, torch.Tensor)
    if not allow_posinf and (bool((value == math.inf).any()) if is_tensor else value == math.inf):
        warnings.warn_explicit(f"Encountered +inf{': ' + msg if msg else '.'}", UserWarning, filename, lineno)
    if not allow_neginf and (bool((value == -math.inf).any()) if is_tensor else value == -math.inf):
        warnings.warn_explicit(f"Encountered -inf{': ' + msg if msg else '.'}", UserWarning, filename, lineno)
    return value


# ---- trace checks ---------------------------------------------------------------------------


def _sample_names(trace: Any) -> set:
    return {name for name, site in trace.nodes.items() if site["type"] == "sample"}


def _site_shape(site: Any) -> Any:
    fn = site["fn"]
    if hasattr(fn, "shape"):
        return fn.shape(*site["args"], **site["kwargs"]) if callable(fn.shape) else fn.shape
    return None


def check_traces_match(trace1: Any, trace2: Any) -> None:
    """Warn if the two traces have different sample sites; raise ``ValueError`` naming the
    site if one they share has different shapes (``batch_shape + event_shape``) in each."""
    vars1, vars2 = _sample_names(trace1), _sample_names(trace2)
    if vars1 != vars2:
        warnings.warn(f"Model vars changed: {sorted(vars1)} vs {sorted(vars2)}", stacklevel=2)
    for name in vars1 & vars2:
        shape1, shape2 = _site_shape(trace1.nodes[name]), _site_shape(trace2.nodes[name])
        if shape1 is not None and shape2 is not None and tuple(shape1) != tuple(shape2):
            raise ValueError(f"Site dims disagree at site '{name}': {tuple(shape1)} vs {tuple(shape2)}")


def check_model_guide_match(model_trace: Any, guide_trace: Any, max_plate_nesting: float = math.inf) -> None:
    """Pyro's model/guide structure check, done by Ember's own (the one every ELBO runs):
    warns about latent sites in only one of model and guide, raises ``ValueError`` on plate
    size clashes and on event-shape mismatches, naming the site. ``max_plate_nesting`` is
    accepted for Pyro's signature: Ember's check compares plate sizes and event shapes,
    which need no bound on the plate dims."""
    from ember.infer.elbo import check_model_guide_match as _check

    _check(model_trace, guide_trace)


def check_site_shape(site: Any, max_plate_nesting: int) -> None:
    """Check a sample site's ``log_prob`` (filled in by ``Trace.compute_log_prob``) against its
    plates: every plate dim must have the plate's size (or 1), no two plates may share a dim,
    and no plate may lie left of ``-max_plate_nesting``. Dims left of ``max_plate_nesting``
    (enumeration, vectorized particles) are not checked. Raises ``ValueError`` naming the
    site, the shapes and a fix."""
    name = site["name"]
    log_prob = site["log_prob"] if "log_prob" in site else None
    if not isinstance(log_prob, torch.Tensor):
        raise ValueError(f"check_site_shape: site '{name}' has no log_prob yet; call trace.compute_log_prob() first")
    actual = list(log_prob.shape)
    expected: list = []
    for f in site["cond_indep_stack"]:
        if f.dim is None:
            continue  # a sequential plate has no dim
        if f.dim >= 0:
            raise ValueError(f"at site '{name}': plate '{f.name}' has dim={f.dim}; plate dims count from the right and are negative")
        if len(expected) < -f.dim:
            expected = [None] * (-f.dim - len(expected)) + expected
        if expected[f.dim] is not None:
            raise ValueError(f"at site '{name}' within plate('{f.name}', dim={f.dim}): dim collision with another plate; give the plates distinct dims")
        expected[f.dim] = f.size
    expected = [-1 if e is None else e for e in expected]
    if len(expected) > max_plate_nesting:
        raise ValueError(f"at site '{name}': plate stack overflow ({len(expected)} plate dims); increase max_plate_nesting to at least {len(expected)}")
    if max_plate_nesting < len(actual):
        actual = actual[len(actual) - int(max_plate_nesting) :]
    for actual_size, expected_size in zip_longest(reversed(actual), reversed(expected), fillvalue=1):
        if expected_size != -1 and expected_size != actual_size:
            raise ValueError(
                f"at site '{name}': invalid log_prob shape {actual} (right of max_plate_nesting={max_plate_nesting}); the plates "
                f"expect {expected} (-1: any size). Fixes: enclose the batched tensor in a plate(...) context, "
                f".to_event(...) the distribution, or .permute() the data dims"
            )
    enum_dim = site["infer"].get("_enumerate_dim")
    if enum_dim is not None:
        batch_shape = site["fn"].batch_shape
        if len(batch_shape) >= -enum_dim and batch_shape[enum_dim] != 1:
            raise ValueError(f"at site '{name}': enumeration dim {enum_dim} conflicts with its batch shape {tuple(batch_shape)}; try a larger markov history")


def check_if_enumerated(guide_trace: Any) -> None:
    """Warn if the guide marks sample sites for enumeration (``infer={"enumerate": ...}``),
    which only an enumerating ELBO honours; the warning names them."""
    enumerated = [name for name, site in guide_trace.nodes.items() if site["type"] == "sample" and site["infer"].get("enumerate")]
    if enumerated:
        warnings.warn(
            f"Found sample sites configured for enumeration: {', '.join(enumerated)}. "
            f"Enumerating them needs an enumerating ELBO (TraceEnum_ELBO); this one samples them.",
            stacklevel=2,
        )


def check_traceenum_requirements(model_trace: Any, guide_trace: Any) -> None:
    """Warn where a site outside a plate follows an enumerated site inside it (in model or
    guide): enumeration sums over synchronized products, so such a site must come first."""
    enumerated = {name for name, site in guide_trace.nodes.items() if site["type"] == "sample" and site["infer"].get("enumerate")}
    for role, trace in (("model", model_trace), ("guide", guide_trace)):
        plate_counters: dict = {}
        contexts: dict = defaultdict(set)
        for name, site in trace.nodes.items():
            if site["type"] != "sample":
                continue
            counter = {f.name: f.counter for f in site["cond_indep_stack"] if f.dim is None}
            context = frozenset(f for f in site["cond_indep_stack"] if f.dim is not None)
            for enum_context, names in contexts.items():
                if not context < enum_context:
                    continue
                bad = sorted(n for n in names if not _are_independent(counter, plate_counters[n]))
                if bad:
                    plates = sorted(f.name for f in enum_context - context)
                    warnings.warn(
                        f"at {role} site '{name}', possibly invalid dependency: expected it to precede sites {bad} to avoid "
                        f"breaking the independence of plates {plates}",
                        RuntimeWarning,
                        stacklevel=2,
                    )
            plate_counters[name] = counter
            if name in enumerated:
                contexts[context].add(name)


def _are_independent(counters1: dict, counters2: dict) -> bool:
    return any(name in counters2 and counters2[name] != c for name, c in counters1.items())


# ---- small helpers --------------------------------------------------------------------------


@contextlib.contextmanager
def ignore_jit_warnings(filter: Iterable | None = None) -> Iterator[None]:
    """Inside a ``torch.jit`` trace, ignore its ``TracerWarning``s (all of them, or those
    whose message matches an entry of ``filter``: a message, or a ``(message, Warning
    class)`` pair). Outside tracing it does nothing."""
    if not torch._C._get_tracing_state():
        yield
        return
    with warnings.catch_warnings():
        if filter is None:
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        else:
            for entry in filter:
                message, category = entry if isinstance(entry, tuple) else (entry, torch.jit.TracerWarning)
                warnings.filterwarnings("ignore", category=category, message=message)
        yield


def jit_iter(tensor: torch.Tensor) -> list:
    """``list(tensor)`` without the JIT's iteration warnings: for ``tensor`` of shape ``(N, *rest)``,
    ``N`` tensors of shape ``rest``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Iterating over a tensor")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        return list(tensor)


class optional:
    """``with optional(cm, condition):`` enters the context manager ``cm`` only if ``condition``."""

    def __init__(self, context_manager: Any, condition: bool) -> None:
        self.context_manager = context_manager
        self.condition = condition

    def __enter__(self) -> Any:
        if self.condition:
            return self.context_manager.__enter__()
        return None

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> Any:
        if self.condition:
            return self.context_manager.__exit__(exc_type, exc_val, exc_tb)
        return None


class ExperimentalWarning(UserWarning):
    """Warns that a feature is experimental (its interface may change)."""


@contextlib.contextmanager
def ignore_experimental_warning() -> Iterator[None]:
    """Silence :class:`ExperimentalWarning` inside the block."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ExperimentalWarning)
        yield


def deep_getattr(obj: Any, name: str) -> Any:
    """``getattr`` along a dotted path: ``deep_getattr(m, "encoder.fc1.weight")``; raises
    ``AttributeError`` at the first missing part."""
    return functools.reduce(getattr, name.split("."), obj)


class timed:
    """``with timed() as t: ...`` then ``t.elapsed`` (seconds, wall clock)."""

    def __enter__(self, timer: Any = timeit.default_timer) -> timed:
        self._timer = timer
        self.start = timer()
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        self.end = self._timer()
        self.elapsed = self.end - self.start


def torch_float(x: Any) -> Any:
    """``x.float()`` for a tensor (same shape, float32), ``float(x)`` otherwise."""
    return x.float() if isinstance(x, torch.Tensor) else float(x)


def site_is_subsample(site: Any) -> bool:
    """Whether ``site`` holds the indices a plate drew (Pyro's ``pyro.util.site_is_subsample``; in
    Ember such sites have the message type ``"subsample"``)."""
    from ember.runtime import is_subsample

    return is_subsample(site)


def save_visualization(trace: Any, graph_output: str) -> None:
    """Draw the latent (white) and observed (grey) sample sites of ``trace`` and its edges (a
    ``"dense"`` trace's dependencies; a flat trace has none) with graphviz to ``graph_output``
    (a file name without extension; graphviz adds ``.pdf``). Needs the ``graphviz`` package
    and its ``dot`` program."""
    try:
        import graphviz
    except ImportError as e:
        raise ImportError(
            "save_visualization needs the graphviz Python package (pip install graphviz) and the dot program "
            "(apt-get install graphviz, brew install graphviz or conda install graphviz)"
        ) from e
    g = graphviz.Digraph()
    for name, site in trace.nodes.items():
        if site.type == "sample":
            fill = "grey" if site.is_observed else "white"
            g.node(name, label=name, shape="ellipse", style="filled", fillcolor=fill)
    for a, b in trace.edges:
        if trace.nodes[a].type == "sample" and trace.nodes[b].type == "sample":
            g.edge(a, b)
    g.render(graph_output, view=False, cleanup=True)
