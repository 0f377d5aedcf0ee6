"""Ember's lean Normal matches torch's to rounding, in value, gradient and behaviour."""

import pytest
import torch
from torch.distributions import Normal as TorchNormal

import ember.distributions as dist


@pytest.mark.parametrize("shape", [(), (5,), (3, 4)])
def test_normal_log_prob_and_grads_match_torch(shape):
    torch.manual_seed(1)
    loc = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    scale = torch.rand(shape, dtype=torch.float64).add(0.1).requires_grad_(True)
    x = torch.randn((2,) + shape, dtype=torch.float64) * 3
    ours = dist.Normal(loc, scale).log_prob(x)
    ref = TorchNormal(loc, scale).log_prob(x)
    assert torch.allclose(ours, ref, rtol=1e-12, atol=1e-12)
    g1 = torch.autograd.grad(ours.sum(), [loc, scale])
    g2 = torch.autograd.grad(ref.sum(), [loc, scale])
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_normal_mixed_arguments_and_expand():
    d = dist.Normal(torch.zeros(3), 1.0)
    assert d.batch_shape == (3,)
    e = dist.Normal(0.0, 1.0).expand([4, 2])
    assert isinstance(e, dist.Normal) and e.batch_shape == (4, 2)
    assert torch.allclose(e.log_prob(torch.zeros(4, 2)), TorchNormal(0.0, 1.0).log_prob(torch.zeros(4, 2)))
    assert dist.Normal(torch.zeros(2), torch.ones(2)).expand_by([5]).batch_shape == (5, 2)
    kl = torch.distributions.kl_divergence(dist.Normal(1.0, 2.0), dist.Normal(0.0, 1.0))
    assert kl.item() == pytest.approx(TorchNormal(1.0, 2.0).variance.item() / 2 + 0.5 - 0.5 - torch.tensor(2.0).log().item(), abs=1e-6)


def test_normal_validation_still_applies():
    with pytest.raises(ValueError):
        dist.Normal(torch.zeros(2), -torch.ones(2), validate_args=True)
    d = dist.Normal(torch.zeros(2), torch.ones(2), validate_args=True)
    assert torch.isfinite(d.log_prob(torch.zeros(2))).all()


@pytest.mark.parametrize("loc,scale", [(0.0, 1.0), (1.5, 5.0), (2, 3), (0, 0.5)])
def test_normal_with_python_numbers_matches_torch(loc, scale):
    for value in (torch.randn(4, 3, dtype=torch.float64), torch.randn(5), torch.tensor(0.3)):
        x = value.clone().requires_grad_(True)
        y = value.clone().requires_grad_(True)
        a = dist.Normal(loc, scale).log_prob(x)
        b = torch.distributions.Normal(float(loc), float(scale)).log_prob(y)
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b)
        (ga,) = torch.autograd.grad(a.sum(), x)
        (gb,) = torch.autograd.grad(b.sum(), y)
        torch.testing.assert_close(ga, gb)
    d = dist.Normal(loc, scale)
    assert d.batch_shape == () and d.expand((3,)).log_prob(torch.zeros(3)).shape == (3,)
    assert float(d.mean) == float(loc) and float(d.stddev) == float(scale)


@pytest.mark.parametrize("name", ["HalfCauchy", "HalfNormal"])
@pytest.mark.parametrize("scale", [5.0, 1, torch.tensor(2.0), torch.tensor([1.0, 2.0, 3.0])])
def test_half_distributions_match_torch(name, scale):
    ours, theirs = getattr(dist, name), getattr(torch.distributions, name)
    value = torch.tensor([-1.0, 0.0, 0.7])
    a = ours(scale, validate_args=False).log_prob(value)
    b = theirs(scale, validate_args=False).log_prob(value)
    torch.testing.assert_close(a, b)
    x = torch.tensor([0.2, 1.0, 4.0], requires_grad=True)
    (ga,) = torch.autograd.grad(ours(scale).log_prob(x).sum(), x)
    y = x.detach().clone().requires_grad_(True)
    (gb,) = torch.autograd.grad(theirs(scale).log_prob(y).sum(), y)
    torch.testing.assert_close(ga, gb)
    d = ours(scale)
    assert d.sample((2,)).shape == (2,) + d.batch_shape and (d.sample((100,)) >= 0).all()
    e = d.expand((4, 3))
    assert e.batch_shape == (4, 3) and e.log_prob(torch.ones(4, 3)).shape == (4, 3)
    torch.testing.assert_close(d.icdf(torch.tensor(0.5)), theirs(scale).icdf(torch.tensor(0.5)))
    torch.testing.assert_close(d.mean, theirs(scale).mean)


