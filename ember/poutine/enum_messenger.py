"""``enum``: parallel enumeration of discrete sample sites along tensor dims left of the plates.

A sample site marked ``infer={"enumerate": "parallel"}`` (see ``ember.infer.config_enumerate``)
whose distribution has a finite support is not drawn: its value becomes the whole support,
``fn.enumerate_support(expand=False)``, laid out along a new tensor dim of its own. Plates use
the dims ``-1 ... -max_plate_nesting``; enumeration uses ``first_available_dim`` (normally
``-max_plate_nesting - 1``) and the dims to its left, one per enumerated site, recycled along
``markov`` chains (:mod:`ember.poutine.markov_messenger`). Every computation downstream of the
site then broadcasts along that dim, so one run of the model evaluates every joint assignment,
and ``TraceEnum_ELBO`` / ``infer_discrete`` / MCMC sum (or maximise) the dims out.

The value of an enumerated site of a distribution with batch shape ``B`` and event shape ``E``
and support size ``K`` has shape ``(K,) + (1,) * (-dim - 1) + E`` (``expand=True`` in the site's
``infer``: broadcast against ``B`` as well); the site's ``infer`` gets ``"_enumerate_dim": dim``
(a new dict, as the protocol requires).

Errors name the site: enumerating a distribution without finite support; a plate whose dim
reaches the enumeration dims (``max_plate_nesting`` too small, or a plate ``dim=`` that collides);
a batch dim left of the plates that no enumerated site owns; a site that depends on an enumerated
site a ``markov`` chain has already let go of (``history`` too short).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ember.poutine.markov_messenger import current_step, tick, visible_names
from ember.poutine.messenger import Messenger
from ember.runtime import Message

__all__ = ["EnumMessenger", "enum"]


def _shape(s: Any) -> str:
    return str(tuple(int(x) for x in s))


class EnumMessenger(Messenger):
    """Enumerate the sites marked ``infer["enumerate"] == "parallel"`` (see the module docstring).

    Args:
        fn: the model or guide.
        first_available_dim: the rightmost dim enumeration may use (negative), normally
            ``-max_plate_nesting - 1``.
        max_plate_nesting: (keyword, Ember extension) how many dims the plates own, when
            ``first_available_dim`` is further left (the model's dims after a guide's): plates
            and batch dims right of ``-max_plate_nesting - 1`` are the model's own.
    """

    def __init__(self, fn: Callable | None = None, first_available_dim: int | None = None, *,
                 max_plate_nesting: int | None = None) -> None:
        if isinstance(fn, int) and not isinstance(fn, bool) and first_available_dim is None:
            fn, first_available_dim = None, fn  # Pyro's EnumMessenger(first_available_dim)
        super().__init__(fn)
        if first_available_dim is not None and (isinstance(first_available_dim, bool) or not isinstance(first_available_dim, int)
                                                or first_available_dim >= 0):
            raise ValueError(f"enum: first_available_dim must be a negative integer (e.g. -max_plate_nesting - 1); got {first_available_dim!r}")
        self.first_available_dim = first_available_dim
        if max_plate_nesting is None and first_available_dim is not None:
            max_plate_nesting = -first_available_dim - 1
        self.max_plate_nesting = max_plate_nesting
        self._reset_state()

    def _reset_state(self) -> None:
        self._holder: dict[int, str] = {}  # dim -> the latest enumerated site on it
        self._ticks: dict[str, int] = {}
        self._root: set = set()
        self.next_available_dim = self.first_available_dim

    def __enter__(self) -> EnumMessenger:
        self._reset_state()
        return super().__enter__()  # type: ignore[return-value]

    # ---- checks ----------------------------------------------------------------------------
    def _check_plates(self, msg: Message) -> None:
        mpn = self.max_plate_nesting
        if mpn is None:
            return
        for f in msg.cond_indep_stack:
            if f.dim is not None and -f.dim > mpn:
                raise ValueError(
                    f"Site '{msg.name}' is inside plate '{f.name}' at dim {f.dim}, but with max_plate_nesting={mpn} the dims "
                    f"from {-mpn - 1} leftwards belong to enumeration: the plate collides with the enumerated dims. Set "
                    f"max_plate_nesting >= {-f.dim} (the number of nested plates), or give the plate a dim in [-{mpn}, -1]."
                )

    def _check_dependencies(self, msg: Message, vis: Any) -> Any:
        """Batch dims of the site's distribution left of the plates must belong to enumerated
        sites still in scope. Returns the visible set (computed lazily)."""
        mpn = self.max_plate_nesting
        first = self.first_available_dim
        bs = getattr(msg.fn, "batch_shape", None)
        if bs is None or mpn is None or first is None or len(bs) <= mpn:
            return vis
        for d in range(-len(bs), first + 1):
            if bs[d] == 1:
                continue
            holder = self._holder.get(d)
            if holder is None:
                raise ValueError(
                    f"Site '{msg.name}' ({type(msg.fn).__name__}) has batch_shape {_shape(bs)}: size {bs[d]} at dim {d}, left of "
                    f"the max_plate_nesting={mpn} dims the plates own, but no enumerated site uses dim {d}. Is max_plate_nesting "
                    f"too small (count the nested plates), or does a batch dim lack its plate?"
                )
            if vis is False:
                vis = visible_names(current_step(), self._ticks, self._root)
            if vis is not None and holder not in vis:
                raise ValueError(
                    f"Site '{msg.name}' depends on dim {d} (batch_shape {_shape(bs)}), which holds the enumerated site '{holder}', "
                    f"but the enclosing markov chain has already let go of '{holder}': its history is too short for this "
                    f"dependency. Use markov(..., history=k) with k at least the number of steps between the two sites."
                )
        return vis

    # ---- enumeration -------------------------------------------------------------------------
    def _allocate(self, vis: set | None) -> int:
        first = self.first_available_dim
        if vis is not None:
            for d in range(first, self.next_available_dim, -1):
                if self._holder[d] not in vis:
                    return d
        d = self.next_available_dim
        self.next_available_dim = d - 1
        return d

    def _pyro_sample(self, msg: Message) -> None:
        self._check_plates(msg)
        enumerate_ = msg.infer.get("enumerate")
        if enumerate_ != "parallel" or msg.done or msg.is_observed:
            self._check_dependencies(msg, False)
            return
        num_samples = msg.infer.get("num_samples")
        if num_samples is not None:
            raise NotImplementedError(
                f"Site '{msg.name}' has infer={{'enumerate': 'parallel', 'num_samples': {num_samples!r}}}: Monte-Carlo "
                f"enumeration (Pyro's num_samples, drawing samples along the enumeration dim) is not supported; "
                f"enumerate exactly (drop num_samples), as for config_enumerate(num_samples=...)."
            )
        fn = msg.fn
        if not getattr(fn, "has_enumerate_support", False):
            raise ValueError(
                f"Site '{msg.name}' is marked infer={{'enumerate': 'parallel'}}, but its distribution {type(fn).__name__} "
                f"has no finite support to enumerate (has_enumerate_support is False). Enumerate only discrete sites "
                f"(Categorical, Bernoulli, ...); config_enumerate skips the others."
            )
        if self.first_available_dim is None:
            raise ValueError(
                f"Site '{msg.name}' is marked for parallel enumeration, but enum() was given no first_available_dim; "
                f"use enum(fn, first_available_dim=-max_plate_nesting - 1)."
            )
        node = current_step()
        vis = visible_names(node, self._ticks, self._root)
        self._check_dependencies(msg, vis)
        dim = self._allocate(vis)
        value = fn.enumerate_support(expand=False)
        k = value.shape[0]
        event_shape = tuple(fn.event_shape)
        value = value.reshape((k,) + (1,) * (-dim - 1) + event_shape)
        if msg.infer.get("expand", False):
            bs = tuple(fn.batch_shape)
            shape = list(torch.broadcast_shapes(value.shape[: value.dim() - len(event_shape)], bs)) + list(event_shape)
            value = value.expand(shape)
        msg.value = value
        msg.done = True
        msg.infer = {**msg.infer, "_enumerate_dim": dim}
        name = msg.name
        self._holder[dim] = name
        self._ticks[name] = tick()
        if node is None:
            self._root.add(name)
        else:
            node.add(name)


def enum(fn: Callable | None = None, first_available_dim: int | None = None, *, max_plate_nesting: int | None = None) -> EnumMessenger:
    """See :class:`EnumMessenger`."""
    return EnumMessenger(fn, first_available_dim, max_plate_nesting=max_plate_nesting)
