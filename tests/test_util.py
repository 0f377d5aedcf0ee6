"""ember.util: Pyro's pyro.util names (random state, non-finite warnings, trace checks, helpers)."""

from __future__ import annotations

import random
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import ember
import ember.distributions as dist
from ember import poutine, util


def _draws() -> tuple:
    return float(torch.rand(())), float(np.random.rand()), random.random()


def test_rng_seed_and_state_round_trip() -> None:
    assert util.set_rng_seed is ember.set_rng_seed  # one implementation
    util.set_rng_seed(123)
    first = _draws()
    util.set_rng_seed(123)
    assert _draws() == first
    state = util.get_rng_state()
    assert set(state) == {"torch", "random", "numpy"}
    later = _draws()
    assert later != first
    util.set_rng_state(state)
    assert _draws() == later
    with pytest.raises(KeyError, match="'torch'"):
        util.set_rng_state({"random": random.getstate()})


def test_isnan_isinf() -> None:
    assert util.torch_isnan(float("nan")) and not util.torch_isnan(1.0)
    assert bool(util.torch_isnan(torch.tensor([0.0, float("nan")])))
    assert not bool(util.torch_isnan(torch.zeros(3)))
    assert util.torch_isinf(float("-inf")) and not util.torch_isinf(2.0)
    assert bool(util.torch_isinf(torch.tensor([1.0, float("inf")]))) and not bool(util.torch_isinf(torch.ones(2)))


def test_warn_if_nan_and_inf_value_and_gradient() -> None:
    with pytest.warns(UserWarning, match="Encountered NaN: x"):
        util.warn_if_nan(torch.tensor(float("nan")), "x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert util.warn_if_nan(torch.tensor(1.0)) == 1.0
        util.warn_if_inf(torch.tensor(float("inf")), allow_posinf=True)
    with pytest.warns(UserWarning, match=r"Encountered -inf\."):
        util.warn_if_inf(float("-inf"))
    # the gradient is checked in the backward pass
    x = torch.tensor(0.0, requires_grad=True)
    y = util.warn_if_nan(x * 1.0, "y")
    with pytest.warns(UserWarning, match="Encountered NaN: backward y"):
        (y * float("nan")).backward()


def _trace(model) -> poutine.Trace:
    tr = poutine.trace(model).get_trace()
    tr.compute_log_prob()
    return tr


def test_check_site_shape() -> None:
    def good():
        with ember.plate("a", 3, dim=-1), ember.plate("b", 2, dim=-2):
            ember.sample("x", dist.Normal(0.0, 1.0))

    site = _trace(good).nodes["x"]
    util.check_site_shape(site, max_plate_nesting=2)
    with pytest.raises(ValueError, match="'x'.*increase max_plate_nesting to at least 2"):
        util.check_site_shape(site, max_plate_nesting=1)

    def bad():  # a batch dim no plate declares, right of max_plate_nesting
        ember.sample("y", dist.Normal(torch.zeros(4), 1.0))

    with pytest.raises(ValueError, match="'y': invalid log_prob shape"):
        util.check_site_shape(_trace(bad).nodes["y"], max_plate_nesting=1)
    # left of max_plate_nesting nothing is checked
    util.check_site_shape(_trace(bad).nodes["y"], max_plate_nesting=0)
    with pytest.raises(ValueError, match="compute_log_prob"):
        util.check_site_shape(poutine.trace(bad).get_trace().nodes["y"], 1)


def test_check_traces_match_and_model_guide_match() -> None:
    def m1():
        ember.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    def m2():
        ember.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))

    def m3():
        ember.sample("w", dist.Normal(0.0, 1.0))

    util.check_traces_match(_trace(m1), _trace(m1))
    with pytest.raises(ValueError, match="'z'.*\\(2,\\) vs \\(3,\\)"):
        util.check_traces_match(_trace(m1), _trace(m2))
    with pytest.warns(UserWarning, match="Model vars changed"):
        util.check_traces_match(_trace(m1), _trace(m3))
    # Ember's own model/guide check
    with pytest.warns(UserWarning, match="in the model but not in the guide"), pytest.warns(UserWarning, match="in the guide but not in the model"):
        util.check_model_guide_match(_trace(m1), _trace(m3))


def test_check_if_enumerated() -> None:
    def guide():
        ember.sample("c", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})

    with pytest.warns(UserWarning, match="enumeration: c"):
        util.check_if_enumerated(poutine.trace(guide).get_trace())


def test_check_traceenum_requirements() -> None:
    def model():
        with ember.plate("p", 2):
            ember.sample("e", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        ember.sample("after", dist.Normal(0.0, 1.0))

    tr = poutine.trace(model).get_trace()
    with pytest.warns(RuntimeWarning, match="'after'.*\\['e'\\].*\\['p'\\]"):
        util.check_traceenum_requirements(tr, tr)


def test_small_helpers() -> None:
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(2, 3)

    m = M()
    assert util.deep_getattr(m, "fc.weight") is m.fc.weight
    with pytest.raises(AttributeError):
        util.deep_getattr(m, "fc.nope")
    entered = []

    class CM:
        def __enter__(self):
            entered.append(1)
            return "in"

        def __exit__(self, *a):
            entered.append(2)

    with util.optional(CM(), False) as v:
        assert v is None
    with util.optional(CM(), True) as v:
        assert v == "in"
    assert entered == [1, 2]
    with util.timed() as t:
        pass
    assert t.elapsed >= 0
    with pytest.raises(ZeroDivisionError):  # timed does not swallow errors
        with util.timed():
            1 / 0  # noqa: B018
    assert util.torch_float(torch.tensor(2, dtype=torch.int64)).dtype == torch.float32 and util.torch_float(3) == 3.0
    assert [int(v) for v in util.jit_iter(torch.arange(3))] == [0, 1, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with util.ignore_experimental_warning():
            warnings.warn("x", util.ExperimentalWarning, stacklevel=1)
    with util.ignore_jit_warnings():  # outside tracing: nothing
        pass


def test_ember_util_imports_first() -> None:
    # ember.util imports ember.primitives and (lazily) ember.infer; importing it first works
    res = subprocess.run([sys.executable, "-c", "import ember.util; import ember.infer"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
