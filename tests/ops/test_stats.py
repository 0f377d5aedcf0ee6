"""ember.ops.stats against closed forms, brute-force definitions, NumPy/SciPy and the reference
values Pyro's own tests pin (computed there with ArviZ and the R package loo)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from ember.ops import stats
from ember.ops.stats import (
    autocorrelation,
    autocovariance,
    crps_empirical,
    effective_sample_size,
    energy_score_empirical,
    fit_generalized_pareto,
    gelman_rubin,
    hpdi,
    pi,
    quantile,
    resample,
    split_gelman_rubin,
    waic,
    weighed_quantile,
)


def test_every_pyro_name_is_there():
    for name in ("effective_sample_size", "gelman_rubin", "split_gelman_rubin", "hpdi", "quantile", "pi", "autocorrelation",
                 "autocovariance", "resample", "weighed_quantile", "waic", "fit_generalized_pareto", "crps_empirical",
                 "energy_score_empirical"):
        assert callable(getattr(stats, name)) and name in stats.__all__


# ---- quantiles and intervals ------------------------------------------------------------------------
def test_quantile_matches_numpy_along_any_dim():
    x = torch.randn(50, 3, 4, dtype=torch.float64)
    probs = [0.0, 0.1, 0.5, 0.93, 1.0]
    for dim in (0, 1, -1):
        expected = np.moveaxis(np.quantile(x.numpy(), probs, axis=dim), 0, dim)
        np.testing.assert_allclose(quantile(x, probs, dim=dim).numpy(), expected, rtol=1e-12)
    torch.testing.assert_close(quantile(torch.tensor([0.0, 1.0, 2.0]), [0.0, 0.4, 0.5, 1.0]), torch.tensor([0.0, 0.8, 1.0, 2.0]))
    assert quantile(x, 0.5).shape == (3, 4)  # a scalar prob drops the dim
    with pytest.raises(ValueError, match=r"probs must be .* in \[0, 1\]"):
        quantile(x, [0.5, 1.5])


def test_pi_is_the_equal_tailed_interval():
    x = torch.randn(1001).exp()
    torch.testing.assert_close(pi(x, 0.8), quantile(x, [0.1, 0.9]))


def _brute_hpdi(x: np.ndarray, prob: float) -> tuple[float, float]:
    xs = np.sort(x)
    k = int(prob * len(xs))
    return min(((xs[i], xs[i + k]) for i in range(len(xs) - k)), key=lambda ab: ab[1] - ab[0])


def test_hpdi_is_the_narrowest_interval():
    g = torch.Generator().manual_seed(1)
    x = torch.empty(400, 3, dtype=torch.float64).exponential_(1.0, generator=g)
    out = hpdi(x, 0.7)
    assert out.shape == (2, 3)
    for j in range(3):
        lo, hi = _brute_hpdi(x[:, j].numpy(), 0.7)
        assert (out[0, j].item(), out[1, j].item()) == (lo, hi)
    # a skewed posterior: the HPDI starts at the mode (0), the equal-tailed interval does not
    assert out[0].max() < 0.05 < pi(x, 0.7)[0].min()
    assert hpdi(x.T, 0.7, dim=-1).shape == (3, 2)
    torch.testing.assert_close(hpdi(x.T, 0.7, dim=-1), out.T)


def test_weighed_quantile_fixed_values_and_equal_weights():
    x = torch.tensor([[10.0, 50.0, 40.0], [20.0, 30.0, 0.0]])
    out = weighed_quantile(x, [0.2, 0.8], torch.tensor([0.4, 0.5, 0.1]).log(), dim=-1)
    torch.testing.assert_close(out, torch.tensor([[40.4, 47.6], [9.0, 26.4]]))  # Pyro's pinned values
    y = torch.randn(101, 2, dtype=torch.float64)
    torch.testing.assert_close(weighed_quantile(y, [0.1, 0.5, 0.9], torch.zeros(101)), quantile(y, [0.1, 0.5, 0.9]))
    with pytest.raises(ValueError, match=r"log_weights must have shape \(101,\)"):
        weighed_quantile(y, [0.5], torch.zeros(3))


def test_resample_with_and_without_replacement():
    x = torch.arange(100.0).reshape(50, 2)
    y = resample(x, 30)
    assert y.shape == (30, 2) and torch.unique(y[:, 0]).numel() == 30
    assert (y[:, 1] == y[:, 0] + 1).all()  # whole rows are drawn
    z = resample(x.T, 80, dim=1, replacement=True)
    assert z.shape == (2, 80)
    with pytest.raises(ValueError, match="without replacement from 50"):
        resample(x, 60)


# ---- autocorrelation and the chain diagnostics ---------------------------------------------------
def test_autocorrelation_matches_its_definition():
    x = np.random.default_rng(0).normal(size=37)
    c = x - x.mean()
    n = len(x)
    acov = np.array([(c[: n - k] * c[k:]).sum() / (n - k) for k in range(n)])
    np.testing.assert_allclose(autocorrelation(x), acov / acov[0], atol=1e-12)  # NumPy in, NumPy out
    np.testing.assert_allclose(autocovariance(x), acov / acov[0] * c.var(), atol=1e-12)
    # Pyro's pinned values for 0..9
    torch.testing.assert_close(autocorrelation(torch.arange(10.0)),
                               torch.tensor([1, 0.78, 0.52, 0.21, -0.13, -0.52, -0.94, -1.4, -1.91, -2.45]), atol=0.01, rtol=0)
    torch.testing.assert_close(autocovariance(torch.arange(10.0))[:3], torch.tensor([8.25, 6.42, 4.25]), atol=0.01, rtol=0)
    assert (autocorrelation(torch.zeros(10)) == 1).all()
    batch = torch.randn(3, 4, 20)
    torch.testing.assert_close(autocorrelation(batch, dim=-1)[1, 2], autocorrelation(batch[1, 2]))


def test_gelman_rubin_closed_form_and_split():
    x = np.random.default_rng(2).normal(size=(3, 8))
    n = 8
    w = x.var(1, ddof=1).mean()
    b_over_n = x.mean(1).var(ddof=1)
    expected = math.sqrt(((n - 1) / n * w + b_over_n) / w)
    assert gelman_rubin(x) == pytest.approx(expected, rel=1e-12)
    x2 = torch.stack([torch.arange(10.0), torch.arange(10.0) + 1])
    assert gelman_rubin(x2).item() == pytest.approx(0.98, abs=0.01)  # Pyro's pinned value
    y = torch.rand(2, 10, dtype=torch.float64)
    torch.testing.assert_close(split_gelman_rubin(y), gelman_rubin(y.reshape(4, 5)))
    with pytest.raises(ValueError, match="at least 2 chains"):
        gelman_rubin(torch.randn(1, 10))
    with pytest.raises(ValueError, match="at least 4 draws"):
        split_gelman_rubin(torch.randn(2, 3))


def _ess_by_loops(x: np.ndarray) -> float:
    """Pyro's estimator written out with loops, for one scalar quantity ``x [C, N]``."""
    c, n = x.shape
    gamma = np.zeros((c, n))
    for i in range(c):
        d = x[i] - x[i].mean()
        for k in range(n):
            gamma[i, k] = (d[: n - k] * d[k:]).sum() / (n - k) / (d @ d / n) * d.var()
    w = x.var(1, ddof=1).mean()
    var_plus = (n - 1) / n * w + (x.mean(1).var(ddof=1) if c > 1 else 0.0)
    if c == 1:
        w = var_plus
    rho = (var_plus - w + gamma.mean(0)) / var_plus
    rho[0] = 1.0
    pairs = [rho[2 * j] + rho[2 * j + 1] for j in range(n // 2)]
    tail, running = 0.0, math.inf
    for p in pairs[1:]:
        running = min(running, max(p, 0.0))
        tail += running
    return c * n / (-1 + 2 * pairs[0] + 2 * tail)


@pytest.mark.parametrize("shape", [(1, 40), (3, 41), (4, 30)])
def test_effective_sample_size_matches_the_estimator_written_out(shape):
    rng = np.random.default_rng(3)
    x = rng.normal(size=shape).cumsum(1) * 0.3 + rng.normal(size=shape)
    assert effective_sample_size(x) == pytest.approx(_ess_by_loops(x), rel=1e-9)


def test_effective_sample_size_reference_dims_and_constants():
    assert effective_sample_size(torch.arange(1000.0).reshape(100, 10)).item() == pytest.approx(52.64, abs=0.01)  # ArviZ
    xs = torch.rand(4, 100, 2, 3, dtype=torch.float64)
    y = effective_sample_size(xs)
    assert y.shape == (2, 3)
    torch.testing.assert_close(effective_sample_size(xs.transpose(0, 1), chain_dim=1, sample_dim=0), y)
    torch.testing.assert_close(effective_sample_size(xs.movedim(1, -1), sample_dim=-1), y)
    torch.testing.assert_close(split_gelman_rubin(xs.movedim(1, -1), sample_dim=-1), split_gelman_rubin(xs))
    assert effective_sample_size(torch.ones(2, 50)).item() == 100.0  # known exactly
    assert split_gelman_rubin(torch.ones(2, 50)).item() == 1.0
    assert effective_sample_size(xs.float()).dtype == torch.float32
    with pytest.raises(ValueError, match=r"chain dim and a sample dim.*got shape \(5,\)"):
        effective_sample_size(torch.randn(5))


# ---- model comparison and scores -----------------------------------------------------------------------
def test_waic_against_loo_and_weights():
    x = -torch.arange(1.0, 101).log().reshape(25, 4)
    w_pw, p_pw = waic(x, pointwise=True)
    torch.testing.assert_close(w_pw, torch.tensor([7.49, 7.75, 7.86, 7.92]), atol=0.01, rtol=0)  # R loo::waic
    torch.testing.assert_close(p_pw, torch.tensor([1.14, 0.91, 0.79, 0.70]), atol=0.01, rtol=0)
    w, p = waic(x)
    torch.testing.assert_close(w, w_pw.sum())
    w1, p1 = waic(x.T, dim=1)
    torch.testing.assert_close((w1, p1), (w, p))
    # integer weights = repeated draws (lpd equal; p_waic up to its N/(N-1) correction)
    a, b, c = (1 + torch.rand(10, dtype=torch.float64) for _ in range(3))
    expanded = torch.stack([a, b, c, a, b, a, c, a, c]).log()
    lw = torch.tensor([4.0, 2.0, 3.0], dtype=torch.float64).log() - 1.7
    (wa, pa), (wb, pb) = waic(torch.stack([a, b, c]).log(), lw), waic(expanded)
    torch.testing.assert_close(-0.5 * wa + pa, -0.5 * wb + pb)
    torch.testing.assert_close(pa * 2 / 3, pb * 8 / 9)


def test_fit_generalized_pareto_agrees_with_scipy_mle():
    genpareto = pytest.importorskip("scipy.stats").genpareto
    for k, sigma in [(0.2, 0.8), (0.5, 1.3)]:
        x = genpareto.rvs(c=k, scale=sigma, size=8000, random_state=np.random.default_rng(4))
        fit_k, fit_sigma = fit_generalized_pareto(torch.from_numpy(x))
        mle_k, _, mle_sigma = genpareto.fit(x, floc=0)
        assert fit_k == pytest.approx(mle_k, abs=0.03) and fit_sigma == pytest.approx(mle_sigma, rel=0.04)
        assert fit_k == pytest.approx(k, abs=0.05) and fit_sigma == pytest.approx(sigma, rel=0.06)
    with pytest.raises(ValueError, match="1-d"):
        fit_generalized_pareto(torch.ones(2, 3))


@pytest.mark.parametrize("event_shape", [(), (4,), (3, 2)])
@pytest.mark.parametrize("num_samples", [1, 2, 5])
def test_crps_is_the_quadratic_formula_and_the_univariate_energy_score(num_samples, event_shape):
    truth = torch.randn(event_shape, dtype=torch.float64)
    pred = truth + 0.3 * torch.randn((num_samples,) + event_shape, dtype=torch.float64)
    actual = crps_empirical(pred, truth)
    expected = (pred - truth).abs().mean(0) - 0.5 * (pred - pred.unsqueeze(1)).abs().mean((0, 1))
    torch.testing.assert_close(actual, expected)
    es = energy_score_empirical(pred[..., None].movedim(0, -2), truth[..., None])
    torch.testing.assert_close(es, actual)


def test_energy_score_against_a_loop_and_in_batches():
    pred = torch.randn(3, 7, 4, dtype=torch.float64)  # [batch, samples, D]
    truth = torch.randn(3, 4, dtype=torch.float64)
    out = energy_score_empirical(pred, truth)
    for b in range(3):
        t1 = np.mean([np.linalg.norm(pred[b, i] - truth[b]) for i in range(7)])
        t2 = np.mean([np.linalg.norm(pred[b, i] - pred[b, j]) for i, j in itertools.product(range(7), range(7))])
        assert out[b].item() == pytest.approx(t1 - 0.5 * t2, rel=1e-12)
    torch.testing.assert_close(energy_score_empirical(pred, truth, pred_batch_size=3), out)
    with pytest.raises(ValueError, match=r"pred \(3, 7, 4\) and truth \(3, 5\)"):
        energy_score_empirical(pred, torch.randn(3, 5))
