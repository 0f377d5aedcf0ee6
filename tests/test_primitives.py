"""The language primitives (sample, param, module, factor, deterministic, ...) and the
distribution extensions."""

import math
import random
import warnings

import numpy as np
import pytest
import torch
import torch.distributions as tdist
import torch.nn as nn
from torch.distributions import constraints, transform_to

import ember as pyro
import ember.distributions as dist
from ember import poutine
from ember.runtime import get_stack

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@pytest.fixture(autouse=True)
def _clean_state():
    pyro.clear_param_store()
    get_stack().clear()
    yield
    leaked = list(get_stack())
    get_stack().clear()
    pyro.clear_param_store()
    assert leaked == [], f"handlers left on the stack: {leaked}"




def unconstrained(name):
    return dict(pyro.get_param_store().named_parameters())[name]


# ============================================================================== sample
class TestSample:
    def test_outside_handlers_draws(self):
        assert get_stack() == []
        x = pyro.sample("x", dist.Normal(torch.zeros(3), 1.0))
        assert isinstance(x, torch.Tensor) and x.shape == (3,)
        assert len(set(x.tolist())) == 3

    def test_outside_handlers_obs_returned(self):
        obs = torch.tensor([1.0, 2.0])
        assert pyro.sample("x", dist.Normal(0.0, 1.0), obs=obs) is obs

    def test_obs_python_number(self):
        v = pyro.sample("m", dist.Normal(0.0, 1.0), obs=9.5)
        assert isinstance(v, torch.Tensor) and v.dtype == torch.float32 and v.item() == 9.5

        def scale_obs(guess):  # seed 003
            weight = pyro.sample("weight", dist.Normal(guess, 1.0))
            return pyro.sample("measurement", dist.Normal(weight, 1.0), obs=9.5)

        tr = poutine.trace(scale_obs).get_trace(8.5)
        m = tr.nodes["measurement"]
        assert m.is_observed and m.value.item() == 9.5 and m.value.dtype == torch.float32
        w = tr.nodes["weight"].value.item()
        expected = -0.5 * (w - 8.5) ** 2 - 0.5 * (9.5 - w) ** 2 - 2 * LOG_SQRT_2PI
        assert tr.log_prob_sum().item() == pytest.approx(expected, abs=1e-5)

    def test_obs_python_int(self):
        def model():
            pyro.sample("k", dist.Poisson(2.0), obs=3)

        tr = poutine.trace(model).get_trace()
        k = tr.nodes["k"].value
        assert k.dtype == torch.float32 and k.item() == 3.0
        assert tr.log_prob_sum().item() == pytest.approx(3 * math.log(2.0) - 2.0 - math.log(6.0), abs=1e-5)

    def test_obs_number_takes_distribution_dtype(self):
        d = dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
        tr = poutine.trace(lambda: pyro.sample("o", d, obs=9.5)).get_trace()
        assert tr.nodes["o"].value.dtype == torch.float64

    def test_obs_python_bool(self):
        tr = poutine.trace(lambda: pyro.sample("b", dist.Bernoulli(0.3), obs=True)).get_trace()
        assert tr.nodes["b"].value.item() == 1.0
        assert tr.log_prob_sum().item() == pytest.approx(math.log(0.3), abs=1e-6)

    def test_obs_numpy_float_array(self):
        arr = np.array([1.5, -2.0], dtype=np.float64)

        def model():
            with pyro.plate("p", 2):
                return pyro.sample("o", dist.Normal(0.0, 1.0), obs=arr)

        tr = poutine.trace(model).get_trace()
        v = tr.nodes["o"].value
        assert isinstance(v, torch.Tensor) and v.dtype == torch.float32
        assert v.tolist() == [1.5, -2.0]
        assert tr.log_prob_sum().item() == pytest.approx(-0.5 * (1.5**2 + 4.0) - 2 * LOG_SQRT_2PI, abs=1e-5)

    def test_obs_numpy_int_array_for_categorical(self):
        arr = np.array([2, 0])
        probs = torch.tensor([0.2, 0.3, 0.5])

        def model():
            with pyro.plate("p", 2):
                pyro.sample("c", dist.Categorical(probs), obs=arr)

        tr = poutine.trace(model).get_trace()
        v = tr.nodes["c"].value
        assert not v.is_floating_point() and v.tolist() == [2, 0]
        assert tr.log_prob_sum().item() == pytest.approx(math.log(0.5) + math.log(0.2), abs=1e-6)

    @pytest.mark.parametrize("bad", [lambda: torch.tensor(0.0), dist.Normal, tdist.Normal, "normal"])
    @pytest.mark.parametrize("traced", [False, True])
    def test_non_distribution_raises_type_error_naming_site(self, bad, traced):
        def model():
            pyro.sample("bad_site", bad)

        with pytest.raises(TypeError, match="bad_site"):
            if traced:
                poutine.trace(model).get_trace()
            else:
                model()

    def test_class_hint_in_message(self):
        with pytest.raises(TypeError, match="Normal"):
            pyro.sample("s", dist.Normal)

    def test_plain_torch_distribution_accepted(self):
        tr = poutine.trace(lambda: pyro.sample("t", tdist.Normal(0.0, 1.0))).get_trace()
        assert isinstance(tr.nodes["t"].fn, tdist.Normal)
        v = tr.nodes["t"].value
        assert tr.log_prob_sum().item() == pytest.approx(-0.5 * v.item() ** 2 - LOG_SQRT_2PI, abs=1e-5)

    def test_infer_kwarg_recorded(self):
        tr = poutine.trace(lambda: pyro.sample("z", dist.Normal(0.0, 1.0), infer={"baseline": {"use_decaying_avg_baseline": True}})).get_trace()
        assert tr.nodes["z"].infer == {"baseline": {"use_decaying_avg_baseline": True}}


