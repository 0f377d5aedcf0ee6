"""Sum-product contractions of named-dim tensors in three semirings, with the order from ``opt_einsum``.

A *term* is a pair ``(tensor, dims)``: ``dims`` names each dim of ``tensor`` with a hashable symbol
(no symbol twice in one term; size-1 dims are simply left out). :func:`contract` multiplies the
terms (adds them, in log space) and sums the dims that are not in the output, in the order
``opt_einsum`` chooses (cached per structure, so a model that repeats its shapes every step pays the
search once). Each pairwise step is run by torch:

``"log"``   log-sum-exp of sums (``log Σ exp(a + b)``): each operand is shifted by its maximum over
            the summed dims, exponentiated, multiplied with ``torch.einsum`` and the log taken; the
            shifts are added back, so long products neither underflow nor overflow.
``"max"``   max of sums (``max (a + b)``), the Viterbi semiring.
``"prob"``  plain products and sums (``torch.einsum``).

With ``tape=[]`` every step is recorded as ``(operands, out_dims, sum_dims)``: what
:mod:`ember.infer.discrete` walks backwards to sample or maximise the summed variables.

:func:`einsum` is the string interface (``einsum("ab,bc->ac", x, y, backend="torch_log")``).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import opt_einsum
import torch

__all__ = ["Term", "align", "contract", "contraction_path", "einsum"]

Term = tuple  # (torch.Tensor, tuple of dim symbols)

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_PATHS: dict = {}
_SMALL = 1 << 16  # pairwise log-steps up to this many elements add and log-sum-exp directly
_MAX_PATHS = 256


def align(tensor: torch.Tensor, dims: Sequence[Hashable], target: Sequence[Hashable]) -> torch.Tensor:
    """``tensor`` (its dims named ``dims``) permuted into the order of ``target`` with size-1 dims
    where ``target`` names a dim ``dims`` lacks, so that it broadcasts against a tensor laid out
    as ``target``. Every name in ``dims`` must be in ``target``. The result has ``len(target)`` dims:
    e.g. shape ``(A, B)`` with ``dims = ("a", "b")`` and ``target = ("b", "c", "a")`` becomes ``(B, 1, A)``."""
    dims = tuple(dims)
    if len(dims) == len(target) and dims == tuple(target):
        return tensor
    pos = {d: i for i, d in enumerate(target)}
    try:
        order = sorted(range(len(dims)), key=lambda i: pos[dims[i]])
    except KeyError as e:
        raise ValueError(f"align: dim {e.args[0]!r} of a term (dims {dims}) is not in the target layout {tuple(target)}") from None
    if order != list(range(len(dims))):
        tensor = tensor.permute(order)
    have = set(dims)
    shape = []
    it = iter(tensor.shape)
    for d in target:
        shape.append(next(it) if d in have else 1)
    return tensor.reshape(shape)


def contraction_path(inputs: Sequence[tuple], output: tuple, sizes: dict) -> list[tuple[int, ...]]:
    """``opt_einsum``'s contraction order for operands whose dims are ``inputs`` (symbol tuples),
    producing ``output``: a list of operand-position tuples (the contracted operands leave the list
    and their result is appended, as in ``opt_einsum.contract_path``). Cached per structure. It sees
    only dim names and ``sizes`` (each dim's size), never the tensors: the shapes they stand for."""
    if len(inputs) == 1:
        return [(0,)]
    if len(inputs) == 2:
        return [(0, 1)]
    symbols: dict = {}
    for dims in inputs:
        for d in dims:
            if d not in symbols:
                symbols[d] = len(symbols)
    key = (tuple(inputs), tuple(output), tuple(sizes[d] for d in symbols))
    path = _PATHS.get(key)
    if path is None:
        letter = {d: opt_einsum.get_symbol(i) for d, i in symbols.items()}
        eq = ",".join("".join(letter[d] for d in dims) for dims in inputs) + "->" + "".join(letter[d] for d in output)
        shapes = [tuple(sizes[d] for d in dims) for dims in inputs]
        path, _ = opt_einsum.contract_path(eq, *shapes, shapes=True, optimize="auto")
        if len(_PATHS) >= _MAX_PATHS:
            _PATHS.clear()
        _PATHS[key] = path
    return path


def _union(terms: Sequence[Term]) -> tuple:
    seen: dict = {}
    for _, dims in terms:
        for d in dims:
            seen.setdefault(d, None)
    return tuple(seen)


def _equation(terms: Sequence[Term], out_dims: tuple) -> str:
    letters: dict = {}
    for d in _union(terms):
        if len(letters) >= len(_LETTERS):
            raise ValueError(f"contract: one pairwise step involves more than {len(_LETTERS)} dims; the terms are too densely connected")
        letters[d] = _LETTERS[len(letters)]
    return ",".join("".join(letters[d] for d in dims) for _, dims in terms) + "->" + "".join(letters[d] for d in out_dims)


def _step(terms: Sequence[Term], out_dims: tuple, ring: str) -> torch.Tensor:
    """One contraction of a few terms into a tensor laid out as ``out_dims``."""
    union = _union(terms)
    out_set = set(out_dims)
    sum_dims = [d for d in union if d not in out_set]
    if ring == "prob":
        return torch.einsum(_equation(terms, out_dims), *[t for t, _ in terms])
    if ring == "max":
        total: Any = 0
        for t, dims in terms:
            total = total + align(t, dims, union)
        if sum_dims:
            total = total.amax(dim=[union.index(d) for d in sum_dims])
        return align(total, tuple(d for d in union if d in out_set), out_dims)
    if ring != "log":
        raise ValueError(f"contract: ring must be 'log', 'max' or 'prob'; got {ring!r}")
    if not sum_dims:
        total = 0
        for t, dims in terms:
            total = total + align(t, dims, out_dims)
        return total
    numel = 1
    for d in union:
        for t, dims in terms:
            if d in dims:
                numel *= t.shape[dims.index(d)]
                break
    if numel <= _SMALL:
        # small: add the broadcast terms and log-sum-exp (three operations, not an einsum's dozen)
        total = 0
        for t, dims in terms:
            total = total + align(t, dims, union)
        total = total.logsumexp([union.index(d) for d in sum_dims])
        return align(total, tuple(d for d in union if d in out_set), out_dims)
    sum_set = set(sum_dims)
    shifted, shifts = [], []
    for t, dims in terms:
        axes = [i for i, d in enumerate(dims) if d in sum_set]
        m = t.detach()
        if axes:
            m = m.amax(dim=axes, keepdim=True)
        m = torch.where(torch.isfinite(m), m, torch.zeros((), dtype=m.dtype, device=m.device))
        shifted.append((torch.exp(t - m), dims))
        if axes:
            m = m.squeeze(tuple(axes))
        shifts.append((m, tuple(d for d in dims if d not in sum_set)))
    out = torch.einsum(_equation(shifted, out_dims), *[t for t, _ in shifted]).log()
    for m, mdims in shifts:
        out = out + align(m, mdims, out_dims)
    return out


def _merge_subsets(terms: list) -> list:
    """Add each log-term into a term whose dims contain all of its own (a product of factors over the
    same variables is one factor): fewer, larger operands, and one step per variable of a chain."""
    order = sorted(range(len(terms)), key=lambda i: -len(terms[i][1]))
    merged: list = []
    where: dict = {}  # dim -> indices into merged of terms holding it
    for i in order:
        t, dims = terms[i]
        target = None
        if dims:
            for j in where.get(dims[0], ()):
                jd = merged[j][1]
                if all(d in jd for d in dims):
                    target = j
                    break
        elif merged:
            target = 0
        if target is None:
            for d in dims:
                where.setdefault(d, []).append(len(merged))
            merged.append((t, dims))
        else:
            jt, jd = merged[target]
            merged[target] = (jt + align(t, dims, jd), jd)
    return merged


def contract(terms: Sequence[Term], output: Sequence[Hashable], ring: str = "log", tape: list | None = None) -> torch.Tensor:
    """The sum-product of ``terms`` (``(tensor, dims)`` pairs) over every dim not in ``output``:
    a tensor laid out as ``output``, its shape the sizes of the ``output`` dims in that order (each
    output dim must occur in some term).

    ``ring`` is ``"log"`` (log-sum-exp), ``"max"`` (max-sum) or ``"prob"`` (sum-product); see the
    module docstring. ``tape``, if a list, receives each step ``(operands, out_dims, sum_dims)``.
    """
    output = tuple(output)
    terms = [(t, tuple(d)) for t, d in terms]
    sizes: dict = {}
    for t, dims in terms:
        if t.dim() != len(dims):
            raise ValueError(f"contract: a term has shape {tuple(t.shape)} but names {len(dims)} dims {dims}")
        for d, n in zip(dims, t.shape):
            if sizes.setdefault(d, n) != n:
                raise ValueError(f"contract: dim {d!r} has size {sizes[d]} in one term and {n} in another")
    missing = [d for d in output if d not in sizes]
    if missing:
        raise ValueError(f"contract: output dims {missing} occur in no term")
    if not terms:
        raise ValueError("contract: no terms")
    if ring != "prob" and len(terms) > 2:
        terms = _merge_subsets(terms)
    path = contraction_path([dims for _, dims in terms], output, sizes)
    ops = list(terms)
    count: dict = {}  # in how many live operands each dim occurs
    for _, dims in ops:
        for d in dims:
            count[d] = count.get(d, 0) + 1
    out_set = set(output)
    for step in path:
        picked = [ops[i] for i in step]
        for i in sorted(step, reverse=True):
            del ops[i]
        for _, dims in picked:
            for d in dims:
                count[d] -= 1
        union = _union(picked)
        out_dims = tuple(d for d in union if count[d] > 0 or d in out_set)
        result = _step(picked, out_dims, ring)
        if tape is not None:
            tape.append((picked, out_dims, tuple(d for d in union if d not in out_dims)))
        for d in out_dims:
            count[d] += 1
        ops.append((result, out_dims))
    (result, dims), = ops
    if dims != output:
        result = align(result, dims, output)
    return result


_BACKENDS = {"torch_log": "log", "pyro.ops.einsum.torch_log": "log", "ember.ops.einsum.torch_log": "log",
             "torch": "prob", "torch_max": "max", "pyro.ops.einsum.torch_map": "max"}


def einsum(equation: str, *operands: torch.Tensor, backend: str = "torch_log") -> torch.Tensor:
    """``torch.einsum``'s string interface over :func:`contract`: ``"ab,bc->ac"``. With
    ``backend="torch_log"`` (default) the operands are log-values and the result is
    ``log Σ exp(Σ operands)``; ``"torch"`` is the ordinary einsum; ``"torch_max"`` takes maxima.
    Size-1 dims broadcast. No ``...``. The result has one dim per output letter, in its order
    (``"ab,bc->ca"`` on ``(A, B)`` and ``(B, C)`` gives shape ``(C, A)``)."""
    ring = _BACKENDS.get(backend)
    if ring is None:
        raise ValueError(f"einsum: backend must be one of {sorted(_BACKENDS)}; got {backend!r}")
    if "..." in equation:
        raise ValueError("einsum: '...' is not supported; name every dim")
    if "->" not in equation:
        raise ValueError(f"einsum: the equation {equation!r} needs an explicit output ('->')")
    lhs, out = equation.replace(" ", "").split("->")
    inputs = lhs.split(",")
    if len(inputs) != len(operands):
        raise ValueError(f"einsum: the equation {equation!r} names {len(inputs)} operands but {len(operands)} were given")
    terms = []
    sizes: dict = {}
    for spec, x in zip(inputs, operands):
        if len(spec) != x.dim() or len(set(spec)) != len(spec):
            raise ValueError(f"einsum: operand spec {spec!r} does not fit a tensor of shape {tuple(x.shape)} (one distinct letter per dim)")
        keep = [i for i, n in enumerate(x.shape) if n != 1]
        for i in keep:
            sizes[spec[i]] = x.shape[i]
        terms.append((x.reshape([x.shape[i] for i in keep]), tuple(spec[i] for i in keep)))
    present = [d for d in out if d in sizes]
    result = contract(terms, present, ring)
    return result.reshape([sizes.get(d, 1) for d in out])
