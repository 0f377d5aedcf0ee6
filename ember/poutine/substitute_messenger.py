"""``substitute``: fix the values of param sites (Pyro's ``pyro.poutine.substitute_messenger``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ember.poutine.messenger import Messenger, _WarnsUnusedNames
from ember.runtime import Message

__all__ = ["SubstituteMessenger", "substitute"]


class SubstituteMessenger(_WarnsUnusedNames, Messenger):
    """Give the param sites named in ``data`` (a dict site name -> tensor) those values, used as
    they are (no constraint is applied). As in Pyro, sample sites are left alone: to fix a
    sample site's value use ``condition`` (observed) or ``replay`` (latent). Names in ``data``
    that match no param site warn once, after the first run."""

    def __init__(self, fn: Callable | None = None, data: dict | None = None, *, warn_unused: bool = True) -> None:
        super().__init__(fn)
        if data is None:
            data = {}
        if not hasattr(data, "get") or not hasattr(data, "__contains__"):
            raise TypeError(f"substitute: data must be a dict from param name to value; got {type(data).__name__}")
        self.data = data
        self._sample_names: set = set()
        if warn_unused:
            self._watch_names(self.data, "substitute")

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        if self._unused is not None and exc[0] is None:
            self._report_unused()

    def _report_unused(self) -> None:
        unused, self._unused = self._unused, None
        if unused:
            import warnings

            samples = sorted(unused & self._sample_names)
            why = (f"; {samples} are sample sites, and substitute replaces param values only (as in Pyro): use "
                   f"condition (observed) or replay (latent) to fix a sample site's value" if samples else
                   " (a typo, or a param the model skips or hides with block?)")
            warnings.warn(f"substitute: the data names {sorted(unused)[:10]}, but no param site of that name was reached "
                          f"in the run{why}; those values had no effect", UserWarning, stacklevel=3)

    def _pyro_sample(self, msg: Message) -> None:
        if self._unused is not None and msg.name in self._unused:
            self._sample_names.add(msg.name)

    def _pyro_param(self, msg: Message) -> None:
        value = self.data.get(msg.name)
        if value is not None:
            msg.value = value
            msg.done = True
            if self._unused is not None:
                self._used(msg.name)


def substitute(fn: Callable | None = None, data: dict | None = None) -> SubstituteMessenger:
    """Give the param sites named in ``data`` (site name -> tensor) those values, used as they are
    (no constraint is applied); sample sites are left alone, as in Pyro. Names in ``data`` that no
    param site uses warn once. A handler: ``substitute(fn, data=...)``, a decorator or a context
    manager."""
    return SubstituteMessenger(fn, data=data)
