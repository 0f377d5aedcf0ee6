"""The plated sum-product: summing discrete variables out of a product of factors that live in plates.

Every factor is a term ``(tensor, dims)`` (see :mod:`ember.ops.einsum`) together with its
*ordinal*: the set of plates it lies in. Its dims are plate symbols (the plate's index) and
variable symbols (a discrete variable's value). Each variable also has an ordinal, the plates it
is replicated over; a factor may only use variables whose plates it lies in.

:func:`contract_plated` eliminates the variables named in ``sum_vars`` by tensor variable
elimination (Obermeyer et al., 2019): the deepest ordinal first, its local variables summed out
by one :func:`~ember.ops.einsum.contract` per connected component, the result multiplied over the
plates it no longer depends on (a sum of logs, scaled by the plate's subsampling factor) and
handed to the shallower ordinal it still depends on, until the root. Variables not in
``sum_vars`` stay as dims of the results (``keep``); a plate is never multiplied out of a term
that still carries a kept variable replicated over it. A product over a plate of a sum over a
more global variable cannot be written this way (its cost grows exponentially with the plate's
size): that raises ``ValueError`` naming the variables.

:func:`einsum` is the string form with plates (``einsum("ia,a->", x, y, plates="i")``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from ember.ops.einsum import _BACKENDS, align, contract

__all__ = ["contract_plated", "einsum", "sum_plates"]


def _name(sym: Hashable) -> str:
    return repr(sym) if not isinstance(sym, str) else f"'{sym}'"


def sum_plates(tensor: torch.Tensor, dims: tuple, ordinal: frozenset, plates: dict, keep: frozenset = frozenset()) -> tuple[torch.Tensor, tuple]:
    """The product (in log space: the sum) of a term over the plates of ``ordinal`` not in
    ``keep``: each such plate's dim is summed (a plate the term lacks counts its size) and the
    result multiplied by the plate's scale. ``plates[p] = (size, scale)``. Returns ``(tensor, dims)``:
    the tensor's shape is the input's without the summed plates' dims, ``dims`` names them."""
    factor = 1.0
    axes = []
    for p in ordinal:
        if p in keep:
            continue
        size, scale = plates[p]
        if p in dims:
            axes.append(dims.index(p))
            factor = factor * scale
        else:
            factor = factor * size * scale
    if axes:
        tensor = tensor.sum(axes)
        dims = tuple(d for i, d in enumerate(dims) if i not in axes)
    if not (type(factor) is float and factor == 1.0):
        tensor = tensor * factor
    return tensor, dims


