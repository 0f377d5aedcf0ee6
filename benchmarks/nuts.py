"""NUTS side by side: eight schools (non-centered) and a Bayesian logistic regression.

For each model, in one process: ember's NUTS, pyro-ppl's NUTS and numpyro's NUTS (each when
importable; run this file with the peers' python, ``.peers-venv/bin/python benchmarks/nuts.py``,
after ``pip install -e . --no-deps`` there), every one with 1 chain, ``--warmup`` adaptation
steps and ``--samples`` draws, target acceptance 0.8, diagonal mass matrix, max tree depth 10.
Then ``--chains`` (4) chains: ember vectorized (one batched evaluation per step, the default) and
sequential, and numpyro's vectorized chains (first and second run in the process); and ember with
torch's default thread count and Ember choosing the threads (``num_threads=None``), 1 and 4 chains.
Reported per library: wall time of the whole run (numpyro's includes its JIT compilation: it
is its first run in the process), gradient evaluations (warm-up and sampling), the minimum
effective sample size over every latent element (computed by ember's estimator on every
library's draws, so the ESS definitions agree) and min ESS per second, and a few posterior
means. Ember runs twice: as it runs by default (the potential compiled, see
``ember.infer.mcmc.compile``; this is the process's first compilation, so its one-time set-up is
in the wall time) and with ``jit_compile=False`` (the model run eagerly on every evaluation);
pyro-ppl runs with its default and with ``jit_compile=True``. Separately, microseconds per
potential-and-gradient evaluation at one point for ember (compiled and eager), the same density
written by hand in PyTorch, and pyro-ppl. Prints one JSON line.

Data: eight schools is Rubin's; the regression has N=1000, D=10, x ~ N(0, 1), true weights
~ N(0, 1), y ~ Bernoulli(logits = x.w + 0.5), from ``--seed``; priors w ~ N(0, 1), b ~ N(0, 1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ember.infer.mcmc.diagnostics import effective_sample_size  # noqa: E402

Y8 = [28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]
SIGMA8 = [15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0]


def logreg_data(seed: int, n: int = 1000, d: int = 10) -> tuple[np.ndarray, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, generator=g)
    y = torch.bernoulli(torch.sigmoid(x @ w + 0.5), generator=g)
    return x.numpy(), y.numpy()


def min_ess(samples: dict[str, np.ndarray], grouped: bool = False) -> float:
    """The minimum ESS over every latent element; ``grouped``: values are ``[chains, draws, ...]``."""
    vals = []
    for v in samples.values():
        v = np.asarray(v, dtype=np.float64)
        vals.append(np.min(effective_sample_size(v if grouped else v[None])))
    return float(min(vals))


# ---- ember ---------------------------------------------------------------------------------------
def pyro_style_models(lib: Any, dist: Any, zeros: Any = torch.zeros) -> dict[str, Any]:
    """The two models for a Pyro-style library (``lib`` is ``ember``, ``pyro`` or ``numpyro``;
    ``zeros`` is its array library's, ``jax.numpy.zeros`` for numpyro)."""

    def eight_schools(sigma, y):
        mu = lib.sample("mu", dist.Normal(0.0, 5.0))
        tau = lib.sample("tau", dist.HalfCauchy(5.0))
        with lib.plate("J", 8):
            theta_tilde = lib.sample("theta_tilde", dist.Normal(0.0, 1.0))
            lib.sample("obs", dist.Normal(mu + tau * theta_tilde, sigma), obs=y)

    def logreg(x, y):
        w = lib.sample("w", dist.Normal(zeros(x.shape[1]), 1.0).to_event(1))
        b = lib.sample("b", dist.Normal(0.0, 1.0))
        with lib.plate("N", x.shape[0]):
            lib.sample("y", dist.Bernoulli(logits=x @ w + b), obs=y)

    return {"eight_schools": eight_schools, "logreg": logreg}


def ember_models() -> dict[str, Any]:
    import ember
    import ember.distributions as dist

    return pyro_style_models(ember, dist)


def run_ember(name: str, data: tuple, args: argparse.Namespace, jit_compile: bool | None = None, chains: int = 1,
              method: str = "vectorized", num_threads: int | None = None, batched_trees: bool | None = None) -> dict[str, Any]:
    """``batched_trees``: force the vectorized NUTS trees to be batched (True) or per chain (False);
    None: Ember's choice by the number of chains."""
    import ember
    import ember.infer.mcmc.vectorized as vectorized
    from ember.infer import MCMC, NUTS

    model = ember_models()[name]
    ember.set_rng_seed(args.seed)
    mcmc = MCMC(NUTS(model, jit_compile=jit_compile), num_samples=args.samples, warmup_steps=args.warmup,
                disable_progbar=True, num_chains=chains, chain_method=method, num_threads=num_threads)
    default_min = vectorized.BATCHED_TREES_MIN_CHAINS
    if batched_trees is not None:
        vectorized.BATCHED_TREES_MIN_CHAINS = 1 if batched_trees else 2**31
    t = time.perf_counter()
    try:
        mcmc.run(*data)
    finally:
        vectorized.BATCHED_TREES_MIN_CHAINS = default_min
    wall = time.perf_counter() - t
    samples = {k: v.numpy() for k, v in mcmc.get_samples(group_by_chain=True).items()}
    out = _report(wall, mcmc.num_grad_evals_warmup + mcmc.num_grad_evals, samples, mcmc.num_divergences,
                  float(mcmc.step_sizes[0]), grouped=True)
    out["potential"] = mcmc.compile_status[0]
    out["threads"] = mcmc.thread_status
    if chains > 1 and method == "vectorized":
        batched = chains >= default_min if batched_trees is None else batched_trees
        out["trees"] = "batched NumPy operations" if batched else "each chain's recursive tree"
    if chains > 1:
        from ember.infer.mcmc.util import diagnostics

        out["max_r_hat"] = round(max(float(d["r_hat"].max()) for d in diagnostics(mcmc.get_samples(group_by_chain=True)).values()), 4)
        per_chain = [int(s["num_steps"].sum()) + w for s, w in zip(mcmc._stats, mcmc._warmup_grad_evals)]
        out["grad_evals_per_chain"] = per_chain
    return out


def ember_potential_us(name: str, data: tuple, reps: int, compiled: bool) -> float:
    """µs per potential-and-gradient call as the samplers make it (float64 NumPy in and out)."""
    import ember
    from ember.infer.mcmc.potential import ModelPotential

    with ember.validation_enabled(False):
        mp = ModelPotential(ember_models()[name], data)
        z, u, g = mp.initial_point("uniform")
        if compiled and not mp.compile(z, u, g):
            raise RuntimeError(f"ember could not compile the {name} potential: {mp.compile_problem}")
        zn = z.double().numpy()
        return _time_us(lambda: mp.potential_and_grad_numpy(zn), reps)


def ember_compile_s(name: str, data: tuple) -> float:
    """Seconds to record and compile the potential (after the process has compiled once)."""
    import ember
    from ember.infer.mcmc.potential import ModelPotential

    with ember.validation_enabled(False):
        mp = ModelPotential(ember_models()[name], data)
        z, u, g = mp.initial_point("uniform")
        t = time.perf_counter()
        mp.compile(z, u, g)
        return round(time.perf_counter() - t, 3)


# ---- the same densities by hand ------------------------------------------------------------------
def hand_potential_us(name: str, data: tuple, reps: int) -> float:
    from torch.distributions import Bernoulli, HalfCauchy, Normal

    if name == "eight_schools":
        sigma, y = data

        def potential(z):
            mu, log_tau, th = z[0], z[1], z[2:]
            tau = log_tau.exp()
            lp = Normal(0.0, 5.0, validate_args=False).log_prob(mu) + HalfCauchy(5.0, validate_args=False).log_prob(tau) + log_tau
            lp = lp + Normal(0.0, 1.0, validate_args=False).log_prob(th).sum()
            lp = lp + Normal(mu + tau * th, sigma, validate_args=False).log_prob(y).sum()
            return -lp

        z = torch.randn(10) * 0.5
    else:
        x, y = data

        def potential(z):
            w, b = z[:-1], z[-1]
            lp = Normal(0.0, 1.0, validate_args=False).log_prob(z).sum()
            lp = lp + Bernoulli(logits=x @ w + b, validate_args=False).log_prob(y).sum()
            return -lp

        z = torch.randn(x.shape[1] + 1) * 0.1

    def step():
        zz = z.detach().requires_grad_(True)
        u = potential(zz)
        (g,) = torch.autograd.grad(u, zz)
        return u.item(), g

    return _time_us(step, reps)


# ---- pyro-ppl --------------------------------------------------------------------------------------
def pyro_models() -> dict[str, Any]:
    import pyro
    import pyro.distributions as dist

    return pyro_style_models(pyro, dist)


def run_pyro(name: str, data: tuple, args: argparse.Namespace, jit_compile: bool = False) -> dict[str, Any]:
    import pyro
    import pyro.ops.integrator as integrator
    from pyro.infer import MCMC, NUTS

    count = [0]
    original = integrator.potential_grad

    def counting(potential_fn, z):
        count[0] += 1
        return original(potential_fn, z)

    integrator.potential_grad = counting
    try:
        pyro.set_rng_seed(args.seed)
        pyro.clear_param_store()
        kernel = NUTS(pyro_models()[name], jit_compile=jit_compile, ignore_jit_warnings=True)
        mcmc = MCMC(kernel, num_samples=args.samples, warmup_steps=args.warmup, disable_progbar=True)
        t = time.perf_counter()
        mcmc.run(*data)
        wall = time.perf_counter() - t
    finally:
        integrator.potential_grad = original
    samples = {k: v.numpy() for k, v in mcmc.get_samples().items()}
    div = sum(len(v) for v in mcmc.diagnostics()["divergences"].values())
    return _report(wall, count[0], samples, div, float(mcmc.kernel.step_size))


def pyro_potential_us(name: str, data: tuple, reps: int) -> float:
    import pyro
    from pyro.infer.mcmc.util import initialize_model
    from pyro.ops.integrator import potential_grad

    pyro.set_rng_seed(0)
    init, potential_fn, _, _ = initialize_model(pyro_models()[name], model_args=data)
    return _time_us(lambda: potential_grad(potential_fn, init), reps)


# ---- numpyro ---------------------------------------------------------------------------------------
def run_numpyro(name: str, data: tuple, args: argparse.Namespace, chains: int = 1) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC, NUTS

    model = pyro_style_models(numpyro, dist, zeros=jnp.zeros)[name]

    jdata = tuple(jnp.asarray(d.numpy() if isinstance(d, torch.Tensor) else d) for d in data)
    mcmc = MCMC(NUTS(model), num_warmup=args.warmup, num_samples=args.samples, progress_bar=False, num_chains=chains,
                chain_method="vectorized")
    t = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(args.seed), *jdata, extra_fields=("num_steps", "diverging"))
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    wall = time.perf_counter() - t
    extra = mcmc.get_extra_fields()
    grads = int(np.sum(extra["num_steps"]))  # sampling only: numpyro does not report warm-up steps here
    return _report(wall, grads, samples, int(np.sum(extra["diverging"])),
                   float(np.ravel(mcmc.last_state.adapt_state.step_size)[0]), grads_cover="sampling only", grouped=True)


