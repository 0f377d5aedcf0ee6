"""MCMC utilities with Pyro's names (``pyro.infer.mcmc.util``): a model's potential function and
starting point, diagnostics and summary tables of draws, and selecting draws.

Summaries mean what Pyro's mean: the interval printed under the percentile labels (``5.0%`` and
``95.0%`` for ``prob=0.9``) is the highest posterior density interval (:func:`ember.ops.stats.hpdi`),
not the equal-tailed one (that is :func:`ember.ops.stats.pi`); ``median`` is torch's (the lower of
the two middle draws when their number is even); ``std`` is the sample standard deviation.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from itertools import product
from typing import Any

import torch

from ember.infer.initialization import init_to_uniform, init_to_value
from ember.ops import stats

__all__ = ["diagnostics", "diagnostics_from_stats", "format_summary", "initialize_model", "print_summary", "select_samples", "summary"]


def _as_tensor(name: str, value: Any) -> torch.Tensor:
    v = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    if not v.dtype.is_floating_point:
        v = v.to(torch.get_default_dtype())
    return v.detach()


def _grouped(samples: dict, group_by_chain: bool, owner: str) -> dict[str, torch.Tensor]:
    out = {}
    for name, value in samples.items():
        v = _as_tensor(name, value)
        if not group_by_chain:
            v = v.unsqueeze(0)
        if v.dim() < 2:
            raise ValueError(f"{owner}: samples['{name}'] has shape {tuple(v.shape)}; with group_by_chain=True each value "
                             f"is [num_chains, num_draws, ...] (pass group_by_chain=False for [num_draws, ...])")
        out[name] = v
    return out


def _nan_like(v: torch.Tensor) -> torch.Tensor:
    return torch.full(v.shape[2:], math.nan, dtype=v.dtype)


def diagnostics(samples: dict, group_by_chain: bool = True) -> dict[str, dict[str, torch.Tensor]]:
    """``{site: {"n_eff": ..., "r_hat": ...}}`` for draws ``samples[site]`` of shape
    ``[num_chains, num_draws, ...]`` (``[num_draws, ...]`` with ``group_by_chain=False``); each
    statistic has the site's shape. ``r_hat`` is the split R-hat (NaN below 4 draws per chain)."""
    out = {}
    for name, v in _grouped(samples, group_by_chain, "diagnostics").items():
        site = OrderedDict()
        site["n_eff"] = stats.effective_sample_size(v) if v.shape[1] >= 2 else _nan_like(v)
        site["r_hat"] = stats.split_gelman_rubin(v) if v.shape[1] >= 4 else _nan_like(v)
        out[name] = site
    return out


def summary(samples: dict, prob: float = 0.9, group_by_chain: bool = True) -> dict[str, OrderedDict]:
    """Per site: ``mean``, ``std``, ``median``, the ``prob`` highest posterior density interval
    under Pyro's labels (``"5.0%"`` and ``"95.0%"`` for 0.9), ``n_eff`` and ``r_hat`` (see
    :func:`diagnostics`), each a tensor of the site's shape. ``samples[site]`` is
    ``[num_chains, num_draws, ...]`` (or ``[num_draws, ...]`` with ``group_by_chain=False``); the
    chains are pooled for every statistic but ``n_eff`` and ``r_hat``."""
    if not 0 < prob < 1:
        raise ValueError(f"summary: prob must be in (0, 1), got {prob!r}")
    lower, upper = f"{50 * (1 - prob):.1f}%", f"{50 * (1 + prob):.1f}%"
    out = {}
    diag = diagnostics(samples, group_by_chain)
    for name, v in _grouped(samples, group_by_chain, "summary").items():
        flat = v.reshape((-1,) + v.shape[2:])
        interval = stats.hpdi(flat, prob=prob)
        out[name] = OrderedDict([
            ("mean", flat.mean(0)),
            ("std", flat.std(0) if flat.shape[0] > 1 else torch.full(flat.shape[1:], math.nan, dtype=flat.dtype)),
            ("median", flat.median(0).values),
            (lower, interval[0]),
            (upper, interval[1]),
            ("n_eff", diag[name]["n_eff"]),
            ("r_hat", diag[name]["r_hat"]),
        ])
    return out


