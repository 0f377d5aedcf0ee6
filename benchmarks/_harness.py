"""What ``vae_epoch.py`` and ``air_step.py`` share: their common flags, the variants (``torch``,
``ember``, ``ember_checked``, and ``pyro`` when importable), the untimed warm-up, the timed rounds
that alternate between the variants, and the head and tail of the JSON line they print.

A variant is ``(step, hooks)``: ``step(batch_or_data) -> loss`` and ``hooks``, None or
``(enter, leave)`` called around each of the variant's turns (e.g. to set validation flags).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

Step = Callable[[torch.Tensor], float]
Variant = tuple[Step, tuple[Callable[[], None], Callable[[], None]] | None]


def parse_args(p: argparse.ArgumentParser, unit: str) -> argparse.Namespace:
    """Add the shared flags (``--threads``, ``--seed``, ``--warmup``, ``--no-pyro``, ``--no-checked``;
    ``unit``: what is timed, "epoch" or "round"), parse, and set torch's thread count."""
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=3, help=f"untimed steps per variant before the first {unit} (default 3)")
    p.add_argument("--no-pyro", action="store_true", help="skip pyro-ppl even if importable")
    p.add_argument("--no-checked", action="store_true", help="skip the ember_checked variant")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    return args


def make_variants(args: argparse.Namespace, make_torch: Callable[[], Variant], make_ember: Callable[[bool], Variant],
                  make_pyro: Callable[[], Variant]) -> tuple[dict[str, Variant], str | None]:
    """The variants to time, and pyro-ppl's version (None if it is skipped or not importable).
    ``make_ember(checked)``: ``checked`` is False for ``ember``, True for ``ember_checked``."""
    variants = {"torch": make_torch(), "ember": make_ember(False)}
    if not args.no_checked:
        variants["ember_checked"] = make_ember(True)
    pyro_version = None
    if not args.no_pyro:
        try:
            import pyro

            pyro_version = pyro.__version__
            variants["pyro"] = make_pyro()
        except ImportError:
            pass
    return variants, pyro_version


def _turn(variant: Variant, seed: int, body: Callable[..., Any], *args: Any) -> Any:
    """``body(step, *args)`` within the variant's hooks, after seeding the global torch RNG with ``seed``."""
    step, hooks = variant
    if hooks is not None:
        hooks[0]()
    torch.manual_seed(seed)
    result = body(step, *args)
    if hooks is not None:
        hooks[1]()
    return result


def _timed(step: Step, body: Callable[[Step, Any], float], prepared: Any) -> tuple[float, float]:
    t = time.perf_counter()
    total = body(step, prepared)
    return time.perf_counter() - t, total


def warm_up(variants: dict[str, Variant], seed: int, body: Callable[[Step], None]) -> None:
    """Untimed ``body(step)`` for every variant (allocator, lazy optimizer state), each from the same RNG state."""
    for variant in variants.values():
        _turn(variant, seed * 1000, body)


def alternate(variants: dict[str, Variant], rounds: int, seed: int, body: Callable[[Step, Any], float], *,
              prepare: Callable[[int], Any] = lambda r: None, steps_per_round: int = 1, data_size: int = 1,
              unit: str = "round", show: Callable[[str, float, float], str]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Rounds ``1..rounds``, each running every variant once, in an order that rotates every round.

    Before a variant's turn the global torch RNG is seeded from the round number (all variants
    draw the same noise); ``body(step, prepare(round))`` is timed and returns the summed loss.
    Returns per variant the seconds per step (``steps_per_round`` steps a round) and the loss per
    step and datum of each round; after each round ``show(name, seconds, loss)`` of every
    variant is printed to stderr.
    """
    names = list(variants)
    times: dict[str, list[float]] = {k: [] for k in names}
    losses: dict[str, list[float]] = {k: [] for k in names}
    for r in range(1, rounds + 1):
        prepared = prepare(r)
        rot = (r - 1) % len(names)
        for name in names[rot:] + names[:rot]:
            seconds, total = _turn(variants[name], seed * 1000 + r, _timed, body, prepared)
            times[name].append(seconds / steps_per_round)
            losses[name].append(total / steps_per_round / data_size)
        print(f"{unit} {r}: " + ", ".join(show(k, times[k][-1], losses[k][-1]) for k in names), file=sys.stderr)
    return times, losses


def means(times: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.fmean(v) for k, v in times.items()}


def header(benchmark: str, threads: int, pyro_version: str | None, **fields: Any) -> dict[str, Any]:
    """The JSON line's first keys: the benchmark, its own ``fields``, then threads and versions."""
    return {"benchmark": benchmark, **fields, "threads": threads, "torch": torch.__version__, "pyro": pyro_version,
            "python": platform.python_version()}


def ratio_to_torch(mean: dict[str, float]) -> dict[str, float]:
    return {k: round(v / mean["torch"], 3) for k, v in mean.items() if k != "torch"}


def emit(out: dict[str, Any], mean: dict[str, float]) -> None:
    """Add ``ember_over_pyro`` when pyro ran, and print ``out`` as one JSON line."""
    if "pyro" in mean:
        out["ember_over_pyro"] = round(mean["ember"] / mean["pyro"], 3)
    print(json.dumps(out))
