"""Effect handlers on small, hand-checked traces."""

import math
import random

import numpy as np
import pytest
import torch
import torch.distributions as tdist
from torch.distributions import constraints

import ember as pyro
import ember.distributions as dist
from ember import poutine
from ember.runtime import Message, get_stack

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def normal_lp(x, loc, scale):
    x, loc = float(x), float(loc)
    return -0.5 * ((x - loc) / scale) ** 2 - math.log(scale) - LOG_SQRT_2PI


def scale_model(guess):
    """Seed 003's model."""
    weight = pyro.sample("weight", dist.Normal(guess, 1.0))
    return pyro.sample("measurement", dist.Normal(weight, 0.75))


def chain():
    """x -> y, plus a param."""
    a = pyro.param("a", torch.tensor(0.5))
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    y = pyro.sample("y", dist.Normal(x, 1.0))
    return a, x, y


def sample_names(tr):
    return [n for n, s in tr.nodes.items() if s.type == "sample"]


# =============================================================================== trace
class TestTrace:
    def test_nodes_in_execution_order_with_input_and_return(self):
        tr = poutine.trace(scale_model).get_trace(8.5)
        assert list(tr.nodes) == ["_INPUT", "weight", "measurement", "_RETURN"]
        assert len(tr) == 4
        assert "weight" in tr and "nope" not in tr

    def test_input_node_holds_args_and_kwargs(self):
        tr = poutine.trace(scale_model).get_trace(8.5)
        inp = tr.nodes["_INPUT"]
        assert inp.type == "args"
        assert inp["args"] == (8.5,)
        assert inp["kwargs"] == {}
        tr2 = poutine.trace(scale_model).get_trace(guess=7.0)
        assert tr2.nodes["_INPUT"].args == ()
        assert tr2.nodes["_INPUT"].kwargs == {"guess": 7.0}
        assert float(tr2.nodes["weight"].fn.loc) == 7.0

    def test_return_node_is_the_return_value(self):
        tr = poutine.trace(scale_model).get_trace(8.5)
        ret = tr.nodes["_RETURN"]
        assert ret.type == "return"
        assert ret["value"] is tr.nodes["measurement"].value
        assert ret.value is ret["value"]

    def test_traced_function_returns_model_value(self):
        def model():
            pyro.sample("x", dist.Normal(0.0, 1.0))
            return "done"

        t = poutine.trace(model)
        assert t() == "done"
        assert sample_names(t.trace) == ["x"]

    def test_sample_site_fields(self):
        tr = poutine.trace(scale_model).get_trace(8.5)
        w = tr.nodes["weight"]
        assert isinstance(w, Message)
        assert w.type == "sample" and w["type"] == "sample"
        assert w.name == "weight" and w["name"] == "weight"
        assert isinstance(w.fn, dist.Normal) and w["fn"] is w.fn
        assert float(w.fn.loc) == 8.5 and float(w.fn.scale) == 1.0
        assert isinstance(w.value, torch.Tensor) and w.value.shape == ()
        assert w["value"] is w.value
        assert w.is_observed is False and w["is_observed"] is False
        assert w.infer == {} and w["infer"] == {}
        assert w.scale == 1.0 and w["scale"] == 1.0
        assert w.mask is None and w["mask"] is None
        assert w.cond_indep_stack == () and w["cond_indep_stack"] == ()
        assert w.args == () and w["args"] == ()
        assert w.kwargs == {} and w["kwargs"] == {}
        # the dependency is recorded: measurement ~ Normal(weight, 0.75)
        m = tr.nodes["measurement"]
        assert torch.equal(m.fn.loc, w.value)
        assert float(m.fn.scale) == 0.75

    def test_param_site_fields(self):
        init = torch.tensor(2.0)

        def model():
            return pyro.param("b", init, constraint=constraints.positive)

        tr = poutine.trace(model).get_trace()
        b = tr.nodes["b"]
        assert b.type == "param" and b["type"] == "param"
        assert b.name == "b"
        assert b.is_observed is False
        assert b.args[0] == "b" and b.args[1] is init and b.args[2] is constraints.positive
        assert torch.allclose(b.value, torch.tensor(2.0))  # the constrained value
        assert torch.allclose(b["value"], tr.nodes["_RETURN"].value)
        # the site's fn looks the value up in the store
        assert torch.allclose(b.fn("b"), torch.tensor(2.0))

    def test_site_dict_interface(self):
        tr = poutine.trace(scale_model).get_trace(8.5)
        w = tr.nodes["weight"]
        assert "value" in w
        assert "log_prob" not in w
        assert w.get("log_prob") is None and w.get("log_prob", 3) == 3
        with pytest.raises(KeyError):
            w["log_prob"]
        with pytest.raises(KeyError):
            w["no_such_key"]
        w["my_note"] = 7
        assert w["my_note"] == 7 and "my_note" in w and "my_note" in w.keys()
        tr.compute_log_prob()
        assert "log_prob" in w and "log_prob" in w.keys()
        assert torch.allclose(w["log_prob"], torch.tensor(normal_lp(w.value, 8.5, 1.0)))

    def test_context_manager_use(self):
        with poutine.trace() as tm:
            assert get_stack() == [tm]
            scale_model(8.5)
        assert get_stack() == []
        assert list(tm.trace.nodes) == ["weight", "measurement"]  # no _INPUT/_RETURN here

    def test_context_manager_fresh_trace_each_entry(self):
        tm = poutine.trace()
        with tm:
            pyro.sample("x", dist.Normal(0.0, 1.0))
        first = tm.trace
        with tm:
            pyro.sample("x", dist.Normal(0.0, 1.0))  # no duplicate-site error: a new trace
        assert tm.trace is not first
        assert list(first.nodes) == ["x"] and list(tm.trace.nodes) == ["x"]

    def test_get_trace_reruns(self):
        t = poutine.trace(scale_model)
        tr1 = t.get_trace(8.5)
        tr2 = t.get_trace(8.5)
        assert tr1 is not tr2
        assert not torch.equal(tr1.nodes["weight"].value, tr2.nodes["weight"].value)

    def test_compute_log_prob_matches_formula(self):
        cond = poutine.condition(scale_model, data={"measurement": torch.tensor(9.5)})
        tr = poutine.trace(cond).get_trace(8.5)
        tr.compute_log_prob()
        w = tr.nodes["weight"].value
        lw = normal_lp(w, 8.5, 1.0)
        lm = normal_lp(9.5, w, 0.75)
        assert tr.nodes["weight"].log_prob.item() == pytest.approx(lw, abs=1e-5)
        assert tr.nodes["weight"].unscaled_log_prob.item() == pytest.approx(lw, abs=1e-5)
        assert tr.nodes["weight"].log_prob_sum.item() == pytest.approx(lw, abs=1e-5)
        assert tr.nodes["measurement"].log_prob.item() == pytest.approx(lm, abs=1e-5)
        total = tr.log_prob_sum()
        assert isinstance(total, torch.Tensor) and total.shape == ()
        assert total.item() == pytest.approx(lw + lm, abs=1e-5)

    def test_log_prob_sum_vector_site_against_torch(self):
        loc = torch.tensor([0.0, 1.0, -2.0])

        def model():
            return pyro.sample("v", dist.Normal(loc, 2.0).to_event(1))

        tr = poutine.trace(model).get_trace()
        v = tr.nodes["v"].value
        expected = tdist.Normal(loc, 2.0).log_prob(v).sum()
        assert tr.log_prob_sum().item() == pytest.approx(expected.item(), abs=1e-5)
        assert tr.nodes["v"].log_prob.shape == ()

    def test_log_prob_sum_site_filter(self):
        cond = poutine.condition(scale_model, data={"measurement": torch.tensor(9.5)})
        tr = poutine.trace(cond).get_trace(8.5)
        w = tr.nodes["weight"].value
        only_obs = tr.log_prob_sum(lambda name, site: site.is_observed)
        assert only_obs.item() == pytest.approx(normal_lp(9.5, w, 0.75), abs=1e-5)

    def test_log_prob_sum_of_trace_without_sample_sites_is_zero(self):
        def model():
            return pyro.param("p", torch.tensor(3.0))

        tr = poutine.trace(model).get_trace()
        total = tr.log_prob_sum()
        assert isinstance(total, torch.Tensor) and total.item() == 0.0

    def test_log_prob_sum_differentiable_in_params(self):
        def model():
            loc = pyro.param("loc", torch.tensor(1.0))
            pyro.sample("obs", dist.Normal(loc, 1.0), obs=torch.tensor(3.0))

        tr = poutine.trace(model).get_trace()
        tr.log_prob_sum().backward()
        u = dict(pyro.get_param_store().named_parameters())["loc"]
        # d/dloc log N(3; loc, 1) = 3 - loc = 2
        assert u.grad.item() == pytest.approx(2.0)

    def test_duplicate_sample_site_raises_naming_it(self):
        def model():
            pyro.sample("dup_site", dist.Normal(0.0, 1.0))
            pyro.sample("dup_site", dist.Normal(0.0, 1.0))

        with pytest.raises(RuntimeError, match="'dup_site'"):
            poutine.trace(model).get_trace()

    def test_param_and_sample_with_same_name_raises(self):
        def model():
            pyro.param("clash", torch.tensor(1.0))
            pyro.sample("clash", dist.Normal(0.0, 1.0))

        with pytest.raises(RuntimeError, match="'clash'"):
            poutine.trace(model).get_trace()

    def test_duplicate_names_fine_without_trace(self):
        def model():
            pyro.sample("d", dist.Normal(0.0, 1.0))
            return pyro.sample("d", dist.Normal(0.0, 1.0))

        assert model().shape == ()

    def test_repeated_param_calls_allowed(self):
        def model():
            a1 = pyro.param("a", torch.tensor(1.0))
            a2 = pyro.param("a", torch.tensor(99.0))  # init ignored the second time
            a3 = pyro.param("a")
            return a1, a2, a3

        tr = poutine.trace(model).get_trace()
        assert [n for n in tr.nodes if n not in ("_INPUT", "_RETURN")] == ["a"]
        a1, a2, a3 = tr.nodes["_RETURN"].value
        assert a1.item() == a2.item() == a3.item() == 1.0

    def test_param_only(self):
        tr = poutine.trace(chain, param_only=True).get_trace()
        assert "a" in tr.nodes and tr.nodes["a"].type == "param"
        assert "x" not in tr.nodes and "y" not in tr.nodes

    def test_copy_and_detach(self):
        loc = torch.tensor(0.0, requires_grad=True)

        def model():
            return pyro.sample("z", dist.Normal(loc, 1.0))

        tr = poutine.trace(model).get_trace()
        assert tr.nodes["z"].value.requires_grad
        cp = tr.copy()
        assert list(cp.nodes) == list(tr.nodes) and cp.nodes["z"] is not tr.nodes["z"]
        cp.nodes["z"]["value"] = torch.tensor(5.0)
        assert tr.nodes["z"].value.item() != 5.0
        tr.detach_()
        assert not tr.nodes["z"].value.requires_grad

    def test_format_shapes(self):
        def model():
            with pyro.plate("p", 3):
                pyro.sample("z", dist.Normal(0.0, 1.0))

        tr = poutine.trace(model).get_trace()
        tr.compute_log_prob()
        table = tr.format_shapes()
        assert table.splitlines()[-3:] == ["       z dist 3 |", "        value 3 |", "     log_prob 3 |"]

    def test_trace_views(self):
        def model():
            pyro.param("p", torch.tensor(1.0))
            pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("b", dist.Bernoulli(0.5))
            pyro.sample("o", dist.Normal(0.0, 1.0), obs=torch.tensor(0.3))

        tr = poutine.trace(model).get_trace()
        assert tr.param_nodes == ["p"]
        assert tr.stochastic_nodes == ["z", "b"]
        assert tr.observation_nodes == ["o"]
        assert tr.reparameterized_nodes == ["z"]
        assert tr.nonreparam_stochastic_nodes == ["b"]


