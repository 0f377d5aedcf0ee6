"""Initialisation strategies: where MCMC chains (and other unconstrained-space methods) start.

A strategy is a function of a latent sample site (the :class:`~ember.runtime.Message`, with its
``fn`` and ``name``) that returns a value in the site's support, of the site's shape. The model
is run once with each latent's value chosen in order, so a site whose prior depends on earlier
latents sees their initial values. Each factory can be called with its options first
(``init_to_median(num_samples=31)``) or used as it is (``init_strategy=init_to_median``).

- :func:`init_to_median`: the median of ``num_samples`` draws from the site's prior (default);
- :func:`init_to_uniform`: uniform on ``(-radius, radius)`` in unconstrained space (Stan's rule);
- :func:`init_to_sample`: one draw from the prior;
- :func:`init_to_mean`: the prior mean (falls back to the median where the mean is undefined);
- :func:`init_to_value`: the given ``values`` (constrained), ``fallback`` elsewhere;
- :func:`init_to_feasible`: the image of zero in unconstrained space (a fixed, feasible point);
- :func:`init_to_generated`: a strategy made afresh by ``generate()`` for each run of the model.

:class:`InitMessenger` runs a model with every latent given its strategy's value: what the
autoguides use to build their prototype trace.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch.distributions import biject_to

from ember.poutine.messenger import Messenger
from ember.runtime import Message, is_deterministic

__all__ = [
    "InitMessenger",
    "init_to_feasible",
    "init_to_generated",
    "init_to_mean",
    "init_to_median",
    "init_to_sample",
    "init_to_uniform",
    "init_to_value",
    "init_values_of",
    "resolve_init_strategy",
]


def _base_shape(site: Message) -> torch.Size:
    value = site.value
    if isinstance(value, torch.Tensor):
        return value.shape
    fn = site.fn
    return fn.batch_shape + fn.event_shape


def _unconstrained(fn: Any) -> tuple[Any, torch.Tensor]:
    """``(biject_to(fn.support), an unconstrained value)``: of the shape, dtype and device of the
    site's unconstrained values, without drawing from ``fn`` where it cannot be drawn from (an
    improper prior: zeros of the default dtype then)."""
    t = biject_to(fn.support)
    try:
        return t, t.inv(fn.sample())
    except NotImplementedError:
        return t, torch.zeros(t.inverse_shape(fn.batch_shape + fn.event_shape))


def init_to_sample(site: Message | None = None, *, fallback: Callable | None = None) -> Any:
    """A draw from the site's prior (``fallback(site)``, e.g. :func:`init_to_feasible`, for a prior
    that cannot be drawn from, such as an improper one; an error without one)."""
    if site is None:
        return functools.partial(init_to_sample, fallback=fallback) if fallback is not None else init_to_sample
    try:
        return site.fn.sample().detach()
    except NotImplementedError:
        if fallback is None:
            raise
        return fallback(site)


def init_to_median(site: Message | None = None, num_samples: int = 15, *, fallback: Callable | None = None) -> Any:
    """The elementwise median of ``num_samples`` draws from the site's prior; a prior draw when
    the median is not in the support (e.g. a simplex); ``fallback(site)`` (default
    :func:`init_to_feasible`, as Pyro) for a prior that cannot be drawn from (an improper one)."""
    if site is None:
        return functools.partial(init_to_median, num_samples=num_samples, fallback=fallback)
    with torch.no_grad():
        try:
            samples = site.fn.sample(torch.Size([num_samples]))
        except NotImplementedError:
            return (fallback or init_to_feasible)(site)
        value = samples.median(dim=0).values if samples.dtype.is_floating_point else samples[0]
        try:
            ok = bool(site.fn.support.check(value).all())
        except (NotImplementedError, RuntimeError):
            ok = True
        return value if ok else samples[0]


def init_to_mean(site: Message | None = None) -> Any:
    """The prior mean where it is finite and in the support; the median otherwise."""
    if site is None:
        return init_to_mean
    try:
        value = site.fn.mean.detach()
        value = value.expand(site.fn.batch_shape + site.fn.event_shape)
        if torch.isfinite(value).all() and bool(site.fn.support.check(value).all()):
            return value.clone()
    except (NotImplementedError, RuntimeError, AttributeError):
        pass
    return init_to_median(site)


def init_to_uniform(site: Message | None = None, radius: float = 2.0) -> Any:
    """Uniform on ``(-radius, radius)`` in the unconstrained space of the site's support."""
    if site is None:
        return functools.partial(init_to_uniform, radius=radius)
    with torch.no_grad():
        t, u = _unconstrained(site.fn)
        return t(torch.empty_like(u).uniform_(-radius, radius))


