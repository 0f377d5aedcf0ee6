"""Several chains: vectorized (one batched evaluation per step, the default), sequential and
parallel; per-chain adaptation; the fallback with its reason; the thread count Ember chooses."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

import ember as pyro
import ember.distributions as dist
from ember.infer import HMC, MCMC, NUTS
from ember.infer.mcmc.potential import BatchedPotential, ModelPotential
from ember.infer.mcmc.threads import ThreadChoice
from ember.infer.mcmc.util import diagnostics

Y8 = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA8 = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(sigma, y):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("J", 8):
        theta = pyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(mu + tau * theta, sigma), obs=y)


def logreg(x, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1]), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    with pyro.plate("N", x.shape[0]):
        pyro.sample("y", dist.Bernoulli(logits=x @ w + b), obs=y)


def normal_mean(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
    with pyro.plate("N", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, 2.0), obs=y)


def _run(model, args, method, chains=2, n=40, seed=0, kernel=NUTS, **kw):
    pyro.set_rng_seed(seed)
    mcmc = MCMC(kernel(model), num_samples=n, warmup_steps=n, num_chains=chains, chain_method=method,
                disable_progbar=True, **kw)
    return mcmc.run(*args)


# ---- the batched potential -------------------------------------------------------------------------------
def test_batched_potential_is_each_chains_potential_with_a_chain_dim_left_of_the_plates():
    mp = ModelPotential(eight_schools, (SIGMA8, Y8))
    z0, _, _ = mp.initial_point("uniform")
    trace = mp.trace_at(lambda site: site.fn.sample())
    bp = BatchedPotential(mp, 3, 1)
    bp.set_event_dims(trace)
    z = torch.randn(3, mp.dim)
    u, g = bp.eager_potential_and_grad(z)
    assert u.shape == (3,) and g.shape == (3, mp.dim)
    for c in range(3):
        zc = z[c].clone().requires_grad_(True)
        uc = mp.potential(zc)
        (gc,) = torch.autograd.grad(uc, zc)
        torch.testing.assert_close(u[c], uc.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g[c], gc, rtol=1e-5, atol=1e-5)
    assert bp.check(z) is None
    assert bp.compile(z) and bp.compiled
    u2, g2 = bp.potential_and_grad_numpy(z.double().numpy())
    np.testing.assert_allclose(u2, u.double().numpy(), rtol=1e-5)
    np.testing.assert_allclose(g2, g.double().numpy(), rtol=1e-4, atol=1e-5)


# ---- vectorized chains are the sequential chains ---------------------------------------------------------------
@pytest.mark.parametrize("kernel", [NUTS, HMC], ids=["NUTS", "HMC"])
def test_vectorized_chains_draw_what_sequential_chains_draw(kernel):
    # the same keys and starting points, drawn in the same order: each chain is the same chain
    # (up to rounding in the batched evaluation, far below what these 40 + 40 iterations show)
    seq = _run(eight_schools, (SIGMA8, Y8), "sequential", chains=3, kernel=kernel)
    vec = _run(eight_schools, (SIGMA8, Y8), "vectorized", chains=3, kernel=kernel)
    assert vec.compile_status[0] == "compiled (static runtime); vectorized: 3 chains, one batched evaluation per step (a chain plate)"
    a, b = seq.get_samples(group_by_chain=True), vec.get_samples(group_by_chain=True)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(seq.step_sizes, vec.step_sizes, rtol=1e-6)
    for key in ("num_steps", "tree_depth", "accepted"):
        np.testing.assert_array_equal(seq.get_extra_fields()[key], vec.get_extra_fields()[key])
    assert vec.num_grad_evals_warmup == seq.num_grad_evals_warmup
    # each chain continues from its final state as a value
    s1, _ = vec.kernel.transition(vec.states[1])
    assert s1.iteration == 81


def test_vectorized_is_the_default_and_eager_without_compilation():
    mcmc = MCMC(NUTS(eight_schools, jit_compile=False), num_samples=10, warmup_steps=10, num_chains=2,
                disable_progbar=True)
    assert mcmc.chain_method == "vectorized"
    mcmc.run(SIGMA8, Y8)
    assert mcmc.compile_status[0] == "eager (jit_compile=False); vectorized: 2 chains, one batched evaluation per step (a chain plate)"
    assert mcmc.get_samples()["theta_tilde"].shape == (20, 8)


def test_hook_sees_every_chain_of_a_vectorized_run():
    seen = []
    MCMC(NUTS(normal_mean), num_samples=3, warmup_steps=2, num_chains=2, disable_progbar=True,
         hook_fn=lambda kernel, params, stage, i: seen.append((stage, i, float(params["mu"])))).run(torch.ones(3))
    stages = sorted({(s, i) for s, i, _ in seen})
    assert stages == sorted([(f"{st} [{c}]", i) for c in (0, 1) for st, n in (("Warmup", 2), ("Sample", 3))
                             for i in range(n)])


# ---- per-chain adaptation -------------------------------------------------------------------------------------
def funnel():
    x = pyro.sample("x", dist.Normal(0.0, 3.0))
    pyro.sample("y", dist.Normal(0.0, torch.exp(x / 2)))


def test_a_chain_started_in_a_bad_region_does_not_shrink_the_others_step_sizes():
    def run(x0):
        init = {"x": torch.tensor([x0, 1.0, -1.0]), "y": torch.tensor([0.0, 0.5, -0.5])}
        return _run(funnel, (), "vectorized", chains=3, n=10, seed=3, initial_params=init)

    good, bad = run(0.0), run(-12.0)  # chain 0 starts deep in the funnel's neck in the second run
    assert bad.step_sizes[0] < 0.05 * good.step_sizes[0]  # 10 warm-up steps do not get it out
    # chains 1 and 2 are untouched: the same step sizes, mass matrices and draws
    np.testing.assert_allclose(bad.step_sizes[1:], good.step_sizes[1:], rtol=1e-9)
    for c in (1, 2):
        torch.testing.assert_close(bad.inverse_mass_matrices[c], good.inverse_mass_matrices[c], rtol=1e-6, atol=0)
        torch.testing.assert_close(bad.get_samples(group_by_chain=True)["x"][c], good.get_samples(group_by_chain=True)["x"][c])


def test_each_chain_of_a_conjugate_model_draws_the_exact_posterior():
    y = torch.tensor([1.2, 3.1, 2.2, 0.4, 2.9, 1.8])
    # prior N(0, 10^2), likelihood N(mu, 2^2): the posterior is normal with
    prec = 1 / 100 + len(y) / 4
    mean, sd = float(y.sum() / 4 / prec), math.sqrt(1 / prec)
    mcmc = _run(normal_mean, (y,), "vectorized", chains=4, n=500, seed=1)
    draws = mcmc.get_samples(group_by_chain=True)["mu"]
    ess = diagnostics({"mu": draws})["mu"]["n_eff"]
    assert ess > 600
    for c in range(4):
        chain = draws[c]
        se = sd / math.sqrt(max(float(ess) / 4, 50))
        assert abs(float(chain.mean()) - mean) < 5 * se, (c, float(chain.mean()), mean)
        assert abs(float(chain.std()) / sd - 1) < 0.2, (c, float(chain.std()), sd)
    assert abs(float(draws.mean()) - mean) < 5 * sd / math.sqrt(float(ess))


# ---- the fallback ---------------------------------------------------------------------------------------------
def branching(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    scale = 1.0 if mu > 0 else 2.0  # Python control flow on a latent: no chain dim possible
    pyro.sample("y", dist.Normal(mu, scale), obs=y)


def mixing(y):
    mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    pyro.factor("f", -(mu - y).pow(2).sum())  # sums over every dim, the chain dim included


def test_a_model_that_cannot_be_vectorized_runs_its_chains_sequentially_and_says_why():
    vec = _run(branching, (torch.tensor(0.3),), "vectorized", n=15, seed=2)
    why = ("sequential chains: the model fails with a chain dim at -1: RuntimeError: Boolean value of Tensor with more "
           "than one value is ambiguous; and the model fails with torch.func.vmap over the chains")
    assert all(why in s for s in vec.compile_status), vec.compile_status
    seq = _run(branching, (torch.tensor(0.3),), "sequential", n=15, seed=2)
    for name, v in seq.get_samples().items():  # the same keys and starting points as a sequential run
        torch.testing.assert_close(vec.get_samples()[name], v)


@pytest.mark.parametrize("model, args", [(mixing, (torch.tensor([0.3, -0.2]),)), (logreg, (torch.randn(20, 3), torch.ones(20)))],
                         ids=["mixing", "logreg"])
def test_a_model_that_cannot_take_a_chain_plate_is_vmapped(model, args):
    # mixing: its factor sums over every dim, the chain plate's included (caught by the check);
    # logreg: x @ w with w [C, 1, 3] is not the batched product. vmap maps the single-chain potential
    vec = _run(model, args, "vectorized", n=15, seed=2)
    assert vec.compile_status[0].endswith("one batched evaluation per step (torch.func.vmap)"), vec.compile_status
    seq = _run(model, args, "sequential", n=15, seed=2)
    for name, v in seq.get_samples().items():  # float32 rounding of the batched matmul grows along 30 trajectories
        torch.testing.assert_close(vec.get_samples()[name], v, rtol=0, atol=1e-2)


def test_a_potential_fn_kernel_runs_sequentially():
    mcmc = MCMC(NUTS(potential_fn=lambda p: 0.5 * (p["x"] ** 2).sum()), num_samples=5, warmup_steps=5, num_chains=2,
                initial_params={"x": torch.zeros(2, 3)}, disable_progbar=True).run()
    assert "sequential chains: a potential_fn kernel" in mcmc.compile_status[0]


# ---- threads -----------------------------------------------------------------------------------------------
def test_ember_chooses_the_thread_count_and_restores_the_users():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        during = []
        mcmc = MCMC(NUTS(normal_mean), num_samples=5, warmup_steps=5, num_chains=2, disable_progbar=True,
                    hook_fn=lambda *a: during.append(torch.get_num_threads()))
        mcmc.run(torch.ones(3))
        assert "chosen by timing the potential" in mcmc.thread_status
        chosen = int(mcmc.thread_status.split()[0])
        assert set(during) == {chosen} and chosen in (1, 2)
        assert torch.get_num_threads() == 2
        mcmc = MCMC(NUTS(normal_mean), num_samples=5, warmup_steps=5, num_threads=1, disable_progbar=True,
                    hook_fn=lambda *a: during.append(torch.get_num_threads()))
        mcmc.run(torch.ones(3))
        assert during[-1] == 1 and mcmc.thread_status == "1 thread(s), as given (num_threads=1)"
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_thread_choice_keeps_one_thread_unless_more_are_clearly_faster():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        # sleeps stand for evaluations (their timing does not depend on the machine's load)
        with ThreadChoice() as tc:  # as fast with one thread as with two: one is kept
            assert tc.choose(lambda: time.sleep(0.001)) == 1 and torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2 and "chosen by timing" in tc.status
        with ThreadChoice() as tc:  # four times faster with two threads: two
            assert tc.choose(lambda: time.sleep(0.002 if torch.get_num_threads() == 1 else 0.0005)) == 2
        assert torch.get_num_threads() == 2
        with ThreadChoice(large_s=0.0) as tc:  # a model too large to bother: the current setting
            assert tc.choose(lambda: None) == 2 and "large enough" in tc.status
    finally:
        torch.set_num_threads(before)


# ---- parallel --------------------------------------------------------------------------------------------------
def test_parallel_refuses_what_cannot_reach_a_worker_process():
    with pytest.raises(ValueError, match="cannot be pickled .*Define the model at the top level"):
        MCMC(NUTS(lambda y: normal_mean(y)), num_samples=5, num_chains=2, chain_method="parallel",
             disable_progbar=True).run(torch.ones(3))


@pytest.mark.slow
def test_parallel_chains_run_in_spawned_processes():
    mcmc = _run(normal_mean, (torch.ones(4),), "parallel", chains=2, n=100, seed=0)
    assert all("spawned worker process" in s for s in mcmc.compile_status)
    draws = mcmc.get_samples(group_by_chain=True)["mu"]
    assert draws.shape == (2, 100) and not torch.equal(draws[0], draws[1])
    assert abs(float(draws.mean()) - 0.99) < 0.5


# ---- the same posterior, in long runs ---------------------------------------------------------------------------
def _logreg_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=g)
    y = torch.bernoulli(torch.sigmoid(x @ torch.randn(5, generator=g) + 0.5), generator=g)
    return x, y


@pytest.mark.slow
@pytest.mark.parametrize("name", ["eight_schools", "logreg"])
def test_vectorized_and_sequential_chains_agree_on_the_posterior(name):
    model, args = (eight_schools, (SIGMA8, Y8)) if name == "eight_schools" else (logreg, _logreg_data())
    runs = {m: _run(model, args, m, chains=4, n=1000, seed=11 if m == "vectorized" else 12)
            for m in ("vectorized", "sequential")}  # different seeds: two independent runs
    for m, mcmc in runs.items():
        for site, d in diagnostics(mcmc.get_samples(group_by_chain=True)).items():
            assert float(d["r_hat"].max()) < 1.01, (m, site, d["r_hat"])
    a, b = runs["vectorized"].get_samples(group_by_chain=True), runs["sequential"].get_samples(group_by_chain=True)
    for site in a:
        ess = torch.minimum(diagnostics({site: a[site]})[site]["n_eff"], diagnostics({site: b[site]})[site]["n_eff"])
        sd = a[site].reshape((-1,) + a[site].shape[2:]).std(0)
        se = sd * torch.sqrt(2 / ess)  # of the difference of two independent means
        diff = (a[site].mean((0, 1)) - b[site].mean((0, 1))).abs()
        assert bool((diff < 4 * se).all()), (site, diff, se)
