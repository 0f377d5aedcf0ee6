"""TraceEnum_ELBO.compute_marginals and .sample_posterior, checked against sums over every joint
assignment of the enumerated sites."""

import itertools

import pytest
import torch

import ember as pyro
import ember.distributions as dist
from ember import poutine
from ember.infer import TraceEnum_ELBO, config_enumerate

LOCS = torch.tensor([-1.0, 1.0])


@config_enumerate
def mixture():
    z = pyro.sample("z", dist.Categorical(torch.tensor([0.3, 0.7])))
    pyro.sample("x", dist.Normal(LOCS[z], 1.0), obs=torch.tensor(0.5))
    return z


def empty_guide(*args):
    pass


def test_mixture_marginal_is_bayes_rule():
    marg = TraceEnum_ELBO(max_plate_nesting=0).compute_marginals(mixture, empty_guide)
    w = torch.tensor([0.3, 0.7]) * dist.Normal(LOCS, 1.0).log_prob(torch.tensor(0.5)).exp()
    assert isinstance(marg["z"], dist.Categorical)
    assert torch.allclose(marg["z"].probs, w / w.sum(), atol=1e-6)
    assert torch.allclose(marg["z"].probs, torch.tensor([0.1362, 0.8638]), atol=1e-4)  # pyro-ppl 1.9.2


XS = torch.tensor([-0.3, 1.2, 0.4])
SHIFT = 0.3


@config_enumerate
def plated(xs):
    s = pyro.sample("s", dist.Normal(0.0, 1.0))
    p = pyro.sample("p", dist.Bernoulli(0.4))
    with pyro.plate("data", len(xs)):
        z = pyro.sample("z", dist.Categorical(torch.tensor([0.2, 0.5, 0.3])))
        pyro.sample("x", dist.Normal(torch.tensor([-1.0, 0.0, 2.0])[z] + s + p, 1.0), obs=xs)


def plated_guide(xs):
    pyro.sample("s", dist.Delta(torch.tensor(SHIFT)))


def test_plated_marginals_by_brute_force():
    """A global Bernoulli p and per-datum z_i: sum over all 2 * 3^3 assignments."""
    marg = TraceEnum_ELBO(max_plate_nesting=1).compute_marginals(plated, plated_guide, XS)
    prior_z, locs = torch.tensor([0.2, 0.5, 0.3]), torch.tensor([-1.0, 0.0, 2.0])
    joint = {}
    for p in (0, 1):
        for zs in itertools.product(range(3), repeat=3):
            lp = dist.Bernoulli(0.4).log_prob(torch.tensor(float(p)))
            for i, z in enumerate(zs):
                lp = lp + prior_z[z].log() + dist.Normal(locs[z] + SHIFT + p, 1.0).log_prob(XS[i])
            joint[(p,) + zs] = lp.exp()
    total = sum(joint.values())
    pz = torch.zeros(3, 3)
    pp = torch.zeros(2)
    for (p, *zs), w in joint.items():
        pp[p] += w / total
        for i, z in enumerate(zs):
            pz[i, z] += w / total
    assert isinstance(marg["p"], dist.Bernoulli) and marg["p"].batch_shape == ()
    assert torch.allclose(marg["p"].probs, pp[1], atol=1e-6)
    assert marg["z"].batch_shape == (3,)
    assert torch.allclose(marg["z"].probs, pz, atol=1e-6)


TRANS = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
YS = torch.tensor([0.9, -0.2, -1.1, 0.7])


@config_enumerate
def hmm(ys):
    z = pyro.sample("z_0", dist.Categorical(torch.tensor([0.5, 0.5])))
    pyro.sample("y_0", dist.Normal(LOCS[z], 1.0), obs=ys[0])
    for t in pyro.markov(range(1, len(ys))):
        z = pyro.sample(f"z_{t}", dist.Categorical(TRANS[z]))
        pyro.sample(f"y_{t}", dist.Normal(LOCS[z], 1.0), obs=ys[t])


def test_markov_chain_marginals_by_brute_force():
    marg = TraceEnum_ELBO(max_plate_nesting=0).compute_marginals(hmm, empty_guide, YS)
    T = len(YS)
    post = torch.zeros(T, 2)
    total = 0.0
    for zs in itertools.product(range(2), repeat=T):
        lp = torch.tensor(0.5).log() + dist.Normal(LOCS[zs[0]], 1.0).log_prob(YS[0])
        for t in range(1, T):
            lp = lp + TRANS[zs[t - 1], zs[t]].log() + dist.Normal(LOCS[zs[t]], 1.0).log_prob(YS[t])
        w = float(lp.exp())
        total += w
        for t, z in enumerate(zs):
            post[t, z] += w
    post /= total
    assert list(marg) == [f"z_{t}" for t in range(T)]
    for t in range(T):
        assert torch.allclose(marg[f"z_{t}"].probs, post[t], atol=1e-6), t


def test_sample_posterior_draws_from_the_marginal():
    elbo = TraceEnum_ELBO(max_plate_nesting=0)
    torch.manual_seed(0)
    draws = torch.stack([elbo.sample_posterior(mixture, empty_guide) for _ in range(600)])
    # posterior P(z = 0) = 0.1362; 600 draws: standard deviation 0.014
    assert abs(float((draws == 0).float().mean()) - 0.1362) < 0.06


def test_sample_posterior_of_a_chain_with_sharp_observations_is_the_true_path():
    ys = torch.tensor([1.0, -1.0, -1.0, 1.0])

    @config_enumerate
    def sharp(ys):
        zs = []
        z = pyro.sample("z_0", dist.Categorical(torch.tensor([0.5, 0.5])))
        pyro.sample("y_0", dist.Normal(LOCS[z], 0.01), obs=ys[0])
        zs.append(z)
        for t in pyro.markov(range(1, len(ys))):
            z = pyro.sample(f"z_{t}", dist.Categorical(TRANS[z]))
            pyro.sample(f"y_{t}", dist.Normal(LOCS[z], 0.01), obs=ys[t])
            zs.append(z)
        return zs

    tr = poutine.trace(lambda: TraceEnum_ELBO(max_plate_nesting=0).sample_posterior(sharp, empty_guide, ys)).get_trace()
    assert [int(tr.nodes[f"z_{t}"]["value"]) for t in range(4)] == [1, 0, 0, 1]
    assert [int(v) for v in tr.nodes["_RETURN"]["value"]] == [1, 0, 0, 1]


def test_guide_enumeration_and_particles_are_refused():
    @config_enumerate
    def enum_guide():
        pyro.sample("z", dist.Categorical(torch.tensor([0.5, 0.5])))

    with pytest.raises(NotImplementedError, match=r"enumerated guide sites.*\['z'\]"):
        TraceEnum_ELBO(max_plate_nesting=0).compute_marginals(mixture, enum_guide)
    with pytest.raises(NotImplementedError, match="num_particles=1"):
        TraceEnum_ELBO(max_plate_nesting=0, num_particles=2).sample_posterior(mixture, empty_guide)
