"""Normalizing flows: inverse(forward(x)) == x, log_abs_det_jacobian against the log|det| of
torch.autograd.functional.jacobian, conditional variants, and a trained flow beating a
Gaussian on held-out 2-D data."""

import math

import pytest
import torch
from torch.autograd.functional import jacobian

import ember.distributions as dist
from ember.distributions import transforms as T
from ember.nn import AutoRegressiveNN, DenseNN

D = 4


def _flows():
    torch.manual_seed(0)
    return {
        "affine_autoregressive": T.affine_autoregressive(D),
        "affine_autoregressive_stable": T.affine_autoregressive(D, stable=True),
        "affine_coupling": T.affine_coupling(D),
        "spline_linear": T.spline(D, order="linear"),
        "spline_quadratic": T.spline(D, order="quadratic"),
        "spline_coupling": T.spline_coupling(D),
        "spline_coupling_identity": T.SplineCoupling(D, 1, DenseNN(1, [8], [3 * 4, 3 * 4, 3 * 3]), count_bins=4, order="quadratic", identity=True),
        "spline_autoregressive_linear": T.spline_autoregressive(D, count_bins=5),
        "spline_autoregressive_quadratic": T.spline_autoregressive(D, order="quadratic"),
        "planar": T.planar(D),
        "radial": T.radial(D),
        "householder": T.householder(D, 3),
        "sylvester": T.sylvester(D, 2),
        "neural_autoregressive": T.neural_autoregressive(D, width=6),
        "neural_autoregressive_tanh": T.neural_autoregressive(D, width=5, activation="tanh"),
        "neural_autoregressive_elu": T.neural_autoregressive(D, width=5, activation="ELU"),
        "neural_autoregressive_leaky": T.neural_autoregressive(D, width=5, activation="LeakyReLU"),
        "batchnorm": T.batchnorm(D),
        "block_autoregressive": T.block_autoregressive(D, hidden_factors=[3, 2]),
        "block_autoregressive_normal": T.block_autoregressive(D, hidden_factors=[2], activation="ELU", residual="normal"),
        "block_autoregressive_gated": T.block_autoregressive(D, hidden_factors=[2], activation="sigmoid", residual="gated"),
        "permute": T.permute(D),
        "matrix_exponential": T.matrix_exponential(D),
        "polynomial": T.polynomial(D),
        "lower_cholesky_affine": T.LowerCholeskyAffine(torch.randn(D), torch.randn(D, D).tril(-1) + torch.diag(torch.rand(D) + 0.5)),
    }


FLOWS = _flows()
NOT_INVERTIBLE = {"planar", "radial", "sylvester", "neural_autoregressive", "polynomial", "neural_autoregressive_tanh",
                  "neural_autoregressive_elu", "neural_autoregressive_leaky", "block_autoregressive", "block_autoregressive_normal", "block_autoregressive_gated"}
ELEMENTWISE = {"spline_linear", "spline_quadratic", "batchnorm"}


