"""``ExpandedDistribution``: ``.expand`` for a distribution with no ``expand`` of its own
(Pyro's fallback), in plates, ``expand_by`` and ``Empirical``."""

import pytest
import torch
from torch.distributions import constraints

import ember as pyro
import ember.distributions as dist
import ember.poutine as poutine


class Counter(dist.TorchDistribution):
    """Draws ``loc + k / 1000`` with ``k`` counting the draw's elements: every element is distinct
    and rounds back to the ``loc`` of its batch position."""

    support = constraints.real
    arg_constraints: dict = {}

    def __init__(self, loc):
        self.loc = loc
        super().__init__(batch_shape=loc.shape)

    def sample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.batch_shape
        return self.loc.expand(shape) + torch.arange(shape.numel()).reshape(shape) / 1000.0

    def log_prob(self, value):
        return -((value - self.loc) ** 2)


def test_a_hand_written_distribution_in_a_plate_is_expanded():
    def model():
        with pyro.plate("p", 3):
            return pyro.sample("x", Counter(torch.tensor(1.0)))

    node = poutine.trace(model).get_trace().nodes["x"]
    assert node["value"].shape == (3,)
    assert isinstance(node["fn"], dist.ExpandedDistribution)
    assert torch.equal(node["value"], torch.tensor([1.0, 1.001, 1.002]))


def test_expand_and_expand_by_wrap_and_broadcast():
    d = Counter(torch.tensor([1.0, 2.0]))
    e = d.expand([4, 2])
    assert isinstance(e, dist.ExpandedDistribution) and e.batch_shape == (4, 2) and e.event_shape == ()
    assert isinstance(d.expand_by([4]), dist.ExpandedDistribution) and d.expand_by([4]).batch_shape == (4, 2)
    x = e.sample((5,))
    assert x.shape == (5, 4, 2) and x.unique().numel() == 40
    assert torch.equal(x.round(), torch.tensor([1.0, 2.0]).expand(5, 4, 2))
    v = torch.tensor([0.0, 3.0])
    assert torch.equal(e.log_prob(v), torch.tensor([-1.0, -1.0]).expand(4, 2))
    assert e.support is constraints.real and not e.has_rsample
    assert e.expand([6, 4, 2]).batch_shape == (6, 4, 2)


def test_a_size_one_batch_dim_grows_with_independent_draws():
    d = Counter(torch.tensor([[10.0], [20.0]]))  # batch shape (2, 1)
    e = d.expand([3, 2, 4])
    x = e.sample((2,))
    assert x.shape == (2, 3, 2, 4) and x.unique().numel() == 48
    assert torch.equal(x.round(), torch.tensor([[10.0], [20.0]]).expand(2, 3, 2, 4))


def test_expanding_to_an_incompatible_shape_names_the_shapes():
    with pytest.raises(ValueError, match=r"Counter.*\(2,\) to \(3,\)"):
        Counter(torch.tensor([1.0, 2.0])).expand([3])
    with pytest.raises(ValueError, match=r"cannot expand batch shape \(4, 2\) to \(2,\)"):
        Counter(torch.tensor([1.0, 2.0])).expand([4, 2]).expand([2])


def test_rsample_mean_variance_and_enumerate_support_follow_the_base():
    class Shift(Counter):
        has_rsample = True
        has_enumerate_support = True

        def rsample(self, sample_shape=torch.Size()):
            return self.sample(sample_shape)

        @property
        def mean(self):
            return self.loc

        @property
        def variance(self):
            return self.loc * 0 + 2.0

        def enumerate_support(self, expand=True):
            values = torch.tensor([0.0, 1.0]).reshape((2,) + (1,) * len(self.batch_shape))
            return values.expand((2,) + self.batch_shape) if expand else values

    e = Shift(torch.tensor([1.0, 2.0])).expand([3, 2])
    assert e.has_rsample and e.rsample().shape == (3, 2)
    assert torch.equal(e.mean, torch.tensor([1.0, 2.0]).expand(3, 2))
    assert torch.equal(e.variance, torch.full((3, 2), 2.0))
    assert e.enumerate_support().shape == (2, 3, 2) and e.enumerate_support(expand=False).shape == (2, 1, 1)
    assert torch.equal(e.enumerate_support()[1], torch.ones(3, 2))


def test_torch_classes_keep_their_own_expand():
    assert type(dist.Normal(torch.zeros(2), 1.0).expand([3, 2])) is dist.Normal
    assert type(dist.Gamma(torch.ones(2), 1.0).expand([3, 2])) is dist.Gamma
    assert type(dist.HalfCauchy(1.0).expand([3])) is dist.HalfCauchy


def test_empirical_expands():
    samples = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    emp = dist.Empirical(samples, torch.tensor([0.0, 0.0]))
    e = emp.expand([3])
    assert e.batch_shape == (3,) and e.event_shape == (2,)
    x = e.sample((4,))
    assert x.shape == (4, 3, 2)
    assert all(any(torch.equal(row, s) for s in samples) for row in x.reshape(-1, 2))
    lp = e.log_prob(torch.tensor([2.0, 3.0]))
    assert torch.allclose(lp, torch.full((3,), 0.5).log())
    assert e.enumerate_support().shape == (2, 3, 2) and torch.equal(e.enumerate_support()[:, 1], samples)
    assert torch.allclose(e.mean, torch.tensor([1.0, 2.0]).expand(3, 2))

    def model():
        with pyro.plate("p", 3):
            return pyro.sample("x", dist.Empirical(samples, torch.zeros(2)))

    assert poutine.trace(model).get_trace().nodes["x"]["value"].shape == (3, 2)
