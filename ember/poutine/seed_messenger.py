"""``seed``: run a function under a fixed random seed."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch

from ember.poutine.messenger import Messenger


def get_rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "random": random.getstate(), "numpy": np.random.get_state()}


def set_rng_seed(rng_seed: int) -> None:
    """Seed torch, numpy and Python's random."""
    torch.manual_seed(rng_seed)
    random.seed(rng_seed)
    np.random.seed(rng_seed % (2**32))


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])


class SeedMessenger(Messenger):
    """Seed torch, numpy and random on entry; restore their previous states on exit,
    so the same seed gives a bit-identical run and the outside stream is untouched."""

    def __init__(self, fn: Callable | None = None, rng_seed: int | None = None) -> None:
        super().__init__(fn)
        if not isinstance(rng_seed, int):
            raise TypeError(f"poutine.seed expects an integer rng_seed; got {rng_seed!r}")
        self.rng_seed = rng_seed

    def __enter__(self) -> SeedMessenger:
        self._old_state = get_rng_state()
        set_rng_seed(self.rng_seed)
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        set_rng_state(self._old_state)
        return super().__exit__(*exc)


def seed(fn: Callable | None = None, rng_seed: int | None = None) -> SeedMessenger:
    """Run ``fn`` (or the ``with`` block) with the random number generators seeded by ``rng_seed``,
    and restore their previous state afterwards. A handler: ``seed(fn, rng_seed=0)``, a decorator
    or a context manager."""
    return SeedMessenger(fn, rng_seed=rng_seed)
