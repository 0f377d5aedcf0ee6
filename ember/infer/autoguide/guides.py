"""Automatic guides: ordinary guides built from one prototype trace of the model.

The first call of an autoguide (or :meth:`AutoGuide.setup`) runs the model once, hidden from
every handler outside, with each latent given its initial value by ``init_loc_fn``. That trace
gives the guide its :class:`Structure`: every latent site's name, shape, support, event dims and
plates, as plain data. The guide's parameters are made from it at once (as ``PyroParam``
attributes, so they live in the parameter store under names such as ``"AutoNormal.locs.z"``),
and :meth:`AutoGuide.save` writes the structure beside the parameters: :meth:`AutoGuide.load`
rebuilds the guide in a new process without calling the model, so ``median()``, ``quantiles()``
and ``Predictive`` answer before any data is seen. The first call on data after a load checks
that the model still has the sites the file describes.

Continuous latents live in unconstrained space: a site with support ``S`` is ``T(u)`` with
``T = biject_to(S)`` and ``u`` real; its guide density includes ``log |det dT/du|``.

- :class:`AutoDelta`: a point (MAP) estimate per site, in constrained space;
- :class:`AutoNormal`: an independent normal per site in unconstrained space (local latents in
  subsampled plates keep full-size parameters and are indexed by the plate's indices);
- :class:`AutoDiagonalNormal`, :class:`AutoMultivariateNormal`,
  :class:`AutoLowRankMultivariateNormal`, :class:`AutoNormalizingFlow` (and its
  :class:`AutoIAFNormal`), :class:`AutoLaplaceApproximation`: one joint distribution over all latents laid end to end in
  one vector of length ``D`` (one draw per step), unpacked into the sites;
- :class:`AutoDiscreteParallel`: learned probs per discrete site, enumerated in parallel by
  ``TraceEnum_ELBO``;
- :class:`AutoGuideList`, :class:`AutoCallable`: compositions and user guides;
- :class:`AutoMessenger` and its :class:`AutoNormalMessenger`, :class:`AutoHierarchicalNormalMessenger`,
  :class:`AutoRegressiveMessenger`: effect-based guides (:class:`~ember.poutine.guide.GuideMessenger`)
  that run the model, each latent drawn from a posterior made as the site is reached.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributions import constraints
from torch.distributions.transforms import AffineTransform

import ember.distributions as dist
from ember.distributions import constraints as ember_constraints
from ember.distributions.util import lean_biject_to, sum_rightmost
from ember.infer.initialization import (
    InitMessenger,
    init_to_feasible,
    init_to_mean,
    init_to_median,
    init_values_of,
    resolve_init_strategy,
)
from ember.nn.module import PyroModule, PyroParam
from ember.params import get_param_store
from ember.params.serialize import CheckpointError, constraint_from_spec, constraint_to_spec, load_digested, save_digested
from ember.poutine.block_messenger import BlockMessenger
from ember.poutine.guide import GuideMessenger
from ember.poutine.plate_messenger import PlateMessenger
from ember.poutine.runtime import get_plates
from ember.poutine.trace_messenger import TraceMessenger
from ember.poutine.trace_struct import Trace
from ember.primitives import sample
from ember.runtime import Message, is_deterministic, is_latent

__all__ = [
    "AutoCallable",
    "AutoContinuous",
    "AutoDelta",
    "AutoDiagonalNormal",
    "AutoDiscreteParallel",
    "AutoGuide",
    "AutoGuideList",
    "AutoIAFNormal",
    "AutoLaplaceApproximation",
    "AutoLowRankMultivariateNormal",
    "AutoMultivariateNormal",
    "AutoNormal",
    "AutoNormalizingFlow",
    "AutoHierarchicalNormalMessenger",
    "AutoMessenger",
    "AutoNormalMessenger",
    "AutoRegressiveMessenger",
    "PlateInfo",
    "SiteInfo",
    "Structure",
]

_FILE_KIND = "ember.autoguide"
# version 2: Pyro's parameter layout (softplus scales, plain ``loc``, AutoIAFNormal's ``transform``)
_FILE_VERSION = 2


def _upgrade_state(guide: Any, state: dict, version: Any, where: str) -> dict:
    """A saved state_dict in the current layout. Version 1 files (Ember before Pyro's layout) held
    exp-constrained scales (``log scale``), ``loc_unconstrained`` and AutoIAFNormal's
    ``transforms.<i>``: rewritten so that the guide gives the same distribution."""
    if version == _FILE_VERSION:
        return state
    if version != 1:
        raise CheckpointError(f"{where}: autoguide file version {version!r}; this Ember reads versions 1 and {_FILE_VERSION}")
    to_softplus = torch.distributions.transform_to(ember_constraints.softplus_positive).inv
    out = {}
    joint = isinstance(guide, AutoContinuous)
    for key, value in state.items():
        if joint and key == "loc_unconstrained":
            key = "loc"
        elif isinstance(guide, AutoIAFNormal) and key.startswith("transforms."):
            key = "transform." + key[len("transforms."):]
        elif (joint and key == "scale_unconstrained") or (isinstance(guide, AutoNormal) and key.startswith("scales.")):
            value = to_softplus(value.exp())
        out[key] = value
    return out


# ---- the structure: plain data about the model's latent sites ---------------------------------------


@dataclass(frozen=True)
class PlateInfo:
    """A vectorized plate of the model: ``size`` (full), ``subsample_size``, ``dim`` (negative)."""

    name: str
    size: int
    subsample_size: int
    dim: int


@dataclass
class SiteInfo:
    """A latent site: ``shape`` is its value's full shape (plate dims at their full size),
    ``event_dim`` its distribution's event dims, ``plates`` the names of its vectorized plates."""

    name: str
    shape: tuple
    event_dim: int
    support: Any
    plates: tuple
    dtype: torch.dtype = torch.float32

    def __post_init__(self) -> None:
        if self.support.is_discrete:  # AutoDiscreteParallel's sites: no unconstrained space
            self.transform, self.identity = None, True
            self.ushape, self.u_event_dim = tuple(self.shape), self.event_dim
            self.numel = math.prod(self.ushape)
            return
        self.transform = lean_biject_to(self.support)
        self.identity = self.support is constraints.real or (
            isinstance(self.support, constraints.independent) and self.support.base_constraint is constraints.real)
        self.ushape = tuple(self.transform.inverse_shape(torch.Size(self.shape)))
        self.u_event_dim = self.event_dim + len(self.ushape) - len(self.shape)
        self.numel = math.prod(self.ushape)

    def batch_pos(self, dim: int, unconstrained: bool = True) -> int:
        """The index (from the left) of plate dim ``dim`` in the (un)constrained value."""
        shape, event = (self.ushape, self.u_event_dim) if unconstrained else (self.shape, self.event_dim)
        return len(shape) - event + dim

    def to_plain(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "event_dim": self.event_dim,
                "support": _support_to_spec(self.support, self.name), "plates": list(self.plates), "dtype": str(self.dtype)}

    @staticmethod
    def from_plain(d: dict) -> SiteInfo:
        dtype = getattr(torch, str(d["dtype"]).replace("torch.", ""), None)
        if not isinstance(dtype, torch.dtype):
            raise CheckpointError(f"autoguide file: site '{d.get('name')}' has an unknown dtype {d['dtype']!r}")
        return SiteInfo(str(d["name"]), tuple(int(s) for s in d["shape"]), int(d["event_dim"]),
                        _support_from_spec(d["support"]), tuple(str(p) for p in d["plates"]), dtype)

    def describe(self) -> str:
        return (f"shape {self.shape}, event_dim {self.event_dim}, support {type(self.support).__name__.lstrip('_')}, "
                f"plates {list(self.plates)}")

    def same_as(self, other: SiteInfo) -> bool:
        return (self.shape == other.shape and self.event_dim == other.event_dim and self.plates == other.plates
                and _support_to_spec(self.support, self.name) == _support_to_spec(other.support, other.name))


def _support_to_spec(support: Any, name: str) -> Any:
    """``constraint_to_spec``, plus the ``integer_interval`` support of a Categorical site."""
    if isinstance(support, constraints.integer_interval):
        return {"type": "integer_interval", "lower": int(support.lower_bound), "upper": int(support.upper_bound)}
    return constraint_to_spec(support, name)


def _support_from_spec(spec: Any) -> Any:
    if isinstance(spec, dict) and spec.get("type") == "integer_interval":
        try:
            return constraints.integer_interval(int(spec["lower"]), int(spec["upper"]))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"malformed support spec {spec!r} ({type(e).__name__}: {e})") from None
    return constraint_from_spec(spec)


