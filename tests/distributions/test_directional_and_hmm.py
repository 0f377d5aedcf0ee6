"""Directional distributions (numerical normalisation on the sphere/torus, sample moments),
LogNormalNegativeBinomial, Rejector, Stable, and the HMMs against brute-force marginals."""

import itertools
import math

import pytest
import scipy.stats as st
import torch

import ember.distributions as dist

DT = torch.double


def _sphere_grid(n=200):
    theta = torch.linspace(0, math.pi, n, dtype=DT)
    phi = torch.linspace(0, 2 * math.pi, 2 * n, dtype=DT)
    th, ph = torch.meshgrid(theta, phi, indexing="ij")
    x = torch.stack([th.sin() * ph.cos(), th.sin() * ph.sin(), th.cos()], -1)
    return theta, phi, th, x


def _integrate_sphere(logp_fn):
    theta, phi, th, x = _sphere_grid()
    f = logp_fn(x).exp() * th.sin()
    return torch.trapezoid(torch.trapezoid(f, phi, dim=1), theta)


def test_von_mises_3d():
    torch.manual_seed(0)
    c = torch.tensor([[1.0, -2.0, 0.5], [0.1, 0.2, 0.3]], dtype=DT)
    d = dist.VonMises3D(c)
    for ci in c:
        total = _integrate_sphere(dist.VonMises3D(ci).log_prob)
        torch.testing.assert_close(total, torch.tensor(1.0, dtype=DT), atol=1e-4, rtol=0)
    # scipy's von Mises-Fisher
    x = dist.VonMises3D(c).sample((5,))
    k = c.norm(dim=-1)
    want = torch.stack([torch.tensor(st.vonmises_fisher(c[i].numpy() / k[i].item(), k[i].item()).logpdf(x[:, i].numpy())) for i in range(2)], -1)
    torch.testing.assert_close(d.log_prob(x), want)
    s = d.sample((20000,))
    assert s.shape == (20000, 2, 3) and bool(dist.constraints.sphere.check(s).all())
    torch.testing.assert_close(s.mean(0), d.mean, atol=0.02, rtol=0)
    assert d.expand((4, 2)).sample().shape == (4, 2, 3)
    with pytest.raises(ValueError, match="concentration"):
        dist.VonMises3D(torch.ones(2))


@pytest.mark.parametrize("dim", [2, 3])
def test_projected_normal(dim):
    torch.manual_seed(0)
    c = torch.tensor([1.0, -0.5, 0.8][:dim], dtype=DT)
    d = dist.ProjectedNormal(c)
    if dim == 2:
        ang = torch.linspace(-math.pi, math.pi, 20001, dtype=DT)
        x = torch.stack([ang.cos(), ang.sin()], -1)
        total = torch.trapezoid(d.log_prob(x).exp(), ang)
    else:
        total = _integrate_sphere(d.log_prob)
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=DT), atol=1e-4, rtol=0)
    # E[x] by quadrature vs Monte Carlo
    s = d.rsample((20000,))
    assert bool(dist.constraints.sphere.check(s).all())
    if dim == 2:
        want = torch.trapezoid(d.log_prob(x).exp().unsqueeze(-1) * x, ang, dim=0)
        torch.testing.assert_close(s.mean(0), want, atol=0.02, rtol=0)
    g = c.clone().requires_grad_()
    torch.manual_seed(1)
    (grad,) = torch.autograd.grad(dist.ProjectedNormal(g).rsample((3,))[..., 0].sum(), g)
    fd = []
    for h in (1e-6, -1e-6):
        torch.manual_seed(1)
        fd.append(dist.ProjectedNormal(c + torch.eye(dim, dtype=DT)[0] * h).rsample((3,))[..., 0].sum())
    torch.testing.assert_close(grad[0], (fd[0] - fd[1]) / 2e-6, rtol=1e-5, atol=1e-7)



def test_projected_normal_high_dim_by_monte_carlo():
    """d = 5: the density integrates to 1 over the sphere (importance sampling from the uniform
    distribution on the sphere, whose density is 1 / area)."""
    torch.manual_seed(0)
    d = 5
    c = torch.tensor([0.8, -0.3, 0.5, 0.1, 0.4], dtype=DT)
    u = torch.randn(200000, d, dtype=DT)
    u = u / u.norm(dim=-1, keepdim=True)
    area = 2 * math.pi ** (d / 2) / math.gamma(d / 2)
    est = dist.ProjectedNormal(c).log_prob(u).exp().mean() * area
    assert abs(float(est) - 1) < 0.01
    # and it agrees with the d = 3 closed form when the recurrence runs to 3
    x = torch.tensor([0.6, 0.0, 0.8], dtype=DT)
    t = torch.dot(c[:3], x)
    closed = -1.5 * math.log(2 * math.pi) - 0.5 * c[:3].pow(2).sum() + torch.log(
        t + (1 + t * t) * math.sqrt(2 * math.pi) * torch.exp(t * t / 2) * torch.special.ndtr(t))
    torch.testing.assert_close(dist.ProjectedNormal(c[:3]).log_prob(x), closed)