# =============================================================================== param
class TestParam:
    def test_unconstrained_param(self):
        a = pyro.param("a", torch.tensor([1.0, 2.0]))
        assert torch.equal(a, torch.tensor([1.0, 2.0]))
        assert a.requires_grad and a.is_leaf
        assert "a" in pyro.get_param_store()

    def test_init_tensor_is_copied_not_aliased(self):
        init = torch.tensor([1.0, 2.0])
        pyro.param("a", init)
        with torch.no_grad():
            pyro.param("a").add_(1.0)
        assert init.tolist() == [1.0, 2.0]
        assert pyro.param("a").tolist() == [2.0, 3.0]

    def test_second_call_ignores_init(self):
        pyro.param("a", torch.tensor(1.0))
        assert pyro.param("a", torch.tensor(5.0)).item() == 1.0
        assert pyro.param("a").item() == 1.0

    def test_positive(self):
        b = pyro.param("b", torch.tensor(2.0), constraint=constraints.positive)
        assert b.item() == pytest.approx(2.0)
        assert unconstrained("b").item() == pytest.approx(math.log(2.0))
        assert pyro.get_param_store().get_param_constraint("b") is constraints.positive
        b.backward()
        # d exp(u) / du = exp(u) = 2
        assert unconstrained("b").grad.item() == pytest.approx(2.0)

    def test_interval(self):
        c = pyro.param("c", torch.tensor(0.25), constraint=constraints.interval(0.0, 1.0))
        assert c.item() == pytest.approx(0.25)
        assert unconstrained("c").item() == pytest.approx(math.log(0.25 / 0.75), abs=1e-5)

    def test_simplex(self):
        v = torch.tensor([0.2, 0.3, 0.5])
        s = pyro.param("s", v, constraint=constraints.simplex)
        assert torch.allclose(s, v, atol=1e-6)
        u = unconstrained("s")
        assert torch.allclose(transform_to(constraints.simplex)(u), v, atol=1e-6)
        assert not torch.allclose(u, v)  # the store keeps the unconstrained tensor
        # a gradient step on u keeps the value on the simplex
        with torch.no_grad():
            u.add_(torch.tensor([3.0, -1.0, 0.0]))
        s2 = pyro.param("s")
        assert s2.sum().item() == pytest.approx(1.0, abs=1e-6) and (s2 > 0).all()
        assert not torch.allclose(s2, v)

    @pytest.mark.parametrize(
        "init, constraint",
        [
            (torch.tensor(-1.0), constraints.positive),
            (torch.tensor(0.0), constraints.positive),
            (torch.tensor([2.0, -1.0]), constraints.positive),
            (torch.tensor(-1.0), constraints.greater_than(0.5)),
            (torch.tensor([0.5, -0.1, 0.6]), constraints.simplex),
            pytest.param(
                torch.tensor(1.5),
                constraints.interval(0.0, 1.0)
            ),
            pytest.param(
                torch.tensor(-3.0),
                constraints.unit_interval
            ),
        ],
    )
    @pytest.mark.filterwarnings("ignore:param 'bad_param'")
    def test_init_outside_constraint_raises(self, init, constraint):
        with pytest.raises(ValueError, match="'bad_param'"):
            pyro.param("bad_param", init, constraint=constraint)
        assert "bad_param" not in pyro.get_param_store()

    def test_unnormalized_positive_simplex_init_is_normalized_with_warning(self):
        with pytest.warns(UserWarning, match="'w'"):
            w = pyro.param("w", torch.tensor([1.0, 1.0, 2.0]), constraint=constraints.simplex)
        assert torch.allclose(w, torch.tensor([0.25, 0.25, 0.5]), atol=1e-6)

    def test_callable_init_called_once(self):
        calls = []

        def init():
            calls.append(1)
            return torch.full((2,), 3.0)

        assert pyro.param("f", init).tolist() == [3.0, 3.0]
        assert pyro.param("f", init).tolist() == [3.0, 3.0]
        assert len(calls) == 1

    def test_python_number_init(self):
        assert pyro.param("n", 1.5).item() == 1.5

    def test_integer_tensor_init_raises(self):
        with pytest.raises(TypeError, match="'i'"):
            pyro.param("i", torch.tensor([1, 2]))

    def test_unknown_param_without_init_raises_key_error(self):
        with pytest.raises(KeyError, match="no_such_param"):
            pyro.param("no_such_param")
        with pytest.raises(KeyError, match="no_such_param"):
            poutine.trace(lambda: pyro.param("no_such_param")).get_trace()

    def test_param_in_trace_is_constrained_value(self):
        def guide():
            a = pyro.param("a", torch.tensor(8.5))
            b = pyro.param("b", torch.tensor(1.0), constraint=constraints.positive)
            return pyro.sample("weight", dist.Normal(a, b))

        tr = poutine.trace(guide).get_trace()
        assert tr.nodes["b"].value.item() == pytest.approx(1.0)
        assert tr.nodes["weight"].fn.loc.item() == 8.5
        assert tr.nodes["weight"].fn.scale.item() == pytest.approx(1.0)


