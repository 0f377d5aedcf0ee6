"""The message protocol (ember/runtime.py): plates as their own messages, the aliasing rule,
per-class dispatch, site roles, and Pyro's plate-shape rule."""

import math

import pytest
import torch

import ember as pyro
import ember.distributions as dist
from ember import poutine
from ember.infer import SVI, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from ember.optim import Adam
from ember.runtime import (
    Message,
    apply_stack,
    is_auxiliary,
    is_deterministic,
    is_factor,
    is_guide_latent,
    is_latent,
    is_observed,
    is_subsample,
)


def test_plate_indices_are_a_subsample_message_no_estimator_sees():
    def model():
        with pyro.plate("data", 10, subsample_size=3):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    tr = poutine.trace(model).get_trace()
    assert tr.nodes["data"].type == "subsample" and is_subsample(tr.nodes["data"])
    assert tr.stochastic_nodes == ["z"]
    assert [n for n, s in tr.nodes.items() if s.type == "sample"] == ["z"]
    tr.compute_log_prob()
    assert tr.nodes["data"].log_prob is None  # never scored


def test_replay_gives_the_model_the_guides_indices_and_a_copy_of_infer():
    def guide():
        with pyro.plate("data", 50, subsample_size=4) as idx:
            pyro.sample("z", dist.Normal(0.0, 1.0), infer={"tag": 1})
        return idx

    def model():
        with pyro.plate("data", 50, subsample_size=4) as idx:
            pyro.sample("z", dist.Normal(0.0, 1.0))
        return idx

    gt = poutine.trace(guide).get_trace()
    mt = poutine.trace(poutine.replay(model, trace=gt)).get_trace()
    assert torch.equal(mt.nodes["_RETURN"].value, gt.nodes["_RETURN"].value)
    # the aliasing rule: the model's message holds a copy; changing it leaves the guide trace alone
    assert mt.nodes["z"].infer == {"tag": 1}
    assert mt.nodes["z"].infer is not gt.nodes["z"].infer
    mt.nodes["z"].infer["tag"] = 2
    assert gt.nodes["z"].infer == {"tag": 1}


def test_infer_config_never_mutates_a_shared_infer_dict():
    shared = {"a": 1}

    def model():
        pyro.sample("x", dist.Normal(0.0, 1.0), infer=shared)

    tr = poutine.trace(poutine.infer_config(model, config_fn=lambda msg: {"b": 2})).get_trace()
    assert tr.nodes["x"].infer == {"a": 1, "b": 2}
    assert shared == {"a": 1}


def test_plate_dims_come_from_the_frames_on_the_stack():
    with pyro.plate("a", 2) as _:
        with pyro.plate("b", 3):
            x = pyro.sample("x", dist.Normal(0.0, 1.0))
        with pyro.plate("c", 4):  # b has left the stack: c reuses its dim
            y = pyro.sample("y", dist.Normal(0.0, 1.0))
    assert x.shape == (3, 2) and y.shape == (4, 2)
    assert pyro.poutine.runtime.get_stack() == [] if hasattr(pyro.poutine, "runtime") else True


def test_plate_without_size_is_any_size_set_by_broadcasting():
    def model(data):
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data") as idx:
            assert idx is None
            pyro.sample("obs", dist.Normal(loc, 1.0), obs=data)

    data = torch.randn(7)
    tr = poutine.trace(model).get_trace(data)
    tr.compute_log_prob()
    frame = tr.nodes["obs"].cond_indep_stack[0]
    assert frame.name == "data" and frame.dim == -1 and frame.size == -1
    assert tr.nodes["obs"].log_prob.shape == (7,)
    expected = torch.distributions.Normal(tr.nodes["loc"].value, 1.0).log_prob(data).sum()
    torch.testing.assert_close(tr.nodes["obs"].log_prob_sum, expected)
    # and it trains under SVI (Pyro's CVAE / SVI tutorials write it so)
    pyro.clear_param_store()

    def guide(data):
        pyro.sample("loc", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))

    svi = SVI(model, guide, Adam({"lr": 0.01}), Trace_ELBO())
    assert math.isfinite(svi.step(data))


