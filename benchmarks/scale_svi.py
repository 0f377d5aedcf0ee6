"""The introductory scale model: µs per SVI step, ember vs the same ELBO written by hand and the peers.

Alternates rounds of: ember (validation off), ember (validation on), ember with
``JitTrace_ELBO`` (the compiled ELBO; its first step, which compiles, is in the timing), ember's
``SVI.run`` with ``JitTrace_ELBO`` (several steps per call of one recorded graph; recording and
checking it are in the timing), the ELBO hand-written with torch.distributions
(validate_args=False), the ELBO as plain torch formulas, pyro-ppl (``Trace_ELBO`` and
``JitTrace_ELBO``) and NumPyro (a loop of ``jax.jit(svi.update)`` and ``svi.run``, each a fresh
``SVI`` per round, so compilation is in every round's timing) when they are importable (run this
file with the peers' python: `.peers-venv/bin/python benchmarks/scale_svi.py` after
`pip install -e .` there). Every variant: 2 sample sites, one param constrained positive,
SGD(lr=1e-3, momentum=0.1) (NumPyro: ``Momentum(1e-3, 0.1)``, the same update), loss returned
each step (as a float, or, for ``SVI.run`` and NumPyro, in the run's loss history). A round's time
per step is its whole time (set-up, compilation, ``num_steps`` steps) over ``num_steps``; the
``*_steady`` variants time a second run on the compiled objects. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
from torch.distributions import constraints, transform_to

GUESS, MEAS = 8.5, 9.5


def _make_run(lib, validate: bool, jit: bool = False, use_run: bool = False, steady: bool = False):
    """The timed SVI loop for a Pyro-style library (``lib`` is ``ember`` or ``pyro``); ``jit``
    uses the library's ``JitTrace_ELBO``, whose compilation (on the first step) is timed too;
    ``use_run``: ember's ``SVI.run`` instead of a step loop; ``steady``: time a second run."""
    dist = lib.distributions
    SVI = lib.infer.SVI
    make_elbo = (lambda: lib.infer.JitTrace_ELBO(ignore_jit_warnings=True)) if jit else lib.infer.Trace_ELBO

    def model(guess):
        w = lib.sample("weight", dist.Normal(guess, 1.0))
        return lib.sample("measurement", dist.Normal(w, 0.75))

    cond = lib.condition(model, data={"measurement": torch.tensor(MEAS)})

    # Pyro's JitTrace_ELBO traces only tensor arguments: the jit variants take the guess as a tensor
    arg = torch.tensor(GUESS) if jit else GUESS
    init = torch.as_tensor if jit else torch.tensor

    def guide(guess):
        a = lib.param("a", init(guess))
        b = lib.param("b", torch.tensor(1.0), constraint=constraints.positive)
        return lib.sample("weight", dist.Normal(a, b))

    def run(n):
        lib.enable_validation(validate)
        lib.clear_param_store()
        svi = SVI(cond, guide, lib.optim.SGD({"lr": 0.001, "momentum": 0.1}), make_elbo())
        t = time.perf_counter()
        if use_run:
            svi.run(n, arg, progress_bar=False)
        else:
            for _ in range(n):
                svi.step(arg)
        dt = time.perf_counter() - t
        if steady:  # a second run on the same (compiled) objects
            t = time.perf_counter()
            svi.run(n, arg, progress_bar=False)
            dt = time.perf_counter() - t
        lib.enable_validation(True)
        return dt

    return run


def make_ember(validate: bool, jit: bool = False, use_run: bool = False, steady: bool = False):
    import ember
    import ember.distributions  # noqa: F401
    import ember.infer  # noqa: F401
    import ember.optim  # noqa: F401

    return _make_run(ember, validate, jit, use_run, steady)


def make_numpyro(use_run: bool, steady: bool = False):
    """NumPyro's scale model: a loop of ``jax.jit(svi.update)`` (``use_run=False``) or ``svi.run``;
    a fresh ``SVI`` per call, so its compilation is timed (``steady``: a second run, compiled)."""
    import jax
    import numpyro
    import numpyro.distributions as ndist
    from numpyro.infer import SVI as NSVI
    from numpyro.infer import Trace_ELBO as NTrace_ELBO

    def model(guess):
        w = numpyro.sample("weight", ndist.Normal(guess, 1.0))
        return numpyro.sample("measurement", ndist.Normal(w, 0.75), obs=MEAS)

    def guide(guess):
        a = numpyro.param("a", guess)
        b = numpyro.param("b", 1.0, constraint=ndist.constraints.positive)
        return numpyro.sample("weight", ndist.Normal(a, b))

    def once(svi, n, key):
        if use_run:
            result = svi.run(key, n, GUESS, progress_bar=False)
            jax.block_until_ready(result.losses)
            return
        state = svi.init(key, GUESS)
        update = jax.jit(svi.update)
        losses = []
        for _ in range(n):
            state, loss = update(state, GUESS)
            losses.append(loss)
        jax.block_until_ready(losses)

    def run(n):
        key = jax.random.PRNGKey(0)
        svi = NSVI(model, guide, numpyro.optim.Momentum(1e-3, 0.1), NTrace_ELBO())
        if use_run and steady:
            once(svi, n, key)
        if not use_run and steady:  # time the loop alone, after one compiled update
            state = svi.init(key, GUESS)
            update = jax.jit(svi.update)
            jax.block_until_ready(update(state, GUESS))
            t = time.perf_counter()
            losses = []
            for _ in range(n):
                state, loss = update(state, GUESS)
                losses.append(loss)
            jax.block_until_ready(losses)
            return time.perf_counter() - t
        t = time.perf_counter()
        once(svi, n, key)
        return time.perf_counter() - t

    return run