# ============================================================================== module
class TestModule:
    def test_names_and_store_entries(self):
        net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        assert pyro.module("dec", net) is net
        store = pyro.get_param_store()
        names = {n for n in store.keys() if n.startswith("dec$$$")}
        assert names == {"dec$$$0.weight", "dec$$$0.bias", "dec$$$2.weight", "dec$$$2.bias"}
        assert unconstrained("dec$$$0.weight") is net[0].weight
        assert torch.equal(store["dec$$$2.bias"], net[2].bias)

    def test_module_in_trace_records_params(self):
        net = nn.Linear(2, 3)

        def model():
            pyro.module("enc", net)

        tr = poutine.trace(model).get_trace()
        assert tr.param_nodes == ["enc$$$weight", "enc$$$bias"]
        assert tr.nodes["enc$$$weight"].value is net.weight

    def test_same_module_again_no_warning(self):
        net = nn.Linear(2, 3)
        pyro.module("m", net)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            pyro.module("m", net)
        assert unconstrained("m$$$weight") is net.weight

    def test_different_module_same_name_warns_and_store_holds_new(self):
        old = nn.Linear(2, 3)
        new = nn.Linear(2, 3)
        with torch.no_grad():
            old.weight.fill_(1.0)
            new.weight.fill_(-2.0)
        pyro.module("m", old)
        with pytest.warns(UserWarning, match="'m'"):
            pyro.module("m", new)
        assert unconstrained("m$$$weight") is new.weight
        assert unconstrained("m$$$bias") is new.bias
        assert (pyro.get_param_store()["m$$$weight"] == -2.0).all()
        assert (old.weight == 1.0).all()  # the old module is left alone

    def test_stored_values_copied_into_new_module(self):
        net1 = nn.Linear(2, 3)
        pyro.module("m", net1)
        store = pyro.get_param_store()
        state = store.get_state()
        pyro.clear_param_store()
        store.set_state(state)  # as if loaded from a checkpoint: no live module owns them
        net2 = nn.Linear(2, 3)
        assert not torch.equal(net2.weight, net1.weight)
        pyro.module("m", net2)
        assert torch.equal(net2.weight, net1.weight) and torch.equal(net2.bias, net1.bias)
        assert unconstrained("m$$$weight") is net2.weight

    def test_non_module_raises(self):
        with pytest.raises(TypeError, match="'m'"):
            pyro.module("m", lambda x: x)


