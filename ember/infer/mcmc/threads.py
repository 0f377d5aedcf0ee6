"""Choosing torch's intra-op thread count for a run, and restoring the user's afterwards.

A small model's potential is a few dozen operations on tensors of tens to thousands of numbers:
splitting them across threads costs more in synchronisation than it saves, and when another
process keeps a core busy a thread that waits for it costs far more (an order of magnitude on a
two-core machine). So during set-up :class:`ThreadChoice` times the compiled (or eager)
evaluation with one thread and with the current setting, interleaved, and keeps one thread unless
the current setting is clearly faster (by more than ``prefer_one`` times: one thread is the safe
choice when the machine gets busier later). An explicit ``num_threads`` is used as given, without
timing. Either way the previous setting is restored when the ``with`` block ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["ThreadChoice"]

log = logging.getLogger("ember.infer")


def _time_per_call(fn: Callable[[], Any], n: int, budget_s: float = float("inf")) -> float:
    """Seconds per call over ``n`` calls, or fewer once ``budget_s`` has passed (at least one)."""
    t0 = time.perf_counter()
    done = 0
    elapsed = 0.0
    while done < n:
        fn()
        done += 1
        elapsed = time.perf_counter() - t0
        if elapsed > budget_s:
            break
    return elapsed / done


class ThreadChoice:
    """``with ThreadChoice(num_threads) as tc: ... tc.choose(evaluate) ...``: see the module docstring.

    Args:
        num_threads: the user's explicit choice (used as given), or None for Ember to choose.
        prefer_one: keep one thread unless the current setting is this many times faster.
        budget_s: about how long the timing may take in all (it stops early for slow models:
            one evaluation above ``large_s`` keeps the current setting without timing).
    """

    def __init__(self, num_threads: int | None = None, prefer_one: float = 1.3, budget_s: float = 0.06,
                 large_s: float = 0.02) -> None:
        self.num_threads = num_threads
        self.prefer_one = prefer_one
        self.budget_s = budget_s
        self.large_s = large_s
        self.status = "not chosen yet"
        self.chosen: int | None = None
        self._saved: int | None = None

    def __enter__(self) -> ThreadChoice:
        self._saved = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
            self.chosen = self.num_threads
            self.status = f"{self.num_threads} thread(s), as given (num_threads={self.num_threads})"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._saved is not None and torch.get_num_threads() != self._saved:
            torch.set_num_threads(self._saved)

    def choose(self, evaluate: Callable[[], Any], size: int | None = None) -> int:
        """Time ``evaluate()`` (one evaluation of the potential and its gradient) and set the thread
        count for the rest of the block; returns it. A no-op when the user gave ``num_threads`` or
        when it has already chosen."""
        if self.chosen is not None:
            return self.chosen
        current = self._saved if self._saved is not None else torch.get_num_threads()
        if current <= 1:
            self.chosen = current
            self.status = f"{current} thread (the current setting; nothing to choose)"
            return current
        # the size of the model from one thread's timing (several threads can be slowed by any
        # amount when another process holds a core, so they say nothing about the model)
        torch.set_num_threads(1)
        evaluate()  # warm: first calls allocate
        t_first = min(_time_per_call(evaluate, 1) for _ in range(3))  # one call can be descheduled
        if t_first > self.large_s:
            torch.set_num_threads(current)
            self.chosen = current
            self.status = (f"{current} threads (the current setting: one evaluation takes {t_first * 1e3:.0f} ms "
                           f"with one thread, a model large enough to keep them)")
            log.info("MCMC: %s", self.status)
            return current
        n = max(2, min(200, int(self.budget_s / 6 / max(t_first, 1e-6))))
        round_budget = max(self.budget_s / 6, 3 * n * t_first)  # a stalled thread pool does not stall the set-up
        best = {1: float("inf"), current: float("inf")}
        for _ in range(3):  # interleaved, best of three: robust to a burst of load on the other cores
            for k in (1, current):
                torch.set_num_threads(k)
                best[k] = min(best[k], _time_per_call(evaluate, n, round_budget))
        one, many = best[1], best[current]
        self.chosen = 1 if one <= self.prefer_one * many else current
        torch.set_num_threads(self.chosen)
        self.status = (f"{self.chosen} thread{'s' if self.chosen > 1 else ''}, chosen by timing the potential: "
                       f"{one * 1e6:.0f} µs with 1 thread, {many * 1e6:.0f} µs with {current} (restored after the run)")
        log.info("MCMC: %s", self.status)
        return self.chosen
