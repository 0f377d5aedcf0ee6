"""MCMC chains as values (kernel.init / transition / adapt), Pyro's meanings of summary() and
diagnostics(), Pyro's stateful kernel surface, ember.infer.mcmc.util, strict keyword arguments."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ember as pyro
import ember.distributions as dist
from ember.infer import HMC, MCMC, NUTS
from ember.infer.mcmc import HMCState, TransitionInfo
from ember.infer.mcmc.util import diagnostics, initialize_model, select_samples, summary
from ember.ops.stats import effective_sample_size, hpdi, pi, split_gelman_rubin

pytestmark = pytest.mark.usefixtures("one_thread")

Y8 = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA8 = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(sigma, y):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("J", 8):
        theta = pyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(mu + tau * theta, sigma), obs=y)


def scale(guess):
    w = pyro.sample("weight", dist.Normal(guess, 1.0))
    pyro.sample("measurement", dist.Normal(w, 0.75), obs=torch.tensor(9.5))


# ---- chains are values ---------------------------------------------------------------------------------
def _run(kernel, state, n, warmup):
    draws = []
    for _ in range(n):
        state, info = kernel.transition(state)
        if state.iteration <= warmup:
            state = kernel.adapt(state, info)
        draws.append(state.z)
    return state, np.stack(draws)


@pytest.mark.parametrize("kernel_class", [NUTS, HMC])
def test_interleaved_chains_give_the_draws_of_chains_run_one_after_another(kernel_class):
    warmup, n = 40, 70  # warm-up crosses the mass-matrix windows (15..36) and their step-size searches
    kernel = kernel_class(eight_schools)
    potential = kernel.make_potential((SIGMA8, Y8), {})
    a0 = kernel.init(potential, warmup, rng_key=11)
    b0 = kernel.init(potential, warmup, rng_key=22)
    assert isinstance(a0, HMCState) and a0.iteration == 0 and a0.z.shape == (10,)
    a_end, a_seq = _run(kernel, a0, n, warmup)
    b_end, b_seq = _run(kernel, b0, n, warmup)
    # now step by step: A, B, A, B, ...
    a, b, a_int, b_int = a0, b0, [], []
    for it in range(n):
        for which in "ab":
            state = a if which == "a" else b
            state, info = kernel.transition(state)
            assert isinstance(info, TransitionInfo)
            if it < warmup:
                state = kernel.adapt(state, info)
            (a_int if which == "a" else b_int).append(state.z)
            if which == "a":
                a = state
            else:
                b = state
    np.testing.assert_array_equal(np.stack(a_int), a_seq)
    np.testing.assert_array_equal(np.stack(b_int), b_seq)
    assert a.step_size == a_end.step_size and b.step_size == b_end.step_size
    np.testing.assert_array_equal(a.inverse_mass_matrix, a_end.inverse_mass_matrix)
    assert not np.array_equal(a_seq, b_seq)  # different keys, different chains
    assert a0.iteration == 0 and a0.adapt.dual_averaging.t == 0  # the states passed in were not touched


def test_random_streams_are_philox_keyed_by_chain_and_counted_by_iteration():
    from ember.infer.mcmc.hmc import _Streams

    streams = _Streams()
    for key, it, stream in [(5, 0, 0), (2**62 - 3, 17, 1), (2**100 + 7, 3, 2)]:
        streams.get(99, 1, 0).random(7)  # whatever the shared generator did before
        got = streams.get(key, it, stream).standard_normal(5)
        fresh = np.random.Generator(np.random.Philox(key=key, counter=[0, 0, it, stream])).standard_normal(5)
        np.testing.assert_array_equal(got, fresh)


def test_a_transition_is_a_function_of_its_state():
    kernel = NUTS(eight_schools)
    s0 = kernel.init(kernel.make_potential((SIGMA8, Y8), {}), 10, rng_key=5)
    s1, i1 = kernel.transition(s0)
    s2, i2 = kernel.transition(s0)
    np.testing.assert_array_equal(s1.z, s2.z)
    assert i1 == i2 and s1.iteration == 1


def test_mcmc_run_is_init_transition_adapt_record():
    pyro.set_rng_seed(4)
    mcmc = MCMC(NUTS(eight_schools), num_samples=30, warmup_steps=25, num_chains=2, disable_progbar=True,
                chain_method="sequential")
    grouped = mcmc.run(SIGMA8, Y8).get_samples(group_by_chain=True)
    # the same keys by hand: MCMC draws each chain's key from Ember's stream just before its init
    pyro.set_rng_seed(4)
    kernel = NUTS(eight_schools)
    potential = kernel.make_potential((SIGMA8, Y8), {})
    for chain in range(2):
        state = kernel.init(potential, 25, rng_key=int(torch.randint(0, 2**62, ()).item()))
        _, draws = _run(kernel, state, 55, 25)
        values = potential.constrain(torch.from_numpy(draws[25:]).to(potential.dtype))
        torch.testing.assert_close(values["tau"], grouped["tau"][chain], rtol=0, atol=0)
    assert len(mcmc.states) == 2 and mcmc.states[0].iteration == 55
    assert mcmc.compile_status[0] == mcmc.compile_status[1]  # one potential per run


# ---- Pyro's definitions -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", [NUTS(scale), HMC(scale, trajectory_length=1.0)], ids=["NUTS", "HMC"])
def test_acceptance_rate_is_the_fraction_of_transitions_that_moved(kernel):
    mcmc = MCMC(kernel, num_samples=200, warmup_steps=100, num_chains=2, disable_progbar=True).run(8.5)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    draws = mcmc.get_samples(group_by_chain=True)["weight"]
    rates = mcmc.diagnostics()["acceptance rate"]
    for c in range(2):
        moved = (draws[c, 1:] != draws[c, :-1]).numpy()
        np.testing.assert_array_equal(extra["accepted"][c, 1:], moved)
        assert rates[f"chain {c}"] == pytest.approx(extra["accepted"][c].mean())
        # another statistic than the mean acceptance probability (what adaptation targets)
        assert rates[f"chain {c}"] != pytest.approx(extra["accept_prob"][c].mean(), abs=1e-6)
    assert set(mcmc.diagnostics()) == {"weight", "divergences", "acceptance rate"}


def test_summary_prints_the_hpdi_under_pyros_labels(capsys):
    pyro.set_rng_seed(0)
    mcmc = MCMC(NUTS(eight_schools), num_samples=300, warmup_steps=200, num_chains=2, disable_progbar=True)
    mcmc.run(SIGMA8, Y8)
    tau = mcmc.get_samples(group_by_chain=True)["tau"]
    table = summary({"tau": tau}, prob=0.9)["tau"]
    interval = hpdi(tau.reshape(-1), 0.9)
    assert list(table) == ["mean", "std", "median", "5.0%", "95.0%", "n_eff", "r_hat"]
    assert table["5.0%"] == interval[0] and table["95.0%"] == interval[1]
    assert table["5.0%"] < pi(tau.reshape(-1), 0.9)[0]  # tau is skewed: the HPDI starts lower
    assert table["median"] == tau.reshape(-1).median()
    assert table["n_eff"] == effective_sample_size(tau) and table["r_hat"] == split_gelman_rubin(tau)
    mcmc.summary(prob=0.9)
    row = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("tau "))
    cells = [float(v) for v in row.split()[1:]]
    assert cells[3] == pytest.approx(float(interval[0]), abs=0.006) and cells[4] == pytest.approx(float(interval[1]), abs=0.006)


def test_divergences_are_post_warmup_iterations_thinning_included():
    def funnel():
        y = pyro.sample("y", dist.Normal(0.0, 3.0))
        pyro.sample("x", dist.Normal(0.0, torch.exp(y / 2)).expand([5]).to_event(1))

    pyro.set_rng_seed(1)
    mcmc = MCMC(NUTS(funnel), num_samples=300, warmup_steps=100, thinning=3, disable_progbar=True).run()
    kept = mcmc.get_extra_fields()["diverging"]
    div = mcmc.diagnostics()["divergences"]["chain 0"]
    assert all(0 <= i < 300 for i in div) and mcmc.num_divergences == len(div)
    assert len(div) > kept.sum() > 0  # the funnel diverges, also between kept draws
    assert {i // 3 for i in div if i % 3 == 0} == set(np.nonzero(kept)[0].tolist())


def test_hook_fn_gets_pyros_arguments():
    calls = []
    MCMC(NUTS(eight_schools), num_samples=4, warmup_steps=3, num_chains=2, disable_progbar=True, chain_method="sequential",
         hook_fn=lambda kernel, params, stage, i: calls.append((stage, i, sorted(params), params["tau"].shape))).run(SIGMA8, Y8)
    assert [c[:2] for c in calls[:7]] == [("Warmup [0]", 0), ("Warmup [0]", 1), ("Warmup [0]", 2), ("Sample [0]", 0),
                                          ("Sample [0]", 1), ("Sample [0]", 2), ("Sample [0]", 3)]
    assert calls[7][:2] == ("Warmup [1]", 0) and len(calls) == 14
    assert calls[0][2:] == (["mu", "tau", "theta_tilde"], ())


# ---- Pyro's stateful kernel surface ----------------------------------------------------------------------
def test_pyro_setup_sample_surface():
    kernel = NUTS(scale)
    kernel.setup(20, 8.5)
    params = start = kernel.initial_params
    assert set(params) == {"weight"} and params["weight"].shape == ()
    for _ in range(60):
        params = kernel.sample(params)
    assert kernel.initial_params["weight"] == start["weight"] != params["weight"]
    assert set(params) == {"weight"} and math.isfinite(params["weight"].item())
    d = kernel.diagnostics()
    assert set(d) == {"divergences", "acceptance rate"} and 0 < d["acceptance rate"] <= 1
    assert list(kernel.logging()) == ["step size", "acc. prob"]
    ((names, minv),) = kernel.inverse_mass_matrix.items()  # Pyro's layout: {(site names...): M^-1}
    assert names == ("weight",) and minv.shape == (1,)
    kernel.cleanup()
    with pytest.raises(RuntimeError, match="call kernel.setup"):
        kernel.sample(params)


# ---- ember.infer.mcmc.util -------------------------------------------------------------------------------
def test_initialize_model_returns_pyros_four_values():
    init, potential_fn, transforms, trace = initialize_model(eight_schools, (SIGMA8, Y8), num_chains=3)
    assert set(init) == {"mu", "tau", "theta_tilde"} and init["theta_tilde"].shape == (3, 8) and init["tau"].shape == (3,)
    one = {k: v[0] for k, v in init.items()}
    # Pyro's direction: transforms map constrained values to unconstrained ones
    tau = torch.tensor(2.0)
    assert transforms["tau"](tau).item() == pytest.approx(math.log(2.0))
    torch.testing.assert_close(transforms["tau"].inv(one["tau"]), trace.nodes["tau"]["value"])
    # the potential: minus the log joint plus the log-Jacobian of tau = exp(u)
    u = potential_fn(one)
    t = one["tau"].exp()
    theta = one["theta_tilde"]
    lp = (torch.distributions.Normal(0.0, 5.0).log_prob(one["mu"]) + torch.distributions.HalfCauchy(5.0).log_prob(t) + one["tau"]
          + torch.distributions.Normal(0.0, 1.0).log_prob(theta).sum()
          + torch.distributions.Normal(one["mu"] + t * theta, SIGMA8).log_prob(Y8).sum())
    assert u.item() == pytest.approx(-lp.item(), rel=1e-5)
    with pytest.raises(KeyError, match=r"lacks latent site\(s\) \['tau'\]"):
        potential_fn({"mu": one["mu"], "theta_tilde": theta})


def test_diagnostics_summary_and_select_samples_shapes():
    x = {"a": torch.randn(2, 50, 3), "b": torch.randn(2, 50)}
    d = diagnostics(x)
    assert d["a"]["n_eff"].shape == (3,) and d["b"]["r_hat"].shape == ()
    flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in x.items()}
    s = summary(flat, group_by_chain=False)
    assert s["a"]["mean"].shape == (3,)
    assert select_samples(x)["a"].shape == (100, 3)
    assert select_samples(x, num_samples=7)["a"].shape == (7, 3)
    assert select_samples(x, num_samples=7, group_by_chain=True)["b"].shape == (2, 7)
    with pytest.raises(ValueError, match=r"samples\['b'\] has shape \(50,\)"):
        summary({"b": torch.randn(50)})


# ---- strict keyword arguments ----------------------------------------------------------------------------
def test_unknown_keywords_name_the_closest_valid_one():
    with pytest.raises(TypeError, match="max_tree_dept=5; did you mean max_tree_depth="):
        NUTS(scale, max_tree_dept=5)
    with pytest.raises(TypeError, match="did you mean target_accept_prob="):
        HMC(scale, target_accept=0.9)
    with pytest.raises(TypeError, match="num_sample=10; did you mean num_samples="):
        MCMC(NUTS(scale), 10, num_sample=10)
    with pytest.raises(TypeError, match="NUTS chooses each trajectory's length"):
        NUTS(scale, num_steps=3)
    k = NUTS(scale, min_stepsize=1e-4, max_stepsize=10.0)  # Pyro's spelling
    assert (k.min_step_size, k.max_step_size) == (1e-4, 10.0)


def test_pyro_options_without_effect_warn_once_naming_them():
    from ember import util

    util._WARNED_IGNORED.clear()
    with pytest.warns(UserWarning, match="jit_options= is accepted but has no effect"):
        NUTS(scale, jit_options={"check_trace": False})
    with pytest.warns(UserWarning, match="use_multinomial_sampling="):
        NUTS(scale, use_multinomial_sampling=False)
    with pytest.warns(UserWarning, match="mp_context= is accepted but has no effect"):
        MCMC(NUTS(scale), 10, mp_context="spawn")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NUTS(scale, jit_options={})  # once
        MCMC(NUTS(scale), 10, mp_context="spawn")
        NUTS(scale, max_plate_nesting=None, ignore_jit_warnings=False)  # defaults: nothing to say


def test_a_latent_that_appears_after_the_first_run_is_named():
    calls = []

    def model():
        calls.append(1)
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        if len(calls) > 3:  # random control flow that adds a latent later on
            pyro.sample("late", dist.Normal(x, 1.0))

    with pytest.raises(ValueError, match="MCMC: latent site 'late' did not appear when the model was first run"):
        MCMC(NUTS(model, jit_compile=False), num_samples=3, warmup_steps=3, disable_progbar=True).run()


@pytest.mark.parametrize("full_mass", [False, True])
def test_kernel_inverse_mass_matrix_after_a_run_is_pyros_dict(full_mass):
    def model():
        pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    kernel = NUTS(model, full_mass=full_mass)
    assert kernel.inverse_mass_matrix is None
    mcmc = MCMC(kernel, num_samples=10, warmup_steps=30, num_chains=2, disable_progbar=True)
    mcmc.run()
    ((names, minv),) = kernel.inverse_mass_matrix.items()
    assert names == ("a", "b") and minv.shape == ((3, 3) if full_mass else (3,))
    torch.testing.assert_close(minv, mcmc.inverse_mass_matrices[-1])  # the last chain's, as Pyro's adapter keeps


def test_full_mass_blocks_adapt_dense_blocks_and_a_diagonal_for_the_rest():
    # Pyro's full_mass=[("a", "b")]: a dense block for a and b (strongly correlated here), a
    # diagonal for c and d; M^-1 as Pyro's dict
    def model():
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.Normal(a, 0.3))
        pyro.sample("c", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("d", dist.Normal(0.0, 2.0))

    pyro.set_rng_seed(0)
    kernel = NUTS(model, full_mass=[("a", "b")])
    mcmc = MCMC(kernel, num_samples=50, warmup_steps=300, num_chains=2, disable_progbar=True)  # vectorized chains
    mcmc.run()
    off_block = torch.ones(5, 5, dtype=torch.bool)
    off_block[:2, :2] = False
    off_block.fill_diagonal_(False)
    for minv in mcmc.inverse_mass_matrices:
        assert minv.shape == (5, 5)
        assert bool((minv[off_block] == 0).all()) and float(minv[0, 1]) > 0.3  # a and b covary
    groups = kernel.inverse_mass_matrix
    assert list(groups) == [("a", "b"), ("c", "d")]
    torch.testing.assert_close(groups[("a", "b")], minv[:2, :2])
    torch.testing.assert_close(groups[("c", "d")], minv.diagonal()[2:])


def test_full_mass_blocks_are_checked():
    def model():
        pyro.sample("a", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"full_mass names \['z'\], which are not latent sites"):
        MCMC(NUTS(model, full_mass=[("a", "z")]), num_samples=2, warmup_steps=2, disable_progbar=True).run()
    with pytest.raises(ValueError, match=r"more than one block"):
        NUTS(model, full_mass=[("a",), ("a",)])
    with pytest.raises(ValueError, match="list of tuples of site names"):
        NUTS(model, full_mass="a")