def _torus():
    a = torch.linspace(-math.pi, math.pi, 201, dtype=DT)
    A, B = torch.meshgrid(a, a, indexing="ij")
    return a, torch.stack([A, B], -1)


def _integrate_torus(p, a):
    return torch.trapezoid(torch.trapezoid(p, a, dim=-1), a, dim=-1)


def test_sine_bivariate_von_mises():
    torch.manual_seed(0)
    d = dist.SineBivariateVonMises(torch.tensor(0.5, dtype=DT), torch.tensor(-1.0, dtype=DT), torch.tensor(2.0, dtype=DT),
                                   torch.tensor(3.0, dtype=DT), correlation=torch.tensor(1.5, dtype=DT))
    a, grid = _torus()
    p = d.log_prob(grid).exp()
    torch.testing.assert_close(_integrate_torus(p, a), torch.tensor(1.0, dtype=DT), atol=1e-6, rtol=0)
    s = d.sample((10000,))
    assert s.shape == (10000, 2) and bool(d.support.check(s).all())
    # E[cos phi], E[sin psi], E[sin phi sin psi] by quadrature vs Monte Carlo
    for f in (lambda x: x[..., 0].cos(), lambda x: x[..., 1].sin(), lambda x: x[..., 0].sin() * x[..., 1].sin()):
        want = _integrate_torus(p * f(grid), a)
        assert abs(f(s).mean() - want) < 0.03
    w = dist.SineBivariateVonMises(0.0, 0.0, 2.0, 3.0, weighted_correlation=0.5)
    torch.testing.assert_close(w.correlation, torch.tensor(0.5 * 6**0.5))
    assert w.expand((3,)).sample((2,)).shape == (2, 3, 2)
    with pytest.raises(ValueError, match="exactly one"):
        dist.SineBivariateVonMises(0.0, 0.0, 1.0, 1.0)


def test_sine_skewed():
    torch.manual_seed(0)
    base = dist.VonMises(torch.tensor([0.3, -1.0], dtype=DT), torch.tensor([2.0, 1.0], dtype=DT)).to_event(1)
    d = dist.SineSkewed(base, torch.tensor([0.4, -0.3], dtype=DT))
    a, grid = _torus()
    p = d.log_prob(grid).exp()
    torch.testing.assert_close(_integrate_torus(p, a), torch.tensor(1.0, dtype=DT), atol=1e-6, rtol=0)
    s = d.sample((20000,))
    for f in (lambda x: x[..., 0].sin(), lambda x: x[..., 1].sin(), lambda x: x[..., 1].cos()):
        want = _integrate_torus(p * f(grid), a)
        assert abs(f(s).mean() - want) < 0.02
    with pytest.raises(ValueError, match="skewness"):
        dist.SineSkewed(base, torch.tensor([0.8, 0.8], dtype=DT))


def test_log_normal_negative_binomial():
    torch.manual_seed(0)
    d = dist.LogNormalNegativeBinomial(torch.tensor([3.0, 1.0], dtype=DT), torch.tensor([0.2, -0.5], dtype=DT),
                                       torch.tensor([0.5, 0.8], dtype=DT), num_quad_points=24)
    k = torch.arange(0, 800, dtype=DT).unsqueeze(-1)
    p = d.log_prob(k).exp()
    torch.testing.assert_close(p.sum(0), torch.ones(2, dtype=DT), atol=1e-6, rtol=0)
    torch.testing.assert_close((p * k).sum(0), d.mean, rtol=1e-4, atol=0)
    torch.testing.assert_close((p * k.pow(2)).sum(0) - d.mean.pow(2), d.variance, rtol=1e-3, atol=0)
    s = d.sample((20000,))
    assert abs(float(s.mean(0)[0] - d.mean[0])) < 5 * float((d.variance[0] / 20000).sqrt())
    # with no noise it is the negative binomial
    nb = dist.LogNormalNegativeBinomial(3.0, 0.2, 1e-8)
    torch.testing.assert_close(nb.log_prob(torch.tensor(4.0)), torch.distributions.NegativeBinomial(3.0, logits=torch.tensor(0.2)).log_prob(torch.tensor(4.0)))
    assert d.expand((5, 2)).sample().shape == (5, 2)


