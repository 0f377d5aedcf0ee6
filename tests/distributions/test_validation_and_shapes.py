"""Every distribution Ember adds to torch's: a bad argument names itself, and batch/event shapes
hold under expand and to_event (sample, log_prob)."""

import math

import pytest
import torch

import ember.distributions as dist

t = torch.tensor


def _vm_base():
    return dist.VonMises(t([0.3, -1.0]), t([2.0, 1.0])).to_event(1)


# name -> (a valid instance with a batch dim, a constructor with one bad argument, the argument's name)
CASES = {
    "GammaPoisson": (lambda: dist.GammaPoisson(t([1.0, 2.0]), t([1.0, 0.5])), lambda: dist.GammaPoisson(t([1.0]), t([-1.0])), "rate"),
    "BetaBinomial": (lambda: dist.BetaBinomial(t([1.0, 2.0]), t([1.0, 0.5]), 5), lambda: dist.BetaBinomial(t([-1.0]), t([1.0]), 5), "concentration1"),
    "DirichletMultinomial": (lambda: dist.DirichletMultinomial(t([[1.0, 2.0, 0.5]] * 2), 4),
                             lambda: dist.DirichletMultinomial(t([1.0, 2.0]), total_count=-1), "total_count"),
    "ZeroInflatedPoisson": (lambda: dist.ZeroInflatedPoisson(t([1.0, 2.0]), gate=t([0.1, 0.5])),
                            lambda: dist.ZeroInflatedPoisson(t([-1.0]), gate=t([0.1])), "rate"),
    "ZeroInflatedNegativeBinomial": (lambda: dist.ZeroInflatedNegativeBinomial(t([2.0, 3.0]), logits=t([0.1, 0.2]), gate=t([0.3, 0.1])),
                                     lambda: dist.ZeroInflatedNegativeBinomial(t([2.0]), logits=t([0.1]), gate=t([1.5])), "gate"),
    "ExtendedBinomial": (lambda: dist.ExtendedBinomial(t([3.0, 4.0]), probs=t([0.3, 0.5])),
                         lambda: dist.ExtendedBinomial(t([3.0]), probs=t([1.5])), "probs"),
    "ExtendedBetaBinomial": (lambda: dist.ExtendedBetaBinomial(t([1.0, 2.0]), t([1.0, 0.5]), 5),
                             lambda: dist.ExtendedBetaBinomial(t([1.0]), t([-1.0]), 5), "concentration0"),
    "LogNormalNegativeBinomial": (lambda: dist.LogNormalNegativeBinomial(t([2.0, 3.0]), t([0.1, 0.2]), t([0.5, 0.3])),
                                  lambda: dist.LogNormalNegativeBinomial(t([2.0]), t([0.1]), t([-0.5])), "multiplicative_noise_scale"),
    "TruncatedNormal": (lambda: dist.TruncatedNormal(t([0.0, 1.0]), t([1.0, 2.0]), low=-1.0, high=2.0),
                        lambda: dist.TruncatedNormal(t([0.0]), t([-1.0]), low=-1.0, high=2.0), "scale"),
    "FoldedDistribution": (lambda: dist.FoldedDistribution(dist.Normal(t([0.0, 1.0]), t([1.0, 2.0]))), None, None),
    "AsymmetricLaplace": (lambda: dist.AsymmetricLaplace(t([0.0, 1.0]), t([1.0, 2.0]), t([0.5, 2.0])),
                          lambda: dist.AsymmetricLaplace(t([0.0]), t([-1.0]), t([1.0])), "scale"),
    "SoftAsymmetricLaplace": (lambda: dist.SoftAsymmetricLaplace(t([0.0, 1.0]), t([1.0, 2.0]), t([0.5, 2.0]), t([1.0, 0.3])),
                              lambda: dist.SoftAsymmetricLaplace(t([0.0]), t([1.0]), t([-1.0])), "asymmetry"),
    "Logistic": (lambda: dist.Logistic(t([0.0, 1.0]), t([1.0, 2.0])), lambda: dist.Logistic(t([0.0]), t([0.0])), "scale"),
    "SkewLogistic": (lambda: dist.SkewLogistic(t([0.0, 1.0]), t([1.0, 2.0]), t([0.5, 2.0])),
                     lambda: dist.SkewLogistic(t([0.0]), t([1.0]), t([-0.5])), "asymmetry"),
    "MultivariateStudentT": (lambda: dist.MultivariateStudentT(t([3.0, 5.0]), torch.zeros(2, 3), torch.eye(3)),
                             lambda: dist.MultivariateStudentT(t(3.0), torch.zeros(3), -torch.eye(3)), "scale_tril"),
    "OrderedLogistic": (lambda: dist.OrderedLogistic(t([0.0, 1.0]), t([-1.0, 0.0, 2.0])),
                        lambda: dist.OrderedLogistic(t([0.0]), t([1.0, 0.0])), "cutpoints"),
    "MaskedMixture": (lambda: dist.MaskedMixture(t([True, False]), dist.Normal(0.0, 1.0), dist.Normal(3.0, 1.0)),
                      lambda: dist.MaskedMixture(t([1.0]), dist.Normal(0.0, 1.0), dist.Normal(3.0, 1.0)), "mask"),
    "MixtureOfDiagNormals": (lambda: dist.MixtureOfDiagNormals(torch.zeros(2, 3, 2), torch.ones(2, 3, 2), torch.zeros(2, 3)),
                             lambda: dist.MixtureOfDiagNormals(torch.zeros(3, 2), -torch.ones(3, 2), torch.zeros(3)), "coord_scale"),
    "VonMises3D": (lambda: dist.VonMises3D(t([[1.0, 0.0, 0.5], [0.0, 2.0, 0.0]])), lambda: dist.VonMises3D(t([1.0, 2.0])), "concentration"),
    "ProjectedNormal": (lambda: dist.ProjectedNormal(t([[1.0, 0.0, 0.5], [0.0, 2.0, 0.0]])), lambda: dist.ProjectedNormal(t([1.0])), "concentration"),
    "SineBivariateVonMises": (lambda: dist.SineBivariateVonMises(t([0.0, 1.0]), t([0.5, -1.0]), t([1.0, 2.0]), t([2.0, 1.0]), correlation=t([0.5, 0.1])),
                              lambda: dist.SineBivariateVonMises(t([0.0]), t([0.5]), t([-1.0]), t([2.0]), correlation=t([0.5])), "phi_concentration"),
    "SineSkewed": (lambda: dist.SineSkewed(_vm_base(), t([[0.2, -0.3], [0.1, 0.1]])), lambda: dist.SineSkewed(_vm_base(), t([0.9, 0.9])), "skewness"),
    "Stable": (lambda: dist.Stable(t([1.5, 0.8]), t([0.0, 0.5])), lambda: dist.Stable(t([1.5]), t([2.0])), "skew"),
    "LKJ": (lambda: dist.LKJ(3, t([1.0, 2.0])), lambda: dist.LKJ(3, t([-1.0])), "concentration"),
    "DiscreteHMM": (lambda: dist.DiscreteHMM(torch.zeros(2, 3), torch.zeros(4, 3, 3), dist.Normal(torch.randn(4, 3), 1.0)),
                    lambda: dist.DiscreteHMM(torch.zeros(3), torch.zeros(4, 2, 2), dist.Normal(torch.randn(4, 3), 1.0)), "transition_logits"),
    "GaussianHMM": (lambda: dist.GaussianHMM(dist.MultivariateNormal(torch.zeros(2, 2), torch.eye(2)), torch.eye(2), dist.MultivariateNormal(torch.zeros(2), torch.eye(2)),
                                             torch.ones(2, 3), dist.Normal(torch.zeros(3), 1.0).to_event(1), duration=4),
                    lambda: dist.GaussianHMM(dist.MultivariateNormal(torch.zeros(2), torch.eye(2)), torch.eye(3), dist.MultivariateNormal(torch.zeros(2), torch.eye(2)),
                                             torch.ones(2, 3), dist.Normal(torch.zeros(3), 1.0).to_event(1)), "transition_matrix"),
    "ImproperUniform": (lambda: dist.ImproperUniform(dist.constraints.real, (2,), ()), None, None),
    "Rejector": (lambda: dist.Rejector(dist.Exponential(t([1.0, 2.0])), lambda x: torch.where(x < 1, 0.0, -math.inf), torch.log(-torch.expm1(-t([1.0, 2.0])))),
                 None, None),
}
BAD = {k: v for k, v in CASES.items() if v[1] is not None}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_argument_names_itself(name):
    _, bad, arg = BAD[name]
    with pytest.raises(ValueError, match=arg):
        bad()


@pytest.mark.parametrize("name", sorted(CASES))
def test_expand_and_to_event_shapes(name):
    torch.manual_seed(0)
    d = CASES[name][0]()
    assert len(d.batch_shape) == 1 and d.batch_shape[0] == 2, d.batch_shape
    e = d.expand((3,) + d.batch_shape)
    assert e.batch_shape == (3, 2) and e.event_shape == d.event_shape
    if name == "ImproperUniform":
        x = torch.zeros((5, 3, 2) + tuple(d.event_shape))
    else:
        x = e.sample((5,))
    assert x.shape == (5, 3, 2) + tuple(d.event_shape)
    lp = e.log_prob(x)
    assert lp.shape == (5, 3, 2)
    torch.testing.assert_close(lp[:, 0], d.log_prob(x[:, 0]))
    ind = e.to_event(1)
    assert ind.batch_shape == (3,) and ind.event_shape == (2,) + tuple(d.event_shape)
    torch.testing.assert_close(ind.log_prob(x), lp.sum(-1))
