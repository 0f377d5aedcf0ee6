"""Gradient estimators against closed forms, and posteriors of conjugate models."""

import math

import pytest
import torch
from torch.distributions import constraints

import ember as pyro
import ember.distributions as dist
from ember.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from ember.optim import Adam


def _grads(loss_fn, model, guide, names, *args):
    store = pyro.get_param_store()
    loss_fn.loss_and_grads(model, guide, *args)
    params = dict(store.named_parameters())
    out = {n: params[n].grad.clone() for n in names}
    for p in params.values():
        p.grad = None
    return out


# ---- Normal-Normal: z ~ N(0, 1), x | z ~ N(z, 1), x = 1; q(z) = N(m, s) ------------------
def nn_model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def nn_guide(x):
    m = pyro.param("m", torch.tensor(0.3))
    s = pyro.param("s", torch.tensor(0.8), constraint=constraints.positive)
    pyro.sample("z", dist.Normal(m, s))


def analytic_elbo(m, s, x=1.0):
    log2pi = math.log(2 * math.pi)
    e_log_prior = -0.5 * log2pi - 0.5 * (m**2 + s**2)
    e_log_lik = -0.5 * log2pi - 0.5 * ((x - m) ** 2 + s**2)
    entropy = 0.5 * (log2pi + 1) + torch.log(s)
    return e_log_prior + e_log_lik + entropy


@pytest.mark.parametrize("vectorize", [True, False])
def test_normal_normal_pathwise_gradient_matches_analytic(vectorize):
    n = 20000 if vectorize else 2000
    elbo = Trace_ELBO(num_particles=n, vectorize_particles=vectorize)
    g = _grads(elbo, nn_model, nn_guide, ["m", "s"], torch.tensor(1.0))
    m = torch.tensor(0.3, requires_grad=True)
    s_u = torch.tensor(0.8).log().requires_grad_(True)
    (-analytic_elbo(m, s_u.exp())).backward()
    # per-particle gradient sd is O(1); allow 5 standard errors
    tol = 5 * 1.5 / math.sqrt(n)
    assert g["m"].item() == pytest.approx(m.grad.item(), abs=tol)
    assert g["s"].item() == pytest.approx(s_u.grad.item(), abs=tol)


def test_normal_normal_loss_matches_analytic_elbo():
    pyro.param("m", torch.tensor(0.3))
    pyro.param("s", torch.tensor(0.8), constraint=constraints.positive)
    est = Trace_ELBO(num_particles=40000, vectorize_particles=True).loss(nn_model, nn_guide, torch.tensor(1.0))
    exact = -analytic_elbo(torch.tensor(0.3), torch.tensor(0.8)).item()
    assert est == pytest.approx(exact, abs=0.02)


def test_mean_field_elbo_uses_exact_kl():
    pyro.param("m", torch.tensor(0.3))
    pyro.param("s", torch.tensor(0.8), constraint=constraints.positive)
    est = TraceMeanField_ELBO(num_particles=20000, vectorize_particles=True).loss(nn_model, nn_guide, torch.tensor(1.0))
    exact = -analytic_elbo(torch.tensor(0.3), torch.tensor(0.8)).item()
    assert est == pytest.approx(exact, abs=0.02)


# ---- score function: a Bernoulli latent ----------------------------------------------------------
PRIOR_P = 0.3
X_OBS = torch.tensor([1.5, 2.2, 0.9])


def bern_model(x):
    z = pyro.sample("z", dist.Bernoulli(PRIOR_P))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(2.0 * z, 1.0), obs=x)


def bern_guide(x):
    logit = pyro.param("logit", torch.tensor(0.2))
    pyro.sample("z", dist.Bernoulli(logits=logit))


def _bern_joint_logp(z):
    return math.log(PRIOR_P if z else 1 - PRIOR_P) + torch.distributions.Normal(2.0 * z, 1.0).log_prob(X_OBS).sum().item()


def test_score_function_gradient_matches_analytic():
    logit = torch.tensor(0.2, requires_grad=True)
    q1 = torch.sigmoid(logit)
    exact_elbo = q1 * (_bern_joint_logp(1) - torch.log(q1)) + (1 - q1) * (_bern_joint_logp(0) - torch.log(1 - q1))
    (-exact_elbo).backward()
    n = 40000
    g = _grads(Trace_ELBO(num_particles=n, vectorize_particles=True), bern_model, bern_guide, ["logit"], X_OBS)
    assert g["logit"].item() == pytest.approx(logit.grad.item(), abs=5 * 3.0 / math.sqrt(n))


