"""``broadcast``: Pyro's handler that expands distributions to the plates around them.

In Ember every ``plate`` already broadcasts the batch shape of the sample sites inside it
(a size-1 or missing plate dim is expanded to the plate's size; a clashing size is an error
naming the site), so ``broadcast`` changes nothing: it exists so that Pyro code decorated
with ``@poutine.broadcast`` runs unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

from ember.poutine.messenger import Messenger

__all__ = ["BroadcastMessenger", "broadcast"]


class BroadcastMessenger(Messenger):
    """A handler with no effect: plates broadcast by themselves in Ember (see the module docstring)."""


def broadcast(fn: Callable | None = None) -> BroadcastMessenger:
    """Pyro's ``poutine.broadcast``. A no-op in Ember, where ``plate`` broadcasts on its own:
    ``with plate("data", 100): sample("x", Normal(0., 1.))`` draws a value of shape ``[100]``
    with or without it."""
    return BroadcastMessenger(fn)