# ====================================================================== condition / do
def xy():
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    y = pyro.sample("y", dist.Normal(x, 1.0))
    return x, y


class TestCondition:
    def test_condition_observes_and_fixes_value(self):
        cond = poutine.condition(scale_model, data={"measurement": torch.tensor(9.5)})
        tr = poutine.trace(cond).get_trace(8.5)
        m = tr.nodes["measurement"]
        assert m.is_observed is True
        assert m.value.item() == 9.5
        assert tr.nodes["_RETURN"].value.item() == 9.5
        assert tr.nodes["weight"].is_observed is False
        assert tr.observation_nodes == ["measurement"]

    def test_condition_python_number_becomes_tensor(self):
        cond = pyro.condition(scale_model, data={"measurement": 9.5})
        tr = poutine.trace(cond).get_trace(8.5)
        v = tr.nodes["measurement"].value
        assert isinstance(v, torch.Tensor) and v.dtype == torch.float32 and v.item() == 9.5

    def test_conditioned_value_is_scored(self):
        cond = poutine.condition(scale_model, data={"measurement": torch.tensor(9.5)})
        tr = poutine.trace(cond).get_trace(8.5)
        w = tr.nodes["weight"].value
        expected = normal_lp(w, 8.5, 1.0) + normal_lp(9.5, w, 0.75)
        assert tr.log_prob_sum().item() == pytest.approx(expected, abs=1e-5)

    def test_condition_on_latent_flows_downstream(self):
        tr = poutine.trace(poutine.condition(xy, data={"x": torch.tensor(3.0)})).get_trace()
        assert tr.nodes["x"].is_observed and tr.nodes["x"].value.item() == 3.0
        assert tr.nodes["y"].fn.loc.item() == 3.0
        y = tr.nodes["y"].value
        assert tr.log_prob_sum().item() == pytest.approx(normal_lp(3.0, 0, 1) + normal_lp(y, 3.0, 1), abs=1e-5)

    def test_condition_on_trace(self):
        src = poutine.trace(xy).get_trace()
        tr = poutine.trace(poutine.condition(xy, data=src)).get_trace()
        for n in ("x", "y"):
            assert tr.nodes[n].is_observed
            assert torch.equal(tr.nodes[n].value, src.nodes[n].value)

    def test_condition_context_manager(self):
        with poutine.trace() as tm:
            with poutine.condition(data={"y": torch.tensor(-1.0)}):
                xy()
        assert tm.trace.nodes["y"].is_observed and tm.trace.nodes["y"].value.item() == -1.0
        assert not tm.trace.nodes["x"].is_observed

    def test_deferred_condition_from_seed(self):
        def deferred_conditioned_scale(measurement, *args, **kwargs):
            return pyro.condition(scale_model, data={"measurement": measurement})(*args, **kwargs)

        assert deferred_conditioned_scale(torch.tensor(4.25), 8.5).item() == 4.25
    def test_condition_on_none_leaves_site_latent(self):
        tr = poutine.trace(poutine.condition(xy, data={"x": None})).get_trace()
        assert tr.nodes["x"].is_observed is False
        assert tr.observation_nodes == []

    def test_condition_rejects_non_mapping(self):
        with pytest.raises(TypeError):
            poutine.condition(xy, data=[1.0, 2.0])


