"""The compiled potential (ember.infer.mcmc.compile): same values and gradients as the model run
eagerly, the same draws, and an eager fallback, with the reason, for every model whose recorded
graph would not be the model."""

from __future__ import annotations

import math
import os
import sys
import warnings

import numpy as np
import pytest
import torch

import ember as pyro
import ember.distributions as dist
from ember.infer import MCMC, NUTS
from ember.infer.mcmc import ModelPotential
from ember.infer.mcmc.compile import compile_value_and_grad

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import nuts as bench  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # the root conftest seeds and clears the param store

Y8, S8 = torch.tensor(bench.Y8), torch.tensor(bench.SIGMA8)
eight_schools = bench.pyro_style_models(pyro, dist)["eight_schools"]
logreg = bench.pyro_style_models(pyro, dist)["logreg"]


GROUP = torch.tensor([0, 1, 1, 2, 0, 2, 2])


def constrained_and_indexed(y):
    # simplex, interval, positive supports; integer indexing; a scaled and a masked site; a factor
    p = pyro.sample("p", dist.Dirichlet(torch.ones(3)))
    r = pyro.sample("r", dist.Beta(2.0, 2.0))
    s = pyro.sample("s", dist.Gamma(2.0, 1.0))
    a = pyro.sample("a", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    with pyro.poutine.scale(scale=0.5):
        pyro.sample("extra", dist.Normal(r, 1.0), obs=torch.tensor(0.3))
    pyro.factor("pull", -(p[0] - 0.2) ** 2)
    with pyro.plate("n", len(y)):
        mask = torch.tensor([True, True, False, True, True, True, True])
        pyro.sample("y", dist.Normal(a[GROUP] + r, s).mask(mask), obs=y)


def _potential(model, *args):
    with pyro.validation_enabled(False):
        mp = ModelPotential(model, args)
        z, u, g = mp.initial_point("uniform")
        return mp, z, u, g


def _eager(mp, z):
    return mp._eager_potential_and_grad(z)


@pytest.mark.parametrize("case", ["eight_schools", "logreg", "constrained_and_indexed", "float64"])
def test_compiled_potential_matches_eager_everywhere(case):
    g = torch.Generator().manual_seed(1)
    if case == "eight_schools":
        mp, z, u, grad = _potential(eight_schools, S8, Y8)
    elif case == "logreg":
        x = torch.randn(50, 3, generator=g)
        mp, z, u, grad = _potential(logreg, x, torch.bernoulli(torch.sigmoid(x.sum(-1)), generator=g))
    elif case == "constrained_and_indexed":
        mp, z, u, grad = _potential(constrained_and_indexed, torch.randn(7, generator=g))
    else:
        def logreg64(x, y):
            w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1], dtype=torch.float64), 1.0).to_event(1))
            s = pyro.sample("s", dist.HalfNormal(torch.tensor(1.0, dtype=torch.float64)))
            with pyro.plate("N", x.shape[0]):
                pyro.sample("y", dist.Normal(x @ w, s), obs=y)

        mp, z, u, grad = _potential(logreg64, torch.randn(20, 2, generator=g, dtype=torch.float64),
                                    torch.randn(20, generator=g, dtype=torch.float64))
        assert mp.dtype == torch.float64
    assert mp.compile(z, u, grad), mp.compile_problem
    assert mp.compiled in ("static runtime", "torchscript", "fx")
    tol = 1e-10 if mp.dtype == torch.float64 else 1e-4
    for _ in range(5):
        zz = z + torch.randn(z.shape, generator=g, dtype=z.dtype)
        u_e, g_e = _eager(mp, zz)
        u_c, g_c = mp.potential_and_grad(zz)
        assert math.isclose(u_c, u_e, rel_tol=tol, abs_tol=tol)
        torch.testing.assert_close(g_c, g_e, rtol=tol, atol=tol * (1 + g_e.abs().max().item()))
        # the samplers' entry point: float64 NumPy in and out
        u_n, g_n = mp.potential_and_grad_numpy(zz.double().numpy())
        assert isinstance(g_n, np.ndarray) and g_n.dtype == np.float64 and g_n.shape == (mp.dim,)
        assert math.isclose(u_n, u_e, rel_tol=tol, abs_tol=tol)


def test_compiled_results_are_not_overwritten_by_later_calls():
    mp, z, u, g = _potential(eight_schools, S8, Y8)
    assert mp.compile(z, u, g)
    u1, g1 = mp.potential_and_grad_numpy(z.double().numpy())
    kept = g1.copy()
    mp.potential_and_grad_numpy((z + 1.0).double().numpy())
    np.testing.assert_array_equal(g1, kept)


