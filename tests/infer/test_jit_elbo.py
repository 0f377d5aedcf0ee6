"""JitTrace_ELBO: the compiled ELBO step gives the eager Trace_ELBO's loss and gradients on the
same random numbers, trains to the exact posterior, and falls back to eager, with a warning and
the reason, wherever the recorded graph would not be the model and guide."""

from __future__ import annotations

import math
import random
import warnings

import pytest
import torch
from torch.distributions import constraints

import ember as pyro
import ember.distributions as dist
from ember.infer import SVI, JitTrace_ELBO, NonFiniteLossError, Trace_ELBO
from ember.primitives import get_param_store

pytestmark = pytest.mark.usefixtures("one_thread")


def scale_model(guess):
    weight = pyro.sample("weight", dist.Normal(guess, 1.0))
    return pyro.sample("measurement", dist.Normal(weight, 0.75), obs=torch.tensor(9.5))


def scale_guide(guess):
    a = pyro.param("a", torch.tensor(guess))
    b = pyro.param("b", torch.tensor(1.0), constraint=constraints.positive)
    return pyro.sample("weight", dist.Normal(a, b))


def _grads_after(elbo, model, guide, *args, seed=5):
    """loss_and_grads on a fixed random stream; returns (loss, {param: grad}) and clears grads."""
    store = get_param_store()
    pyro.set_rng_seed(seed)
    loss = elbo.loss_and_grads(model, guide, *args)
    grads = {n: p.grad.clone() for n, p in store.named_parameters() if p.grad is not None}
    for _, p in store.named_parameters():
        p.grad = None
    return loss, grads


def _assert_same_step(model, guide, *args, **elbo_kwargs):
    jit = JitTrace_ELBO(**elbo_kwargs)
    pyro.set_rng_seed(0)
    jit.loss_and_grads(model, guide, *args)  # eager + record
    for _, p in get_param_store().named_parameters():
        p.grad = None
    assert jit.compile_status.startswith("compiled"), jit.compile_status
    eager = Trace_ELBO(**elbo_kwargs)
    for seed in (5, 6):
        l_c, g_c = _grads_after(jit, model, guide, *args, seed=seed)
        l_e, g_e = _grads_after(eager, model, guide, *args, seed=seed)
        assert math.isclose(l_c, l_e, rel_tol=1e-5, abs_tol=1e-5)
        assert g_c.keys() == g_e.keys() and g_c
        for n in g_e:
            torch.testing.assert_close(g_c[n], g_e[n], rtol=1e-5, atol=1e-5)
    return jit


def test_compiled_step_equals_eager_step_on_the_same_random_numbers():
    _assert_same_step(scale_model, scale_guide, 8.5)


def test_score_function_subsampling_and_particles_compile_and_agree():
    data = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0])

    def model(data):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        k = pyro.sample("k", dist.Bernoulli(0.3))  # a discrete latent: score-function term
        with pyro.plate("n", len(data), subsample_size=4) as idx:
            pyro.sample("x", dist.Bernoulli(logits=z + k), obs=data[idx])

    def guide(data):
        loc = pyro.param("loc", torch.tensor(0.5))
        scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
        q = pyro.param("q", torch.tensor(0.5), constraint=constraints.unit_interval)
        pyro.sample("z", dist.Normal(loc, scale))
        pyro.sample("k", dist.Bernoulli(q))

    _assert_same_step(model, guide, data)
    pyro.clear_param_store()
    _assert_same_step(model, guide, data, num_particles=3)
    pyro.clear_param_store()
    _assert_same_step(model, guide, data, num_particles=3, vectorize_particles=True, max_plate_nesting=1)


def test_jit_elbo_trains_the_scale_model_to_the_exact_posterior():
    pyro.enable_validation(False)
    elbo = JitTrace_ELBO()
    svi = SVI(scale_model, scale_guide, pyro.optim.Adam({"lr": 0.02}), elbo)
    for _ in range(2500):
        svi.step(8.5)
    assert elbo.compile_status.startswith("compiled")
    post_mean = (8.5 * 0.75**2 + 9.5) / (1 + 0.75**2)
    post_sd = math.sqrt(0.75**2 / (1 + 0.75**2))
    assert abs(pyro.param("a").item() - post_mean) < 0.05
    assert abs(pyro.param("b").item() - post_sd) < 0.05