class TestDo:
    def test_intervened_value_flows_downstream(self):
        tr = poutine.trace(poutine.do(xy, data={"x": torch.tensor(3.0)})).get_trace()
        assert tr.nodes["y"].fn.loc.item() == 3.0
        x_ret, y_ret = tr.nodes["_RETURN"].value
        assert x_ret.item() == 3.0
        assert torch.equal(y_ret, tr.nodes["y"].value)

    def test_site_recorded_as_unobserved_draw_from_own_distribution(self):
        tr = poutine.trace(poutine.do(xy, data={"x": torch.tensor(3.0)})).get_trace()
        x = tr.nodes["x"]
        assert x.type == "sample" and x.is_observed is False
        assert isinstance(x.fn, dist.Normal) and x.fn.loc.item() == 0.0 and x.fn.scale.item() == 1.0
        assert x.value.item() != 3.0  # its own random draw, not the intervention
        assert "x__CF" not in tr.nodes
        assert sample_names(tr) == ["x", "y"]
        assert tr.observation_nodes == []

    def test_intervened_value_not_scored(self):
        tr = poutine.trace(poutine.do(xy, data={"x": torch.tensor(3.0)})).get_trace()
        x = tr.nodes["x"].value
        y = tr.nodes["y"].value
        expected = normal_lp(x, 0, 1) + normal_lp(y, 3.0, 1)
        assert tr.log_prob_sum().item() == pytest.approx(expected, abs=1e-5)
        # and in particular no log N(3; 0, 1) term
        wrong = normal_lp(3.0, 0, 1) + normal_lp(y, 3.0, 1)
        assert abs(expected - wrong) > 1e-3

    def test_do_python_number_and_top_level_alias(self):
        assert pyro.do is poutine.do
        x, _ = pyro.do(xy, data={"x": 2.5})()
        assert isinstance(x, torch.Tensor) and x.item() == 2.5

    def test_do_then_condition_compose(self):
        model = poutine.condition(poutine.do(xy, data={"x": torch.tensor(1.0)}), data={"y": torch.tensor(0.0)})
        tr = poutine.trace(model).get_trace()
        assert tr.nodes["y"].is_observed and tr.nodes["y"].fn.loc.item() == 1.0
        assert not tr.nodes["x"].is_observed
        assert tr.nodes["_RETURN"].value[0].item() == 1.0

    def test_do_inside_subsampled_plate_scales_once(self):
        def model():
            with pyro.plate("d", 10, subsample_size=2):
                x = pyro.sample("x", dist.Normal(0.0, 1.0))
                pyro.sample("y", dist.Normal(x, 1.0))

        tr = poutine.trace(poutine.do(model, data={"x": torch.tensor([1.0, 2.0])})).get_trace()
        assert tr.nodes["y"].fn.loc.tolist() == [1.0, 2.0]
        assert tr.nodes["y"].scale == pytest.approx(5.0)
        assert [f.name for f in tr.nodes["x"].cond_indep_stack] == ["d"]
        assert tr.nodes["x"].scale == pytest.approx(5.0)

    def test_do_as_context_manager(self):
        with poutine.trace() as tm:
            with poutine.do(data={"x": torch.tensor(-4.0)}):
                x, _ = xy()
        assert x.item() == -4.0
        assert tm.trace.nodes["y"].fn.loc.item() == -4.0
        assert "x__CF" not in tm.trace.nodes


