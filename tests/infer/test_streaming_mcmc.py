"""StreamingMCMC and ember.ops.streaming: the statistics equal those of the kept draws, exactly."""

from __future__ import annotations

import math

import pytest
import torch

import ember as pyro
import ember.distributions as dist
from ember.infer.mcmc import MCMC, NUTS, StreamingMCMC
from ember.ops.streaming import CountMeanStats, CountMeanVarianceStats, CountStats, StackStats, StatsOfDict


def test_streaming_statistics_equal_the_batch_ones_and_merge_exactly():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=gen)
    a, b = CountMeanVarianceStats(), CountMeanVarianceStats()
    for row in x[:20]:
        a.update(row)
    for row in x[20:]:
        b.update(row)
    both = a.merge(b).get()
    assert both["count"] == 50
    torch.testing.assert_close(both["mean"], x.mean(0))
    torch.testing.assert_close(both["variance"], x.var(0))  # unbiased, as Pyro's
    m = CountMeanStats()
    for row in x:
        m.update(row)
    torch.testing.assert_close(m.get()["mean"], x.mean(0))
    s = StackStats()
    s.update(x[0])
    assert torch.equal(s.merge(s).get()["samples"], torch.stack([x[0], x[0]]))
    d = StatsOfDict({"a": CountStats}, default=CountMeanStats)
    d.update({"a": torch.tensor(0.0), "b": torch.tensor([1.0, 2.0])})
    assert d.get()["a"] == {"count": 1} and torch.equal(d.get()["b"]["mean"], torch.tensor([1.0, 2.0]))
    assert CountMeanVarianceStats().get() == {"count": 0}
    with pytest.raises(ValueError, match="shape"):
        a.update(torch.zeros(2))


def _model():
    pyro.sample("mu", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    pyro.sample("s", dist.LogNormal(0.0, 0.5))


@pytest.mark.parametrize("chain_method", ["vectorized", "sequential"])
def test_streaming_mcmc_gives_the_statistics_of_mcmcs_draws(chain_method):
    # the same seed and kernel: the same chains; the statistics are those of MCMC's kept draws
    pyro.set_rng_seed(0)
    full = MCMC(NUTS(_model), num_samples=60, warmup_steps=40, num_chains=2, chain_method=chain_method, disable_progbar=True)
    full.run()
    pyro.set_rng_seed(0)
    streaming = StreamingMCMC(NUTS(_model), num_samples=60, warmup_steps=40, num_chains=2, chain_method=chain_method,
                              disable_progbar=True)
    streaming.run()
    draws = full.get_samples(group_by_chain=True)
    stats = streaming.get_statistics()
    for c in range(2):
        for name in ("mu", "s"):
            st = stats[(c, name)]
            assert st["count"] == 60
            torch.testing.assert_close(st["mean"], draws[name][c].mean(0), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(st["variance"], draws[name][c].var(0), rtol=1e-4, atol=1e-6)
    merged = streaming.get_statistics(group_by_chain=False)
    torch.testing.assert_close(merged["mu"]["mean"], draws["mu"].reshape(-1, 2).mean(0), rtol=1e-5, atol=1e-6)
    diag = streaming.diagnostics()
    n = 60
    w = draws["s"].var(1).mean(0)
    by_hand = math.sqrt(float(((n - 1) / n * w + draws["s"].mean(1).var(0)) / w))
    assert diag["s"]["r_hat"].item() == pytest.approx(by_hand, rel=1e-4)
    assert set(diag) == {"mu", "s", "divergences", "acceptance rate"}
    with pytest.raises(RuntimeError, match="get_statistics"):
        streaming.get_samples()


def test_streaming_mcmc_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="parallel"):
        StreamingMCMC(NUTS(_model), num_samples=5, chain_method="parallel")
    with pytest.raises(RuntimeError, match="run"):
        StreamingMCMC(NUTS(_model), num_samples=5).get_statistics()
