"""Welford's streaming (co)variance estimates (Pyro's ``pyro.ops.welford``), in torch, for
adapting HMC's mass matrix: diagonal, dense, or arrowhead (a dense head of rows over a diagonal
tail). Each estimate is shrunk towards ``1e-3 * I`` as Stan does:
``n / (n + 5) * S + 1e-3 * 5 / (n + 5) * I`` for ``n`` draws with sample covariance ``S``."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["WelfordArrowheadCovariance", "WelfordCovariance"]


def _shrinkage(n: int) -> tuple[float, float]:
    """Stan's regularization of ``n`` draws: the factor of the sample covariance and the jitter."""
    return n / (n + 5.0), 1e-3 * (5.0 / (n + 5.0))


def _need_two(n: int, who: str) -> None:
    if n < 2:
        raise RuntimeError(f"{who}: insufficient samples to estimate covariance (have {n}, need at least 2)")


class WelfordCovariance:
    """Streaming (co)variance of draws of shape ``(D,)``: :meth:`update` takes one draw,
    :meth:`get_covariance` returns the ``(D,)`` variances (``diagonal=True``) or the ``(D, D)``
    covariance matrix.

    :param diagonal: estimate only the variances.
    """

    def __init__(self, diagonal: bool = True) -> None:
        self.diagonal = diagonal
        self.reset()

    def reset(self) -> None:
        """Forget every draw."""
        self._mean: Any = 0.0
        self._m2: Any = 0.0
        self.n_samples = 0

    def update(self, sample: torch.Tensor) -> None:
        """Add one draw ``sample`` of shape ``(D,)``."""
        self.n_samples += 1
        before = sample - self._mean
        self._mean = self._mean + before / self.n_samples
        after = sample - self._mean
        self._m2 = self._m2 + (before * after if self.diagonal else torch.outer(after, before))

    def get_covariance(self, regularize: bool = True) -> torch.Tensor:
        """The estimate: shape ``(D,)`` when diagonal, else ``(D, D)``; with ``regularize``,
        shrunk as Stan does. Raises ``RuntimeError`` with fewer than two draws."""
        n = self.n_samples
        _need_two(n, "WelfordCovariance")
        cov = self._m2 / (n - 1)
        if not regularize:
            return cov
        factor, jitter = _shrinkage(n)
        cov = factor * cov
        if self.diagonal:
            return cov + jitter
        return cov + jitter * torch.eye(cov.size(-1), dtype=cov.dtype, device=cov.device)


class WelfordArrowheadCovariance:
    """Streaming covariance of draws of shape ``(D,)`` kept in arrowhead form: the first
    ``head_size`` rows in full (``(head_size, D)``) and the variances of the other
    ``D - head_size`` coordinates (``(D - head_size,)``).

    :param head_size: the number of dense leading rows.
    """

    def __init__(self, head_size: int = 0) -> None:
        self.head_size = head_size
        self.reset()

    def reset(self) -> None:
        """Forget every draw."""
        self._mean: Any = 0.0
        self._m2_top: Any = 0.0
        self._m2_bottom_diag: Any = 0.0
        self.n_samples = 0

    def update(self, sample: torch.Tensor) -> None:
        """Add one draw ``sample`` of shape ``(D,)``."""
        h = self.head_size
        self.n_samples += 1
        before = sample - self._mean
        self._mean = self._mean + before / self.n_samples
        after = sample - self._mean
        if h > 0:
            self._m2_top = self._m2_top + torch.outer(after[:h], before)
        else:
            self._m2_top = sample.new_empty(0, sample.size(0))
        self._m2_bottom_diag = self._m2_bottom_diag + after[h:] * before[h:]

    def get_covariance(self, regularize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``(top, bottom_diag)``: ``top = cov[:head_size]`` of shape ``(head_size, D)`` and
        ``bottom_diag = cov.diag()[head_size:]`` of shape ``(D - head_size,)``; with
        ``regularize``, shrunk as Stan does (the jitter goes on the diagonal of both parts).
        Raises ``RuntimeError`` with fewer than two draws."""
        n = self.n_samples
        _need_two(n, "WelfordArrowheadCovariance")
        top = self._m2_top / (n - 1)
        bottom = self._m2_bottom_diag / (n - 1)
        if not regularize:
            return top, bottom
        factor, jitter = _shrinkage(n)
        h = top.size(0)
        eye = torch.eye(h, top.size(-1), dtype=top.dtype, device=top.device)
        return factor * top + jitter * eye, factor * bottom + jitter