# ============================================================================== replay
def guide_xy():
    return pyro.sample("x", dist.Normal(5.0, 0.1))


class TestReplay:
    def test_replayed_values_are_reused(self):
        gt = poutine.trace(guide_xy).get_trace()
        tr = poutine.trace(poutine.replay(xy, trace=gt)).get_trace()
        assert torch.equal(tr.nodes["x"].value, gt.nodes["x"].value)
        assert tr.nodes["x"].is_observed is False
        # the model's own distribution is kept, so the replayed value is scored under it
        assert tr.nodes["x"].fn.loc.item() == 0.0
        assert tr.nodes["y"].fn.loc.item() == pytest.approx(gt.nodes["x"].value.item())
        # sites absent from the replayed trace are sampled afresh
        assert "y" not in gt.nodes and tr.nodes["y"].value.shape == ()

    def test_replay_scores_under_model(self):
        gt = poutine.trace(guide_xy).get_trace()
        tr = poutine.trace(poutine.replay(xy, trace=gt)).get_trace()
        x, y = tr.nodes["x"].value, tr.nodes["y"].value
        assert tr.log_prob_sum().item() == pytest.approx(normal_lp(x, 0, 1) + normal_lp(y, x, 1), abs=1e-4)

    def test_observed_sites_are_not_replayed(self):
        def model():
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor(9.5))

        def guide():
            pyro.sample("x", dist.Normal(0.0, 1.0))

        gt = poutine.trace(guide).get_trace()
        tr = poutine.trace(poutine.replay(model, trace=gt)).get_trace()
        assert tr.nodes["x"].value.item() == 9.5 and tr.nodes["x"].is_observed

    def test_replaying_observed_site_raises(self):
        obs_trace = poutine.trace(poutine.condition(xy, data={"x": torch.tensor(1.0)})).get_trace()
        with pytest.raises(RuntimeError, match="'x'"):
            poutine.trace(poutine.replay(xy, trace=obs_trace)).get_trace()

    def test_replay_params(self):
        tr = poutine.trace(poutine.replay(chain, params={"a": torch.tensor(7.0)})).get_trace()
        assert tr.nodes["a"].value.item() == 7.0
        assert "a" not in pyro.get_param_store()

    def test_replay_takes_infer_of_replayed_site(self):
        def guide():
            pyro.sample("x", dist.Normal(0.0, 1.0), infer={"tag": 1})

        gt = poutine.trace(guide).get_trace()
        tr = poutine.trace(poutine.replay(xy, trace=gt)).get_trace()
        assert tr.nodes["x"].infer.get("tag") == 1

    def test_replay_needs_a_trace(self):
        with pytest.raises(ValueError):
            poutine.replay(xy)