def format_summary(summary_dict: dict[str, dict[str, torch.Tensor]], num_divergences: int | None = None) -> str:
    """The table :func:`print_summary` prints: one row per element of each site."""
    if not summary_dict:
        return ""
    columns = list(next(iter(summary_dict.values())).keys())
    labels = []
    for name, st in summary_dict.items():
        shape = tuple(torch.as_tensor(st["mean"]).shape)
        labels.extend(name + (f"[{','.join(map(str, idx))}]" if idx else "") for idx in product(*map(range, shape)))
    width = max(max(map(len, labels)), 10)
    lines = ["", f"{'':>{width}}" + "".join(f" {c:>9}" for c in columns)]
    for name, st in summary_dict.items():
        values = [torch.as_tensor(st[c]) for c in columns]
        for idx in product(*map(range, values[0].shape)):
            label = name + (f"[{','.join(map(str, idx))}]" if idx else "")
            lines.append(f"{label:>{width}}" + "".join(f" {float(v[idx]):>9.2f}" for v in values))
    lines.append("")
    if num_divergences is not None:
        lines.append(f"Number of divergences: {num_divergences}")
    return "\n".join(lines)


def print_summary(samples: dict, prob: float = 0.9, group_by_chain: bool = True) -> None:
    """Print :func:`summary` as a table (one row per element of each site). ``samples[site]`` has
    shape ``(num_chains, num_draws, *site_shape)`` with ``group_by_chain`` (the default), else
    ``(num_draws, *site_shape)``."""
    if len(samples) == 0:
        return
    print(format_summary(summary(samples, prob, group_by_chain)))


def select_samples(samples: dict, num_samples: int | None = None, group_by_chain: bool = False) -> dict[str, torch.Tensor]:
    """Pyro's selection of MCMC draws: all of them (chains pooled unless ``group_by_chain``), or
    ``num_samples`` draws picked uniformly at random *with* replacement (along the draw dim; per
    chain with ``group_by_chain=True``). ``samples[site]`` is ``[num_chains, num_draws, ...]``."""
    if not group_by_chain:
        samples = {k: v.reshape((-1,) + v.shape[2:]) for k, v in samples.items()}
    if num_samples is None:
        return dict(samples)
    if not samples:
        raise ValueError("select_samples: no samples to select from")
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"select_samples: num_samples must be a positive integer, got {num_samples!r}")
    dim = 1 if group_by_chain else 0
    first = next(iter(samples.values()))
    idx = torch.randint(0, first.shape[dim], (num_samples,), device=first.device)
    return {k: v.index_select(dim, idx) for k, v in samples.items()}