def _components(terms: list, local: set) -> list[tuple[list, set]]:
    """Split terms into groups connected through the ``local`` variables."""
    parent = list(range(len(terms)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict = {}
    for i, (_, dims) in enumerate(terms):
        for d in dims:
            if d in local:
                if d in owner:
                    parent[find(i)] = find(owner[d])
                else:
                    owner[d] = i
    groups: dict = defaultdict(list)
    for i in range(len(terms)):
        groups[find(i)].append(terms[i])
    out = []
    for group in groups.values():
        out.append((group, {d for _, dims in group for d in dims if d in local}))
    return out


def contract_plated(
    factors: Sequence[tuple[frozenset, torch.Tensor, tuple]],
    var_ordinals: dict,
    sum_vars: set,
    plates: dict,
    ring: str = "log",
    tape: list | None = None,
) -> list[tuple[frozenset, torch.Tensor, tuple]]:
    """Eliminate ``sum_vars`` from the product of ``factors``.

    Args:
        factors: ``(ordinal, tensor, dims)``: ``tensor`` (log-values for the ``"log"`` and
            ``"max"`` rings) with one named dim per tensor dim (plates of ``ordinal`` and
            variables); ``ordinal`` is a frozenset of plate symbols.
        var_ordinals: ``{variable: ordinal}`` for every variable dim that occurs.
        sum_vars: the variables to sum (or maximise) out; the others are kept.
        plates: ``{plate: (size, scale)}``: ``size`` of its dim, ``scale`` multiplying the log of its
            product (``full_size / subsample_size``).
        ring: ``"log"`` (log-sum-exp) or ``"max"`` (max-sum).
        tape: if a list, receives every elimination step (see :func:`~ember.ops.einsum.contract`).

    Returns:
        ``[(ordinal, tensor, dims)]`` whose sum (after summing each over its plates with
        :func:`sum_plates`) is the log of the sum-product. A term without kept variables is a
        scalar at the root ordinal; a term with kept variables stays at their plates' ordinal.
    """
    tree: dict = defaultdict(list)
    for ordinal, t, dims in factors:
        for d in dims:
            if d in plates:
                if d not in ordinal:
                    raise ValueError(f"contract_plated: a factor has a dim for plate {_name(d)}, which is not in its plates {sorted(map(str, ordinal))}")
            elif d not in var_ordinals:
                raise ValueError(f"contract_plated: dim {_name(d)} of a factor is neither a plate nor a variable")
            elif not var_ordinals[d] <= ordinal:
                raise ValueError(
                    f"contract_plated: variable {_name(d)} is replicated over plates {sorted(map(str, var_ordinals[d]))}, but a factor "
                    f"outside some of them (plates {sorted(map(str, ordinal))}) depends on it")
        tree[frozenset(ordinal)].append((t, tuple(dims)))
    out: list = []
    while tree:
        t = max(tree, key=len)
        terms = tree.pop(t)
        local = {d for _, dims in terms for d in dims if d in sum_vars and var_ordinals[d] == t}
        results = []
        for group, group_local in _components(terms, local):
            if not group_local:
                results.extend(group)
                continue
            union: dict = {}
            for _, dims in group:
                for d in dims:
                    union.setdefault(d, None)
            out_dims = tuple(d for d in union if d not in group_local)
            results.append((contract(group, out_dims, ring, tape), out_dims))
        for tensor, dims in results:
            vars_in = [d for d in dims if d not in plates]
            target: frozenset = frozenset().union(*[var_ordinals[v] for v in vars_in]) if vars_in else frozenset()
            if target == t:
                stuck = [v for v in vars_in if v in sum_vars]
                if stuck:
                    kept = [v for v in vars_in if v not in sum_vars]
                    raise ValueError(
                        f"contract_plated: cannot sum out {', '.join(map(_name, stuck))} (plates {sorted(map(str, var_ordinals[stuck[0]]))}) "
                        f"from a product over plates {sorted(map(str, t - var_ordinals[stuck[0]]))}"
                        + (f" that still depends on the kept variable(s) {', '.join(map(_name, kept))}" if kept else
                           " that couples variables of different plates")
                        + ": the exact sum would cost exponentially in the plate's size. Enumerate the more global "
                        "variable in the guide as well, or move the sites into a common plate.")
                out.append((t, tensor, dims))
                continue
            tensor, dims = sum_plates(tensor, dims, t, plates, keep=target)
            tree[target].append((tensor, dims))
    return out


def einsum(equation: str, *operands: torch.Tensor, plates: str = "", backend: str = "torch_log", modulo_total: bool = False) -> Any:
    """Plated einsum: ``einsum("ia,ab->", x, y, plates="i")`` is ``Σ_a,b Π_i exp(x[i,a]) exp(y[a,b])``
    in log space (``backend="torch_log"``; ``"torch_max"`` maximises). Letters in ``plates`` are
    plates: products, never sums; each operand's plates are the plate letters it names. An output
    letter that is not a plate is kept. Returns a tensor laid out as the output: one dim per output
    letter, in its order (a scalar for ``"...->"``).
    (``modulo_total`` is accepted for Pyro compatibility and must be False.)"""
    if modulo_total:
        raise ValueError("einsum: modulo_total=True is not supported")
    ring = _BACKENDS.get(backend)
    if ring not in ("log", "max"):
        raise ValueError(f"einsum: plated einsum needs backend 'torch_log' or 'torch_max'; got {backend!r}")
    lhs, out = equation.replace(" ", "").split("->")
    inputs = lhs.split(",")
    if len(inputs) != len(operands):
        raise ValueError(f"einsum: the equation {equation!r} names {len(inputs)} operands but {len(operands)} were given")
    plate_set = set(plates)
    sizes: dict = {}
    factors = []
    var_ordinals: dict = {}
    for spec, x in zip(inputs, operands):
        if len(spec) != x.dim():
            raise ValueError(f"einsum: operand spec {spec!r} does not fit a tensor of shape {tuple(x.shape)}")
        ordinal = frozenset(c for c in spec if c in plate_set)
        keep = [i for i, n in enumerate(x.shape) if n != 1]
        for i in keep:
            sizes[spec[i]] = x.shape[i]
        factors.append((ordinal, x.reshape([x.shape[i] for i in keep]), tuple(spec[i] for i in keep)))
        for c in spec:
            if c not in plate_set:
                var_ordinals[c] = var_ordinals.get(c, ordinal) & ordinal
    plate_info = {p: (sizes.get(p, 1), 1.0) for p in plate_set}
    if any(c in plate_set for c in out):
        raise ValueError("einsum: plate letters in the output are not supported; contract them or index the operands")
    kept = set(out)
    local_kept = [c for c in out if var_ordinals.get(c)]
    if local_kept:
        raise ValueError(f"einsum: output letters {local_kept} only occur inside plates; an output letter must be global")
    terms = contract_plated(factors, var_ordinals, set(var_ordinals) - kept, plate_info, ring)
    result: Any = None
    for ordinal, tensor, dims in terms:
        tensor, dims = sum_plates(tensor, dims, ordinal, plate_info)
        tensor = align(tensor, dims, out) if out else tensor
        result = tensor if result is None else result + tensor
    return result.expand([sizes.get(d, 1) for d in out]) if out else result
