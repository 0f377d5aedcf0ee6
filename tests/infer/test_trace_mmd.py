"""Trace_MMD: the loss on the draws it made (the model and guide record them) equals
``-mean log p(x | z) + mmd_scale * MMD(prior draws, guide draws)`` by hand, with a small RBF kernel."""

from __future__ import annotations

import pytest
import torch

import ember as pyro
import ember.distributions as dist
from ember.infer import SVI, Trace_MMD
from ember.optim import Adam

X = torch.tensor([0.4, -0.2, 1.1])


def rbf(lengthscale: float):
    def kernel(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:  # [N, D], [M, D] -> [N, M]
        return torch.exp(-0.5 * torch.cdist(A, B).pow(2) / lengthscale**2)

    return kernel


def mmd(P: torch.Tensor, Q: torch.Tensor, k) -> torch.Tensor:
    return k(P, P).mean() + k(Q, Q).mean() - 2 * k(P, Q).mean()


def _model_guide(calls: list, draws: list):
    def model():
        a = pyro.sample("a", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("n", 3):
            b = pyro.sample("b", dist.Normal(0.0, 2.0))
            pyro.sample("x", dist.Normal(a.sum(-1) + b, 1.0), obs=X)
        calls.append({"a": a.detach(), "b": b.detach()})

    def guide():
        m = pyro.param("m", torch.tensor([0.3, -0.1]))
        a = pyro.sample("a", dist.Normal(m, 0.5).to_event(1))
        with pyro.plate("n", 3):
            b = pyro.sample("b", dist.Normal(pyro.param("mb", torch.zeros(3)), 0.7))
        draws.append({"a": a.detach(), "b": b.detach()})

    return model, guide


def _hand_loss(q: dict, p: dict, kernels: dict, scales: dict) -> float:
    # q, p: {name: [P, D]}; q["a"] [P, 2], q["b"] [P, 3]
    loglik = dist.Normal(q["a"].sum(-1, keepdim=True) + q["b"], 1.0).log_prob(X).sum(-1).mean()
    return (-loglik + sum(scales[n] * mmd(p[n], q[n], kernels[n]) for n in ("a", "b"))).item()


def test_vectorized_loss_by_hand():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    calls: list = []
    draws: list = []
    model, guide = _model_guide(calls, draws)
    kernels = {"a": rbf(1.0), "b": rbf(2.0)}
    scales = {"a": 3.0, "b": 0.5}
    loss = Trace_MMD(kernel=kernels, mmd_scale=scales, num_particles=8)(model, guide)
    # calls: the nesting guess, the replay against the guide, the prior run
    n = 8
    q = {"a": draws[-1]["a"].reshape(n, 2), "b": draws[-1]["b"].reshape(n, 3)}
    p = {"a": calls[-1]["a"].reshape(n, 2), "b": calls[-1]["b"].reshape(n, 3)}
    assert torch.equal(calls[-2]["a"], draws[-1]["a"])  # the replay used the guide's draw
    assert not torch.equal(p["a"], q["a"])
    assert loss.item() == pytest.approx(_hand_loss(q, p, kernels, scales), rel=1e-5)


def test_particle_loop_loss_by_hand():
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    calls: list = []
    draws: list = []
    model, guide = _model_guide(calls, draws)
    k = rbf(1.5)
    elbo = Trace_MMD(kernel=k, mmd_scale=2, num_particles=4, vectorize_particles=False)
    loss = elbo.loss(model, guide)
    assert isinstance(loss, float)
    # each particle: the replay, then the prior run; the MMD pools the particles
    q = {n: torch.stack([d[n].reshape(-1) for d in draws]) for n in ("a", "b")}
    p = {n: torch.stack([c[n].reshape(-1) for c in calls[1::2]]) for n in ("a", "b")}
    assert q["a"].shape == (4, 2) and p["b"].shape == (4, 3)
    assert loss == pytest.approx(_hand_loss(q, p, {"a": k, "b": k}, {"a": 2.0, "b": 2.0}), rel=1e-5)


def test_svi_step_and_errors_name_the_site():
    pyro.clear_param_store()
    pyro.set_rng_seed(2)
    model, guide = _model_guide([], [])
    svi = SVI(model, guide, Adam({"lr": 0.01}), loss=Trace_MMD(kernel=rbf(1.0), num_particles=6))
    assert isinstance(svi.step(), float)
    before = pyro.param("m").detach().clone()
    svi.step()
    assert not torch.equal(before, pyro.param("m").detach())  # the MMD and likelihood reach the guide
    with pytest.raises(ValueError, match="'b'"):
        Trace_MMD(kernel={"a": rbf(1.0)}, num_particles=4)(model, guide)
    with pytest.raises(TypeError, match="mmd_scale"):
        Trace_MMD(kernel=rbf(1.0), mmd_scale="big")
    with pytest.raises(TypeError, match="kernel"):
        Trace_MMD(kernel=3.0)

    def discrete_model():
        pyro.sample("c", dist.Bernoulli(0.5))

    def discrete_guide():
        pyro.sample("c", dist.Bernoulli(0.3))

    with pytest.raises(ValueError, match="'c'"):
        Trace_MMD(kernel=rbf(1.0), num_particles=4)(discrete_model, discrete_guide)
