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

Monte-Carlo enumeration (Pyro's): a site whose ``infer`` also has ``"num_samples": n`` (any
distribution, continuous ones too) is not enumerated but drawn ``n`` times along its enumeration
dim, ``rsample`` where the distribution has one. Without ``expand`` the draws are one per plate
entry, shape ``(n,) + (1,) * (-dim - 1 - P) + plate_shape + E``: a batch dim left of the plates
(the site depends on an earlier enumerated or sampled site) is reduced to one ancestor per draw,
chosen by ``infer["tmc"]``: ``"diagonal"`` (default; draw ``i`` takes ancestor ``i``, so both need
``n`` values) or ``"mixture"`` (a uniformly random ancestor per draw). With ``expand=True`` or
``tmc="full"`` the draws keep the distribution's whole batch shape. The estimators decide what the
draws mean (``TraceEnum_ELBO``: an average over the draws, see its module docstring).

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


TMC_STRATEGIES = ("diagonal", "mixture", "full")


def _num_samples(msg: Message) -> int:
    n = msg.infer.get("num_samples")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"Site '{msg.name}' has infer['num_samples']={n!r}; Monte-Carlo enumeration needs a positive integer")
    return n


def _plate_batch_shape(msg: Message) -> tuple:
    """The site's batch shape with every dim that no plate declares set to 1."""
    bs = list(msg.fn.batch_shape)
    out = [1] * len(bs)
    for f in msg.cond_indep_stack:
        if f.dim is not None and -f.dim <= len(bs):
            out[f.dim] = f.size if f.size > 0 else bs[f.dim]
    return tuple(out)


def monte_carlo_values(msg: Message) -> torch.Tensor:
    """``num_samples`` draws of a site marked ``infer={"enumerate": "parallel", "num_samples": n}``,
    shape ``(n,) + batch_shape + event_shape`` (see the module docstring): with ``expand`` (or
    ``tmc="full"``) the draws of ``fn`` as they come; else one draw per plate entry, each batch dim
    left of the plates (an ancestor's enumerated or sampled dim) reduced to one ancestor per draw:
    the draw's own index (``tmc="diagonal"``, the default) or a uniformly random one (``"mixture"``)."""
    n = _num_samples(msg)
    tmc = msg.infer.get("tmc") or "diagonal"
    if tmc not in TMC_STRATEGIES:
        raise ValueError(f"Site '{msg.name}' has infer['tmc']={tmc!r}; expected one of {TMC_STRATEGIES}")
    fn = msg.fn
    draws = fn.rsample((n,)) if getattr(fn, "has_rsample", False) else fn.sample((n,))
    if msg.infer.get("expand", False) or tmc == "full":
        return draws
    target = _plate_batch_shape(msg)
    for k, (size, want) in enumerate(zip(draws.shape[1:], target), start=1):
        if size == 1 or want != 1:
            continue
        if tmc == "diagonal":
            if size != n:
                raise ValueError(
                    f"Site '{msg.name}' (num_samples={n}, tmc='diagonal') depends on an enumerated or sampled site of size "
                    f"{size} at dim {k - 1 - len(fn.batch_shape)}: the diagonal strategy pairs draw i with ancestor i, so both "
                    f"need the same number of values; use tmc='mixture' or equal num_samples")
            ancestors = torch.arange(n, device=draws.device)
        else:
            ancestors = torch.randint(size, (n,), device=draws.device)
        index_shape = [n] + [1] * (draws.dim() - 1)
        gather_shape = list(draws.shape)
        gather_shape[k] = 1
        draws = draws.gather(k, ancestors.reshape(index_shape).expand(gather_shape))
    return draws


def _place(msg: Message, value: torch.Tensor, dim: int) -> torch.Tensor:
    """Move the leading (draw) dim of ``value`` (``(n,) + batch + event``) to batch dim ``dim``."""
    event_dim = len(msg.fn.event_shape)
    batch_rank = value.dim() - 1 - event_dim
    rank = max(batch_rank, -dim)
    value = value.reshape(value.shape[:1] + (1,) * (rank - batch_rank) + value.shape[1:])
    pos = 1 + rank + dim
    if pos > 0:
        if value.shape[pos] != 1:
            raise ValueError(
                f"Site '{msg.name}': its Monte-Carlo draws cannot take enumeration dim {dim}, which its distribution's "
                f"batch_shape {_shape(msg.fn.batch_shape)} already uses (a markov dim conflict)")
        value = value.transpose(0, pos)
    while value.dim() > event_dim - dim and value.shape[0] == 1:
        value = value.squeeze(0)
    return value


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
        fn = msg.fn
        if num_samples is None and not getattr(fn, "has_enumerate_support", False):
            raise ValueError(
                f"Site '{msg.name}' is marked infer={{'enumerate': 'parallel'}}, but its distribution {type(fn).__name__} "
                f"has no finite support to enumerate (has_enumerate_support is False). Enumerate only discrete sites "
                f"(Categorical, Bernoulli, ...), which config_enumerate does, or draw samples along the dim instead: "
                f"infer={{'enumerate': 'parallel', 'num_samples': n}}."
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
        if num_samples is not None:
            value = _place(msg, monte_carlo_values(msg), dim)
        else:
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