# ====================================================================== factor / det
class TestFactorDeterministic:
    def test_factor_adds_log_factor(self):
        def model():
            x = pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor(1.0))
            pyro.factor("f", torch.tensor(-2.5))
            return x

        tr = poutine.trace(model).get_trace()
        f = tr.nodes["f"]
        assert f.type == "sample" and f.is_observed
        assert tr.log_prob_sum().item() == pytest.approx(-0.5 - LOG_SQRT_2PI - 2.5, abs=1e-5)

    def test_factor_python_number_and_plate(self):
        def model():
            pyro.factor("g", 1.25)
            with pyro.plate("p", 3):
                pyro.factor("h", torch.tensor([1.0, 2.0, 3.0]))

        tr = poutine.trace(model).get_trace()
        tr.compute_log_prob()
        assert tr.nodes["h"].log_prob.tolist() == [1.0, 2.0, 3.0]
        assert tr.log_prob_sum().item() == pytest.approx(7.25)

    def test_factor_scaled_by_subsample(self):
        def model():
            with pyro.plate("p", 10, subsample_size=2):
                pyro.factor("h", torch.tensor([1.0, 2.0]))

        assert poutine.trace(model).get_trace().log_prob_sum().item() == pytest.approx(15.0)

    def test_factor_gradient(self):
        w = torch.tensor(2.0, requires_grad=True)
        tr = poutine.trace(lambda: pyro.factor("f", -(w**2))).get_trace()
        tr.log_prob_sum().backward()
        assert w.grad.item() == pytest.approx(-4.0)

    def test_deterministic(self):
        def model():
            x = pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))
            d = pyro.deterministic("d", torch.tensor([3.0, 4.0]))
            return x, d

        tr = poutine.trace(model).get_trace()
        d = tr.nodes["d"]
        assert d.type == "sample" and d.is_observed
        assert d.value.tolist() == [3.0, 4.0]
        assert d.infer.get("_deterministic") is True
        tr.compute_log_prob()
        assert d.log_prob_sum.item() == 0.0
        assert tr.log_prob_sum().item() == pytest.approx(-LOG_SQRT_2PI, abs=1e-6)
        assert tr.nodes["_RETURN"].value[1] is d.value

    def test_deterministic_outside_handlers(self):
        v = torch.tensor([1.0])
        assert pyro.deterministic("d", v) is v
        assert pyro.deterministic("e", 2.0).item() == 2.0


# ================================================================================ rng
class TestRng:
    def test_set_rng_seed_reproducible(self):
        def draw():
            return (
                pyro.sample("x", dist.Normal(torch.zeros(3), 1.0)),
                random.random(),
                np.random.rand(),
            )

        pyro.set_rng_seed(42)
        a = draw()
        pyro.set_rng_seed(42)
        b = draw()
        pyro.set_rng_seed(43)
        c = draw()
        assert torch.equal(a[0], b[0]) and a[1] == b[1] and a[2] == b[2]
        assert not torch.equal(a[0], c[0]) and a[1] != c[1] and a[2] != c[2]


# =============================================================================== geom
def geom(num_trials=0, bern_prob=0.5):
    """Seed 000's recursion, in the modern API."""
    x = pyro.sample(f"x{num_trials}", dist.Bernoulli(torch.tensor([bern_prob])))
    if x[0] == 1:
        return num_trials
    return geom(num_trials + 1, bern_prob)


