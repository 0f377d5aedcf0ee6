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


class _TrackProvenance(Messenger):
    """Record each sample site's parents and tag its value (and params) with its own name."""

    def __init__(self, track_params: bool) -> None:
        super().__init__()
        self.track_params = track_params
        self.parents: dict[str, set] = {}
        self.sites: dict[str, Message] = {}
        self.param_users: dict[str, set] = {}

    def _pyro_post_sample(self, msg: Message) -> None:
        if msg.name in self.sites:
            return
        parents = _collect(msg.fn, set()) | _collect(msg.args, set()) | _collect(msg.kwargs, set()) | _collect(msg.mask, set())
        if is_deterministic(msg):
            parents |= _collect(msg.value, set())  # the sites its value was computed from
        self.parents[msg.name] = parents
        self.sites[msg.name] = msg
        if isinstance(msg.value, torch.Tensor):
            msg.value = _tag(msg.value, frozenset({msg.name}))

    def _pyro_post_param(self, msg: Message) -> None:
        if self.track_params and isinstance(msg.value, torch.Tensor):
            msg.value = _tag(msg.value.detach(), frozenset({"param:" + msg.name}))


def get_model_relations(model: Callable, model_args: tuple | None = None, model_kwargs: dict | None = None,
                        include_params: bool = False) -> dict:
    """Run ``model`` once with provenance and describe it: ``{"sample_sample": {site: [parent
    sites]}, "sample_param": {site: [params it uses]}, "sample_dist": {site: distribution class
    name}, "plate_sample": {plate: [sites]}, "observed": [sites], "deterministic": [sites],
    "plates": {site: [plate names, outermost first]}, "plate_sizes": {plate: size}}``. The
    sites are in execution order; a deterministic site's parents are the sites its value was
    computed from."""
    tracker = _TrackProvenance(include_params)
    with torch.no_grad(), tracker:
        model(*(model_args or ()), **(model_kwargs or {}))
    names = list(tracker.sites)
    sample_sample, sample_param, sample_dist, plates, plate_sample, plate_sizes = {}, {}, {}, {}, {}, {}
    for name in names:
        msg = tracker.sites[name]
        parents = tracker.parents[name]
        sample_sample[name] = [p for p in names if p in parents and p != name]
        sample_param[name] = sorted(p[len("param:"):] for p in parents if p.startswith("param:"))
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
        "plate_sample": plate_sample,
        "plates": plates,
        "plate_sizes": plate_sizes,
        "observed": [n for n in names if is_observed(tracker.sites[n]) and not is_deterministic(tracker.sites[n])],
        "deterministic": [n for n in names if is_deterministic(tracker.sites[n])],
    }


def get_dependencies(model: Callable, model_args: tuple | None = None, model_kwargs: dict | None = None) -> dict:
    """The dependencies between a model's sample sites, from one run with provenance.

    Returns ``{"prior_dependencies": {site: {upstream: set()}}, "posterior_dependencies":
    {latent: {upstream: set()}}}`` (Pyro's layout; every site is upstream of itself):

    * prior dependencies: a site's parents in the model (the sites its distribution's parameters
      were computed from), every sample site a key (observed ones too);
    * posterior dependencies: for each latent site, the earlier latent sites it depends on in the
      posterior given the observations: its latent parents and the latent co-parents of its
      children (the moralised graph), which is what a guide for this site should condition on.
    """
    rel = get_model_relations(model, model_args, model_kwargs)
    order = list(rel["sample_sample"])
    prior = {n: {p: set() for p in [n] + rel["sample_sample"][n]} for n in order}
    observed = set(rel["observed"]) | set(rel["deterministic"])
    latents = [n for n in order if n not in observed]
    position = {n: i for i, n in enumerate(order)}
    posterior: dict[str, dict] = {}
    for x in latents:
        ups = {x} | {p for p in rel["sample_sample"][x] if p not in observed}
        for parents in rel["sample_sample"].values():
            if x in parents:
                ups |= {p for p in parents if p not in observed and position[p] < position[x]}
        posterior[x] = {p: set() for p in sorted(ups, key=position.__getitem__)}
    return {"prior_dependencies": prior, "posterior_dependencies": posterior}


def render_model(model: Callable, model_args: tuple | None = None, model_kwargs: dict | None = None,
                 filename: str | None = None, render_distributions: bool = False, render_params: bool = False) -> Any:
    """A ``graphviz.Digraph`` of the model: one node per sample site (latent: white ellipse;
    observed: shaded; deterministic: dashed), an edge from each parent to its child, each plate a
    box (cluster) labelled with its name and size, nested plates nested. With
    ``render_distributions`` each label names the site's distribution; with ``render_params`` the
    parameters (``ember.param``, ``ember.module``) a site's distribution uses are drawn as plain
    text nodes. With ``filename`` (e.g. ``"model.png"``) the picture is also written there (this
    needs graphviz's ``dot`` program)."""
    try:
        import graphviz
    except ImportError:
        raise ImportError("render_model needs the graphviz package: pip install graphviz (and, to write images, the "
                          "dot program: apt-get install graphviz / brew install graphviz / conda install graphviz)") from None
    rel = get_model_relations(model, model_args, model_kwargs, include_params=render_params)
    graph = graphviz.Digraph()
    observed, deterministic = set(rel["observed"]), set(rel["deterministic"])

    def node_attrs(name: str) -> dict:
        label = f"{name}\n~ {rel['sample_dist'][name]}" if render_distributions and name not in deterministic else name
        attrs = {"label": label, "shape": "ellipse"}
        if name in observed:
            attrs.update(style="filled", fillcolor="gray")
        elif name in deterministic:
            attrs.update(style="dashed")
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