def test_score_function_recovers_discrete_posterior():
    lp1, lp0 = _bern_joint_logp(1), _bern_joint_logp(0)
    post1 = 1 / (1 + math.exp(lp0 - lp1))
    svi = SVI(bern_model, bern_guide, Adam({"lr": 0.05}), Trace_ELBO(num_particles=20, vectorize_particles=True))
    for _ in range(600):
        svi.step(X_OBS)
    assert torch.sigmoid(pyro.param("logit")).item() == pytest.approx(post1, abs=0.03)


# ---- Beta-Bernoulli coin: prior Beta(10, 10), 6 heads of 10 ---------------------------------------
def test_beta_bernoulli_coin_posterior():
    data = torch.tensor([1.0] * 6 + [0.0] * 4)

    def model(data):
        f = pyro.sample("latent_fairness", dist.Beta(10.0, 10.0))
        with pyro.plate("data", len(data)):
            pyro.sample("obs", dist.Bernoulli(f), obs=data)

    def guide(data):
        a = pyro.param("alpha_q", torch.tensor(15.0), constraint=constraints.positive)
        b = pyro.param("beta_q", torch.tensor(15.0), constraint=constraints.positive)
        pyro.sample("latent_fairness", dist.Beta(a, b))

    svi = SVI(model, guide, Adam({"lr": 0.02, "betas": (0.9, 0.999)}), Trace_ELBO(num_particles=16, vectorize_particles=True))
    a_avg = b_avg = 0.0
    steps, tail = 2500, 500
    for i in range(steps + tail):
        svi.step(data)
        if i >= steps:
            a_avg += pyro.param("alpha_q").item() / tail
            b_avg += pyro.param("beta_q").item() / tail
    mean = a_avg / (a_avg + b_avg)
    sd = math.sqrt(a_avg * b_avg / ((a_avg + b_avg) ** 2 * (a_avg + b_avg + 1)))
    exact_mean = 16 / 30
    exact_sd = math.sqrt(16 * 14 / (30**2 * 31))
    assert mean == pytest.approx(exact_mean, abs=0.02)
    assert sd == pytest.approx(exact_sd, abs=0.02)


# ---- plate-aware score function: per-datum costs -----------------------------------------------------
def test_local_discrete_latents_with_subsampling_scale_costs_not_scores():
    """Score-function gradient inside a subsampled plate equals N/B times the exact
    gradient of the ELBO restricted to the subsample (costs scaled, score unscaled)."""
    x = torch.tensor([0.1, 2.5, -0.3, 1.9, 2.2, 0.0])
    N = len(x)
    sub = torch.tensor([1, 4, 5])
    B = len(sub)

    def model(x):
        with pyro.plate("data", N, subsample=sub) as idx:
            z = pyro.sample("z", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(2.0 * z, 1.0), obs=x[idx])

    def guide(x):
        logits = pyro.param("logits", torch.zeros(N))
        with pyro.plate("data", N, subsample=sub) as idx:
            pyro.sample("z", dist.Bernoulli(logits=logits[idx]))

    logits = torch.zeros(N, requires_grad=True)
    q1 = torch.sigmoid(logits[sub])
    xs = x[sub]
    lik1 = torch.distributions.Normal(2.0, 1.0).log_prob(xs)
    lik0 = torch.distributions.Normal(0.0, 1.0).log_prob(xs)
    lp = math.log(0.5)
    exact = (N / B) * (q1 * (lp + lik1 - torch.log(q1)) + (1 - q1) * (lp + lik0 - torch.log(1 - q1))).sum()
    (-exact).backward()
    n = 20000
    g = _grads(Trace_ELBO(num_particles=n, vectorize_particles=True), model, guide, ["logits"], x)
    assert torch.allclose(g["logits"], logits.grad, atol=5 * 2.0 * (N / B) / math.sqrt(n))
    assert torch.all(g["logits"][[0, 2, 3]] == 0)


def test_vectorized_particles_stay_left_of_undeclared_batch_dims():
    # an observation of shape (3,) under a scalar Normal, no plate: the particle dim must go left
    # of it even when num_particles equals its size (else particle i would meet datum i only)
    def model():
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(loc, 1.0), obs=torch.zeros(3))

    def guide():
        pyro.sample("loc", dist.Normal(0.5, 1.0))

    elbo = Trace_ELBO(num_particles=3, vectorize_particles=True)
    pyro.set_rng_seed(0)
    losses = [elbo.loss(model, guide) for _ in range(400)]
    assert elbo.max_plate_nesting == 1
    expected = -(3 * (-0.5 * math.log(2 * math.pi) - 0.5 * (0.25 + 1.0)) - 0.5 * 0.25)
    assert sum(losses) / len(losses) == pytest.approx(expected, abs=0.25)