class Structure:
    """The latent sites (in the model's order) and vectorized plates of a model."""

    def __init__(self, sites: list[SiteInfo], plates: dict[str, PlateInfo]) -> None:
        self.sites = sites
        self.plates = plates
        self.by_name = {s.name: s for s in sites}

    @staticmethod
    def from_trace(trace: Trace, owner: str, continuous: bool = True) -> Structure:
        sites: list[SiteInfo] = []
        plates: dict[str, PlateInfo] = {}
        for name, site in trace.nodes.items():
            if not is_latent(site) or is_deterministic(site):
                continue
            fn = site.fn
            support = fn.support
            if continuous and support.is_discrete:
                raise ValueError(
                    f"{owner}: latent site '{name}' is discrete ({type(fn).__name__}, support "
                    f"{type(support).__name__.lstrip('_')}); this autoguide covers continuous latents only. Give the site "
                    f"its own guide (AutoGuideList with an AutoCallable part) or hide it: {owner}(poutine.block(model, "
                    f"hide=['{name}'])), and enumerate or marginalise it in the model")
            shape = list(site.value.shape)
            event_dim = len(fn.event_shape)
            names = []
            for f in site.cond_indep_stack:
                if f.dim is None:
                    continue
                full = f.full_size if f.full_size is not None else f.size
                known = plates.get(f.name)
                info = PlateInfo(f.name, int(full), int(f.size), int(f.dim))
                if known is not None and known != info:
                    raise ValueError(f"{owner}: plate '{f.name}' appears with different sizes or dims: {known} and {info}")
                plates[f.name] = info
                pos = len(shape) - event_dim + f.dim
                if pos < 0 or shape[pos] != f.size:
                    raise ValueError(f"{owner}: site '{name}' has shape {tuple(site.value.shape)}, which does not have plate "
                                     f"'{f.name}' of size {f.size} at dim {f.dim}")
                shape[pos] = int(full)
                names.append(f.name)
            sites.append(SiteInfo(name, tuple(shape), event_dim, support, tuple(sorted(names)), site.value.dtype))
        return Structure(sites, plates)

    def to_plain(self) -> dict:
        return {"sites": [s.to_plain() for s in self.sites],
                "plates": [[p.name, p.size, p.subsample_size, p.dim] for p in self.plates.values()]}

    @staticmethod
    def from_plain(d: Any, where: str) -> Structure:
        try:
            sites = [SiteInfo.from_plain(s) for s in d["sites"]]
            plates = {str(p[0]): PlateInfo(str(p[0]), int(p[1]), int(p[2]), int(p[3])) for p in d["plates"]}
        except CheckpointError as e:
            raise CheckpointError(f"{where}: {e}") from None
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise CheckpointError(f"{where}: malformed autoguide structure ({type(e).__name__}: {e})") from None
        return Structure(sites, plates)

    def check_same(self, other: Structure, owner: str) -> None:
        """ValueError naming the first of the guide's sites (``self``) that the model (``other``, now)
        lacks or has with another shape, event dims, support or plates."""
        mine, theirs = self.by_name, other.by_name
        for name, s in mine.items():
            t = theirs.get(name)
            if t is None:
                raise ValueError(f"{owner}: the model no longer has latent site '{name}' that this guide was built for "
                                 f"(its latent sites now: {list(theirs)}); build a new guide for the changed model")
            if not s.same_as(t):
                raise ValueError(f"{owner}: latent site '{name}' has changed since this guide was built: the guide has "
                                 f"{s.describe()}, the model now {t.describe()}; build a new guide for the changed model")
        # latents the model has beyond the guide's are allowed: an observation left out (y=None under
        # Predictive) is one; the ELBO's model/guide check reports the others


def _periodic_repeat(x: torch.Tensor, size: int, pos: int) -> torch.Tensor:
    """``x`` repeated along dim ``pos`` up to ``size`` entries (a subsampled init to full size)."""
    n = x.shape[pos]
    if n == size:
        return x
    idx = torch.arange(size, device=x.device) % n
    return x.index_select(pos, idx)


def _deep_setattr(obj: PyroModule, name: str, value: Any) -> None:
    *parents, leaf = name.split(".")
    for p in parents:
        child = obj._modules.get(p)
        if child is None:
            child = PyroModule()
            setattr(obj, p, child)
        obj = child
    setattr(obj, leaf, value)


def _deep_getattr(obj: Any, name: str) -> Any:
    for p in name.split("."):
        obj = getattr(obj, p)
    return obj


def _check_init_values(owner: str, init_fn: Any, structure: Structure) -> None:
    values = init_values_of(init_fn)
    if values:
        unknown = sorted(set(values) - set(structure.by_name))
        if unknown:
            raise ValueError(f"{owner}: init_to_value names {unknown}, which are not latent sites of the model; its latent "
                             f"sites are {list(structure.by_name)}")


# ---- the base class ---------------------------------------------------------------------------------


class AutoGuide(PyroModule):
    """The base of the autoguides built from a prototype trace.

    :param model: the model (observations conditioned).
    :param init_loc_fn: where the guide starts: an init strategy (``init_to_median``, ...,
        ``init_to_value(values=...)``) or its name.
    :param create_plates: optional ``create_plates(*args, **kwargs) -> plate or list of plates``
        returning the guide's plates (to pass minibatch indices); by default the guide makes
        plates like the model's prototype (same sizes, subsample sizes and dims).

    ``guide(*args, **kwargs)`` (the model's arguments) samples every latent site and returns
    ``{site: value}``.
    """

    _continuous = True

    def __init__(self, model: Callable, *, init_loc_fn: Any = init_to_feasible, create_plates: Callable | None = None) -> None:
        super().__init__(name=type(self).__name__)
        if not callable(model):
            raise TypeError(f"{type(self).__name__}: model must be callable; got {type(model).__name__}")
        object.__setattr__(self, "model", model)  # not a submodule: a PyroModule model keeps its own names
        self.init_loc_fn = resolve_init_strategy(init_loc_fn)
        self.create_plates = create_plates
        self._structure: Structure | None = None
        self._verified = False
        self.prototype_trace: Trace | None = None  # the model's trace from setup (None after load)

    # ---- prototype -------------------------------------------------------------------------------
    def _prototype_trace(self, args: tuple, kwargs: dict) -> Trace:
        model = InitMessenger(self.init_loc_fn, self.model)
        with torch.no_grad(), BlockMessenger():
            return TraceMessenger(model).get_trace(*args, **kwargs)

    def setup(self, *args: Any, **kwargs: Any) -> None:
        """Run the model once (hidden from outer handlers) and make the guide's parameters."""
        trace = self._prototype_trace(args, kwargs)
        owner = type(self).__name__
        structure = Structure.from_trace(trace, owner, self._continuous)
        self._validate(structure)
        _check_init_values(owner, self.init_loc_fn, structure)
        init = {}
        for s in structure.sites:
            v = trace.nodes[s.name].value.detach()
            for p in s.plates:
                info = structure.plates[p]
                v = _periodic_repeat(v, info.size, s.batch_pos(info.dim, unconstrained=False))
            init[s.name] = v
        self._structure = structure
        self._verified = True
        self.prototype_trace = trace
        self._build(init)

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:  # Pyro's name
        self.setup(*args, **kwargs)

    def _validate(self, structure: Structure) -> None:
        """Refuse a structure this guide cannot cover (ValueError naming the site)."""

    def _build(self, init: dict[str, torch.Tensor] | None) -> None:
        """Make the parameters from the structure (``init``: constrained full-size values by
        site; None when a saved state will overwrite them)."""
        raise NotImplementedError  # each guide below defines it

    def _init_value(self, site: SiteInfo, init: dict | None) -> torch.Tensor:
        if init is not None:
            return init[site.name]
        t = site.transform
        return t(torch.zeros(site.ushape, dtype=site.dtype)).detach()

    def _ensure(self, args: tuple, kwargs: dict) -> Structure:
        if self._structure is None:
            self.setup(*args, **kwargs)
        elif not self._verified:
            with torch.random.fork_rng(devices=[]):  # checking draws nothing from the caller's random stream
                trace = self._prototype_trace(args, kwargs)
            self._structure.check_same(Structure.from_trace(trace, type(self).__name__, self._continuous), type(self).__name__)
            self._verified = True
        return self._structure

    def _plates(self, args: tuple, kwargs: dict) -> dict[str, PlateMessenger]:
        structure = self._structure
        if self.create_plates is not None:
            made = self.create_plates(*args, **kwargs)
            if isinstance(made, PlateMessenger):
                made = [made]
            out = {p.name: p for p in made}
            missing = [n for n in structure.plates if n not in out]
            if missing:
                raise ValueError(f"{type(self).__name__}: create_plates returned no plate named {missing}; it returned {list(out)}")
            return out
        return {p.name: PlateMessenger(p.name, p.size, subsample_size=p.subsample_size, dim=p.dim) for p in structure.plates.values()}

    @property
    def prototype_structure(self) -> Structure:
        if self._structure is None:
            raise RuntimeError(f"{type(self).__name__} has not been set up: call it once with the model's arguments "
                               f"(or guide.setup(*args)), or load a saved guide with guide.load(path)")
        return self._structure

    def median(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """``{site: posterior median}``, each of the site's shape in the model with plate dims at their
        full size; the model's arguments are only needed before the guide has been set up."""
        raise NotImplementedError(f"{type(self).__name__} has no median")

    # ---- save and load ----------------------------------------------------------------------------
    def _options(self) -> dict:
        return {}

    def save(self, path: str | os.PathLike) -> None:
        """Write the guide's structure and parameters (plain data, checksummed, no pickle)."""
        save_digested(self._payload(), path, _FILE_KIND)

    def load(self, path: str | os.PathLike) -> AutoGuide:
        """Rebuild the guide from a file :meth:`save` wrote (no model call, no data) and put its
        parameters in the store. The first call on data afterwards checks the model's sites."""
        obj = load_digested(path, _FILE_KIND, what="autoguide")
        if not isinstance(obj, dict) or obj.get("format") != _FILE_KIND:
            raise CheckpointError(f"{os.fspath(path)}: not an Ember autoguide file")
        self._restore(obj, os.fspath(path))
        return self

    def _payload(self) -> dict:
        structure = self.prototype_structure
        state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        return {"format": _FILE_KIND, "version": _FILE_VERSION, "class": type(self).__name__, "name": self._pyro_name,
                "options": self._options(), "structure": structure.to_plain(), "state": state}

    def _restore(self, obj: dict, where: str) -> None:
        if not isinstance(obj, dict) or obj.get("class") != type(self).__name__:
            got = obj.get("class") if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(f"{where}: holds a {got}, not a {type(self).__name__}; load it with that class")
        options = obj.get("options")
        if options != self._options():
            raise CheckpointError(f"{where}: saved with options {options}, but this guide has {self._options()}")
        state = obj.get("state")
        if not isinstance(state, dict):
            raise CheckpointError(f"{where}: malformed autoguide state")
        state = _upgrade_state(self, state, obj.get("version"), where)
        self._structure = Structure.from_plain(obj.get("structure"), where)
        self._verified = False
        self.prototype_trace = None
        self._prepare_restore(state)
        self._build(None)
        try:
            self.load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError(f"{where}: the saved parameters do not fit the saved structure: {str(e).splitlines()[0]}") from None
        self._bind_to_store()

    def _prepare_restore(self, state: dict) -> None:
        """Read what ``_build(None)`` needs from a saved ``state`` (the low-rank guide's rank)."""

    def _bind_to_store(self) -> None:
        """Put this guide's parameters into the store (they win over values held there)."""
        store = get_param_store()
        for mod in self.modules():
            if not isinstance(mod, PyroModule):
                continue
            for name, (constraint, _) in mod._pyro_params.items():
                store.bind(mod._pyro_get_fullname(name), mod._parameters[name + "_unconstrained"], constraint)
            for name, p in mod._parameters.items():
                if p is not None and not name.endswith("_unconstrained"):
                    store.bind(mod._pyro_get_fullname(name), p, constraints.real)


_NO_PLATES = nullcontext()
# Pyro 1.9's autoguides map their scales through the softplus, not exp: a state_dict trained by
# Pyro holds softplus^-1(scale) and must give the same widths here
_SCALE = ember_constraints.softplus_positive


def _positive_init_scale(guide: Any, init_scale: Any) -> float:
    """``init_scale`` as a float, or a ValueError naming the guide."""
    if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)) or not init_scale > 0:
        raise ValueError(f"{type(guide).__name__}: init_scale must be a positive number; got {init_scale!r}")
    return float(init_scale)


