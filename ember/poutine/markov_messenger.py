"""``markov``: declare that a model is a Markov chain, so that enumeration can recycle tensor dims.

Parallel enumeration (:mod:`ember.poutine.enum_messenger`) gives every enumerated site a tensor dim
of its own; a length-T chain would need T dims. Inside ``markov(history=h)`` a site at one step
may depend only on sites of the same step and of the ``h`` steps before it (and on sites outside
the chain), so the dim of a site more than ``h`` steps back can be handed to a new site.

Three spellings, as in Pyro:

- ``for t in markov(range(T)):`` — one step per iteration;
- ``with markov():`` — one step per entry: nested entries are successive steps (a recursive
  model), successive entries of the same handler at the same level are successive steps too;
- ``@markov`` on a (recursive) function — one step per call.

How it works: every step is a node with a parent (the step it is nested in) and a predecessor (the
previous step of the same chain at the same level, else its parent). :class:`EnumMessenger` asks
:func:`visible_names` which enumerated sites a new site may still depend on: the sites of its own
step and of ``h`` predecessors (with everything nested in them), of the steps it is nested in (and
their own ``h`` predecessors), everything sampled outside any ``markov``, and, where a chain runs out
of predecessors, everything before the chain began. Everything else is out of scope, and its dim
free. The rule is conservative: sibling branches of a tree (``keep`` either way) never share dims.
A site that nevertheless depends on an out-of-scope site raises an error naming both (the
``history`` is too short).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ember.poutine.messenger import Messenger
from ember.runtime import _STACK

__all__ = ["MarkovMessenger", "markov", "current_step", "visible_names", "tick"]

_TICK = itertools.count()


def tick() -> int:
    """A strictly increasing counter shared by steps and enumerated sites (their order)."""
    return next(_TICK)


class _Step:
    """One step of a chain: the enumerated sites sampled in it (``own``) and in it or any step
    nested in it (``names``)."""

    __slots__ = ("parent", "prev", "history", "own", "names", "tick", "iterated")

    def __init__(self, parent: _Step | None, prev: _Step | None, history: int, iterated: bool) -> None:
        self.parent = parent
        self.prev = prev
        self.history = history
        self.own: set = set()
        self.names: set = set()
        self.tick = tick()
        self.iterated = iterated  # a step of ``for t in markov(...)`` (else a context entry or call)

    def add(self, name: str) -> None:
        self.own.add(name)
        node: _Step | None = self
        while node is not None:
            node.names.add(name)
            node = node.parent


class MarkovMessenger(Messenger):
    """See the module docstring. ``history`` (>= 0): how many previous steps a step may depend
    on. ``keep`` is accepted for Pyro compatibility (sibling branches are always kept apart here).
    ``dim``/``name`` (Pyro's vectorized markov) are not supported."""

    def __init__(self, fn: Callable | None = None, history: int = 1, keep: bool = False, dim: int | None = None,
                 name: str | None = None) -> None:
        if isinstance(fn, int) and not isinstance(fn, bool):
            fn, history = None, fn  # Pyro's MarkovMessenger(history, ...)
        super().__init__(fn)
        if isinstance(history, bool) or not isinstance(history, int) or history < 0:
            raise ValueError(f"markov: history must be a non-negative integer; got {history!r}")
        if dim is not None or name is not None:
            raise NotImplementedError(
                "markov(dim=..., name=...) (vectorized markov chains) is not supported; use the sequential form "
                "`for t in markov(range(T))`, whose dims are recycled")
        self.history = history
        self.keep = keep
        self._nodes: list[_Step] = []
        self._last: _Step | None = None
        self._iterating = False

    def _wrap(self, fn: Callable) -> Messenger:
        new = super()._wrap(fn)
        new._nodes = []  # type: ignore[attr-defined]
        new._last = None  # type: ignore[attr-defined]
        return new

    def __enter__(self) -> MarkovMessenger:
        parent = current_step()
        last = self._last
        prev = last if last is not None and last.parent is parent else None
        self._nodes.append(_Step(parent, prev, self.history, self._iterating))
        _STACK.append(self)  # re-entrant: a recursive model enters the same handler again
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._nodes:
            self._last = self._nodes.pop()
        super().__exit__(*exc)

    def generator(self, iterable: Iterable) -> Iterator:
        """One step per item of ``iterable``."""
        self._last = None
        for item in iterable:
            self._iterating = True
            try:
                with self:
                    self._iterating = False
                    yield item
            finally:
                self._iterating = False

    def __iter__(self) -> Iterator:
        raise TypeError("iterate over markov(iterable), e.g. `for t in markov(range(T))`")


def current_step() -> _Step | None:
    """The innermost ``markov`` step on the handler stack (None outside every ``markov``)."""
    for h in reversed(_STACK):
        if isinstance(h, MarkovMessenger) and h._nodes:
            return h._nodes[-1]
    return None


def visible_names(node: _Step | None, ticks: dict, root: set) -> set | None:
    """The enumerated sites a site sampled in step ``node`` may depend on (None: all of them).
    ``ticks`` maps every enumerated site seen so far to its :func:`tick` (for "before the chain");
    ``root`` holds those sampled outside every ``markov``."""
    if node is None:
        return None
    vis: set = set(root)
    n: _Step | None = node
    full = True
    while n is not None:
        vis |= n.names if full else n.own
        m, k = n, 0
        while k < n.history:
            # the previous step of the chain: the previous iteration, or, for a context entry without
            # a previous sibling, the step it is nested in (a recursive model's previous level)
            pred = m.prev if m.prev is not None else (None if m.iterated else m.parent)
            if pred is None:
                if m.parent is None:  # the chain's first step: everything before it stays in scope
                    start = m.tick
                    vis.update(name for name, t in ticks.items() if t < start)
                break
            vis |= pred.names
            m, k = pred, k + 1
        # the level that encloses this chain (the steps of a nested-context chain beyond the
        # history are out of scope)
        p = n.parent
        if not n.iterated:
            while p is not None and not p.iterated:
                p = p.parent
        n, full = p, False
    return vis


def markov(fn: Any = None, history: int = 1, keep: bool = False, dim: int | None = None, name: str | None = None) -> Any:
    """``markov(range(T))`` (an iterator of steps), ``with markov():`` or ``@markov`` (one step
    per entry or call); see the module docstring."""
    if fn is None or callable(fn):
        return MarkovMessenger(fn, history=history, keep=keep, dim=dim, name=name)
    return MarkovMessenger(None, history=history, keep=keep, dim=dim, name=name).generator(fn)
