"""``lift``, ``escape``, ``infer_config``, and Ember's internal value substitution."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ember.poutine.messenger import Messenger, _WarnsUnusedNames
from ember.runtime import Message, NonlocalExit


class _SubstituteValuesMessenger(_WarnsUnusedNames, Messenger):
    """Ember's internal substitution (MCMC potentials, compiled ELBOs, reparameterizers): give param
    sites *and unobserved sample sites* the values in ``data``, used as they are. The public
    :func:`ember.poutine.substitute` is Pyro's: param sites only."""

    def __init__(self, fn: Callable | None = None, data: dict | None = None) -> None:
        super().__init__(fn)
        self.data = data if data is not None else {}

    def _pyro_param(self, msg: Message) -> None:
        value = self.data.get(msg.name)
        if value is not None:
            msg.value = value
            msg.done = True

    def _pyro_sample(self, msg: Message) -> None:
        if msg.is_observed:
            return
        value = self.data.get(msg.name)
        if value is not None:
            msg.value = value
            msg.done = True



class LiftMessenger(Messenger):
    """Turn param sites into sample sites drawn from ``prior``: a distribution (for
    every param), a dict name -> distribution or callable, or a callable."""

    def __init__(self, fn: Callable | None = None, prior: Any = None) -> None:
        super().__init__(fn)
        self.prior = prior
        self._samples_cache: dict = {}

    def __enter__(self):
        self._samples_cache = {}
        return super().__enter__()

    def _prior_for(self, name: str) -> Any:
        prior = self.prior
        if isinstance(prior, dict):
            return prior.get(name)
        return prior

    def _pyro_param(self, msg: Message) -> None:
        name = msg.name
        prior = self._prior_for(name)
        if prior is None:
            return
        if name in self._samples_cache:
            # a repeated param call returns the value sampled the first time
            msg.value = self._samples_cache[name].value
            msg.done = True
            msg.stop = True
            return
        msg.type = "sample"
        if hasattr(prior, "log_prob"):
            msg.fn = prior
            msg.args, msg.kwargs = (), {}
        else:
            msg.fn = prior
            msg.args, msg.kwargs = (), {}
        msg.infer = {}
        msg.is_observed = False
        msg.value = None
        msg.done = False
        self._samples_cache[name] = msg


def lift(fn: Callable | None = None, prior: Any = None) -> LiftMessenger:
    """Turn param sites into sample sites drawn from ``prior``: one distribution for every param,
    a dict name -> distribution (or callable), or a callable. Each drawn value has the param's shape.
    A handler: ``lift(fn, prior=...)``, a decorator or a context manager."""
    return LiftMessenger(fn, prior=prior)


class EscapeMessenger(Messenger):
    """Raise :class:`NonlocalExit` at the first site where ``escape_fn(msg)`` is true."""

    def __init__(self, fn: Callable | None = None, escape_fn: Callable | None = None) -> None:
        super().__init__(fn)
        if escape_fn is None:
            raise ValueError("escape needs escape_fn=")
        self.escape_fn = escape_fn

    def _pyro_sample(self, msg: Message) -> None:
        if self.escape_fn(msg):
            msg.done = True
            msg.stop = True

            def cont(m: Message) -> None:
                raise NonlocalExit(m)

            msg.continuation = cont


def escape(fn: Callable | None = None, escape_fn: Callable | None = None) -> EscapeMessenger:
    """Stop the run at the first sample site where ``escape_fn(msg)`` is true by raising
    ``NonlocalExit`` (carrying that site's message, hidden from the handlers outside); ``poutine.queue``
    uses it to enumerate discrete sites one run at a time.
    A handler: ``escape(fn, escape_fn=...)``, a decorator or a context manager."""
    return EscapeMessenger(fn, escape_fn=escape_fn)


class InferConfigMessenger(Messenger):
    """Update each sample/param site's ``infer`` dict with ``config_fn(msg)``."""

    def __init__(self, fn: Callable | None = None, config_fn: Callable | None = None) -> None:
        super().__init__(fn)
        if config_fn is None:
            raise ValueError("infer_config needs config_fn=")
        self.config_fn = config_fn

    def _pyro_sample(self, msg: Message) -> None:
        msg.infer = dict(msg.infer, **self.config_fn(msg))  # a new dict: never mutate a shared one

    _pyro_param = _pyro_sample


def infer_config(fn: Callable | None = None, config_fn: Callable | None = None) -> InferConfigMessenger:
    """Update each sample and param site's ``infer`` dict with the dict ``config_fn(msg)`` returns
    (into a new dict: a shared one is never mutated).
    A handler: ``infer_config(fn, config_fn=...)``, a decorator or a context manager."""
    return InferConfigMessenger(fn, config_fn=config_fn)