def _plated(plates: dict, site: SiteInfo) -> ExitStack | nullcontext:
    if not site.plates:
        return _NO_PLATES
    stack = ExitStack()
    for p in site.plates:
        stack.enter_context(plates[p])
    return stack


def _subsample(x: torch.Tensor, site: SiteInfo, plates: dict, unconstrained: bool = True) -> torch.Tensor:
    """Full-size ``x`` indexed along each subsampled plate dim by the plate's indices."""
    for p in site.plates:
        plate = plates[p]
        if plate.subsample_size < plate.size:
            x = x.index_select(site.batch_pos(plate.dim, unconstrained), plate.subsample)
    return x


# ---- AutoDelta and AutoNormal: one distribution per site --------------------------------------------


class AutoDelta(AutoGuide):
    """A point estimate per latent site (MAP in the constrained space): the site's value is a
    parameter with the site's support as its constraint."""

    def __init__(self, model: Callable, *, init_loc_fn: Any = init_to_median, create_plates: Callable | None = None) -> None:
        super().__init__(model, init_loc_fn=init_loc_fn, create_plates=create_plates)

    def _build(self, init: dict | None) -> None:
        for s in self.prototype_structure.sites:
            _deep_setattr(self, s.name, PyroParam(self._init_value(s, init), s.support, s.event_dim))

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Run as the guide (same arguments as the model): sample every latent site as a point mass at its
        parameter and return ``{site: value}``, each value of the site's shape in the model (subsampled
        plate dims at their subsample size)."""
        structure = self._ensure(args, kwargs)
        plates = self._plates(args, kwargs)
        out = {}
        for s in structure.sites:
            with _plated(plates, s):
                value = _subsample(_deep_getattr(self, s.name), s, plates, unconstrained=False)
                out[s.name] = sample(s.name, dist.Delta(value, event_dim=s.event_dim))
        return out

    def median(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The point estimates ``{site: value}``, each of the site's shape with plate dims at full size."""
        if self._structure is None:
            self.setup(*args, **kwargs)
        return {s.name: _deep_getattr(self, s.name).detach() for s in self._structure.sites}


