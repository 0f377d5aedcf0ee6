"""Choosing torch's intra-op thread count for a run, and restoring the user's afterwards.

Used by MCMC (for the run of the chains) and ``SVI.run`` (for the run of the steps). A small
model's potential is a few dozen operations on tensors of tens to thousands of numbers:
splitting them across threads costs more in synchronisation than it saves, and when another
process keeps a core busy a thread that waits for it costs far more (an order of magnitude on a
two-core machine). So during set-up :class:`ThreadChoice` times the compiled (or eager)
evaluation with one thread and with the current setting, interleaved, and keeps one thread unless
the current setting is clearly faster (by more than ``prefer_one`` times: one thread is the safe
choice when the machine gets busier later). Where a recorded graph says how large the model's
tensors are, :meth:`ThreadChoice.by_size` keeps one thread without timing when none is large enough
for torch to split its work across threads; where nothing can be evaluated apart from the run
itself (an eager SVI step changes the parameters), :meth:`ThreadChoice.trial` and
:meth:`ThreadChoice.observe` time the run's first steps, alternating the two settings. An explicit
``num_threads`` is used as given, without timing. Either way the previous setting is restored when
the ``with`` block ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import torch

__all__ = ["ThreadChoice", "threads_given"]

log = logging.getLogger("ember.infer")

# True inside a ThreadChoice the user gave num_threads to: what the compiled step does on its own
# (one thread for a graph of small tensors) must then leave the count as given
_GIVEN: ContextVar[bool] = ContextVar("ember_threads_given", default=False)


def threads_given() -> bool:
    """Whether the running ``SVI.run``/``MCMC.run`` was given ``num_threads`` explicitly."""
    return _GIVEN.get()


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
        label: who chooses, for the log line (``"MCMC"``, ``"SVI"``).
        what: what :meth:`choose` times, for :attr:`status`.
        prefer_one: keep one thread unless the current setting is this many times faster.
        budget_s: about how long the timing may take in all (it stops early for slow models:
            one evaluation above ``large_s`` keeps the current setting without timing).
    """

    #: below this many elements a torch operation runs on one thread whatever the setting
    #: (``at::internal::GRAIN_SIZE``), so a graph of such tensors gains nothing from more threads
    GRAIN = 32768

    def __init__(self, num_threads: int | None = None, prefer_one: float = 1.3, budget_s: float = 0.06,
                 large_s: float = 0.02, label: str = "MCMC", what: str = "the potential") -> None:
        self.num_threads = num_threads
        self.label = label
        self.what = what
        self._trials: list[int] = []
        self._seen: dict[int, float] = {}
        self.prefer_one = prefer_one
        self.budget_s = budget_s
        self.large_s = large_s
        self.status = "not chosen yet"
        self.chosen: int | None = None
        self._saved: int | None = None
        self._given_token: Any = None

    def __enter__(self) -> ThreadChoice:
        self._saved = torch.get_num_threads()
        self._given_token = _GIVEN.set(self.num_threads is not None)
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
            self.chosen = self.num_threads
            self.status = f"{self.num_threads} thread(s), as given (num_threads={self.num_threads})"
        return self

    def _current(self) -> int:
        return self._saved if self._saved is not None else torch.get_num_threads()

    def decide(self, threads: int, why: str) -> int:
        """Set ``threads`` for the rest of the block, saying ``why`` in :attr:`status` and the log."""
        self.chosen = threads
        torch.set_num_threads(threads)
        self.status = f"{threads} thread{'s' if threads > 1 else ''}, {why} (restored after the run)"
        log.info("%s: %s", self.label, self.status)
        return threads

    def by_size(self, largest: int) -> int | None:
        """Choose one thread when the largest tensor of the model's recorded graph has ``largest`` <
        :attr:`GRAIN` elements (no operation on it is split across threads); returns the choice, or
        None when the model is larger and timing must decide."""
        if self.chosen is not None:
            return self.chosen
        current = self._current()
        if current <= 1:
            self.chosen = current
            self.status = f"{current} thread (the current setting; nothing to choose)"
            return current
        if largest >= self.GRAIN:
            return None
        return self.decide(1, f"chosen by size: the largest tensor of the recorded graph has {largest} elements, "
                              f"too few for torch to split across threads")

    def trial(self) -> int | None:
        """The thread count the next timed unit of the run (e.g. one SVI step) should use, or None
        once the choice is made (then the chosen count is set). Alternates one thread and the
        current setting, three times each; see :meth:`observe`."""
        if self.chosen is not None:
            return None
        current = self._current()
        if current <= 1:
            self.chosen = current
            self.status = f"{current} thread (the current setting; nothing to choose)"
            return None
        if not self._trials and not self._seen:
            self._trials = [1, current] * 3
        k = self._trials[0] if self._trials else 1
        torch.set_num_threads(k)
        return k

    def observe(self, threads: int, seconds: float) -> None:
        """Report that a unit of the run took ``seconds`` with ``threads`` threads (from :meth:`trial`);
        after the last trial, choose as :meth:`choose` does (best of three each)."""
        if self.chosen is not None or not self._trials:
            return
        self._trials.pop(0)
        self._seen[threads] = min(self._seen.get(threads, float("inf")), seconds)
        current = self._current()
        if threads == 1 and seconds > self.large_s:
            self.decide(current, f"the current setting: one step takes {seconds * 1e3:.0f} ms with one thread, a model "
                                 f"large enough to keep them")
            return
        if self._trials:
            return
        one, many = self._seen.get(1, float("inf")), self._seen.get(current, float("inf"))
        self.decide(1 if one <= self.prefer_one * many else current,
                    f"chosen by timing the first steps: {one * 1e6:.0f} µs with 1 thread, {many * 1e6:.0f} µs with {current}")

    def __exit__(self, *exc: Any) -> None:
        _GIVEN.reset(self._given_token)
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
            log.info("%s: %s", self.label, self.status)
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
        self.status = (f"{self.chosen} thread{'s' if self.chosen > 1 else ''}, chosen by timing {self.what}: "
                       f"{one * 1e6:.0f} µs with 1 thread, {many * 1e6:.0f} µs with {current} (restored after the run)")
        log.info("%s: %s", self.label, self.status)
        return self.chosen