def test_half_cauchy_and_normal_validation_with_numbers():
    with pytest.raises(ValueError, match="scale"):
        dist.HalfCauchy(-1.0, validate_args=True)
    with pytest.raises(ValueError, match="scale.*HalfNormal"):
        dist.HalfNormal(-1.0, validate_args=True)
    with pytest.raises(ValueError, match="support"):
        dist.HalfNormal(1.0, validate_args=True).log_prob(torch.tensor(-1.0))
    with pytest.raises(ValueError, match="scale"):
        dist.Normal(0.0, -1.0, validate_args=True)
    with pytest.raises(ValueError, match="support"):
        dist.HalfCauchy(1.0, validate_args=True).log_prob(torch.tensor(-1.0))


@pytest.mark.parametrize("scale", [1.0, 2, 0.5])
def test_normal_tensor_loc_number_scale_matches_torch(scale):
    for loc in (torch.randn(3), torch.randn(2, 3, dtype=torch.float64), torch.tensor(1.0)):
        value = torch.randn((4,) + loc.shape, dtype=loc.dtype)
        lx = loc.clone().requires_grad_(True)
        ly = loc.clone().requires_grad_(True)
        a = dist.Normal(lx, scale).log_prob(value)
        b = torch.distributions.Normal(ly, float(scale)).log_prob(value)
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(torch.autograd.grad(a.sum(), lx)[0], torch.autograd.grad(b.sum(), ly)[0])
        d = dist.Normal(loc, scale)
        assert d.batch_shape == loc.shape and d.scale.shape == loc.shape
        assert d.expand((5,) + loc.shape).log_prob(value[0]).shape == (5,) + loc.shape
        assert d.rsample((2,)).shape == (2,) + loc.shape


def test_expanded_normal_with_numbers_matches_torch():
    for loc, scale in [(0.0, 1.0), (1.0, 2.0)]:
        d = dist.Normal(loc, scale).expand((3, 4))
        t = torch.distributions.Normal(float(loc), float(scale)).expand((3, 4))
        for value in (torch.randn(3, 4), torch.randn(5, 3, 4), torch.randn(4), torch.tensor(0.5), torch.randn(3, 1)):
            a, b = d.log_prob(value), t.log_prob(value)
            assert a.shape == b.shape, (value.shape, a.shape, b.shape)
            torch.testing.assert_close(a, b)
    e = dist.Normal(torch.zeros(2), 1.5).expand((3, 2))
    torch.testing.assert_close(e.log_prob(torch.ones(2)), torch.distributions.Normal(torch.zeros(2), 1.5).expand((3, 2)).log_prob(torch.ones(2)))


def test_delta_scores_its_own_draw_without_comparing():
    """A Delta's log_prob at its own sample is its log_density (what the comparison gives), with
    the same gradient; any other value is still compared."""
    v = torch.tensor([[0.5, -1.0], [2.0, 3.0]], requires_grad=True)
    ld = torch.tensor([0.25, -0.5], requires_grad=True)
    d = dist.Delta(v, log_density=ld, event_dim=1)
    x = d.rsample()
    assert x is v
    lp = d.log_prob(x)
    torch.testing.assert_close(lp, ld)
    torch.testing.assert_close(d.log_prob(v.detach().clone()), ld)  # equal values, another tensor
    assert d.log_prob(v.detach() + 1).eq(float("-inf")).all()
    gv, gld = torch.autograd.grad(lp.sum(), [v, ld], allow_unused=True)
    assert gv is None or (gv == 0).all()
    torch.testing.assert_close(gld, torch.ones(2))
    assert d.rsample((3,)).shape == (3, 2, 2)


