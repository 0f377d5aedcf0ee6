"""SplitReparam: a site split into improper-uniform parts, scored once by its own log_prob (by
hand), Pyro's site names, parts with their own supports, and clear errors."""

from __future__ import annotations

import pytest
import torch

import ember as pyro
import ember.distributions as dist
from ember import poutine
from ember.distributions import constraints
from ember.infer.autoguide import AutoNormal
from ember.infer.reparam import SplitReparam
from ember.infer.reparam.split import default_support, real_support, same_support


def _model():
    z = pyro.sample("z", dist.Normal(torch.arange(5.0), 2.0).to_event(1))
    pyro.sample("y", dist.Normal(z.sum(), 1.0), obs=torch.tensor(9.0))
    return z


def test_parts_are_auxiliary_sites_and_the_site_scores_its_own_density():
    reparamed = poutine.reparam(_model, config={"z": SplitReparam([2, 3], -1)})
    guide = AutoNormal(reparamed)
    pyro.set_rng_seed(0)
    guide_tr = poutine.trace(guide).get_trace()
    assert {n for n, s in guide_tr.nodes.items() if s["type"] == "sample" and not s["is_observed"]} == {"z_split_0", "z_split_1"}
    tr = poutine.trace(poutine.replay(reparamed, trace=guide_tr)).get_trace()
    a, b, z = (tr.nodes[n]["value"] for n in ("z_split_0", "z_split_1", "z"))
    assert a.shape == (2,) and b.shape == (3,) and tr.nodes["z"]["is_observed"]
    torch.testing.assert_close(z, torch.cat([a, b]))
    tr.compute_log_prob()
    assert tr.nodes["z_split_0"]["log_prob_sum"] == 0 and tr.nodes["z_split_1"]["log_prob_sum"] == 0
    torch.testing.assert_close(tr.nodes["z"]["log_prob_sum"],
                               torch.distributions.Normal(torch.arange(5.0), 2.0).log_prob(z).sum())


def test_observed_site_split_keeps_its_likelihood():
    obs = torch.tensor([[0.5, 1.0, 2.0], [1.5, 0.2, 0.1]])

    def model():
        with pyro.plate("n", 2):
            pyro.sample("x", dist.Gamma(2.0, 1.0).expand([3]).to_event(1), obs=obs)

    plain = poutine.trace(model).get_trace().log_prob_sum()
    tr = poutine.trace(poutine.reparam(model, config={"x": SplitReparam([1, 2], -1)})).get_trace()
    torch.testing.assert_close(tr.log_prob_sum(), plain)
    assert tr.nodes["x_split_1"]["value"].shape == (2, 2)


def test_part_supports():
    fn = dist.Gamma(2.0, 1.0).expand([3]).to_event(1)
    assert same_support(fn).base_constraint is fn.support.base_constraint
    assert real_support(fn).event_dim == 1 and real_support(fn).base_constraint is constraints.real
    stacked = torch.distributions.constraints.stack([constraints.real, constraints.positive, constraints.unit_interval], dim=-1)

    class Stacked(dist.Normal):
        support = torch.distributions.constraints.independent(stacked, 1)

    part = default_support(Stacked(torch.zeros(3), 1.0), slice(1, 3), -1)
    assert part.event_dim == Stacked(torch.zeros(3), 1.0).support.event_dim
    assert [type(c) for c in part.base_constraint.cseq] == [type(constraints.positive), type(constraints.unit_interval)]


def test_a_split_latent_without_a_guide_cannot_be_drawn():
    def model():
        pyro.sample("x", dist.Gamma(2.0, 1.0).expand([3]).to_event(1))

    with pytest.raises(NotImplementedError, match="ImproperUniform cannot be sampled"):
        poutine.trace(poutine.reparam(model, config={"x": SplitReparam([1, 2], -1)})).get_trace()


@pytest.mark.parametrize("sections, dim, pattern", [
    ([2, 2], -1, r"site 'z'.*sum to 4.*size 5 along dim -1"),
    ([5], -2, r"site 'z'.*dim -2 is not an event dim.*event_shape \(5,\)"),
])
def test_bad_splits_name_the_site(sections, dim, pattern):
    with pytest.raises(ValueError, match=pattern):
        poutine.trace(poutine.reparam(_model, config={"z": SplitReparam(sections, dim)})).get_trace()


def test_bad_arguments():
    with pytest.raises(ValueError, match="negative"):
        SplitReparam([1, 2], 0)
    with pytest.raises(ValueError, match="positive integers"):
        SplitReparam([1, 0], -1)
