"""RenyiELBO: alpha = 1 is the ELBO, alpha = 0 the IWAE bound, which rises with the number of
particles towards the log evidence (a conjugate Normal model, where everything is known)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import constraints

import ember as pyro
import ember.distributions as dist
from ember.infer import Trace_ELBO
from ember.infer.renyi_elbo import RenyiELBO

X = torch.tensor([0.5, 1.2, -0.3])
# z ~ N(0, 1), x_i | z ~ N(z, 1): x ~ N(0, I + 1 1^T)
LOG_EVIDENCE = torch.distributions.MultivariateNormal(torch.zeros(3), torch.eye(3) + torch.ones(3, 3)).log_prob(X).item()


def model():
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("n", 3):
        pyro.sample("x", dist.Normal(z, 1.0), obs=X)


def guide():
    m = pyro.param("m", torch.tensor(0.0))
    s = pyro.param("s", torch.tensor(1.0), constraint=constraints.positive)
    pyro.sample("z", dist.Normal(m, s))


def _exact_elbo(m: float, s: float) -> float:
    # E_q[log p(z) + sum_i log p(x_i | z)] + H(q), q = N(m, s^2)
    e_logp = -0.5 * math.log(2 * math.pi) - 0.5 * (m * m + s * s)
    for x in X.tolist():
        e_logp += -0.5 * math.log(2 * math.pi) - 0.5 * ((x - m) ** 2 + s * s)
    return e_logp + 0.5 * math.log(2 * math.pi * math.e * s * s)


@pytest.fixture(autouse=True)
def _params():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def test_alpha_one_is_the_elbo_in_expectation():
    guide()
    elbo = RenyiELBO(alpha=1.0, num_particles=20000, vectorize_particles=True)
    pyro.set_rng_seed(0)
    assert -elbo.loss(model, guide) == pytest.approx(_exact_elbo(0.0, 1.0), abs=0.05)
    pyro.set_rng_seed(0)
    trace_elbo = -sum(Trace_ELBO().loss(model, guide) for _ in range(2000)) / 2000
    assert trace_elbo == pytest.approx(_exact_elbo(0.0, 1.0), abs=0.1)


def test_one_particle_equals_trace_elbo_on_the_same_draw():
    for alpha in (0.0, 0.5, 1.0):
        pyro.set_rng_seed(3)
        a = RenyiELBO(alpha=alpha, num_particles=1).differentiable_loss(model, guide)
        pyro.set_rng_seed(3)
        b = Trace_ELBO().differentiable_loss(model, guide)
        assert torch.allclose(a, b)
        ga = torch.autograd.grad(a, [pyro.param("m")])[0]
        gb = torch.autograd.grad(b, [pyro.param("m")])[0]
        assert torch.allclose(ga, gb)


def _iwae_means(ks: tuple, reps: dict) -> list[float]:
    means = []
    for k in ks:
        elbo = RenyiELBO(alpha=0.0, num_particles=k, vectorize_particles=k > 1)
        pyro.set_rng_seed(k)
        means.append(sum(-elbo.loss(model, guide) for _ in range(reps[k])) / reps[k])
    return means


def test_iwae_bound_increases_with_particles():
    """With a poor guide (q = N(-1, 0.5^2), the posterior N(0.35, 0.5^2)) the bound climbs by 1.8,
    0.95, 0.48 and 0.34 from 1 to 4, 16, 64 and 1,024 particles: each step five or more standard
    errors of the Monte-Carlo means (0.13, 0.09, 0.06, 0.04, 0.05), and every mean at least 0.18
    below the log evidence."""
    guide()
    pyro.get_param_store()["m"] = torch.tensor(-1.0)
    pyro.get_param_store()["s"] = torch.tensor(0.5)
    means = _iwae_means((1, 4, 16, 64, 1024), {1: 400, 4: 400, 16: 400, 64: 400, 1024: 40})
    assert all(a < b for a, b in zip(means, means[1:])), means
    assert all(m < LOG_EVIDENCE for m in means), (means, LOG_EVIDENCE)


def test_iwae_bound_is_the_elbo_for_one_particle_and_the_log_evidence_for_many():
    """With q = N(0, 1): one particle's mean bound is the ELBO in closed form (-5.16; standard
    error 0.06 over 2,000 draws), and 1,024 particles' is the log evidence (-4.095; standard
    error 0.004 over 40 draws)."""
    guide()
    one, many = _iwae_means((1, 1024), {1: 2000, 1024: 40})
    assert one == pytest.approx(_exact_elbo(0.0, 1.0), abs=0.25)
    assert many == pytest.approx(LOG_EVIDENCE, abs=0.02)


def test_alpha_between_elbo_and_evidence():
    guide()
    vals = {}
    for alpha in (0.0, 0.5, 1.0):
        pyro.set_rng_seed(0)  # the same draws for each alpha: the bound is monotone in alpha draw by draw
        vals[alpha] = -RenyiELBO(alpha=alpha, num_particles=50, vectorize_particles=True).loss(model, guide)
    assert vals[1.0] <= vals[0.5] <= vals[0.0]


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_loss_and_pathwise_gradient_by_hand(alpha):
    """K vectorized particles: the loss and its gradient in (m, log s) equal the bound written by
    hand with torch.distributions on the same draws."""
    k = 5
    guide()
    store = pyro.get_param_store()
    pyro.set_rng_seed(7)
    elbo = RenyiELBO(alpha=alpha, num_particles=k, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.differentiable_loss(model, guide)
    got = torch.autograd.grad(loss, [store.unconstrained("m"), store.unconstrained("s")])
    m = torch.tensor(0.0, requires_grad=True)
    log_s = torch.tensor(0.0, requires_grad=True)
    pyro.set_rng_seed(7)
    z = torch.distributions.Normal(m, log_s.exp()).expand([k, 1]).rsample()  # particles at dim -2
    log_w = (
        torch.distributions.Normal(0.0, 1.0).log_prob(z).squeeze(-1)
        + torch.distributions.Normal(z, 1.0).log_prob(X).sum(-1)
        - torch.distributions.Normal(m, log_s.exp()).log_prob(z).squeeze(-1)
    )
    bound = (torch.logsumexp((1 - alpha) * log_w, 0) - math.log(k)) / (1 - alpha)
    want = torch.autograd.grad(-bound, [m, log_s])
    assert torch.allclose(loss, -bound, atol=1e-5)
    assert torch.allclose(torch.stack(got), torch.stack(want), atol=1e-5)


@pytest.mark.slow
def test_score_function_gradient_unbiased_for_iwae():
    """A discrete latent: the IWAE gradient (K = 2) by enumeration of the 4 draw pairs, against the
    mean of 4000 single estimates (within 4 standard errors)."""
    theta0 = torch.tensor(0.3)

    def dmodel():
        z = pyro.sample("z", dist.Bernoulli(0.4))
        pyro.sample("x", dist.Normal(2.0 * z, 1.0), obs=torch.tensor(1.5))

    def dguide():
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("t", theta0.clone())))

    def log_w(z, t):
        q = torch.sigmoid(t) if z else 1 - torch.sigmoid(t)
        return math.log(0.4 if z else 0.6) + dist.Normal(2.0 * z, 1.0).log_prob(torch.tensor(1.5)) - torch.log(q)

    t = theta0.clone().requires_grad_(True)
    exact = 0.0
    for z1 in (0, 1):
        for z2 in (0, 1):
            q1 = torch.sigmoid(t) if z1 else 1 - torch.sigmoid(t)
            q2 = torch.sigmoid(t) if z2 else 1 - torch.sigmoid(t)
            bound = torch.logsumexp(torch.stack([log_w(z1, t), log_w(z2, t)]), 0) - math.log(2)
            exact = exact + q1 * q2 * bound
    g_exact = torch.autograd.grad(-exact, t)[0].item()
    dguide()
    elbo = RenyiELBO(alpha=0.0, num_particles=2)
    pyro.set_rng_seed(1)
    gs = []
    for _ in range(4000):
        loss = elbo.differentiable_loss(dmodel, dguide)
        gs.append(torch.autograd.grad(loss, [pyro.param("t")])[0].item())
    g = torch.tensor(gs)
    assert abs(g.mean().item() - g_exact) < 4 * g.std().item() / math.sqrt(len(gs)), (g.mean(), g_exact)


def test_bad_alpha():
    with pytest.raises(ValueError, match="alpha must be a finite number >= 0"):
        RenyiELBO(alpha=-1.0)
