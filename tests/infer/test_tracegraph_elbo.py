"""TraceGraph_ELBO: unbiased, lower variance, per-datum costs, baselines."""

import math

import pytest
import torch
import torch.nn as nn

import ember as pyro
import ember.distributions as dist
from ember.infer import SVI, Trace_ELBO, TraceGraph_ELBO
from ember.optim import Adam

XA, XB = torch.tensor(1.7), torch.tensor(-0.4)


def model():
    a = pyro.sample("a", dist.Bernoulli(0.4))
    pyro.sample("xa", dist.Normal(2.0 * a, 1.0), obs=XA)
    b = pyro.sample("b", dist.Bernoulli(0.6))
    pyro.sample("xb", dist.Normal(-2.0 * b, 1.0), obs=XB)


def make_guide(baseline=None):
    def guide():
        la = pyro.param("la", torch.tensor(0.3))
        lb = pyro.param("lb", torch.tensor(-0.2))
        pyro.sample("a", dist.Bernoulli(logits=la))
        pyro.sample("b", dist.Bernoulli(logits=lb), infer={"baseline": baseline} if baseline else {})

    return guide


def exact_grads():
    la = torch.tensor(0.3, requires_grad=True)
    lb = torch.tensor(-0.2, requires_grad=True)
    elbo = 0.0
    for a in (0.0, 1.0):
        for b in (0.0, 1.0):
            qa, qb = torch.sigmoid(la), torch.sigmoid(lb)
            q = (qa if a else 1 - qa) * (qb if b else 1 - qb)
            logp = math.log(0.4 if a else 0.6) + math.log(0.6 if b else 0.4)
            logp += torch.distributions.Normal(2.0 * a, 1.0).log_prob(XA) + torch.distributions.Normal(-2.0 * b, 1.0).log_prob(XB)
            elbo = elbo + q * (logp - torch.log(q))
    (-elbo).backward()
    return la.grad.item(), lb.grad.item()


def grad_samples(elbo, guide, n):
    out = []
    store = pyro.get_param_store()
    for _ in range(n):
        elbo.loss_and_grads(model, guide)
        ps = dict(store.named_parameters())
        out.append([ps["la"].grad.item(), ps["lb"].grad.item()])
        for p in ps.values():
            p.grad = None
    return torch.tensor(out)


def test_unbiased_and_lower_variance_than_trace_elbo():
    n = 3000
    ga, gb = exact_grads()
    tg = grad_samples(TraceGraph_ELBO(), make_guide(), n)
    tr = grad_samples(Trace_ELBO(), make_guide(), n)
    for g in (tg, tr):
        se = g.std(0) / math.sqrt(n)
        assert abs(g[:, 0].mean().item() - ga) < 5 * se[0].item()
        assert abs(g[:, 1].mean().item() - gb) < 5 * se[1].item()
    # site b's downstream cost excludes a and xa: variance drops
    ratio = (tg[:, 1].var() / tr[:, 1].var()).item()
    assert ratio < 0.8, ratio


def test_decaying_average_baseline_reduces_variance_further():
    n = 3000
    _, gb = exact_grads()
    plain = grad_samples(TraceGraph_ELBO(), make_guide(), n)
    avg = grad_samples(TraceGraph_ELBO(), make_guide({"use_decaying_avg_baseline": True, "baseline_beta": 0.95}), n)
    assert abs(avg[200:, 1].mean().item() - gb) < 5 * avg[200:, 1].std().item() / math.sqrt(n - 200)
    assert avg[200:, 1].var() < 0.8 * plain[200:, 1].var()


