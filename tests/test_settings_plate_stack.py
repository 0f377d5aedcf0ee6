"""ember.settings (Pyro's pyro.settings), ember.plate_stack and ember.subsample."""

from __future__ import annotations

import pytest
import torch

import ember
import ember.distributions as dist
from ember import poutine
from ember.runtime import is_validation_enabled


def test_settings_get_set_context() -> None:
    s = ember.settings
    assert set(s.get()) >= {"validate_poutine", "validate_infer", "validate_distributions_torch", "validate_distributions_pyro"}
    assert s.get("validate_poutine") is True and is_validation_enabled()
    s.set(validate_poutine=False)
    try:
        assert not is_validation_enabled() and s.get("validate_infer") is False  # one switch in Ember
    finally:
        s.set(validate_poutine=True)
    with s.context(validate_distributions_torch=False):
        assert torch.distributions.Distribution._validate_args is False
    assert torch.distributions.Distribution._validate_args is True

    @s.context(validate_infer=False)
    def f():
        return is_validation_enabled()

    assert f() is False and is_validation_enabled()
    with pytest.raises(TypeError, match="validate_poutine must be True or False"):
        s.set(validate_poutine="no")
    with pytest.raises(KeyError, match="no setting named 'nope'"):
        s.get("nope")
    with pytest.raises(RuntimeError), s.context(validate_poutine=False):
        raise RuntimeError
    assert is_validation_enabled()  # restored on an exception


def test_settings_register_with_validator_decorator() -> None:
    import types

    holder = types.SimpleNamespace(level=3)
    import sys

    sys.modules["_ember_test_settings_mod"] = types.ModuleType("_ember_test_settings_mod")
    sys.modules["_ember_test_settings_mod"].holder = holder
    try:
        @ember.settings.register("test_level", "_ember_test_settings_mod", "holder.level")
        def _check(value):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"test_level must be a non-negative int; got {value!r}")

        assert ember.settings.get("test_level") == 3
        ember.settings.set(test_level=5)
        assert holder.level == 5
        with pytest.raises(ValueError, match="non-negative"):
            ember.settings.set(test_level=-1)
        assert holder.level == 5
    finally:
        ember.settings._REGISTRY.pop("test_level", None)
        del sys.modules["_ember_test_settings_mod"]


def test_plate_stack() -> None:
    with poutine.trace() as tm:
        with ember.plate_stack("p", (2, 3, 4), rightmost_dim=-2):
            x = ember.sample("x", dist.Normal(0.0, 1.0))
    assert x.shape == (2, 3, 4, 1)
    frames = sorted((f.name, f.dim, f.size) for f in tm.trace.nodes["x"].cond_indep_stack)
    assert frames == [("p_0", -2, 4), ("p_1", -3, 3), ("p_2", -4, 2)]
    with pytest.raises(ValueError, match="rightmost_dim"):
        with ember.plate_stack("q", (2,), rightmost_dim=0):
            pass


def test_subsample() -> None:
    data = torch.arange(20.0).reshape(10, 2)  # 10 data points with an event dim of 2
    assert ember.subsample(data, event_dim=1) is data  # outside plates
    with ember.plate("d", 10, subsample_size=4) as idx:
        sub = ember.subsample(data, event_dim=1)
        assert torch.equal(sub, data[idx])
        assert ember.subsample(sub, event_dim=1) is sub  # already subsampled
        with pytest.raises(ValueError, match="size 7 at dim -2.*'d'"):
            ember.subsample(torch.zeros(7, 2), event_dim=1)
    with ember.plate("full", 10):
        assert ember.subsample(data, event_dim=1) is data
    with pytest.raises(ValueError, match="event_dim"):
        ember.subsample(data, event_dim=-1)


def test_subsample_follows_replayed_indices() -> None:
    data = torch.arange(10.0)

    def model():
        with ember.plate("d", 10, subsample_size=3):
            x = ember.subsample(data, event_dim=0)
            ember.sample("obs", dist.Normal(0.0, 1.0), obs=x)
            return x

    guide_tr = poutine.trace(model).get_trace()
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace()
    assert torch.equal(model_tr.nodes["_RETURN"].value, guide_tr.nodes["_RETURN"].value)
