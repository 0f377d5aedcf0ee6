"""Pyro's helper names in pyro.infer / pyro.infer.util / pyro.infer.importance."""

import math

import pytest
import torch

import ember as pyro
import ember.distributions as dist
from ember import poutine
from ember.infer import enable_validation, is_validation_enabled
from ember.infer.importance import psis_diagnostic, vectorized_importance_weights
from ember.infer.util import is_identically_zero, plate_log_prob_sum, torch_item, zero_grads

DATA = torch.tensor([0.5, -1.0, 2.0])


def model():
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", 3):
        pyro.sample("x", dist.Normal(z, 1.0), obs=DATA)


def prior_guide():
    pyro.sample("z", dist.Normal(0.0, 1.0))


def test_small_helpers():
    assert torch_item(3) == 3 and torch_item(torch.tensor(2.5)) == 2.5
    assert is_identically_zero(0) and is_identically_zero(0.0)
    assert not is_identically_zero(torch.tensor(0.0)) and not is_identically_zero(1) and not is_identically_zero(False)
    a, b = torch.ones(2, requires_grad=True), torch.ones(3, requires_grad=True)
    (a.sum() * 2).backward()
    zero_grads([a, b])
    assert torch.equal(a.grad, torch.zeros(2)) and b.grad is None


def test_enable_validation_is_exported_from_infer():
    try:
        enable_validation(False)
        assert not is_validation_enabled()
    finally:
        enable_validation(True)
    assert is_validation_enabled()


def test_plate_log_prob_sum_keeps_the_plate_dim():
    tr = poutine.trace(model).get_trace()
    z = tr.nodes["z"]["value"]
    expected = dist.Normal(0.0, 1.0).log_prob(z) + dist.Normal(z, 1.0).log_prob(DATA)
    assert torch.allclose(plate_log_prob_sum(tr, "data"), expected)
    with pytest.raises(ValueError, match="no sample site .* plate named 'nope'"):
        plate_log_prob_sum(tr, "nope")


def test_vectorized_importance_weights_are_the_likelihood_under_prior_proposals():
    log_w, model_trace, guide_trace = vectorized_importance_weights(model, prior_guide, num_samples=7, max_plate_nesting=1)
    z = guide_trace.nodes["z"]["value"].reshape(7)
    assert log_w.shape == (7,)
    assert torch.allclose(log_w, dist.Normal(z[:, None], 1.0).log_prob(DATA).sum(-1), atol=1e-5)
    norm, _, _ = vectorized_importance_weights(model, prior_guide, num_samples=7, max_plate_nesting=1, normalized=True)
    assert float(torch.logsumexp(norm, 0)) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="max_plate_nesting"):
        vectorized_importance_weights(model, prior_guide, num_samples=7)


def test_psis_diagnostic_separates_narrow_from_wide_guides():
    def prior_only():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    def narrow():
        pyro.sample("z", dist.Normal(0.0, 0.4))  # weights p/q grow without bound in the tails

    def wide():
        pyro.sample("z", dist.Normal(0.0, 2.0))  # weights bounded by 2 * exp(0)

    torch.manual_seed(0)
    k_narrow = psis_diagnostic(prior_only, narrow, num_particles=2000, max_simultaneous_particles=500, max_plate_nesting=0)
    k_wide = psis_diagnostic(prior_only, wide, num_particles=2000, max_plate_nesting=0)
    assert k_narrow > 0.7 and k_wide < 0.5
    assert not math.isnan(k_narrow)
    with pytest.raises(ValueError, match="divisible"):
        psis_diagnostic(prior_only, wide, num_particles=1000, max_simultaneous_particles=300)
