"""Module layout of ember.distributions, Pyro's extra constraints and their biject_to transforms."""

import importlib
import math

import pytest
import torch
from torch.autograd.functional import jacobian

import ember.distributions as dist
from ember.distributions import constraints, transforms
from ember.distributions.util import broadcast_shape, is_identically_zero, scale_and_mask, sum_leftmost, sum_rightmost


def test_module_paths():
    for path, names in {
        "ember.distributions.torch": ["Normal", "Beta", "MultivariateNormal", "TransformedDistribution"],
        "ember.distributions.util": ["broadcast_shape", "scale_and_mask", "sum_rightmost", "is_identically_zero", "sum_leftmost"],
        "ember.distributions.constraints": ["ordered_vector", "positive_ordered_vector", "sphere", "corr_matrix", "softplus_positive",
                                           "softplus_lower_cholesky", "unit_lower_cholesky", "integer_interval", "positive", "real"],
        "ember.distributions.transforms": ["OrderedTransform", "Permute", "ExpTransform", "TransformModule", "ConditionalTransformModule"],
        "ember.distributions.torch_distribution": ["TorchDistribution", "TorchDistributionMixin", "MaskedDistribution"],
        "ember.distributions.empirical": ["Empirical"],
    }.items():
        mod = importlib.import_module(path)
        for name in names:
            assert hasattr(mod, name), f"{path}.{name}"
    for mod in (dist, transforms, constraints, importlib.import_module("ember.distributions.util"), importlib.import_module("ember.nn")):
        missing = [n for n in mod.__all__ if not hasattr(mod, n)]
        assert not missing, f"{mod.__name__} exports names it does not define: {missing}"
    from ember.infer import Empirical

    assert Empirical is dist.Empirical
    assert dist.constraints.positive is torch.distributions.constraints.positive


def test_util_validation_switches():
    from ember.distributions.util import is_validation_enabled, validation_enabled

    before = is_validation_enabled()
    with validation_enabled(False):
        assert not is_validation_enabled()
        dist.Normal(0.0, -1.0)  # no error while validation is off
    assert is_validation_enabled() == before


def test_util_helpers():
    assert broadcast_shape((2, 1), (3,)) == (2, 3)
    with pytest.raises(ValueError, match="cannot be broadcast"):
        broadcast_shape((2,), (3,))
    with pytest.raises(ValueError):
        broadcast_shape((1,), (3,), strict=True)
    x = torch.arange(24.0).reshape(2, 3, 4)
    assert torch.equal(sum_rightmost(x, 2), x.sum((-1, -2)))
    assert torch.equal(sum_rightmost(x, -1), x.sum((-1, -2)))
    assert torch.equal(sum_leftmost(x, 2), x.sum((0, 1)))
    assert is_identically_zero(0) and not is_identically_zero(torch.tensor(0.0))
    lp = torch.tensor([-float("inf"), 1.0])
    assert torch.equal(scale_and_mask(lp, 2.0, torch.tensor([False, True])), torch.tensor([0.0, 2.0]))


