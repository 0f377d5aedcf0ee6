"""``replay``: reuse the sampled values of a recorded trace."""

from __future__ import annotations

from collections.abc import Callable

from ember.poutine.messenger import Messenger
from ember.poutine.trace_struct import Trace
from ember.runtime import Message


class ReplayMessenger(Messenger):
    """At each unobserved sample site present in ``trace``, return the recorded value
    (and take its ``infer`` settings) instead of sampling; with ``params``, param sites
    named there return the given values."""

    def __init__(self, fn: Callable | None = None, trace: Trace | None = None, params: dict | None = None) -> None:
        super().__init__(fn)
        if trace is None and params is None:
            raise ValueError("replay needs a trace= (or params=) to replay")
        self.trace = trace
        self.params = params
        self._nodes = trace.nodes if trace is not None else None

    def _pyro_sample(self, msg: Message) -> None:
        nodes = self._nodes
        if nodes is None or msg.is_observed:
            return
        guide_msg = nodes.get(msg.name)
        if guide_msg is None:
            return
        if guide_msg.type != "sample" or guide_msg.is_observed:
            raise RuntimeError(
                f"replay: site '{msg.name}' must be an unobserved sample site in the trace being replayed, "
                f"but it is {'an observed ' if guide_msg.is_observed else 'a '}{guide_msg.type} site there"
            )
        msg.done = True
        msg.value = guide_msg.value
        msg.infer = dict(guide_msg.infer)  # a copy: the guide trace's dict is never shared (runtime: aliasing rule)

    def _pyro_subsample(self, msg: Message) -> None:
        """A plate uses the indices the replayed trace's plate of the same name and size drew."""
        nodes = self._nodes
        if nodes is None or msg.value is not None:
            return  # explicit indices given to the plate stay
        guide_msg = nodes.get(msg.name)
        if guide_msg is None or guide_msg.type != "subsample" or guide_msg.fn.size != msg.fn.size:
            return  # a plate of another size: the model/guide check reports the clash
        msg.value = guide_msg.value
        msg.done = True

    def _pyro_param(self, msg: Message) -> None:
        params = self.params
        if params is not None and msg.name in params:
            msg.value = params[msg.name]
            msg.done = True


def replay(fn: Callable | None = None, trace: Trace | None = None, params: dict | None = None) -> ReplayMessenger:
    """Replay ``fn`` against the values recorded in ``trace``."""
    return ReplayMessenger(fn, trace=trace, params=params)