def test_rejector_is_a_truncated_exponential():
    torch.manual_seed(0)
    rate = torch.tensor([1.0, 2.0], dtype=DT)
    propose = dist.Exponential(rate)
    log_scale = torch.log(-torch.expm1(-rate))  # P(x < 1)
    d = dist.Rejector(propose, lambda x: torch.where(x < 1, torch.zeros_like(x), torch.full_like(x, -math.inf)), log_scale)
    x = torch.linspace(0, 1 - 1e-12, 10001, dtype=DT).unsqueeze(-1).expand(-1, 2)
    torch.testing.assert_close(torch.trapezoid(d.log_prob(x).exp(), x, dim=0), torch.ones(2, dtype=DT), atol=1e-6, rtol=0)
    s = d.sample((20000,))
    assert bool((s < 1).all())
    want = torch.trapezoid(d.log_prob(x).exp() * x, x, dim=0)
    torch.testing.assert_close(s.mean(0), want, atol=0.01, rtol=0)


def test_stable():
    torch.manual_seed(0)
    # alpha = 2 is Normal(loc, sqrt(2) scale)
    d = dist.Stable(torch.tensor(2.0, dtype=DT), torch.tensor(0.3, dtype=DT), torch.tensor(1.5, dtype=DT), torch.tensor(1.0, dtype=DT))
    s = d.rsample((40000,))
    assert abs(float(s.mean()) - 1.0) < 0.05 and abs(float(s.var()) / 4.5 - 1) < 0.05
    # alpha = 1, beta = 0 is Cauchy(loc, scale): quartiles loc +- scale
    c = dist.Stable(1.0, 0.0, 2.0, 0.5).sample((40000,))
    q = torch.quantile(c, torch.tensor([0.25, 0.5, 0.75]))
    torch.testing.assert_close(q, torch.tensor([-1.5, 0.5, 2.5]), atol=0.1, rtol=0)
    # alpha = 1/2, beta = 1 in S (SciPy's S1) is Levy(loc, scale)
    lv = dist.Stable(0.5, 1.0, 0.7, 0.2, coords="S").sample((40000,)).double()
    for x in (0.5, 1.0, 5.0):
        assert abs(float((lv < x).double().mean()) - st.levy.cdf(x, 0.2, 0.7)) < 0.01
    # reparameterized: derivative in stability against finite differences of the same draw
    a = torch.tensor(1.5, dtype=DT, requires_grad=True)
    torch.manual_seed(1)
    (g,) = torch.autograd.grad(dist.Stable(a, 0.4).rsample((4,)).sum(), a)
    fd = []
    for h in (1e-6, -1e-6):
        torch.manual_seed(1)
        fd.append(dist.Stable(torch.tensor(1.5 + h, dtype=DT), 0.4).rsample((4,)).sum())
    torch.testing.assert_close(g, (fd[0] - fd[1]) / 2e-6, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="stability"):
        dist.Stable(2.5, 0.0, validate_args=True)


def test_discrete_hmm_against_brute_force():
    torch.manual_seed(0)
    S, T = 2, 3
    init = torch.randn(S, dtype=DT)
    trans = torch.randn(T, S, S, dtype=DT)
    obs = dist.Normal(torch.randn(T, S, dtype=DT), torch.rand(T, S, dtype=DT) + 0.5)
    d = dist.DiscreteHMM(init, trans, obs)
    assert d.event_shape == (T,) and d.batch_shape == ()
    x = torch.randn(4, T, dtype=DT)
    li, lt = init.log_softmax(-1), trans.log_softmax(-1)
    brute = []
    for path in itertools.product(range(S), repeat=T + 1):  # z_{-1}, z_0..z_{T-1}
        lp = li[path[0]]
        for t in range(T):
            lp = lp + lt[t, path[t], path[t + 1]]
        lp = lp + sum(torch.distributions.Normal(obs.loc[t, path[t + 1]], obs.scale[t, path[t + 1]]).log_prob(x[:, t]) for t in range(T))
        brute.append(lp)
    torch.testing.assert_close(d.log_prob(x), torch.logsumexp(torch.stack(brute), 0))
    assert d.filter(x).probs.shape == (4, S)
    s = d.sample((5,))
    assert s.shape == (5, T) and d.log_prob(s).shape == (5,)
    e = d.expand((3,))
    assert e.batch_shape == (3,) and e.log_prob(x[:, None]).shape == (4, 3) and e.sample().shape == (3, T)


