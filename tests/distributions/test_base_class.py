"""``ember.distributions.Distribution``: Pyro's base class for hand-written distributions."""

import torch
from torch.distributions import constraints

import ember as pyro
import ember.distributions as dist


class Coin(dist.Distribution):
    support = constraints.boolean

    def __init__(self, p):
        self.p = torch.as_tensor(p)
        super().__init__()

    def sample(self, sample_shape=torch.Size()):
        return torch.bernoulli(self.p.expand(sample_shape))

    def log_prob(self, value):
        return torch.where(value > 0, self.p.log(), (1 - self.p).log())


def test_every_ember_distribution_is_a_distribution():
    assert isinstance(dist.Normal(0.0, 1.0), dist.Distribution)
    assert isinstance(dist.ZeroInflatedPoisson(torch.tensor(1.0), gate=torch.tensor(0.2)), dist.Distribution)
    assert isinstance(Coin(0.3), dist.Distribution)
    assert not isinstance(torch.distributions.Normal(0.0, 1.0), dist.Distribution)  # torch's own class, as in Pyro
    assert dist.util.sum_rightmost(torch.ones(2, 3), 1).shape == (2,)  # dist.util, as in Pyro


def test_a_hand_written_distribution_is_callable_and_a_sample_site():
    c = Coin(0.3)
    assert c().shape == () and c.batch_shape == () and c.event_shape == ()

    def model():
        return pyro.sample("c", Coin(0.3), obs=torch.tensor(1.0))

    tr = pyro.poutine.trace(model).get_trace()
    assert torch.isclose(tr.log_prob_sum(), torch.tensor(0.3).log())
