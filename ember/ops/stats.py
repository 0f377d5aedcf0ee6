"""Statistics of draws (Pyro's ``pyro.ops.stats``): convergence diagnostics, intervals, scores.

Every function takes a ``torch.Tensor`` and returns tensors, with Pyro's names, signatures and
definitions (so ``ember.ops.stats.effective_sample_size(x)`` is the number ``pyro.ops.stats``
gives). As an Ember extension, a NumPy array (or anything ``np.asarray`` reads) is accepted too,
and then the results are NumPy arrays. The chain diagnostics compute in float64 and return the
input's floating dtype.

Where Pyro's functions assert, these raise ``ValueError`` naming the argument and the shape. Two
degenerate cases have a defined value here where Pyro's arithmetic gives NaN: a series that is
constant has autocorrelation 1 at every lag, and draws that are all equal have an effective sample
size of ``num_chains * num_draws`` (they are known exactly) and an R-hat of 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "autocorrelation",
    "autocovariance",
    "crps_empirical",
    "effective_sample_size",
    "energy_score_empirical",
    "fit_generalized_pareto",
    "gelman_rubin",
    "hpdi",
    "pi",
    "quantile",
    "resample",
    "split_gelman_rubin",
    "waic",
    "weighed_quantile",
]


# ---- plumbing: tensors in, tensors out; NumPy in, NumPy out --------------------------------------------
def _tensor(x: Any, name: str) -> tuple[torch.Tensor, bool]:
    """``(tensor, came_from_numpy)``; integer tensors become the default float dtype."""
    if isinstance(x, torch.Tensor):
        t, from_numpy = x.detach(), False
    else:
        try:
            t, from_numpy = torch.as_tensor(np.asarray(x, dtype=np.float64)), True
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name}: expected a tensor or an array of numbers, got {type(x).__name__} ({e})") from None
    if not t.dtype.is_floating_point:
        t = t.to(torch.get_default_dtype())
    return t, from_numpy


def _out(t: torch.Tensor, from_numpy: bool) -> Any:
    return t.cpu().numpy() if from_numpy else t


def _norm_dim(dim: int, ndim: int, name: str, arg: str = "dim") -> int:
    if not -ndim <= dim < ndim:
        raise ValueError(f"{name}: {arg}={dim} is out of range for an input with {ndim} dims")
    return dim % ndim


def _chains_first(x: torch.Tensor, chain_dim: int, sample_dim: int, name: str, min_draws: int) -> torch.Tensor:
    """``x`` with the sample dim moved to 0 and the chain dim to 1: ``[N, C, ...]`` in float64."""
    if x.dim() < 2:
        raise ValueError(f"{name}: expected draws with a chain dim and a sample dim (e.g. [num_chains, num_draws, ...]), "
                         f"got shape {tuple(x.shape)}")
    c = _norm_dim(chain_dim, x.dim(), name, "chain_dim")
    s = _norm_dim(sample_dim, x.dim(), name, "sample_dim")
    if c == s:
        raise ValueError(f"{name}: chain_dim and sample_dim are the same dim ({chain_dim}, {sample_dim})")
    if x.shape[s] < min_draws:
        raise ValueError(f"{name}: needs at least {min_draws} draws per chain (sample_dim={sample_dim}), got shape "
                         f"{tuple(x.shape)}")
    return torch.movedim(x.to(torch.float64), (s, c), (0, 1))


def _chain_variances(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``x [N, C, ...]``: the mean within-chain variance ``W`` and the pooled estimate
    ``var+ = (N-1)/N W + B/N`` (``B/N``: the variance of the chain means). With one chain both are
    the biased variance, so that ESS's autocorrelations are the chain's own."""
    n, c = x.shape[0], x.shape[1]
    within = x.var(0).mean(0)
    pooled = (n - 1) / n * within
    if c > 1:
        pooled = pooled + x.mean(0).var(0)
    else:
        within = pooled
    return within, pooled


