"""What vectorized inference shares: how many batch dims a model uses, and running a function
inside one more plate to the left of them (particles of an ELBO, importance samples,
Predictive's samples)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ember.params import get_param_store
from ember.poutine.plate_messenger import PlateMessenger
from ember.poutine.trace_struct import Trace

__all__ = ["guess_max_plate_nesting", "in_plate", "trace_params"]


def trace_params(trace: Trace) -> dict:
    """``{name: unconstrained tensor}`` of the store parameters whose param sites ``trace``
    recorded (``poutine.trace(param_only=True)`` around a step): what the step may update.
    Sites whose name is not in the store (substituted values) are left out."""
    store = get_param_store()
    out = {}
    for name, site in trace.nodes.items():
        if site.type == "param":
            u = store.unconstrained(name)
            if u is not None:
                out[name] = u
    return out


def guess_max_plate_nesting(*traces: Trace) -> int:
    """How many batch dims the sample sites of ``traces`` use: the deepest vectorized plate,
    and also any batch dims no plate declares (a distribution with batch_shape (3,) outside
    every plate, an observation of shape (5,) under a scalar distribution). A plate put left
    of that many dims never collides with a dim of the model's own."""
    n = 0
    for tr in traces:
        for site in tr.nodes.values():
            if site.type != "sample":
                continue
            for f in site.cond_indep_stack:
                if f.dim is not None:
                    n = max(n, -f.dim)
            fn = site.fn
            event_dim = len(getattr(fn, "event_shape", ()))
            batch_shape = getattr(fn, "batch_shape", None)
            if batch_shape is not None:
                n = max(n, len(batch_shape))
            v = site.value
            if isinstance(v, torch.Tensor):
                n = max(n, v.dim() - event_dim)
    return n


