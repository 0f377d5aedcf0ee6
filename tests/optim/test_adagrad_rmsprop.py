"""AdagradRMSProp (Pyro's ADVI step-size sequence), by hand, and Pyro's _LRScheduler name."""

from __future__ import annotations

import pytest
import torch

import ember
import ember.distributions as dist
from ember.infer import SVI, Trace_ELBO
from ember.optim import AdagradRMSProp
from ember.optim.adagrad_rmsprop import AdagradRMSProp as TorchAdagradRMSProp


def test_three_steps_by_hand():
    p = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = TorchAdagradRMSProp([p], eta=0.5, delta=0.1, t=0.2)
    grads = [torch.tensor([0.3, -1.0]), torch.tensor([0.1, 2.0]), torch.tensor([-0.4, 0.5])]
    x, s = torch.tensor([1.0, -2.0]), None
    for k, g in enumerate(grads, start=1):
        p.grad = g.clone()
        opt.step()
        s = g * g if s is None else 0.2 * g * g + 0.8 * s
        x = x - 0.5 * k ** (-0.5 + 0.1) * g / (1 + s.sqrt())
        torch.testing.assert_close(p.detach(), x)


def test_wrapped_for_svi_and_bad_arguments():
    def model():
        ember.sample("z", dist.Normal(3.0, 1.0))

    def guide():
        ember.sample("z", dist.Normal(ember.param("m", torch.tensor(0.0)), 1.0))

    svi = SVI(model, guide, AdagradRMSProp({"eta": 0.5}), Trace_ELBO())
    for _ in range(300):
        svi.step()
    assert abs(float(ember.param("m")) - 3.0) < 0.4
    with pytest.raises(ValueError, match="t must lie in"):
        TorchAdagradRMSProp([torch.zeros(1, requires_grad=True)], t=0.0)


def test_pyros_lr_scheduler_base_name():
    assert ember.optim._LRScheduler.__name__ == "_LRScheduler"