def make_pyro(jit: bool = False):
    import pyro
    import pyro.distributions  # noqa: F401
    import pyro.infer  # noqa: F401
    import pyro.optim  # noqa: F401

    return _make_run(pyro, False, jit)


def make_hand_dist():
    from torch.distributions import Normal

    def run(n):
        torch.distributions.Distribution.set_default_validate_args(False)
        a = torch.tensor(GUESS, requires_grad=True)
        b = torch.tensor(0.0, requires_grad=True)  # unconstrained: b = exp(0) = 1
        opt = torch.optim.SGD([a, b], lr=0.001, momentum=0.1)
        obs = torch.tensor(MEAS)
        pos = transform_to(constraints.positive)
        t = time.perf_counter()
        for _ in range(n):
            q = Normal(a, pos(b))
            w = q.rsample()
            elbo = Normal(GUESS, 1.0).log_prob(w) + Normal(w, 0.75).log_prob(obs) - q.log_prob(w)
            loss = -elbo
            loss.backward()
            loss.item()
            opt.step()
            a.grad = None
            b.grad = None
        dt = time.perf_counter() - t
        torch.distributions.Distribution.set_default_validate_args(True)
        return dt

    return run


def make_hand_formula():
    half_log_2pi = 0.5 * math.log(2 * math.pi)

    def lognormal(x, loc, scale):
        return -((x - loc) ** 2) / (2 * scale**2) - torch.log(scale) - half_log_2pi

    def run(n):
        a = torch.tensor(GUESS, requires_grad=True)
        b = torch.tensor(0.0, requires_grad=True)
        opt = torch.optim.SGD([a, b], lr=0.001, momentum=0.1)
        one, s075, obs = torch.tensor(1.0), torch.tensor(0.75), torch.tensor(MEAS)
        t = time.perf_counter()
        for _ in range(n):
            sb = torch.exp(b)
            w = a + sb * torch.randn(())
            elbo = lognormal(w, GUESS, one) + lognormal(obs, w, s075) - lognormal(w, a, sb)
            loss = -elbo
            loss.backward()
            loss.item()
            opt.step()
            a.grad = None
            b.grad = None
        return time.perf_counter() - t

    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-pyro", action="store_true", help="skip pyro-ppl")
    p.add_argument("--only", default="", help="comma-separated variants to run (default: all)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    variants = {
        "ember": make_ember(False),
        "ember_validated": make_ember(True),
        "ember_jit": make_ember(False, jit=True),
        "ember_run": make_ember(False, jit=True, use_run=True),
        "ember_run_validated": make_ember(True, jit=True, use_run=True),
        "ember_run_steady": make_ember(False, jit=True, use_run=True, steady=True),
        "hand_torch_distributions": make_hand_dist(),
        "hand_formulas": make_hand_formula(),
    }
    if not args.no_pyro:
        try:
            variants["pyro"] = make_pyro()
            variants["pyro_jit"] = make_pyro(jit=True)
        except ImportError:
            pass
    try:
        import numpyro  # noqa: F401

        variants["numpyro_update"] = make_numpyro(False)
        variants["numpyro_run"] = make_numpyro(True)
        variants["numpyro_update_steady"] = make_numpyro(False, steady=True)
        variants["numpyro_run_steady"] = make_numpyro(True, steady=True)
    except ImportError:
        pass
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only.split(",")}
    for run in variants.values():  # warm up
        run(200)
    times = {k: [] for k in variants}
    for _ in range(args.rounds):
        for k, run in variants.items():
            times[k].append(run(args.steps) / args.steps * 1e6)
    us = {k: round(statistics.median(v), 1) for k, v in times.items()}
    base = us.get("hand_torch_distributions", next(iter(us.values())))
    out = {
        "benchmark": "scale_svi",
        "steps": args.steps,
        "rounds": args.rounds,
        "threads": args.threads,
        "us_per_step": us,
        "ratio_vs_hand_torch_distributions": {k: round(v / base, 3) for k, v in us.items()},
    }
    out["first_round_us_per_step"] = {k: round(v[0], 1) for k, v in times.items()}
    for num in ("numpyro_update", "numpyro_run", "numpyro_update_steady", "numpyro_run_steady"):
        if num in us and "ember_run" in us:
            out[f"ember_run_over_{num}"] = round(us["ember_run"] / us[num], 3)
    if "ember_run_steady" in us and "numpyro_update_steady" in us:
        out["ember_run_steady_over_numpyro_update_steady"] = round(us["ember_run_steady"] / us["numpyro_update_steady"], 3)
    if "pyro" in us and "ember" in us:
        out["pyro_over_ember"] = round(us["pyro"] / us["ember"], 3)
        out["pyro_over_ember_jit"] = round(us["pyro"] / us["ember_jit"], 3)
        out["pyro_jit_over_ember_jit"] = round(us["pyro_jit"] / us["ember_jit"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