# ---- chain diagnostics ------------------------------------------------------------------------------------
def gelman_rubin(input: Any, chain_dim: int = 0, sample_dim: int = 1) -> Any:
    """The potential scale reduction ``R_hat = sqrt(var+ / W)`` over chains (no splitting).

    ``input`` has at least 2 chains along ``chain_dim`` and 2 draws along ``sample_dim``; the result
    has the remaining dims' shape."""
    x, from_numpy = _tensor(input, "gelman_rubin")
    dtype = x.dtype
    xt = _chains_first(x, chain_dim, sample_dim, "gelman_rubin", min_draws=2)
    if xt.shape[1] < 2:
        raise ValueError(f"gelman_rubin: needs at least 2 chains (chain_dim={chain_dim}), got shape {tuple(x.shape)}; "
                         f"split_gelman_rubin works with one chain")
    within, pooled = _chain_variances(xt)
    rhat = torch.where(within > 0, (pooled / within).sqrt(),
                       torch.where(pooled > 0, torch.full_like(within, math.inf), torch.ones_like(within)))
    return _out(rhat.to(dtype), from_numpy)


def split_gelman_rubin(input: Any, chain_dim: int = 0, sample_dim: int = 1) -> Any:
    """Split R-hat: each chain cut into its first and last ``N // 2`` draws, then
    :func:`gelman_rubin` over the ``2 C`` halves. Needs at least 4 draws per chain. The result has
    the shape of ``input`` without ``chain_dim`` and ``sample_dim``."""
    x, from_numpy = _tensor(input, "split_gelman_rubin")
    xt = _chains_first(x, chain_dim, sample_dim, "split_gelman_rubin", min_draws=4)
    half = xt.shape[0] // 2
    halves = torch.cat([xt[:half], xt[-half:]], dim=1)  # [N/2, 2C, ...]
    return _out(gelman_rubin(halves, chain_dim=1, sample_dim=0).to(x.dtype), from_numpy)


def _next_fast_len(size: int) -> int:
    """The smallest ``n >= size`` whose only prime factors are 2, 3 and 5 (a fast FFT length)."""
    n = max(int(size), 1)
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def autocorrelation(input: Any, dim: int = 0) -> Any:
    """Autocorrelation of ``input`` along ``dim`` at every lag ``k = 0 .. N-1`` (by FFT): the
    lag-``k`` autocovariance averaged over its ``N - k`` products, divided by the lag-0 one.
    Same shape as ``input``."""
    x, from_numpy = _tensor(input, "autocorrelation")
    d = _norm_dim(dim, max(x.dim(), 1), "autocorrelation")
    if x.dim() == 0:
        raise ValueError("autocorrelation: expected at least one dim of draws, got a scalar")
    xt = x.to(torch.float64).movedim(d, -1)
    n = xt.shape[-1]
    m2 = 2 * _next_fast_len(n)
    centered = xt - xt.mean(-1, keepdim=True)
    f = torch.fft.rfft(centered, n=m2)
    acov = torch.fft.irfft(f.real.square() + f.imag.square(), n=m2)[..., :n]
    acov = acov / torch.arange(n, 0, -1, dtype=acov.dtype)
    lag0 = acov[..., :1]
    acorr = torch.where(lag0 > 0, acov / torch.where(lag0 > 0, lag0, torch.ones_like(lag0)), torch.ones_like(acov))
    return _out(acorr.movedim(-1, d).to(x.dtype), from_numpy)


def autocovariance(input: Any, dim: int = 0) -> Any:
    """:func:`autocorrelation` times the (biased) variance along ``dim``. Same shape as ``input``."""
    x, from_numpy = _tensor(input, "autocovariance")
    acorr = autocorrelation(x, dim)
    return _out(acorr * x.var(dim, unbiased=False, keepdim=True), from_numpy)