def test_pyro_style_messenger_subclasses_dispatch():
    seen = []

    class ProcessAll(poutine.Messenger):
        def process_message(self, msg):  # Pyro's public spelling
            seen.append(("all", msg.type, msg.name))

    class OnlyParams(poutine.Messenger):
        def _pyro_param(self, msg):
            seen.append(("param", msg.name))

        def _pyro_post_sample(self, msg):
            seen.append(("post", msg.name))

    def model():
        pyro.param("p", torch.tensor(1.0))
        pyro.sample("x", dist.Normal(0.0, 1.0))

    with ProcessAll(), OnlyParams():
        model()
    assert seen == [("param", "p"), ("all", "param", "p"), ("all", "sample", "x"), ("post", "x")]
    pyro.clear_param_store()


def test_lift_changes_the_type_that_outer_handlers_dispatch_on():
    def model():
        return pyro.param("w", torch.tensor(0.5))

    prior = dist.Normal(0.0, 1.0)
    tr = poutine.trace(poutine.lift(model, prior=prior)).get_trace()
    assert tr.nodes["w"].type == "sample" and is_latent(tr.nodes["w"])
    pyro.clear_param_store()


def test_site_roles():
    def model():
        pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("a", dist.Normal(0.0, 1.0), infer={"is_auxiliary": True})
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=torch.tensor(0.3))
        pyro.factor("f", torch.tensor(-1.0))
        pyro.deterministic("d", torch.tensor(2.0))
        with pyro.plate("p", 5, subsample_size=2):
            pass

    tr = poutine.trace(model).get_trace()
    n = tr.nodes
    assert [k for k in n if is_latent(n[k])] == ["z"]
    assert [k for k in n if is_auxiliary(n[k])] == ["a"]
    assert [k for k in n if is_guide_latent(n[k])] == ["z", "a"]
    assert [k for k in n if is_observed(n[k])] == ["y", "f", "d"]
    assert [k for k in n if is_factor(n[k])] == ["f"]
    assert [k for k in n if is_deterministic(n[k])] == ["d"]
    assert [k for k in n if is_subsample(n[k])] == ["p"]


# ---- the auxiliary-site rule: an auxiliary guide site's -log q is in every ELBO ---------------


def _aux_model():
    pyro.sample("z", dist.Normal(0.0, 1.0))


def _aux_guide():
    a = pyro.sample("a", dist.Normal(0.0, 1.0), infer={"is_auxiliary": True})
    pyro.sample("z", dist.Normal(a, 1.0))


@pytest.mark.parametrize("elbo_cls", [Trace_ELBO, TraceMeanField_ELBO, TraceGraph_ELBO])
def test_auxiliary_guide_site_counts_in_every_estimators_loss(elbo_cls):
    # on the same random numbers every estimator's loss is log q(a) + log q(z|a) - log p(z);
    # TraceMeanField replaces the z terms by their expectation given a, KL(q(z|a) || p(z)),
    # and keeps the auxiliary's log q(a) (issue 11: it used to drop it, 0.92 vs -1.19)
    pyro.set_rng_seed(3)
    tr_g = poutine.trace(_aux_guide).get_trace()
    a, z = tr_g.nodes["a"].value, tr_g.nodes["z"].value
    N = torch.distributions.Normal
    if elbo_cls is TraceMeanField_ELBO:
        expected = (N(0.0, 1.0).log_prob(a) + torch.distributions.kl_divergence(N(a, 1.0), N(0.0, 1.0))).item()
    else:
        expected = (N(0.0, 1.0).log_prob(a) + N(a, 1.0).log_prob(z) - N(0.0, 1.0).log_prob(z)).item()
    pyro.set_rng_seed(3)
    loss = elbo_cls().loss(_aux_model, _aux_guide)
    assert loss == pytest.approx(expected, abs=1e-5)


