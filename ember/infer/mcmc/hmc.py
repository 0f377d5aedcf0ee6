"""Hamiltonian Monte Carlo with step-size and mass-matrix adaptation.

A kernel is configuration; a chain is a value. :meth:`HMC.init` returns a chain's
:class:`HMCState` (position, potential energy and gradient, step size, inverse mass matrix,
adaptation state, random key); :meth:`HMC.transition` maps a state to the next one plus that
transition's :class:`TransitionInfo`; :meth:`HMC.adapt` applies warm-up adaptation to a state.
Nothing about a chain is stored in the kernel, so chains can be advanced in any interleaving and
give the same draws (the kernel does hold what it samples: the model's potential, bound to the
model's arguments by ``init``). :class:`~ember.infer.mcmc.MCMC` runs ``init``, then
``transition`` and ``adapt`` during warm-up, ``transition`` after it, and records.

Randomness: every transition draws from its own stream, a Philox generator keyed by the chain's
``rng_key`` with the iteration number in its counter (see :class:`_Streams`), so a chain's draws depend only on its key
(``MCMC`` takes the keys from Ember's random stream, ``ember.set_rng_seed``).

The kernel moves on the flat unconstrained vector of :class:`~ember.infer.mcmc.potential.ModelPotential`.
Momenta ``p ~ N(0, M)``; the inverse mass matrix ``M^-1`` (a vector for ``full_mass=False``, a
matrix otherwise) is what windowed adaptation estimates: the covariance of the unconstrained
draws. Kinetic energy ``K(p) = p . M^-1 p / 2``. The step size adapts by dual averaging towards
``target_accept_prob`` during warm-up and is frozen after it.

The state (position, momentum, gradient, summed momenta) lives in float64 NumPy vectors and
Python floats: on vectors of a few dozen numbers a NumPy operation costs about a microsecond and a
torch one several, and a NUTS trajectory makes some twenty of them per leapfrog step. Only the
potential and its gradient run in torch, in the model's dtype, once per step.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Generator
from typing import Any, NamedTuple

import numpy as np
import torch

from ember.infer.initialization import init_to_uniform, resolve_init_strategy
from ember.infer.mcmc.adaptation import (
    AdaptState,
    dual_averaging_final,
    dual_averaging_init,
    dual_averaging_update,
    welford_init,
    welford_regularized,
    welford_update,
)
from ember.infer.mcmc.potential import FunctionPotential, ModelPotential
from ember.primitives import validation_enabled
from ember.util import check_kwargs

__all__ = ["HMC", "HMCState", "TransitionInfo"]

_LOG_0_8 = math.log(0.8)
_STREAM_TRANSITION, _STREAM_STEP_SIZE_SEARCH, _STREAM_INIT = 0, 1, 2


class HMCState(NamedTuple):
    """One chain's state (HMC and NUTS). ``D`` is the unconstrained dimension."""

    iteration: int  # transitions taken so far, warm-up included
    z: np.ndarray  # [D] float64: the unconstrained position
    potential_energy: float  # U(z)
    grad: np.ndarray  # [D] float64: dU/dz
    step_size: float
    inverse_mass_matrix: np.ndarray  # [D] (diagonal) or [D, D] (full_mass)
    mass_sqrt: np.ndarray  # a square root of the mass matrix M (derived from inverse_mass_matrix): [D] or [D, D]
    adapt: AdaptState
    rng_key: int  # the chain's random key: transition t draws from Philox(rng_key, counter t)


class TransitionInfo(NamedTuple):
    """What one transition did."""

    accept_prob: float  # the acceptance statistic (HMC: min(1, exp(-dH)); NUTS: its mean over the trajectory)
    accepted: bool  # whether the chain moved to a new point (Pyro's "acceptance rate" counts these)
    diverging: bool  # an energy error above max_energy_error
    num_steps: int  # leapfrog steps (gradient evaluations)
    tree_depth: int  # NUTS: doublings; HMC: 0
    energy: float  # the Hamiltonian at the new state
    step_size: float  # the step size used


def _mass_sqrt(minv: np.ndarray) -> np.ndarray:
    """A square root ``L`` of the mass matrix ``M = (M^-1)^-1`` (``p = L e`` has covariance ``M``)."""
    if minv.ndim == 2:
        mass = np.linalg.inv(minv)
        return np.linalg.cholesky((mass + mass.T) / 2)
    return 1.0 / np.sqrt(minv)