def init_to_value(site: Message | None = None, values: dict | None = None, fallback: Callable | None = init_to_uniform) -> Any:
    """The constrained value ``values[name]`` where given; ``fallback`` (default
    :func:`init_to_uniform`) elsewhere. ``fallback=None`` makes a missing site an error."""
    if site is None:
        return functools.partial(init_to_value, values=values, fallback=fallback)
    values = values or {}
    if site.name in values:
        v = torch.as_tensor(values[site.name])
        shape = _base_shape(site)
        try:
            return v.expand(shape).clone() if v.shape != shape else v
        except RuntimeError:
            raise ValueError(f"init_to_value: the value for site '{site.name}' has shape {tuple(v.shape)}, but the site's "
                             f"values have shape {tuple(shape)}") from None
    if fallback is None:
        raise ValueError(f"init_to_value: no initial value for site '{site.name}' (and fallback=None); "
                         f"values given for: {sorted(values)}")
    return fallback(site)


def init_to_feasible(site: Message | None = None) -> Any:
    """``biject_to(support)(0)``: the point of the support that unconstrained zero maps to
    (0 for reals, 1 for positive values, the centre of an interval or a simplex)."""
    if site is None:
        return init_to_feasible
    with torch.no_grad():
        t, u = _unconstrained(site.fn)
        return t(torch.zeros_like(u))


class _InitToGenerated:
    """The strategy ``generate()`` returns, made afresh whenever a site name comes round again
    (a new run of the model)."""

    def __init__(self, generate: Callable[[], Callable]) -> None:
        self.generate = generate
        self._init: Callable | None = None
        self._seen: set[str] = set()

    def __call__(self, site: Message) -> Any:
        if self._init is None or site.name in self._seen:
            self._init = self.generate()
            self._seen = set()
        self._seen.add(site.name)
        return self._init(site)


def init_to_generated(site: Message | None = None, generate: Callable[[], Callable] = lambda: init_to_uniform) -> Any:
    """The strategy ``generate()`` returns (for example ``init_to_value(values=...)`` built from
    fresh random values), called once per run of the model."""
    if site is None:
        return _InitToGenerated(generate)
    return _InitToGenerated(generate)(site)


def init_values_of(strategy: Any) -> dict | None:
    """The ``values`` an :func:`init_to_value` strategy holds (None for other strategies)."""
    if isinstance(strategy, functools.partial) and strategy.func is init_to_value:
        return dict(strategy.keywords.get("values") or {})
    return None


class InitMessenger(Messenger):
    """Give every continuous latent sample site the value ``init_fn(site)`` (observed,
    deterministic, discrete and already-valued sites are left alone); the value must have the
    site's shape."""

    def __init__(self, init_fn: Callable, fn: Callable | None = None) -> None:
        super().__init__(fn)
        self.init_fn = init_fn

    def _pyro_sample(self, msg: Message) -> None:
        if msg.is_observed or msg.done or msg.value is not None or is_deterministic(msg):
            return
        if getattr(msg.fn.support, "is_discrete", False):
            return  # drawn from the prior: the strategies work in unconstrained space
        value = self.init_fn(msg)
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value)
        shape = msg.fn.batch_shape + msg.fn.event_shape
        if value.shape != shape:
            raise ValueError(f"init strategy {getattr(self.init_fn, '__name__', self.init_fn)!r} gave site '{msg.name}' a value "
                             f"of shape {tuple(value.shape)}; the site ({type(msg.fn).__name__}) has shape {tuple(shape)}")
        msg.value = value.detach()
        msg.done = True


_BY_NAME: dict[str, Callable] = {
    "feasible": init_to_feasible,
    "median": init_to_median,
    "uniform": init_to_uniform,
    "sample": init_to_sample,
    "mean": init_to_mean,
    "value": init_to_value,
}


def resolve_init_strategy(strategy: Any, values: dict | None = None) -> Callable:
    """A strategy from a name (``"median"``, ``"uniform"``, ``"sample"``, ``"mean"``,
    ``"feasible"``, ``"value"``) or a callable. ``values`` (constrained, by site name) goes with ``"value"``."""
    if callable(strategy):
        return strategy
    if isinstance(strategy, str):
        if strategy not in _BY_NAME:
            raise ValueError(f"unknown init_strategy {strategy!r}; use one of {sorted(_BY_NAME)} or a function of the site "
                             f"such as ember.infer.init_to_median")
        if strategy == "value":
            if values is None:
                raise ValueError("init_strategy='value' needs the initial values: pass initial_params (constrained values by "
                                 "site name) or init_strategy=init_to_value(values={...})")
            return init_to_value(values=values)
        return _BY_NAME[strategy]
    raise TypeError(f"init_strategy must be a name or a function of the site, got {type(strategy).__name__}")