def effective_sample_size(input: Any, chain_dim: int = 0, sample_dim: int = 1) -> Any:
    """Effective sample size over chains (Stan's estimator as Pyro writes it; Geyer's initial
    monotone sequence). ``input``: draws with a chain dim and a sample dim (default
    ``[num_chains, num_draws, ...]``), at least 2 draws; the result has the remaining dims' shape.

    ``rho_k = 1 - (W - mean_c gamma_k,c) / var+`` from each chain's autocovariances ``gamma``;
    adjacent pairs ``rho_2j + rho_2j+1`` after the first are clipped at 0 and made non-increasing;
    ``tau = -1 + 2 * (sum of the pairs)`` and ``ESS = C N / tau``."""
    x, from_numpy = _tensor(input, "effective_sample_size")
    xt = _chains_first(x, chain_dim, sample_dim, "effective_sample_size", min_draws=2)
    n, c = xt.shape[0], xt.shape[1]
    gamma = autocovariance(xt, dim=0)  # [N, C, ...]
    within, pooled = _chain_variances(xt)
    safe = torch.where(pooled > 0, pooled, torch.ones_like(pooled))
    rho = (pooled - within + gamma.mean(1)) / safe
    rho[0] = 1.0
    pairs = rho[: 2 * (n // 2)].reshape((n // 2, 2) + rho.shape[1:]).sum(1)
    tau = -1.0 + 2.0 * pairs[0]
    if pairs.shape[0] > 1:
        monotone = torch.cummin(pairs[1:].clamp(min=0.0), dim=0).values
        tau = tau + 2.0 * monotone.sum(0)
    ess = torch.where(pooled > 0, c * n / tau, torch.full_like(tau, float(c * n)))
    return _out(ess.to(x.dtype), from_numpy)


# ---- resampling, quantiles and intervals ----------------------------------------------------------------
def resample(input: Any, num_samples: int, dim: int = 0, replacement: bool = False) -> Any:
    """``num_samples`` entries of ``input`` drawn uniformly at random along ``dim`` (Ember's random
    stream), with or without replacement: the shape of ``input`` with ``num_samples`` at ``dim``."""
    x, from_numpy = _tensor(input, "resample") if not isinstance(input, torch.Tensor) else (input, False)
    d = _norm_dim(dim, x.dim(), "resample")
    size = x.shape[d]
    if not replacement and num_samples > size:
        raise ValueError(f"resample: cannot draw num_samples={num_samples} without replacement from {size} entries "
                         f"along dim {dim}; pass replacement=True or fewer samples")
    weights = torch.ones(size, dtype=torch.float64)
    idx = torch.multinomial(weights, num_samples, replacement).to(x.device)
    return _out(x.index_select(d, idx), from_numpy)


def _probs_tensor(probs: Any, like: torch.Tensor, name: str) -> torch.Tensor:
    p = torch.as_tensor(probs, dtype=like.dtype, device=like.device)
    if p.dim() > 1 or bool(((p < 0) | (p > 1) | torch.isnan(p)).any()):
        raise ValueError(f"{name}: probs must be a number or a 1-d list of numbers in [0, 1], got {probs!r}")
    return p


def quantile(input: Any, probs: float | Sequence[float] | torch.Tensor, dim: int = 0) -> Any:
    """Quantiles of ``input`` along ``dim`` at ``probs``, interpolating linearly between order
    statistics (position ``p (N - 1)``, as ``numpy.quantile``'s default). The quantiles take the
    place of ``dim`` (``len(probs)`` entries); a scalar ``probs`` drops the dim."""
    x, from_numpy = _tensor(input, "quantile")
    d = _norm_dim(dim, x.dim(), "quantile")
    p = _probs_tensor(probs, x, "quantile")
    xs = x.sort(d).values
    last = x.shape[d] - 1
    pos = p.reshape(-1) * last
    below = pos.floor().long().clamp(0, last)
    above = (below + 1).clamp(max=last)
    w = (pos - below.to(pos.dtype)).reshape([-1 if i == d else 1 for i in range(x.dim())])
    q = (1 - w) * xs.index_select(d, below) + w * xs.index_select(d, above)
    return _out(q.squeeze(d) if p.dim() == 0 else q, from_numpy)


def weighed_quantile(input: Any, probs: float | Sequence[float] | torch.Tensor, log_weights: Any, dim: int = 0) -> Any:
    """Quantiles of weighted draws: ``log_weights [N]`` (unnormalised) weigh the ``N`` entries of
    ``input`` along ``dim``. The sorted draws sit at their cumulative normalised weight, rescaled so
    the smallest draw is at 0 and the largest at 1, and quantiles interpolate linearly between them
    (equal weights give :func:`quantile`). Output shape as :func:`quantile`'s: ``len(probs)`` entries in
    place of ``dim``, or ``dim`` dropped for a scalar ``probs``."""
    x, from_numpy = _tensor(input, "weighed_quantile")
    d = _norm_dim(dim, x.dim(), "weighed_quantile")
    lw, _ = _tensor(log_weights, "weighed_quantile")
    n = x.shape[d]
    if lw.shape != (n,):
        raise ValueError(f"weighed_quantile: log_weights must have shape ({n},), one per entry of input along dim {dim}, "
                         f"got {tuple(lw.shape)}")
    p = _probs_tensor(probs, x, "weighed_quantile")
    xt = x.movedim(d, -1)
    xs, order = xt.sort(-1)
    w = torch.softmax(lw.to(x.dtype), 0)[order]
    c = w.cumsum(-1)
    span = c[..., -1:] - c[..., :1]
    pos = (c - c[..., :1]) / torch.where(span > 0, span, torch.ones_like(span))
    pp = p.reshape(-1).expand(xs.shape[:-1] + (p.numel(),)).contiguous()
    hi = torch.searchsorted(pos.contiguous(), pp).clamp(1, max(n - 1, 1)) if n > 1 else torch.zeros_like(pp, dtype=torch.long)
    lo = (hi - 1).clamp(min=0)
    pos_lo, pos_hi = pos.gather(-1, lo), pos.gather(-1, hi)
    gap = pos_hi - pos_lo
    t = torch.where(gap > 0, (pp - pos_lo) / torch.where(gap > 0, gap, torch.ones_like(gap)), torch.zeros_like(gap))
    t = t.clamp(0.0, 1.0)
    q = (1 - t) * xs.gather(-1, lo) + t * xs.gather(-1, hi)
    q = q.movedim(-1, d)
    return _out(q.squeeze(d) if p.dim() == 0 else q, from_numpy)


def pi(input: Any, prob: float, dim: int = 0) -> Any:
    """The equal-tailed (percentile) interval holding ``prob`` of the draws: the quantiles at
    ``(1 - prob) / 2`` and ``(1 + prob) / 2``: the shape of ``input`` with 2 entries (low, high) in
    place of ``dim``."""
    if not 0 < prob <= 1:
        raise ValueError(f"pi: prob must be in (0, 1], got {prob!r}")
    return quantile(input, [(1 - prob) / 2, (1 + prob) / 2], dim)


def hpdi(input: Any, prob: float, dim: int = 0) -> Any:
    """The highest posterior density interval: the narrowest interval between two draws that holds
    ``int(prob * N)`` draw-to-draw gaps, i.e. ``prob`` of the draws: the shape of ``input`` with 2
    entries (low, high) in place of ``dim``."""
    x, from_numpy = _tensor(input, "hpdi")
    d = _norm_dim(dim, x.dim(), "hpdi")
    if not 0 < prob <= 1:
        raise ValueError(f"hpdi: prob must be in (0, 1], got {prob!r}")
    n = x.shape[d]
    k = int(prob * n)
    if n < 1 or k >= n:
        k = n - 1
    xs = x.sort(d).values
    left = xs.narrow(d, 0, n - k)
    right = xs.narrow(d, k, n - k)
    start = (right - left).argmin(d, keepdim=True)
    interval = torch.cat([xs.gather(d, start), xs.gather(d, start + k)], dim=d)
    return _out(interval, from_numpy)


# ---- model comparison -------------------------------------------------------------------------------------
def _weighted_mean(x: torch.Tensor, lw: torch.Tensor, dim: int, keepdim: bool = False) -> torch.Tensor:
    w = torch.softmax(lw, 0).reshape([-1] + [1] * (x.dim() - dim - 1))
    return (x * w).sum(dim, keepdim=keepdim)


def waic(input: Any, log_weights: Any = None, pointwise: bool = False, dim: int = 0) -> tuple[Any, Any]:
    """The Widely Applicable Information Criterion of a pointwise log-likelihood ``input`` whose
    ``dim`` indexes posterior draws (optionally weighted by unnormalised ``log_weights [N]``):
    ``(waic, p_waic)`` with ``waic = -2 (lpd - p_waic)``, ``lpd`` the log of the weighted mean
    likelihood and ``p_waic`` the weighted variance (``N / (N - 1)`` corrected) of the
    log-likelihood. Summed over the remaining dims unless ``pointwise``: two scalars, or with
    ``pointwise`` two tensors of the shape of ``input`` without ``dim``."""
    x, from_numpy = _tensor(input, "waic")
    d = _norm_dim(dim, x.dim(), "waic")
    n = x.shape[d]
    if n < 2:
        raise ValueError(f"waic: needs at least 2 draws along dim {dim}, got shape {tuple(x.shape)}")
    if log_weights is None:
        lw = torch.zeros(n, dtype=x.dtype, device=x.device)
    else:
        lw, _ = _tensor(log_weights, "waic")
        if lw.shape != (n,):
            raise ValueError(f"waic: log_weights must have shape ({n},), got {tuple(lw.shape)}")
        lw = lw.to(x.dtype)
    shaped = lw.reshape([-1] + [1] * (x.dim() - d - 1))
    lpd = torch.logsumexp(x + shaped, dim=d) - torch.logsumexp(lw, 0)
    mean = _weighted_mean(x, lw, d, keepdim=True)
    p_waic = _weighted_mean((x - mean).square(), lw, d) * (n / (n - 1.0))
    w = -2.0 * (lpd - p_waic)
    if not pointwise:
        w, p_waic = w.sum(), p_waic.sum()
    return _out(w, from_numpy), _out(p_waic, from_numpy)


def fit_generalized_pareto(X: Any) -> tuple[float, float]:
    """Fit a generalized Pareto distribution (shape ``k``, scale ``sigma``, location 0) to the 1-d
    data ``X`` by Zhang & Stephens' (2009) empirical Bayes estimate, with the weak prior towards
    ``k = 0.5`` of Pareto-smoothed importance sampling (Vehtari et al.). Returns Python floats."""
    x, _ = _tensor(X, "fit_generalized_pareto")
    if x.dim() != 1 or x.numel() < 2:
        raise ValueError(f"fit_generalized_pareto: X must be a 1-d tensor of at least 2 values, got shape {tuple(x.shape)}")
    if bool((x <= 0).any()) or not bool(torch.isfinite(x).all()):
        raise ValueError("fit_generalized_pareto: X must hold positive finite values (exceedances over a threshold)")
    x = x.to(torch.float64).sort().values
    n = x.numel()
    m = 30 + int(math.sqrt(n))
    j = torch.arange(1, m + 1, dtype=torch.float64)
    quartile = x[max(int(n / 4 + 0.5) - 1, 0)]
    b = 1.0 / x[-1] + (1.0 - torch.sqrt(m / (j - 0.5))) / (3.0 * quartile)  # candidates for -k/sigma
    k = torch.log1p(-b[:, None] * x).mean(-1)
    profile = n * (torch.log(-b / k) - k - 1.0)  # profile log-likelihood of each candidate
    weights = 1.0 / torch.exp(profile[None, :] - profile[:, None]).sum(-1)
    keep = weights > 1e-30
    weights = weights[keep] / weights[keep].sum()
    b_hat = float((b[keep] * weights).sum())
    k_hat = float(torch.log1p(-b_hat * x).mean())
    sigma = -k_hat / b_hat
    k_hat = (n * k_hat + 10 * 0.5) / (n + 10.0)
    return k_hat, sigma


# ---- scoring rules -----------------------------------------------------------------------------------------
def crps_empirical(pred: Any, truth: Any) -> Any:
    """The (negatively oriented) continuous ranked probability score of draws ``pred
    [num_samples, *truth.shape]`` against observations ``truth``:
    ``E|pred - truth| - E|pred - pred'| / 2``, in ``O(n log n)`` via the sorted draws.
    Shape ``truth.shape``; one draw gives the absolute error."""
    p, from_numpy = _tensor(pred, "crps_empirical")
    t, _ = _tensor(truth, "crps_empirical")
    if p.dim() < 1 or p.shape[1:] != (1,) * (p.dim() - t.dim() - 1) + tuple(t.shape):
        raise ValueError(f"crps_empirical: pred must be [num_samples, *truth.shape]; got pred {tuple(p.shape)} and truth "
                         f"{tuple(t.shape)}")
    n = p.shape[0]
    if n == 1:
        return _out((p[0] - t).abs(), from_numpy)
    ps = p.sort(0).values
    gaps = ps[1:] - ps[:-1]
    i = torch.arange(1, n, dtype=p.dtype, device=p.device)
    weight = (i * (n - i)).reshape((-1,) + (1,) * (gaps.dim() - 1))
    return _out((p - t).abs().mean(0) - (gaps * weight).sum(0) / n**2, from_numpy)


def energy_score_empirical(pred: Any, truth: Any, pred_batch_size: int | None = None) -> Any:
    """The (negatively oriented) energy score of multivariate draws ``pred [..., num_samples, D]``
    against ``truth [..., D]``: ``E||pred - truth|| - E||pred - pred'|| / 2`` (Euclidean norms over
    the last dim); shape ``[...]``. A ``truth [..., M, D]`` scores each of its ``M`` vectors:
    shape ``[..., M]``. For ``D = 1`` this is :func:`crps_empirical`. Quadratic in
    ``num_samples``; ``pred_batch_size`` bounds the memory by taking the draws in chunks."""
    p, from_numpy = _tensor(pred, "energy_score_empirical")
    t, _ = _tensor(truth, "energy_score_empirical")
    if p.dim() < 2:
        raise ValueError(f"energy_score_empirical: pred must be [..., num_samples, D], got shape {tuple(p.shape)}")
    squeeze = t.dim() == p.dim() - 1
    if squeeze:
        t = t.unsqueeze(-2)
    if t.dim() != p.dim() or t.shape[-1] != p.shape[-1]:
        raise ValueError(f"energy_score_empirical: truth must be [..., D] or [..., M, D] with pred [..., num_samples, D]; "
                         f"got pred {tuple(p.shape)} and truth {tuple(truth.shape if hasattr(truth, 'shape') else ())}")
    batch = torch.broadcast_shapes(p.shape[:-2], t.shape[:-2])
    p = p.expand(batch + p.shape[-2:])
    t = t.expand(batch + t.shape[-2:])
    n = p.shape[-2]
    chunk = n if pred_batch_size is None else max(int(pred_batch_size), 1)

    def dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # [..., P, R]
        return (a.unsqueeze(-2) - b.unsqueeze(-3)).norm(dim=-1)

    to_truth = torch.zeros(batch + t.shape[-2:-1], dtype=p.dtype, device=p.device)
    spread = torch.zeros(batch, dtype=p.dtype, device=p.device)
    for start in range(0, n, chunk):
        block = p[..., start:start + chunk, :]
        to_truth = to_truth + dist(block, t).sum(-2)
        spread = spread + dist(block, p).sum((-2, -1))
    score = to_truth / n - 0.5 * spread.unsqueeze(-1) / n**2
    return _out(score.squeeze(-1) if squeeze else score, from_numpy)
