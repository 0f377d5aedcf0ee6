"""GumbelSoftmaxReparam: the relaxed one-hot draw as a function of uniform noise (checked by
hand), given values inverted, and Pyro's site names."""

from __future__ import annotations

import pytest
import torch

import ember as pyro
import ember.distributions as dist
from ember import poutine
from ember.infer.reparam import GumbelSoftmaxReparam
from ember.poutine.misc_messengers import _SubstituteValuesMessenger

LOGITS = torch.tensor([[0.2, -1.0, 0.5], [1.5, 0.0, -0.3]])


def _model():
    with pyro.plate("n", 2):
        return pyro.sample("x", dist.RelaxedOneHotCategorical(torch.tensor(0.7), logits=LOGITS))


def test_the_draw_is_the_gumbel_softmax_of_the_uniform_noise():
    pyro.set_rng_seed(0)
    tr = poutine.trace(poutine.reparam(_model, config={"x": GumbelSoftmaxReparam()})).get_trace()
    assert [n for n, s in tr.nodes.items() if s["type"] == "sample"] == ["x_uniform", "x"]
    u, x = tr.nodes["x_uniform"]["value"], tr.nodes["x"]["value"]
    assert u.shape == (2, 3) and bool(((u > 0) & (u < 1)).all())
    torch.testing.assert_close(x, torch.softmax((LOGITS - torch.log(-torch.log(u))) / 0.7, -1))
    tr.compute_log_prob()
    assert tr.nodes["x_uniform"]["log_prob_sum"] == 0 and tr.nodes["x"]["log_prob_sum"] == 0


def test_a_given_value_is_inverted_to_noise_that_gives_it_back():
    x = torch.tensor([[0.1, 0.3, 0.6], [0.7, 0.2, 0.1]])
    # a latent site given a value, as replay or an init strategy gives it
    with poutine.trace() as t:
        with poutine.reparam(config={"x": GumbelSoftmaxReparam()}):
            with pyro.plate("n", 2):
                with _SubstituteValuesMessenger(data={"x": x}):
                    pyro.sample("x", dist.RelaxedOneHotCategorical(torch.tensor(0.7), logits=LOGITS))
    u = t.trace.nodes["x_uniform"]["value"]
    torch.testing.assert_close(torch.softmax((LOGITS - torch.log(-torch.log(u))) / 0.7, -1), x)


def test_observed_and_wrong_sites_are_refused():
    def observed():
        pyro.sample("x", dist.RelaxedOneHotCategorical(torch.tensor(0.7), logits=LOGITS[0]), obs=torch.tensor([0.2, 0.3, 0.5]))

    with pytest.raises(NotImplementedError, match="site 'x'.*observed"):
        poutine.trace(poutine.reparam(observed, config={"x": GumbelSoftmaxReparam()})).get_trace()

    def normal():
        pyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="site 'x'.*RelaxedOneHotCategorical.*Normal"):
        poutine.trace(poutine.reparam(normal, config={"x": GumbelSoftmaxReparam()})).get_trace()