# =============================================================================== block
class TestBlock:
    def _names(self, model):
        tr = poutine.trace(model).get_trace()
        return [n for n in tr.nodes if n not in ("_INPUT", "_RETURN")]

    def test_default_hides_everything(self):
        assert self._names(poutine.block(chain)) == []

    def test_hidden_sites_still_run(self):
        a1, x1, y1 = poutine.seed(poutine.block(chain), rng_seed=3)()
        a2, x2, y2 = poutine.seed(chain, rng_seed=3)()
        assert torch.equal(x1, x2) and torch.equal(y1, y2)

    def test_hide_by_name(self):
        assert self._names(poutine.block(chain, hide=["x"])) == ["a", "y"]

    def test_expose_by_name(self):
        assert self._names(poutine.block(chain, expose=["x"])) == ["x"]

    def test_hide_types(self):
        assert self._names(poutine.block(chain, hide_types=["param"])) == ["x", "y"]

    def test_expose_types(self):
        assert self._names(poutine.block(chain, expose_types=["param"])) == ["a"]

    def test_hide_fn(self):
        assert self._names(poutine.block(chain, hide_fn=lambda msg: msg.name == "y")) == ["a", "x"]

    def test_expose_fn(self):
        assert self._names(poutine.block(chain, expose_fn=lambda msg: msg.type == "sample")) == ["x", "y"]

    def test_hide_all_false_hides_nothing(self):
        assert self._names(poutine.block(chain, hide_all=False)) == ["a", "x", "y"]

    def test_conflicting_arguments_raise(self):
        with pytest.raises(ValueError):
            poutine.block(chain, hide=["x"], expose=["x"])
        with pytest.raises(ValueError):
            poutine.block(chain, hide_types=["sample"], expose_types=["sample"])
        with pytest.raises(ValueError):
            poutine.block(chain, hide_fn=lambda m: True, expose_fn=lambda m: True)

    def test_outer_condition_does_not_reach_blocked_site(self):
        model = poutine.condition(poutine.block(xy, hide=["x"]), data={"x": torch.tensor(5.0), "y": torch.tensor(6.0)})
        tr = poutine.trace(model).get_trace()
        x, y = tr.nodes["_RETURN"].value
        assert x.item() != 5.0  # blocked: the outer condition never saw it
        assert y.item() == 6.0 and tr.nodes["y"].is_observed

    def test_block_as_context_manager(self):
        with poutine.trace() as tm:
            with poutine.block(hide=["y"]):
                xy()
        assert list(tm.trace.nodes) == ["x"]


# ======================================================================= scale / mask
def one_obs(value=1.0):
    return pyro.sample("o", dist.Normal(0.0, 1.0), obs=torch.tensor(value))


class TestScale:
    def test_log_prob_multiplied(self):
        tr = poutine.trace(poutine.scale(one_obs, scale=3.0)).get_trace()
        tr.compute_log_prob()
        o = tr.nodes["o"]
        assert o.scale == 3.0
        assert o.unscaled_log_prob.item() == pytest.approx(normal_lp(1.0, 0, 1))
        assert o.log_prob.item() == pytest.approx(3.0 * normal_lp(1.0, 0, 1))
        assert tr.log_prob_sum().item() == pytest.approx(3.0 * normal_lp(1.0, 0, 1))

    def test_nested_scales_multiply(self):
        tr = poutine.trace(poutine.scale(poutine.scale(one_obs, scale=2.0), scale=5.0)).get_trace()
        assert tr.nodes["o"].scale == pytest.approx(10.0)
        assert tr.log_prob_sum().item() == pytest.approx(10.0 * normal_lp(1.0, 0, 1), rel=1e-6)

    @pytest.mark.parametrize("bad", [0.0, -1.0, 0, torch.tensor([1.0, 0.0]), torch.tensor(-2.0)])
    def test_non_positive_scale_raises(self, bad):
        with pytest.raises(ValueError):
            poutine.scale(one_obs, scale=bad)

    def test_non_numeric_scale_raises(self):
        with pytest.raises((TypeError, ValueError)):
            poutine.scale(one_obs, scale="2")

    def test_tensor_scale(self):
        def model():
            with pyro.plate("p", 2):
                pyro.sample("o", dist.Normal(0.0, 1.0), obs=torch.tensor([0.0, 1.0]))

        s = torch.tensor([1.0, 2.0])
        tr = poutine.trace(poutine.scale(model, scale=s)).get_trace()
        tr.compute_log_prob()
        expected = torch.tensor([normal_lp(0, 0, 1), 2 * normal_lp(1, 0, 1)])
        assert torch.allclose(tr.nodes["o"].log_prob, expected)
        assert tr.log_prob_sum().item() == pytest.approx(expected.sum().item())

    def test_scale_does_not_touch_params(self):
        tr = poutine.trace(poutine.scale(chain, scale=4.0)).get_trace()
        assert tr.nodes["a"].scale == 1.0
        assert tr.nodes["x"].scale == 4.0


