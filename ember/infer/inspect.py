"""Inspect a model's structure: the dependencies between its sites, and a picture of it.

:func:`get_dependencies` runs the model once with *provenance*: every sampled value (and, when
asked, every parameter) is wrapped in a tensor subclass that carries the set of site names it was
computed from, and every torch operation on such tensors passes the union of its inputs' sets on.
A site's parents are then the sites named by the provenance of its distribution's parameters.
This costs a ``__torch_function__`` call per operation, so it is used only here (one run), never
by inference. :func:`render_model` draws the result with graphviz (``pip install graphviz``; to
write image files also the ``dot`` program: ``apt-get install graphviz``, ``brew install graphviz``
or ``conda install graphviz``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ember.poutine.messenger import Messenger
from ember.runtime import Message, is_deterministic, is_observed

__all__ = ["get_dependencies", "get_model_relations", "render_model"]

_EMPTY: frozenset = frozenset()


class _Provenance(torch.Tensor):
    """A tensor that remembers which sites it was computed from (``_ember_prov``)."""

    _ember_prov: frozenset

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        prov = _collect(args, set()) | _collect(kwargs, set())
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        return _attach(out, frozenset(prov)) if prov else out


def _attach(obj: Any, prov: frozenset) -> Any:
    if isinstance(obj, torch.Tensor):
        t = obj.as_subclass(_Provenance)
        t._ember_prov = prov | getattr(obj, "_ember_prov", _EMPTY)
        return t
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(_attach(o, prov) for o in obj)
    if isinstance(obj, list):
        return [_attach(o, prov) for o in obj]
    return obj


def _tag(value: torch.Tensor, prov: frozenset) -> torch.Tensor:
    """``value`` carrying exactly ``prov`` (what it was computed from is forgotten)."""
    t = value.as_subclass(_Provenance)
    t._ember_prov = prov
    return t


def _collect(obj: Any, seen: set, depth: int = 0) -> set:
    """The union of the provenance of every tensor reachable from ``obj`` (tensors, containers,
    distributions and transforms through their attributes)."""
    out: set = set()
    if depth > 6 or id(obj) in seen:
        return out
    if isinstance(obj, torch.Tensor):
        return set(getattr(obj, "_ember_prov", _EMPTY))
    seen.add(id(obj))
    if isinstance(obj, dict):
        items = obj.values()
    elif isinstance(obj, (list, tuple)):
        items = obj
    elif isinstance(obj, (torch.distributions.Distribution, torch.distributions.Transform)):
        items = vars(obj).values()
    else:
        return out
    for v in items:
        out |= _collect(v, seen, depth + 1)
    return out


def _is_delta(msg: Message) -> bool:
    fn = msg.fn
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return type(fn).__name__ == "Delta"


def _is_tracked(msg: Message, include_deterministic: bool) -> bool:
    """Whether a site is a node of the dependency graph (its value is tagged with its name):
    every sample site but, unless ``include_deterministic``, deterministic and ``Delta`` sites
    (values pass through them to the sites they were computed from) and masked observations."""
    if include_deterministic:
        return True
    if is_observed(msg) and msg.mask is False:
        return False
    return not (is_deterministic(msg) or _is_delta(msg))


def _log_prob_provenance(msg: Message) -> set:
    """The sites and params ``msg``'s log-density was computed from (its value's included)."""
    try:
        fn = msg.fn.base_dist if is_deterministic(msg) and hasattr(msg.fn, "base_dist") else msg.fn
        return _collect(fn.log_prob(msg.value), set())
    except Exception:  # a distribution that cannot score this value: the parameters still say it
        return set()


class _TrackProvenance(Messenger):
    """Record each sample site's parents and tag its value (and params) with its own name."""

    def __init__(self, include_deterministic: bool = False) -> None:
        super().__init__()
        self.include_deterministic = include_deterministic
        self.parents: dict[str, set] = {}
        self.sites: dict[str, Message] = {}
        self.param_constraint: dict[str, str] = {}

    def _pyro_post_sample(self, msg: Message) -> None:
        if msg.name in self.sites:
            return
        parents = _collect(msg.fn, set()) | _collect(msg.args, set()) | _collect(msg.kwargs, set()) | _collect(msg.mask, set())
        parents |= _log_prob_provenance(msg)
        if is_deterministic(msg):
            parents |= _collect(msg.value, set())  # the sites its value was computed from
        parents.discard(msg.name)
        self.parents[msg.name] = parents
        self.sites[msg.name] = msg
        if isinstance(msg.value, torch.Tensor) and _is_tracked(msg, self.include_deterministic):
            msg.value = _tag(msg.value, frozenset({msg.name}))

    def _pyro_post_param(self, msg: Message) -> None:
        if isinstance(msg.value, torch.Tensor):
            constraint = msg.args[2] if len(msg.args) > 2 and msg.args[2] is not None else torch.distributions.constraints.real
            self.param_constraint.setdefault(msg.name, str(constraint))
            msg.value = _tag(msg.value.detach(), frozenset({"param:" + msg.name}))


