"""Statistics of a stream of samples, kept without keeping the samples (Pyro's
``pyro.ops.streaming``): what :class:`~ember.infer.mcmc.StreamingMCMC` aggregates draws into.

Each statistic has ``update(sample)`` (one more sample), ``merge(other)`` (the statistic of both
streams, a new object) and ``get()`` (a dict: ``{"count": n, ...}``, only the count before any
sample). Shapes: a sample may have any shape, fixed for a stream; ``mean`` and ``variance`` have
that shape, and ``StackStats``'s ``samples`` is ``[count, *shape]``."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Hashable
from typing import Any

import torch

__all__ = ["CountMeanStats", "CountMeanVarianceStats", "CountStats", "StackStats", "StatsOfDict", "StreamingStats"]


class StreamingStats(ABC):
    """The interface of a streaming statistic (see the module docstring)."""

    @abstractmethod
    def update(self, sample: Any) -> None:
        """Add one sample (a tensor of the stream's shape, or a dict of them for :class:`StatsOfDict`)."""

    @abstractmethod
    def merge(self, other: Any) -> StreamingStats:
        """The statistic of this stream and ``other``'s together (neither is changed)."""

    @abstractmethod
    def get(self) -> Any:
        """The statistic: ``{"count": n, ...}``."""


def _same_kind(a: Any, b: Any) -> None:
    if type(a) is not type(b):
        raise TypeError(f"{type(a).__name__}.merge: cannot merge a {type(b).__name__}")


class CountStats(StreamingStats):
    """The number of samples: ``{"count": n}``."""

    def __init__(self) -> None:
        self.count = 0

    def update(self, sample: Any) -> None:
        self.count += 1

    def merge(self, other: CountStats) -> CountStats:
        _same_kind(self, other)
        result = CountStats()
        result.count = self.count + other.count
        return result

    def get(self) -> dict[str, Any]:
        return {"count": self.count}


class CountMeanStats(StreamingStats):
    """The count and running mean of a tensor's samples: ``{"count": n, "mean": tensor}``."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: Any = 0.0

    def update(self, sample: torch.Tensor) -> None:
        self.count += 1
        self.mean = self.mean + (sample.detach() - self.mean) / self.count

    def merge(self, other: CountMeanStats) -> CountMeanStats:
        _same_kind(self, other)
        result = CountMeanStats()
        result.count = self.count + other.count
        if result.count:
            result.mean = (self.count * self.mean + other.count * other.mean) / result.count
        return result

    def get(self) -> dict[str, Any]:
        return {"count": 0} if self.count == 0 else {"count": self.count, "mean": self.mean}


class CountMeanVarianceStats(StreamingStats):
    """The count, mean and elementwise (unbiased) variance of a tensor's samples, by Welford's
    updates (and Chan's rule to merge): ``{"count": n, "mean": tensor, "variance": tensor}``."""

    def __init__(self) -> None:
        self.count = 0
        self.shape: torch.Size | None = None
        self._mean: Any = None
        self._m2: Any = None

    def update(self, sample: torch.Tensor) -> None:
        sample = sample.detach()
        if self.shape is None:
            self.shape = sample.shape
            self._mean = torch.zeros_like(sample)
            self._m2 = torch.zeros_like(sample)
        elif sample.shape != self.shape:
            raise ValueError(f"CountMeanVarianceStats: a sample of shape {tuple(sample.shape)} in a stream of shape {tuple(self.shape)}")
        self.count += 1
        delta = sample - self._mean
        self._mean = self._mean + delta / self.count
        self._m2 = self._m2 + delta * (sample - self._mean)

    def merge(self, other: CountMeanVarianceStats) -> CountMeanVarianceStats:
        _same_kind(self, other)
        if other.count == 0:
            return copy.deepcopy(self)
        if self.count == 0:
            return copy.deepcopy(other)
        result = CountMeanVarianceStats()
        n = self.count + other.count
        delta = other._mean - self._mean
        result.count, result.shape = n, self.shape
        result._mean = self._mean + delta * (other.count / n)
        result._m2 = self._m2 + other._m2 + delta**2 * (self.count * other.count / n)
        return result

    def get(self) -> dict[str, Any]:
        if self.count == 0:
            return {"count": 0}
        variance = self._m2 / (self.count - 1) if self.count > 1 else torch.full_like(self._m2, float("nan"))
        return {"count": self.count, "mean": self._mean, "variance": variance}


class StackStats(StreamingStats):
    """Every sample, stacked: ``{"count": n, "samples": [n, *shape]}`` (keeps the samples)."""

    def __init__(self) -> None:
        self.samples: list[torch.Tensor] = []

    def update(self, sample: torch.Tensor) -> None:
        self.samples.append(sample)

    def merge(self, other: StackStats) -> StackStats:
        _same_kind(self, other)
        result = StackStats()
        result.samples = self.samples + other.samples
        return result

    def get(self) -> dict[str, Any]:
        return {"count": 0} if not self.samples else {"count": len(self.samples), "samples": torch.stack(self.samples)}


class StatsOfDict(StreamingStats):
    """Statistics of samples that are dicts with a fixed set of keys: one statistic per key,
    ``types[key]()`` or ``default()`` (:class:`CountStats` by default); ``get()`` is
    ``{key: that statistic's get()}``."""

    def __init__(self, types: dict[Hashable, Callable[[], StreamingStats]] | None = None,
                 default: Callable[[], StreamingStats] = CountStats) -> None:
        self.stats: dict[Hashable, StreamingStats] = defaultdict(default)
        self.stats.update({k: v() for k, v in (types or {}).items()})

    def update(self, sample: dict[Hashable, Any]) -> None:
        for k, v in sample.items():
            self.stats[k].update(v)

    def merge(self, other: StatsOfDict) -> StatsOfDict:
        _same_kind(self, other)
        result = copy.deepcopy(self)
        for k, v in other.stats.items():
            result.stats[k] = result.stats[k].merge(v) if k in self.stats else copy.deepcopy(v)
        return result

    def get(self) -> dict[Hashable, Any]:
        return {k: v.get() for k, v in self.stats.items()}
