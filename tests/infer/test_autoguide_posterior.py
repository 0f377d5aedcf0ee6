"""Autoguides against closed forms (issue 12 acceptance): on a conjugate Bayesian linear
regression the exact posterior is N(mu, Sigma) with Sigma = (X'X / s^2 + I / t^2)^-1 and
mu = Sigma X'y / s^2. The Gaussian family's ELBO optimum is then the exact posterior
(AutoMultivariateNormal), the diagonal family's has the exact means and variances
1 / diag(Sigma^-1) (AutoDiagonalNormal), the MAP is mu (AutoDelta) and the Hessian of -log p
there is Sigma^-1 (AutoLaplaceApproximation)."""

from __future__ import annotations

import math

import pytest
import torch

import ember
import ember.distributions as dist
from ember.infer import SVI, Trace_ELBO
from ember.infer.autoguide import (
    AutoDelta,
    AutoDiagonalNormal,
    AutoIAFNormal,
    AutoLaplaceApproximation,
    AutoMultivariateNormal,
    AutoNormal,
    init_to_value,
)

SIGMA, TAU = 0.5, 2.0


@pytest.fixture(autouse=True)
def _clean():
    ember.clear_param_store()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    ember.clear_param_store()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 3, generator=g)
    y = x @ torch.tensor([1.0, -0.5, 0.25]) + SIGMA * torch.randn(30, generator=g)
    return x, y


def model(x: torch.Tensor, y: torch.Tensor) -> None:
    w = ember.sample("w", dist.Normal(torch.zeros(3), TAU).to_event(1))
    with ember.plate("data", x.shape[0]):
        ember.sample("y", dist.Normal((x * w).sum(-1), SIGMA), obs=y)