class TestGeom:
    def test_geom_trace_structure(self):
        lengths = []
        for s in range(20):
            pyro.set_rng_seed(s)
            tr = poutine.trace(geom).get_trace(0, 0.3)
            n = tr.nodes["_RETURN"].value
            names = [k for k, v in tr.nodes.items() if v.type == "sample"]
            assert names == [f"x{t}" for t in range(n + 1)]
            assert [tr.nodes[k].value.item() for k in names] == [0.0] * n + [1.0]
            expected = n * math.log(0.7) + math.log(0.3)
            assert tr.log_prob_sum().item() == pytest.approx(expected, abs=1e-5)
            lengths.append(n)
        assert max(lengths) > 1  # the recursion really varies in depth

    def test_geom_outside_handlers(self):
        vals = [geom(bern_prob=0.1) for _ in range(15)]
        assert all(isinstance(v, int) and v >= 0 for v in vals)
        assert len(set(vals)) > 1

    def test_geom_condition_forces_length(self):
        data = {"x0": torch.tensor([0.0]), "x1": torch.tensor([0.0]), "x2": torch.tensor([1.0])}
        tr = poutine.trace(poutine.condition(geom, data=data)).get_trace()
        assert tr.nodes["_RETURN"].value == 2
        assert tr.observation_nodes == ["x0", "x1", "x2"]
        assert tr.log_prob_sum().item() == pytest.approx(3 * math.log(0.5), abs=1e-6)