def in_plate(fn: Callable, name: str, size: int, dim: int) -> Callable:
    """``fn`` run inside ``plate(name, size, dim=dim)``; the wrapper keeps ``fn`` as
    ``_ember_unwrap``, so what looks for a guide's handler (a ``GuideMessenger``) sees through it."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with PlateMessenger(name, size, dim=dim):
            return fn(*args, **kwargs)

    wrapped._ember_unwrap = fn  # type: ignore[attr-defined]
    return wrapped


# ---- model criticism (issue 14): the pointwise log-likelihood -------------------------------------
__all__ += ["log_likelihood", "observed_sites"]

from ember.poutine.messenger import Messenger  # noqa: E402
from ember.poutine.trace_messenger import TraceMessenger  # noqa: E402


def _draws(posterior_samples: dict, who: str) -> tuple[dict, int]:
    """``({name: tensor [N, ...]}, N)`` with every leading dim checked to agree."""
    if not isinstance(posterior_samples, dict) or not posterior_samples:
        raise ValueError(f"{who}: posterior_samples must be a non-empty dict {{site name: tensor [num_draws, ...]}}")
    out = {k: torch.as_tensor(v) for k, v in posterior_samples.items()}
    sizes = {k: (v.shape[0] if v.dim() else None) for k, v in out.items()}
    n = next(iter(sizes.values()))
    if n is None or any(s != n for s in sizes.values()):
        raise ValueError(f"{who}: every posterior sample needs the same leading (draw) dim; got {sizes}")
    return out, n


class _SetLatents(Messenger):
    """Set each latent sample site to ``values[name]`` (a tensor of the site's shape, with any
    batch dims the caller's plates expect); a latent site missing from ``values`` is a
    ValueError saying :meth:`missing`. What log-likelihoods, criticism and the MCMC potential
    share."""

    def __init__(self, fn: Callable | None, values: dict, who: str) -> None:
        super().__init__(fn)
        self.values = values
        self.who = who

    def missing(self, name: str) -> str:
        """The error for a latent site ``name`` that ``values`` lacks."""
        return (f"{self.who}: the model's latent site '{name}' has no posterior draws (given: {sorted(self.values)}); "
                f"pass a draw for every latent site (e.g. mcmc.get_samples(), or Predictive(model, guide=guide, "
                f"num_samples=N, return_sites=[...every latent...])())")

    def _pyro_sample(self, msg: Any) -> None:
        if msg.is_observed:
            return
        try:
            msg.value = self.values[msg.name]
        except KeyError:
            raise ValueError(self.missing(msg.name)) from None
        msg.done = True


def _run_at(model: Callable, values: dict, args: tuple, kwargs: dict, who: str) -> Trace:
    """A trace of ``model`` with its latent sites set to ``values``."""
    tm = TraceMessenger(_SetLatents(model, values, who))
    tm(*args, **kwargs)
    return tm.trace


def observed_sites(trace: Trace) -> list[str]:
    """The observed data sites of a trace: observed sample sites that are neither deterministic
    (``ember.deterministic``, reparameterized latents) nor ``factor`` terms."""
    from ember.runtime import is_deterministic, is_factor, is_observed

    return [n for n, s in trace.nodes.items() if is_observed(s) and not is_deterministic(s) and not is_factor(s)]


def log_likelihood(model: Callable, posterior_samples: dict, *args: Any, parallel: bool = False, **kwargs: Any) -> dict[str, torch.Tensor]:
    """The pointwise log-likelihood of each observed site under each posterior draw.

    :param model: the model, its data observed (``obs=`` or ``condition``).
    :param posterior_samples: ``{site: tensor [N, *site shape]}`` for every latent site of the model
        (``MCMC.get_samples()``, or draws of a guide through ``Predictive``); other entries
        (deterministic sites, observations) are ignored.
    :param parallel: run all ``N`` draws at once, in a plate left of the model's (its control flow
        must not depend on the latent values); default: one run per draw.
    :param args, kwargs: the model's arguments.
    :returns: ``{observed site: tensor [N, *batch shape]}``: ``log p(y_i | theta_n)`` per draw ``n``
        and datum ``i`` (the event dims summed; masks applied; plate subsampling scales not applied).
        This is the matrix LOO and WAIC need (``ember.ops.stats.waic``, ``arviz.loo``).
    :raises ValueError: when the model has no observed site, or a latent site has no draws.
    """
    from ember.poutine.trace_struct import scale_and_mask

    samples, n = _draws(posterior_samples, "log_likelihood")
    with torch.no_grad():
        first = _run_at(model, {k: v[0] for k, v in samples.items()}, args, kwargs, "log_likelihood")
        names = observed_sites(first)
        if not names:
            sites = [k for k, s in first.nodes.items() if s.type == "sample"]
            raise ValueError(
                f"log_likelihood: the model observes no site (its sample sites are {sites}); give the data with "
                f"obs= or poutine.condition so that there is a likelihood to evaluate"
            )

        def pointwise(tr: Trace, name: str) -> torch.Tensor:
            site = tr.nodes[name]
            return scale_and_mask(site.fn.log_prob(site.value), 1.0, site.mask)

        if parallel:
            nesting = guess_max_plate_nesting(first)
            shapes = {k: s.value.shape for k, s in first.nodes.items() if s.type == "sample" and isinstance(s.value, torch.Tensor)}
            values = {}
            for k, v in samples.items():
                if k in shapes:
                    site = first.nodes[k]
                    event_dim = len(getattr(site.fn, "event_shape", ()))
                    pad = max(0, nesting - (len(shapes[k]) - event_dim))
                    values[k] = v.reshape((n,) + (1,) * pad + tuple(shapes[k]))
            tr = _run_at(in_plate(model, "_log_likelihood_draws", n, -nesting - 1), values, args, kwargs, "log_likelihood")
            return {k: pointwise(tr, k).reshape((n,) + tuple(pointwise(first, k).shape)) for k in names}
        out: dict[str, list] = {k: [pointwise(first, k)] for k in names}
        for i in range(1, n):
            tr = _run_at(model, {k: v[i] for k, v in samples.items()}, args, kwargs, "log_likelihood")
            for name in names:
                out[name].append(pointwise(tr, name))
    return {k: torch.stack(v) for k, v in out.items()}


# ---- Pyro's small helpers (pyro.infer.util) -------------------------------------------------------
__all__ += ["enable_validation", "is_identically_zero", "is_validation_enabled", "plate_log_prob_sum", "torch_item", "zero_grads"]

from ember.primitives import enable_validation  # noqa: E402
from ember.runtime import is_validation_enabled  # noqa: E402


def torch_item(x: Any) -> Any:
    """``x.item()`` for a tensor of shape ``()`` (or any one-element shape); a Python number is
    returned as it is."""
    return x.item() if isinstance(x, torch.Tensor) else x


def is_identically_zero(x: Any) -> bool:
    """Whether ``x`` is the Python number 0 (a tensor, of any shape, never is: its value may change)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == 0


def zero_grads(tensors: Any) -> None:
    """Set the ``.grad`` of each tensor that has one to zeros (a new tensor of its shape)."""
    for t in tensors:
        if t.grad is not None:
            t.grad = torch.zeros_like(t.grad)