class _Streams:
    """Counter-based random streams: ``get(key, iteration, stream)`` is the generator
    ``Philox(key, counter=[0, 0, iteration, stream])``, a pure function of its arguments. One
    generator object is re-keyed in place (cheaper than building one per transition); what it
    returns is only used until the next ``get`` (so a kernel is not for use from several threads at once)."""

    __slots__ = ("bitgen", "gen")

    def __init__(self) -> None:
        self.bitgen = np.random.Philox(0)
        self.gen = np.random.Generator(self.bitgen)

    def get(self, key: int, iteration: int, stream: int) -> np.random.Generator:
        self.bitgen.state = {
            "bit_generator": "Philox",
            "state": {"counter": np.array([0, 0, iteration, stream], dtype=np.uint64),
                      "key": np.array([key & 0xFFFFFFFFFFFFFFFF, (key >> 64) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64)},
            "buffer": np.zeros(4, dtype=np.uint64), "buffer_pos": 4, "has_uint32": 0, "uinteger": 0,
        }
        return self.gen


def _drive(gen: Generator, pot: Callable) -> Any:
    """Run a sampler generator to its end, answering each position ``z`` it yields with
    ``pot(z) = (U, dU/dz)``; return what it returns (a single chain: see :mod:`ember.infer.mcmc.vectorized`
    for many chains answered by one batched evaluation)."""
    try:
        z = next(gen)
        while True:
            z = gen.send(pot(z))
    except StopIteration as stop:
        return stop.value


class _Integrator:
    """One transition's working context: the metric and the transition's random stream, plus the
    tallies a NUTS trajectory keeps. The potential is not called here: :meth:`leapfrog` is a
    generator that yields the new position and receives ``(U, dU/dz)`` there."""

    __slots__ = ("minv", "full", "mass_sqrt", "rng", "max_energy_error", "n_leapfrog", "sum_accept", "diverging",
                 "_uniforms", "_next")

    def __init__(self, state: HMCState, rng: np.random.Generator, max_energy_error: float) -> None:
        self.minv = state.inverse_mass_matrix
        self.full = self.minv.ndim == 2
        self.mass_sqrt = state.mass_sqrt
        self.rng = rng
        self.max_energy_error = max_energy_error
        self.n_leapfrog = 0
        self.sum_accept = 0.0
        self.diverging = False
        self._uniforms: list[float] = []
        self._next = 0

    def uniform(self) -> float:
        """A uniform draw on [0, 1) (drawn 32 at a time: a NumPy call per draw would cost more than the tree's arithmetic)."""
        if self._next == len(self._uniforms):
            self._uniforms = self.rng.random(32).tolist()
            self._next = 0
        self._next += 1
        return self._uniforms[self._next - 1]

    def momentum(self) -> np.ndarray:
        e = self.rng.standard_normal(self.minv.shape[0])
        return self.mass_sqrt @ e if self.full else e * self.mass_sqrt

    def p_sharp(self, p: np.ndarray) -> np.ndarray:
        return self.minv @ p if self.full else self.minv * p

    def leapfrog(self, z: np.ndarray, p: np.ndarray, g: np.ndarray, eps: float) -> Generator:
        """One leapfrog step (a generator: yields the new ``z``, is sent ``(U, dU/dz)``, returns ``(z, p, g, U)``)."""
        p = p - (0.5 * eps) * g
        z = z + eps * self.p_sharp(p)
        u, g = yield z
        p = p - (0.5 * eps) * g
        return z, p, g, u


# accepted but without effect in Ember, and why: warned about once when given a non-default value
_IGNORED = {
    "max_plate_nesting": "Ember works the plate nesting out from the model's first run and puts the dims of "
                         "enumerated discrete sites to its left",
    "jit_options": "Ember compiles the potential with make_fx/TorchScript, not torch.jit.trace (see jit_compile)",
    "ignore_jit_warnings": "Ember's compiled potential does not go through torch.jit.trace, which is what warns",
}


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
        adapt_step_size, adapt_mass_matrix, full_mass: warm-up adaptation switches; ``full_mass=True``
            adapts a dense mass matrix instead of a diagonal one; a list of tuples of site names
            (Pyro's ``[("a", "b"), ("c",)]``) adapts a dense block for each tuple's sites together and a
            diagonal for the other sites.
        transforms: ``{site: Transform}`` from a site's constrained values to unconstrained ones
            (Pyro's direction; default ``biject_to(support).inv``).
        target_accept_prob: the acceptance statistic dual averaging aims at (0.8).
        init_strategy: a name (``"uniform"``, ``"median"``, ``"sample"``, ``"mean"``, ``"value"``)
            or a function of the site (``ember.infer.init_to_median`` ...); default uniform on
            (-2, 2) in unconstrained space, as Stan and Pyro.
        max_energy_error: an energy error above this marks the transition divergent (1000).
        min_step_size, max_step_size: bounds on the adapted step size (Pyro spells them
            ``min_stepsize``, ``max_stepsize``; both spellings are accepted).
        jit_compile: compile the potential and its gradient into one graph after the first
            (eager, checked) evaluation; see :mod:`ember.infer.mcmc.compile`. ``None`` (default):
            compile where the model allows it and otherwise run it eagerly, silently
            (``MCMC.compile_status`` says which happened and why); ``True``: the same, with a
            warning when the model cannot be compiled; ``False``: always run the model eagerly.
            A model whose control flow depends on latent values (an ``if`` on a tensor,
            boolean indexing) is detected and runs eagerly.
        max_plate_nesting, jit_options, ignore_jit_warnings: Pyro options accepted without effect
            (a warning names each one given).

    An unknown keyword raises ``TypeError`` naming the closest valid one.
    """

    def __init__(self, model: Callable | None = None, potential_fn: Callable | None = None, step_size: float = 1.0,
                 trajectory_length: float | None = None, num_steps: int | None = None, adapt_step_size: bool = True,
                 adapt_mass_matrix: bool = True, full_mass: bool = False, transforms: dict | None = None,
                 max_plate_nesting: int | None = None, jit_compile: bool | None = None, jit_options: dict | None = None,
                 ignore_jit_warnings: bool = False, target_accept_prob: float = 0.8, init_strategy: Any = init_to_uniform,
                 *, max_energy_error: float = 1000.0, min_step_size: float = 1e-10, max_step_size: float = 1e10,
                 **kwargs: Any) -> None:
        owner = type(self).__name__
        min_step_size = kwargs.pop("min_stepsize", min_step_size)
        max_step_size = kwargs.pop("max_stepsize", max_step_size)
        given = {k: v for k, v in (("max_plate_nesting", max_plate_nesting), ("jit_options", jit_options),
                                   ("ignore_jit_warnings", ignore_jit_warnings or None)) if v is not None}
        check_kwargs(owner, {**kwargs, **given}, valid=self._valid_kwargs(), ignored=self._ignored_kwargs())
        if (model is None) == (potential_fn is None):
            raise ValueError(f"{owner} needs exactly one of model= or potential_fn=")
        if model is not None and not callable(model):
            raise TypeError(f"{owner}: model must be callable, got {type(model).__name__}")
        if not (isinstance(step_size, (int, float)) and step_size > 0 and math.isfinite(step_size)):
            raise ValueError(f"{owner}: step_size must be a positive number, got {step_size!r}")
        if num_steps is not None and (not isinstance(num_steps, int) or num_steps < 1):
            raise ValueError(f"{owner}: num_steps must be a positive integer, got {num_steps!r}")
        if trajectory_length is not None and not trajectory_length > 0:
            raise ValueError(f"{owner}: trajectory_length must be positive, got {trajectory_length!r}")
        if not 0.0 < target_accept_prob < 1.0:
            raise ValueError(f"{owner}: target_accept_prob must be in (0, 1), got {target_accept_prob!r}")
        if not 0 < min_step_size <= max_step_size:
            raise ValueError(f"{owner}: need 0 < min_step_size <= max_step_size, got {min_step_size!r} and {max_step_size!r}")
        if jit_compile is not None and not isinstance(jit_compile, bool):
            raise TypeError(f"{owner}: jit_compile must be None, True or False, got {jit_compile!r}")
        self.model = model
        self.potential_fn = potential_fn
        self.step_size = float(step_size)
        self.num_steps = num_steps
        self.trajectory_length = (2 * math.pi if num_steps is None else None) if trajectory_length is None else float(trajectory_length)
        self.adapt_step_size = adapt_step_size
        self.adapt_mass_matrix = adapt_mass_matrix
        if not isinstance(full_mass, bool):
            blocks = [tuple(b) for b in full_mass] if isinstance(full_mass, (list, tuple)) else None
            if not blocks or not all(b and all(isinstance(n, str) for n in b) for b in blocks):
                raise ValueError(f"{type(self).__name__}: full_mass must be True, False or a list of tuples of site names "
                                 f"(dense blocks, as Pyro's), got {full_mass!r}")
            twice = sorted({n for b in blocks for n in b if sum(n in c for c in blocks) > 1})
            if twice:
                raise ValueError(f"{type(self).__name__}: full_mass names sites {twice} in more than one block")
            full_mass = blocks
        self.full_mass = full_mass
        self._mass_mask_for: Any = None  # (potential, mask): which entries of a dense M^-1 the blocks keep
        self.transforms = transforms
        self.target_accept_prob = target_accept_prob
        self.init_strategy = init_strategy
        resolve_init_strategy(init_strategy, {})  # unknown names fail here, before any sampling
        self.max_energy_error = max_energy_error
        self.min_step_size = min_step_size
        self.max_step_size = max_step_size
        self.jit_compile = jit_compile
        self.compile_status = "not run"
        self.potential: Any = None  # what the kernel samples: set by init() (a ModelPotential or FunctionPotential)
        self._pot: Callable | None = None
        self._compiled_for: Any = None
        self._streams = _Streams()
        # only for Pyro's stateful surface (setup/sample): the one chain it drives
        self._initial_params: dict | None = None
        self._state: HMCState | None = None
        self._last_state: HMCState | None = None  # of MCMC.run's last chain (inverse_mass_matrix)

    @classmethod
    def _valid_kwargs(cls) -> list[str]:
        return ["model", "potential_fn", "step_size", "trajectory_length", "num_steps", "adapt_step_size", "adapt_mass_matrix",
                "full_mass", "transforms", "jit_compile", "target_accept_prob", "init_strategy", "max_energy_error",
                "min_step_size", "max_step_size", "min_stepsize", "max_stepsize"]

    @classmethod
    def _ignored_kwargs(cls) -> dict[str, str]:
        return dict(_IGNORED)

    # ---- set-up ---------------------------------------------------------------------------------------
    def make_potential(self, args: tuple, kwargs: dict, initial_params: dict | None = None) -> Any:
        """The potential this kernel samples for ``model(*args, **kwargs)`` (or ``potential_fn``)."""
        if self.model is not None:
            user = {name: t.inv for name, t in (self.transforms or {}).items()}  # ModelPotential wants unconstrained -> constrained
            return ModelPotential(self.model, args, kwargs, transforms=user)
        if not initial_params:
            raise ValueError(f"{type(self).__name__} with potential_fn= needs initial_params (a dict of unconstrained "
                             f"tensors) in MCMC(...)")
        return FunctionPotential(self.potential_fn, initial_params)

    def init(self, potential: Any, warmup_steps: int = 0, initial_params: dict | None = None, rng_key: int | None = None,
             validate_while_sampling: bool = False) -> HMCState:
        """A new chain on ``potential`` (from :meth:`make_potential`): find its starting point,
        compile the potential the first time it is seen (see ``jit_compile``), search a starting
        step size, and set up ``warmup_steps`` iterations of adaptation. ``rng_key`` (an int)
        determines every random choice of the chain's transitions (default: drawn from Ember's
        random stream). The kernel samples this potential from now on."""
        zt, u, gt = potential.initial_point(self.init_strategy, initial_params)
        if zt.numel() == 0:
            raise ValueError(f"{type(self).__name__}: the model has no latent sample sites, so there is nothing to sample "
                             f"(observed sites: {sorted(potential.observed)})")
        if self._compiled_for is not potential:
            self._compile_potential(potential, zt, u, gt, validate_while_sampling)
            self._compiled_for = potential
        self.potential = potential
        self._mass_groups()  # full_mass blocks naming sites the model lacks fail here, before sampling
        self._pot = potential.potential_and_grad_numpy  # float64 NumPy in, (float, float64 NumPy) out
        if rng_key is None:
            rng_key = int(torch.randint(0, 2**62, ()).item())
        state = self._new_state(zt, u, gt, warmup_steps, rng_key)
        with validation_enabled(validate_while_sampling):  # far-off points: checked as while sampling
            return _drive(self._init_step_size_gen(state, self._streams), self._pot)

    def _new_state(self, zt: torch.Tensor, u: float, gt: torch.Tensor, warmup_steps: int, rng_key: int) -> HMCState:
        """A chain's state at ``zt`` (``[D]``) before the initial step-size search."""
        z = zt.detach().to(torch.float64).numpy().copy()
        g = gt.detach().to(torch.float64).numpy().copy()
        dim = z.size
        minv = np.eye(dim) if self.full_mass else np.ones(dim)
        msqrt = _mass_sqrt(minv)
        eps = self.step_size
        adapt = AdaptState.start(warmup_steps, eps, dim, self.full_mass, self.adapt_mass_matrix)
        return HMCState(0, z, u, g, eps, minv, msqrt, adapt, int(rng_key))

    def _init_step_size_gen(self, state: HMCState, streams: _Streams) -> Generator:
        """The initial step-size search of :meth:`init` (a generator, see :func:`_drive`)."""
        if not self.adapt_step_size:
            return state
        eps = yield from self._find_reasonable_step_size(state, streams.get(state.rng_key, 0, _STREAM_INIT))
        return state._replace(step_size=eps, adapt=state.adapt._replace(dual_averaging=dual_averaging_init(eps)))

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

    def _check_ready(self) -> Callable:
        if self._pot is None:
            raise RuntimeError(f"{type(self).__name__}: no potential yet; call kernel.init(kernel.make_potential(args, kwargs)) "
                               f"(MCMC.run does) before transition()")
        return self._pot

    # ---- one transition, adaptation --------------------------------------------------------------------
    def transition(self, state: HMCState) -> tuple[HMCState, TransitionInfo]:
        """The next state of the chain and what the transition did; ``state`` is not modified."""
        return _drive(self._transition_gen(state, self._streams), self._check_ready())

    def _transition_gen(self, state: HMCState, streams: _Streams) -> Generator:
        """:meth:`transition` as a generator (see :func:`_drive`), drawing from ``streams``."""
        ig = _Integrator(state, streams.get(state.rng_key, state.iteration, _STREAM_TRANSITION), self.max_energy_error)
        z, u, g, info = yield from self._transition(ig, state.z, state.potential_energy, state.grad, state.step_size)
        return state._replace(iteration=state.iteration + 1, z=z, potential_energy=u, grad=g), info

    def adapt(self, state: HMCState, info: TransitionInfo) -> HMCState:
        """Warm-up adaptation after the transition that produced ``state`` (a no-op after
        warm-up): dual averaging of the step size on ``info.accept_prob``; at the end of each slow
        window the inverse mass matrix becomes the window's regularised covariance, and the step
        size is searched again; after the last warm-up iteration the step size is frozen at its
        averaged value."""
        return _drive(self._adapt_gen(state, info, self._streams), self._check_ready())

    def _adapt_gen(self, state: HMCState, info: TransitionInfo, streams: _Streams) -> Generator:
        """:meth:`adapt` as a generator (it evaluates the potential in the step-size search at the
        end of a slow window; see :func:`_drive`)."""
        a = state.adapt
        it = state.iteration - 1
        if it >= a.num_warmup:
            return state
        eps, da, welford, in_window = state.step_size, a.dual_averaging, a.welford, a.in_window
        minv, msqrt = state.inverse_mass_matrix, state.mass_sqrt
        if self.adapt_step_size:
            da = dual_averaging_update(da, info.accept_prob, self.target_accept_prob)
            eps = self._clamp(math.exp(da.log_eps))
        if a.window_ends:
            if it in a.window_starts:
                in_window = True
                welford = welford_init(state.z.size, self.full_mass)
            if in_window:
                welford = welford_update(welford, state.z)
            if it in a.window_ends:
                in_window = False
                minv = welford_regularized(welford)
                mask = self._mass_mask()
                if mask is not None:
                    minv = np.where(mask, minv, 0.0)
                msqrt = _mass_sqrt(minv)
                if self.adapt_step_size:
                    probe = state._replace(step_size=eps, inverse_mass_matrix=minv, mass_sqrt=msqrt)
                    eps = yield from self._find_reasonable_step_size(probe, streams.get(state.rng_key, it, _STREAM_STEP_SIZE_SEARCH))
                    da = dual_averaging_init(eps)
        if it == a.num_warmup - 1 and self.adapt_step_size:
            eps = self._clamp(dual_averaging_final(da))
        return state._replace(step_size=eps, inverse_mass_matrix=minv, mass_sqrt=msqrt,
                              adapt=a._replace(dual_averaging=da, welford=welford, in_window=in_window))

    def _mass_groups(self) -> list[tuple[tuple[str, ...], np.ndarray, bool]] | None:
        """With ``full_mass`` a list of blocks: ``[(site names, coordinates, dense)]``, each block
        dense and the other sites together diagonal, in Pyro's order; None otherwise."""
        if isinstance(self.full_mass, bool) or self.potential is None:
            return None
        sites = {s.name: s for s in self.potential.sites}
        unknown = sorted({n for b in self.full_mass for n in b} - set(sites))
        if unknown:
            raise ValueError(f"{type(self).__name__}: full_mass names {unknown}, which are not latent sites of the model "
                             f"(its latent sites: {sorted(sites)})")
        groups = []
        for block in self.full_mass:
            idx = np.concatenate([np.arange(sites[n].offset, sites[n].offset + sites[n].size) for n in block])
            groups.append((block, idx, True))
        rest = tuple(s.name for s in self.potential.sites if not any(s.name in b for b in self.full_mass))
        if rest:
            idx = np.concatenate([np.arange(sites[n].offset, sites[n].offset + sites[n].size) for n in rest])
            groups.append((rest, idx, False))
        return groups

    def _mass_mask(self) -> np.ndarray | None:
        """``[D, D]``: True where a block-structured ``M^-1`` may be non-zero (None: no blocks)."""
        if isinstance(self.full_mass, bool):
            return None
        cached = self._mass_mask_for
        if cached is not None and cached[0] is self.potential:
            return cached[1]
        dim = sum(s.size for s in self.potential.sites)
        mask = np.eye(dim, dtype=bool)
        for _, idx, dense in self._mass_groups() or ():
            if dense:
                mask[np.ix_(idx, idx)] = True
        self._mass_mask_for = (self.potential, mask)
        return mask

    def _clamp(self, eps: float) -> float:
        return min(max(eps, self.min_step_size), self.max_step_size)

    def _find_reasonable_step_size(self, state: HMCState, rng: np.random.Generator) -> Generator:
        """Double or halve the step size until one leapfrog step's acceptance crosses 0.8 (Stan's
        rule); a generator returning the step size (see :func:`_drive`)."""
        ig = _Integrator(state, rng, self.max_energy_error)
        z, u, g, eps = state.z, state.potential_energy, state.grad, state.step_size
        direction = 0
        for _ in range(100):
            p = ig.momentum()
            h0 = u + 0.5 * float(p @ ig.p_sharp(p))
            _, p1, _, u1 = yield from ig.leapfrog(z, p, g, eps)
            h1 = u1 + 0.5 * float(p1 @ ig.p_sharp(p1))
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
        return self._clamp(eps)

    def _num_leapfrog(self, eps: float) -> int:
        if self.num_steps is not None:
            return self.num_steps
        return max(1, min(int(round(self.trajectory_length / eps)), 100000))

    def _transition(self, ig: _Integrator, z: np.ndarray, u: float, g: np.ndarray, eps: float) -> Generator:
        p = ig.momentum()
        h0 = u + 0.5 * float(p @ ig.p_sharp(p))
        n = self._num_leapfrog(eps)
        z1, p1, g1, u1 = z, p, g, u
        for _ in range(n):
            z1, p1, g1, u1 = yield from ig.leapfrog(z1, p1, g1, eps)
            if not math.isfinite(u1):
                break
        h1 = u1 + 0.5 * float(p1 @ ig.p_sharp(p1)) if math.isfinite(u1) else math.inf
        if h1 != h1:
            h1 = math.inf
        delta = h0 - h1
        accept_prob = 1.0 if delta >= 0 else math.exp(delta)
        diverging = (h1 - h0) > self.max_energy_error
        accepted = ig.uniform() < accept_prob
        if accepted:
            z, u, g, energy = z1, u1, g1, h1
        else:
            energy = h0
        return z, u, g, TransitionInfo(accept_prob, accepted, diverging, n, 0, energy, eps)

    # ---- Pyro's stateful surface: setup(), sample(params), diagnostics(), logging() ---------------------
    @property
    def initial_params(self) -> dict | None:
        """Unconstrained starting values by site: those given (Pyro's ``kernel.initial_params = ...``)
        or, after :meth:`setup`, those the chain started from."""
        if self._initial_params is None and self._state is not None:
            return self._start_params
        return self._initial_params

    @initial_params.setter
    def initial_params(self, params: dict | None) -> None:
        self._initial_params = params

    @property
    def inverse_mass_matrix(self) -> dict[tuple[str, ...], torch.Tensor] | None:
        """Pyro's attribute: ``{(site names...): M^-1}``, the inverse mass matrix over the
        unconstrained latents in the order of the flat vector, ``[D]`` (diagonal) or ``[D, D]``
        (``full_mass``): of the chain :meth:`setup` drives, or else of the last chain
        ``MCMC.run`` sampled (None before either)."""
        state = self._state if self._state is not None else self._last_state
        if state is None or self.potential is None:
            return None
        minv = torch.from_numpy(state.inverse_mass_matrix.copy()).to(self.potential.dtype)
        groups = self._mass_groups()
        if groups is None:
            return {tuple(s.name for s in getattr(self.potential, "sites", ())): minv}
        out = {}
        for names, idx, dense in groups:
            i = torch.from_numpy(idx)
            out[names] = minv[i][:, i] if dense else minv[i, i]
        return out

    def unconstrained_params(self, state: HMCState) -> dict[str, torch.Tensor]:
        """``state``'s position as unconstrained tensors by site name, each of the site's
        unconstrained shape (its value's shape for elementwise supports; e.g. ``(K - 1,)`` for a
        simplex of ``K``)."""
        z = torch.from_numpy(state.z.copy()).to(self.potential.dtype)
        return {s.name: z[s.offset:s.offset + s.size].reshape(s.unconstrained_shape) for s in self.potential.sites}

    def setup(self, warmup_steps: int, *args: Any, **kwargs: Any) -> None:
        """Pyro's entry point: start one chain on ``model(*args, **kwargs)`` for
        :meth:`sample` to advance (``MCMC`` uses :meth:`init`/:meth:`transition` instead)."""
        potential = self.make_potential(args, kwargs, self._initial_params)
        self._state = self.init(potential, warmup_steps, self._initial_params)
        self._start_params = self.unconstrained_params(self._state)
        self._warmup_steps = warmup_steps
        self._divergences: list[int] = []
        self._accept_cnt = 0
        self._mean_accept_prob = 0.0

    def sample(self, params: dict | None = None) -> dict[str, torch.Tensor]:
        """Pyro's step: advance the chain :meth:`setup` started by one transition (adapting during
        warm-up); return its unconstrained position by site, each tensor of the site's
        unconstrained shape. ``params`` is not read (the chain's own state is the position, as in
        Pyro when its cache is warm)."""
        if self._state is None:
            raise RuntimeError(f"{type(self).__name__}.sample: call kernel.setup(warmup_steps, *model_args) first")
        state, info = self.transition(self._state)
        t = state.iteration
        if t <= self._warmup_steps:
            state = self.adapt(state, info)
            n = t
        else:
            n = t - self._warmup_steps
            self._accept_cnt += int(info.accepted)
            if info.diverging:
                self._divergences.append(n - 1)
        self._mean_accept_prob += (info.accept_prob - self._mean_accept_prob) / n
        self._state = state
        return self.unconstrained_params(state)

    def diagnostics(self) -> dict[str, Any]:
        """``{"divergences": [post-warm-up iteration indices], "acceptance rate": fraction of
        post-warm-up transitions that moved}`` of the chain :meth:`setup` started."""
        done = 0 if self._state is None else self._state.iteration - self._warmup_steps
        return {"divergences": list(getattr(self, "_divergences", [])),
                "acceptance rate": self._accept_cnt / done if done > 0 else math.nan}

    def logging(self) -> OrderedDict:
        step = math.nan if self._state is None else self._state.step_size
        return OrderedDict([("step size", f"{step:.2e}"), ("acc. prob", f"{getattr(self, '_mean_accept_prob', 0.0):.3f}")])

    def cleanup(self) -> None:
        self._state = None

    def __getstate__(self) -> dict:
        """The kernel's configuration (what a worker process needs), without the potential bound
        by :meth:`init` in this process (a compiled graph does not pickle)."""
        state = dict(self.__dict__)
        state.update(potential=None, _pot=None, _compiled_for=None, _state=None, _streams=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._streams = _Streams()
