"""Behaviours matched to Pyro after a differential test: each case's expected value is a closed
form or Pyro's own number."""

import math

import pytest
import torch

import ember.distributions as dist
from ember.distributions.util import validation_enabled


def test_multivariate_student_t_covariance_matrix_is_the_scale_matrix_as_in_pyro():
    L = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    m = dist.MultivariateStudentT(torch.tensor(5.0), torch.zeros(2), L)
    assert torch.allclose(m.covariance_matrix, torch.tensor([[4.0, 2.0], [2.0, 10.0]]))
    # inverse of [[4, 2], [2, 10]]: [[10, -2], [-2, 4]] / 36
    assert torch.allclose(m.precision_matrix, torch.tensor([[10.0, -2.0], [-2.0, 4.0]]) / 36)
    # the actual covariance is df / (df - 2) times the scale matrix: the variance says so
    assert torch.allclose(m.variance, torch.tensor([4.0, 10.0]) * 5 / 3)
    b = m.expand([3])
    assert b.covariance_matrix.shape == (3, 2, 2) and b.precision_matrix.shape == (3, 2, 2)


@pytest.mark.parametrize("make", [
    lambda: dist.Normal(0.0, -1.0), lambda: dist.Normal(0.0, 0.0), lambda: dist.Normal(torch.zeros(2), -1.0),
    lambda: dist.HalfCauchy(-1.0), lambda: dist.HalfNormal(-1.0), lambda: dist.HalfCauchy(0.0), lambda: dist.HalfNormal(0.0),
])
@pytest.mark.parametrize("value", [0.0, 1.0])
def test_a_non_positive_number_scale_gives_nan_without_validation_as_torch(make, value):
    with validation_enabled(False):
        lp = make().log_prob(torch.tensor(value))
    assert torch.isnan(lp).all()


def test_a_half_distribution_with_a_bad_scale_still_gives_minus_inf_below_zero():
    with validation_enabled(False):
        assert dist.HalfNormal(-1.0).log_prob(torch.tensor(-1.0)) == -math.inf
