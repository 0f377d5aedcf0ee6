"""Warm-up adaptation: dual-averaging step size and windowed mass-matrix estimation (Stan's scheme).

The warm-up of ``W`` iterations is split as in Stan: a fast initial buffer (75 iterations) where
only the step size adapts, then slow windows of 25, 50, 100, ... iterations (the last one
stretched to the terminal buffer) at whose ends the inverse mass matrix is set to the
regularised covariance of the unconstrained draws of that window, the step size re-initialised
and dual averaging restarted, then a fast terminal buffer (50 iterations). With
``W < 20`` only the step size adapts; when ``W`` is too short for the default buffers they are
15% / 10% of ``W`` (Stan's rule).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = ["DualAveraging", "Welford", "adaptation_windows"]


class DualAveraging:
    """Nesterov dual averaging of ``log(step_size)`` towards a target acceptance statistic
    (Hoffman & Gelman 2014, with Stan's constants ``gamma=0.05, t0=10, kappa=0.75``)."""

    def __init__(self, target_accept: float = 0.8, gamma: float = 0.05, t0: float = 10.0, kappa: float = 0.75) -> None:
        self.target = target_accept
        self.gamma = gamma
        self.t0 = t0
        self.kappa = kappa
        self.reset(1.0)

    def reset(self, step_size: float) -> None:
        self.mu = math.log(10.0 * step_size)
        self.t = 0
        self.h_bar = 0.0
        self.log_eps = math.log(step_size)
        self.log_eps_bar = 0.0

    def update(self, accept_stat: float) -> float:
        """Take one adaptation step; return the step size to use next."""
        if accept_stat != accept_stat:  # NaN: treat as a rejection
            accept_stat = 0.0
        accept_stat = min(1.0, accept_stat)
        self.t += 1
        t = self.t
        eta = 1.0 / (t + self.t0)
        self.h_bar = (1.0 - eta) * self.h_bar + eta * (self.target - accept_stat)
        self.log_eps = self.mu - math.sqrt(t) / self.gamma * self.h_bar
        x = t ** (-self.kappa)
        self.log_eps_bar = x * self.log_eps + (1.0 - x) * self.log_eps_bar
        return math.exp(self.log_eps)

    def final_step_size(self) -> float:
        return math.exp(self.log_eps_bar) if self.t > 0 else math.exp(self.log_eps)


class Welford:
    """Running mean and (co)variance of unconstrained draws, in float64 (NumPy)."""

    def __init__(self, dim: int, dense: bool = False) -> None:
        self.dim = dim
        self.dense = dense
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.mean = np.zeros(self.dim)
        self.m2 = np.zeros((self.dim, self.dim) if self.dense else self.dim)

    def update(self, x: Any) -> None:
        if isinstance(x, torch.Tensor):
            x = x.detach().to(torch.float64).numpy()
        x = np.asarray(x, dtype=np.float64)
        self.n += 1
        delta = x - self.mean
        self.mean = self.mean + delta / self.n
        delta2 = x - self.mean
        if self.dense:
            self.m2 = self.m2 + np.outer(delta, delta2)
        else:
            self.m2 = self.m2 + delta * delta2

    def regularized(self) -> np.ndarray:
        """Stan's shrunk estimate ``n/(n+5) * S + 1e-3 * 5/(n+5) * I``."""
        n = self.n
        cov = self.m2 / max(n - 1, 1)
        w = n / (n + 5.0)
        shrink = 1e-3 * 5.0 / (n + 5.0)
        if self.dense:
            return w * cov + shrink * np.eye(self.dim)
        return w * cov + shrink


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