def _prepare(t):
    t = t.double() if isinstance(t, torch.nn.Module) else t
    if isinstance(t, T.LowerCholeskyAffine):
        t = T.LowerCholeskyAffine(t.loc.double(), t.scale_tril.double())
    if isinstance(t, torch.nn.Module):
        with torch.no_grad():  # move away from the initial (often near-identity) parameters
            for p in t.parameters():
                p.add_(0.3 * torch.randn_like(p))
        t.eval()
    if isinstance(t, T.BatchNorm):
        t.moving_mean.copy_(torch.randn(D))
        t.moving_variance.copy_(torch.rand(D) + 0.5)
    return t


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_inverse_and_log_det(name):
    torch.manual_seed(1)
    t = _prepare(FLOWS[name])
    x = 2 * torch.randn(6, D, dtype=torch.double)
    y = t(x)
    assert y.shape == x.shape
    if name not in NOT_INVERTIBLE:
        xb = t.inv(y.clone())
        # exact in y; in x up to the conditioning (perturbed splines can have slopes ~1e-6)
        torch.testing.assert_close(t(xb.clone()), y, atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(xb, x, atol=1e-4, rtol=1e-6)
    else:
        assert t.inv(y) is x  # the cached inverse
        with pytest.raises(NotImplementedError, match="inverse"):
            t.inv(y.clone())
    ld = t.log_abs_det_jacobian(x, y)
    for i in range(x.size(0)):
        J = jacobian(lambda v: t(v), x[i].clone())
        if name in ELEMENTWISE:
            assert ld.shape == x.shape
            torch.testing.assert_close(ld[i], J.diagonal().abs().log())
            torch.testing.assert_close(J - torch.diag(J.diagonal()), torch.zeros_like(J))
        else:
            assert ld.shape == x.shape[:-1]
            torch.testing.assert_close(ld[i], torch.linalg.slogdet(J)[1], atol=1e-8, rtol=1e-6)
    # log-det from a fresh x (not the cached one) agrees
    torch.testing.assert_close(t.log_abs_det_jacobian(x.clone(), y), ld)


def test_spline_identity_outside_bound_and_both_tails():
    t = T.spline(2, bound=1.0).double()
    x = torch.tensor([[-3.0, 5.0], [1.5, -1.2]], dtype=torch.double)
    torch.testing.assert_close(t(x), x)
    assert bool((t.log_abs_det_jacobian(x, t(x)) == 0).all())
    with pytest.raises(ValueError, match="order"):
        T.spline(2, order="cubic")


@pytest.mark.parametrize("make", [
    lambda: T.conditional_affine_autoregressive(3, 2),
    lambda: T.conditional_affine_coupling(3, 2),
    lambda: T.conditional_spline(3, 2),
    lambda: T.conditional_spline_autoregressive(3, 2, order="quadratic"),
    lambda: T.conditional_planar(3, 2),
    lambda: T.conditional_radial(3, 2),
    lambda: T.conditional_householder(3, 2, count_transforms=2),
    lambda: T.conditional_matrix_exponential(3, 2),
    lambda: T.conditional_neural_autoregressive(3, 2, width=4),
], ids=["affine_autoregressive", "affine_coupling", "spline", "spline_autoregressive", "planar", "radial", "householder",
        "matrix_exponential", "neural_autoregressive"])
def test_conditional_flows(make):
    torch.manual_seed(0)
    ct = make().double()
    ctx = torch.randn(2, dtype=torch.double)
    t = ct.condition(ctx)
    x = torch.randn(5, 3, dtype=torch.double)
    y = t(x)
    if not isinstance(t, (T.Planar, T.Radial, T.NeuralAutoregressive)):
        torch.testing.assert_close(t.inv(y.clone()), x, atol=1e-6, rtol=1e-6)
    J = jacobian(lambda v: t(v), x[0].clone())
    ld = t.log_abs_det_jacobian(x, y)
    want = J.diagonal().abs().log() if ld.shape == x.shape else torch.linalg.slogdet(J)[1]
    torch.testing.assert_close(ld[0], want)
    # a different context gives a different transform
    assert not torch.allclose(ct.condition(ctx + 1)(x), y)
    # the conditional distribution
    cd = dist.ConditionalTransformedDistribution(dist.Normal(torch.zeros(3, dtype=torch.double), 1.0).to_event(1), [ct])
    d = cd.condition(ctx)
    s = d.rsample((4,))
    assert s.shape == (4, 3) and d.log_prob(s).shape == (4,)


def test_affine_autoregressive_in_a_transformed_distribution():
    torch.manual_seed(0)
    iaf = T.AffineAutoregressive(AutoRegressiveNN(3, [10], permutation=torch.tensor([2, 0, 1])))
    base = dist.Normal(torch.zeros(3), torch.ones(3)).to_event(1)
    d = dist.TransformedDistribution(base, [iaf])
    z = d.rsample((7,))
    lp = d.log_prob(z)
    x = iaf.inv(z.clone())  # not the cached inverse
    torch.testing.assert_close(lp, base.log_prob(x) - iaf.log_abs_det_jacobian(x, z), atol=1e-5, rtol=1e-5)
    assert len(list(iaf.parameters())) == 4 and hash(iaf) == hash(iaf)
    # its parameters get gradients
    lp.sum().backward()
    assert all(p.grad is not None for p in iaf.parameters())


def test_compose_transform_module_registers_parameters():
    ts = [T.spline(2), T.permute(2), T.affine_coupling(2)]
    c = T.ComposeTransformModule(ts)
    assert len(list(c.parameters())) == len(list(ts[0].parameters())) + len(list(ts[2].parameters()))
    x = torch.randn(3, 2)
    torch.testing.assert_close(c.inv(c(x).clone()), x, atol=1e-5, rtol=1e-5)


def _moons(n, gen):
    t = torch.rand(n, generator=gen) * math.pi
    upper = torch.rand(n, generator=gen) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    return torch.stack([x, y], -1) + 0.08 * torch.randn(n, 2, generator=gen) - torch.tensor([0.5, 0.25])


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_trained_spline_flow_beats_a_gaussian_on_held_out_data(one_thread):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    train, test = _moons(512, gen) * 2, _moons(1024, gen) * 2
    gauss = torch.distributions.MultivariateNormal(train.mean(0), torch.cov(train.T))
    flows = [T.spline_coupling(2, count_bins=8, hidden_dims=[32]), T.permute(2, torch.tensor([1, 0])), T.spline_coupling(2, count_bins=8, hidden_dims=[32])]
    flow_dist = dist.TransformedDistribution(dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1), flows)
    params = [p for f in flows if isinstance(f, torch.nn.Module) for p in f.parameters()]
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(80):
        opt.zero_grad()
        loss = -flow_dist.log_prob(train).mean()
        loss.backward()
        opt.step()
        flow_dist.clear_cache()  # the same data tensor comes back next step (as in Pyro's flow tutorial)
    with torch.no_grad():
        ll_flow, ll_gauss = flow_dist.log_prob(test).mean(), gauss.log_prob(test).mean()
    assert ll_flow > ll_gauss + 0.2, (ll_flow, ll_gauss)


