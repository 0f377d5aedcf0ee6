"""GuideMessenger: the traces of one run, the values it returns, and the ELBOs' dispatch to it."""

import pytest
import torch

import ember
import ember.distributions as dist
from ember import poutine
from ember.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from ember.poutine.guide import GuideMessenger


def two_sites(data):
    a = ember.sample("a", dist.Normal(0.0, 1.0))
    b = ember.sample("b", dist.Normal(a, 2.0))
    ember.sample("obs", dist.Normal(b, 0.5), obs=data)


class ShiftGuide(GuideMessenger):
    """a ~ N(1, 0.5); b ~ N(prior loc + upstream a, 0.3): a hand-checkable guide."""

    def get_posterior(self, name, prior):
        if name == "a":
            return dist.Normal(torch.tensor(1.0), torch.tensor(0.5))
        return dist.Normal(prior.loc + self.upstream_value("a"), torch.tensor(0.3))


def test_the_module_is_laid_out_as_pyro_lays_it_out() -> None:
    assert poutine.guide.GuideMessenger is GuideMessenger
    assert not hasattr(poutine, "GuideMessenger")  # as in Pyro: only the module is poutine's
    with pytest.raises(TypeError, match="abstract"):
        GuideMessenger(two_sites)


def test_get_traces_of_a_two_site_model_by_hand() -> None:
    ember.set_rng_seed(0)
    data = torch.tensor(0.7)
    guide = ShiftGuide(two_sites)
    out = guide(data)
    assert set(out) == {"a", "b", "obs"} and torch.equal(out["obs"], data)
    a, b = out["a"], out["b"]
    model_trace, guide_trace = guide.get_traces()
    assert list(guide_trace.nodes) == ["a", "b"]
    assert list(model_trace.nodes) == ["a", "b", "obs"]
    # the guide's sites: their posteriors; the model's: the priors kept in infer["prior"], same values
    assert guide_trace.nodes["b"].fn.loc == 2 * a and guide_trace.nodes["b"].fn.scale == 0.3
    assert model_trace.nodes["a"].fn is guide_trace.nodes["a"].infer["prior"]
    assert model_trace.nodes["b"].fn.loc == a and model_trace.nodes["b"].fn.scale == 2.0
    assert model_trace.nodes["b"].value is b and guide_trace.nodes["b"].value is b
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    N = torch.distributions.Normal
    log_p = N(0.0, 1.0).log_prob(a) + N(a, 2.0).log_prob(b) + N(b, 0.5).log_prob(data)
    log_q = N(1.0, 0.5).log_prob(a) + N(2 * a, 0.3).log_prob(b)
    assert torch.allclose(model_trace.log_prob_sum(), log_p)
    assert torch.allclose(guide_trace.log_prob_sum(), log_q)
    # a second get_traces gives fresh copies, not the scored ones
    again, _ = guide.get_traces()
    assert again.nodes["b"].log_prob is None
    # the ELBO dispatch: one guide call, the same terms
    ember.set_rng_seed(1)
    loss = Trace_ELBO().loss(two_sites, guide, data)
    a, b = guide.trace.nodes["a"].value, guide.trace.nodes["b"].value
    log_p = N(0.0, 1.0).log_prob(a) + N(a, 2.0).log_prob(b) + N(b, 0.5).log_prob(data)
    log_q = N(1.0, 0.5).log_prob(a) + N(2 * a, 0.3).log_prob(b)
    assert loss == pytest.approx(-(log_p - log_q).item(), rel=1e-6)


def test_a_value_posterior_is_a_point_mass_and_upstream_value_names_the_missing_site() -> None:
    class PointGuide(GuideMessenger):
        def get_posterior(self, name, prior):
            return torch.tensor(0.25)

    guide = PointGuide(two_sites)
    out = guide(torch.tensor(0.0))
    assert out["a"] == 0.25 and out["b"] == 0.25
    assert isinstance(guide.get_traces()[1].nodes["a"].fn, dist.Delta)
    with pytest.raises(KeyError, match=r"upstream_value\('zz'\): no site 'zz' has run yet"):
        guide.upstream_value("zz")


def test_auxiliary_sites_belong_to_the_guide_trace_only_and_args_kwargs_are_seen() -> None:
    seen = []

    class AuxGuide(GuideMessenger):
        def get_posterior(self, name, prior):
            seen.append(self.args_kwargs)
            u = ember.sample(f"{name}_u", dist.Normal(0.0, 1.0), infer={"is_auxiliary": True})
            return dist.Normal(u, 1.0)

    guide = AuxGuide(two_sites)
    out = guide(torch.tensor(0.0))
    assert set(out) == {"a", "b", "obs"} and seen[0] == ((torch.tensor(0.0),), {})
    model_trace, guide_trace = guide.get_traces()
    assert list(guide_trace.nodes) == ["a_u", "a", "b_u", "b"]
    assert [n for n, s in model_trace.nodes.items() if s.type == "sample"] == ["a", "b", "obs"]
    assert not hasattr(guide, "args_kwargs")


def test_elbos_take_a_wrapped_guide_messenger_and_trace_enum_refuses_it() -> None:
    ember.clear_param_store()

    class ParamGuide(GuideMessenger):
        def get_posterior(self, name, prior):
            loc = ember.param(f"loc_{name}", torch.tensor(0.0))
            return dist.Normal(loc, 1.0)

    guide = ParamGuide(two_sites)
    data = torch.tensor(3.0)
    svi = SVI(two_sites, poutine.scale(guide, scale=1.0), ember.optim.Adam({"lr": 0.1}), Trace_ELBO())
    for _ in range(5):
        svi.step(data)
    assert set(ember.get_param_store().keys()) == {"loc_a", "loc_b"}
    assert ember.get_param_store()["loc_b"] > 0.3  # moved towards the data
    with pytest.raises(NotImplementedError, match="TraceEnum_ELBO does not support GuideMessenger"):
        TraceEnum_ELBO(max_plate_nesting=0).loss(two_sites, guide, data)


def test_importance_weights_of_a_messenger_guide_are_its_log_p_minus_log_q() -> None:
    # vectorized importance sampling runs the messenger guide in its plate (in_plate keeps the guide
    # visible), so each weight is log p(a, b, obs) - log q(a, b) of that draw, by hand
    from ember.infer.importance import vectorized_importance_weights

    data = torch.tensor(0.7)
    ember.set_rng_seed(3)
    log_w, model_trace, _ = vectorized_importance_weights(two_sites, ShiftGuide(two_sites), data, num_samples=5, max_plate_nesting=0)
    a, b = model_trace.nodes["a"]["value"].reshape(5), model_trace.nodes["b"]["value"].reshape(5)
    td = torch.distributions
    by_hand = (td.Normal(0.0, 1.0).log_prob(a) + td.Normal(a, 2.0).log_prob(b) + td.Normal(b, 0.5).log_prob(data)
               - td.Normal(1.0, 0.5).log_prob(a) - td.Normal(2 * a, 0.3).log_prob(b))  # q(b) loc: prior loc a, plus a
    torch.testing.assert_close(log_w, by_hand)