class AutoNormal(AutoGuide):
    """An independent normal per latent site in unconstrained space (mean-field), pushed through
    ``biject_to(support)``. Parameters ``AutoNormal.locs.<site>`` and ``AutoNormal.scales.<site>``
    (``softplus_positive``, as in Pyro) have the site's full unconstrained shape; inside a subsampled plate only the
    entries of the plate's indices are used, so local latents of a minibatch model work."""

    def __init__(self, model: Callable, *, init_loc_fn: Any = init_to_feasible, init_scale: float = 0.1,
                 create_plates: Callable | None = None) -> None:
        super().__init__(model, init_loc_fn=init_loc_fn, create_plates=create_plates)
        self._init_scale = _positive_init_scale(self, init_scale)

    def _options(self) -> dict:
        return {}

    def _build(self, init: dict | None) -> None:
        self.locs = PyroModule()
        self.scales = PyroModule()
        for s in self.prototype_structure.sites:
            u = s.transform.inv(self._init_value(s, init)).detach()
            _deep_setattr(self.locs, s.name, PyroParam(u, constraints.real, s.u_event_dim))
            _deep_setattr(self.scales, s.name, PyroParam(torch.full_like(u, self._init_scale), _SCALE, s.u_event_dim))

    def _site_dist(self, s: SiteInfo, loc: torch.Tensor, scale: torch.Tensor) -> Any:
        fn = dist.Normal(loc, scale).to_event(s.u_event_dim)
        if s.identity:
            return fn
        return dist.TransformedDistribution(fn, [s.transform.with_cache()])

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Run as the guide (same arguments as the model): sample every latent site from its own normal in
        unconstrained space, pushed onto the site's support, and return ``{site: value}``, each value of the
        site's shape in the model (subsampled plate dims at their subsample size)."""
        structure = self._ensure(args, kwargs)
        plates = self._plates(args, kwargs)
        out = {}
        for s in structure.sites:
            with _plated(plates, s):
                loc = _subsample(_deep_getattr(self.locs, s.name), s, plates)
                scale = _subsample(_deep_getattr(self.scales, s.name), s, plates)
                out[s.name] = sample(s.name, self._site_dist(s, loc, scale))
        return out

    def _loc_scale(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return _deep_getattr(self.locs, name).detach(), _deep_getattr(self.scales, name).detach()

    def median(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """``{site: biject_to(support)(loc)}``, each of the site's shape with plate dims at full size."""
        if self._structure is None:
            self.setup(*args, **kwargs)
        return {s.name: s.transform(self._loc_scale(s.name)[0]) for s in self._structure.sites}

    def quantiles(self, quantiles: Sequence[float] | torch.Tensor, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """``{site: tensor [len(quantiles), *site_shape]}``: the marginal quantiles of each
        unconstrained coordinate mapped through ``biject_to(support)`` (exact for elementwise
        transforms)."""
        if self._structure is None:
            self.setup(*args, **kwargs)
        q = torch.as_tensor(quantiles, dtype=torch.get_default_dtype())
        out = {}
        for s in self._structure.sites:
            loc, scale = self._loc_scale(s.name)
            qs = q.reshape((-1,) + (1,) * loc.dim()).to(loc.dtype)
            out[s.name] = s.transform(torch.distributions.Normal(loc, scale).icdf(qs))
        return out


# ---- AutoContinuous: one joint distribution over all latents ---------------------------------------


def _refuse_subsampled(guide: Any, structure: Structure, why: str) -> None:
    """Raise ``ValueError`` naming the first latent site in a subsampling plate (and ``why`` the guide cannot have one)."""
    for s in structure.sites:
        for p in s.plates:
            info = structure.plates[p]
            if info.subsample_size < info.size:
                raise ValueError(f"{type(guide).__name__}: latent site '{s.name}' is in plate '{p}', which subsamples "
                                 f"{info.subsample_size} of {info.size}; {why}")


class AutoContinuous(AutoGuide):
    """A joint distribution (:meth:`get_posterior`) over the vector ``z`` of length ``D`` holding
    every latent's unconstrained value end to end, sampled as one auxiliary site
    ``_<Class>_latent`` and unpacked into the model's sites (each a ``Delta`` with the
    log-Jacobian of ``biject_to(support)`` as its density). Sites in subsampled plates are not
    supported (their entries would all be drawn each step): use :class:`AutoNormal`."""

    def __init__(self, model: Callable, *, init_loc_fn: Any = init_to_median, create_plates: Callable | None = None) -> None:
        super().__init__(model, init_loc_fn=init_loc_fn, create_plates=create_plates)

    @property
    def latent_dim(self) -> int:
        return sum(s.numel for s in self.prototype_structure.sites)

    def _validate(self, structure: Structure) -> None:
        _refuse_subsampled(self, structure, "a joint guide needs every entry each step. Use AutoNormal (full-size parameters "
                                            "indexed by the plate) or drop subsample_size")

    def _init_latent(self, init: dict | None) -> torch.Tensor:
        parts = [s.transform.inv(self._init_value(s, init)).detach().reshape(-1) for s in self.prototype_structure.sites]
        if not parts:
            return torch.zeros(0)
        dtype = parts[0].dtype
        for p in parts[1:]:
            dtype = torch.promote_types(dtype, p.dtype)
        return torch.cat([p.to(dtype) for p in parts])

    def _build_loc_scale(self, init: dict | None, scale_factor: float = 1.0) -> torch.Tensor:
        """The parameters ``loc`` ``[D]`` (from the init strategy; a plain ``nn.Parameter``, state_dict
        key ``loc`` as in Pyro) and ``scale`` ``[D]`` (``softplus_positive``, ``init_scale`` times
        ``scale_factor``) that the normal guides share; returns the initial ``loc``."""
        loc = self._init_latent(init)
        self.loc = torch.nn.Parameter(loc)
        self.scale = PyroParam(torch.full_like(loc, self._init_scale * scale_factor), _SCALE, 1)
        return loc

    def get_posterior(self, *args: Any, **kwargs: Any) -> Any:
        """The distribution over the latent vector ``z`` (event shape ``[D]``)."""
        raise NotImplementedError  # each guide below defines it

    def _unpack(self, z: torch.Tensor, plated: bool = True) -> Iterable[tuple[SiteInfo, torch.Tensor]]:
        """``(site, unconstrained value)`` from ``z`` ``[..., D]``. With ``plated``, the leading dims
        come from plates outside the model's (vectorized particles, Predictive's samples), sized 1
        at the model's plate dims, which the site's own dims take; otherwise they are a plain
        batch ``[..., *site_shape]``."""
        lead = z.shape[:-1]
        offset = 0
        for s in self.prototype_structure.sites:
            u = z.narrow(-1, offset, s.numel)
            offset += s.numel
            if not plated:
                yield s, u.reshape(lead + s.ushape)
                continue
            k = len(s.ushape) - s.u_event_dim  # the site's own batch (plate) dims
            keep = lead[:max(len(lead) - k, 0)]
            if any(d != 1 for d in lead[len(keep):]):
                raise ValueError(f"{type(self).__name__}: cannot place the latent batch {tuple(lead)} left of site "
                                 f"'{s.name}''s {k} plate dims; put outer plates left of the model's")
            yield s, u.reshape(keep + s.ushape)

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Run as the guide (same arguments as the model): draw the latent vector ``z`` of shape ``(D,)``
        (``D`` = ``latent_dim``) as one auxiliary site, cut it into the sites' unconstrained values, map
        each onto its support, sample each site as a point mass there and return ``{site: value}``, each
        value of the site's shape in the model."""
        self._ensure(args, kwargs)
        z = sample(f"_{self._pyro_name}_latent", self.get_posterior(*args, **kwargs), infer={"is_auxiliary": True})
        plates = self._plates(args, kwargs)
        out = {}
        for s, u in self._unpack(z):
            with _plated(plates, s):
                if s.identity:
                    value, log_density = u, 0.0
                else:
                    value = s.transform(u)
                    lad = s.transform.log_abs_det_jacobian(u, value)
                    log_density = -sum_rightmost(lad, lad.dim() - (value.dim() - s.event_dim))
                out[s.name] = sample(s.name, dist.Delta(value, log_density=log_density, event_dim=s.event_dim))
        return out

    def sample_latent(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """One draw of the latent vector ``z`` ``[D]`` from :meth:`get_posterior`."""
        if self._structure is None:
            self.setup(*args, **kwargs)
        with self._pyro_context:
            return self.get_posterior(*args, **kwargs).rsample()

    def _loc_scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and marginal standard deviations of ``z`` (each ``[D]``)."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form marginals")

    def _constrain(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {s.name: s.transform(u) for s, u in self._unpack(z, plated=False)}

    def median(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """``{site: biject_to(support)(posterior median of its coordinates)}``, each of the site's shape."""
        if self._structure is None:
            self.setup(*args, **kwargs)
        with torch.no_grad():
            return self._constrain(self._loc_scale()[0])

    def quantiles(self, quantiles: Sequence[float] | torch.Tensor, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """``{site: tensor [len(quantiles), *site_shape]}`` from the normal marginals of ``z``."""
        if self._structure is None:
            self.setup(*args, **kwargs)
        with torch.no_grad():
            loc, scale = self._loc_scale()
            q = torch.as_tensor(quantiles, dtype=loc.dtype).unsqueeze(-1)
            tiny = torch.finfo(loc.dtype).tiny
            z = torch.distributions.Normal(loc, scale.clamp_min(tiny)).icdf(q)
            return self._constrain(torch.where(scale > 0, z, loc))  # a point mass (AutoLaplaceApproximation): its value


class AutoDiagonalNormal(AutoContinuous):
    """``z ~ Normal(loc, scale)`` (independent coordinates); parameters
    ``AutoDiagonalNormal.loc`` ``[D]`` and ``.scale`` ``[D]`` (``softplus_positive``, as in Pyro)."""

    def __init__(self, model: Callable, *, init_loc_fn: Any = init_to_median, init_scale: float = 0.1,
                 create_plates: Callable | None = None) -> None:
        super().__init__(model, init_loc_fn=init_loc_fn, create_plates=create_plates)
        self._init_scale = _positive_init_scale(self, init_scale)

    def _build(self, init: dict | None) -> None:
        self._build_loc_scale(init)

    def get_posterior(self, *args: Any, **kwargs: Any) -> Any:
        return dist.Normal(self.loc, self.scale).to_event(1)

    def _loc_scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc.detach(), self.scale.detach()


class AutoMultivariateNormal(AutoContinuous):
    """``z ~ MultivariateNormal(loc, scale_tril=diag(scale) @ U)`` with ``U`` unit lower triangular
    (as in Pyro: the scales and the correlations learn at their own pace); parameters
    ``AutoMultivariateNormal.loc`` ``[D]``, ``.scale`` ``[D]`` (``softplus_positive``) and
    ``.scale_tril`` ``[D, D]`` (``unit_lower_cholesky``: ``U`` itself), with Pyro's constraints.
    :meth:`get_scale_tril` gives the Cholesky factor of the covariance."""

    def __init__(self, model: Callable, *, init_loc_fn: Any = init_to_median, init_scale: float = 0.1,
                 create_plates: Callable | None = None) -> None:
        super().__init__(model, init_loc_fn=init_loc_fn, create_plates=create_plates)
        self._init_scale = _positive_init_scale(self, init_scale)

    def _build(self, init: dict | None) -> None:
        loc = self._build_loc_scale(init)
        self.scale_tril = PyroParam(torch.eye(loc.numel(), dtype=loc.dtype), ember_constraints.unit_lower_cholesky, 2)

    def get_scale_tril(self) -> torch.Tensor:
        """The Cholesky factor ``[D, D]`` of the posterior covariance of ``z``."""
        return self.scale.unsqueeze(-1) * self.scale_tril

    def set_scale_tril(self, scale_tril: torch.Tensor) -> None:
        """Set the posterior covariance's Cholesky factor ``[D, D]`` (lower triangular, positive diagonal)."""
        diag = scale_tril.diagonal(dim1=-2, dim2=-1)
        self.scale = diag.detach().clone()
        self.scale_tril = (scale_tril / diag.unsqueeze(-1)).detach().clone()

    def get_posterior(self, *args: Any, **kwargs: Any) -> Any:
        return dist.MultivariateNormal(self.loc, scale_tril=self.get_scale_tril())

    def _loc_scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        tril = self.get_scale_tril().detach()
        return self.loc.detach(), tril.pow(2).sum(-1).sqrt()


class AutoLowRankMultivariateNormal(AutoContinuous):
    """``z ~ LowRankMultivariateNormal(loc, cov_factor * scale, scale**2)`` with ``rank`` columns
    (default ``round(sqrt(D))``, as in Pyro; ``guide.rank`` holds it once built); parameters
    ``.loc`` ``[D]``, ``.cov_factor`` ``[D, rank]`` (drawn from ``N(0, 1/rank)``) and ``.scale``
    ``[D]`` (``softplus_positive``, starting at ``init_scale / sqrt(2)``), so each coordinate's
    initial variance is about ``init_scale**2``."""

    def __init__(self, model: Callable, *, init_loc_fn: Any = init_to_median, init_scale: float = 0.1,
                 rank: int | None = None, create_plates: Callable | None = None) -> None:
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise ValueError(f"{type(self).__name__}: rank must be a positive integer; got {rank!r}")
        super().__init__(model, init_loc_fn=init_loc_fn, create_plates=create_plates)
        self._init_scale = _positive_init_scale(self, init_scale)
        self._rank_option = rank
        self.rank = rank

    def _options(self) -> dict:
        return {"rank": self._rank_option}

    def _prepare_restore(self, state: dict) -> None:
        # the default rank is a function of D; a file keeps the rank it was built with (older
        # Ember files used ceil(sqrt(D)))
        f = state.get("cov_factor")
        if self._rank_option is None and isinstance(f, torch.Tensor) and f.dim() == 2:
            self.rank = int(f.shape[-1])

    def _build(self, init: dict | None) -> None:
        loc = self._build_loc_scale(init, scale_factor=0.5 ** 0.5)
        d = loc.numel()
        if self.rank is None or init is not None and self._rank_option is None:
            self.rank = max(1, int(round(d ** 0.5)))
        rank = self.rank
        self.cov_factor = torch.nn.Parameter(torch.randn(d, rank, dtype=loc.dtype) / math.sqrt(rank) if init is not None
                                             else torch.zeros(d, rank, dtype=loc.dtype))

    def get_posterior(self, *args: Any, **kwargs: Any) -> Any:
        scale = self.scale
        return dist.LowRankMultivariateNormal(self.loc, self.cov_factor * scale.unsqueeze(-1), scale * scale)

    def _loc_scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.scale.detach()
        f = self.cov_factor.detach() * scale.unsqueeze(-1)
        return self.loc.detach(), (f.pow(2).sum(-1) + scale * scale).sqrt()


class AutoLaplaceApproximation(AutoContinuous):
    """A point ``loc`` ``[D]`` in unconstrained space, fitted by SVI (MAP of the density of ``z``,
    Jacobians included); :meth:`laplace_approximation` then returns an
    :class:`AutoMultivariateNormal` with that mean and the inverse Hessian of ``-log p`` at it as
    covariance."""

    def _build(self, init: dict | None) -> None:
        self.loc = torch.nn.Parameter(self._init_latent(init))

    def get_posterior(self, *args: Any, **kwargs: Any) -> Any:
        """``Delta(loc).to_event(1)`` (an ``Independent``, as Pyro returns)."""
        return dist.Delta(self.loc).to_event(1)

    def _loc_scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        loc = self.loc.detach()
        return loc, torch.zeros_like(loc)

    def negative_log_density(self, z: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``-log p(T(z), data) - log |det dT/dz|`` for a latent vector ``z`` ``[D]`` (a scalar)."""
        from ember.poutine.misc_messengers import _SubstituteValuesMessenger

        values, logdet = {}, 0.0
        for s, u in self._unpack(z, plated=False):
            v = s.transform(u)
            values[s.name] = v
            if not s.identity:
                logdet = logdet + s.transform.log_abs_det_jacobian(u, v).sum()
        with BlockMessenger():
            tr = TraceMessenger(_SubstituteValuesMessenger(self.model, data=values)).get_trace(*args, **kwargs)
        tr.compute_log_prob()
        lp = sum(site.log_prob_sum for site in tr.nodes.values() if site.type == "sample" and site.log_prob_sum is not None)
        return -(lp + logdet)

    def laplace_approximation(self, *args: Any, **kwargs: Any) -> AutoMultivariateNormal:
        """An :class:`AutoMultivariateNormal` at ``loc`` with covariance ``H^-1`` (``H`` the
        Hessian of :meth:`negative_log_density` there, computed by autograd)."""
        if self._structure is None:
            self.setup(*args, **kwargs)
        loc = self.loc.detach()
        hessian = torch.autograd.functional.hessian(lambda z: self.negative_log_density(z, *args, **kwargs), loc)
        hessian = 0.5 * (hessian + hessian.transpose(-1, -2))
        try:
            cov = torch.cholesky_inverse(torch.linalg.cholesky(hessian))
            scale_tril = torch.linalg.cholesky(cov)
        except torch.linalg.LinAlgError:
            raise ValueError("AutoLaplaceApproximation: the Hessian of -log p at loc is not positive definite (loc is not a "
                             "local maximum: train longer, or check the model)") from None
        guide = AutoMultivariateNormal(self.model, init_loc_fn=self.init_loc_fn, create_plates=self.create_plates)
        guide._structure = self._structure
        guide._verified = True
        guide._build(None)
        with torch.no_grad():
            guide.loc.copy_(loc)
            guide.set_scale_tril(scale_tril)
        guide._bind_to_store()
        return guide


class AutoNormalizingFlow(AutoContinuous):
    """``z = T(e)``, ``e ~ Normal(0, I_D)`` (``D`` = ``latent_dim``), with ``T = init_transform_fn(D)``
    a :class:`~torch.distributions.Transform` on vectors ``[..., D]`` (a ``TransformModule`` or
    ``ComposeTransformModule`` when it has learnable parameters), e.g.
    ``functools.partial(iterated, 2, block_autoregressive)``; the guide does not depend on the
    model's arguments. :meth:`get_posterior` is ``TransformedDistribution(base, [T])`` with event
    shape ``[D]``, so ``log q(z) = log N(e; 0, I) - log|det dT/de|``.

    The transform is built when the guide is set up and held as the submodule ``transform``
    (state_dict keys ``transform.<path>``); its parameters are registered as Pyro does for a plain
    ``nn.Module``, under ``"<guide name>.transform$$$<path>"`` in the parameter store. The guide
    starts where the transform starts (``init_to_feasible`` only shapes the prototype). Pyro has no
    ``median``/``quantiles`` for flows; here they are estimated from 1000 draws of ``z`` (``[D]``
    medians; ``[len(quantiles), *site_shape]`` per site). A saved guide is loaded by a guide made
    with the same ``init_transform_fn``.

    :param model: the model.
    :param init_transform_fn: ``init_transform_fn(latent_dim) -> Transform``.
    :param create_plates: as for :class:`AutoGuide`.
    """

    def __init__(self, model: Callable, init_transform_fn: Callable[[int], Any], *,
                 create_plates: Callable | None = None) -> None:
        if not callable(init_transform_fn):
            raise TypeError(f"{type(self).__name__}: init_transform_fn must be callable (latent_dim -> Transform); got "
                            f"{type(init_transform_fn).__name__}")
        super().__init__(model, init_loc_fn=init_to_feasible, create_plates=create_plates)
        self._init_transform_fn = init_transform_fn
        self.transform: Any = None

    @property
    def _transform_name(self) -> str:
        return f"{self._pyro_name}.transform"

    def _build(self, init: dict | None) -> None:
        d = self.latent_dim
        t = self._init_transform_fn(d)
        if not isinstance(t, torch.distributions.Transform):
            raise TypeError(f"{type(self).__name__}: init_transform_fn({d}) returned a {type(t).__name__}, not a "
                            f"torch.distributions.Transform (a TransformModule when it has parameters)")
        self.transform = t

    def _register_transform(self) -> None:
        """Register the transform's parameters (``<guide>.transform$$$<path>``), as ``ember.module`` does."""
        from ember.primitives import module

        t = self.transform
        if isinstance(t, torch.nn.Module) and next(t.parameters(), None) is not None:
            module(self._transform_name, t)

    def _bind_to_store(self) -> None:
        super()._bind_to_store()
        if isinstance(self.transform, torch.nn.Module):
            store = get_param_store()
            prefix = self._transform_name + "$$$"
            for n in [n for n in store.keys() if n.startswith(prefix)]:
                del store[n]  # the loaded values win over whatever the store held
            self._register_transform()

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """As ``nn.Module.load_state_dict``; Pyro's ``_prototype_tensor`` entry (a dtype/device
        placeholder, not a parameter of the flow) is ignored, so Pyro's state_dicts load."""
        state_dict = {k: v for k, v in state_dict.items() if k != "_prototype_tensor"}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def get_posterior(self, *args: Any, **kwargs: Any) -> Any:
        """``TransformedDistribution(Normal(0, 1).expand([D]).to_event(1), [transform])`` (event shape ``[D]``)."""
        if self.transform is None:
            self.setup(*args, **kwargs)
        self._register_transform()
        d = self.latent_dim
        like = next(self.transform.parameters(), None) if isinstance(self.transform, torch.nn.Module) else None
        kw = {"dtype": like.dtype, "device": like.device} if like is not None else {}
        base = dist.Normal(torch.zeros(d, **kw), torch.ones(d, **kw)).to_event(1)
        return dist.TransformedDistribution(base, [self.transform])

    def _draws(self) -> torch.Tensor:
        with self._pyro_context, torch.no_grad():
            return self.get_posterior().sample(torch.Size([1000]))

    def _loc_scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        z = self._draws()
        return z.median(0).values, z.std(0)

    def quantiles(self, quantiles: Sequence[float] | torch.Tensor, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """``{site: tensor [len(quantiles), *site_shape]}`` from 1000 draws of ``z``."""
        if self._structure is None:
            self.setup(*args, **kwargs)
        z = self._draws()
        q = torch.as_tensor(quantiles, dtype=z.dtype, device=z.device)
        return self._constrain(torch.quantile(z, q, dim=0))


class AutoIAFNormal(AutoNormalizingFlow):
    """:class:`AutoNormalizingFlow` with ``T`` ``num_transforms`` affine autoregressive flows
    (``iterated(num_transforms, affine_autoregressive, hidden_dims=hidden_dim, ...)`` over MADE
    networks of ``hidden_dim`` units, default ``[3D + 1]``), as in Pyro; parameters
    ``"AutoIAFNormal.transform$$$<i>.arn.layers.<j>.weight"`` etc. ``quantiles`` are estimated
    from 1000 draws. ``init_loc_fn`` is accepted for Pyro's signature and has no effect."""

    def __init__(self, model: Callable, hidden_dim: int | list[int] | None = None, init_loc_fn: Any = None,
                 num_transforms: int = 1, **init_transform_kwargs: Any) -> None:
        from ember.distributions.transforms import affine_autoregressive, iterated

        if isinstance(num_transforms, bool) or not isinstance(num_transforms, int) or num_transforms < 1:
            raise ValueError(f"AutoIAFNormal: num_transforms must be a positive integer; got {num_transforms!r}")
        if init_transform_kwargs:
            from ember.util import check_kwargs

            check_kwargs("AutoIAFNormal", init_transform_kwargs,
                         valid={"log_scale_min_clip", "log_scale_max_clip", "sigmoid_bias", "stable"})
        self.hidden_dim = [hidden_dim] if isinstance(hidden_dim, int) else (list(hidden_dim) if hidden_dim is not None else None)
        self.num_transforms = num_transforms
        self.transform_kwargs = dict(init_transform_kwargs)
        super().__init__(model, functools.partial(iterated, num_transforms, affine_autoregressive,
                                                  hidden_dims=self.hidden_dim, **self.transform_kwargs))
        if init_loc_fn is not None:
            self.init_loc_fn = resolve_init_strategy(init_loc_fn)

    def _options(self) -> dict:
        return {"hidden_dim": self.hidden_dim, "num_transforms": self.num_transforms, **self.transform_kwargs}

    def _build(self, init: dict | None) -> None:
        d = self.latent_dim
        if d < 2:
            raise ValueError(f"AutoIAFNormal needs at least 2 latent dimensions (the model has {d}); use AutoNormal")
        super()._build(init)


# ---- discrete latents, enumerated in parallel ------------------------------------------------------


def _discrete_kind(support: Any) -> tuple[Any, int]:
    """``(distribution class, number of categories or 0)`` of a discrete site from its support."""
    if support is constraints.boolean:
        return dist.Bernoulli, 0
    if isinstance(support, constraints.integer_interval) and support.lower_bound == 0:
        return dist.Categorical, int(support.upper_bound) + 1
    if support is constraints.one_hot:
        return dist.OneHotCategorical, 0
    return None, 0


class AutoDiscreteParallel(AutoGuide):
    """A mean-field guide over the model's discrete latent sites, for ``TraceEnum_ELBO``: each site
    gets a learned distribution of its own kind (``Bernoulli``, ``Categorical`` or
    ``OneHotCategorical``) whose ``probs`` is the parameter ``<site>_probs`` (store name
    ``"AutoDiscreteParallel.<site>_probs"``; constraint ``unit_interval`` for Bernoulli,
    ``simplex`` otherwise), started at the model's own probs, of shape ``[*site_shape]`` for a
    Bernoulli or OneHotCategorical site and ``[*site_shape, K]`` for a Categorical with ``K``
    categories (plate dims at full size). Each site is sampled inside its plates with
    ``infer={"enumerate": "parallel"}``, so the ELBO sums over its values exactly.

    As in Pyro, the model is traced under ``config_enumerate`` (parallel), and every latent site
    must then be marked for parallel enumeration (continuous sites, discrete distributions other
    than those three, and sites the model marks ``"sequential"`` raise ``NotImplementedError``
    naming the site), as must sequential ``plate`` loops. Plates that subsample are refused
    (ValueError). There is no ``median``.
    """

    _continuous = False

    def __init__(self, model: Callable, *, create_plates: Callable | None = None) -> None:
        super().__init__(model, create_plates=create_plates)

    def _prototype_trace(self, args: tuple, kwargs: dict) -> Trace:
        from ember.infer.enum import config_enumerate

        with torch.no_grad(), BlockMessenger():
            trace = TraceMessenger(config_enumerate(self.model, default="parallel")).get_trace(*args, **kwargs)
        owner = type(self).__name__
        for name, site in trace.nodes.items():
            if not is_latent(site) or is_deterministic(site):
                continue
            if site.infer.get("enumerate") != "parallel":
                raise NotImplementedError(
                    f'{owner}: expected sample site "{name}" to be discrete and configured for parallel enumeration; it '
                    f"is a {type(site.fn).__name__} with infer={dict(site.infer)}. Give the other sites their own guide "
                    f"(AutoGuideList, with {owner}(poutine.block(model, expose=[...])) as one part) or leave them to enumeration")
            kind, _ = _discrete_kind(site.fn.support)
            if kind is None or not isinstance(site.fn, (torch.distributions.Bernoulli, torch.distributions.Categorical,
                                                        torch.distributions.OneHotCategorical)):
                raise NotImplementedError(f"{owner}: sample site '{name}' is a {type(site.fn).__name__}; this guide "
                                          f"supports Bernoulli, Categorical and OneHotCategorical sites")
            if any(f.dim is None for f in site.cond_indep_stack):
                raise NotImplementedError(f"{owner} does not support sequential pyro.plate (site '{name}' is in a "
                                          f"sequential plate); use a vectorized plate")
        return trace

    def _validate(self, structure: Structure) -> None:
        _refuse_subsampled(self, structure, "this guide needs the whole plate")

    def _probs_shape(self, s: SiteInfo) -> tuple:
        kind, k = _discrete_kind(s.support)
        return tuple(s.shape) + ((k,) if kind is dist.Categorical else ())

    def _build(self, init: dict | None) -> None:
        trace = self.prototype_trace if init is not None else None
        for s in self.prototype_structure.sites:
            kind, _ = _discrete_kind(s.support)
            shape = self._probs_shape(s)
            if trace is not None:
                probs = torch.broadcast_to(trace.nodes[s.name].fn.probs.detach(), shape).clone()
            else:
                probs = torch.full(shape, 0.5 if kind is dist.Bernoulli else 1.0 / shape[-1])
            _deep_setattr(self, f"{s.name}_probs", PyroParam(probs, kind.arg_constraints["probs"]))

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Run as the guide (same arguments as the model): sample each discrete site from its learned
        distribution, marked for parallel enumeration, and return ``{site: value}`` (under
        ``TraceEnum_ELBO`` each value is the enumerated support, shaped ``[K, 1, ..., 1]``)."""
        structure = self._ensure(args, kwargs)
        plates = self._plates(args, kwargs)
        out = {}
        for s in structure.sites:
            kind, _ = _discrete_kind(s.support)
            probs = _deep_getattr(self, f"{s.name}_probs")
            with _plated(plates, s):
                out[s.name] = sample(s.name, kind(probs=probs), infer={"enumerate": "parallel"})
        return out


# ---- compositions ---------------------------------------------------------------------------------


class AutoGuideList(PyroModule):
    """Several guides for disjoint sets of the model's sites (each part built for the model with
    the other parts' sites hidden, e.g. ``AutoDelta(poutine.block(model, hide=["z"]))``); calling
    it calls every part and merges their ``{site: value}``."""

    def __init__(self, model: Callable, *, create_plates: Callable | None = None) -> None:
        super().__init__(name=type(self).__name__)
        object.__setattr__(self, "model", model)
        self.create_plates = create_plates
        self._parts = torch.nn.ModuleList()

    def append(self, part: Callable) -> None:
        """Add a guide (an autoguide, or any callable, wrapped in :class:`AutoCallable`)."""
        if not isinstance(part, torch.nn.Module):
            part = AutoCallable(self.model, part)
        if isinstance(part, PyroModule):
            part._pyro_set_supermodule(f"{self._pyro_name}.{len(self._parts)}", self._pyro_context)
        self._parts.append(part)

    add = append

    def __getitem__(self, i: int) -> Any:
        return self._parts[i]

    def __len__(self) -> int:
        return len(self._parts)

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Run every part in turn (same arguments as the model) and return the union of their ``{site: value}``
        dicts, each value of the site's shape in the model."""
        out: dict = {}
        for part in self._parts:
            result = part(*args, **kwargs)
            if isinstance(result, dict):
                out.update(result)
        return out

    def median(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The parts' medians merged: ``{site: value}``, each of the site's shape in the model."""
        out: dict = {}
        for part in self._parts:
            out.update(part.median(*args, **kwargs))
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write every autoguide part (structure and parameters; plain data, checksummed). Parts
        that are user functions (:class:`AutoCallable`) are not written: their parameters live in
        the parameter store (``ember.get_param_store().save``)."""
        parts = [part._payload() if isinstance(part, AutoGuide) else None for part in self._parts]
        save_digested({"format": _FILE_KIND, "version": _FILE_VERSION, "class": type(self).__name__, "parts": parts}, path, _FILE_KIND)

    def load(self, path: str | os.PathLike) -> AutoGuideList:
        """Restore the parts from a file :meth:`save` wrote; append the same parts (same classes,
        same order) first. No model call, no data."""
        where = os.fspath(path)
        obj = load_digested(path, _FILE_KIND, what="autoguide")
        if not isinstance(obj, dict) or obj.get("class") != type(self).__name__ or not isinstance(obj.get("parts"), list):
            got = obj.get("class") if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(f"{where}: holds a {got}, not an AutoGuideList")
        saved = obj["parts"]
        mine = [type(p).__name__ for p in self._parts]
        theirs = [p.get("class") if isinstance(p, dict) else "AutoCallable" for p in saved]
        if mine != theirs:
            raise CheckpointError(f"{where}: saved with parts {theirs}, but this AutoGuideList has {mine}; append the same parts first")
        for part, payload in zip(self._parts, saved):
            if isinstance(part, AutoGuide):
                part._restore(payload, where)
        return self

    def quantiles(self, quantiles: Sequence[float] | torch.Tensor, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The parts' quantiles merged: ``{site: tensor of shape (len(quantiles),) + site shape}``."""
        out: dict = {}
        for part in self._parts:
            out.update(part.quantiles(quantiles, *args, **kwargs))
        return out


class AutoCallable(PyroModule):
    """A user's guide function as a part of :class:`AutoGuideList`; ``median`` (optional) is a
    function of the model's arguments returning ``{site: value}``."""

    def __init__(self, model: Callable, guide: Callable, median: Callable | None = None) -> None:
        super().__init__(name=type(self).__name__)
        if not callable(guide):
            raise TypeError(f"AutoCallable: guide must be callable; got {type(guide).__name__}")
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "_guide", guide)
        object.__setattr__(self, "_median", median)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        result = self._guide(*args, **kwargs)
        return result if isinstance(result, dict) else {}

    def median(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The ``median`` function given to the constructor, called with the model's arguments:
        ``{site: value}``, each of the site's shape in the model."""
        if self._median is None:
            raise NotImplementedError("AutoCallable: no median function was given (AutoCallable(model, guide, median=...))")
        return self._median(*args, **kwargs)


# ---- effect-based autoguides (Pyro's pyro.infer.autoguide.effect) -------------------------------------


class _AutoMessengerMeta(type(GuideMessenger), type(PyroModule)):  # type: ignore[misc]
    """The metaclass of a class that is both a :class:`GuideMessenger` and a :class:`PyroModule`."""


class AutoMessenger(GuideMessenger, PyroModule, metaclass=_AutoMessengerMeta):
    """The base of the effect-based autoguides: a :class:`~ember.poutine.guide.GuideMessenger`
    (it runs the model, each latent drawn from :meth:`get_posterior`) that is a
    :class:`~ember.nn.PyroModule` holding its parameters, made at a site's first visit.

    Parameters are named as Pyro names them, without a prefix (``locs.<site>``,
    ``scales.<site>``). ``amortized_plates``: names of plates over which a site's parameters
    are shared (one value for every item of the plate, e.g. to subsample it); a latent in a
    subsampled plate not named there is refused. Plates outside the model (the ELBO's
    vectorized particles) never give parameters a dim.
    """

    _outer_plates: tuple = ()

    def __init__(self, model: Callable, *, amortized_plates: tuple[str, ...] = ()) -> None:
        PyroModule.__init__(self, name="")  # Pyro names these parameters "locs.<site>", without a prefix
        GuideMessenger.__init__(self, model)
        self.amortized_plates = tuple(amortized_plates)
        self._sites: dict[str, SiteInfo] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Run the model under the guide; ``{name: value}`` of every sample site of the run, each value
        of the site's shape in the model (with the particle dim on the left inside a particle plate)."""
        with self._pyro_context:  # one read of each parameter per run, as a call of a PyroModule
            self._outer_plates = tuple(f.name for f in get_plates())
            try:
                return GuideMessenger.__call__(self, *args, **kwargs)
            finally:
                del self._outer_plates

    forward = __call__

    def call(self, *args: Any, **kwargs: Any) -> tuple:
        """The values of :meth:`__call__` as a tuple, sorted by site name (Pyro's jit-friendly form)."""
        result = self(*args, **kwargs)
        return tuple(v for _, v in sorted(result.items()))

    def get_posterior(self, name: str, prior: Any) -> Any:  # (abstract in GuideMessenger)
        raise NotImplementedError(f"{type(self).__name__} does not define get_posterior")

    # ---- parameters, made at a site's first visit ---------------------------------------------------
    def _transform(self, name: str, prior: Any) -> Any:
        support = prior.support
        if support.is_discrete:
            raise ValueError(f"{type(self).__name__}: latent site '{name}' is discrete ({type(prior).__name__}); it covers "
                             f"continuous latents only (enumerate the site in the model, or use a guide of your own)")
        return lean_biject_to(support)

    def _init_unconstrained(self, name: str, prior: Any, transform: Any) -> torch.Tensor:
        """The unconstrained initial value of site ``name``, reduced over the particle and amortized
        plates and without leading size-1 dims."""
        init_fn = getattr(self, "init_loc_fn", init_to_mean)
        with torch.no_grad():
            value = init_fn(Message("sample", name, prior)).detach()
            return self._adjust_plates(transform.inv(value), transform.domain.event_dim, name)

    @torch.no_grad()
    def _adjust_plates(self, value: torch.Tensor, event_dim: int, name: str = "") -> torch.Tensor:
        """``value`` (a site's shape) reduced to a parameter's: the mean over the plates outside the
        model and the amortized ones, leading size-1 dims dropped."""
        for f in get_plates():
            dim = f.dim - event_dim
            if f.name in self._outer_plates or f.name in self.amortized_plates:
                if -value.dim() <= dim:
                    value = value.mean(dim, keepdim=True)
            elif f.full_size is not None and f.size < f.full_size:
                raise ValueError(f"{type(self).__name__}: latent site '{name}' is in plate '{f.name}', which subsamples {f.size} of "
                                 f"{f.full_size}; its parameters would follow the minibatch, not the items. Name the "
                                 f"plate in amortized_plates= (one value shared by its items), or use AutoNormal "
                                 f"(full-size parameters indexed by the plate)")
        while value.dim() > event_dim and value.shape[0] == 1:
            value = value.squeeze(0)
        return value

    def _new_site(self, name: str, prior: Any, transform: Any, u: torch.Tensor) -> SiteInfo:
        shape = tuple(transform.forward_shape(u.shape))
        return SiteInfo(name, shape, len(prior.event_shape), prior.support, (), u.dtype)

    def _make_site(self, site: SiteInfo, u: torch.Tensor) -> None:
        """Create the parameters of ``site`` from its unconstrained initial value ``u``."""
        raise NotImplementedError

    def _params(self, name: str, prior: Any, transform: Any) -> tuple:
        site = self._sites.get(name)
        if site is None:
            u = self._init_unconstrained(name, prior, transform)
            site = self._new_site(name, prior, transform, u)
            self._make_site(site, self._init_from(site, u, prior, transform))
        return self._read_site(site)

    def _init_from(self, site: SiteInfo, u: torch.Tensor, prior: Any, transform: Any) -> torch.Tensor:
        return u

    def _read_site(self, site: SiteInfo) -> tuple:
        return _deep_getattr(self.locs, site.name), _deep_getattr(self.scales, site.name)

    def _set_loc_scale(self, site: SiteInfo, loc: torch.Tensor, scale: torch.Tensor) -> None:
        event_dim = site.u_event_dim
        _deep_setattr(self, "locs." + site.name, PyroParam(loc, constraints.real, event_dim))
        _deep_setattr(self, "scales." + site.name, PyroParam(scale, constraints.positive, event_dim))  # exp, as in Pyro
        self._sites[site.name] = site

    # ---- save / load: the sites seen so far and the parameters, plain data ---------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the sites seen so far and the parameters (plain data, checksummed, no pickle)."""
        structure = Structure(list(self._sites.values()), {})
        state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        save_digested({"format": _FILE_KIND, "version": 1, "class": type(self).__name__, "name": self._pyro_name, "options": {},
                       "structure": structure.to_plain(), "state": state}, path, _FILE_KIND)

    def load(self, path: str | os.PathLike) -> AutoMessenger:
        """Rebuild the guide from a file :meth:`save` wrote, without running the model."""
        where = os.fspath(path)
        obj = load_digested(path, _FILE_KIND, what="autoguide")
        if not isinstance(obj, dict) or obj.get("class") != type(self).__name__:
            got = obj.get("class") if isinstance(obj, dict) else type(obj).__name__
            raise CheckpointError(f"{where}: holds a {got}, not a {type(self).__name__}")
        structure = Structure.from_plain(obj.get("structure"), where)
        for key in ("locs", "scales", "weights"):
            if key in self._modules:
                delattr(self, key)
        self._sites = {}
        for site in structure.sites:
            self._make_site(site, torch.zeros(site.ushape, dtype=site.dtype))
        try:
            self.load_state_dict(obj.get("state"))
        except (RuntimeError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{where}: the saved parameters do not fit the saved sites: {str(e).splitlines()[0]}") from None
        AutoGuide._bind_to_store(self)  # type: ignore[arg-type]
        return self


def _latents(samples: dict, guide: GuideMessenger) -> dict[str, torch.Tensor]:
    nodes = guide.trace.nodes
    return {n: v for n, v in samples.items() if n in nodes and is_latent(nodes[n])}


class AutoNormalMessenger(AutoMessenger):
    """A normal posterior per latent site in unconstrained space, pushed onto the site's support
    (as :class:`AutoNormal`), made while the model runs. Parameters ``locs.<site>`` and
    ``scales.<site>`` (``positive``: exp, as in Pyro) are created at a site's first visit from
    ``init_loc_fn``. Subclass it and override :meth:`get_posterior` at some sites (using
    ``self.upstream_value(name)`` or the ``prior``), falling back to
    ``super().get_posterior(name, prior)`` elsewhere."""

    def __init__(self, model: Callable, *, init_loc_fn: Any = init_to_mean, init_scale: float = 0.1,
                 amortized_plates: tuple[str, ...] = ()) -> None:
        super().__init__(model, amortized_plates=amortized_plates)
        self.init_loc_fn = resolve_init_strategy(init_loc_fn)
        self._init_scale = _positive_init_scale(self, init_scale)
        self._computing_median = False

    def _make_site(self, site: SiteInfo, u: torch.Tensor) -> None:
        self._set_loc_scale(site, u, torch.full_like(u, self._init_scale))

    def _loc(self, name: str, prior: Any, transform: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self._params(name, prior, transform)[:2]

    def get_posterior(self, name: str, prior: Any) -> Any:
        """A normal in unconstrained space with the site's ``loc`` and ``scale``, pushed through
        ``biject_to(prior.support)`` (while :meth:`median` runs: the point ``biject_to(support)(loc)``)."""
        transform = self._transform(name, prior)
        loc, scale = self._loc(name, prior, transform)
        if self._computing_median:
            return transform(loc)
        fn = dist.Normal(loc, scale).to_event(transform.domain.event_dim)
        if self._sites[name].identity:
            return fn
        return dist.TransformedDistribution(fn, [transform.with_cache()])

    def median(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """``{site: value}`` of the latent sites at the posterior median, each of the site's shape in
        the model: the model runs with each latent at ``biject_to(support)(loc)``. Called without
        arguments on a guide that has seen its sites (or was loaded), it reads the parameters
        without running the model."""
        if not args and not kwargs and self._sites and type(self)._loc is AutoNormalMessenger._loc:
            return {n: s.transform(_deep_getattr(self.locs, n).detach()) for n, s in self._sites.items()}
        self._computing_median = True
        try:
            with torch.no_grad():
                return _latents(self(*args, **kwargs), self)
        finally:
            self._computing_median = False


class AutoHierarchicalNormalMessenger(AutoNormalMessenger):
    """:class:`AutoNormalMessenger` whose mean follows the prior: in unconstrained space the
    posterior's loc is ``loc + weight * biject_to(support).inv(prior.mean)``, where ``prior.mean``
    is the mean given the values drawn upstream (Pyro's hierarchical messenger). ``weight``
    (``weights.<site>``, positive, starting at ``init_weight``) is element-wise (a class with
    ``weight_type = "scalar"`` has one per site); ``loc`` starts so that the whole mean is the
    ``init_loc_fn`` value. ``hierarchical_sites``: the sites that get a weight (all by default);
    the others are mean-field normal. The prior must have a mean."""

    weight_type = "element-wise"  # or "scalar"

    def __init__(self, model: Callable, *, init_loc_fn: Any = init_to_mean, init_scale: float = 0.1,
                 amortized_plates: tuple[str, ...] = (), init_weight: float = 1.0,
                 hierarchical_sites: list | None = None) -> None:
        super().__init__(model, init_loc_fn=init_loc_fn, init_scale=init_scale, amortized_plates=amortized_plates)
        self._init_weight = float(init_weight)
        self._hierarchical_sites = hierarchical_sites

    def _hierarchical(self, name: str) -> bool:
        return self._hierarchical_sites is None or name in self._hierarchical_sites

    def _init_from(self, site: SiteInfo, u: torch.Tensor, prior: Any, transform: Any) -> torch.Tensor:
        if not self._hierarchical(site.name):
            return u
        with torch.no_grad():
            prior_mean = self._adjust_plates(transform.inv(prior.mean), transform.domain.event_dim, site.name)
            return u - self._init_weight * prior_mean  # the whole mean starts at the init value

    def _make_site(self, site: SiteInfo, u: torch.Tensor) -> None:
        super()._make_site(site, u)
        if self._hierarchical(site.name):
            if self.weight_type == "scalar":
                _deep_setattr(self, "weights." + site.name, PyroParam(torch.full((), self._init_weight, dtype=u.dtype),
                                                                      constraints.positive))
            else:
                _deep_setattr(self, "weights." + site.name, PyroParam(torch.full_like(u, self._init_weight),
                                                                      constraints.positive, site.u_event_dim))

    def _loc(self, name: str, prior: Any, transform: Any) -> tuple[torch.Tensor, torch.Tensor]:
        loc, scale = self._params(name, prior, transform)
        if self._hierarchical(name):
            loc = loc + transform.inv(prior.mean) * _deep_getattr(self.weights, name)
        return loc, scale


class AutoRegressiveMessenger(AutoMessenger):
    """A learned affine map of the prior in unconstrained space: the posterior at a site is the
    distribution of ``T(loc + scale * T^-1(x))``, ``x`` drawn from the prior conditioned on the
    values drawn upstream, ``T = biject_to(support)`` (Pyro's regressive messenger). ``loc``
    starts at ``(1 - init_scale)`` times the unconstrained ``init_loc_fn`` value and ``scale`` at
    ``init_scale``: a mixture, in that sense, of the prior and the init value."""

    def __init__(self, model: Callable, *, init_loc_fn: Any = init_to_mean, init_scale: float = 0.1,
                 amortized_plates: tuple[str, ...] = ()) -> None:
        super().__init__(model, amortized_plates=amortized_plates)
        self.init_loc_fn = resolve_init_strategy(init_loc_fn)
        self._init_scale = _positive_init_scale(self, init_scale)

    def _make_site(self, site: SiteInfo, u: torch.Tensor) -> None:
        self._set_loc_scale(site, u * (1 - self._init_scale), torch.full_like(u, self._init_scale))

    def get_posterior(self, name: str, prior: Any) -> Any:
        """The prior pushed through ``T``, the affine map ``u -> loc + scale * u`` and ``T^-1``."""
        transform = self._transform(name, prior)
        loc, scale = self._params(name, prior, transform)
        affine = AffineTransform(loc, scale, event_dim=transform.domain.event_dim, cache_size=1)
        return dist.TransformedDistribution(prior, [transform.inv.with_cache(), affine, transform.with_cache()])