def test_flow_guide_under_svi_recovers_a_gaussian_posterior(one_thread):
    """An AffineAutoregressive flow registered with ember.module as a guide: SVI finds the
    conjugate posterior N(0.8, 0.2) of z ~ N(0, 1), x ~ N(z, 0.5), x = 1."""
    import ember
    from ember.infer import SVI, Trace_ELBO

    torch.manual_seed(0)
    ember.clear_param_store()

    def model():
        z = ember.sample("z", dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1))
        ember.sample("x", dist.Normal(z, 0.5).to_event(1), obs=torch.tensor([1.0, -1.0]))

    iaf = T.affine_autoregressive(2, hidden_dims=[8])

    def guide():
        ember.module("iaf", iaf)
        loc = ember.param("loc", torch.zeros(2))
        ember.sample("z", dist.TransformedDistribution(dist.Normal(loc, torch.ones(2)).to_event(1), [iaf]))

    svi = SVI(model, guide, ember.optim.Adam({"lr": 0.03}), Trace_ELBO())
    for _ in range(300):
        svi.step()
    assert any(k.startswith("iaf$$$") for k in ember.get_param_store().keys())
    with torch.no_grad():
        z = dist.TransformedDistribution(dist.Normal(ember.param("loc"), torch.ones(2)).to_event(1), [iaf]).sample((4000,))
    torch.testing.assert_close(z.mean(0), torch.tensor([0.8, -0.8]), atol=0.1, rtol=0)


def test_generalized_channel_permute():
    torch.manual_seed(0)
    t = T.generalized_channel_permute(3).double()
    with torch.no_grad():
        t.LU.add_(0.3 * torch.randn(3, 3, dtype=torch.double))
    x = torch.randn(2, 3, 4, 5, dtype=torch.double)
    y = t(x)
    torch.testing.assert_close(t.inv(y.clone()), x)
    J = jacobian(lambda v: t(v.reshape(3, 4, 5)).reshape(-1), x[0].reshape(-1))
    torch.testing.assert_close(t.log_abs_det_jacobian(x, y), torch.linalg.slogdet(J)[1].expand(2))
    with pytest.raises(ValueError, match="GeneralizedChannelPermute"):
        t(torch.randn(2, 4, 4, 5, dtype=torch.double))
    ct = T.conditional_generalized_channel_permute(2, channels=3).double()
    tc = ct.condition(torch.randn(2, dtype=torch.double))
    torch.testing.assert_close(tc.inv(tc(x).clone()), x)
    Jc = jacobian(lambda v: tc(v.reshape(3, 4, 5)).reshape(-1), x[0].reshape(-1))
    torch.testing.assert_close(tc.log_abs_det_jacobian(x, tc(x))[0], torch.linalg.slogdet(Jc)[1])


