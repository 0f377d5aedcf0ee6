"""ember.infer.autoguide.utils (Pyro's pyro.infer.autoguide.utils): closed-form entropies, the
helpful errors, deep_setattr."""

import math

import pytest
import torch

import ember
import ember.distributions as dist
from ember.infer.autoguide.utils import deep_setattr, helpful_support_errors, mean_field_entropy
from ember.nn import PyroModule

HALF_LOG_2PI_E = 0.5 * (math.log(2 * math.pi) + 1)  # entropy of Normal(0, 1)
EULER = 0.5772156649015329


def model(x):
    a = ember.sample("a", dist.Normal(0.0, 2.0))
    ember.sample("g", dist.Gamma(torch.tensor([2.0, 3.0]), 1.0).to_event(1))
    ember.sample("obs", dist.Normal(a, 1.0), obs=x)


def test_mean_field_entropy_sums_site_entropies():
    gamma2 = 2 - (1 - EULER)  # a - log b + lgamma(a) + (1 - a) digamma(a), digamma(2) = 1 - gamma
    gamma3 = 3 + math.log(2) - 2 * (1.5 - EULER)
    total = mean_field_entropy(model, (torch.tensor(0.5),))
    assert total.item() == pytest.approx(HALF_LOG_2PI_E + math.log(2) + gamma2 + gamma3 + HALF_LOG_2PI_E, abs=1e-5)
    assert total.item() == pytest.approx(6.955818176269531, abs=1e-5)  # pyro-ppl 1.9.2
    only_a = mean_field_entropy(model, (torch.tensor(0.5),), whitelist=["a"])
    assert only_a.item() == pytest.approx(2.1120857137646181, abs=1e-6)
    assert mean_field_entropy(lambda: None, ()) == 0.0


def test_mean_field_entropy_skips_subsample_sites_and_broadcasts_plates():
    def plated():
        with ember.plate("p", 5, subsample_size=2):
            ember.sample("b", dist.Normal(0.0, 1.0))

    got = mean_field_entropy(plated, ())
    assert got.shape == (2,)
    torch.testing.assert_close(got, torch.full((2,), HALF_LOG_2PI_E))


@pytest.mark.parametrize("fn, match", [
    (dist.Bernoulli(0.5), "Continuous inference cannot handle discrete sample site 'z'.*hide=\\['z'\\]"),
    (dist.ProjectedNormal(torch.ones(3)), "spherical sample site 'z'.*ProjectedNormalReparam"),
])
def test_helpful_support_errors(fn, match):
    with pytest.raises(ValueError, match=match):
        with helpful_support_errors({"name": "z", "fn": fn}):
            raise NotImplementedError("no transform")


def test_helpful_support_errors_passes_other_errors():
    with pytest.raises(NotImplementedError, match="no transform"):
        with helpful_support_errors({"name": "z", "fn": dist.Normal(0.0, 1.0)}):
            raise NotImplementedError("no transform")
    with pytest.raises(KeyError):
        with helpful_support_errors({"name": "z", "fn": dist.Bernoulli(0.5)}):
            raise KeyError("other")


def test_deep_setattr_creates_pyro_modules():
    root = PyroModule()
    deep_setattr(root, "enc.layer.w", torch.nn.Parameter(torch.zeros(2)))
    assert isinstance(root.enc, PyroModule) and isinstance(root.enc.layer, PyroModule)
    assert [n for n, _ in root.named_parameters()] == ["enc.layer.w"]
    deep_setattr(root, "top", 3)
    assert root.top == 3
