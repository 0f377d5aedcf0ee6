"""Trace: the record of one execution of a stochastic function."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ember.runtime import Message, ScoreParts, is_guide_latent, is_validation_enabled, scale_and_mask
from ember.runtime import is_subsample as site_is_subsample

__all__ = ["Trace", "site_is_subsample", "scale_and_mask", "site_log_prob"]


def site_log_prob(site: Message) -> torch.Tensor:
    """The scaled, masked log-density of a sample site (its batch shape), computed once.

    The one definition every estimator, sampler and predictor uses: fills ``site.log_prob``,
    ``site.unscaled_log_prob`` and ``site.log_prob_sum`` and returns ``site.log_prob``.
    """
    lp = site.log_prob
    if lp is not None:
        return lp
    fn = site.fn
    lp = fn.log_prob(site.value, *site.args, **site.kwargs)
    site.unscaled_log_prob = lp
    scale, mask = site.scale, site.mask
    if mask is not None or not (type(scale) is float and scale == 1.0):
        lp = scale_and_mask(lp, scale, mask)
    site.log_prob = lp
    site.log_prob_sum = lp.sum() if lp.dim() else lp
    return lp


def _shape_fixes(site: Message, shape: torch.Size, d: int, deepest: int) -> str:
    """The fixes for a log-density dim ``d`` that no plate declares."""
    n_event = len(shape) - deepest  # the undeclared dims left of the plates
    fixes = [f"a plate for dim {d} (with plate(name, {shape[d]}): ...)"]
    if len(site.fn.batch_shape) >= len(shape):
        fixes.append(f".to_event({n_event}) if those dims belong to one event")
    else:
        fixes.append(f".expand({list(shape[:n_event])}).to_event({n_event}) if the value's dims belong to one event")
    fixes.append("a reshape (an observation shaped [N, 1] inside plate(N) broadcasts to [N, N]: pass data.squeeze(-1))")
    return "Fix it with " + "; or ".join(fixes) + "."


def _shape_str(shape: Any) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


class Trace:
    """An ordered mapping from site name to site (a processed :class:`Message`).

    ``trace.nodes[name]`` is the site; it supports ``site["value"]`` and ``site.value``.
    ``_INPUT`` and ``_RETURN`` nodes hold the call's arguments and return value.
    """

    def __init__(self, graph_type: str = "flat") -> None:
        self.nodes: OrderedDict[str, Message] = OrderedDict()
        self.graph_type = graph_type
        self._succ: dict = {}
        self._pred: dict = {}
        # How many batch dims (from the right) the log-density shape check covers (Pyro's
        # window). The ELBOs set it (infinite unless the user gives max_plate_nesting); left at
        # None it is the deepest plate dim of the trace, as Pyro's MCMC and Importance guess it.
        self.max_plate_nesting: float | None = None

    # ---- building --------------------------------------------------------------------
    def add_node(self, site_name: str, **kwargs: Any) -> None:
        """Pyro-style ``add_node(name, type=..., value=..., ...)``."""
        msg = Message(kwargs.pop("type"), site_name)
        for k, v in kwargs.items():
            msg[k] = v
        self._add_site(msg)

    def _add_site(self, msg: Message) -> None:
        name = msg.name
        nodes = self.nodes
        if name in nodes:
            old = nodes[name]
            if old.type != msg.type:
                raise RuntimeError(f"site '{name}' is already in the trace as a {old.type} site; it cannot also be a {msg.type} site")
            if msg.type == "subsample":
                # (the same plate object entered again draws no new indices: no second message)
                raise RuntimeError(
                    f"Multiple plates named '{name}' in one run (two different plate objects, sizes "
                    f"{old.fn.size} and {msg.fn.size}). A trace keeps one set of indices per plate name, so replaying "
                    f"it would give the second plate the first one's indices. Give each plate its own name, or create "
                    f"the plate once and enter that object again (p = plate('{name}', ...); with p: ...; with p: ...)."
                )
            if msg.type != "param":
                raise RuntimeError(
                    f"Multiple {msg.type} sites named '{name}'. Every sample site in one run of a model "
                    f"needs a unique name; inside loops or recursion build it from the step, e.g. "
                    f"pyro.sample(f'{name}_{{t}}', ...)."
                )
        nodes[name] = msg

    def remove_node(self, name: str) -> None:
        del self.nodes[name]
        for p in self._pred.pop(name, ()):
            self._succ[p].discard(name)
        for q in self._succ.pop(name, ()):
            self._pred[q].discard(name)

    # ---- edges (Pyro's graph API; Ember's traces record none themselves) -----------------
    def add_edge(self, site1: str, site2: str) -> None:
        """Record that site ``site2`` depends on site ``site1``."""
        for n in (site1, site2):
            if n not in self.nodes:
                raise KeyError(f"add_edge: no site '{n}' in the trace (sites: {list(self.nodes)[:10]})")
        self._succ.setdefault(site1, set()).add(site2)
        self._pred.setdefault(site2, set()).add(site1)

    @property
    def edges(self) -> Iterator[tuple]:
        """The recorded edges ``(site1, site2)``: none unless added with :meth:`add_edge`."""
        for a, succ in self._succ.items():
            for b in succ:
                yield a, b

    def predecessors(self, site_name: str) -> set:
        """The sites with an edge into ``site_name``."""
        if site_name not in self.nodes:
            raise KeyError(f"predecessors: no site '{site_name}' in the trace")
        return self._pred.get(site_name, set())

    def successors(self, site_name: str) -> set:
        """The sites with an edge from ``site_name``."""
        if site_name not in self.nodes:
            raise KeyError(f"successors: no site '{site_name}' in the trace")
        return self._succ.get(site_name, set())

    # ---- mapping protocol --------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self.nodes

    def __iter__(self) -> Iterator[str]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def __repr__(self) -> str:
        return f"Trace({list(self.nodes)})"

    def copy(self) -> Trace:
        new = Trace(self.graph_type)
        new.nodes = OrderedDict((k, v.copy()) for k, v in self.nodes.items())
        new._succ = {k: set(v) for k, v in self._succ.items()}
        new._pred = {k: set(v) for k, v in self._pred.items()}
        return new

    def detach_(self) -> Trace:
        for site in self.nodes.values():
            if site.type in ("sample", "param") and isinstance(site.value, torch.Tensor):
                site.value = site.value.detach()
        return self

    # ---- views -------------------------------------------------------------------------
    @property
    def stochastic_nodes(self) -> list:
        return [n for n, s in self.nodes.items() if is_guide_latent(s)]

    @property
    def observation_nodes(self) -> list:
        return [n for n, s in self.nodes.items() if s.type == "sample" and s.is_observed]

    @property
    def param_nodes(self) -> list:
        return [n for n, s in self.nodes.items() if s.type == "param"]

    @property
    def reparameterized_nodes(self) -> list:
        return [
            n
            for n, s in self.nodes.items()
            if is_guide_latent(s) and getattr(s.fn, "has_rsample", False)
        ]

    @property
    def nonreparam_stochastic_nodes(self) -> list:
        rep = set(self.reparameterized_nodes)
        return [n for n in self.stochastic_nodes if n not in rep]

    def iter_stochastic_nodes(self) -> Iterator:
        for name, site in self.nodes.items():
            if is_guide_latent(site):
                yield name, site

    # ---- log densities -----------------------------------------------------------------
    def compute_log_prob(self, site_filter: Callable[[str, Message], bool] = lambda name, site: True) -> None:
        """Fill ``site.log_prob`` (masked and scaled), ``site.unscaled_log_prob`` and
        ``site.log_prob_sum`` for every sample site, once (cached)."""
        validate = is_validation_enabled()
        window = self.max_plate_nesting
        if validate and window is None:
            window = max((-f.dim for s in self.nodes.values() if s.type == "sample" for f in s.cond_indep_stack if f.dim is not None), default=0)
        for name, site in self.nodes.items():
            if site.type != "sample" or site.log_prob is not None or not site_filter(name, site):
                continue
            try:
                site_log_prob(site)
            except (ValueError, RuntimeError) as e:
                raise type(e)(
                    f"Error while computing log_prob at site '{name}' ({type(site.fn).__name__}):\n{e}\n{self.format_shapes(last_site=name)}"
                ) from e
            if validate:
                self._check_log_prob_shape(name, site, site.unscaled_log_prob, window)

    def log_prob_sum(self, site_filter: Callable[[str, Message], bool] = lambda name, site: True) -> torch.Tensor:
        """Sum over sample sites of the scaled, masked log-density: a scalar tensor."""
        self.compute_log_prob(site_filter)
        total = 0.0
        for name, site in self.nodes.items():
            if site.type == "sample" and site.log_prob_sum is not None and site_filter(name, site):
                total = total + site.log_prob_sum
        if not isinstance(total, torch.Tensor):
            total = torch.tensor(total)
        return total

    def compute_score_parts(self) -> None:
        """Fill ``site.score_parts`` of every sample site with a :class:`~ember.runtime.ScoreParts`
        ``(log_prob, score_function, entropy_term)``, as Pyro does: a distribution with ``rsample``
        gives ``(log_prob, 0, log_prob)``, one without ``(log_prob, unscaled log_prob, 0)``; ``log_prob``
        and ``entropy_term`` are scaled and masked, ``score_function`` is not."""
        self.compute_log_prob()
        for site in self.nodes.values():
            if site.type == "sample" and site.log_prob is not None and site.score_parts is None:
                if getattr(site.fn, "has_rsample", False):
                    site.score_parts = ScoreParts(site.log_prob, 0, site.log_prob)
                else:
                    site.score_parts = ScoreParts(site.log_prob, site.unscaled_log_prob, 0)

    def _check_log_prob_shape(self, name: str, site: Message, lp: torch.Tensor, max_plate_nesting: float = math.inf) -> None:
        """Pyro's rule: every dim a plate declares has the plate's size (or 1) in the log_prob;
        a dim left of the deepest plate dim, within ``max_plate_nesting`` dims from the right,
        that no plate declares must be 1 (else it would be summed as if it were data: an
        observation shaped ``[N, 1]`` in ``plate(N)`` gives an ``[N, N]`` log-density). Dims
        right of the deepest plate that no plate declares are free (summed)."""
        shape = lp.shape
        expected: dict = {}
        for frame in site.cond_indep_stack:
            d = frame.dim
            if d is not None:
                expected[d] = frame
        deepest = -min(expected, default=0)
        window = int(min(len(shape), max_plate_nesting))
        for d in range(-window, 0):
            size = shape[d]
            frame = expected.get(d)
            if frame is not None:
                if size != frame.size and size != 1 and frame.size >= 0:
                    raise ValueError(
                        f"At site '{name}', dim {d} of the log_prob has size {size}, but plate '{frame.name}' declares "
                        f"size {frame.size} there. Check the shapes of the value and the distribution's parameters, and use "
                        f".to_event(...) for dims that belong to one event.\n{self.format_shapes(last_site=name)}"
                    )
            elif -d > deepest and size != 1:
                plates = ", ".join(f"'{f.name}' at dim {f.dim}" for f in site.cond_indep_stack if f.dim is not None) or "none"
                value = site.value
                vshape = _shape_str(value.shape) if isinstance(value, torch.Tensor) else "?"
                raise ValueError(
                    f"Invalid log_prob shape at site '{name}': the log_prob has shape {_shape_str(shape)}, so size {size} "
                    f"at dim {d}, but no plate declares that dim (plates: {plates}). Its terms would be summed as if they "
                    f"were independent data. The value has shape {vshape}; the distribution {type(site.fn).__name__} has "
                    f"batch_shape {_shape_str(site.fn.batch_shape)} and event_shape {_shape_str(site.fn.event_shape)}. "
                    f"{_shape_fixes(site, shape, d, deepest)}\n{self.format_shapes(last_site=name)}"
                )

    # ---- display -----------------------------------------------------------------------
    def format_shapes(self, title: str = "Trace Shapes:", last_site: str | None = None) -> str:
        """Pyro's table of shapes, up to ``last_site``: each param's shape, then for each sample site
        (plates' index sites included, as in Pyro) its distribution's ``batch | event`` shape, its
        value's, and its log_prob's once computed. Batch dims are right-aligned, event dims
        left-aligned after the ``|``."""
        if not self.nodes:
            return title
        rows: list = [(title, [], []), ("Param Sites:", [], [])]
        for name, site in self._nodes_until(last_site):
            if site.type == "param":
                rows.append((name, _dims(getattr(site.value, "shape", ())), []))
        rows.append(("Sample Sites:", [], []))
        any_log_prob = any(s.type == "sample" and s.log_prob is not None for _, s in self._nodes_until(last_site))
        for name, site in self._nodes_until(last_site):
            if site.type not in ("sample", "subsample"):
                continue
            fn_event = tuple(getattr(site.fn, "event_shape", ())) if site.type == "sample" else ()
            fn_batch = tuple(getattr(site.fn, "batch_shape", ())) if site.type == "sample" else ()
            rows.append((f"{name} dist", _dims(fn_batch) + ["|"], _dims(fn_event)))
            shape = tuple(getattr(site.value, "shape", ()))
            cut = len(shape) - len(fn_event)
            rows.append(("value", _dims(shape[:cut]) + ["|"], _dims(shape[cut:])))
            lp = site.log_prob if site.type == "sample" else None
            if lp is not None or (site.type == "subsample" and any_log_prob):
                rows.append(("log_prob", _dims(getattr(lp, "shape", ())) + ["|"], []))
        return _right_justified_table(rows)

    def _nodes_until(self, last_site: str | None) -> Iterator:
        for name, site in self.nodes.items():
            yield name, site
            if name == last_site:
                return


def _dims(shape: Any) -> list:
    return [str(int(s)) for s in shape]


def _right_justified_table(rows: list) -> str:
    """Rows ``(name, middle cells, right cells)`` as text: the middle cells (batch dims, then
    ``|``) right-aligned as a group, the right ones (event dims) left-aligned; every cell
    right-justified in its column, the columns one space apart."""
    n_mid = max(len(m) for _, m, _ in rows)
    n_right = max(len(r) for _, _, r in rows)
    grid = [[name] + [""] * (n_mid - len(mid)) + mid + right + [""] * (n_right - len(right)) for name, mid, right in rows]
    widths = [max(len(row[j]) for row in grid) for j in range(len(grid[0]))]
    return "\n".join(" ".join(c.rjust(w) for c, w in zip(row, widths)) for row in grid)
