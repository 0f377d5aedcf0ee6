"""ember.ops.special (Pyro's pyro.ops.special): closed forms, and values computed with pyro-ppl 1.9.2."""

import math

import pytest
import torch

from ember.distributions import Multinomial
from ember.ops.special import get_quad_rule, log_beta, log_binomial, log_I1, safe_log, sparse_multinomial_likelihood

X = torch.tensor([0.3, 1.5, 4.0], dtype=torch.float64)
Y = torch.tensor([2.0, 0.7, 10.0], dtype=torch.float64)


def test_safe_log_value_and_clamped_gradient():
    x = torch.tensor([0.0, 1.0, 4.0], requires_grad=True)
    y = safe_log(x)
    assert y[0].item() == -math.inf and y[2].item() == pytest.approx(math.log(4.0))
    y.sum().backward()
    assert x.grad.tolist() == [1 / torch.finfo(torch.float32).eps, 1.0, 0.25]  # 8388608 = 1 / eps at 0


def test_log_beta_exact_closed_forms():
    # B(2, 3) = 1! 2! / 4! = 1/12; B(1, 1) = 1; B(1/2, 1/2) = pi
    got = log_beta(torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64), torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(got, torch.tensor([math.log(1 / 12), 0.0, math.log(math.pi)], dtype=torch.float64))


@pytest.mark.parametrize("tol, expected", [
    (0.1, [0.8761125014272184, -0.012566092052912925, -7.977240536939705]),
    (0.03, [0.915491512884627, 0.018186409777512846, -7.971981211999365]),
])
def test_log_beta_stirling_matches_pyro_and_its_bound(tol, expected):
    got = log_beta(X, Y, tol=tol)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    assert (got - log_beta(X, Y)).abs().max() < tol


def test_log_binomial_exact_and_approximate():
    n = torch.tensor([10.0, 7.0, 5.0], dtype=torch.float64)
    k = torch.tensor([3.0, 7.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(log_binomial(n, k), torch.tensor([math.log(120), 0.0, math.log(10)], dtype=torch.float64))
    torch.testing.assert_close(log_binomial(n[:2], k[:2], tol=0.05),
                               torch.tensor([4.8037470649257195, 0.02843481363040823], dtype=torch.float64), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="tol"):
        log_binomial(n, k, tol=-1)


def test_log_I1_shapes_and_values():
    # I_0(0.5) = 1.0634833707413236, I_1(3) = 3.953370217402609 (Abramowitz & Stegun), as pyro gives to ~1e-9
    z = torch.tensor([0.5, 3.0], dtype=torch.float64)
    got = log_I1(2, z)
    assert got.shape == (3, 2)
    pyro_values = [[0.061549719181704786, 1.5853076174403418], [-1.355205447090572, 1.3745684283927804],
                   [-3.444956525889036, 0.8088001317472663]]
    torch.testing.assert_close(got, torch.tensor(pyro_values, dtype=torch.float64), rtol=0, atol=1e-7)
    assert got[0, 0].item() == pytest.approx(math.log(1.0634833707413236), abs=1e-12)
    assert got[1, 1].item() == pytest.approx(math.log(3.953370217402609), abs=1e-12)
    assert log_I1(1, torch.tensor(2.0, dtype=torch.float64)).shape == (2, 1)  # a scalar counts as shape (1,)
    assert log_I1(1, torch.ones(2, 3)).shape == (2, 2, 3)


def test_get_quad_rule_integrates_normal_moments():
    points, log_weights = get_quad_rule(32, torch.zeros(1, dtype=torch.float64))
    assert points.shape == log_weights.shape == (32,) and points.dtype == torch.float64
    w = log_weights.exp()
    assert w.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert (w * (4.0 * points) ** 2).sum().item() == pytest.approx(16.0, abs=1e-9)  # Var of N(0, 4)
    assert (w * points**4).sum().item() == pytest.approx(3.0, abs=1e-9)
    p5, lw5 = get_quad_rule(5, torch.zeros(1))
    assert p5.dtype == torch.float32
    torch.testing.assert_close(p5, torch.tensor([-2.8569700138728056, -1.355626179974266, 0.0, 1.355626179974266, 2.8569700138728056]))
    torch.testing.assert_close(lw5, torch.tensor([-4.4867285825488, -1.504735964559183, -0.6286086594223742, -1.504735964559183,
                                                  -4.4867285825488]))


def test_sparse_multinomial_likelihood_equals_dense():
    logits = torch.tensor([[0.1, -0.3, 0.5], [1.0, 0.0, -1.0]], dtype=torch.float64)
    value = torch.tensor([[2.0, 0.0, 1.0], [0.0, 4.0, 1.0]], dtype=torch.float64)
    nnz = value.nonzero(as_tuple=True)
    got = sparse_multinomial_likelihood(value.sum(-1), (logits - logits.logsumexp(-1, True))[nnz], value[nnz])
    assert got.item() == pytest.approx(-8.383731162305175, abs=1e-12)
    dense = Multinomial(total_count=3, logits=logits[:1]).log_prob(value[:1]) + Multinomial(5, logits=logits[1:]).log_prob(value[1:])
    assert got.item() == pytest.approx(dense.item(), abs=1e-12)