def test_non_finite_potential_reads_inf_when_compiled():
    def model():
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.factor("f", torch.log(x + 3.0))  # nan below x = -3
    mp, z, u, g = _potential(model)
    assert mp.compile(z, u, g)
    assert mp.potential_and_grad(torch.tensor([-10.0]))[0] == math.inf
    assert mp.potential_and_grad_numpy(np.array([-10.0]))[0] == math.inf


def test_nuts_draws_identical_compiled_or_eager():
    # eight schools' float32 graph computes exactly what the eager model computes here, so the
    # whole chain is reproduced draw for draw
    runs = {}
    for jit in (None, False):
        pyro.set_rng_seed(3)
        mcmc = MCMC(NUTS(eight_schools, jit_compile=jit), num_samples=60, warmup_steps=60, disable_progbar=True)
        mcmc.run(S8, Y8)
        runs[jit] = mcmc
    assert runs[None].compile_status[0].startswith("compiled")
    assert runs[False].compile_status == ["eager (jit_compile=False)"]
    a, b = runs[None].get_samples(), runs[False].get_samples()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4)


def test_compiled_nuts_recovers_a_conjugate_posterior():
    # Normal mean with known sd: posterior N(sum(y) / (n + 1), 1 / (n + 1)) under a N(0, 1) prior
    y = torch.tensor([1.2, 0.4, 2.1, 1.7, 0.9, 1.3])

    def model(y):
        m = pyro.sample("m", dist.Normal(0.0, 1.0))
        with pyro.plate("n", len(y)):
            pyro.sample("y", dist.Normal(m, 1.0), obs=y)

    mcmc = MCMC(NUTS(model), num_samples=1500, warmup_steps=500, disable_progbar=True)
    mcmc.run(y)
    assert mcmc.compile_status[0].startswith("compiled")
    m = mcmc.get_samples()["m"]
    n = len(y)
    mean, sd = float(y.sum()) / (n + 1), 1 / math.sqrt(n + 1)
    assert abs(float(m.mean()) - mean) < 4 * sd / math.sqrt(400)  # ESS well above 400 here
    assert abs(float(m.std()) - sd) < 0.1 * sd


# ---- what must not be compiled ------------------------------------------------------------------------
def _branch():
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    if x > 0:  # control flow on a latent value
        pyro.factor("f", -x)


def _boolean_mask():
    x = pyro.sample("x", dist.Normal(0.0, 1.0).expand([4]).to_event(1))
    pyro.factor("f", -x[x > 0].sum())  # output shape depends on the values


def _random_inside():
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    pyro.factor("f", -0.01 * x * torch.randn(()))  # a potential that is not a function of z


def _through_numpy():
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    c = float(x.detach().numpy())  # escapes the recording
    pyro.factor("f", -x * (1.0 if c > 0 else 2.0))


def _through_tolist():
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    if x.tolist() > 0.5:  # tolist reads values without the dispatcher: must still be seen
        pyro.factor("f", -10.0 * (x - 0.5))