class TestMask:
    def test_false_zeroes_log_prob(self):
        tr = poutine.trace(poutine.mask(one_obs, mask=False)).get_trace()
        tr.compute_log_prob()
        assert tr.nodes["o"].log_prob.item() == 0.0
        assert tr.nodes["o"].unscaled_log_prob.item() == pytest.approx(normal_lp(1.0, 0, 1))
        assert tr.log_prob_sum().item() == 0.0

    def test_true_keeps_log_prob(self):
        tr = poutine.trace(poutine.mask(one_obs, mask=True)).get_trace()
        assert tr.log_prob_sum().item() == pytest.approx(normal_lp(1.0, 0, 1))

    def test_tensor_mask_per_element(self):
        def model():
            with pyro.plate("p", 3):
                pyro.sample("o", dist.Normal(0.0, 1.0), obs=torch.tensor([0.0, 1.0, 2.0]))

        m = torch.tensor([True, False, True])
        tr = poutine.trace(poutine.mask(model, mask=m)).get_trace()
        tr.compute_log_prob()
        expected = torch.tensor([normal_lp(0, 0, 1), 0.0, normal_lp(2, 0, 1)])
        assert torch.allclose(tr.nodes["o"].log_prob, expected)

    def test_masked_nan_log_prob_is_zero(self):
        def model():
            with pyro.plate("p", 2):
                d = dist.Normal(torch.tensor(0.0), 1.0, validate_args=False)
                pyro.sample("o", d, obs=torch.tensor([0.5, float("nan")]))

        tr = poutine.trace(poutine.mask(model, mask=torch.tensor([True, False]))).get_trace()
        tr.compute_log_prob()
        assert torch.isnan(tr.nodes["o"].unscaled_log_prob[1])
        lp = tr.nodes["o"].log_prob
        assert not torch.isnan(lp).any()
        assert lp[1].item() == 0.0 and lp[0].item() == pytest.approx(normal_lp(0.5, 0, 1))
        assert tr.log_prob_sum().item() == pytest.approx(normal_lp(0.5, 0, 1))

    def test_nested_masks_and(self):
        def model():
            with pyro.plate("p", 3):
                pyro.sample("o", dist.Normal(0.0, 1.0), obs=torch.zeros(3))

        inner = poutine.mask(model, mask=torch.tensor([True, True, False]))
        tr = poutine.trace(poutine.mask(inner, mask=torch.tensor([True, False, True]))).get_trace()
        tr.compute_log_prob()
        assert torch.equal(tr.nodes["o"].log_prob != 0, torch.tensor([True, False, False]))

    def test_mask_and_scale_combine(self):
        tr = poutine.trace(poutine.scale(poutine.mask(one_obs, mask=True), scale=2.0)).get_trace()
        assert tr.log_prob_sum().item() == pytest.approx(2 * normal_lp(1.0, 0, 1))
        tr = poutine.trace(poutine.scale(poutine.mask(one_obs, mask=False), scale=2.0)).get_trace()
        assert tr.log_prob_sum().item() == 0.0

    @pytest.mark.parametrize("bad", [1, torch.tensor([0.5, 0.0]), None])
    def test_non_boolean_mask_raises(self, bad):
        with pytest.raises((TypeError, ValueError)):
            poutine.mask(one_obs, mask=bad)

    def test_numeric_zero_one_mask_is_accepted_like_bool(self):
        # seed 002 masks with the float z_pres; Pyro converts it with .bool()
        m = poutine.mask(one_obs, mask=torch.tensor(0.0))
        assert m.mask.dtype == torch.bool and not bool(m.mask)


# ================================================================================ seed
class TestSeed:
    def test_same_seed_bit_identical(self):
        def model():
            xs = pyro.sample("xs", dist.Normal(torch.zeros(4), 1.0).to_event(1))
            b = pyro.sample("b", dist.Bernoulli(0.5 * torch.ones(3)).to_event(1))
            return xs, b

        t1 = poutine.trace(poutine.seed(model, rng_seed=11)).get_trace()
        t2 = poutine.trace(poutine.seed(model, rng_seed=11)).get_trace()
        t3 = poutine.trace(poutine.seed(model, rng_seed=12)).get_trace()
        for n in ("xs", "b"):
            assert torch.equal(t1.nodes[n].value, t2.nodes[n].value)
        assert not torch.equal(t1.nodes["xs"].value, t3.nodes["xs"].value)

    def test_outer_rng_streams_restored(self):
        def model():
            random.random()
            np.random.rand()
            return pyro.sample("x", dist.Normal(0.0, 1.0))

        pyro.set_rng_seed(123)
        expected = (torch.rand(3), random.random(), np.random.rand())
        pyro.set_rng_seed(123)
        poutine.seed(model, rng_seed=7)()
        got = (torch.rand(3), random.random(), np.random.rand())
        assert torch.equal(expected[0], got[0])
        assert expected[1] == got[1] and expected[2] == got[2]

    def test_rng_restored_after_exception(self):
        def model():
            pyro.sample("x", dist.Normal(0.0, 1.0))
            raise KeyError("boom")

        torch.manual_seed(5)
        expected = torch.rand(2)
        torch.manual_seed(5)
        with pytest.raises(KeyError):
            poutine.seed(model, rng_seed=1)()
        assert torch.equal(torch.rand(2), expected)

    def test_seed_context_manager(self):
        with poutine.seed(rng_seed=4):
            a = pyro.sample("x", dist.Normal(0.0, 1.0))
        with poutine.seed(rng_seed=4):
            b = pyro.sample("x", dist.Normal(0.0, 1.0))
        assert torch.equal(a, b)

    def test_non_int_seed_raises(self):
        with pytest.raises(TypeError):
            poutine.seed(xy, rng_seed=1.5)