def test_gaussian_hmm_against_the_joint_gaussian():
    torch.manual_seed(0)
    H, Dx, T = 2, 3, 4
    init = dist.MultivariateNormal(torch.randn(H, dtype=DT), torch.eye(H, dtype=DT) * 0.5)
    A = 0.5 * torch.randn(H, H, dtype=DT)
    Q = torch.eye(H, dtype=DT) * 0.3
    trans = dist.MultivariateNormal(torch.zeros(H, dtype=DT), Q)
    C = torch.randn(H, Dx, dtype=DT)
    R = torch.diag(torch.rand(Dx, dtype=DT) + 0.2)
    obs = dist.Normal(torch.zeros(Dx, dtype=DT), R.diagonal().sqrt()).to_event(1)
    d = dist.GaussianHMM(init, A, trans, C, obs, duration=T)
    assert d.event_shape == (T, Dx)
    # the joint of x_0..x_{T-1}: z_t = z_{-1} A^(t+1) + sum_s w_s A^(t-s); x_t = z_t C + v_t
    mean_z = []
    m = init.loc
    for _ in range(T):
        m = m @ A
        mean_z.append(m)
    # covariance of z_t with z_u for u <= t: (A^T)^(t-u) Var(z_u)
    var = []
    P = init.covariance_matrix
    for _ in range(T):
        P = A.T @ P @ A + Q
        var.append(P)
    big = torch.zeros(T * Dx, T * Dx, dtype=DT)
    for t in range(T):
        for u in range(t + 1):
            cz = torch.linalg.matrix_power(A.T, t - u) @ var[u]  # Cov(z_t, z_u)
            block = C.T @ cz @ C + (R if t == u else 0)
            big[t * Dx : (t + 1) * Dx, u * Dx : (u + 1) * Dx] = block
            big[u * Dx : (u + 1) * Dx, t * Dx : (t + 1) * Dx] = block.T
    joint = torch.distributions.MultivariateNormal(torch.cat([mz @ C for mz in mean_z]), big)
    x = d.rsample((6,))
    assert x.shape == (6, T, Dx)
    torch.testing.assert_close(d.log_prob(x), joint.log_prob(x.reshape(6, T * Dx)))
    s = d.rsample((20000,)).reshape(20000, T * Dx)
    torch.testing.assert_close(s.mean(0), joint.mean, atol=0.08, rtol=0)
    # filter: z_{T-1} | x by conditioning the joint Gaussian of (z_{T-1}, x)
    cross = torch.cat([torch.linalg.matrix_power(A.T, T - 1 - u) @ var[u] @ C for u in range(T)], -1)  # Cov(z_{T-1}, x)
    gain = torch.linalg.solve(big, cross.T).T
    xf = x.reshape(6, T * Dx)
    want_mean = mean_z[-1] + (xf - joint.mean) @ gain.T
    want_cov = var[-1] - gain @ cross.T
    post = d.filter(x)
    torch.testing.assert_close(post.loc, want_mean)
    torch.testing.assert_close(post.covariance_matrix, want_cov.expand(6, H, H))


@pytest.mark.parametrize("alpha, beta", [(1.5, 0.0), (1.5, 0.5), (0.7, 0.3), (1.9, -0.8), (0.5, 1.0), (1.0, 0.5), (1.0, 0.0), (1.2, -1.0)])
@pytest.mark.parametrize("coords", ["S0", "S"])
def test_stable_log_prob_against_scipy(alpha, beta, coords):
    from scipy.stats import levy_stable

    z = torch.tensor([-2.5, -0.7, 0.1, 0.4, 1.7, 3.0], dtype=DT)
    d = dist.Stable(torch.tensor(alpha, dtype=DT), torch.tensor(beta, dtype=DT), torch.tensor(1.3, dtype=DT), torch.tensor(0.2, dtype=DT), coords=coords)
    old = levy_stable.parameterization
    levy_stable.parameterization = "S1" if coords == "S" else coords
    try:
        want = torch.tensor(levy_stable.logpdf(z.numpy(), alpha, beta, loc=0.2, scale=1.3), dtype=DT)
    finally:
        levy_stable.parameterization = old
    got = d.log_prob(z)
    finite = torch.isfinite(want)
    assert torch.equal(finite, torch.isfinite(got))
    torch.testing.assert_close(got[finite], want[finite], atol=1e-3, rtol=1e-3)


def test_stable_log_prob_normalised_and_differentiable():
    a = torch.tensor(1.3, dtype=DT, requires_grad=True)
    d = dist.Stable(a, torch.tensor(0.4, dtype=DT))
    x = torch.linspace(-60, 60, 4001, dtype=DT)
    mass = torch.trapezoid(d.log_prob(x).exp(), x)
    assert abs(mass.detach().item() - 1) < 0.02  # heavy tails beyond ±60 hold about 1%
    (g,) = torch.autograd.grad(d.log_prob(torch.tensor(0.5, dtype=DT)), a)
    assert torch.isfinite(g)