def _track(model: Callable, model_args: tuple | None, model_kwargs: dict | None, include_deterministic: bool) -> _TrackProvenance:
    """One run of ``model`` with provenance (no gradients, the caller's random stream untouched)."""
    tracker = _TrackProvenance(include_deterministic)
    with torch.random.fork_rng(devices=[]), torch.no_grad(), tracker:
        model(*(model_args or ()), **(model_kwargs or {}))
    return tracker


def get_model_relations(model: Callable, model_args: tuple | None = None, model_kwargs: dict | None = None,
                        include_deterministic: bool = False, *, include_params: bool = True) -> dict:
    """Run ``model`` once with provenance and describe it, as Pyro's ``get_model_relations``:

    * ``"sample_sample"``: ``{site: [sample sites its log-density depends on]}``;
    * ``"sample_param"``: ``{site: [params (``param``, ``module``) it depends on]}``;
    * ``"sample_dist"``: ``{site: distribution class name}`` (``"Deterministic"`` for
      ``deterministic`` sites);
    * ``"param_constraint"``: ``{param: its constraint, as a string}``;
    * ``"plate_sample"``: ``{plate: [sites in it]}``;
    * ``"observed"``: the observed sites (deterministic ones included, as in Pyro);

    and, for Ember's ``render_model``, ``"plates"`` (``{site: [plate names, outermost first]}``),
    ``"plate_sizes"`` and ``"deterministic"``. Lists are in execution order. Without
    ``include_deterministic`` a deterministic or ``Delta`` site is no node of its own to the
    sites downstream: they depend on what its value was computed from. ``include_params=False``
    leaves ``sample_param`` empty."""
    tracker = _track(model, model_args, model_kwargs, include_deterministic)
    names = list(tracker.sites)
    params = list(tracker.param_constraint)
    sample_sample, sample_param, sample_dist, plates, plate_sample, plate_sizes = {}, {}, {}, {}, {}, {}
    for name in names:
        msg = tracker.sites[name]
        parents = tracker.parents[name]
        sample_sample[name] = [p for p in names if p in parents and p != name]
        sample_param[name] = [p for p in params if "param:" + p in parents] if include_params else []
        base = msg.fn
        while hasattr(base, "base_dist") and not isinstance(base, torch.distributions.TransformedDistribution):
            base = base.base_dist  # Independent, masks
        sample_dist[name] = "Deterministic" if is_deterministic(msg) else type(base).__name__
        frames = [f for f in msg.cond_indep_stack if f.name is not None and f.vectorized is not False]
        plates[name] = [f.name for f in frames]
        for f in frames:
            plate_sizes[f.name] = f.size
            plate_sample.setdefault(f.name, []).append(name)
    return {
        "sample_sample": sample_sample,
        "sample_param": sample_param,
        "sample_dist": sample_dist,
        "param_constraint": dict(tracker.param_constraint),
        "plate_sample": plate_sample,
        "observed": [n for n in names if is_observed(tracker.sites[n])],
        "plates": plates,
        "plate_sizes": plate_sizes,
        "deterministic": [n for n in names if is_deterministic(tracker.sites[n])],
    }


