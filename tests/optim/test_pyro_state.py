"""PyroOptim.get_state() in Pyro's form ({param name: a torch optimizer's state_dict}), as
pyro-ppl 1.9.2 gives it: empty right after load(), then the parameters met since."""

import pytest
import torch
from torch.distributions import constraints

import ember
from ember import optim


def leaf(name):
    return ember.get_param_store().get_param(name).unconstrained()


def step(opt, names=("a", "b")):
    sum((ember.param(n) ** 2).sum() for n in names).backward()
    params = [leaf(n) for n in names]
    opt(params)
    for p in params:
        p.grad = None


@pytest.fixture(autouse=True)
def store():
    ember.clear_param_store()
    ember.param("a", torch.tensor([1.0, 2.0]))
    ember.param("b", torch.tensor(3.0), constraint=constraints.positive)
    yield
    ember.clear_param_store()


def test_get_state_is_pyros_per_parameter_state_dict():
    opt = optim.Adam({"lr": 0.1})
    assert opt.get_state() == {}
    step(opt)
    state = opt.get_state()
    assert list(state) == ["a", "b"]
    a = state["a"]
    assert set(a) == {"state", "param_groups"} and list(a["state"]) == [0]
    # pyro-ppl 1.9.2: step 1, exp_avg = 0.1 * grad (2a), exp_avg_sq = 0.001 * grad ** 2
    assert a["state"][0]["step"].item() == 1.0
    torch.testing.assert_close(a["state"][0]["exp_avg"], torch.tensor([0.2, 0.4]))
    torch.testing.assert_close(a["state"][0]["exp_avg_sq"], torch.tensor([0.004, 0.016]))
    group = a["param_groups"][0]
    assert group["params"] == [0] and group["lr"] == 0.1 and group["betas"] == (0.9, 0.999)
    assert state["b"]["state"][0]["exp_avg"].shape == ()


def test_right_after_load_get_state_is_empty_as_in_pyro(tmp_path):
    opt = optim.Adam({"lr": 0.1})
    step(opt)
    opt.save(tmp_path / "o.pt")
    fresh = optim.Adam({"lr": 0.1})
    fresh.load(tmp_path / "o.pt")
    assert fresh.get_state() == {}  # pyro: {} (the loaded state waits for its parameters)
    assert set(fresh.get_plain_state()["params"]) == {"a", "b"}  # Ember's fuller state keeps it
    step(fresh, names=("a",))
    assert list(fresh.get_state()) == ["a"] and fresh.get_state()["a"]["state"][0]["step"].item() == 2.0
    step(fresh)
    assert list(fresh.get_state()) == ["a", "b"] and fresh.get_state()["b"]["state"][0]["step"].item() == 2.0


def test_set_state_takes_pyros_form():
    opt = optim.Adam({"lr": 0.1})
    step(opt)
    state = opt.get_state()
    other = optim.Adam({"lr": 0.1})
    other.set_state(state)
    assert other.get_state() == {}
    a_before = ember.param("a").detach().clone()
    step(other)
    got = other.get_state()
    assert got["a"]["state"][0]["step"].item() == 2.0 and got["b"]["state"][0]["step"].item() == 2.0
    torch.testing.assert_close(got["a"]["state"][0]["exp_avg"], 0.9 * torch.tensor([0.2, 0.4]) + 0.1 * 2 * a_before)
    with pytest.raises(TypeError, match="param 'a'"):
        other.set_state({"a": 3})


def test_scheduler_state_in_pyros_form():
    sched = optim.ExponentialLR({"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.1}, "gamma": 0.5})
    step(sched)
    a = sched.get_state()["a"]
    assert set(a) == {"scheduler", "optimizer"}
    assert a["scheduler"]["gamma"] == 0.5 and a["scheduler"]["base_lrs"] == [0.1] and a["scheduler"]["last_epoch"] == 0
    assert a["optimizer"]["param_groups"][0]["initial_lr"] == 0.1 and a["optimizer"]["state"][0]["step"].item() == 1.0