def test_mini_batches_reuse_the_graph_and_a_new_shape_records_another():
    def model(x):
        m = pyro.sample("m", dist.Normal(0.0, 10.0))
        with pyro.plate("n", len(x)):
            pyro.sample("x", dist.Normal(m, 1.0), obs=x)

    def guide(x):
        loc = pyro.param("loc", torch.tensor(0.0))
        pyro.sample("m", dist.Normal(loc, 0.1))

    elbo = JitTrace_ELBO()
    svi = SVI(model, guide, pyro.optim.SGD({"lr": 0.01}), elbo)
    data = 3.0 + torch.randn(40)
    for i in range(200):
        svi.step(data[(i % 4) * 10:(i % 4) * 10 + 10])  # values change, shape does not
    assert len(elbo._signatures) == 1 and elbo.compile_status.startswith("compiled")
    svi.step(data[:7])
    assert len(elbo._signatures) == 2
    assert abs(pyro.param("loc").item() - data.mean().item()) < 0.3


def test_nan_loss_in_a_compiled_step_names_the_site():
    def model(y):
        s = pyro.sample("s", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(0.0, s.exp() * torch.sign(y)), obs=y)  # negative scale where y < 0

    def guide(y):
        pyro.sample("s", dist.Normal(pyro.param("m", torch.tensor(0.0)), 0.1))

    pyro.enable_validation(False)
    svi = SVI(model, guide, pyro.optim.SGD({"lr": 0.01}), JitTrace_ELBO())
    svi.step(torch.tensor(1.0))
    svi.step(torch.tensor(1.0))
    with pytest.raises(NonFiniteLossError, match="'y'"):
        svi.step(torch.tensor(-1.0))


# ---- fallbacks ------------------------------------------------------------------------------------------
def _branchy_guide(guess):
    a = pyro.param("a", torch.tensor(guess))
    w = pyro.sample("weight", dist.Normal(a, 1.0))
    if w > 9.0:  # control flow on a sampled value
        pyro.factor("f", torch.zeros(()), has_rsample=True)  # a guide factor says how it is differentiated
    return w


def _numpy_random_guide(guess):
    a = pyro.param("a", torch.tensor(guess))
    return pyro.sample("weight", dist.Normal(a + random.gauss(0.0, 1.0), 1.0))  # randomness torch does not see


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(1, 1)

    def forward(self, x):
        return self.lin(x)


_NET = _Net()


def _module_guide(guess):
    pyro.module("net", _NET)
    loc = _NET(torch.tensor([[guess]])).reshape(())
    return pyro.sample("weight", dist.Normal(loc, 1.0))


def _beta_guide(guess):
    # torch's Beta (and Dirichlet) rsample is an autograd.Function that functorch cannot record
    a = pyro.param("a", torch.tensor(guess), constraint=constraints.positive)
    return pyro.sample("weight", dist.Beta(a, 1.0))


@pytest.mark.parametrize("guide, reason", [
    (_branchy_guide, "turns a tensor it computed into a Python value"),
    (_numpy_random_guide, "randomness from outside torch"),
    (_module_guide, "nn.Module parameters"),
    (_beta_guide, "recording the model failed"),
])
def test_fallbacks_warn_once_and_train_eagerly(guide, reason):
    elbo = JitTrace_ELBO()
    svi = SVI(scale_model, guide, pyro.optim.SGD({"lr": 0.01}), elbo)
    with pytest.warns(UserWarning, match=reason):
        svi.step(8.5)
    assert elbo.compile_status.startswith("eager: ") and reason in elbo.compile_status
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning, not one per step
        for _ in range(3):
            assert math.isfinite(svi.step(8.5))


def test_a_python_number_that_changes_every_step_stops_compiling_after_eight_signatures():
    def model(guess, anneal):
        w = pyro.sample("weight", dist.Normal(guess, 1.0))
        pyro.sample("measurement", dist.Normal(w, 0.75), obs=torch.tensor(9.5))

    def guide(guess, anneal):
        return scale_guide(guess)

    elbo = JitTrace_ELBO()
    svi = SVI(model, guide, pyro.optim.SGD({"lr": 0.001}), elbo)
    with pytest.warns(UserWarning, match="8 different signatures"):
        for i in range(10):
            svi.step(8.5, 0.1 * i)
    assert len(elbo._signatures) == 8 and "signatures" in elbo.compile_status


