"""Tensor helpers (Pyro's ``pyro.ops.tensor_utils``): block-diagonal embedding and extraction,
FFT convolution and fast FFT lengths, repeated matrix powers, the orthonormal DCT-II and Haar
transforms (the ones :mod:`ember.distributions.transforms` uses), periodic repeats, sums and
features for seasonal time series, and Cholesky-based solves that treat ``1 x 1`` matrices as
scalars.

The setting ``"cholesky_relative_jitter"`` (:mod:`ember.settings`) is
:data:`CHOLESKY_RELATIVE_JITTER`: the jitter :func:`safe_cholesky` adds to the diagonal, in units of
``finfo.eps`` times the largest absolute entry of each row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.fft import irfft, rfft

from ember import settings
from ember.distributions.transforms.elementwise import DiscreteCosineTransform, haar_transform, inverse_haar_transform
from ember.ops.stats import _next_fast_len

__all__ = [
    "CHOLESKY_RELATIVE_JITTER", "as_complex", "block_diag_embed", "block_diagonal", "broadcast_tensors_without_dim",
    "cholesky_solve", "convolve", "dct", "haar_transform", "idct", "inverse_haar_transform", "irfft", "matmul",
    "matvecmul", "next_fast_len", "periodic_cumsum", "periodic_features", "periodic_repeat", "precision_to_scale_tril",
    "repeated_matmul", "rfft", "safe_cholesky", "safe_normalize", "triangular_solve",
]

CHOLESKY_RELATIVE_JITTER = 4.0  # in units of finfo.eps


@settings.register("cholesky_relative_jitter", __name__, "CHOLESKY_RELATIVE_JITTER")
def _check_jitter(value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"ember.settings: cholesky_relative_jitter must be a number >= 0; got {value!r}")


def _neg_dim(dim: int, ndim: int) -> int:
    return dim - ndim if dim >= 0 else dim


def as_complex(x: torch.Tensor) -> torch.Tensor:
    """:func:`torch.view_as_complex` of ``x`` of shape ``(..., 2)`` (result ``(...)``), copying
    ``x`` first when its strides do not allow a view."""
    if any(s % 2 for s in x.stride()[:-1]):
        x = x.squeeze().reshape(x.shape)
        if any(s % 2 for s in x.stride()[:-1]):
            x = x.clone()
    return torch.view_as_complex(x)


def block_diag_embed(mat: torch.Tensor) -> torch.Tensor:
    """The block-diagonal matrices ``(..., B * M, B * N)`` whose ``B`` diagonal blocks are the
    ``(..., B, M, N)`` matrices ``mat``."""
    if mat.dim() < 3:
        raise ValueError(f"block_diag_embed: expected a tensor (..., B, M, N); got shape {tuple(mat.shape)}")
    B, M, N = mat.shape[-3:]
    eye = torch.eye(B, dtype=mat.dtype, device=mat.device).reshape(B, 1, B, 1)
    return (mat.unsqueeze(-2) * eye).reshape(mat.shape[:-3] + (B * M, B * N))


def block_diagonal(mat: torch.Tensor, block_size: int) -> torch.Tensor:
    """The ``block_size`` diagonal blocks ``(..., B, M, N)`` of block-diagonal matrices
    ``(..., B * M, B * N)`` (the inverse of :func:`block_diag_embed`)."""
    B = block_size
    M, N = mat.size(-2) // B, mat.size(-1) // B
    if mat.shape[-2:] != (B * M, B * N):
        raise ValueError(f"block_diagonal: the last two sizes {tuple(mat.shape[-2:])} are not multiples of {B}")
    blocks = mat.reshape(mat.shape[:-2] + (B, M, B, N)).movedim(-2, -3)  # (..., B, B, M, N)
    return blocks.diagonal(dim1=-4, dim2=-3).movedim(-1, -3)


def periodic_repeat(tensor: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """``tensor`` repeated periodically along ``dim`` up to ``size`` entries there (the other sizes
    stay): ``result[..., t, ...] = tensor[..., t % period, ...]``; for static seasonality."""
    if not isinstance(size, int) or size < 0:
        raise ValueError(f"periodic_repeat: size must be an int >= 0; got {size!r}")
    dim = _neg_dim(dim, tensor.dim())
    idx = torch.arange(size, device=tensor.device) % tensor.size(dim)
    return tensor.index_select(tensor.dim() + dim, idx)


def periodic_cumsum(tensor: torch.Tensor, period: int, dim: int) -> torch.Tensor:
    """The cumulative sum along ``dim`` of every ``period``-th entry (same shape as ``tensor``):
    ``result[t] = tensor[t] + result[t - period]`` for ``t >= period``; for drifting seasonality."""
    if not isinstance(period, int) or period <= 0:
        raise ValueError(f"periodic_cumsum: period must be an int > 0; got {period!r}")
    dim = _neg_dim(dim, tensor.dim())
    size = tensor.size(dim)
    cycles = -(-size // period)
    pad = cycles * period - size
    x = torch.nn.functional.pad(tensor, (0, 0) * (-1 - dim) + (0, pad)) if pad else tensor
    split = x.shape[:dim] + (cycles, period) + x.shape[x.dim() + dim + 1:]
    out = x.reshape(split).cumsum(dim - 1).reshape(x.shape)
    return out.narrow(dim, 0, size) if pad else out


def periodic_features(duration: int, max_period: float | None = None, min_period: float | None = None,
                      **options: Any) -> torch.Tensor:
    """Periodic features of shape ``(duration, 2 * ceil(max_period / min_period) - 2)`` (in
    ``[-1, 1]``) at the frequencies ``w_k = 2 pi k / max_period`` for ``k = 1, 2, ...`` while the
    period ``max_period / k`` stays above ``min_period``: row ``t`` is ``[cos(w_1 t), ..., cos(w_K t),
    -sin(w_1 t), ..., -sin(w_K t)]``.

    :param duration: the number of time steps.
    :param max_period: the longest period (default ``duration``).
    :param min_period: the shortest period, exclusive (default 2, the Nyquist limit).
    :param options: tensor options such as ``dtype`` and ``device``.
    """
    if not isinstance(duration, int) or duration < 0:
        raise ValueError(f"periodic_features: duration must be an int >= 0; got {duration!r}")
    max_period = duration if max_period is None else max_period
    min_period = 2 if min_period is None else min_period
    if not 2 <= min_period <= max_period:
        raise ValueError(f"periodic_features: need 2 <= min_period <= max_period; got {min_period}, {max_period}")
    t = torch.arange(float(duration), **options).reshape(-1, 1, 1)
    shift = torch.tensor([0.0, math.pi / 2], **options).reshape(2, 1)  # cos(wt), then cos(wt + pi/2) = -sin(wt)
    freq = torch.arange(1, max_period / min_period, **options) * (2 * math.pi / max_period)
    return torch.cos(freq * t + shift).reshape(duration, -1)


def next_fast_len(size: int) -> int:
    """The smallest ``n >= size`` whose prime factors are all 2, 3 or 5 (a fast FFT length), as
    ``scipy.fftpack.next_fast_len``; ``size`` is a positive int (a length, not a shape)."""
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise ValueError(f"next_fast_len: size must be a positive int; got {size!r}")
    return _next_fast_len(size)


def convolve(signal: torch.Tensor, kernel: torch.Tensor, mode: str = "full") -> torch.Tensor:
    """The 1-d convolution of ``signal`` ``(..., m)`` with ``kernel`` ``(..., n)`` along the last
    dim, by FFT (other dims broadcast). The last size of the result is ``m + n - 1`` for
    ``mode="full"``, ``max(m, n) - min(m, n) + 1`` for ``"valid"`` and ``max(m, n)`` for
    ``"same"`` (the central part of the full one)."""
    m, n = signal.size(-1), kernel.size(-1)
    sizes = {"full": m + n - 1, "valid": max(m, n) - min(m, n) + 1, "same": max(m, n)}
    if mode not in sizes:
        raise ValueError(f"convolve: unknown mode {mode!r}; use 'full', 'valid' or 'same'")
    full = m + n - 1
    fft_len = next_fast_len(full)
    out = irfft(rfft(signal, n=fft_len) * rfft(kernel, n=fft_len), n=fft_len)
    keep = sizes[mode]
    return out[..., (full - keep) // 2: (full - keep) // 2 + keep]


def repeated_matmul(M: torch.Tensor, n: int) -> torch.Tensor:
    """The powers ``M, M^2, ..., M^n`` of square matrices ``M`` ``(..., N, N)``, stacked as
    ``(n, ..., N, N)``, by repeated doubling (``log2(n)`` batched products)."""
    if M.size(-1) != M.size(-2):
        raise ValueError(f"repeated_matmul: expected square matrices (..., N, N); got shape {tuple(M.shape)}")
    if n < 1:
        raise ValueError(f"repeated_matmul: n must be >= 1; got {n}")
    powers = M.unsqueeze(0)  # M^1 .. M^k
    while powers.size(0) < n:
        powers = torch.cat([powers, torch.matmul(powers[-1], powers)])  # M^k times each: M^(k+1) .. M^(2k)
    return powers[:n]


def _dct(dim: int, ndim: int) -> DiscreteCosineTransform:
    return DiscreteCosineTransform(dim=_neg_dim(dim, ndim))


def dct(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The orthonormal DCT-II of ``x`` along ``dim`` (same shape), as ``scipy.fftpack.dct(x,
    norm="ortho")``; the inverse of :func:`idct`."""
    return _dct(dim, x.dim())(x)


