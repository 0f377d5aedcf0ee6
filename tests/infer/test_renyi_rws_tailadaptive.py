"""ReweightedWakeSleep and TraceTailAdaptive_ELBO: losses and gradients by hand on the same draws,
what they learn, and their bad-input errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import constraints

import ember as pyro
import ember.distributions as dist
from ember.infer import SVI, Trace_ELBO
from ember.infer.rws import ReweightedWakeSleep
from ember.infer.tracetailadaptive_elbo import TraceTailAdaptive_ELBO, tail_adaptive_weights

X = torch.tensor(0.8)


def model():
    theta = pyro.param("theta", torch.tensor(0.3))
    z = pyro.sample("z", dist.Normal(theta, 1.0))
    pyro.sample("x", dist.Normal(z, 1.0), obs=X)


def guide():
    phi = pyro.param("phi", torch.tensor(-0.2))
    pyro.sample("z", dist.Normal(phi, 1.0))


@pytest.fixture(autouse=True)
def _clean():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def _draws_by_hand(k, seed, phi):
    pyro.set_rng_seed(seed)
    return torch.distributions.Normal(phi, 1.0).expand([k]).rsample()


def test_rws_losses_and_gradients_by_hand():
    k = 6
    elbo = ReweightedWakeSleep(num_particles=k, max_plate_nesting=0)
    model(), guide()
    pyro.set_rng_seed(5)
    loss_theta, loss_phi = elbo.loss_and_grads(model, guide)
    store = pyro.get_param_store()
    g_theta, g_phi = store.unconstrained("theta").grad.clone(), store.unconstrained("phi").grad.clone()
    theta = torch.tensor(0.3, requires_grad=True)
    phi = torch.tensor(-0.2, requires_grad=True)
    z = _draws_by_hand(k, 5, phi.detach())
    log_p = torch.distributions.Normal(theta, 1.0).log_prob(z) + torch.distributions.Normal(z, 1.0).log_prob(X)
    log_q = torch.distributions.Normal(phi, 1.0).log_prob(z)
    wake_theta = -(torch.logsumexp(log_p - log_q.detach(), 0) - math.log(k))
    w = torch.softmax((log_p - log_q).detach(), 0)
    wake_phi = -(w * log_q).sum()
    assert loss_theta == pytest.approx(wake_theta.item(), abs=1e-5)
    assert loss_phi == pytest.approx(wake_phi.item(), abs=1e-5)
    assert g_theta.item() == pytest.approx(torch.autograd.grad(wake_theta, theta)[0].item(), abs=1e-5)
    assert g_phi.item() == pytest.approx(torch.autograd.grad(wake_phi, phi)[0].item(), abs=1e-5)


def test_rws_sleep_phase():
    """insomnia = 0: the guide's loss is -log q at the model's own draws of z (x unobserved)."""
    elbo = ReweightedWakeSleep(num_particles=2, insomnia=0.0, num_sleep_particles=4000, max_plate_nesting=0)
    model(), guide()
    pyro.set_rng_seed(0)
    _, phi_loss = elbo.loss(model, guide)
    # E_{z ~ N(0.3, 1)}[-log N(z; -0.2, 1)] = 0.5 log(2 pi) + (1 + 0.5**2) / 2
    assert phi_loss == pytest.approx(0.5 * math.log(2 * math.pi) + (1 + 0.25) / 2, abs=0.05)


def test_rws_learns_a_discrete_mixture():
    """Two well separated clusters; the component locations are model parameters, z per datum
    is discrete: RWS (no score function) moves the locations to the clusters."""
    torch.manual_seed(0)
    n = 40
    labels = torch.arange(n) % 2
    data = torch.where(labels == 1, 2.0, -2.0) + 0.5 * torch.randn(n)

    def mix_model(x):
        locs = pyro.param("locs", torch.tensor([-0.3, 0.2]))
        with pyro.plate("data", n):
            z = pyro.sample("z", dist.Categorical(torch.tensor([0.5, 0.5])))
            pyro.sample("x", dist.Normal(locs[z], 0.5), obs=x)

    def mix_guide(x):
        with pyro.plate("data", n):
            pyro.sample("z", dist.Categorical(logits=pyro.param("logits", torch.zeros(n, 2))))

    def marginal():
        locs = pyro.param("locs").detach()
        return torch.logsumexp(torch.distributions.Normal(locs, 0.5).log_prob(data[:, None]) + math.log(0.5), -1).sum().item()

    mix_model(data)
    start = marginal()
    pyro.set_rng_seed(1)
    svi = SVI(mix_model, mix_guide, pyro.optim.Adam({"lr": 0.05}), ReweightedWakeSleep(num_particles=10))
    for _ in range(80):
        losses = svi.step(data)
    assert isinstance(losses, tuple) and len(losses) == 2
    locs = pyro.param("locs").detach()
    assert locs[0] < -1.0 and locs[1] > 1.0, locs
    assert marginal() > start + 50


@pytest.mark.slow
def test_rws_beats_trace_elbo_on_a_many_cluster_mixture():
    """Eight well separated clusters, minibatches of 5 data, a per-datum categorical guide: after
    the same number of steps (10 particles each), the model's exact marginal log-likelihood is far
    higher with RWS than with Trace_ELBO, whose score-function gradients are noisy here."""
    torch.manual_seed(0)
    c, n, b = 8, 200, 5
    true_locs = torch.linspace(-14, 14, c)
    data = true_locs[torch.randint(0, c, (n,))] + 0.5 * torch.randn(n)

    def mix_model(x):
        locs = pyro.param("locs", torch.linspace(-1, 1, c))
        with pyro.plate("data", n, subsample_size=b) as idx:
            z = pyro.sample("z", dist.Categorical(torch.ones(c) / c))
            pyro.sample("x", dist.Normal(locs[z], 0.5), obs=x[idx])

    def mix_guide(x):
        logits = pyro.param("logits", torch.zeros(n, c))
        with pyro.plate("data", n, subsample_size=b) as idx:
            pyro.sample("z", dist.Categorical(logits=logits[idx]))

    def marginal():
        locs = pyro.param("locs").detach()
        return torch.logsumexp(torch.distributions.Normal(locs, 0.5).log_prob(data[:, None]) - math.log(c), -1).sum().item()

    final = {}
    for name, loss in (("rws", ReweightedWakeSleep(num_particles=10)), ("elbo", Trace_ELBO(num_particles=10, vectorize_particles=True))):
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        svi = SVI(mix_model, mix_guide, pyro.optim.Adam({"lr": 0.1}), loss)
        for _ in range(300):
            svi.step(data)
        final[name] = marginal()
    assert final["rws"] > final["elbo"] + 1000, final


def test_rws_bad_input():
    with pytest.raises(ValueError, match="insomnia must lie in"):
        ReweightedWakeSleep(insomnia=1.5)


def test_tail_adaptive_weights_by_hand():
    g = tail_adaptive_weights(torch.tensor([0.0, 2.0, 1.0]), -1.0)
    # tail fractions F = [3/3, 1/3, 2/3]; F ** -1 = [1, 3, 1.5]
    assert torch.allclose(g, torch.tensor([1.0, 3.0, 1.5]) / 5.5)


def test_tail_adaptive_gradient_by_hand():
    k = 8
    model(), guide()
    elbo = TraceTailAdaptive_ELBO(num_particles=k, max_plate_nesting=0)
    pyro.set_rng_seed(3)
    surrogate = elbo.differentiable_loss(model, guide)
    store = pyro.get_param_store()
    got = torch.autograd.grad(surrogate, [store.unconstrained("theta"), store.unconstrained("phi")])
    theta = torch.tensor(0.3, requires_grad=True)
    phi = torch.tensor(-0.2, requires_grad=True)
    z = _draws_by_hand(k, 3, phi)
    log_p = torch.distributions.Normal(theta, 1.0).log_prob(z) + torch.distributions.Normal(z, 1.0).log_prob(X)
    log_w = log_p - torch.distributions.Normal(phi.detach(), 1.0).log_prob(z)  # the path through z only
    gamma = tail_adaptive_weights(log_w.detach(), -1.0)
    want = torch.autograd.grad(-(gamma * log_w).sum(), [theta, phi])
    assert surrogate.item() == pytest.approx(-log_w.mean().item(), abs=1e-5)
    assert torch.allclose(torch.stack(got), torch.stack(want), atol=1e-5)


def test_tail_adaptive_covers_a_heavy_tail():
    """A Student-t(2.5) target and a Normal guide: the tail-adaptive fit is wider than the ELBO's
    (mass-covering) and stays centred."""

    def t_model():
        pyro.sample("z", dist.StudentT(2.5, 0.0, 1.0))

    def t_guide():
        pyro.sample("z", dist.Normal(pyro.param("m", torch.tensor(0.5)), pyro.param("s", torch.tensor(1.0), constraint=constraints.positive)))

    scales = {}
    for name, loss in (("elbo", Trace_ELBO(num_particles=50, vectorize_particles=True)), ("tail", TraceTailAdaptive_ELBO(num_particles=50))):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        svi = SVI(t_model, t_guide, pyro.optim.Adam({"lr": 0.03}), loss)
        for _ in range(400):
            svi.step()
        scales[name] = pyro.param("s").item()
        assert abs(pyro.param("m").item()) < 0.25, (name, pyro.param("m").item())
    assert scales["tail"] > scales["elbo"] + 0.3, scales


def test_tail_adaptive_bad_input():
    with pytest.raises(ValueError, match="vectorize_particles=True and num_particles > 1"):
        TraceTailAdaptive_ELBO(num_particles=1)
    with pytest.raises(ValueError, match="tail_adaptive_beta must be negative"):
        TraceTailAdaptive_ELBO(num_particles=4, tail_adaptive_beta=0.5)

    def d_model():
        pyro.sample("b", dist.Bernoulli(0.5))

    def d_guide():
        pyro.sample("b", dist.Bernoulli(0.3))

    with pytest.raises(ValueError, match="guide site 'b' \\(Bernoulli\\) is not reparameterizable"):
        TraceTailAdaptive_ELBO(num_particles=4).loss(d_model, d_guide)
