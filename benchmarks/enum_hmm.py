"""Enumerated HMM: seconds per SVI step of ``TraceEnum_ELBO`` on a hidden Markov model of length T
(T = 100, 300, 1000), ember vs the forward algorithm written by hand in torch, and pyro-ppl when
importable (run with the peers' python, see README's Benchmarks section).

The model: K = 3 hidden states, ``x_t ~ Categorical(trans[x_{t-1}])`` along ``markov(range(T))``,
``y_t ~ Normal(locs[x_t], 1)`` observed; parameters ``init`` (simplex), ``trans`` (rows on the
simplex) and ``locs``; an empty guide, so the loss is ``-log p(y)`` exactly. The data are drawn from
the same HMM with ``trans = 0.8 I + 0.1 (1 - I)``, ``locs = (-2, 0, 2)``, torch seed 0.

``--jit`` adds ``ember_jit`` (``JitTraceEnum_ELBO``; compiled during the untimed warm-up).
Every variant: Adam(lr=0.01) on the same initial parameters, the loss read back as a float each step,
rounds alternating between variants, 1 thread. Prints one JSON line per T with the median seconds
per step of each variant, their ratios to the hand-written torch step, and ``per_T``: ember's seconds
per step divided by T (flat when the cost is linear in T).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

K = 3


def make_data(T: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    trans = torch.full((K, K), 0.1) + 0.7 * torch.eye(K)
    locs = torch.tensor([-2.0, 0.0, 2.0])
    x = 0
    ys = []
    for _ in range(T):
        x = int(torch.multinomial(trans[x], 1, generator=g))
        ys.append(locs[x] + torch.randn((), generator=g))
    return torch.stack(ys)


def _init() -> dict:
    return {"init": torch.full((K,), 1.0 / K), "trans": torch.full((K, K), 0.2) + 0.4 * torch.eye(K),
            "locs": torch.tensor([-1.0, 0.1, 1.0])}


def _library_step(lib, ys: torch.Tensor, jit: bool = False):
    dist = lib.distributions
    lib.clear_param_store()
    init0 = _init()

    def model(ys):
        init = lib.param("init", init0["init"], constraint=dist.constraints.simplex)
        trans = lib.param("trans", init0["trans"], constraint=dist.constraints.simplex)
        locs = lib.param("locs", init0["locs"])
        x = None
        for t in lib.markov(range(len(ys))):
            x = lib.sample(f"x_{t}", dist.Categorical(init if x is None else trans[x]))
            lib.sample(f"y_{t}", dist.Normal(locs[x], 1.0), obs=ys[t])

    def guide(ys):
        pass

    elbo = (lib.infer.JitTraceEnum_ELBO if jit else lib.infer.TraceEnum_ELBO)(max_plate_nesting=0)
    svi = lib.infer.SVI(lib.infer.config_enumerate(model), guide, lib.optim.Adam({"lr": 0.01}), elbo)
    return lambda: svi.step(ys)


def _torch_step(ys: torch.Tensor):
    init0 = _init()
    u_init = init0["init"].log().clone().requires_grad_()
    u_trans = init0["trans"].log().clone().requires_grad_()
    locs = init0["locs"].clone().requires_grad_()
    opt = torch.optim.Adam([u_init, u_trans, locs], lr=0.01)

    def step() -> float:
        opt.zero_grad()
        log_init = u_init.log_softmax(-1)
        log_trans = u_trans.log_softmax(-1)
        emit = torch.distributions.Normal(locs, 1.0).log_prob(ys[:, None])  # [T, K]
        alpha = log_init + emit[0]
        for t in range(1, len(ys)):
            alpha = (alpha[:, None] + log_trans).logsumexp(0) + emit[t]
        loss = -alpha.logsumexp(0)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[100, 300, 1000])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="SVI steps per round and variant")
    p.add_argument("--no-pyro", action="store_true")
    p.add_argument("--jit", action="store_true", help="also time JitTraceEnum_ELBO (ember_jit; its one-off compile takes "
                                                      "about 30 s at T=100 and minutes beyond, untimed)")
    args = p.parse_args()
    torch.set_num_threads(1)
    import ember

    libs = {"ember": ember}
    pyro_version = None
    if not args.no_pyro:
        try:
            import pyro

            libs["pyro"] = pyro
            pyro_version = pyro.__version__
        except ImportError:
            pass
    for T in args.lengths:
        ys = make_data(T)
        variants = {"torch": _torch_step(ys)}
        for name, lib in libs.items():
            lib.enable_validation(False)
            variants[name] = _library_step(lib, ys)
            if args.jit and name == "ember":
                variants["ember_jit"] = _library_step(lib, ys, jit=True)
        times: dict = {name: [] for name in variants}
        for step in variants.values():  # untimed warm-up (first-step setup)
            step()
        for _ in range(args.rounds):
            for name, step in variants.items():
                t = time.perf_counter()
                for _ in range(args.steps):
                    step()
                times[name].append((time.perf_counter() - t) / args.steps)
        med = {name: statistics.median(v) for name, v in times.items()}
        out = {"benchmark": "enum_hmm", "T": T, "K": K, "seconds_per_step": med,
               "ratio_to_torch": {n: med[n] / med["torch"] for n in med if n != "torch"},
               "per_T": {n: med[n] / T for n in med}}
        if "pyro" in med:
            out["ember_over_pyro"] = med["ember"] / med["pyro"]
        out.update({"pyro_version": pyro_version, "torch": torch.__version__, "python": platform.python_version(),
                    "rounds": args.rounds, "steps": args.steps, "threads": 1})
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