def test_nn_baseline_trains_on_its_own_loss_and_reduces_variance():
    net = nn.Linear(1, 1)
    nn.init.zeros_(net.weight)
    nn.init.zeros_(net.bias)

    def guide():
        pyro.module("bl", net)
        la = pyro.param("la", torch.tensor(0.3))
        lb = pyro.param("lb", torch.tensor(-0.2))
        pyro.sample("a", dist.Bernoulli(logits=la))
        pyro.sample("b", dist.Bernoulli(logits=lb), infer={"baseline": {"nn_baseline": lambda x: net(x).squeeze(-1), "nn_baseline_input": torch.ones(1)}})

    # train only the baseline (guide params frozen by a zero learning rate)
    svi = SVI(model, guide, Adam(lambda m, p: {"lr": 0.05 if m == "bl" else 0.0}), TraceGraph_ELBO())
    for _ in range(400):
        svi.step()
    assert abs(net.bias.item()) > 0.1  # it learned the mean downstream cost
    assert pyro.param("la").item() == pytest.approx(0.3)
    n = 2000
    _, gb = exact_grads()
    g = grad_samples(TraceGraph_ELBO(), guide, n)
    plain = grad_samples(TraceGraph_ELBO(), make_guide(), n)
    assert abs(g[:, 1].mean().item() - gb) < 5 * g[:, 1].std().item() / math.sqrt(n)
    assert g[:, 1].var() < 0.8 * plain[:, 1].var()


def test_per_datum_costs_in_nested_plates():
    """With one particle the gradient of datum i's logit is d log q(z_i) * cost_i, with
    cost_i computed from datum i's terms only (Rao-Blackwellised along both plates)."""
    x = torch.randn(3, 4)

    def model():
        with pyro.plate("rows", 3, dim=-2):
            with pyro.plate("cols", 4, dim=-1):
                z = pyro.sample("z", dist.Bernoulli(0.5))
                pyro.sample("x", dist.Normal(3.0 * z, 1.0), obs=x)

    def guide():
        logits = pyro.param("logits", torch.zeros(3, 4))
        with pyro.plate("rows", 3, dim=-2):
            with pyro.plate("cols", 4, dim=-1):
                pyro.sample("z", dist.Bernoulli(logits=logits))

    with pyro.poutine.seed(rng_seed=5):
        TraceGraph_ELBO().loss_and_grads(model, guide)
    store = pyro.get_param_store()
    grad = dict(store.named_parameters())["logits"].grad
    with pyro.poutine.seed(rng_seed=5):
        z = torch.distributions.Bernoulli(logits=torch.zeros(3, 4)).sample()
    cost = math.log(0.5) + torch.distributions.Normal(3.0 * z, 1.0).log_prob(x) - math.log(0.5)
    # d/dlogit log q(z) = z - sigmoid(0); the loss is -ELBO, whose direct term +log q(z)
    # adds (z - 0.5) (zero in expectation) to the score-function term -(z - 0.5) * cost
    expected = -(z - 0.5) * cost + (z - 0.5)
    assert torch.allclose(grad, expected, atol=1e-5)


def test_baseline_errors():
    def guide_bad_shape():
        lb = pyro.param("lb", torch.tensor(-0.2))
        pyro.param("la", torch.tensor(0.3))
        pyro.sample("a", dist.Bernoulli(0.5))
        pyro.sample("b", dist.Bernoulli(logits=lb), infer={"baseline": {"baseline_value": torch.zeros(3)}})

    with pytest.raises(ValueError, match=r"site 'b'.*\(3,\).*\(\)"):
        TraceGraph_ELBO().loss_and_grads(model, guide_bad_shape)

    with pytest.raises(ValueError, match="unknown baseline options"):
        TraceGraph_ELBO().loss_and_grads(model, make_guide({"use_decaying_avg": True}))


def test_loss_and_loss_and_grads_agree():
    guide = make_guide()
    with pyro.poutine.seed(rng_seed=1):
        a = TraceGraph_ELBO().loss(model, guide)
    with pyro.poutine.seed(rng_seed=1):
        b = TraceGraph_ELBO().loss_and_grads(model, guide)
    with pyro.poutine.seed(rng_seed=1):
        c = Trace_ELBO().loss(model, guide)
    assert a == pytest.approx(b) and a == pytest.approx(c)
