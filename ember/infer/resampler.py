"""``Resampler``: importance-resample a large bank of guide draws to follow a model (Pyro's
prior-predictive tuning workflow: draw once from a broad guide, then re-weight for each new model)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ember.infer.renyi_elbo import per_particle
from ember.infer.util import guess_max_plate_nesting, in_plate
from ember.poutine.block_messenger import BlockMessenger
from ember.poutine.condition_messenger import ConditionMessenger
from ember.poutine.trace_messenger import TraceMessenger
from ember.poutine.trace_struct import Trace
from ember.runtime import is_latent

__all__ = ["Resampler"]

_PLATE = "_resampler_samples"


def _run_vectorized(fn: Callable, n: int, nesting: int, values: dict | None, args: tuple, kwargs: dict) -> Trace:
    """A trace of ``fn`` inside a plate of ``n`` at dim ``-nesting - 1``, its sites fixed to ``values``."""
    wrapped = in_plate(fn, _PLATE, n, -nesting - 1)
    if values is not None:
        wrapped = ConditionMessenger(wrapped, data=values)
    with torch.no_grad(), BlockMessenger():
        tm = TraceMessenger(wrapped)
        tm(*args, **kwargs)
    tr = tm.trace
    tr.max_plate_nesting = nesting + 1
    tr.compute_log_prob()
    return tr


class Resampler:
    """Draw ``num_guide_samples`` samples of ``guide``'s latent sites once, then resample them
    (importance weights ``p_model(z) / q_guide(z)``) to follow any ``model`` over the same sites.

    :param guide: a function of ``(*args, **kwargs)`` sampling the latent sites (often a broad prior).
    :param simulator: optional; run (vectorized) on the resampled latents by :meth:`sample`, whose
        output then includes the simulator's sites (e.g. simulated data).
    :param num_guide_samples: the bank's size ``M``.
    :param max_plate_nesting: batch dims of guide, model and simulator (guessed from one guide run when None).

    ``sample(model, num_samples)`` returns ``{site: [num_samples, ...]}``. With ``stable=True`` the
    resampling uses the same uniform numbers each call (systematic resampling at fixed offsets), so that
    small changes of the model move few samples: what interactive tuning wants.
    """

    def __init__(self, guide: Callable, simulator: Callable | None = None, *, num_guide_samples: int,
                 max_plate_nesting: int | None = None, guide_args: tuple = (), guide_kwargs: dict | None = None) -> None:
        if isinstance(num_guide_samples, bool) or not isinstance(num_guide_samples, int) or num_guide_samples < 1:
            raise ValueError(f"Resampler: num_guide_samples must be a positive integer; got {num_guide_samples!r}")
        self.guide = guide
        self.simulator = simulator
        self.num_guide_samples = num_guide_samples
        args, kwargs = tuple(guide_args), dict(guide_kwargs or {})
        with torch.no_grad(), BlockMessenger():
            tm = TraceMessenger(guide)
            tm(*args, **kwargs)  # one plain run: each site's shape in one sample
        self._shapes = {k: s.value.shape for k, s in tm.trace.nodes.items() if is_latent(s)}
        if max_plate_nesting is None:
            max_plate_nesting = guess_max_plate_nesting(tm.trace)
        self.max_plate_nesting = max_plate_nesting
        tr = _run_vectorized(guide, num_guide_samples, max_plate_nesting, None, args, kwargs)
        self._names = [k for k, s in tr.nodes.items() if is_latent(s)]
        if not self._names:
            raise ValueError("Resampler: the guide samples no latent site; there is nothing to resample")
        self._values = {k: tr.nodes[k].value for k in self._names}  # particles at dim -nesting-1
        self._guide_log_density = self._log_density(tr)
        self._offsets = torch.rand(())

    def _log_density(self, trace: Trace) -> torch.Tensor:
        n, dim = self.num_guide_samples, -self.max_plate_nesting - 1
        total = torch.zeros(n)
        for site in trace.nodes.values():
            if site.type == "sample" and site.log_prob is not None:
                total = total + per_particle(site.log_prob, dim, n)
        return total

    def _flat(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """A site's vectorized value (the samples at dim ``-nesting-1``, ones left of its own
        dims) -> ``[M, *site shape]``."""
        return value.reshape((self.num_guide_samples,) + tuple(self._shapes[name]))

    def sample(self, model: Callable, num_samples: int, stable: bool = True, model_args: tuple = (),
               model_kwargs: dict | None = None) -> dict[str, torch.Tensor]:
        """``num_samples`` of the bank resampled to follow ``model`` (and the simulator's sites when given):
        a dict from site name to a tensor of shape ``(num_samples,) + site shape``."""
        args, kwargs = tuple(model_args), dict(model_kwargs or {})
        tr = _run_vectorized(model, self.num_guide_samples, self.max_plate_nesting, self._values, args, kwargs)
        log_w = self._log_density(tr) - self._guide_log_density
        if bool(torch.isneginf(log_w).all()) or bool(torch.isnan(log_w).any()):
            raise ValueError("Resampler: no guide sample has positive density under the model (or a weight is NaN); "
                             "draw a broader bank from the guide")
        probs = torch.softmax(log_w, 0)
        u = (self._offsets if stable else torch.rand(())) + torch.arange(num_samples, dtype=probs.dtype)
        cdf = probs.cumsum(0)
        cdf[-1] = 1.0
        idx = torch.searchsorted(cdf, u / num_samples).clamp(max=self.num_guide_samples - 1)
        out = {k: self._flat(k, v)[idx] for k, v in self._values.items()}
        if self.simulator is not None:
            from ember.infer.predictive import Predictive

            sim = Predictive(self.simulator, posterior_samples=out, parallel=True)(*args, **kwargs)
            out = {**out, **sim}
        return out
