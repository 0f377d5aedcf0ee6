"""infer_discrete: temperature 0 against a hand-written Viterbi and brute-force argmax; temperature 1
against exact posterior marginals (brute-force sums) within Monte-Carlo error."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import ember
import ember.distributions as dist
from ember.infer import config_enumerate, infer_discrete
from ember.poutine import trace

K = 3
T = 6
INIT = torch.tensor([0.5, 0.3, 0.2])
TRANS = torch.tensor([[0.7, 0.2, 0.1], [0.15, 0.7, 0.15], [0.25, 0.25, 0.5]])
LOCS = torch.tensor([-1.0, 0.5, 2.0])
YS = torch.tensor([-0.8, 0.2, 1.9, 1.1, -0.3, 0.6])


@pytest.fixture(autouse=True)
def _double():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@config_enumerate
def hmm(ys):
    x = None
    for t in ember.markov(range(len(ys))):
        probs = INIT.double() if x is None else TRANS.double()[x]
        x = ember.sample(f"x_{t}", dist.Categorical(probs))
        ember.sample(f"y_{t}", dist.Normal(LOCS.double()[x], 1.0), obs=ys[t])


def viterbi(ys):
    """The textbook Viterbi algorithm, written out with loops."""
    init, trans, locs = INIT.double().log(), TRANS.double().log(), LOCS.double()
    emit = [[dist.Normal(locs[k], 1.0).log_prob(ys[t]).item() for k in range(K)] for t in range(len(ys))]
    delta = [init[k].item() + emit[0][k] for k in range(K)]
    back = []
    for t in range(1, len(ys)):
        new, ptr = [], []
        for k in range(K):
            best = max(range(K), key=lambda j: delta[j] + trans[j, k].item())
            ptr.append(best)
            new.append(delta[best] + trans[best, k].item() + emit[t][k])
        delta, back = new, back + [ptr]
    path = [max(range(K), key=lambda k: delta[k])]
    for ptr in reversed(back):
        path.append(ptr[path[-1]])
    return path[::-1]


def joint_log_prob(xs, ys):
    lp = INIT.double()[xs[0]].log()
    for t in range(1, len(xs)):
        lp = lp + TRANS.double()[xs[t - 1], xs[t]].log()
    return lp + dist.Normal(LOCS.double()[list(xs)], 1.0).log_prob(ys).sum()


def _path(tr, n):
    return [int(tr.nodes[f"x_{t}"].value) for t in range(n)]


def test_map_equals_viterbi():
    tr = trace(infer_discrete(hmm, first_available_dim=-1, temperature=0)).get_trace(YS)
    path = _path(tr, T)
    assert path == viterbi(YS)
    brute = max(itertools.product(range(K), repeat=T), key=lambda xs: joint_log_prob(xs, YS).item())
    assert path == list(brute)


def test_map_on_a_long_chain_equals_viterbi():
    torch.manual_seed(0)
    ys = torch.randn(60) * 1.5
    tr = trace(infer_discrete(hmm, first_available_dim=-1, temperature=0)).get_trace(ys)
    assert _path(tr, 60) == viterbi(ys)


def test_posterior_samples_match_exact_marginals():
    torch.manual_seed(1)
    n = 4000

    def vectorized(ys):
        with ember.plate("samples", n, dim=-1):
            hmm(ys)

    tr = trace(infer_discrete(vectorized, first_available_dim=-2, temperature=1)).get_trace(YS)
    xs = torch.stack([tr.nodes[f"x_{t}"].value for t in range(T)])  # [T, n]
    assert xs.shape == (T, n)
    assignments = list(itertools.product(range(K), repeat=T))
    lps = torch.stack([joint_log_prob(a, YS) for a in assignments])
    post = (lps - lps.logsumexp(0)).exp()
    a = torch.tensor(assignments)  # [K^T, T]
    for t in range(T):
        for k in range(K):
            exact = post[a[:, t] == k].sum().item()
            got = (xs[t] == k).double().mean().item()
            assert abs(got - exact) < 4.5 * math.sqrt(exact * (1 - exact) / n) + 1e-3, (t, k, got, exact)
    # a pairwise marginal: the samples are joint draws, not independent per step
    exact = post[(a[:, 1] == 0) & (a[:, 2] == 2)].sum().item()
    got = ((xs[1] == 0) & (xs[2] == 2)).double().mean().item()
    assert abs(got - exact) < 4.5 * math.sqrt(exact * (1 - exact) / n) + 1e-3


X3 = torch.tensor([[0.5, -1.0, 2.0], [1.5, 0.2, -0.3]])


@config_enumerate
def nested(x):
    g = ember.sample("g", dist.Categorical(torch.tensor([0.4, 0.6])))
    with ember.plate("a", 2, dim=-2):
        u = ember.sample("u", dist.Categorical(torch.tensor([[0.9, 0.1], [0.2, 0.8]])[g]))
        with ember.plate("b", 3, dim=-1):
            v = ember.sample("v", dist.Categorical(torch.tensor([[0.7, 0.3], [0.25, 0.75]])[u]))
            ember.sample("obs", dist.Normal(torch.tensor([[-1.0, 0.5], [1.0, 2.0]])[u, v], 1.0), obs=x)


def test_map_in_nested_plates_equals_brute_force():
    tr = trace(infer_discrete(nested, first_available_dim=-3, temperature=0)).get_trace(X3)
    g, u, v = (tr.nodes[n].value for n in ("g", "u", "v"))
    assert g.shape == () and u.shape == (2, 1) and v.shape == (2, 3)
    best, best_lp = None, -math.inf
    for gg in range(2):
        for us in itertools.product(range(2), repeat=2):
            for vs in itertools.product(range(2), repeat=6):
                tr2 = trace(ember.poutine.condition(nested.fn if hasattr(nested, "fn") else nested, data={
                    "g": torch.tensor(gg), "u": torch.tensor(us).reshape(2, 1), "v": torch.tensor(vs).reshape(2, 3)})).get_trace(X3)
                lp = tr2.log_prob_sum().item()
                if lp > best_lp:
                    best, best_lp = (gg, us, vs), lp
    assert (int(g), tuple(u.flatten().tolist()), tuple(v.flatten().tolist())) == best


def test_first_available_dim_guessed_and_return_value_kept():
    def model(ys):
        hmm(ys)
        return "done"

    assert infer_discrete(model, temperature=0)(YS) == "done"
    tr = trace(infer_discrete(hmm, temperature=0)).get_trace(YS)
    assert _path(tr, T) == viterbi(YS)


def test_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        infer_discrete(hmm, first_available_dim=-1, temperature=0.5)
