"""Convergence diagnostics and summaries for MCMC draws.

Conventions: ``x`` has shape ``[num_chains, num_draws, ...]``; statistics are computed per
element of the trailing dims.

- :func:`effective_sample_size`: Stan's multi-chain ESS (autocorrelations by FFT, combined
  across chains through the within/between variances, Geyer's initial monotone sequence);
- :func:`split_gelman_rubin` (``r_hat``): the split-chain potential scale reduction factor;
- :func:`gelman_rubin`: the same without splitting;
- :func:`autocorrelation`, :func:`autocovariance`, :func:`hpdi`, :func:`quantiles`;
- :func:`summary` / :func:`print_summary`: a table per site (mean, sd, median, quantiles, n_eff, r_hat).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = [
    "autocorrelation",
    "autocovariance",
    "effective_sample_size",
    "gelman_rubin",
    "hpdi",
    "print_summary",
    "quantiles",
    "split_gelman_rubin",
    "summary",
]


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64).cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _check_chains(x: np.ndarray, name: str, min_draws: int = 2) -> None:
    if x.ndim < 2:
        raise ValueError(f"{name}: expected draws of shape [num_chains, num_draws, ...], got shape {x.shape}")
    if x.shape[1] < min_draws:
        raise ValueError(f"{name}: needs at least {min_draws} draws per chain, got {x.shape[1]}")


def autocorrelation(x: Any, dim: int = 0) -> np.ndarray:
    """Autocorrelation of ``x`` along ``dim`` at every lag (by FFT)."""
    x = np.moveaxis(_np(x), dim, -1)
    n = x.shape[-1]
    m = 1 << int(math.ceil(math.log2(max(2 * n, 2))))
    centered = x - x.mean(-1, keepdims=True)
    f = np.fft.rfft(centered, n=m, axis=-1)
    acov = np.fft.irfft(f * np.conj(f), n=m, axis=-1)[..., :n]
    with np.errstate(invalid="ignore", divide="ignore"):
        acorr = acov / acov[..., :1]
    acorr = np.where(np.isfinite(acorr), acorr, 0.0)
    acorr[..., 0] = 1.0
    return np.moveaxis(acorr, -1, dim)


def autocovariance(x: Any, dim: int = 0) -> np.ndarray:
    """Biased autocovariance (divided by ``n``) of ``x`` along ``dim`` at every lag."""
    arr = _np(x)
    var = np.var(arr, axis=dim, keepdims=True)
    return autocorrelation(arr, dim) * var


def gelman_rubin(x: Any) -> np.ndarray:
    """Potential scale reduction ``R_hat`` of ``x [num_chains, num_draws, ...]`` (no splitting)."""
    x = _np(x)
    _check_chains(x, "gelman_rubin")
    c, n = x.shape[:2]
    chain_mean = x.mean(1)
    chain_var = x.var(1, ddof=1)
    w = chain_var.mean(0)
    b_over_n = chain_mean.var(0, ddof=1) if c > 1 else np.zeros_like(w)
    var_plus = (n - 1) / n * w + b_over_n
    with np.errstate(invalid="ignore", divide="ignore"):
        rhat = np.sqrt(var_plus / w)
    return np.where(w > 0, rhat, np.where(b_over_n > 0, np.inf, 1.0))


def split_gelman_rubin(x: Any) -> np.ndarray:
    """Split ``R_hat``: each chain cut in two halves, then :func:`gelman_rubin` over them."""
    x = _np(x)
    _check_chains(x, "split_gelman_rubin", min_draws=4)
    n = x.shape[1] // 2
    halves = np.concatenate([x[:, :n], x[:, -n:]], axis=0)
    return gelman_rubin(halves)


def effective_sample_size(x: Any) -> np.ndarray:
    """Effective sample size of ``x [num_chains, num_draws, ...]`` (Stan's estimator)."""
    x = _np(x)
    _check_chains(x, "effective_sample_size")
    c, n = x.shape[:2]
    acov = autocovariance(x, dim=1)  # [C, N, ...]
    var_within = acov[:, 0] * n / (n - 1)  # per-chain variance (ddof=1)
    mean_var = var_within.mean(0)
    var_plus = mean_var * (n - 1) / n
    if c > 1:
        var_plus = var_plus + x.mean(1).var(0, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = 1.0 - (mean_var - acov.mean(0)) / var_plus  # [N, ...]
    rho[0] = 1.0
    rho = np.where(np.isfinite(rho), rho, 0.0)
    # Geyer: sums of adjacent pairs, truncated at the first negative one, made monotone
    m = (n // 2) * 2
    pairs = rho[:m:2] + rho[1:m:2]  # [N/2, ...]
    positive = pairs > 0
    keep = np.cumprod(positive, axis=0).astype(bool)
    pairs = np.where(keep, pairs, 0.0)
    pairs = np.minimum.accumulate(np.where(keep, pairs, np.inf), axis=0)
    pairs = np.where(keep, pairs, 0.0)
    tau = -1.0 + 2.0 * pairs.sum(0)
    tau = np.maximum(tau, 1.0 / math.log10(max(c * n, 10)))  # Stan's cap: ESS <= N log10(N)
    ess = c * n / tau
    constant = mean_var == 0
    return np.where(constant, float(c * n), ess)


def quantiles(x: Any, probs: list[float], dim: int = 0) -> np.ndarray:
    return np.quantile(_np(x), probs, axis=dim)


def hpdi(x: Any, prob: float = 0.9, dim: int = 0) -> np.ndarray:
    """The narrowest interval holding ``prob`` of the draws: ``[2, ...]`` (low, high)."""
    x = np.sort(_np(x), axis=dim)
    n = x.shape[dim]
    k = int(math.floor(prob * n))
    if k < 1 or k >= n:
        raise ValueError(f"hpdi: prob={prob} with {n} draws leaves no interval")
    lo = np.take(x, np.arange(0, n - k), axis=dim)
    hi = np.take(x, np.arange(k, n), axis=dim)
    i = np.argmin(hi - lo, axis=dim)
    low = np.take_along_axis(lo, np.expand_dims(i, dim), axis=dim).squeeze(dim)
    high = np.take_along_axis(hi, np.expand_dims(i, dim), axis=dim).squeeze(dim)
    return np.stack([low, high])


def summary(samples: dict, prob: float = 0.9, group_by_chain: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """Per site: ``mean``, ``std``, ``median``, the ``prob`` central interval (``"5.0%"``,
    ``"95.0%"`` for 0.9), ``n_eff`` and ``r_hat``. ``samples[site]`` is
    ``[num_chains, num_draws, ...]`` (or ``[num_draws, ...]`` with ``group_by_chain=False``)."""
    if not 0 < prob < 1:
        raise ValueError(f"summary: prob must be in (0, 1), got {prob}")
    lo, hi = (1 - prob) / 2, (1 + prob) / 2
    out = {}
    for name, value in samples.items():
        x = _np(value)
        if not group_by_chain:
            x = x[None]
        flat = x.reshape((-1,) + x.shape[2:])
        q = np.quantile(flat, [lo, 0.5, hi], axis=0)
        stats = {
            "mean": flat.mean(0),
            "std": flat.std(0, ddof=1) if flat.shape[0] > 1 else np.zeros(flat.shape[1:]),
            "median": q[1],
            f"{100 * lo:.1f}%": q[0],
            f"{100 * hi:.1f}%": q[2],
        }
        if x.shape[1] >= 4:
            stats["n_eff"] = effective_sample_size(x)
            stats["r_hat"] = split_gelman_rubin(x)
        out[name] = stats
    return out


def _element_label(name: str, index: tuple) -> str:
    return name if not index else f"{name}[{','.join(str(i) for i in index)}]"


def format_summary(stats: dict[str, dict[str, np.ndarray]], num_divergences: int | None = None) -> str:
    """The table :func:`print_summary` prints."""
    if not stats:
        return "(no sites)"
    cols = list(next(iter(stats.values())).keys())
    rows = []
    for name, s in stats.items():
        shape = np.shape(s["mean"])
        for idx in np.ndindex(*shape) if shape else [()]:
            rows.append([_element_label(name, idx)] + [float(np.asarray(s[c])[idx]) for c in cols])
    width = max(12, max(len(r[0]) for r in rows) + 2)
    header = " " * width + "".join(f"{c:>10}" for c in cols)
    lines = [header]
    for r in rows:
        cells = []
        for c, v in zip(cols, r[1:]):
            cells.append(f"{v:>10.1f}" if c == "n_eff" and math.isfinite(v) else f"{v:>10.2f}")
        lines.append(f"{r[0]:>{width}}" + "".join(cells))
    if num_divergences is not None:
        lines.append("")
        lines.append(f"Number of divergences: {num_divergences}")
    return "\n".join(lines)


def print_summary(samples: dict, prob: float = 0.9, group_by_chain: bool = True) -> None:
    """Print :func:`summary` as a table."""
    print(format_summary(summary(samples, prob, group_by_chain)))
