"""``condition``, ``do`` and ``uncondition``: observations and interventions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ember.poutine.messenger import Messenger, _WarnsUnusedNames
from ember.poutine.trace_struct import Trace
from ember.runtime import Message, apply_stack


def _as_data(data: Any, who: str) -> dict:
    if isinstance(data, Trace):
        # sample sites, and the plates' indices (so the conditioned run subsamples alike)
        return {name: site.value for name, site in data.nodes.items() if site.type in ("sample", "subsample")}
    if data is None:
        return {}
    if not hasattr(data, "get") or not hasattr(data, "__contains__"):
        raise TypeError(f"{who}: data must be a dict from site name to value (or a Trace), got {type(data).__name__}")
    return data


def _to_tensor_like(value: Any, msg: Message) -> Any:
    if isinstance(value, torch.Tensor) or value is None:
        return value
    from ember.poutine.util import _obs_to_tensor

    return _obs_to_tensor(value, msg.fn)


class ConditionMessenger(_WarnsUnusedNames, Messenger):
    """Mark the sample sites named in ``data`` as observed, with the given values. Made by
    :func:`condition`, it warns after its first run about names in ``data`` no site used."""

    def __init__(self, fn: Callable | None = None, data: Any = None, warn_unused: bool = False) -> None:
        super().__init__(fn)
        self._from_trace = isinstance(data, Trace)
        self.data = _as_data(data, "condition")
        if warn_unused and not self._from_trace:
            self._watch_names(self.data, "condition")

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        if self._unused is not None and exc[0] is None:
            self._report_unused()

    def _pyro_sample(self, msg: Message) -> None:
        data = self.data
        name = msg.name
        if name in data:
            value = data[name]
            if value is None:
                return
            msg.value = _to_tensor_like(value, msg)
            msg.is_observed = True
            if self._unused is not None:
                self._used(name)

    def _pyro_subsample(self, msg: Message) -> None:
        """Conditioned on a trace, a plate takes that trace's indices."""
        if msg.value is None and self._from_trace:
            value = self.data.get(msg.name)
            if value is not None:
                msg.value = value


def condition(fn: Callable | None = None, data: Any = None) -> ConditionMessenger:
    """Condition ``fn`` on ``data`` (site name -> observed value)."""
    return ConditionMessenger(fn, data=data, warn_unused=True)


class DoMessenger(Messenger):
    """Pearl's do-operator. At a site named in ``data`` the model's own random value is
    still drawn and recorded under the site's name (so a counterfactual world stays
    complete), but the *intervened* value is what the program receives and passes on
    downstream. The intervened value is not scored: it is neither an observation nor
    a latent of the model."""

    def __init__(self, fn: Callable | None = None, data: Any = None) -> None:
        super().__init__(fn)
        self.data = _as_data(data, "do")
        self._intervener_id = str(id(self))

    def _pyro_sample(self, msg: Message) -> None:
        name = msg.name
        if msg._intervener_id != self._intervener_id and name in self.data and self.data[name] is not None:
            if msg._intervener_id is not None:
                import warnings

                warnings.warn(f"Intervening on site '{name}' more than once: the inner intervention wins", RuntimeWarning, stacklevel=2)
            msg._intervener_id = self._intervener_id
            # the model's own draw goes through the whole stack under its own name
            new_msg = msg.copy()
            # the copy walks the whole stack again: undo what the handlers inside this
            # one already did, so plates and scales apply once
            new_msg.cond_indep_stack = ()
            new_msg.scale = 1.0
            new_msg.mask = None
            apply_stack(new_msg)
            intervention = _to_tensor_like(self.data[name], msg)
            msg.name = name + "__CF"
            msg.value = intervention
            msg.is_observed = True
            msg.done = True
            msg.stop = True


def do(fn: Callable | None = None, data: Any = None) -> DoMessenger:
    """Intervene on ``fn``: the sites in ``data`` take the given values downstream."""
    return DoMessenger(fn, data=data)


class UnconditionMessenger(Messenger):
    """Turn observed sites back into latent ones (the observed value is kept in
    ``msg.infer['obs']`` and ``msg.infer['was_observed'] = True``)."""

    def _pyro_sample(self, msg: Message) -> None:
        if msg.is_observed:
            msg.is_observed = False
            msg.infer = dict(msg.infer, was_observed=True, obs=msg.value)
            msg.value = None
            msg.done = False


def uncondition(fn: Callable | None = None) -> UnconditionMessenger:
    """Turn observed sample sites back into latent ones, drawn afresh; the observed value is kept
    in the site's ``infer["obs"]`` with ``infer["was_observed"] = True``.
    A handler: ``uncondition(fn)``, a decorator or a context manager."""
    return UnconditionMessenger(fn)