# ======================================================================= distributions
class TestDistributions:
    def test_to_event(self):
        d = dist.Normal(torch.zeros(2, 3), 1.0).to_event(1)
        assert d.batch_shape == (2,) and d.event_shape == (3,)
        x = torch.ones(2, 3)
        assert torch.allclose(d.log_prob(x), tdist.Normal(0.0, 1.0).log_prob(x).sum(-1))
        d_all = dist.Normal(torch.zeros(2, 3), 1.0).to_event()
        assert d_all.batch_shape == () and d_all.event_shape == (2, 3)
        base = dist.Normal(torch.zeros(2), 1.0)
        assert base.to_event(0) is base
        with pytest.raises(ValueError):
            dist.Normal(torch.zeros(2), 1.0).to_event(2)

    def test_independent_alias(self):
        d = dist.Bernoulli(0.5 * torch.ones(4)).independent(1)
        assert d.batch_shape == () and d.event_shape == (4,)
        assert d.log_prob(torch.ones(4)).item() == pytest.approx(4 * math.log(0.5))

    def test_mask_tensor(self):
        d = dist.Normal(torch.zeros(3), 1.0).mask(torch.tensor([True, False, True]))
        lp = d.log_prob(torch.ones(3))
        assert lp.tolist() == pytest.approx([-0.5 - LOG_SQRT_2PI, 0.0, -0.5 - LOG_SQRT_2PI])
        assert d.batch_shape == (3,)

    def test_mask_bool_and_broadcast(self):
        d = dist.Normal(0.0, 1.0).mask(False)
        assert d.log_prob(torch.tensor(5.0)).item() == 0.0
        d2 = dist.Normal(torch.zeros(3), 1.0).mask(torch.tensor([[True], [False]]))
        assert d2.batch_shape == (2, 3)
        assert (d2.log_prob(torch.zeros(2, 3))[1] == 0).all() and (d2.log_prob(torch.zeros(2, 3))[0] != 0).all()
        with pytest.raises(ValueError, match="0s and 1s"):
            dist.Normal(0.0, 1.0).mask(torch.tensor([0.3]))
        with pytest.raises(TypeError):
            dist.Normal(0.0, 1.0).mask("yes")
        d3 = dist.Normal(torch.zeros(2), 1.0).mask(torch.tensor([0.0, 1.0]))
        assert d3.log_prob(torch.zeros(2))[0] == 0 and d3.log_prob(torch.zeros(2))[1] != 0
        with pytest.raises(ValueError):
            dist.Normal(torch.zeros(3), 1.0).mask(torch.tensor([True, False]))

    def test_masked_distribution_in_trace(self):
        def model():
            with pyro.plate("p", 2):
                pyro.sample("o", dist.Normal(0.0, 1.0).mask(torch.tensor([False, True])), obs=torch.zeros(2))

        tr = poutine.trace(model).get_trace()
        assert tr.log_prob_sum().item() == pytest.approx(-LOG_SQRT_2PI)

    def test_expand(self):
        d = dist.Normal(0.0, 1.0).expand([3])
        assert isinstance(d, dist.Normal)
        assert d.batch_shape == (3,) and d.sample().shape == (3,)
        assert d.to_event(1).event_shape == (3,)  # still has Ember's methods

    def test_expand_by(self):
        d = dist.Normal(torch.zeros(3), 1.0).expand_by([2])
        assert d.batch_shape == (2, 3)
        z = dist.Normal(0.0, 1.0).expand_by([20])
        assert z.batch_shape == (20,) and z().shape == (20,)

    def test_shape(self):
        d = dist.Normal(torch.zeros(2, 3), 1.0).to_event(1)
        assert d.shape() == (2, 3)
        assert d.shape((4,)) == (4, 2, 3)
        assert d.event_dim == 1
        assert dist.Dirichlet(torch.ones(5)).shape((2,)) == (2, 5)

    def test_delta(self):
        d = dist.Delta(torch.tensor(2.0))
        assert d.log_prob(torch.tensor(2.0)).item() == 0.0
        assert d.log_prob(torch.tensor(2.5)).item() == float("-inf")
        assert d.sample().item() == 2.0 and d.sample((3,)).tolist() == [2.0, 2.0, 2.0]
        d_ld = dist.Delta(torch.tensor(2.0), log_density=-1.5)
        assert d_ld.log_prob(torch.tensor(2.0)).item() == -1.5

    def test_delta_event_dim(self):
        v = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        d = dist.Delta(v, event_dim=1)
        assert d.batch_shape == (2,) and d.event_shape == (2,)
        lp = d.log_prob(torch.tensor([[1.0, 2.0], [3.0, 5.0]]))
        assert lp.tolist() == [0.0, float("-inf")]
        with pytest.raises(ValueError):
            dist.Delta(torch.tensor(1.0), event_dim=1)

    def test_delta_rsample_gradient(self):
        v = torch.tensor([1.0, 2.0], requires_grad=True)
        x = dist.Delta(v)()
        (x * torch.tensor([3.0, 4.0])).sum().backward()
        assert v.grad.tolist() == [3.0, 4.0]

    def test_unit(self):
        u = dist.Unit(torch.tensor([-1.0, 2.0]))
        assert u.batch_shape == (2,) and u.event_shape == (0,)
        s = u.sample()
        assert s.shape == (2, 0)
        assert u.log_prob(s).tolist() == [-1.0, 2.0]
        assert dist.Unit(3.0).log_prob(torch.empty(0)).item() == 3.0

    def test_call_rsample_keeps_gradient(self):
        loc = torch.tensor(1.0, requires_grad=True)
        x = dist.Normal(loc, 2.0)()
        assert x.requires_grad
        x.backward()
        assert loc.grad.item() == 1.0
        # the same through pyro.sample
        loc.grad = None
        y = pyro.sample("y", dist.Normal(loc, 2.0))
        y.backward()
        assert loc.grad.item() == 1.0

    def test_call_sample_without_rsample(self):
        p = torch.tensor([0.3, 0.7], requires_grad=True)
        b = dist.Bernoulli(p)()
        assert not b.requires_grad
        assert set(b.tolist()) <= {0.0, 1.0}
        assert dist.Normal(0.0, 1.0)((4,)).shape == (4,)

    def test_validation_toggle(self):
        with pyro.validation_enabled(False):
            dist.Normal(0.0, -1.0)  # no argument check
        with pytest.raises(ValueError):
            dist.Normal(0.0, -1.0)


def test_ember_log_is_pyros_logger():
    import logging
    import subprocess
    import sys

    assert isinstance(pyro.log, logging.Logger) and pyro.log.name == "ember.log"
    # in a fresh process without logging set up, INFO messages print as Pyro's do
    out = subprocess.run([sys.executable, "-c", "import ember; ember.log.info('step %d', 3)"], capture_output=True, text=True,
                         timeout=120)
    assert out.stderr.strip() == "INFO \t step 3"
