"""Hamiltonian Monte Carlo with step-size and mass-matrix adaptation.

The kernel moves on the flat unconstrained vector of :class:`~ember.infer.mcmc.potential.ModelPotential`.
Momenta ``p ~ N(0, M)``; the inverse mass matrix ``M^-1`` (a vector for ``full_mass=False``, a
matrix otherwise) is what windowed adaptation estimates: the covariance of the unconstrained
draws. Kinetic energy ``K(p) = p . M^-1 p / 2``. The step size adapts by dual averaging towards
``target_accept_prob`` during warm-up and is frozen after it.

The sampler's own state (position, momentum, gradient, summed momenta) lives in float64 NumPy
vectors and Python floats: on vectors of a few dozen numbers a NumPy operation costs about a
microsecond and a torch one several, and a NUTS trajectory makes some twenty of them per leapfrog
step. Only the potential and its gradient run in torch, in the model's dtype, once per step.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ember.infer.initialization import init_to_uniform, resolve_init_strategy
from ember.infer.mcmc.adaptation import DualAveraging, Welford, adaptation_windows
from ember.infer.mcmc.potential import FunctionPotential, ModelPotential
from ember.primitives import validation_enabled

__all__ = ["HMC"]

_LOG_0_8 = math.log(0.8)


class HMC:
    """Hamiltonian Monte Carlo (fixed trajectory length; Metropolis correction).

    Args:
        model: a model with continuous latents (discrete latents are refused with an error
            naming the site). Or give ``potential_fn`` instead.
        potential_fn: a function of a dict of unconstrained tensors returning the potential
            energy (a scalar tensor); needs ``initial_params`` in :class:`~ember.infer.mcmc.MCMC`.
        step_size: the initial step size (adapted during warm-up when ``adapt_step_size``).
        trajectory_length: the length ``num_steps * step_size`` of each trajectory (default 2*pi);
            ``num_steps`` fixes the number of leapfrog steps instead.
        adapt_step_size, adapt_mass_matrix, full_mass: warm-up adaptation switches; ``full_mass``
            adapts a dense mass matrix instead of a diagonal one.
        transforms: ``{site: Transform}`` from unconstrained to constrained values (default
            ``biject_to(support)``).
        target_accept_prob: the acceptance statistic dual averaging aims at (0.8).
        init_strategy: a name (``"uniform"``, ``"median"``, ``"sample"``, ``"mean"``, ``"value"``)
            or a function of the site (``ember.infer.init_to_median`` ...); default uniform on
            (-2, 2) in unconstrained space, as Stan and Pyro.
        max_energy_error: an energy error above this marks the transition divergent (1000).
        jit_compile: compile the potential and its gradient into one graph after the first
            (eager, checked) evaluation; see :mod:`ember.infer.mcmc.compile`. ``None`` (default):
            compile where the model allows it and otherwise run it eagerly, silently
            (``MCMC.compile_status`` says which happened and why); ``True``: the same, with a
            warning when the model cannot be compiled; ``False``: always run the model eagerly.
            A model whose control flow depends on latent values (an ``if`` on a tensor,
            boolean indexing) is detected and runs eagerly.
        max_plate_nesting, jit_options, ignore_jit_warnings: accepted for Pyro compatibility.
    """

    def __init__(self, model: Callable | None = None, potential_fn: Callable | None = None, step_size: float = 1.0,
                 trajectory_length: float | None = None, num_steps: int | None = None, adapt_step_size: bool = True,
                 adapt_mass_matrix: bool = True, full_mass: bool = False, transforms: dict | None = None,
                 max_plate_nesting: int | None = None, jit_compile: bool | None = None, jit_options: dict | None = None,
                 ignore_jit_warnings: bool = False, target_accept_prob: float = 0.8, init_strategy: Any = init_to_uniform,
                 *, max_energy_error: float = 1000.0, min_step_size: float = 1e-10, max_step_size: float = 1e10) -> None:
        if (model is None) == (potential_fn is None):
            raise ValueError(f"{type(self).__name__} needs exactly one of model= or potential_fn=")
        if model is not None and not callable(model):
            raise TypeError(f"{type(self).__name__}: model must be callable, got {type(model).__name__}")
        if not (isinstance(step_size, (int, float)) and step_size > 0 and math.isfinite(step_size)):
            raise ValueError(f"{type(self).__name__}: step_size must be a positive number, got {step_size!r}")
        if num_steps is not None and (not isinstance(num_steps, int) or num_steps < 1):
            raise ValueError(f"{type(self).__name__}: num_steps must be a positive integer, got {num_steps!r}")
        if trajectory_length is not None and not trajectory_length > 0:
            raise ValueError(f"{type(self).__name__}: trajectory_length must be positive, got {trajectory_length!r}")
        if not 0.0 < target_accept_prob < 1.0:
            raise ValueError(f"{type(self).__name__}: target_accept_prob must be in (0, 1), got {target_accept_prob!r}")
        self.model = model
        self.potential_fn = potential_fn
        self.step_size = float(step_size)
        self.num_steps = num_steps
        self.trajectory_length = (2 * math.pi if num_steps is None else None) if trajectory_length is None else float(trajectory_length)
        self.adapt_step_size = adapt_step_size
        self.adapt_mass_matrix = adapt_mass_matrix
        self.full_mass = full_mass
        self.transforms = transforms
        self.target_accept_prob = target_accept_prob
        self.init_strategy = init_strategy
        resolve_init_strategy(init_strategy, {})  # unknown names fail here, before any sampling
        self.max_energy_error = max_energy_error
        self.min_step_size = min_step_size
        self.max_step_size = max_step_size
        if jit_compile is not None and not isinstance(jit_compile, bool):
            raise TypeError(f"{type(self).__name__}: jit_compile must be None, True or False, got {jit_compile!r}")
        self.jit_compile = jit_compile
        self.compile_status = "not run"
        self.inverse_mass_matrix: torch.Tensor | None = None

    # ---- set-up -----------------------------------------------------------------------------------
    def make_potential(self, args: tuple, kwargs: dict, initial_params: dict | None = None) -> Any:
        if self.model is not None:
            return ModelPotential(self.model, args, kwargs, transforms=self.transforms)
        if not initial_params:
            raise ValueError(f"{type(self).__name__} with potential_fn= needs initial_params (a dict of unconstrained "
                             f"tensors) in MCMC(...)")
        return FunctionPotential(self.potential_fn, initial_params)

    def setup_chain(self, potential: Any, warmup_steps: int, initial_params: dict | None, rng_seed: int,
                    validate_while_sampling: bool = False) -> tuple:
        """Find the chain's starting point, compile the potential (see ``jit_compile``) and reset
        adaptation; return ``(z, U, grad)`` (NumPy)."""
        zt, u, gt = potential.initial_point(self.init_strategy, initial_params)
        if zt.numel() == 0:
            raise ValueError(f"{type(self).__name__}: the model has no latent sample sites, so there is nothing to sample "
                             f"(observed sites: {sorted(potential.observed)})")
        self._compile_potential(potential, zt, u, gt, validate_while_sampling)
        self._tdtype = zt.dtype
        self._pot = potential.potential_and_grad_numpy  # float64 NumPy in, (float, float64 NumPy) out
        z = zt.detach().to(torch.float64).numpy().copy()
        g = gt.detach().to(torch.float64).numpy().copy()
        self._rng = random.Random(rng_seed)
        dim = z.size
        self._minv = np.eye(dim) if self.full_mass else np.ones(dim)
        self._update_mass_factors()
        self._warmup_steps = warmup_steps
        windows = adaptation_windows(warmup_steps) if self.adapt_mass_matrix else []
        self._window_starts = {start for start, _ in windows}
        self._window_ends = {end - 1 for _, end in windows}
        self._welford = Welford(dim, dense=self.full_mass)
        self._in_window = False
        eps = self.step_size
        if self.adapt_step_size:
            with validation_enabled(validate_while_sampling):  # far-off points: checked as while sampling
                eps = self._find_reasonable_step_size(z, u, g, eps)
        self._step_size = eps
        self._da = DualAveraging(self.target_accept_prob)
        self._da.reset(eps)
        return z, u, g

    def _compile_potential(self, potential: Any, z: torch.Tensor, u: float, g: torch.Tensor, validating: bool) -> None:
        if self.jit_compile is False:
            self.compile_status = "eager (jit_compile=False)"
            return
        if validating:
            problem = "validation is on while sampling (MCMC(disable_validation=False)), and its checks are Python control flow"
        elif potential.compile(z, u, g):
            self.compile_status = f"compiled ({potential.compiled})"
            return
        else:
            problem = potential.compile_problem
        self.compile_status = f"eager: {problem}"
        if self.jit_compile:
            warnings.warn(f"{type(self).__name__}(jit_compile=True): the potential runs eagerly, because {problem}",
                          stacklevel=4)

    def _update_mass_factors(self) -> None:
        minv = self._minv
        if self.full_mass:
            mass = np.linalg.inv(minv)
            self._mass_sqrt = np.linalg.cholesky((mass + mass.T) / 2)  # p = L @ e has covariance M
        else:
            self._mass_sqrt = 1.0 / np.sqrt(minv)
        self.inverse_mass_matrix = torch.from_numpy(minv.copy()).to(self._tdtype)

    # ---- building blocks -----------------------------------------------------------------------------
    def _sample_momentum(self, dim: int) -> np.ndarray:
        e = torch.randn(dim, dtype=torch.float64).numpy()  # Ember's (torch's) random stream
        if self.full_mass:
            return self._mass_sqrt @ e
        return e * self._mass_sqrt

    def _p_sharp(self, p: np.ndarray) -> np.ndarray:
        if self.full_mass:
            return self._minv @ p
        return self._minv * p

    def _leapfrog(self, z: np.ndarray, p: np.ndarray, g: np.ndarray, eps: float) -> tuple:
        p = p - (0.5 * eps) * g
        z = z + eps * self._p_sharp(p)
        u, g = self._pot(z)
        p = p - (0.5 * eps) * g
        return z, p, g, u

    def _find_reasonable_step_size(self, z: np.ndarray, u: float, g: np.ndarray, eps: float) -> float:
        """Double or halve ``eps`` until one leapfrog step's acceptance crosses 0.8 (Stan's rule)."""
        direction = 0
        for _ in range(100):
            p = self._sample_momentum(z.size)
            h0 = u + 0.5 * float(p @ self._p_sharp(p))
            _, p1, _, u1 = self._leapfrog(z, p, g, eps)
            h1 = u1 + 0.5 * float(p1 @ self._p_sharp(p1))
            delta = h0 - h1
            if delta != delta:
                delta = -math.inf
            if direction == 0:
                direction = 1 if delta > _LOG_0_8 else -1
            if direction == 1 and not delta > _LOG_0_8:
                break
            if direction == -1 and not delta < _LOG_0_8:
                break
            eps = eps * 2.0 if direction == 1 else eps * 0.5
            if eps > self.max_step_size or eps < self.min_step_size:
                break
        return min(max(eps, self.min_step_size), self.max_step_size)

    # ---- one iteration --------------------------------------------------------------------------------
    def step(self, it: int, z: np.ndarray, u: float, g: np.ndarray) -> tuple:
        """Iteration ``it`` (0-based, counting warm-up): a transition, then adaptation while
        ``it < warmup_steps``. Returns ``(z, U, grad, stats)``."""
        eps = self._step_size
        z, u, g, stats = self._transition(z, u, g, eps)
        stats["step_size"] = eps
        if it < self._warmup_steps:
            self._adapt(it, z, u, g, stats["accept_prob"])
        return z, u, g, stats

    def _adapt(self, it: int, z: np.ndarray, u: float, g: np.ndarray, accept_prob: float) -> None:
        if self.adapt_step_size:
            self._step_size = min(max(self._da.update(accept_prob), self.min_step_size), self.max_step_size)
        if self._window_ends:
            if it in self._window_starts:
                self._in_window = True
                self._welford.reset()
            if self._in_window:
                self._welford.update(z)
            if it in self._window_ends:
                self._in_window = False
                self._minv = self._welford.regularized()
                self._update_mass_factors()
                if self.adapt_step_size:
                    self._step_size = self._find_reasonable_step_size(z, u, g, self._step_size)
                    self._da.reset(self._step_size)
        if it == self._warmup_steps - 1 and self.adapt_step_size:
            self._step_size = min(max(self._da.final_step_size(), self.min_step_size), self.max_step_size)

    def _num_leapfrog(self, eps: float) -> int:
        if self.num_steps is not None:
            return self.num_steps
        return max(1, min(int(round(self.trajectory_length / eps)), 100000))

    def _transition(self, z: np.ndarray, u: float, g: np.ndarray, eps: float) -> tuple:
        p = self._sample_momentum(z.size)
        h0 = u + 0.5 * float(p @ self._p_sharp(p))
        n = self._num_leapfrog(eps)
        z1, p1, g1, u1 = z, p, g, u
        for _ in range(n):
            z1, p1, g1, u1 = self._leapfrog(z1, p1, g1, eps)
            if not math.isfinite(u1):
                break
        h1 = u1 + 0.5 * float(p1 @ self._p_sharp(p1)) if math.isfinite(u1) else math.inf
        if h1 != h1:
            h1 = math.inf
        delta = h0 - h1
        accept_prob = 1.0 if delta >= 0 else math.exp(delta)
        diverging = (h1 - h0) > self.max_energy_error
        if self._rng.random() < accept_prob:
            z, u, g, energy = z1, u1, g1, h1
        else:
            energy = h0
        return z, u, g, {"accept_prob": accept_prob, "diverging": diverging, "num_steps": n, "tree_depth": 0,
                         "potential_energy": u, "energy": energy}
