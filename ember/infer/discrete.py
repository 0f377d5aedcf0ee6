"""``infer_discrete``: draw (or maximise) a model's enumerated discrete sites from their posterior.

The model runs once under parallel enumeration; its factors are contracted by the plated
sum-product (:mod:`ember.ops.contract`) with every step recorded, and the recording is walked
backwards: each group of variables summed out together is drawn from (``temperature=1``) or set to
the maximiser of (``temperature=0``) the product of the terms it was summed from, given the values
already chosen for the variables eliminated later. That is forward-filtering backward-sampling on
a chain and the Viterbi algorithm at ``temperature=0``, for any tree of plates. The model then runs
again with the chosen values; its other latent sites keep the values of the first run.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from ember.infer.traceenum_elbo import marginal_log_joint, plate_symbol
from ember.infer.util import guess_max_plate_nesting
from ember.ops.einsum import _union, align
from ember.poutine.block_messenger import BlockMessenger
from ember.poutine.enum_messenger import EnumMessenger
from ember.poutine.messenger import Messenger
from ember.poutine.trace_messenger import TraceMessenger
from ember.runtime import Message

__all__ = ["infer_discrete"]


def _take(joint: torch.Tensor, union: tuple, var: Any, idx: torch.Tensor, idims: tuple) -> tuple[torch.Tensor, tuple]:
    """``joint`` (laid out as ``union``) at ``var = idx`` (an index tensor over the plate dims ``idims``)."""
    union_l = list(union)
    for d in idims:
        if d not in union_l:
            union_l.append(d)
            joint = joint.unsqueeze(-1)
    a = union_l.index(var)
    ia = align(idx, idims, union_l)
    shape = list(torch.broadcast_shapes(joint.shape, ia.shape))
    ishape = list(shape)
    ishape[a] = 1
    out = joint.expand(shape).gather(a, ia.expand(ishape)).squeeze(a)
    del union_l[a]
    return out, tuple(union_l)


def _backward(tape: list, sum_vars: set, temperature: int) -> dict:
    """Walk the recorded contraction backwards: ``{variable: (index tensor, plate dims)}``."""
    chosen: dict = {}
    for picked, out_dims, sum_dims in reversed(tape):
        if not sum_dims:
            continue
        union = _union(picked)
        joint: Any = 0
        for t, dims in picked:
            joint = joint + align(t, dims, union)
        for v in out_dims:
            if v in sum_vars:
                joint, union = _take(joint, union, v, *chosen[v])
        sums = [d for d in union if d in sum_dims]
        rest = [d for d in union if d not in sum_dims]
        joint = joint.permute([union.index(d) for d in rest + sums])
        sizes = list(joint.shape[len(rest):])
        flat = joint.reshape(list(joint.shape[: len(rest)]) + [-1])
        if temperature == 0:
            pick = flat.argmax(-1)
        else:
            pick = torch.distributions.Categorical(logits=flat).sample()
        for i, v in enumerate(sums):
            stride = 1
            for n in sizes[i + 1:]:
                stride *= n
            chosen[v] = ((pick // stride) % sizes[i], tuple(rest))
    return chosen


def _site_value(site: Message, idx: torch.Tensor, idims: tuple, mpn: int) -> torch.Tensor:
    """The value of an enumerated site at support indices ``idx`` (over plate dims ``idims``),
    shaped like a draw of the site's distribution (batch shape + event shape)."""
    frames = {f.dim: plate_symbol(f.name) for f in site.cond_indep_stack if f.dim is not None}
    target = [frames.get(d, ("_free", d)) for d in range(-mpn, 0)]
    idx = align(idx, idims, target) if idims else idx.reshape([1] * mpn)
    nb = len(site.fn.batch_shape)
    while idx.dim() > nb and idx.shape[0] == 1:
        idx = idx.squeeze(0)
    fn = site.fn
    support = fn.enumerate_support(expand=False)
    support = support.reshape((support.shape[0],) + tuple(fn.event_shape))
    return support[idx]


class _ReplayDiscrete(Messenger):
    """Set the enumerated sites to the chosen values; give the other latent sites their first-run
    values (where those carry no enumerated dim)."""

    def __init__(self, values: dict, first: Any, mpn: int) -> None:
        super().__init__()
        self.values = values
        self.first = first
        self.mpn = mpn

    def _pyro_sample(self, msg: Message) -> None:
        if msg.is_observed or msg.done:
            return
        v = self.values.get(msg.name)
        if v is None:
            site = self.first.nodes.get(msg.name)
            if site is None or not isinstance(site.value, torch.Tensor):
                return
            val = site.value
            nb = val.dim() - len(getattr(site.fn, "event_shape", ()))
            if any(n != 1 for n in val.shape[: max(nb - self.mpn, 0)]):
                return  # it depends on an enumerated site: draw it afresh
            v = val
        msg.value = v
        msg.done = True


def infer_discrete(fn: Callable | None = None, first_available_dim: int | None = None, temperature: int = 1, *,
                   strict_enumeration_warning: bool = True) -> Callable:
    """``fn`` with its sites marked for parallel enumeration (``config_enumerate``) drawn from their
    joint posterior given the observations (``temperature=1``) or set to the joint MAP
    (``temperature=0``). ``first_available_dim`` is ``-max_plate_nesting - 1`` (guessed by one run
    when None). The returned function runs ``fn`` with those values and returns what ``fn`` returns;
    wrap it in ``poutine.trace`` to read them. ``strict_enumeration_warning`` is accepted for Pyro
    compatibility."""
    if fn is None:
        return functools.partial(infer_discrete, first_available_dim=first_available_dim, temperature=temperature)
    if temperature not in (0, 1):
        raise ValueError(f"infer_discrete: temperature must be 0 (MAP) or 1 (posterior sample); got {temperature!r}")
    if first_available_dim is not None and (not isinstance(first_available_dim, int) or first_available_dim >= 0):
        raise ValueError(f"infer_discrete: first_available_dim must be a negative integer; got {first_available_dim!r}")

    @functools.wraps(fn)
    def sample_posterior(*args: Any, **kwargs: Any) -> Any:
        fad = first_available_dim
        if fad is None:
            with BlockMessenger(), torch.no_grad():
                tm = TraceMessenger(fn)
                tm(*args, **kwargs)
            fad = -guess_max_plate_nesting(tm.trace) - 1
        mpn = -fad - 1
        with torch.no_grad():
            with BlockMessenger():
                tm = TraceMessenger(EnumMessenger(fn, first_available_dim=fad))
                tm(*args, **kwargs)
            tr = tm.trace
            tr.max_plate_nesting = mpn
            tr.compute_log_prob()
            tape: list = []
            _, info = marginal_log_joint(tr, mpn, ring="max" if temperature == 0 else "log", tape=tape)
            sum_vars = set(info.var_ordinals)
            chosen = _backward(tape, sum_vars, temperature)
            values = {}
            for name in sum_vars:
                site = info.var_sites[name]
                idx, idims = chosen.get(name, (torch.zeros((), dtype=torch.long), ()))
                values[name] = _site_value(site, idx, idims, mpn)
        return _ReplayDiscrete(values, tr, mpn)(fn)(*args, **kwargs)

    return sample_posterior