def get_dependencies(model: Callable, model_args: tuple | None = None, model_kwargs: dict | None = None,
                     include_deterministic: bool = False) -> dict:
    """The dependencies between a model's sample sites, from one run with provenance (Pyro's
    ``get_dependencies``, same layout and results):

    * ``"prior_dependencies"``: ``{site: {upstream latent: set()}}`` for every latent and observed
      site, in model order: the latent sites its log-density was computed from, itself included;
    * ``"posterior_dependencies"``: ``{latent: {site: plates}}``, the prior edges reversed (each
      latent maps to the downstream latent and observed sites that depend on it, itself
      included) and moralised (latent co-parents of a common child depend on each other). The
      set of plates says along which plates the dependence is complete rather than elementwise:
      ``a`` in plate ``p`` feeding ``a.sum()`` gives ``{"a": {"a": {"p"}, ...}}``.

    Deterministic and ``Delta`` sites (and masked observations) are left out; with
    ``include_deterministic`` (as in Pyro 1.9) the sites downstream of a deterministic site do not
    see through it to what it was computed from."""
    tracker = _track(model, model_args, model_kwargs, include_deterministic)
    # as in Pyro, deterministic sites are never nodes here; with include_deterministic their values
    # are tagged, so the sites downstream of one lose their edges to what it was computed from
    sites = [m for m in tracker.sites.values() if _is_tracked(m, False)]
    observed = {m.name for m in sites if m.is_observed}
    plates = {m.name: {f.name for f in m.cond_indep_stack if f.vectorized is not False and f.name is not None} for m in sites}
    prior: dict[str, dict] = {m.name: {m.name: set()} for m in sites}
    for i, down in enumerate(sites):
        parents = tracker.parents[down.name]
        for up in sites[:i]:
            if up.name not in observed and isinstance(up.value, torch.Tensor) and up.value.numel() and up.name in parents:
                prior[down.name][up.name] = set()
    posterior: dict[str, dict] = {m.name: {} for m in sites if m.name not in observed}
    for d, ups in prior.items():
        for u, p in ups.items():
            if u not in observed:
                posterior[u][d] = set(p)
    rank = {m.name: i for i, m in enumerate(reversed(sites))}
    for d, ups in prior.items():
        latent_ups = {u: p for u, p in ups.items() if u not in observed}
        for u1, p1 in latent_ups.items():
            for u2, p2 in latent_ups.items():
                if rank[u1] <= rank[u2]:
                    p12 = posterior[u2].setdefault(u1, set())
                    p12 |= (plates[u1] & plates[u2]) - plates[d]
                    p12 |= plates[u2] & p1
                    p12 |= plates[u1] & p2
    return {"prior_dependencies": prior, "posterior_dependencies": posterior}


def render_model(model: Callable, model_args: tuple | None = None, model_kwargs: dict | None = None,
                 filename: str | None = None, render_distributions: bool = False, render_params: bool = False,
                 render_deterministic: bool = False) -> Any:
    """A ``graphviz.Digraph`` of the model: one node per sample site (latent: white ellipse;
    observed: shaded; deterministic: dashed), an edge from each parent to its child, each plate a
    box (cluster) labelled with its name and size, nested plates nested. With
    ``render_distributions`` each label names the site's distribution; with ``render_params`` the
    parameters (``ember.param``, ``ember.module``) a site's distribution uses are drawn as plain
    text nodes. ``render_deterministic`` makes deterministic sites nodes of the graph in their own
    right (downstream sites then depend on them, not on what they were computed from). With ``filename`` (e.g. ``"model.png"``) the picture is also written there (this
    needs graphviz's ``dot`` program)."""
    try:
        import graphviz
    except ImportError:
        raise ImportError("render_model needs the graphviz package: pip install graphviz (and, to write images, the "
                          "dot program: apt-get install graphviz / brew install graphviz / conda install graphviz)") from None
    rel = get_model_relations(model, model_args, model_kwargs, include_deterministic=render_deterministic,
                              include_params=render_params)
    graph = graphviz.Digraph()
    observed, deterministic = set(rel["observed"]), set(rel["deterministic"])

    def node_attrs(name: str) -> dict:
        label = f"{name}\n~ {rel['sample_dist'][name]}" if render_distributions and name not in deterministic else name
        attrs = {"label": label, "shape": "ellipse"}
        if name in deterministic:
            attrs.update(style="dashed")
        elif name in observed:
            attrs.update(style="filled", fillcolor="gray")
        return attrs

    # plates: a tree of clusters keyed by the path of plate names
    tree: dict = {}
    for name, path in rel["plates"].items():
        node = tree
        for p in path:
            node = node.setdefault(p, {})
        node.setdefault(None, []).append(name)

    def draw(g: Any, node: dict) -> None:
        for name in node.get(None, []):
            g.node(name, **node_attrs(name))
        for plate, sub in node.items():
            if plate is None:
                continue
            with g.subgraph(name=f"cluster_{plate}") as c:
                c.attr(label=f"{plate} ({rel['plate_sizes'][plate]})", labeljust="r", labelloc="b")
                draw(c, sub)

    draw(graph, tree)
    for child, parents in rel["sample_sample"].items():
        for p in parents:
            graph.edge(p, child)
    if render_params:
        for child, params in rel["sample_param"].items():
            for p in params:
                graph.node(f"param {p}", label=p, shape="plain")
                graph.edge(f"param {p}", child)
    if filename is not None:
        import os

        stem, ext = os.path.splitext(filename)
        try:
            graph.render(stem, format=(ext[1:] or "png"), cleanup=True)
        except graphviz.ExecutableNotFound:
            raise RuntimeError(
                f"render_model: writing {filename} needs graphviz's dot program, which is not installed: apt-get install "
                f"graphviz (Debian/Ubuntu), brew install graphviz (macOS) or conda install graphviz"
            ) from None
    return graph
