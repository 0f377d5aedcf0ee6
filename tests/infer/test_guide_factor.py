"""A ``factor`` in the guide is a term of log q in every ELBO (as in Pyro): its value is
subtracted, its gradient is pathwise (``has_rsample=True``) or a score function (``False``)."""

import math
import warnings

import pytest
import torch

import ember as pyro
import ember.distributions as dist
from ember.infer import (
    JitTrace_ELBO,
    JitTraceEnum_ELBO,
    JitTraceGraph_ELBO,
    JitTraceMeanField_ELBO,
    RenyiELBO,
    ReweightedWakeSleep,
    Trace_ELBO,
    TraceEnum_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
    TraceTailAdaptive_ELBO,
)
from ember.poutine import trace

C, GF = 0.5, 1.0
# model z ~ N(0, 1); guide z = C (a point mass, log q = 0) plus factor GF: -ELBO = -(log N(C) - GF)
EXPECTED = -(-0.5 * C**2 - 0.5 * math.log(2 * math.pi) - GF)


def model():
    pyro.sample("z", dist.Normal(0.0, 1.0))


def guide():
    pyro.sample("z", dist.Delta(torch.tensor(C)))
    pyro.factor("gf", torch.tensor(GF), has_rsample=True)


ELBOS = [
    lambda: Trace_ELBO(),
    lambda: TraceGraph_ELBO(),
    lambda: TraceMeanField_ELBO(),
    lambda: TraceEnum_ELBO(max_plate_nesting=0, strict_enumeration_warning=False),
    lambda: RenyiELBO(alpha=0.5, num_particles=2),
    lambda: TraceTailAdaptive_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=0),
    lambda: JitTrace_ELBO(),
    lambda: JitTraceGraph_ELBO(),
    lambda: JitTraceMeanField_ELBO(),
    lambda: JitTraceEnum_ELBO(max_plate_nesting=0, strict_enumeration_warning=False),
]


@pytest.mark.parametrize("make", ELBOS, ids=lambda f: type(f()).__name__)
def test_every_elbo_subtracts_a_guide_factor(make):
    elbo = make()
    for _ in range(2):  # the Jit variants: the eager first step, then the recorded one
        assert elbo.loss(model, guide) == pytest.approx(EXPECTED, abs=1e-5)
    assert float(elbo.differentiable_loss(model, guide)) == pytest.approx(EXPECTED, abs=1e-5)


def test_reweighted_wake_sleep_subtracts_a_guide_factor():
    theta_loss, _ = ReweightedWakeSleep(num_particles=2).loss(model, guide)
    assert theta_loss == pytest.approx(EXPECTED, abs=1e-5)


def test_factor_site_is_auxiliary_and_keeps_has_rsample_in_a_plate():
    def g():
        with pyro.plate("p", 3):
            pyro.factor("f", torch.tensor(0.5), has_rsample=False)  # broadcast: the Unit is expanded

    site = trace(g).get_trace().nodes["f"]
    assert site["infer"]["is_auxiliary"] is True
    assert site["fn"].batch_shape == (3,)
    assert site["fn"].has_rsample is False


def test_guide_factor_without_has_rsample_is_a_value_error_naming_it():
    def g():
        pyro.sample("z", dist.Delta(torch.tensor(C)))
        pyro.factor("my_factor", torch.tensor(GF))

    with pytest.raises(ValueError, match=r"factor\('my_factor'.*has_rsample"):
        Trace_ELBO().loss(model, g)
    with pytest.raises(ValueError, match=r"factor\('my_factor'.*has_rsample"):
        TraceEnum_ELBO(max_plate_nesting=0, strict_enumeration_warning=False).loss(model, g)


def test_model_factor_needs_no_has_rsample_and_guide_factor_does_not_warn():
    def m():
        pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.factor("mf", torch.tensor(-2.0))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Trace_ELBO().loss(m, guide) == pytest.approx(EXPECTED + 2.0, abs=1e-5)


def test_real_observation_in_guide_warns_and_is_part_of_log_q():
    def g():
        pyro.sample("z", dist.Delta(torch.tensor(C)))
        pyro.sample("o", dist.Normal(0.0, 1.0), obs=torch.tensor(1.0))

    with pytest.warns(UserWarning, match=r"guide observes site\(s\) \['o'\]"):
        loss = Trace_ELBO().loss(model, g)
    # Pyro 1.9.2 gives the same: -(log N(C) - log N(1))
    assert loss == pytest.approx(0.5 * C**2 - 0.5, abs=1e-5)


@pytest.mark.parametrize("elbo_cls", [Trace_ELBO, TraceGraph_ELBO])
def test_pathwise_gradient_of_a_reparameterized_guide_factor(elbo_cls):
    loc = torch.tensor(0.7, requires_grad=True)
    c = 0.3

    def g():
        pyro.sample("z", dist.Delta(loc))
        pyro.factor("gf", c * loc**2, has_rsample=True)

    # -ELBO = loc^2 / 2 + log sqrt(2 pi) + c loc^2: d/dloc = loc + 2 c loc
    (grad,) = torch.autograd.grad(elbo_cls().differentiable_loss(model, g), [loc])
    assert float(grad) == pytest.approx(0.7 + 2 * c * 0.7, abs=1e-6)


def _score_model():
    pyro.sample("z", dist.Bernoulli(0.3))


@pytest.mark.parametrize("elbo_cls", [Trace_ELBO, TraceGraph_ELBO])
def test_score_function_gradient_of_a_non_reparameterized_guide_factor(elbo_cls):
    """The guide's density of a Bernoulli(p) choice enters only through a has_rsample=False factor
    (the draw itself is a point mass): averaged over the two values with weights q_p(z), the
    estimator's gradient is the exact gradient of ELBO(p) = sum_z q_p(z) (log p(z) - log q_p(z))."""
    p = torch.tensor(0.6, requires_grad=True)
    expected_grad = 0.0
    for z in (0.0, 1.0):
        zv = torch.tensor(z)

        def g(zv=zv):
            pyro.sample("z", dist.Delta(zv))
            pyro.factor("qz", dist.Bernoulli(p).log_prob(zv), has_rsample=False)

        q = float(dist.Bernoulli(p.detach()).log_prob(zv).exp())
        surrogate = elbo_cls().differentiable_loss(_score_model, g)
        loss = elbo_cls().loss(_score_model, g)
        assert float(surrogate) == pytest.approx(loss, abs=1e-6)  # the surrogate has the loss's value
        (grad,) = torch.autograd.grad(surrogate, [p])
        expected_grad += q * float(grad)
    pe = torch.tensor(0.6, requires_grad=True)
    qs = torch.stack([1 - pe, pe])
    ps = torch.tensor([0.7, 0.3])
    (exact,) = torch.autograd.grad(-(qs * (ps.log() - qs.log())).sum(), [pe])
    assert expected_grad == pytest.approx(float(exact), abs=1e-5)