# ---- shared -------------------------------------------------------------------------------------------
def _time_us(fn: Any, reps: int) -> float:
    for _ in range(20):
        fn()
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        rounds.append((time.perf_counter() - t) / reps * 1e6)
    return round(statistics.median(rounds), 1)


def _report(wall: float, grads: int, samples: dict[str, np.ndarray], divergences: int, step_size: float,
            grads_cover: str = "warmup + sampling", grouped: bool = False) -> dict[str, Any]:
    ess = min_ess(samples, grouped)
    means = {}
    for k, v in samples.items():
        v = np.asarray(v)
        m = v.reshape((-1,) + v.shape[2:]).mean(0) if grouped else v.mean(0)
        means[k] = round(float(m), 3) if np.ndim(m) == 0 else [round(float(a), 3) for a in np.ravel(m)[:3]]
    return {"wall_s": round(wall, 2), "grad_evals": grads, "grad_evals_cover": grads_cover, "min_ess": round(ess, 1),
            "min_ess_per_s": round(ess / wall, 1), "divergences": divergences, "step_size": round(step_size, 4),
            "means": means}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads, and XLA's (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=1000)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--models", default="eight_schools,logreg")
    p.add_argument("--potential-reps", type=int, default=300, help="evaluations per timing round of the potential")
    p.add_argument("--no-pyro", action="store_true")
    p.add_argument("--no-numpyro", action="store_true")
    p.add_argument("--no-pyro-jit", action="store_true", help="skip pyro-ppl's NUTS(jit_compile=True) run")
    p.add_argument("--chains", type=int, default=4, help="the multi-chain runs' number of chains (default 4)")
    p.add_argument("--no-eager", action="store_true", help="skip ember's jit_compile=False run")
    p.add_argument("--many-chains", type=int, default=0,
                   help="also N vectorized chains, trees batched and per chain (default 0: not run)")
    args = p.parse_args()
    default_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    # before jax is imported (the version check below imports it)
    os.environ.setdefault("XLA_FLAGS", f"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads={args.threads}")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    have = {"pyro": False, "numpyro": False}
    versions = {"torch": torch.__version__}
    if not args.no_pyro:
        try:
            import pyro

            have["pyro"], versions["pyro"] = True, pyro.__version__
        except ImportError:
            pass
    if not args.no_numpyro:
        try:
            import numpyro

            have["numpyro"], versions["numpyro"] = True, numpyro.__version__
        except ImportError:
            pass

    x, yb = logreg_data(args.seed)
    datasets = {
        "eight_schools": (torch.tensor(SIGMA8), torch.tensor(Y8)),
        "logreg": (torch.from_numpy(x), torch.from_numpy(yb)),
    }
    out: dict[str, Any] = {"benchmark": "nuts", "warmup": args.warmup, "samples": args.samples, "threads": args.threads,
                           "versions": versions, "machine": platform.machine(), "load_before": os.getloadavg(),
                           "models": {}}
    for name in args.models.split(","):
        data = datasets[name]
        res: dict[str, Any] = {}
        # ember's default run first: its wall time includes the process's first compilation
        # (make_fx imports torch._dynamo once, ~1.2 s here), as a user's first run would
        res["ember"] = run_ember(name, data, args)
        res["ember_second_run"] = run_ember(name, data, args)  # no one-time import: what 4 chains compare with
        C = args.chains
        res[f"ember_{C}_chains_vectorized"] = run_ember(name, data, args, chains=C, method="vectorized")
        res[f"ember_{C}_chains_sequential"] = run_ember(name, data, args, chains=C, method="sequential")
        if args.many_chains:
            M = args.many_chains
            res[f"ember_{M}_chains_batched_trees"] = run_ember(name, data, args, chains=M, batched_trees=True)
            res[f"ember_{M}_chains_per_chain_trees"] = run_ember(name, data, args, chains=M, batched_trees=False)
        # torch's default thread count, Ember choosing (num_threads=None): what a user gets without set_num_threads
        torch.set_num_threads(default_threads)
        res["ember_threads_chosen"] = run_ember(name, data, args)
        res[f"ember_{C}_chains_threads_chosen"] = run_ember(name, data, args, chains=C)
        torch.set_num_threads(args.threads)
        if not args.no_eager:
            res["ember_eager"] = run_ember(name, data, args, jit_compile=False)
        res["ember_compile_s"] = ember_compile_s(name, data)
        res["potential_us"] = {"ember": ember_potential_us(name, data, args.potential_reps, compiled=True),
                               "ember_eager": ember_potential_us(name, data, args.potential_reps, compiled=False),
                               "torch_by_hand": hand_potential_us(name, data, args.potential_reps)}
        if have["pyro"]:
            res["potential_us"]["pyro"] = pyro_potential_us(name, data, args.potential_reps)
            res["pyro"] = run_pyro(name, data, args)
            if not args.no_pyro_jit:
                res["pyro_jit"] = run_pyro(name, data, args, jit_compile=True)
        if have["numpyro"]:
            res["numpyro_first_run"] = run_numpyro(name, data, args)
            res[f"numpyro_{C}_chains_first_run"] = run_numpyro(name, data, args, chains=C)
            res[f"numpyro_{C}_chains_second_run"] = run_numpyro(name, data, args, chains=C)
        pot = res["potential_us"]
        vec, seq = res[f"ember_{C}_chains_vectorized"], res[f"ember_{C}_chains_sequential"]
        ratios = {"ember_potential_vs_hand": round(pot["ember"] / pot["torch_by_hand"], 2),
                  "ember_eager_potential_vs_hand": round(pot["ember_eager"] / pot["torch_by_hand"], 2),
                  f"ember_{C}_vectorized_wall_over_1_chain": round(vec["wall_s"] / res["ember_second_run"]["wall_s"], 2),
                  f"ember_{C}_sequential_wall_over_1_chain": round(seq["wall_s"] / res["ember_second_run"]["wall_s"], 2),
                  f"ember_{C}_sequential_wall_over_vectorized": round(seq["wall_s"] / vec["wall_s"], 2),
                  "ember_threads_chosen_wall_over_1_thread": round(res["ember_threads_chosen"]["wall_s"] / res["ember_second_run"]["wall_s"], 2)}
        if have["pyro"]:
            ratios["pyro_wall_over_ember_wall"] = round(res["pyro"]["wall_s"] / res["ember"]["wall_s"], 2)
            ratios["ember_ess_per_s_over_pyro"] = round(res["ember"]["min_ess_per_s"] / max(res["pyro"]["min_ess_per_s"], 1e-9), 2)
            ratios["pyro_potential_over_ember"] = round(pot["pyro"] / pot["ember"], 2)
            ratios["pyro_wall_over_ember_eager_wall"] = round(res["pyro"]["wall_s"] / res["ember_eager"]["wall_s"], 2)
            if "pyro_jit" in res:
                ratios["pyro_jit_wall_over_ember_wall"] = round(res["pyro_jit"]["wall_s"] / res["ember"]["wall_s"], 2)
        if have["numpyro"]:
            ratios["numpyro_first_wall_over_ember_wall"] = round(res["numpyro_first_run"]["wall_s"] / res["ember"]["wall_s"], 2)
            ratios[f"numpyro_{C}_chains_second_run_wall_over_ember_vectorized"] = round(
                res[f"numpyro_{C}_chains_second_run"]["wall_s"] / vec["wall_s"], 2)
        if args.many_chains:
            M = args.many_chains
            bt, pt = res[f"ember_{M}_chains_batched_trees"], res[f"ember_{M}_chains_per_chain_trees"]
            ratios[f"ember_{M}_batched_trees_wall_over_1_chain"] = round(bt["wall_s"] / res["ember_second_run"]["wall_s"], 2)
            ratios[f"ember_{M}_per_chain_trees_wall_over_1_chain"] = round(pt["wall_s"] / res["ember_second_run"]["wall_s"], 2)
        res["ratios"] = ratios
        out["models"][name] = res
        print(f"# {name}: {json.dumps(ratios)}", file=sys.stderr, flush=True)
    out["load_after"] = os.getloadavg()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