# ========================================================================== substitute
class TestSubstitute:
    def test_param_sites_only_as_in_pyro(self):
        model = poutine.substitute(chain, data={"a": torch.tensor(-3.0)})
        tr = poutine.trace(model).get_trace()
        assert tr.nodes["a"].value.item() == -3.0
        a, x, _ = tr.nodes["_RETURN"].value
        assert a.item() == -3.0

    def test_sample_site_in_data_is_left_random_and_warns(self):
        model = poutine.substitute(chain, data={"x": torch.tensor(2.0)})
        with pytest.warns(UserWarning, match=r"substitute: the data names \['x'\].*\['x'\] are sample sites.*param values only"):
            tr = poutine.trace(model).get_trace()
        assert tr.nodes["x"].value.item() != 2.0 and tr.nodes["x"].is_observed is False

    def test_substituted_param_ignores_constraint(self):
        def model():
            return pyro.param("s", torch.tensor(1.0), constraint=constraints.positive)

        assert poutine.substitute(model, data={"s": torch.tensor(-1.0)})().item() == -1.0

    def test_observed_site_not_substituted(self):
        model = poutine.substitute(one_obs, data={"o": torch.tensor(4.0)})
        with pytest.warns(UserWarning, match="sample sites"):
            tr = poutine.trace(model).get_trace()
        assert tr.nodes["o"].value.item() == 1.0

    def test_substitute_fn_is_not_an_argument_as_in_pyro(self):
        with pytest.raises(TypeError, match="substitute_fn"):
            poutine.substitute(chain, substitute_fn=lambda m: None)


# ======================================================================== uncondition
class TestUncondition:
    def test_observed_sites_become_latent(self):
        model = poutine.uncondition(poutine.condition(xy, data={"x": torch.tensor(100.0)}))
        tr = poutine.trace(model).get_trace()
        x = tr.nodes["x"]
        assert x.is_observed is False
        assert x.value.item() != 100.0  # resampled from Normal(0, 1)
        assert x.infer["was_observed"] is True and x.infer["obs"].item() == 100.0
        assert tr.observation_nodes == []
        assert tr.nodes["y"].fn.loc.item() == x.value.item()

    def test_obs_keyword_sites_too(self):
        tr = poutine.trace(poutine.uncondition(one_obs)).get_trace()
        assert tr.nodes["o"].is_observed is False and tr.nodes["o"].value.item() != 1.0


# ================================================================================ lift
class TestLift:
    def test_param_becomes_sample_from_prior(self):
        prior = dist.Normal(10.0, 0.1)

        def model():
            return pyro.param("a", torch.tensor(1.0))

        tr = poutine.trace(poutine.lift(model, prior=prior)).get_trace()
        a = tr.nodes["a"]
        assert a.type == "sample" and a.is_observed is False
        assert a.fn is prior
        assert abs(a.value.item() - 10.0) < 1.0  # drawn from the prior, not the init 1.0
        assert "a" not in pyro.get_param_store()
        assert tr.log_prob_sum().item() == pytest.approx(tdist.Normal(10.0, 0.1).log_prob(a.value).item(), abs=1e-4)

    def test_repeated_param_returns_same_sample(self):
        def model():
            a1 = pyro.param("a", torch.tensor(1.0))
            a2 = pyro.param("a", torch.tensor(1.0))
            return a1, a2

        tr = poutine.trace(poutine.lift(model, prior=dist.Normal(0.0, 1.0))).get_trace()
        a1, a2 = tr.nodes["_RETURN"].value
        assert torch.equal(a1, a2) and a1.item() != 1.0
        assert sample_names(tr) == ["a"] and tr.param_nodes == []

    def test_fresh_samples_each_run(self):
        def model():
            return pyro.param("a", torch.tensor(1.0))

        lifted = poutine.lift(model, prior=dist.Normal(0.0, 1.0))
        assert lifted().item() != lifted().item()

    def test_dict_prior_lifts_only_named_params(self):
        def model():
            return pyro.param("a", torch.tensor(1.0)), pyro.param("b", torch.tensor(2.0))

        tr = poutine.trace(poutine.lift(model, prior={"a": dist.Normal(0.0, 1.0)})).get_trace()
        assert tr.nodes["a"].type == "sample"
        assert tr.nodes["b"].type == "param" and tr.nodes["b"].value.item() == 2.0


# ============================================================================== escape
class TestEscape:
    def test_raises_nonlocal_exit_with_site(self):
        t = poutine.trace(poutine.escape(xy, escape_fn=lambda msg: msg.name == "y"))
        with pytest.raises(poutine.NonlocalExit) as info:
            t.get_trace()
        assert isinstance(info.value.site, Message)
        assert info.value.site.name == "y"
        assert torch.equal(info.value.site.fn.loc, t.trace.nodes["x"].value)
        assert "x" in t.trace.nodes and "y" not in t.trace.nodes
        assert get_stack() == []

    def test_no_exit_when_fn_false(self):
        x, y = poutine.escape(xy, escape_fn=lambda msg: False)()
        assert x.shape == () and y.shape == ()

    def test_escape_inside_plate_cleans_up(self):
        def model():
            with pyro.plate("p", 3):
                pyro.sample("z", dist.Normal(0.0, 1.0))

        with pytest.raises(poutine.NonlocalExit) as info:
            poutine.escape(model, escape_fn=lambda msg: msg.name == "z")()
        assert info.value.site.name == "z"
        assert get_stack() == []
        with pyro.plate("q", 2):
            assert get_stack()[-1].dim == -1

    def test_escape_needs_fn(self):
        with pytest.raises(ValueError):
            poutine.escape(xy)


