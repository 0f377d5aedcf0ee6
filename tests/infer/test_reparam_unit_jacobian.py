"""UnitJacobianReparam and its DCT and Haar uses: the reparameterized model is the same model
(exact log-densities by hand), with Pyro's site names, and clear errors."""

from __future__ import annotations

import math

import pytest
import torch

import ember as pyro
import ember.distributions as dist
from ember import poutine
from ember.distributions.transforms import DiscreteCosineTransform, HaarTransform
from ember.infer.reparam import DiscreteCosineReparam, HaarReparam, UnitJacobianReparam

Y = torch.tensor(3.0)


def _model():
    x = pyro.sample("x", dist.LogNormal(0.0, 1.0).expand([4]).to_event(1))
    pyro.sample("obs", dist.Normal(x.sum(), 1.0), obs=Y)
    return x


@pytest.mark.parametrize("reparam, suffix, transform", [
    (DiscreteCosineReparam(), "dct", DiscreteCosineTransform()),
    (DiscreteCosineReparam(smooth=1.0), "dct", DiscreteCosineTransform(smooth=1.0)),
    (HaarReparam(), "haar", HaarTransform()),
    (HaarReparam(flip=True), "haar", HaarTransform(flip=True)),
])
def test_latent_site_is_the_transformed_draw_with_the_density_by_hand(reparam, suffix, transform):
    pyro.set_rng_seed(0)
    tr = poutine.trace(poutine.reparam(_model, config={"x": reparam})).get_trace()
    assert [n for n, s in tr.nodes.items() if s["type"] == "sample"] == [f"x_{suffix}", "x", "obs"]
    y, x = tr.nodes[f"x_{suffix}"]["value"], tr.nodes["x"]["value"]
    assert not tr.nodes[f"x_{suffix}"]["is_observed"] and tr.nodes["x"]["is_observed"]
    torch.testing.assert_close(x, transform.inv(y).exp())  # x = exp(T^-1(y))
    tr.compute_log_prob()
    # y = T(log x), |det T| = 1: p(y) = p(x) |dx/dlog x| = LogNormal(x) * prod(x)
    by_hand = torch.distributions.LogNormal(0.0, 1.0).log_prob(x).sum() + x.log().sum()
    torch.testing.assert_close(tr.nodes[f"x_{suffix}"]["log_prob_sum"], by_hand)
    assert tr.nodes["x"]["log_prob_sum"] == 0  # the point mass x is not scored again
    torch.testing.assert_close(tr.nodes["obs"]["log_prob_sum"], torch.distributions.Normal(x.sum(), 1.0).log_prob(Y))


def test_observed_site_keeps_its_exact_likelihood():
    def model():
        pyro.sample("x", dist.LogNormal(0.0, 1.0).expand([4]).to_event(1), obs=torch.tensor([0.5, 1.0, 2.0, 3.0]))

    plain = poutine.trace(model).get_trace().log_prob_sum()
    for reparam in (DiscreteCosineReparam(), HaarReparam()):
        tr = poutine.trace(poutine.reparam(model, config={"x": reparam})).get_trace()
        torch.testing.assert_close(tr.log_prob_sum(), plain)


def test_replayed_latent_value_is_kept():
    pyro.set_rng_seed(1)
    reparamed = poutine.reparam(_model, config={"x": DiscreteCosineReparam()})
    first = poutine.trace(reparamed).get_trace()
    replayed = poutine.trace(poutine.replay(reparamed, trace=first)).get_trace()
    torch.testing.assert_close(replayed.nodes["x"]["value"], first.nodes["x"]["value"])
    torch.testing.assert_close(replayed.nodes["x_dct"]["value"], first.nodes["x_dct"]["value"])


def test_a_batch_dim_cannot_be_coupled():
    def model():
        with pyro.plate("t", 4):
            pyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"site 'x'.*couples the rightmost 1 dims.*0 event dims.*to_event"):
        poutine.trace(poutine.reparam(model, config={"x": DiscreteCosineReparam()})).get_trace()
    with pytest.raises(NotImplementedError, match="experimental_allow_batch"):
        UnitJacobianReparam(HaarTransform(), experimental_allow_batch=True)


def test_unit_jacobian_reparam_takes_any_volume_preserving_transform():
    pyro.set_rng_seed(2)

    def model():
        return pyro.sample("z", dist.Normal(torch.zeros(3), 2.0).to_event(1))

    tr = poutine.trace(poutine.reparam(model, config={"z": UnitJacobianReparam(HaarTransform(), suffix="w")})).get_trace()
    tr.compute_log_prob()
    z = tr.nodes["z"]["value"]
    expected = -0.5 * (z / 2.0).pow(2).sum() - 3 * (math.log(2.0) + 0.5 * math.log(2 * math.pi))
    torch.testing.assert_close(tr.nodes["z_w"]["log_prob_sum"], expected)