def initialize_model(model: Callable, model_args: tuple = (), model_kwargs: dict | None = None, transforms: dict | None = None,
                     max_plate_nesting: int | None = None, jit_compile: bool = False, jit_options: dict | None = None,
                     skip_jit_warnings: bool = False, num_chains: int = 1, init_strategy: Any = init_to_uniform,
                     initial_params: dict | None = None) -> tuple[dict, Callable, dict, Any]:
    """What HMC and NUTS need from a model, as Pyro's function returns it:
    ``(initial_params, potential_fn, transforms, prototype_trace)``.

    - ``initial_params``: unconstrained starting values by latent site (a leading ``num_chains``
      dim when ``num_chains > 1``), each with a finite potential and gradient;
    - ``potential_fn(params) -> scalar tensor``: minus the log joint density (plates' scales and
      masks applied) plus the log-Jacobians, of a dict of unconstrained tensors;
    - ``transforms``: ``{site: Transform}`` from each site's constrained values to unconstrained
      ones (Pyro's direction; ``t.inv`` constrains);
    - ``prototype_trace``: the model's trace at the first starting point.

    ``transforms`` (input) overrides the default ``biject_to(support).inv`` per site, in the same
    direction. ``jit_compile``: compile the potential into one graph (see
    :mod:`ember.infer.mcmc.compile`; a model that cannot be compiled keeps running eagerly).
    ``max_plate_nesting``, ``jit_options`` and ``skip_jit_warnings`` have no effect in Ember
    (plates are allocated as the model runs; there is no TorchScript tracing to configure).
    """
    from ember.infer.mcmc.potential import ModelPotential

    if not isinstance(num_chains, int) or num_chains < 1:
        raise ValueError(f"initialize_model: num_chains must be a positive integer, got {num_chains!r}")
    user = {k: t.inv for k, t in (transforms or {}).items()}
    mp = ModelPotential(model, tuple(model_args), dict(model_kwargs or {}), transforms=user)
    points = []
    for chain in range(num_chains):
        given = None
        if initial_params:
            given = {k: (torch.as_tensor(v)[chain] if num_chains > 1 else torch.as_tensor(v)) for k, v in initial_params.items()}
        z, u, g = mp.initial_point(init_strategy, given)
        points.append(z)
        if chain == 0 and jit_compile:
            mp.compile(z, u, g)
    trace = mp.trace_at(init_to_value(values=mp.constrain(points[0]), fallback=None))
    by_chain = [_split(mp, z) for z in points]
    init = by_chain[0] if num_chains == 1 else {k: torch.stack([p[k] for p in by_chain]) for k in by_chain[0]}
    out_transforms = {}
    for s in mp.sites:
        t = s.transform if s.transform is not None else torch.distributions.transforms.identity_transform
        out_transforms[s.name] = t.inv

    def potential_fn(params: dict) -> torch.Tensor:
        """Minus the log joint (plus log-Jacobians) of unconstrained ``params`` by site."""
        missing = [s.name for s in mp.sites if s.name not in params]
        if missing:
            raise KeyError(f"potential_fn: params lacks latent site(s) {missing}; it needs every one of "
                           f"{[s.name for s in mp.sites]}")
        z = torch.cat([torch.as_tensor(params[s.name]).reshape(-1).to(mp.dtype) for s in mp.sites]) if mp.sites \
            else torch.zeros(0, dtype=mp.dtype)
        return mp.potential(z)

    potential_fn.model_potential = mp  # type: ignore[attr-defined]
    return init, potential_fn, out_transforms, trace


def _split(mp: Any, z: torch.Tensor) -> dict[str, torch.Tensor]:
    return {s.name: z[s.offset:s.offset + s.size].reshape(s.unconstrained_shape).clone() for s in mp.sites}


def diagnostics_from_stats(statistics: dict, num_samples: int, num_chains: int) -> dict[str, dict[str, torch.Tensor]]:
    """Gelman-Rubin's ``r_hat`` (unsplit) per site from streaming statistics ``{(chain, site):
    {"mean", "variance", ...}}`` (each of the site's shape; sites without both are skipped):
    ``{site: {"r_hat": tensor of the site's shape}}``. With one chain it is 1 wherever the variance
    is positive (there is nothing between chains to compare)."""
    by_site: dict[str, tuple[list, list]] = {}
    for key, stat in statistics.items():
        if not (isinstance(key, tuple) and len(key) == 2) or "mean" not in stat or "variance" not in stat:
            continue
        means, variances = by_site.setdefault(key[1], ([], []))
        means.append(stat["mean"])
        variances.append(stat["variance"])
    out = {}
    n = num_samples
    for name, (means, variances) in by_site.items():
        m, v = torch.stack(means), torch.stack(variances)
        within = v.mean(0)
        estimate = (n - 1) / n * within
        if num_chains > 1:
            estimate = estimate + m.var(0)
        else:
            within = estimate
        out[name] = {"r_hat": (estimate / within).sqrt()}
    return out
