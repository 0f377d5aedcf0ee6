"""Autoguides: µs per SVI step, ember vs the same guide written by hand in torch (and pyro-ppl
when importable: run with `.peers-venv/bin/python benchmarks/autoguide.py`).

The model is hierarchical: ``mu ~ N(0, 10)``, ``tau ~ HalfNormal(5)``, ``theta_g ~ N(mu, tau)``
for ``G`` groups, ``y_ig ~ N(theta_g, 1)`` for ``N`` observations per group: ``G + 2`` latents
(``--groups``, default 1000, for AutoNormal and AutoDiagonalNormal; ``--mvn-groups``, default 50,
for AutoMultivariateNormal). Every variant: Adam(lr=0.01), one particle, loss as a float each
step, validation off. The hand-written guide does the same math as the autoguide (one normal over
the unconstrained latents, ``tau = exp(u)`` with its log-Jacobian, the log joint by formulas).
Rounds alternate between the variants; each reports the median over rounds. Prints one JSON line
with µs/step, ratios to the hand-written guide and the final ELBOs (mean of the last 100 losses).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time

import torch

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _data(groups: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    theta = 2.0 + 1.5 * torch.randn(groups, generator=g)
    return theta + torch.randn(n, groups, generator=g)


def _make_lib(lib, guide_name: str, y: torch.Tensor, jit: bool):
    dist = lib.distributions
    groups, n = y.shape[1], y.shape[0]

    def model(y):
        mu = lib.sample("mu", dist.Normal(0.0, 10.0))
        tau = lib.sample("tau", dist.HalfNormal(5.0))
        with lib.plate("groups", groups):
            theta = lib.sample("theta", dist.Normal(mu, tau))
            with lib.plate("obs", n, dim=-2):
                lib.sample("y", dist.Normal(theta, 1.0), obs=y)

    def make():
        from importlib import import_module

        autoguide = import_module(f"{lib.__name__}.infer.autoguide")
        guide = getattr(autoguide, guide_name)(model, init_loc_fn=autoguide.init_to_feasible)  # the hand-written guide's start
        if jit:  # its own parameter names: the eager and compiled variants train separately in one store
            guide._pyro_name = f"jit{guide_name}"
        loss = lib.infer.JitTrace_ELBO() if jit else lib.infer.Trace_ELBO()
        svi = lib.infer.SVI(model, guide, lib.optim.Adam({"lr": 0.01}), loss)
        return lambda: svi.step(y)

    return make


def _make_torch(guide_name: str, y: torch.Tensor):
    groups = y.shape[1]
    d = groups + 2

    def log_joint(mu, tau, theta):
        lp = -0.5 * (mu / 10.0) ** 2 - math.log(10.0) - HALF_LOG_2PI
        lp = lp + math.log(2.0) - 0.5 * (tau / 5.0) ** 2 - math.log(5.0) - HALF_LOG_2PI
        lp = lp + (-0.5 * ((theta - mu) / tau) ** 2 - tau.log() - HALF_LOG_2PI).sum()
        return lp + (-0.5 * (y - theta) ** 2 - HALF_LOG_2PI).sum()

    def make():
        torch.manual_seed(0)
        loc = torch.zeros(d, requires_grad=True)
        if guide_name == "AutoMultivariateNormal":
            raw = torch.zeros(d, d, requires_grad=True)  # lower Cholesky: strictly lower + exp(diagonal)
            params = [loc, raw]
        else:
            log_scale = torch.full((d,), math.log(0.1), requires_grad=True)
            params = [loc, log_scale]
        opt = torch.optim.Adam(params, lr=0.01)
        if guide_name == "AutoMultivariateNormal":
            with torch.no_grad():
                raw.diagonal().fill_(math.log(0.1))

        def step():
            opt.zero_grad()
            eps = torch.randn(d)
            if guide_name == "AutoMultivariateNormal":
                tril = raw.tril(-1) + raw.diagonal().exp().diag()
                z = loc + tril @ eps
                log_q = -0.5 * (eps ** 2).sum() - raw.diagonal().sum() - d * HALF_LOG_2PI
            else:
                scale = log_scale.exp()
                z = loc + scale * eps
                log_q = (-0.5 * eps ** 2 - log_scale - HALF_LOG_2PI).sum()
            mu, u, theta = z[0], z[1], z[2:]
            tau = u.exp()
            loss = log_q - u - log_joint(mu, tau, theta)  # log q(tau) = log q(u) - log|d tau/du|
            loss.backward()
            opt.step()
            return loss.item()

        return step

    return make


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", type=int, default=1000)
    p.add_argument("--mvn-groups", type=int, default=50)
    p.add_argument("--obs", type=int, default=5, help="observations per group")
    p.add_argument("--steps", type=int, default=300, help="steps per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-pyro", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

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
    for lib in libs.values():
        lib.enable_validation(False)

    results = {}
    for guide_name in ("AutoNormal", "AutoDiagonalNormal", "AutoMultivariateNormal"):
        groups = args.mvn_groups if guide_name == "AutoMultivariateNormal" else args.groups
        y = _data(groups, args.obs, 0)
        variants = {"torch": _make_torch(guide_name, y)}
        for name, lib in libs.items():
            variants[name] = _make_lib(lib, guide_name, y, jit=False)
            variants[f"{name}_jit"] = _make_lib(lib, guide_name, y, jit=True)
        times: dict[str, list[float]] = {k: [] for k in variants}
        finals: dict[str, float] = {}
        steps = {}
        for lib in libs.values():
            lib.clear_param_store()
        for name, make in variants.items():
            torch.manual_seed(0)
            steps[name] = make()
        for r in range(args.rounds + 1):  # round 0: warm-up (compiling, allocator), untimed
            for name, step in steps.items():
                torch.manual_seed(r)
                losses = []
                t = time.perf_counter()
                for _ in range(args.steps):
                    losses.append(step())
                dt = time.perf_counter() - t
                if r:
                    times[name].append(dt / args.steps * 1e6)
                    finals[name] = -statistics.fmean(losses[-100:])
        med = {k: statistics.median(v) for k, v in times.items()}
        results[guide_name] = {
            "latents": groups + 2,
            "us_per_step": {k: round(v, 1) for k, v in med.items()},
            "ratio_to_torch": {k: round(v / med["torch"], 3) for k, v in med.items() if k != "torch"},
            "final_elbo": {k: round(v, 1) for k, v in finals.items()},
        }
        if "pyro" in med:
            results[guide_name]["ember_over_pyro"] = round(med["ember"] / med["pyro"], 3)
            results[guide_name]["ember_jit_over_pyro_jit"] = round(med["ember_jit"] / med["pyro_jit"], 3)
    print(json.dumps({"benchmark": "autoguide", "torch": torch.__version__, "pyro": pyro_version, "threads": args.threads,
                      "steps": args.steps, "rounds": args.rounds, "machine": platform.machine(), "results": results}))


if __name__ == "__main__":
    main()
