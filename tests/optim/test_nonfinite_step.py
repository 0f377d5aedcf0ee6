"""No optimizer step leaves a non-finite parameter (issue 17, point 5): the step is undone and
NonFiniteParameterError names the parameters and the optimizer setting; SVI(on_nonfinite="skip")
turns it into a warning and a skipped step."""

import math

import pytest
import torch
from torch.distributions import constraints

import ember
import ember.distributions as dist
from ember import optim
from ember.infer import SVI, Trace_ELBO


def _values():
    return {k: v.detach().clone() for k, v in ember.get_param_store().named_parameters()}


def _grad_step(opt, loss_fn):
    store = ember.get_param_store()
    loss_fn().backward()
    params = [u for _, u in store.named_parameters()]
    try:
        opt(params)
    finally:
        for u in params:
            u.grad = None


def test_an_infinite_learning_rate_is_undone_and_named():
    ember.param("a", torch.tensor([1.0, 2.0]))
    ember.param("s", torch.tensor([0.5]), constraint=constraints.positive)
    before = _values()
    opt = optim.Adam({"lr": math.inf})
    with pytest.raises(optim.NonFiniteParameterError) as e:
        _grad_step(opt, lambda: (ember.param("a") ** 2).sum() + ember.param("s").sum())
    assert "the Adam(lr=inf) step made parameters ['a', 's'] non-finite (e.g. 'a' became [-inf, -inf])" in str(e.value)
    assert "restored to its value before the step" in str(e.value) and "Lower the learning rate" in str(e.value)
    assert e.value.names == ["a", "s"] and e.value.setting == "Adam(lr=inf)"
    after = _values()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_only_the_group_at_fault_is_named_but_the_whole_step_is_undone():
    ember.param("ok", torch.tensor([1.0]))
    ember.param("bad", torch.tensor([1.0]))
    before = _values()
    opt = optim.SGD(lambda module, name: {"lr": math.inf if name == "bad" else 0.1})
    with pytest.raises(optim.NonFiniteParameterError, match=r"SGD\(lr=inf\) step made parameters \['bad'\]") as e:
        _grad_step(opt, lambda: (ember.param("ok") + ember.param("bad")).sum())
    assert e.value.names == ["bad"]
    after = _values()
    assert torch.equal(after["ok"], before["ok"]) and torch.equal(after["bad"], before["bad"])
    # a later finite step works: the restored parameters are the optimizer's again
    opt2 = optim.SGD({"lr": 0.1})
    _grad_step(opt2, lambda: (ember.param("ok") + ember.param("bad")).sum())
    assert torch.allclose(ember.param("ok"), torch.tensor([0.9]))


def test_non_finite_optimizer_state_is_reset():
    ember.param("w", torch.tensor([1.0, -1.0]))
    opt = optim.Adam({"lr": 0.1})
    _grad_step(opt, lambda: (ember.param("w") ** 2).sum())  # one good step: moments exist
    good = _values()["w"]
    u = dict(ember.get_param_store().named_parameters())["w"]
    u.grad = torch.tensor([math.inf, 1.0])  # what a non-finite gradient does with Ember's checks off
    with pytest.raises(optim.NonFiniteParameterError, match=r"non-finite optimizer state of \['w'\] is reset"):
        opt([u])
    assert torch.equal(_values()["w"], good)
    assert u not in opt.optimizers[0].state  # fresh moments at the next step
    u.grad = None
    _grad_step(opt, lambda: (ember.param("w") ** 2).sum())
    assert bool(torch.isfinite(_values()["w"]).all())


def test_finite_steps_are_unchanged():
    ember.param("w", torch.tensor([3.0]))
    opt = optim.SGD({"lr": 0.25})
    _grad_step(opt, lambda: (ember.param("w") ** 2).sum())
    assert torch.equal(ember.param("w"), torch.tensor([1.5]))  # 3 - 0.25 * 6


def _model(data):
    loc = ember.param("loc", torch.tensor(0.0))
    with ember.plate("data", len(data)):
        ember.sample("obs", dist.Normal(loc, 1.0), obs=data)


def _guide(data):
    pass


def test_svi_raises_by_default_and_leaves_the_parameters():
    data = torch.tensor([1.0, 2.0, 3.0])
    svi = SVI(_model, _guide, optim.Adam({"lr": math.inf}), Trace_ELBO())
    with pytest.raises(optim.NonFiniteParameterError, match=r"Adam\(lr=inf\) step made parameters \['loc'\]"):
        svi.step(data)
    assert ember.param("loc").item() == 0.0
    assert dict(ember.get_param_store().named_parameters())["loc"].grad is None


def test_svi_skip_warns_and_returns_nan():
    data = torch.tensor([1.0, 2.0, 3.0])
    svi = SVI(_model, _guide, optim.Adam({"lr": math.inf}), Trace_ELBO(), on_nonfinite="skip")
    with pytest.warns(RuntimeWarning, match=r"SVI.step skipped: the Adam\(lr=inf\) step made parameters \['loc'\]"):
        loss = svi.step(data)
    assert math.isnan(loss)
    assert ember.param("loc").item() == 0.0
    assert dict(ember.get_param_store().named_parameters())["loc"].grad is None


def test_parameters_of_several_dtypes_are_all_checked():
    ember.param("f32", torch.tensor([1.0]))
    ember.param("f64", torch.tensor([1.0], dtype=torch.float64))
    before = _values()
    opt = optim.SGD(lambda module, name: {"lr": math.inf if name == "f64" else 0.1})
    with pytest.raises(optim.NonFiniteParameterError, match=r"parameters \['f64'\]"):
        _grad_step(opt, lambda: ember.param("f32").sum() + ember.param("f64").sum())
    after = _values()
    assert torch.equal(after["f32"], before["f32"]) and torch.equal(after["f64"], before["f64"])
    assert after["f64"].dtype == torch.float64
    _grad_step(optim.SGD({"lr": 0.5}), lambda: ember.param("f32").sum() + ember.param("f64").sum())  # finite: both step
    assert _values()["f32"].item() == 0.5 and _values()["f64"].item() == 0.5


def test_the_guard_goes_with_validation():
    import ember

    ember.clear_param_store()
    p = ember.param("w", torch.tensor(1.0))
    opt = ember.optim.SGD({"lr": float("inf")})
    u = ember.get_param_store().unconstrained("w")
    u.grad = torch.tensor(1.0)
    with ember.validation_enabled(False):
        opt([u])  # no guard: the step goes through as torch's would
    assert not torch.isfinite(ember.param("w")).all()
    ember.clear_param_store()
    del p