def test_auxiliary_site_enters_the_score_function_cost():
    # a non-reparameterized auxiliary site's score term multiplies the whole particle's cost,
    # its own -log q included: the surrogate's gradient w.r.t. the auxiliary's parameter is
    # the REINFORCE estimate d/dp log q(a) * (log q(a) + log q(z|a) - log p(z))
    class NRNormal(dist.Normal):
        has_rsample = False

    def guide():
        m = pyro.param("m", torch.tensor(0.2))
        a = pyro.sample("a", NRNormal(m, 1.0), infer={"is_auxiliary": True})
        pyro.sample("z", dist.Normal(a.detach(), 1.0))

    for elbo in (Trace_ELBO(), TraceGraph_ELBO()):
        pyro.clear_param_store()
        pyro.set_rng_seed(5)
        tr = poutine.trace(guide).get_trace()
        a, z = tr.nodes["a"].value, tr.nodes["z"].value
        N = torch.distributions.Normal
        cost = (N(0.2, 1.0).log_prob(a) + N(a, 1.0).log_prob(z) - N(0.0, 1.0).log_prob(z)).item()
        expected = (a - 0.2).item() * cost + (a - 0.2).item()  # score * cost + pathwise d/dm log q(a)
        pyro.clear_param_store()
        pyro.set_rng_seed(5)
        surrogate = elbo.differentiable_loss(_aux_model, guide)
        (grad,) = torch.autograd.grad(surrogate, [pyro.param("m").unconstrained() if hasattr(pyro.param("m"), "unconstrained") else pyro.get_param_store()._params["m"]])
        assert grad.item() == pytest.approx(expected, rel=1e-4, abs=1e-5), type(elbo).__name__
    pyro.clear_param_store()


# ---- Pyro's plate-shape rule (issue 17 point 1) ----------------------------------------------


def test_observation_shaped_n_by_1_inside_a_plate_is_an_error_naming_the_fix():
    data = torch.randn(20, 1)

    def model():
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 20):
            pyro.sample("obs", dist.Normal(loc, 1.0), obs=data)

    def guide():
        pyro.sample("loc", dist.Normal(0.0, 1.0))

    with pytest.warns(UserWarning, match="counted 20 times"):
        with pytest.raises(ValueError, match=r"(?s)Invalid log_prob shape at site 'obs'.*shape \(20, 20\).*dim -2.*no plate declares.*squeeze\(-1\)"):
            Trace_ELBO().loss(model, guide)


def test_regression_with_a_column_loc_inside_the_plate_is_an_error():
    x = torch.linspace(0, 1, 30)
    y = 2.0 * x

    def model():
        slope = pyro.sample("slope", dist.Normal(0.0, 10.0))
        with pyro.plate("data", 30):
            loc = (slope * x).unsqueeze(-1)  # [30, 1]: broadcasts against y [30] to [30, 30]
            pyro.sample("y", dist.Normal(loc, 0.1), obs=y)

    def guide():
        pyro.sample("slope", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))

    svi = SVI(model, guide, Adam({"lr": 0.01}), Trace_ELBO())
    with pytest.raises(ValueError, match=r"(?s)site 'y'.*\(30, 30\)"):
        svi.step()
    pyro.clear_param_store()


def test_undeclared_dims_right_of_the_plates_are_free_and_a_plate_fixes_the_rest():
    def model():
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        with pyro.plate("rows", 4, dim=-2):
            pyro.sample("obs", dist.Normal(loc, 1.0), obs=torch.zeros(4, 3))  # dim -1 free

    def guide():
        pyro.sample("loc", dist.Normal(0.0, 1.0))

    assert math.isfinite(Trace_ELBO().loss(model, guide))


def test_mcmc_style_traces_use_the_plate_window():
    # no plates: Pyro's MCMC/Importance window is 0 and the broadcast observation is fine
    def model():
        loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(loc, 1.0), obs=torch.zeros(5))

    tr = poutine.trace(model).get_trace()
    tr.compute_log_prob()
    assert tr.nodes["obs"].log_prob.shape == (5,)


def test_effectful_message_types_pass_through_and_are_traced():
    def my_effect(x):
        msg = Message("my_effect", "e", lambda v: v * 2, (x,))
        return apply_stack(msg).value

    tr = poutine.trace(lambda: my_effect(torch.tensor(3.0))).get_trace()
    assert tr.nodes["e"].type == "my_effect" and tr.nodes["e"].value.item() == 6.0
