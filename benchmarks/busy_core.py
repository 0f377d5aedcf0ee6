"""Tiny models with default settings while another process keeps a core busy, against an idle machine.

Before Ember chose torch's thread count itself, a small model on a two-core machine ran an order
of magnitude slower when another process held the second core (torch's second intra-op thread
waits for a core). This benchmark starts a competing CPU-bound process (a Python busy loop, or a
torch matmul loop with ``--busy torch``) pinned to the last core, and times, with and without it,
alternating:

* ``svi_run``: the introductory scale model, ``JitTrace_ELBO`` + ``SVI.run(2500)``, a fresh SVI
  each time (compilation included), default settings (Ember chooses the threads);
* ``svi_step_loop``: the same with a ``svi.step`` loop (no run boundary: torch's own setting);
* ``mvn_run`` and ``mvn_step_loop``: a normal model with unknown mean and scale (30 observations)
  fitted with an ``AutoMultivariateNormal`` guide, 500 steps of ``SVI.run`` or of ``svi.step``
  (``JitTrace_ELBO``; its triangular-matrix operations are where a second thread stalled most);
* ``nuts``: eight schools, 1 chain, 300 warm-up + 300 draws, default settings (Ember chooses);
* with ``--forced``, ``svi_run``, ``mvn_run`` and ``nuts`` with ``num_threads`` set to torch's default count,
  i.e. what the defaults would cost without the choice;
* ``baseline``: a single-threaded pure Python loop, the slowdown any one-thread program sees when
  the machine is shared (other users' jobs then run beside ours on the remaining core), by which
  the ``relative`` ratios are divided.

Target (issue 16): default settings lose at most 1.3× against the idle machine. Prints one JSON
line: median seconds per variant and condition, the busy/idle ratios and the thread choices.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

Y8 = [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
SIGMA8 = [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]
BUSY = {
    "python": "while True:\n    pass\n",
    "torch": "import torch\ntorch.set_num_threads(1)\na = torch.randn(256, 256)\nwhile True:\n    a = torch.tanh(a @ a)\n",
}


def svi(use_run: bool, num_threads: int | None = None) -> tuple[float, str]:
    from torch.distributions import constraints

    import ember
    import ember.distributions as dist
    from ember.infer import SVI, JitTrace_ELBO

    def model(guess):
        w = ember.sample("weight", dist.Normal(guess, 1.0))
        return ember.sample("measurement", dist.Normal(w, 0.75), obs=torch.tensor(9.5))

    def guide(guess):
        a = ember.param("a", torch.tensor(8.5))
        b = ember.param("b", torch.tensor(1.0), constraint=constraints.positive)
        return ember.sample("weight", dist.Normal(a, b))

    ember.clear_param_store()
    guess = torch.tensor(8.5)
    s = SVI(model, guide, ember.optim.SGD({"lr": 1e-3, "momentum": 0.1}), JitTrace_ELBO())
    t = time.perf_counter()
    if use_run:
        s.run(2500, guess, progress_bar=False, num_threads=num_threads)
    else:
        for _ in range(2500):
            s.step(guess)
    return time.perf_counter() - t, s.thread_status if use_run else f"{torch.get_num_threads()} threads (torch's setting)"


def mvn(use_run: bool, num_threads: int | None = None) -> tuple[float, str]:
    import ember
    import ember.distributions as dist
    from ember.infer import SVI, JitTrace_ELBO
    from ember.infer.autoguide import AutoMultivariateNormal

    x = torch.randn(30, generator=torch.Generator().manual_seed(0)) + 1.0

    def model(x):
        mu = ember.sample("mu", dist.Normal(0.0, 1.0))
        tau = ember.sample("tau", dist.HalfNormal(1.0))
        with ember.plate("N", 30):
            ember.sample("x", dist.Normal(mu, tau), obs=x)

    ember.clear_param_store()
    s = SVI(model, AutoMultivariateNormal(model), ember.optim.Adam({"lr": 0.01}), JitTrace_ELBO())
    t = time.perf_counter()
    if use_run:
        s.run(500, x, progress_bar=False, num_threads=num_threads)
    else:
        for _ in range(500):
            s.step(x)
    return time.perf_counter() - t, s.thread_status if use_run else "the compiled step's own choice"


def nuts(num_threads: int | None = None) -> tuple[float, str]:
    import ember
    import ember.distributions as dist
    from ember.infer import MCMC, NUTS

    def eight_schools(sigma, y):
        mu = ember.sample("mu", dist.Normal(0.0, 5.0))
        tau = ember.sample("tau", dist.HalfCauchy(5.0))
        with ember.plate("J", 8):
            theta_tilde = ember.sample("theta_tilde", dist.Normal(0.0, 1.0))
            ember.sample("obs", dist.Normal(mu + tau * theta_tilde, sigma), obs=y)

    ember.set_rng_seed(0)
    mcmc = MCMC(NUTS(eight_schools), num_samples=300, warmup_steps=300, disable_progbar=True, num_threads=num_threads)
    t = time.perf_counter()
    mcmc.run(torch.tensor(SIGMA8), torch.tensor(Y8))
    return time.perf_counter() - t, mcmc.thread_status


def baseline() -> tuple[float, str]:
    t = time.perf_counter()
    total = 0
    for i in range(3_000_000):
        total += i & 7
    return time.perf_counter() - t, "one Python thread"


class Busy:
    """A competing CPU-bound process pinned to the last core while the ``with`` block runs."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Busy:
        self.proc = subprocess.Popen([sys.executable, "-c", BUSY[self.kind]])
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) > 1:
            os.sched_setaffinity(self.proc.pid, {cpus[-1]})
        time.sleep(0.5)  # let it start spinning (the torch loop imports torch first)
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--busy", choices=sorted(BUSY), default="python")
    p.add_argument("--forced", action="store_true", help="also time with num_threads fixed at torch's default")
    args = p.parse_args()
    default_threads = torch.get_num_threads()
    variants = {"baseline": baseline, "svi_run": lambda: svi(True), "svi_step_loop": lambda: svi(False),
                "mvn_run": lambda: mvn(True), "mvn_step_loop": lambda: mvn(False), "nuts": lambda: nuts()}
    if args.forced:
        variants["svi_run_forced"] = lambda: svi(True, default_threads)
        variants["mvn_run_forced"] = lambda: mvn(True, default_threads)
        variants["nuts_forced"] = lambda: nuts(default_threads)
    load = os.getloadavg()[0]
    for fn in variants.values():  # warm-up: imports, first compilation
        fn()
    seconds: dict[str, dict[str, list[float]]] = {k: {"idle": [], "busy": []} for k in variants}
    status: dict[str, dict[str, str]] = {k: {} for k in variants}
    for r in range(args.rounds):
        for cond in (("idle", "busy") if r % 2 == 0 else ("busy", "idle")):
            ctx = Busy(args.busy) if cond == "busy" else None
            if ctx is not None:
                ctx.__enter__()
            try:
                for k, fn in variants.items():
                    dt, why = fn()
                    seconds[k][cond].append(dt)
                    status[k][cond] = why
                    print(f"round {r + 1} {cond}: {k} {dt:.3f} s ({why})", file=sys.stderr)
            finally:
                if ctx is not None:
                    ctx.__exit__()
    med = {k: {c: round(statistics.median(v), 3) for c, v in d.items()} for k, d in seconds.items()}
    out = {
        "benchmark": "busy_core", "rounds": args.rounds, "busy": args.busy, "cpus": len(os.sched_getaffinity(0)),
        "torch_threads_default": default_threads, "load_average_before": round(load, 2), "torch": torch.__version__,
        "python": platform.python_version(), "seconds": med,
        "busy_over_idle": {k: round(d["busy"] / d["idle"], 3) for k, d in med.items()},
        "busy_over_idle_relative_to_baseline": {k: round(d["busy"] / d["idle"] / (med["baseline"]["busy"] / med["baseline"]["idle"]), 3)
                                                for k, d in med.items() if k != "baseline"},
        "thread_status": status,
    }
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    main()