def _exact(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    precision = x.T @ x / SIGMA**2 + torch.eye(3) / TAU**2
    cov = torch.linalg.inv(precision)
    return cov @ x.T @ y / SIGMA**2, cov


def _fit(guide, steps: int, lr: float, particles: int = 1, average: int = 0) -> dict:
    """SVI steps; with ``average``, the mean of each parameter over the last ``average`` steps."""
    x, y = _data()
    loss = Trace_ELBO(num_particles=particles, vectorize_particles=particles > 1)
    svi = SVI(model, guide, ember.optim.Adam({"lr": lr}), loss)
    sums: dict = {}
    for i in range(steps):
        svi.step(x, y)
        if i >= steps - average:
            for k, v in ember.get_param_store().items():
                sums[k] = sums.get(k, 0.0) + v.detach()
    return {k: v / average for k, v in sums.items()}


def test_multivariate_normal_recovers_the_exact_posterior() -> None:
    ember.set_rng_seed(0)
    x, y = _data()
    mu, cov = _exact(x, y)
    guide = AutoMultivariateNormal(model, init_loc_fn=init_to_value(values={"w": torch.zeros(3)}))
    avg = _fit(guide, 800, 0.02, particles=16, average=400)
    loc = avg["AutoMultivariateNormal.loc"]
    tril = avg["AutoMultivariateNormal.scale"].unsqueeze(-1) * (avg["AutoMultivariateNormal.scale_tril"].tril(-1) + torch.eye(3))
    sd = cov.diagonal().sqrt()
    assert torch.allclose(loc, mu, atol=0.1 * sd.min().item()), (loc, mu)
    fitted = tril @ tril.T
    assert torch.allclose(fitted, cov, atol=0.1 * cov.diagonal().min().item()), (fitted, cov)


def test_diagonal_normal_recovers_the_means_and_the_mean_field_variances() -> None:
    ember.set_rng_seed(1)
    x, y = _data()
    mu, cov = _exact(x, y)
    guide = AutoDiagonalNormal(model)
    avg = _fit(guide, 800, 0.03, particles=16, average=300)
    sd = cov.diagonal().sqrt()
    assert torch.allclose(avg["AutoDiagonalNormal.loc"], mu, atol=0.1 * sd.min().item())
    mean_field_sd = 1 / torch.linalg.inv(cov).diagonal().sqrt()
    assert torch.allclose(avg["AutoDiagonalNormal.scale"], mean_field_sd, rtol=0.1)
    # median and quantiles answer from the same parameters
    med = guide.median()["w"]
    q = guide.quantiles([0.5, 0.8413447])["w"]
    assert torch.allclose(q[0], med) and torch.allclose(q[1] - q[0], guide.scale.detach(), rtol=1e-4)


def test_auto_normal_means_match_too() -> None:
    ember.set_rng_seed(2)
    x, y = _data()
    mu, cov = _exact(x, y)
    guide = AutoNormal(model)
    avg = _fit(guide, 800, 0.03, particles=16, average=300)
    assert torch.allclose(avg["AutoNormal.locs.w"], mu, atol=0.1 * cov.diagonal().sqrt().min().item())


def test_delta_finds_the_map() -> None:
    x, y = _data()
    mu, _ = _exact(x, y)
    guide = AutoDelta(model)
    _fit(guide, 500, 0.05)  # no sampling: the gradient is exact
    assert torch.allclose(guide.median()["w"], mu, atol=1e-3)


def test_laplace_matches_the_analytic_hessian_at_the_map() -> None:
    x, y = _data()
    mu, cov = _exact(x, y)
    guide = AutoLaplaceApproximation(model)
    _fit(guide, 500, 0.05)
    assert torch.allclose(guide.loc.detach(), mu, atol=1e-3)
    gaussian = guide.laplace_approximation(x, y)
    assert isinstance(gaussian, AutoMultivariateNormal)
    tril = gaussian.get_scale_tril().detach()
    assert torch.allclose(tril @ tril.T, cov, rtol=1e-3, atol=1e-6)
    assert torch.allclose(gaussian.median()["w"], mu, atol=1e-3)


def test_laplace_includes_the_jacobian_of_a_constrained_latent() -> None:
    # x ~ Gamma(a, b), nothing observed. With u = log x: log p(u) = a u - b e^u + c, so the
    # mode is u* = log(a / b) and the Hessian of -log p there is a.
    a, b = 3.0, 2.0

    def gamma_model() -> None:
        ember.sample("x", dist.Gamma(a, b))

    guide = AutoLaplaceApproximation(gamma_model)
    guide.setup()
    with torch.no_grad():
        guide.loc.copy_(torch.tensor([math.log(a / b)]))  # a plain nn.Parameter, as in Pyro
    g = guide.laplace_approximation()
    assert g.get_scale_tril().detach().item() == pytest.approx(1 / math.sqrt(a), rel=1e-5)
    assert g.median()["x"].item() == pytest.approx(a / b, rel=1e-5)


def _banana_model() -> None:
    z = ember.sample("z", dist.Normal(torch.zeros(2), 2.0).to_event(1))
    ember.factor("banana", -0.5 * ((z[..., 1] - 0.5 * z[..., 0] ** 2) / 0.25) ** 2)


def _elbo(guide, n: int = 4000) -> float:
    loss = Trace_ELBO(num_particles=n, vectorize_particles=True)
    with torch.no_grad():
        return -loss.loss(_banana_model, guide)


@pytest.mark.slow
def test_iaf_beats_the_diagonal_normal_on_a_banana() -> None:
    results = {}
    for cls, kwargs in ((AutoDiagonalNormal, {}), (AutoIAFNormal, {"hidden_dim": 16, "num_transforms": 2})):
        ember.clear_param_store()
        ember.set_rng_seed(3)
        guide = cls(_banana_model, **kwargs)
        svi = SVI(_banana_model, guide, ember.optim.Adam({"lr": 0.01}), Trace_ELBO(num_particles=8, vectorize_particles=True))
        for _ in range(1500):
            svi.step()
        results[cls.__name__] = _elbo(guide)
    assert results["AutoIAFNormal"] > results["AutoDiagonalNormal"] + 0.1, results
