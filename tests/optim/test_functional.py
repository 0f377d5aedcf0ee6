"""ember.optim.functional: an optimizer's step as tensor operations, the same numbers as the torch
optimizer's own step, and the optimizers it refuses, with the reason."""

import pytest
import torch

import ember
from ember import optim
from ember.optim.functional import functional_update


def _stepped(make, steps=3):
    """Two store parameters stepped ``steps`` times by ``make()`` on a fixed quadratic."""
    ember.clear_param_store()
    ember.param("x", torch.tensor([1.0, -2.0, 3.0]))
    ember.param("y", torch.tensor(0.5))
    opt = make()
    store = ember.get_param_store()
    params = [store.unconstrained("x"), store.unconstrained("y")]
    for _ in range(steps):
        (params[0] ** 2).sum().mul(3.0).add(params[1].exp()).backward()
        opt(params)
        for p in params:
            p.grad = None
    return opt, params


@pytest.mark.parametrize("make", [
    lambda: optim.SGD({"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    lambda: optim.SGD({"lr": 0.1, "momentum": 0.5, "dampening": 0.1, "maximize": True}),
    lambda: optim.Adam({"lr": 0.05, "weight_decay": 0.1}),
    lambda: optim.AdamW({"lr": 0.05}),
    lambda: optim.ClippedAdam({"lr": 0.05, "lrd": 0.9, "clip_norm": 2.0}),
    lambda: optim.Adam({"lr": 0.05}, clip_args={"clip_norm": 1.0}),
], ids=["sgd_nesterov", "sgd_maximize", "adam", "adamw", "clipped_adam", "adam_clip_norm"])
def test_the_functional_step_is_the_torch_optimizers_step(make):
    opt, params = _stepped(make)
    update = functional_update(opt, params)
    assert not isinstance(update, str), update
    grads = [6.0 * params[0].detach(), params[1].detach().exp()]
    k = 2
    sched = update.schedule(k).unbind(0)
    ps, state = [p.detach().clone() for p in params], [s.clone() for s in update.state()]
    for j in range(k):
        ps, state = update.update(j, ps, [6.0 * ps[0], ps[1].exp()] if j else grads, state, sched)
    for _ in range(k):  # the same two steps by the torch optimizer
        (params[0] ** 2).sum().mul(3.0).add(params[1].exp()).backward()
        opt(params)
        for p in params:
            p.grad = None
    for a, b in zip(ps, params):
        torch.testing.assert_close(a, b.detach(), rtol=1e-6, atol=1e-7)
    for a, b in zip(state, update.state()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("make, reason", [
    (lambda: optim.RMSprop({"lr": 0.01}), "the update of RMSprop (parameter 'x'"),
    (lambda: optim.Adam({"lr": 0.01, "amsgrad": True}), "the update of Adam (parameter 'x'"),
    (lambda: optim.ExponentialLR({"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.01}, "gamma": 0.9}),
     "the optimizer is an LR scheduler wrapper (ExponentialLR)"),
])
def test_what_cannot_be_expressed_is_refused_with_the_reason(make, reason):
    opt, params = _stepped(make, steps=1)
    got = functional_update(opt, params)
    assert isinstance(got, str) and reason in got, got


def test_a_parameter_not_yet_stepped_is_refused():
    ember.clear_param_store()
    x = ember.param("x", torch.tensor(1.0))
    got = functional_update(optim.Adam({"lr": 0.1}), [ember.get_param_store().unconstrained("x")])
    assert got == "a parameter has not been stepped by the optimizer yet"
    assert x is not None