# ======================================================================== infer_config
class TestInferConfig:
    def test_updates_infer_dicts(self):
        def model():
            pyro.param("p", torch.tensor(1.0))
            pyro.sample("z", dist.Normal(0.0, 1.0), infer={"keep": 1})

        def config_fn(msg):
            return {"enumerate": "parallel"} if msg.type == "sample" else {"lr": 0.1}

        tr = poutine.trace(poutine.infer_config(model, config_fn=config_fn)).get_trace()
        assert tr.nodes["z"].infer == {"keep": 1, "enumerate": "parallel"}
        assert tr.nodes["p"].infer == {"lr": 0.1}

    def test_needs_config_fn(self):
        with pytest.raises(ValueError):
            poutine.infer_config(xy)


# ========================================================================= composition
class TestComposition:
    def test_trace_replay_condition(self):
        data = {"measurement": torch.tensor(9.5)}

        def guide(guess):
            return pyro.sample("weight", dist.Normal(9.14, 0.6))

        gt = poutine.trace(guide).get_trace(8.5)
        mt = poutine.trace(poutine.replay(poutine.condition(scale_model, data=data), trace=gt)).get_trace(8.5)
        w = gt.nodes["weight"].value
        assert torch.equal(mt.nodes["weight"].value, w)
        assert mt.nodes["measurement"].is_observed and mt.nodes["measurement"].value.item() == 9.5
        elbo = mt.log_prob_sum() - gt.log_prob_sum()
        expected = normal_lp(w, 8.5, 1) + normal_lp(9.5, w, 0.75) - normal_lp(w, 9.14, 0.6)
        assert elbo.item() == pytest.approx(expected, abs=1e-4)

    def test_simple_mc_elbo_from_seed_001(self):
        decoder = torch.nn.Sequential(torch.nn.Linear(20, 4), torch.nn.Sigmoid())
        x_data = torch.tensor([1.0, 0.0, 1.0, 1.0])

        def model():
            pyro.module("decoder", decoder)
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand_by([20]))
            bern_prob = decoder(z)
            return pyro.sample("x", dist.Bernoulli(bern_prob))

        def conditioned_model(x):
            return pyro.condition(model, data={"x": x})()

        def guide(x):
            loc_z = pyro.param("loc_z", torch.zeros(20))
            scale_z = pyro.param("scale_z", torch.ones(20), constraint=constraints.positive)
            return pyro.sample("z", dist.Normal(loc_z, scale_z))

        def simple_mc_elbo(model, guide, *args):
            guide_trace = poutine.trace(guide).get_trace(*args)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
            elbo = model_trace.log_prob_sum() - guide_trace.log_prob_sum()
            return -elbo, guide_trace

        loss, gt = simple_mc_elbo(conditioned_model, guide, x_data)
        z = gt.nodes["z"].value
        with torch.no_grad():
            p = decoder(z)
        expected = tdist.Normal(0.0, 1.0).log_prob(z).sum() + tdist.Bernoulli(p).log_prob(x_data).sum()
        expected = expected - tdist.Normal(torch.zeros(20), 1.0).log_prob(z).sum()
        assert loss.item() == pytest.approx(-expected.item(), abs=1e-4)
        loss.backward()
        assert decoder[0].weight.grad is not None and decoder[0].weight.grad.abs().sum() > 0

    def test_decorators(self):
        @poutine.trace
        @poutine.condition(data={"measurement": torch.tensor(9.5)})
        def model(guess):
            return scale_model(guess)

        assert model(8.5).item() == 9.5
        tr = model.get_trace(8.5)
        assert tr.nodes["measurement"].is_observed

    def test_decorator_factory_preserves_name(self):
        @poutine.scale(scale=2.0)
        def my_model():
            return one_obs()

        assert my_model.__name__ == "my_model"
        tr = poutine.trace(my_model).get_trace()
        assert tr.nodes["o"].scale == 2.0

    def test_higher_order_and_context_manager_agree(self):
        data = {"y": torch.tensor(0.25)}
        tr_hof = poutine.trace(poutine.seed(poutine.condition(xy, data=data), rng_seed=9)).get_trace()
        with poutine.trace() as tm, poutine.seed(rng_seed=9), poutine.condition(data=data):
            xy()
        tr_cm = tm.trace
        assert torch.equal(tr_hof.nodes["x"].value, tr_cm.nodes["x"].value)
        assert tr_cm.nodes["y"].is_observed and tr_cm.nodes["y"].value.item() == 0.25
        assert tr_hof.log_prob_sum().item() == pytest.approx(tr_cm.log_prob_sum().item())

    def test_handler_order_matters_for_block(self):
        # trace inside block: sees everything; block inside trace: hides from it
        inner = poutine.trace(xy)
        poutine.block(inner)()
        assert sample_names(inner.trace) == ["x", "y"]
        outer = poutine.trace(poutine.block(xy))
        outer()
        assert sample_names(outer.trace) == []

    def test_condition_then_scale_then_trace(self):
        model = poutine.scale(poutine.condition(xy, data={"x": torch.tensor(0.0), "y": torch.tensor(1.0)}), scale=0.5)
        tr = poutine.trace(model).get_trace()
        assert tr.log_prob_sum().item() == pytest.approx(0.5 * (normal_lp(0, 0, 1) + normal_lp(1, 0, 1)))
    def test_same_handler_instance_cannot_be_entered_twice(self):
        s = poutine.scale(scale=2.0)
        with pytest.raises(ValueError):
            with s:
                with s:
                    pass

    def test_messenger_without_fn_not_callable_with_args(self):
        with pytest.raises(TypeError):
            poutine.trace()(1, 2)
