"""``Vindex``: advanced indexing whose index tensors broadcast on the left (batch and enumeration dims).

``Vindex(x)[i, :, j]`` generalises ``x[i, :, j]`` from integers to index tensors ``i``, ``j`` of any
batch shape: the result has shape ``broadcast(i.shape, j.shape) + (x.size(1),)``. With a leading
``...`` the tensor itself has batch dims, which broadcast with the indices':
``Vindex(x)[..., i, :, j]`` for ``x`` of shape ``B + (A, C, D)`` has shape
``broadcast(B, i.shape, j.shape) + (C,)``. This is how a model indexes a parameter with an
enumerated discrete value (whose enumeration dim sits left of the plates) without caring whether
it is enumerated. (``...`` may only come first; Numpy's convention, where it may stand anywhere,
differs.)
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["Vindex", "vindex"]


def _check_arg(i: int, a: Any) -> None:
    if a is Ellipsis:
        raise IndexError(f"Vindex: '...' may only be the first index (argument {i}); it stands for the tensor's batch dims")
    if isinstance(a, slice):
        if a != slice(None):
            raise IndexError(f"Vindex: argument {i} is the slice {a}; only ':' (the whole dim) is supported")
    elif isinstance(a, torch.Tensor):
        if a.dtype == torch.bool or a.is_floating_point():
            raise IndexError(f"Vindex: argument {i} has dtype {a.dtype}; indices must be integer tensors (no masks)")
    elif not isinstance(a, int) or isinstance(a, bool):
        raise IndexError(f"Vindex: argument {i} is {a!r}; expected an integer, an integer tensor, ':' or a leading '...'")


def vindex(tensor: torch.Tensor, args: tuple) -> torch.Tensor:
    """``Vindex(tensor)[args]``; see the module docstring.

    Args:
        tensor: ``batch_shape + event_shape`` with ``len(event_shape)`` the number of indices after
            a leading ``...`` (no ``...``: ``tensor.dim() == len(args)``, no batch dims).
        args: integers, integer tensors (of any batch shape), ``slice(None)``, and a leading ``...``.

    Returns:
        ``broadcast(batch_shape, *index shapes) + (sizes of the ':' dims)``.
    """
    if not isinstance(args, tuple):
        args = (args,)
    batched = bool(args) and args[0] is Ellipsis
    if batched:
        args = args[1:]
    for i, a in enumerate(args):
        _check_arg(i + int(batched), a)
    n_event = len(args)
    if not batched and tensor.dim() != n_event:
        raise IndexError(
            f"Vindex: a tensor of shape {tuple(tensor.shape)} needs {tensor.dim()} indices, got {n_event}; put '...' first "
            f"if its leading dims are batch dims")
    if tensor.dim() < n_event:
        raise IndexError(f"Vindex: {n_event} indices for a tensor of shape {tuple(tensor.shape)}")
    if not any(isinstance(a, torch.Tensor) and a.dim() for a in args):
        return tensor[(Ellipsis, *args)] if batched else tensor[args]
    batch_shape = tensor.shape[: tensor.dim() - n_event]
    event_shape = tensor.shape[tensor.dim() - n_event:]
    index_shapes = [a.shape for a in args if isinstance(a, torch.Tensor)]
    new_batch = torch.broadcast_shapes(batch_shape, *index_shapes)
    nb = len(new_batch)
    slices = [k for k, a in enumerate(args) if isinstance(a, slice)]
    m = len(slices)
    out_rank = nb + m
    device = tensor.device
    index: list = []
    # the tensor's batch dims: arange (or 0 where it has size 1), broadcasting against the indices
    for j, size in enumerate(batch_shape):
        pos = nb - len(batch_shape) + j
        shape = [1] * out_rank
        if size == 1:
            index.append(torch.zeros(shape, dtype=torch.long, device=device))
        else:
            shape[pos] = size
            index.append(torch.arange(size, device=device).reshape(shape))
    for k, a in enumerate(args):
        if isinstance(a, slice):
            shape = [1] * out_rank
            shape[nb + slices.index(k)] = event_shape[k]
            index.append(torch.arange(event_shape[k], device=device).reshape(shape))
        else:
            a = torch.as_tensor(a, device=device)
            index.append(a.reshape(a.shape + (1,) * m))
    return tensor[tuple(index)]


class Vindex:
    """``Vindex(tensor)[args]`` is :func:`vindex(tensor, args) <vindex>`: for ``tensor`` of shape
    ``B + E`` and ``args = (..., i, j)`` indexing ``E``, the result has shape ``broadcast(B, i.shape,
    j.shape)`` plus the sizes of the dims taken whole with ``:``."""

    __slots__ = ("_tensor",)

    def __init__(self, tensor: torch.Tensor) -> None:
        self._tensor = tensor

    def __getitem__(self, args: Any) -> torch.Tensor:
        return vindex(self._tensor, args)
