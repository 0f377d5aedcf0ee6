"""Pyro's extra KL divergences (``ember.distributions.kl``) and ``to_event`` with nested and
negative arguments. Expected values: closed forms, torch's MVN-MVN KL, and Pyro 1.9.2's numbers."""

import math

import pytest
import torch
from torch.distributions import kl_divergence

import ember.distributions as dist

V = torch.tensor([1.0, 2.0])
COV = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
Q = dist.MultivariateNormal(torch.tensor([0.3, -0.2]), COV)


def test_delta_against_a_distribution_is_minus_its_log_density():
    normal = dist.Normal(torch.zeros(2), torch.ones(2))
    expected = 0.5 * V**2 + 0.5 * math.log(2 * math.pi)  # [1.4189, 2.9189] in Pyro
    assert torch.allclose(kl_divergence(dist.Delta(V), normal), expected)
    assert torch.allclose(kl_divergence(dist.Delta(V).to_event(1), normal.to_event(1)), expected.sum())  # 4.3379
    assert torch.allclose(kl_divergence(dist.Delta(V, event_dim=1), normal.to_event(1)), expected.sum())
    gamma = dist.Gamma(torch.ones(2), 2.0)  # log density log 2 - 2 v
    assert torch.allclose(kl_divergence(dist.Delta(V), gamma), 2 * V - math.log(2))  # [1.3069, 3.3069]


def test_independent_normal_and_delta_against_a_multivariate_normal():
    loc, scale = torch.tensor([0.1, 0.2]), torch.tensor([0.7, 1.3])
    p = dist.Normal(loc, scale).to_event(1)
    as_mvn = dist.MultivariateNormal(loc, torch.diag(scale**2))
    expected = kl_divergence(as_mvn, Q)
    assert torch.allclose(kl_divergence(p, Q), expected) and torch.allclose(expected, torch.tensor(0.6055), atol=1e-4)
    assert torch.allclose(kl_divergence(dist.Delta(V).to_event(1), Q), -Q.log_prob(V))  # 4.5834 in Pyro
    assert torch.allclose(kl_divergence(Q, p), kl_divergence(Q, as_mvn))


def test_kl_between_batched_independent_normal_and_mvn_keeps_the_batch():
    loc, scale = torch.randn(3, 2), torch.rand(3, 2) + 0.5
    as_mvn = dist.MultivariateNormal(loc, torch.diag_embed(scale**2))
    p = dist.Normal(loc, scale).to_event(1)
    assert torch.allclose(kl_divergence(p, Q), kl_divergence(as_mvn, Q), atol=1e-5)
    assert torch.allclose(kl_divergence(Q, p), kl_divergence(Q, as_mvn), atol=1e-5)


def test_independent_pairs_with_different_reinterpreted_dims():
    d1 = dist.Delta(torch.ones(3, 2)).to_event(1)
    q1 = dist.Normal(torch.zeros(3, 2), 1.0).to_event(1)
    q2 = dist.Normal(torch.zeros(3, 2), 1.0).to_event(2)
    # the shared dim is summed, the rest is Delta || Independent(Normal, 1): six times -log N(1; 0, 1)
    assert torch.allclose(kl_divergence(d1, q2), torch.tensor(6 * (0.5 + 0.5 * math.log(2 * math.pi))))
    same = kl_divergence(dist.Normal(torch.zeros(3, 2), 1.0).to_event(1), dist.Normal(torch.ones(3, 2), 2.0).to_event(1))
    assert torch.allclose(same, torch.full((3,), 2 * (math.log(2) + 2 / 8 - 0.5)))  # 0.8863
    with pytest.raises(NotImplementedError, match=r"Independent\(Normal, 2\).*event_shape \(3, 2\).*Independent\(Normal, 1\)"):
        kl_divergence(dist.Normal(torch.zeros(3, 2), 1.0).to_event(2), q1)


def test_a_pair_without_a_kl_names_both_distributions():
    with pytest.raises(NotImplementedError, match=r"Independent\(Gamma, 1\).*MultivariateNormal"):
        kl_divergence(dist.Gamma(torch.ones(2), 1.0).to_event(1), Q)


def test_to_event_merges_nested_independents_and_accepts_negative_dims():
    d = dist.Normal(torch.zeros(3, 2), 1.0)
    assert d.to_event(1).to_event(-1) is d
    d2 = d.to_event(2).to_event(-1)
    assert type(d2) is dist.Independent and d2.base_dist is d and d2.batch_shape == (3,) and d2.event_shape == (2,)
    d11 = d.to_event(1).to_event(1)
    assert d11.base_dist is d and d11.reinterpreted_batch_ndims == 2
    assert d.to_event(2).to_event(-2) is d
    mvn = dist.MultivariateNormal(torch.zeros(3, 2), torch.eye(2))
    assert mvn.to_event(1).to_event(-1) is mvn


def test_to_event_refuses_to_remove_a_distributions_own_event_dims():
    with pytest.raises(ValueError, match=r"Normal.to_event\(-1\): only 0 of its event dims"):
        dist.Normal(torch.zeros(3, 2), 1.0).to_event(-1)
    with pytest.raises(ValueError, match=r"Independent.to_event\(-2\): only 1 of its event dims.*MultivariateNormal's own event_shape \(2,\)"):
        dist.MultivariateNormal(torch.zeros(3, 2), torch.eye(2)).to_event(1).to_event(-2)
    with pytest.raises(ValueError, match="only 1 batch dims"):
        dist.Normal(torch.zeros(3, 2), 1.0).to_event(1).to_event(2)