@pytest.mark.parametrize(
    "constraint, dim",
    [
        (constraints.ordered_vector, 4),
        (constraints.positive_ordered_vector, 4),
        (constraints.corr_matrix, 3),
        (constraints.softplus_positive, None),
        (constraints.softplus_lower_cholesky, 3),
        (constraints.unit_lower_cholesky, 3),
    ],
)
def test_biject_to(constraint, dim):
    torch.manual_seed(0)
    t = dist.biject_to(constraint)
    if constraint is constraints.corr_matrix:
        x = torch.randn(5, dim * (dim - 1) // 2)
    elif constraint.event_dim == 2:
        x = torch.randn(5, dim, dim)
    elif dim is None:
        x = torch.randn(5)
    else:
        x = torch.randn(5, dim)
    y = t(x)
    assert constraint.check(y).all()
    x2 = t.inv(y)
    if constraint.event_dim == 2 and constraint is not constraints.corr_matrix:
        x, x2 = x.tril(-1), x2.tril(-1)  # only the free coordinates come back for the diagonal-free transforms
        if constraint is constraints.softplus_lower_cholesky:
            x, x2 = t.inv(y), t.inv(t(t.inv(y)))
    torch.testing.assert_close(x2, x, atol=1e-4, rtol=1e-4)


def _free(y, kind):
    n = y.size(-1)
    i, j = torch.tril_indices(n, n, -1 if kind == "strict" else 0)
    return y[..., i, j]


def test_ordered_log_det_matches_autograd():
    x = torch.randn(4, dtype=torch.double)
    t = transforms.OrderedTransform()
    J = jacobian(t, x)
    torch.testing.assert_close(t.log_abs_det_jacobian(x, t(x)), torch.linalg.slogdet(J)[1])


def test_corr_matrix_cholesky_log_det_matches_autograd():
    torch.manual_seed(1)
    n = 4
    z = torch.randn(n * (n - 1) // 2, dtype=torch.double)
    L = torch.distributions.transforms.CorrCholeskyTransform()(z)
    C = L @ L.T
    t = transforms.CorrMatrixCholeskyTransform()
    i, j = torch.tril_indices(n, n, -1)

    def f(c_free):
        c = torch.eye(n, dtype=c_free.dtype).index_put((i, j), c_free).index_put((j, i), c_free)
        return t(c)[i, j]

    J = jacobian(f, C[i, j])
    torch.testing.assert_close(t.log_abs_det_jacobian(C, L), torch.linalg.slogdet(J)[1])


def test_softplus_lower_cholesky_log_det_matches_autograd():
    x = torch.randn(3, 3, dtype=torch.double)
    t = transforms.SoftplusLowerCholeskyTransform()
    i, j = torch.tril_indices(3, 3)

    def f(free):
        return t(torch.zeros(3, 3, dtype=free.dtype).index_put((i, j), free))[i, j]

    J = jacobian(f, x[i, j])
    torch.testing.assert_close(t.log_abs_det_jacobian(x.tril(), t(x)), torch.linalg.slogdet(J)[1])


def test_sphere_transform_and_check():
    t = dist.transform_to(constraints.sphere)
    y = t(torch.randn(6, 3))
    assert constraints.sphere.check(y).all()
    assert not constraints.sphere.check(2 * y).any()


def test_constraint_checks():
    assert constraints.ordered_vector.check(torch.tensor([1.0, 2.0, 3.0]))
    assert not constraints.ordered_vector.check(torch.tensor([1.0, 3.0, 2.0]))
    assert not constraints.positive_ordered_vector.check(torch.tensor([-1.0, 2.0]))
    assert not constraints.corr_matrix.check(torch.tensor([[1.0, 2.0], [2.0, 1.0]]))
    assert constraints.unit_lower_cholesky.check(torch.tensor([[1.0, 0.0], [5.0, 1.0]]))
    assert not constraints.unit_lower_cholesky.check(torch.tensor([[2.0, 0.0], [5.0, 1.0]]))
    assert constraints.integer.check(torch.tensor(-3.0)) and not constraints.integer.check(torch.tensor(0.5))


def test_permute_and_lower_cholesky_affine():
    x = torch.randn(5, 3, dtype=torch.double)
    p = transforms.Permute(torch.tensor([2, 0, 1]))
    torch.testing.assert_close(p.inv(p(x)), x)
    assert torch.equal(p.log_abs_det_jacobian(x, p(x)), torch.zeros(5, dtype=torch.double))
    with pytest.raises(ValueError, match="permutation"):
        transforms.Permute(torch.tensor([0, 0, 1]))
    L = torch.tensor([[2.0, 0.0, 0.0], [0.5, 1.5, 0.0], [-1.0, 0.3, 0.7]], dtype=torch.double)
    a = transforms.LowerCholeskyAffine(torch.ones(3, dtype=torch.double), L)
    torch.testing.assert_close(a.inv(a(x)), x)
    torch.testing.assert_close(a.log_abs_det_jacobian(x, a(x)), torch.linalg.slogdet(L)[1].expand(5))


@pytest.mark.parametrize("t", [transforms.ELUTransform(), transforms.LeakyReLUTransform()], ids=["elu", "leaky_relu"])
def test_elementwise_activation_transforms(t):
    x = torch.linspace(-3, 3, 13, dtype=torch.double)
    y = t(x)
    torch.testing.assert_close(t.inv(y.clone()), x)
    d = torch.autograd.functional.jacobian(t, x).diagonal()
    torch.testing.assert_close(t.log_abs_det_jacobian(x, y), d.log())


def test_cholesky_transform_log_det_matches_autograd():
    n = 3
    A = torch.randn(n, n, dtype=torch.double)
    S = A @ A.T + n * torch.eye(n, dtype=torch.double)
    t = transforms.CholeskyTransform()
    i, j = torch.tril_indices(n, n)

    def f(free):
        m = torch.zeros(n, n, dtype=free.dtype).index_put((i, j), free)
        m = m + m.tril(-1).T
        return t(m)[i, j]

    J = jacobian(f, S[i, j])
    torch.testing.assert_close(t.log_abs_det_jacobian(S, t(S)), torch.linalg.slogdet(J)[1])
    torch.testing.assert_close(t.inv(t(S)), S)


def test_iterated():
    c = transforms.iterated(3, transforms.planar, 2)
    assert len(c.parts) == 3 and len(list(c.parameters())) == 9
    with pytest.raises(ValueError, match="repeats"):
        transforms.iterated(0, transforms.planar, 2)


@pytest.mark.parametrize("smooth", [0.0, 1.0, -0.5])
def test_discrete_cosine_transform(smooth):
    t = transforms.DiscreteCosineTransform(dim=-2, smooth=smooth)
    x = torch.randn(3, 6, 2, dtype=torch.double)
    y = t(x)
    torch.testing.assert_close(t.inv(y), x)
    J = jacobian(lambda v: t(v.reshape(6, 2)).reshape(-1), x[0].reshape(-1))
    torch.testing.assert_close(t.log_abs_det_jacobian(x, y), torch.linalg.slogdet(J)[1].expand(3))
    if smooth == 0.0:
        # orthonormal: norms kept; the DC coefficient is the scaled mean
        torch.testing.assert_close(y.norm(dim=-2), x.norm(dim=-2))
        torch.testing.assert_close(y[:, 0], x.sum(-2) / math.sqrt(6))



@pytest.mark.parametrize("n", [1, 2, 5, 8, 11])
@pytest.mark.parametrize("flip", [False, True])
def test_haar_transform(n, flip):
    t = transforms.HaarTransform(dim=-2, flip=flip)
    x = torch.randn(3, n, 2, dtype=torch.double)
    y = t(x)
    torch.testing.assert_close(t.inv(y), x)
    torch.testing.assert_close(y.norm(dim=-2), x.norm(dim=-2))  # orthonormal
    assert torch.equal(t.log_abs_det_jacobian(x, y), torch.zeros(3, dtype=torch.double))
    if n == 2 and not flip:
        torch.testing.assert_close(y[:, :, 0], torch.stack([x[:, 0, 0] + x[:, 1, 0], x[:, 0, 0] - x[:, 1, 0]], -1) / math.sqrt(2))



@pytest.mark.parametrize("anchor", [0.0, 1.5])
def test_simplex_to_ordered(anchor):
    t = transforms.SimplexToOrderedTransform(anchor)
    x = torch.distributions.Dirichlet(torch.ones(4, dtype=torch.double)).sample((3,))
    y = t(x)
    assert y.shape == (3, 3) and bool(constraints.ordered_vector.check(y).all())
    torch.testing.assert_close(t.inv(y), x)
    # log-det on the free coordinates x[:-1] (x[-1] = 1 - sum)
    J = jacobian(lambda v: t(torch.cat([v, 1 - v.sum(-1, keepdim=True)], -1)), x[0, :-1])
    torch.testing.assert_close(t.log_abs_det_jacobian(x, y)[0], torch.linalg.slogdet(J)[1])
    assert t.forward_shape((5, 4)) == (5, 3) and t.inverse_shape((5, 3)) == (5, 4)


def test_positive_power_transform():
    t = transforms.PositivePowerTransform(2.5)
    x = torch.rand(6, dtype=torch.double) + 0.1
    y = t(x)
    torch.testing.assert_close(t.inv(y), x)
    torch.testing.assert_close(t.log_abs_det_jacobian(x, y), jacobian(t, x).diagonal().log())
    with pytest.raises(ValueError, match="exponent"):
        transforms.PositivePowerTransform(-1.0)