def plate_log_prob_sum(trace: Trace, plate_name: str) -> torch.Tensor:
    """The log-density of ``trace`` (its sample sites' scaled, masked ``log_prob``, computed if
    needed) summed over every dim but the one of the plate named ``plate_name``: a tensor of shape
    ``(plate size,)``. A site outside the plate adds its whole log-density to every entry."""
    trace.compute_log_prob()
    total: Any = 0.0
    found = False
    for name, site in trace.nodes.items():
        if site.type != "sample" or site.log_prob is None:
            continue
        lp = torch.as_tensor(site.log_prob)
        frame = next((f for f in site.cond_indep_stack if f.name == plate_name and f.dim is not None), None)
        if frame is None:
            total = total + lp.sum()
            continue
        found = True
        if lp.dim() < -frame.dim:
            raise ValueError(f"plate_log_prob_sum: site '{name}' is in plate '{plate_name}' (dim {frame.dim}) but its "
                             f"log-density has shape {tuple(lp.shape)}")
        keep = lp.dim() + frame.dim
        others = [d for d in range(lp.dim()) if d != keep]
        if others:  # (sum over an empty list of dims would sum them all)
            lp = lp.sum(others)
        total = total + lp
    if not found:
        plates = sorted({f.name for s in trace.nodes.values() if s.type == "sample" for f in s.cond_indep_stack})
        raise ValueError(f"plate_log_prob_sum: no sample site of the trace is in a plate named '{plate_name}' (its plates: {plates})")
    return total


# ---- the rest of Pyro's pyro.infer.util helpers -------------------------------------------------
__all__ += ["check_fully_reparametrized", "get_dependent_plate_dims", "get_plate_stacks", "torch_backward", "torch_exp", "torch_sum",
            "validation_enabled"]

import math  # noqa: E402

from ember.primitives import validation_enabled  # noqa: E402


def torch_exp(x: Any) -> Any:
    """``x.exp()`` for a tensor (same shape), ``math.exp(x)`` for a number."""
    return torch.exp(x) if isinstance(x, torch.Tensor) else math.exp(x)


def torch_sum(tensor: torch.Tensor, dims: Any) -> torch.Tensor:
    """``tensor`` summed over those of the negative ``dims`` it has (a dim left of its own is
    skipped): the shape without those dims."""
    if any(d >= 0 for d in dims):
        raise ValueError(f"torch_sum: dims must be negative (counted from the right); got {list(dims)}")
    present = [d for d in dims if d >= -tensor.dim()]
    return tensor.sum(present) if present else tensor


def torch_backward(x: Any, retain_graph: bool | None = None) -> None:
    """``x.backward()`` for a tensor with a gradient graph (a scalar, shape ``()``, as ``backward``
    needs without a gradient argument); nothing for a number or a tensor without one."""
    if isinstance(x, torch.Tensor) and x.grad_fn is not None:
        x.backward(retain_graph=retain_graph)


def check_fully_reparametrized(guide_site: Any) -> None:
    """Raise ``NotImplementedError`` naming the site unless its distribution draws by ``rsample``
    (what estimators that differentiate only through the draws need)."""
    if not guide_site["fn"].has_rsample:
        raise NotImplementedError(
            f"guide site '{guide_site['name']}' ({type(guide_site['fn']).__name__}) is not reparameterized: all distributions "
            f"in the guide must be fully reparameterized for this estimator")


def get_plate_stacks(trace: Trace) -> dict[str, list]:
    """``{sample site: [the vectorized plates (CondIndepStackFrame) it is inside]}`` (plates'
    own subsample sites left out)."""
    return {name: [f for f in site.cond_indep_stack if f.vectorized] for name, site in trace.nodes.items()
            if site.type == "sample"}


def get_dependent_plate_dims(sites: Any) -> list[int]:
    """The dims (sorted) of the vectorized plates that some but not all of the sample ``sites`` are inside."""
    stacks = [set(site["cond_indep_stack"]) for site in sites if site["type"] == "sample"]
    if not stacks:
        return []
    every = set().union(*stacks)
    return sorted({f.dim for f in every - set.intersection(*stacks) if f.dim is not None})


def __getattr__(name: str) -> Any:
    # Pyro's pyro.infer.util.MultiFrameTensor lives in ember.infer.elbo (which imports this module)
    if name == "MultiFrameTensor":
        from ember.infer.elbo import MultiFrameTensor

        return MultiFrameTensor
    raise AttributeError(f"module 'ember.infer.util' has no attribute {name!r}")
