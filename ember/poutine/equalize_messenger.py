"""``equalize``: make matching sites share one value (Pyro's ``pyro.poutine.equalize_messenger``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from ember.poutine.messenger import Messenger
from ember.runtime import Message

__all__ = ["EqualizeMessenger", "equalize", "collapse"]


class EqualizeMessenger(Messenger):
    """Give every site of type ``type`` whose name fully matches one of ``sites`` (a regular
    expression or a list of them) the value of the first such site in the run. A later sample
    site becomes an observed point mass at that value that adds nothing to the log-density
    (``keep_dist=False``, the default), or keeps its distribution and is scored there
    (``keep_dist=True``: the model conditioned on the sites being equal)."""

    def __init__(self, fn: Callable | None = None, sites: Any = None, type: str = "sample", keep_dist: bool = False) -> None:
        super().__init__(fn)
        if sites is None:
            raise ValueError("equalize needs sites= (a site name pattern or a list of them)")
        patterns = [sites] if isinstance(sites, str) else list(sites)
        self.sites = patterns
        self._patterns = [re.compile(p) for p in patterns]
        self.type = type
        self.keep_dist = bool(keep_dist)
        self.value: Any = None

    def __enter__(self) -> EqualizeMessenger:
        self.value = None
        return super().__enter__()  # type: ignore[return-value]

    def _matches(self, msg: Message) -> bool:
        return msg.type == self.type and any(p.fullmatch(msg.name or "") for p in self._patterns)

    def _process_message(self, msg: Message) -> None:
        if self.value is None or not self._matches(msg):
            return
        msg.value = self.value
        msg.done = True
        if msg.type == "sample":
            msg.is_observed = True
            if not self.keep_dist:
                from ember.distributions import Delta

                msg.infer = {"_deterministic": True}
                msg.fn = Delta(self.value, event_dim=len(msg.fn.event_shape)).mask(False)

    def _postprocess_message(self, msg: Message) -> None:
        if self.value is None and self._matches(msg):
            self.value = msg.value


def equalize(fn: Callable | None = None, sites: Any = None, type: str = "sample", keep_dist: bool = False) -> EqualizeMessenger:
    """Make the sites of type ``type`` matching ``sites`` (a regular expression, or a list) take the
    first matching site's value; see :class:`EqualizeMessenger`. A handler: ``equalize(fn, sites)``,
    a decorator or a context manager."""
    return EqualizeMessenger(fn, sites=sites, type=type, keep_dist=keep_dist)


def collapse(fn: Callable | None = None, *args: Any, **kwargs: Any) -> Any:
    """Pyro's ``collapse`` (EXPERIMENTAL there) marginalizes conjugate sites symbolically with funsor;
    Ember has no funsor backend, so it raises ``NotImplementedError``."""
    raise NotImplementedError(
        "poutine.collapse is not supported: Pyro implements it with funsor's symbolic (lazy) tensors, which Ember "
        "does not have. Marginalize the sites by hand, or enumerate discrete ones with TraceEnum_ELBO."
    )