@pytest.mark.parametrize("support", [
    torch.distributions.constraints.real, torch.distributions.constraints.positive,
    torch.distributions.constraints.nonnegative, torch.distributions.constraints.greater_than(2.0),
    torch.distributions.constraints.interval(-1.0, 3.0), torch.distributions.constraints.unit_interval,
    torch.distributions.constraints.simplex,
])
def test_lean_biject_to_is_biject_to_without_identity_steps(support):
    from torch.distributions import biject_to
    from torch.distributions.transforms import AffineTransform, ComposeTransform

    from ember.distributions.util import lean_biject_to

    lean, full = lean_biject_to(support), biject_to(support)
    u = torch.randn(4, 3)
    torch.testing.assert_close(lean(u), full(u))
    torch.testing.assert_close(lean.log_abs_det_jacobian(u, lean(u)), full.log_abs_det_jacobian(u, full(u)))
    parts = lean.parts if isinstance(lean, ComposeTransform) else [lean]
    assert not any(isinstance(p, AffineTransform) and p.loc == 0 and p.scale == 1 for p in parts)
    if support is torch.distributions.constraints.nonnegative:
        assert isinstance(lean, torch.distributions.transforms.ExpTransform)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bernoulli_logits_log_prob_matches_torch_with_fewer_recorded_operations(dtype):
    from torch.fx.experimental.proxy_tensor import make_fx

    logits = torch.tensor([-100.0, -30.0, -5.0, 0.0, 3.0, 19.0, 21.0, 35.0, 45.0, 100.0], dtype=dtype, requires_grad=True)
    for v in (torch.zeros(10, dtype=dtype), torch.ones(10, dtype=dtype), torch.full((3, 10), 0.3, dtype=dtype)):
        a = dist.Bernoulli(logits=logits, validate_args=False).log_prob(v)
        b = torch.distributions.Bernoulli(logits=logits, validate_args=False).log_prob(v)
        torch.testing.assert_close(a, b)
        (ga,) = torch.autograd.grad(a.sum(), logits)
        (gb,) = torch.autograd.grad(b.sum(), logits)
        torch.testing.assert_close(ga, gb)
    # built from probs: torch's formula
    p = torch.tensor([0.2, 0.9], dtype=dtype)
    torch.testing.assert_close(dist.Bernoulli(probs=p).log_prob(torch.tensor([1.0, 0.0], dtype=dtype)),
                               torch.distributions.Bernoulli(probs=p).log_prob(torch.tensor([1.0, 0.0], dtype=dtype)))
    d = dist.Bernoulli(logits=torch.zeros(3, dtype=dtype))
    assert type(d.expand((2, 3))) is dist.Bernoulli and d.expand((2, 3)).log_prob(torch.ones(2, 3, dtype=dtype)).shape == (2, 3)
    with pytest.raises(ValueError, match="support"):
        dist.Bernoulli(logits=torch.zeros(2), validate_args=True).log_prob(torch.tensor([0.5, 1.0]))

    def count(cls: type) -> int:
        def f(w):
            return torch.func.grad(lambda w: cls(logits=w, validate_args=False).log_prob(torch.ones(4, dtype=dtype)).sum())(w)
        gm = make_fx(f)(torch.zeros(4, dtype=dtype))
        return sum(n.op == "call_function" for n in gm.graph.nodes)

    assert count(dist.Bernoulli) * 2 < count(torch.distributions.Bernoulli)


def test_a_delta_on_integers_has_a_real_log_density():
    d = dist.Delta(torch.tensor([1, 2]), log_density=0.5)
    assert d.log_density.dtype == torch.get_default_dtype()
    torch.testing.assert_close(d.log_prob(d.rsample()), torch.tensor([0.5, 0.5]))
    torch.testing.assert_close(d.log_prob(torch.tensor([1, 3])), torch.tensor([0.5, float("-inf")]))