def test_new_functions_never_run_an_old_graph_and_a_new_constraint_records_again():
    def make(obs):
        def model():
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 0.5), obs=torch.tensor(obs))

        def guide():
            pyro.sample("z", dist.Normal(pyro.param("l", torch.tensor(0.0)), 1.0))

        return model, guide

    elbo = JitTrace_ELBO()
    m, g = make(1.0)
    for _ in range(2):
        elbo.loss_and_grads(m, g)
    del m, g  # a new closure may get the old ids: it must not get the old graph (data 1.0)
    m, g = make(100.0)
    pyro.set_rng_seed(3)
    loss = elbo.loss_and_grads(m, g)
    pyro.set_rng_seed(3)
    for _, p in get_param_store().named_parameters():
        p.grad = None
    assert math.isclose(loss, Trace_ELBO().loss_and_grads(m, g), rel_tol=1e-5)

    def guide_s():
        s = pyro.param("s")
        pyro.sample("z", dist.Normal(0.0, s))

    def model_s():
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=torch.tensor(1.0))

    pyro.clear_param_store()
    pyro.param("s", torch.tensor(0.5), constraint=constraints.positive)
    elbo = JitTrace_ELBO()
    for _ in range(2):
        elbo.loss_and_grads(model_s, guide_s)
    pyro.clear_param_store()
    pyro.param("s", torch.tensor(0.5), constraint=constraints.interval(0.0, 1.0))  # same name and shape
    l_c, g_c = _grads_after(elbo, model_s, guide_s, seed=9)
    l_e, g_e = _grads_after(Trace_ELBO(), model_s, guide_s, seed=9)
    assert math.isclose(l_c, l_e, rel_tol=1e-5)
    torch.testing.assert_close(g_c["s"], g_e["s"])


@pytest.mark.parametrize("runner", ["static runtime", "torchscript", "fx"])
def test_each_parameter_gets_its_own_gradient_tensor(runner, monkeypatch):
    import ember.infer.compile as compile_module

    every = compile_module.runners
    monkeypatch.setattr(compile_module, "runners", lambda gm, ex: [r for r in every(gm, ex) if r[0] == runner])

    def model():
        a = pyro.param("pa", torch.zeros(3))
        b = pyro.param("pb", torch.zeros(3))
        pyro.factor("f", (a + b).sum() * 2)  # the backward hands one expanded buffer to both

    def guide():
        pass

    elbo = JitTrace_ELBO()
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": 0.01, "clip_norm": 0.5}), elbo)
    for _ in range(3):
        svi.step()  # ClippedAdam clamps .grad in place
    assert elbo.compile_status == f"compiled ({runner})"
    torch.testing.assert_close(pyro.param("pa"), pyro.param("pb"))


def test_a_tensor_argument_that_requires_grad_keeps_the_elbo_eager():
    def guide(guess):
        return scale_guide(8.5)

    x = torch.tensor(8.5, requires_grad=True)
    elbo = JitTrace_ELBO()
    with pytest.warns(UserWarning, match="requires grad"):
        elbo.loss_and_grads(scale_model, guide, x)
    x.grad = None
    elbo.loss_and_grads(scale_model, guide, x)
    assert x.grad is not None  # the eager ELBO still differentiates with respect to it


def test_a_small_compiled_step_runs_on_one_thread_and_leaves_torchs_setting():
    store = get_param_store()
    store.clear()
    torch.set_num_threads(2)
    try:
        elbo = JitTrace_ELBO()
        svi = SVI(scale_model, scale_guide, pyro.optim.SGD({"lr": 1e-3}), elbo)
        svi.step(8.5)  # eager; records the graph
        entry = next(iter(elbo._signatures.values()))[2]
        seen = []
        run = entry.run

        def spy(*a):
            seen.append(torch.get_num_threads())
            return run(*a)

        entry.run = spy
        svi.step(8.5)
        assert entry.one_thread and seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
