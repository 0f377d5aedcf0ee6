"""``RandomWalkKernel``: gradient-free Metropolis with an isotropic Gaussian random walk."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch

from ember.infer.mcmc.mcmc_kernel import MCMCKernel

__all__ = ["RandomWalkKernel"]


class RandomWalkKernel(MCMCKernel):
    """Metropolis with an isotropic Gaussian random walk in the model's unconstrained space (no
    gradients): from ``z``, propose ``z + step_size * eps``, ``eps ~ N(0, I)``, and accept with
    probability ``min(1, exp(U(z) - U(z')))``. During warm-up the log step size moves by
    ``max(0.001, 0.1 / sqrt(1 + t)) * (accept_prob - target_accept_prob)`` after step ``t``, as in
    Pyro (0.234: the optimal rate of a random walk in many dimensions).

    :param model: the model (observations conditioned).
    :param init_step_size: the initial step size (a positive float, default 0.1).
    :param target_accept_prob: the acceptance probability warm-up aims at, in (0, 1) (0.234).
    """

    def __init__(self, model: Callable, init_step_size: float = 0.1, target_accept_prob: float = 0.234) -> None:
        if isinstance(init_step_size, bool) or not isinstance(init_step_size, (int, float)) or not init_step_size > 0:
            raise ValueError(f"RandomWalkKernel: init_step_size must be a positive float, got {init_step_size!r}")
        if isinstance(target_accept_prob, bool) or not isinstance(target_accept_prob, (int, float)) \
                or not 0.0 < target_accept_prob < 1.0:
            raise ValueError(f"RandomWalkKernel: target_accept_prob must lie in (0, 1), got {target_accept_prob!r}")
        self.model = model
        self.init_step_size = float(init_step_size)
        self.target_accept_prob = float(target_accept_prob)
        self.transforms: dict | None = None
        self.potential_fn: Callable | None = None
        self._initial_params = None
        self._reset()

    def _reset(self) -> None:
        self._t = 0
        self._log_step_size = math.log(self.init_step_size)
        self._accept_cnt = 0
        self._mean_accept_prob = 0.0
        self._warmup_steps = 0
        self._energy_last: Any = None

    def setup(self, warmup_steps: int, *args: Any, **kwargs: Any) -> None:
        from ember.infer.mcmc.util import initialize_model

        given = self._initial_params
        self._reset()
        self._warmup_steps = warmup_steps
        init, self.potential_fn, self.transforms, _ = initialize_model(self.model, model_args=args, model_kwargs=kwargs,
                                                                       initial_params=given)
        self._initial_params = given if given is not None else init
        self._energy_last = None

    @property
    def step_size(self) -> float:
        return math.exp(self._log_step_size)

    def sample(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.potential_fn is None:
            raise RuntimeError("RandomWalkKernel.sample: call setup(warmup_steps, *model_args) first")
        if self._energy_last is None:
            self._energy_last = float(self.potential_fn(params))
        step = self.step_size
        proposal = {k: v + step * torch.randn(v.shape, dtype=v.dtype, device=v.device) for k, v in params.items()}
        energy = float(self.potential_fn(proposal))
        accept_prob = min(1.0, math.exp(self._energy_last - energy)) if math.isfinite(energy) else 0.0
        accepted = float(torch.rand(())) < accept_prob
        if accepted:
            params = proposal
            self._energy_last = energy
        if self._t <= self._warmup_steps:
            self._log_step_size += max(0.001, 0.1 / math.sqrt(1 + self._t)) * (accept_prob - self.target_accept_prob)
        self._t += 1
        if self._t > self._warmup_steps:
            n = self._t - self._warmup_steps
            self._accept_cnt += accepted
        else:
            n = self._t
        self._mean_accept_prob += (accept_prob - self._mean_accept_prob) / n
        return dict(params)

    def logging(self) -> OrderedDict:
        return OrderedDict([("step size", f"{self.step_size:.2e}"), ("acc. prob", f"{self._mean_accept_prob:.3f}")])

    def diagnostics(self) -> dict:
        kept = self._t - self._warmup_steps
        return {"acceptance rate": self._accept_cnt / kept if kept > 0 else float("nan")}