def test_batchnorm_normalises_data_in_training_mode():
    t = T.batchnorm(2, momentum=0.5)
    y = torch.randn(500, 2) * torch.tensor([3.0, 0.5]) + torch.tensor([1.0, -2.0])
    x = t.inv(y)  # the density-estimation direction, as in Pyro
    torch.testing.assert_close(x.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(0), torch.ones(2), atol=1e-3, rtol=0)
    torch.testing.assert_close(t.moving_mean, 0.5 * y.mean(0))
    ld = t.log_abs_det_jacobian(x, y)
    assert ld.shape == y.shape
    torch.testing.assert_close(ld[0], 0.5 * torch.log(y.var(0) + t.epsilon) - t.constrained_gamma.log())


def test_pyro_flow_tutorial_code_runs(one_thread):
    """The training loops of Pyro's normalizing-flow tutorial (a Spline on a standard normal,
    then a conditional spline for x2 | x1), written as there; the losses go down."""
    torch.manual_seed(0)
    x1 = torch.randn(200, 1)
    x2 = x1**2 + 0.1 * torch.randn(200, 1)
    dataset = torch.cat([x1, x2], -1)
    base_dist = dist.Normal(torch.zeros(2), torch.ones(2))
    spline_transform = T.Spline(2, count_bins=16)
    flow_dist = dist.TransformedDistribution(base_dist, [spline_transform])
    optimizer = torch.optim.Adam(spline_transform.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = -flow_dist.log_prob(dataset).mean()
        loss.backward()
        optimizer.step()
        flow_dist.clear_cache()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1

    dist_base = dist.Normal(torch.zeros(1), torch.ones(1))
    x1_transform = T.spline(1)
    dist_x1 = dist.TransformedDistribution(dist_base, [x1_transform])
    x2_transform = T.conditional_spline(1, context_dim=1)
    dist_x2_given_x1 = dist.ConditionalTransformedDistribution(dist_base, [x2_transform])
    modules = torch.nn.ModuleList([x1_transform, x2_transform])
    optimizer = torch.optim.Adam(modules.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        ln_p_x1 = dist_x1.log_prob(x1)
        ln_p_x2_given_x1 = dist_x2_given_x1.condition(x1.detach()).log_prob(x2.detach())
        loss = -(ln_p_x1 + ln_p_x2_given_x1).mean()
        loss.backward()
        optimizer.step()
        dist_x1.clear_cache()
        dist_x2_given_x1.clear_cache()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    x1_flow = dist_x1.sample(torch.Size([5]))
    assert dist_x2_given_x1.condition(x1_flow).sample(torch.Size([5])).shape == (5, 1)


@pytest.mark.parametrize("make", [lambda: T.Planar(3), lambda: T.Radial(3), lambda: T.Sylvester(3, 2), lambda: T.polynomial(3),
                                  lambda: T.block_autoregressive(3), lambda: T.neural_autoregressive(3)])
def test_forward_only_flows_invert_their_own_values_and_say_why_not_others(make):
    t = make()
    x = torch.randn(4, 3)
    y = t(x)
    assert t.inv(y) is x  # torch's cache: the value it produced
    torch.testing.assert_close(t.log_abs_det_jacobian(x, y), t.log_abs_det_jacobian(x.clone(), y))  # cached == recomputed
    with pytest.raises(NotImplementedError, match=f"{type(t).__name__} has no closed-form inverse.*sampling direction"):
        t.inv(y.clone())


@pytest.mark.parametrize("make", [lambda: T.Permute(torch.tensor([1, 0]), dim=0), lambda: T.HaarTransform(dim=1),
                                  lambda: T.DiscreteCosineTransform(dim=0),
                                  lambda: T.AffineCoupling(1, DenseNN(1, [4], [1, 1]), dim=0)])
def test_transforms_of_the_dims_from_dim_refuse_a_non_negative_dim(make):
    with pytest.raises(ValueError, match=r"dim must be a negative integer \(counted from the right\); got dim="):
        make()


def test_transforms_of_the_dims_from_dim_take_those_dims_as_one_event():
    x = torch.randn(5, 3, 4)
    for t in (T.Permute(torch.tensor([2, 0, 1]), dim=-2), T.HaarTransform(dim=-2), T.DiscreteCosineTransform(dim=-2)):
        assert t.event_dim == 2 and t.domain.reinterpreted_batch_ndims == 2
        torch.testing.assert_close(t.log_abs_det_jacobian(x, t(x)), torch.zeros(5))
        torch.testing.assert_close(t.inv(t(x).clone()), x, atol=1e-5, rtol=1e-5)