def idct(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The inverse of :func:`dct` along ``dim`` (same shape), as ``scipy.fftpack.idct(x,
    norm="ortho")``."""
    return _dct(dim, x.dim()).inv(x)


def safe_cholesky(x: torch.Tensor) -> torch.Tensor:
    """The lower Cholesky factor ``(..., N, N)`` of positive definite ``x`` ``(..., N, N)`` after
    adding :data:`CHOLESKY_RELATIVE_JITTER` ``* eps * max_j |x[i, j]|`` to each diagonal entry
    ``x[i, i]``; for ``N = 1`` the square root, of ``x`` clamped at ``finfo.tiny``."""
    jitter = CHOLESKY_RELATIVE_JITTER
    if x.size(-1) == 1:
        return (x.clamp(min=torch.finfo(x.dtype).tiny) if jitter else x).sqrt()
    if jitter:
        bump = jitter * torch.finfo(x.dtype).eps * x.detach().abs().amax(-1)
        x = x + torch.diag_embed(bump)
    return torch.linalg.cholesky(x)


def cholesky_solve(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``A^{-1} x`` for ``A = y y^T`` given its lower Cholesky factor ``y`` ``(..., N, N)`` and
    right-hand sides ``x`` ``(..., N, K)`` (result ``(..., N, K)``); ``N = 1`` is a division."""
    if y.size(-1) == 1:
        return x / (y * y)
    return torch.cholesky_solve(x, y)


def matmul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x @ y`` for ``x`` ``(..., M, N)`` and ``y`` ``(..., N, K)``; when ``N = 1`` an
    elementwise product (broadcast)."""
    return x * y if x.size(-1) == 1 else torch.matmul(x, y)


def matvecmul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The matrix-vector products ``x y`` for ``x`` ``(..., M, N)`` and ``y`` ``(..., N)`` (result
    ``(..., M)``); when ``N = 1`` an elementwise product."""
    if x.size(-1) == 1:
        return x.squeeze(-1) * y
    return torch.matmul(x, y.unsqueeze(-1)).squeeze(-1)


def triangular_solve(x: torch.Tensor, y: torch.Tensor, upper: bool = False, transpose: bool = False) -> torch.Tensor:
    """The solution ``z`` ``(..., N, K)`` of ``y z = x`` (or ``y^T z = x`` with ``transpose``) for
    triangular ``y`` ``(..., N, N)`` (upper with ``upper``) and ``x`` ``(..., N, K)``; ``N = 1`` is
    a division."""
    if y.size(-1) == 1:
        return x / y
    if transpose:
        y, upper = y.transpose(-1, -2), not upper
    return torch.linalg.solve_triangular(y, x, upper=upper)


def precision_to_scale_tril(P: torch.Tensor) -> torch.Tensor:
    """The lower Cholesky factor ``L`` ``(..., N, N)`` of the covariance ``P^{-1}`` for precision
    matrices ``P`` ``(..., N, N)``, without inverting ``P``: with ``J`` the reversal permutation,
    ``J P J = U U^T`` (Cholesky), so ``P^{-1} = (J U^{-T} J)(J U^{-T} J)^T`` and
    ``J U^{-T} J`` is lower triangular."""
    flip = (-2, -1)
    U = torch.linalg.cholesky(torch.flip(P, flip))
    L_inv = torch.flip(U, flip).transpose(-2, -1)  # lower triangular, L_inv^T L_inv = P
    eye = torch.eye(P.size(-1), dtype=P.dtype, device=P.device)
    return torch.linalg.solve_triangular(L_inv, eye, upper=False)


def safe_normalize(x: torch.Tensor, *, p: float = 2) -> torch.Tensor:
    """``x / ||x||_p`` along the last dim (same shape as ``x``), with the zero vector sent to
    ``(1, 0, ..., 0)`` instead of NaN."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or p < 0:
        raise ValueError(f"safe_normalize: p must be a number >= 0; got {p!r}")
    norm = torch.linalg.vector_norm(x, ord=p, dim=-1, keepdim=True)
    out = x / norm.clamp(min=torch.finfo(x.dtype).tiny)
    zero = (x == 0).all(-1).detach()
    out.data[..., 0][zero] = 1
    return out


def broadcast_tensors_without_dim(tensors: Sequence[torch.Tensor], dim: int) -> list[torch.Tensor]:
    """``tensors`` expanded to one broadcast shape except at ``dim``, where each keeps its size (so
    they can be concatenated along ``dim``). A ``dim >= 0`` needs tensors of one rank."""
    if dim >= 0 and len({t.dim() for t in tensors}) > 1:
        raise ValueError("broadcast_tensors_without_dim: dim must be negative for tensors of different ranks")
    shapes = []
    for t in tensors:
        s = list(t.shape)
        s[dim] = 1
        shapes.append(s)
    common = list(torch.broadcast_shapes(*shapes))
    out = []
    for t in tensors:
        s = list(common)
        s[dim] = t.shape[dim]
        out.append(t.expand(s))
    return out
