"""SMCFilter on a linear-Gaussian state-space model, against the Kalman filter."""

from __future__ import annotations

import math

import pytest
import torch

import ember as pyro
import ember.distributions as dist
from ember.infer.smcfilter import SMCFailed, SMCFilter

A, Q, R = 0.9, 0.5, 0.4  # z_t = A z_{t-1} + N(0, Q^2); y_t = z_t + N(0, R^2); z_0 ~ N(0, 1)


class Model:
    def init(self, state):
        self.t = 0
        state["z"] = pyro.sample("z_0", dist.Normal(0.0, 1.0))

    def step(self, state, y):
        self.t += 1
        state["z"] = pyro.sample(f"z_{self.t}", dist.Normal(A * state["z"], Q))
        pyro.sample(f"y_{self.t}", dist.Normal(state["z"], R), obs=y)


class Guide:
    """A proposal a little off the transition (so that the weights do some work)."""

    def init(self, state):
        self.t = 0
        pyro.sample("z_0", dist.Normal(0.0, 1.2))

    def step(self, state, y):
        self.t += 1
        pyro.sample(f"z_{self.t}", dist.Normal(0.5 * (A * state["z"] + y), Q))


def _kalman(ys):
    m, v, log_ev = 0.0, 1.0, 0.0
    for y in ys.tolist():
        m, v = A * m, A * A * v + Q * Q
        s = v + R * R
        log_ev += -0.5 * (math.log(2 * math.pi * s) + (y - m) ** 2 / s)
        k = v / s
        m, v = m + k * (y - m), (1 - k) * v
    return m, v, log_ev


def test_smc_matches_the_kalman_filter():
    torch.manual_seed(0)
    ys = torch.randn(8) * 1.5
    pyro.set_rng_seed(1)
    smc = SMCFilter(Model(), Guide(), num_particles=4000, max_plate_nesting=0)
    smc.init()
    for y in ys:
        smc.step(y)
    m, v, log_ev = _kalman(ys)
    post = smc.get_empirical()["z"]
    assert post.mean.item() == pytest.approx(m, abs=0.05)
    assert post.variance.item() == pytest.approx(v, rel=0.1)
    assert smc.log_evidence.item() == pytest.approx(log_ev, abs=0.1)
    state, log_w = smc.get_values_and_log_weights()
    assert state["z"].shape == (4000,) and log_w.shape == (4000,)


def test_smc_bad_input():
    with pytest.raises(TypeError, match="needs methods init"):
        SMCFilter(object(), Guide(), 10, 0)
    with pytest.raises(ValueError, match="ess_threshold"):
        SMCFilter(Model(), Guide(), 10, 0, ess_threshold=0.0)

    class Impossible(Model):
        def step(self, state, y):
            self.t += 1
            state["z"] = pyro.sample(f"z_{self.t}", dist.Normal(A * state["z"], Q))
            pyro.factor(f"y_{self.t}", torch.full((10,), -math.inf))

    smc = SMCFilter(Impossible(), Guide(), 10, 0)
    smc.init()
    with pytest.raises(SMCFailed, match="every particle has zero weight"):
        smc.step(torch.tensor(0.0))
