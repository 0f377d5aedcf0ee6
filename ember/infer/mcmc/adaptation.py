"""Warm-up adaptation as values: dual-averaging step size and windowed mass-matrix estimation (Stan's scheme).

The warm-up of ``W`` iterations is split as in Stan: a fast initial buffer (75 iterations) where
only the step size adapts, then slow windows of 25, 50, 100, ... iterations (the last one
stretched to the terminal buffer) at whose ends the inverse mass matrix is set to the
regularised covariance of the unconstrained draws of that window, the step size re-initialised
and dual averaging restarted, then a fast terminal buffer (50 iterations). With
``W < 20`` only the step size adapts; when ``W`` is too short for the default buffers they are
15% / 10% of ``W`` (Stan's rule).

Every piece of adaptation state is an immutable value (:class:`DualAveragingState`,
:class:`WelfordState`, :class:`AdaptState`) and every step a function returning a new value, so a
chain's state can be copied, interleaved with another chain's or (later) batched.
:class:`DualAveraging` and :class:`Welford` are small stateful wrappers over the same functions.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = [
    "AdaptState",
    "DualAveraging",
    "DualAveragingState",
    "Welford",
    "WelfordState",
    "adaptation_windows",
    "dual_averaging_final",
    "dual_averaging_init",
    "dual_averaging_update",
    "welford_init",
    "welford_regularized",
    "welford_update",
]


# ---- dual averaging -------------------------------------------------------------------------------------
class DualAveragingState(NamedTuple):
    """Nesterov dual averaging of ``log(step_size)`` (Hoffman & Gelman 2014)."""

    mu: float  # the shrinkage target, log(10 * initial step size)
    t: int  # updates so far
    h_bar: float  # running mean of (target - acceptance statistic)
    log_eps: float  # the current log step size
    log_eps_bar: float  # its weighted average: the final step size's log


def dual_averaging_init(step_size: float) -> DualAveragingState:
    """Start dual averaging at ``step_size`` (shrinking towards 10 times it)."""
    return DualAveragingState(math.log(10.0 * step_size), 0, 0.0, math.log(step_size), 0.0)


def dual_averaging_update(state: DualAveragingState, accept_stat: float, target: float = 0.8, gamma: float = 0.05,
                          t0: float = 10.0, kappa: float = 0.75) -> DualAveragingState:
    """One update towards an acceptance statistic of ``target`` (Stan's constants by default);
    a NaN statistic counts as a rejection. The next step size is ``exp(new_state.log_eps)``."""
    if accept_stat != accept_stat:
        accept_stat = 0.0
    accept_stat = min(1.0, accept_stat)
    t = state.t + 1
    eta = 1.0 / (t + t0)
    h_bar = (1.0 - eta) * state.h_bar + eta * (target - accept_stat)
    log_eps = state.mu - math.sqrt(t) / gamma * h_bar
    x = t ** (-kappa)
    log_eps_bar = x * log_eps + (1.0 - x) * state.log_eps_bar
    return DualAveragingState(state.mu, t, h_bar, log_eps, log_eps_bar)


def dual_averaging_final(state: DualAveragingState) -> float:
    """The step size to sample with after warm-up: the averaged iterate."""
    return math.exp(state.log_eps_bar) if state.t > 0 else math.exp(state.log_eps)


class DualAveraging:
    """Stateful wrapper over :func:`dual_averaging_update` (``gamma=0.05, t0=10, kappa=0.75``)."""

    def __init__(self, target_accept: float = 0.8, gamma: float = 0.05, t0: float = 10.0, kappa: float = 0.75) -> None:
        self.target = target_accept
        self.gamma = gamma
        self.t0 = t0
        self.kappa = kappa
        self.state = dual_averaging_init(1.0)

    def reset(self, step_size: float) -> None:
        self.state = dual_averaging_init(step_size)

    def update(self, accept_stat: float) -> float:
        """Take one adaptation step; return the step size to use next."""
        self.state = dual_averaging_update(self.state, accept_stat, self.target, self.gamma, self.t0, self.kappa)
        return math.exp(self.state.log_eps)

    def final_step_size(self) -> float:
        return dual_averaging_final(self.state)


# ---- Welford (co)variance ----------------------------------------------------------------------------------
class WelfordState(NamedTuple):
    """Running mean ``[D]`` and sum of squared deviations (``[D]``, or ``[D, D]`` when dense) in float64."""

    n: int
    mean: np.ndarray
    m2: np.ndarray


def welford_init(dim: int, dense: bool = False) -> WelfordState:
    return WelfordState(0, np.zeros(dim), np.zeros((dim, dim) if dense else dim))


def welford_update(state: WelfordState, x: Any) -> WelfordState:
    """Add one draw ``x [D]`` (NumPy or torch)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to(torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    n = state.n + 1
    delta = x - state.mean
    mean = state.mean + delta / n
    delta2 = x - mean
    m2 = state.m2 + (np.outer(delta, delta2) if state.m2.ndim == 2 else delta * delta2)
    return WelfordState(n, mean, m2)


def welford_regularized(state: WelfordState) -> np.ndarray:
    """Stan's shrunk (co)variance estimate ``n/(n+5) * S + 1e-3 * 5/(n+5) * I``."""
    n = state.n
    cov = state.m2 / max(n - 1, 1)
    w = n / (n + 5.0)
    shrink = 1e-3 * 5.0 / (n + 5.0)
    if state.m2.ndim == 2:
        return w * cov + shrink * np.eye(cov.shape[0])
    return w * cov + shrink


class Welford:
    """Stateful wrapper over :func:`welford_update`."""

    def __init__(self, dim: int, dense: bool = False) -> None:
        self.dim = dim
        self.dense = dense
        self.reset()

    def reset(self) -> None:
        self.state = welford_init(self.dim, self.dense)

    @property
    def n(self) -> int:
        return self.state.n

    def update(self, x: Any) -> None:
        self.state = welford_update(self.state, x)

    def regularized(self) -> np.ndarray:
        return welford_regularized(self.state)


# ---- the schedule --------------------------------------------------------------------------------------------
def adaptation_windows(num_warmup: int, init_buffer: int = 75, term_buffer: int = 50, base_window: int = 25) -> list[tuple[int, int]]:
    """The slow windows ``[(start, end), ...]`` (0-based, ``end`` exclusive) of Stan's schedule.

    >>> adaptation_windows(1000)
    [(75, 100), (100, 150), (150, 250), (250, 450), (450, 950)]
    """
    if num_warmup < 20:
        return []
    if init_buffer + term_buffer + base_window > num_warmup:
        init_buffer = int(0.15 * num_warmup)
        term_buffer = int(0.1 * num_warmup)
        base_window = num_warmup - init_buffer - term_buffer
    last = num_warmup - term_buffer
    windows = []
    start, size = init_buffer, base_window
    while start < last:
        end = start + size
        if end + 2 * size > last:
            end = last
        windows.append((start, end))
        start, size = end, 2 * size
    return windows


class AdaptState(NamedTuple):
    """A chain's warm-up adaptation: the schedule (``num_warmup`` iterations, slow windows) and
    where it stands (dual averaging, the current window's Welford estimate)."""

    num_warmup: int
    window_starts: frozenset
    window_ends: frozenset  # the last iteration (0-based, inclusive) of each slow window
    dual_averaging: DualAveragingState
    welford: WelfordState
    in_window: bool

    @staticmethod
    def start(num_warmup: int, step_size: float, dim: int, dense: bool, adapt_mass_matrix: bool) -> AdaptState:
        windows = adaptation_windows(num_warmup) if adapt_mass_matrix else []
        return AdaptState(num_warmup, frozenset(s for s, _ in windows), frozenset(e - 1 for _, e in windows),
                          dual_averaging_init(step_size), welford_init(dim, dense), False)