@pytest.mark.parametrize("model, reason", [
    (_branch, "turns a tensor it computed into a Python value"),
    (_boolean_mask, "boolean mask computed from the latents"),
    (_random_inside, "draws random numbers"),
    (_through_numpy, "recording the model failed"),
    (_through_tolist, "turns a tensor it computed into a Python value"),
])
def test_models_whose_graph_is_not_the_model_run_eagerly(model, reason):
    mcmc = MCMC(NUTS(model), num_samples=20, warmup_steps=20, disable_progbar=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default (jit_compile=None) falls back silently
        mcmc.run()
    status = mcmc.compile_status[0]
    assert status.startswith("eager: ") and reason in status, status
    assert np.isfinite(mcmc.get_samples()["x"].numpy()).all()


def test_branchy_model_still_samples_its_posterior_eagerly():
    # p(x) ∝ N(x; 0, 1) * exp(-x) for x > 0: an `if` that compilation would freeze on one side
    mcmc = MCMC(NUTS(_branch), num_samples=2000, warmup_steps=500, disable_progbar=True)
    mcmc.run()
    x = mcmc.get_samples()["x"].numpy()
    # closed form: for x > 0, N(x; 0, 1) e^-x = e^(1/2) N(x + 1; 0, 1)
    phi = lambda t: math.exp(-t * t / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    tail1 = 0.5 * math.erfc(1 / math.sqrt(2))  # P(N(0, 1) > 1)
    z = 0.5 + math.exp(0.5) * tail1
    mean = (-phi(0) + math.exp(0.5) * (phi(1) - tail1)) / z
    assert abs(x.mean() - mean) < 0.1


def test_jit_compile_true_warns_with_the_reason_and_false_never_compiles():
    with pytest.warns(UserWarning, match="jit_compile=True.*turns a tensor it computed into a Python value"):
        MCMC(NUTS(_branch, jit_compile=True), num_samples=5, warmup_steps=5, disable_progbar=True).run()
    mcmc = MCMC(NUTS(eight_schools, jit_compile=False), num_samples=5, warmup_steps=5, disable_progbar=True)
    mcmc.run(S8, Y8)
    assert mcmc.compile_status == ["eager (jit_compile=False)"]
    with pytest.raises(TypeError, match="jit_compile must be None, True or False"):
        NUTS(eight_schools, jit_compile="yes")


def test_validation_while_sampling_keeps_the_model_eager():
    mcmc = MCMC(NUTS(eight_schools), num_samples=5, warmup_steps=5, disable_progbar=True, disable_validation=False)
    mcmc.run(S8, Y8)
    assert "validation is on while sampling" in mcmc.compile_status[0]


def test_params_and_potential_fn_compile():
    def with_param():
        s = pyro.param("s", torch.tensor(2.0), constraint=dist.constraints.positive)  # requires grad: a constant here
        pyro.sample("x", dist.Normal(0.0, s))

    mcmc = MCMC(NUTS(with_param), num_samples=400, warmup_steps=200, disable_progbar=True)
    mcmc.run()
    assert mcmc.compile_status[0].startswith("compiled")
    assert abs(float(mcmc.get_samples()["x"].std()) - 2.0) < 0.3

    def potential_fn(params):
        return 0.5 * (params["a"] ** 2).sum()

    mcmc = MCMC(NUTS(potential_fn=potential_fn), num_samples=400, warmup_steps=200, disable_progbar=True,
                initial_params={"a": torch.zeros(2)})
    mcmc.run()
    assert mcmc.compile_status[0].startswith("compiled")
    assert abs(float(mcmc.get_samples()["a"].std()) - 1.0) < 0.15


def test_compile_value_and_grad_refuses_a_graph_that_disagrees_with_its_check():
    f = lambda z: (z * z).sum()  # noqa: E731
    wrong = lambda z: (float((z * z).sum()) + 1.0, 2 * z)  # noqa: E731 - a "model" that is not f
    compiled, why = compile_value_and_grad(f, torch.tensor([1.0, 2.0]), wrong)
    assert compiled is None and "gives U=" in why
    compiled, how = compile_value_and_grad(f, torch.tensor([1.0, 2.0]), lambda z: (float((z * z).sum()), 2 * z))
    out = compiled(torch.tensor([3.0, -1.0], dtype=torch.float64))
    assert out.dtype == torch.float64 and out.tolist() == [6.0, -2.0, 10.0]


NAN_Y = torch.tensor([1.0, float("nan"), 0.3, 2.0])
LINEAR = torch.nn.Linear(3, 1)


def _data_mask_and_unique(y):
    # value-dependent shapes computed from data only: the same on every call, so compiled
    m = pyro.sample("m", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
    seen = y[~torch.isnan(y)]
    groups = torch.unique(torch.tensor([0, 2, 2, 1]))
    with pyro.plate("n", 3):
        pyro.sample("y", dist.Normal(m[groups], 1.0), obs=seen)


def _lkj():
    L = pyro.sample("L", dist.LKJCholesky(3, 2.0))  # torch indexes with a constant triangular mask
    pyro.sample("x", dist.MultivariateNormal(torch.zeros(3), scale_tril=L), obs=torch.tensor([0.5, -0.3, 1.0]))


def _with_module(x):
    s = pyro.sample("s", dist.HalfNormal(1.0))
    pyro.sample("y", dist.Normal(LINEAR(x).squeeze(-1), s).to_event(1), obs=torch.zeros(len(x)))


@pytest.mark.parametrize("model, args", [(_data_mask_and_unique, (NAN_Y,)), (_lkj, ()),
                                         (_with_module, (torch.randn(6, 3),))])
def test_data_only_dynamic_shapes_lkj_and_modules_compile(model, args):
    mp, z, u, g = _potential(model, *args)
    assert mp.compile(z, u, g), mp.compile_problem
    gen = torch.Generator().manual_seed(2)
    for _ in range(5):
        zz = z + 0.5 * torch.randn(z.shape, generator=gen)
        u_e, g_e = _eager(mp, zz)
        u_c, g_c = mp.potential_and_grad(zz)
        assert math.isclose(u_c, u_e, rel_tol=1e-4, abs_tol=1e-4)
        torch.testing.assert_close(g_c, g_e, rtol=1e-4, atol=1e-4)


def test_linalg_error_in_the_eager_model_is_an_infinite_potential():
    def model():
        s = pyro.sample("s", dist.Normal(0.0, 1.0))
        one = torch.ones(())
        c = torch.stack([torch.stack([one, 0.5 * s]), torch.stack([0.5 * s, one])])  # positive definite for |s| < 2
        pyro.sample("x", dist.MultivariateNormal(torch.zeros(2), covariance_matrix=c), obs=torch.zeros(2))

    with pyro.validation_enabled(False):
        mp = ModelPotential(model)
        mp.initial_point(pyro.infer.init_to_value(values={"s": torch.tensor(0.0)}))
        u, g = _eager(mp, torch.tensor([-3.0]))  # not positive definite there: no density
    assert u == math.inf and torch.equal(g, torch.zeros(1))


def test_a_compiled_graph_that_disagrees_with_the_model_is_refused_with_the_numbers(monkeypatch):
    """The check of the compiled potential against the eager one, single and batched: a
    disagreement keeps the model eager and says what differed."""
    import ember.infer.mcmc.compile as mcmc_compile
    from ember.infer.mcmc.compile import compile_batched_value_and_grad

    monkeypatch.setattr(mcmc_compile, "agrees", lambda a, b: False)

    def u(z):
        return 0.5 * (z * z).sum()

    def check(z):
        return float(u(z)), z.clone()

    compiled, why = compile_value_and_grad(u, torch.zeros(3), check)
    assert compiled is None and "the compiled graph" in why and "where the model gives" in why

    def ub(z):
        return 0.5 * (z * z).sum(-1)

    compiled, why = compile_batched_value_and_grad(ub, torch.zeros(2, 3), lambda z: (ub(z), z.clone()))
    assert compiled is None and "the compiled batched graph" in why and "different potentials or gradients" in why
    compiled, why = compile_value_and_grad(u, torch.zeros(3), lambda z: (math.inf, z))
    assert compiled is None and "not finite at the points to check" in why


# ---- the graph pass: transposed products computed in the layout they are read in -------------------
def _transposed_products(gm: torch.fx.GraphModule) -> int:
    from ember.infer.compile import _is_matrix_transpose

    mm = torch.ops.aten.mm.default
    return sum(1 for n in gm.graph.nodes if _is_matrix_transpose(n) and getattr(n.args[0], "target", None) is mm)


def test_sink_transposes_rewrites_a_vmapped_product_and_keeps_its_value():
    from torch.fx.experimental.proxy_tensor import make_fx

    from ember.infer.compile import prepare

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=gen)
    w = torch.randn(4, 3, generator=gen)

    def f(w):  # a batched x @ w, as vectorized chains make it: mm(x, w.T).T
        logits = torch.func.vmap(lambda wi: x @ wi)(w)
        shared = w @ w.T  # a product read twice stays as it is
        return torch.nn.functional.softplus(logits).sum(-1) + shared.T.sum(0) + shared.sum(1)

    gm = make_fx(f)(w)
    assert _transposed_products(gm) >= 1
    assert prepare(gm, who="the test") is None
    assert _transposed_products(gm) == 1  # the shared one
    torch.testing.assert_close(gm(w), f(w))
    # and the logits, once a strided view, are now a contiguous [4, 50]
    logits = [n for n in gm.graph.nodes if n.target is torch.ops.aten.mm.default and n.meta["val"].shape == (4, 50)]
    assert len(logits) == 1


def test_sink_transposes_keeps_random_draws():
    from torch.fx.experimental.proxy_tensor import make_fx

    from ember.infer.compile import prepare

    x = torch.randn(5, 3)

    def f(w):
        torch.randn(3)  # unused, but it advances the generator: a compiled ELBO keeps it
        return (x @ w.T).T.sum() + torch.randn(()) * 0

    gm = make_fx(f)(torch.randn(2, 3))
    assert prepare(gm, who="the test", allow_random=True) is None
    assert sum(1 for n in gm.graph.nodes if n.target is torch.ops.aten.randn.default) == 2
    assert _transposed_products(gm) == 0


def test_vectorized_regression_potential_has_no_transposed_product():
    # the pass is what makes 4 vectorized chains of the regression cheap (benchmarks/README.md)
    import ember.infer.compile as compile_mod

    recorded = []
    original = compile_mod.first_runner

    def spy(gm, example, problem_of):
        recorded.append(gm)
        return original(gm, example, problem_of)

    x, yb = bench.logreg_data(0, n=200)
    try:
        compile_mod.first_runner = spy
        mcmc = MCMC(NUTS(logreg), num_samples=5, warmup_steps=5, num_chains=3, disable_progbar=True)
        mcmc.run(torch.from_numpy(x), torch.from_numpy(yb))
    finally:
        compile_mod.first_runner = original
    assert "torch.func.vmap" in mcmc.compile_status[0] and mcmc.compile_status[0].startswith("compiled")
    assert recorded and all(_transposed_products(gm) == 0 for gm in recorded)
