"""TracePosterior / Marginals (ember.infer.abstract_infer) with Pyro's search-inference
pattern: a Search posterior built on poutine.queue, checked against brute-force enumeration."""

from __future__ import annotations

import itertools
import math
import queue as pyqueue

import pytest
import torch

import ember as pyro
import ember.distributions as dist
from ember import poutine
from ember.infer.abstract_infer import EmpiricalMarginal, Marginals, TracePosterior


class Search(TracePosterior):
    """Exact inference by enumerating every execution (Pyro's examples/rsa/search_inference.py pattern)."""

    def __init__(self, model, max_tries=int(1e6), **kwargs):
        self.model = model
        self.max_tries = max_tries
        super().__init__(**kwargs)

    def _traces(self, *args, **kwargs):
        q = pyqueue.Queue()
        q.put(poutine.Trace())
        p = poutine.trace(poutine.queue(self.model, queue=q, max_tries=self.max_tries))
        while not q.empty():
            tr = p.get_trace(*args, **kwargs)
            yield tr, tr.log_prob_sum()


PA, PB, PC = 0.3, torch.tensor([0.2, 0.5, 0.3]), 0.9
Y = 2.0


def model(y):
    a = pyro.sample("a", dist.Bernoulli(torch.tensor(PA)))
    b = pyro.sample("b", dist.Categorical(PB))
    if a.item() == 1:  # dynamic structure: c exists only when a == 1
        c = pyro.sample("c", dist.Bernoulli(torch.tensor(PC)))
    else:
        c = torch.tensor(0.0)
    total = a + b + c
    pyro.sample("y", dist.Normal(total, 1.0), obs=y)
    return total


def _brute_force(y: float) -> dict:
    """Exact posterior of (a, b, total) by summing the joint over every execution."""
    joint = {}
    for a, b in itertools.product((0, 1), (0, 1, 2)):
        for c in ((0, 1) if a == 1 else (0,)):
            p = (PA if a else 1 - PA) * float(PB[b])
            if a == 1:
                p *= PC if c else 1 - PC
            total = a + b + c
            p *= math.exp(-0.5 * (y - total) ** 2) / math.sqrt(2 * math.pi)
            joint[(a, b, c)] = p
    z = sum(joint.values())
    post = {k: v / z for k, v in joint.items()}
    marg = {"a": {}, "b": {}, "total": {}}
    for (a, b, c), p in post.items():
        marg["a"][a] = marg["a"].get(a, 0.0) + p
        marg["b"][b] = marg["b"].get(b, 0.0) + p
        marg["total"][a + b + c] = marg["total"].get(a + b + c, 0.0) + p
    return {"marginals": marg, "log_evidence": math.log(z)}


def test_search_visits_every_execution_and_weights_are_the_joint() -> None:
    posterior = Search(model).run(torch.tensor(Y))
    assert len(posterior.exec_traces) == 3 + 6  # a=0: 3 values of b; a=1: 3 x 2
    keys = sorted((int(t.nodes["a"].value), int(t.nodes["b"].value), int(t.nodes["c"].value) if "c" in t.nodes else 0)
                  for t in posterior.exec_traces)
    assert keys == sorted(_brute_force_keys())
    log_z = torch.logsumexp(torch.stack(posterior.log_weights), 0)
    assert float(log_z) == pytest.approx(_brute_force(Y)["log_evidence"], abs=1e-5)


def _brute_force_keys():
    return [(a, b, c) for a, b in itertools.product((0, 1), (0, 1, 2)) for c in ((0, 1) if a == 1 else (0,))]


@pytest.mark.parametrize("site", ["a", "b", "_RETURN"])
def test_marginals_match_brute_force(site: str) -> None:
    exact = _brute_force(Y)["marginals"]["total" if site == "_RETURN" else site]
    posterior = Search(model).run(torch.tensor(Y))
    marginal = posterior.marginal(sites=[site]).empirical[site]
    assert isinstance(marginal, EmpiricalMarginal)
    for value, p in exact.items():
        got = marginal.log_prob(torch.tensor(float(value) if site != "b" else value)).exp()
        assert float(got) == pytest.approx(p, abs=1e-6), (site, value)
    mean = sum(v * p for v, p in exact.items())
    assert float(marginal.mean) == pytest.approx(mean, abs=1e-6)


def test_pyros_rsa_marginal_helper_runs() -> None:
    """Pyro's RSA examples wrap Search in a memoized Marginal(fn)(*args) -> distribution."""

    def Marginal(fn):
        return lambda *args: EmpiricalMarginal(Search(fn).run(*args))

    d = Marginal(model)(torch.tensor(Y))
    assert float(d.log_prob(torch.tensor(2.0)).exp()) == pytest.approx(_brute_force(Y)["marginals"]["total"][2], abs=1e-6)
    assert d.sample().shape == ()


def test_call_draws_a_trace_without_observations() -> None:
    posterior = Search(model).run(torch.tensor(Y))
    pyro.set_rng_seed(1)
    tr = posterior()
    assert "y" not in tr.nodes and "a" in tr.nodes
    # a trace of zero weight is never drawn
    post = Search(lambda: pyro.sample("x", dist.Categorical(torch.tensor([0.0, 1.0])))).run()
    assert all(int(post().nodes["x"].value) == 1 for _ in range(20))


def test_support_and_errors() -> None:
    posterior = Search(model).run(torch.tensor(Y))
    support = posterior.marginal("b").support()
    assert list(support) == ["b"] and support["b"].shape == (9,)
    with pytest.raises(RuntimeError, match="run"):
        Search(model)()
    with pytest.raises(TypeError, match="TracePosterior"):
        Marginals(object())
    with pytest.raises(ValueError, match="num_chains"):
        Search(model, num_chains=0)

    class Bad(TracePosterior):
        def _traces(self):
            yield (poutine.Trace(),)

    with pytest.raises(ValueError, match="yield"):
        Bad().run()

    class Vector(TracePosterior):
        def _traces(self):
            yield poutine.Trace(), torch.zeros(3)

    with pytest.raises(ValueError, match="scalar; trace 0 has one with 3 elements"):
        Vector().run()


def test_run_hides_its_sites_from_outer_handlers() -> None:
    with poutine.trace() as tm:
        Search(model).run(torch.tensor(Y))
    assert [n for n in tm.trace.nodes] == []


def test_information_criterion() -> None:
    stats = pytest.importorskip("ember.ops.stats")
    if not hasattr(stats, "waic"):
        pytest.skip("ember.ops.stats.waic not available")
    posterior = Search(model).run(torch.tensor(Y))
    ic = posterior.information_criterion()
    # reference: WAIC from the per-trace log-likelihoods and normalized weights; the variance
    # carries Pyro's frequency-weights correction n / (n - 1)
    ll = torch.stack([t.nodes["y"].fn.log_prob(t.nodes["y"].value) for t in posterior.exec_traces])
    w = torch.softmax(torch.stack(posterior.log_weights), 0)
    lppd = torch.log((w * ll.exp()).sum())
    n = len(posterior.exec_traces)
    p_waic = (w * (ll - (w * ll).sum()) ** 2).sum() * n / (n - 1)
    assert float(ic["p_waic"]) == pytest.approx(float(p_waic), rel=1e-4)
    assert float(ic["waic"]) == pytest.approx(float(-2 * (lppd - p_waic)), rel=1e-4)


def test_marginals_of_an_importance_posterior() -> None:
    """Importance is not a TracePosterior subclass in Ember (its vectorized traces are built
    lazily), but Marginals takes any run posterior with exec_traces and log_weights."""
    from ember.infer import Importance

    def scale(guess):
        weight = pyro.sample("weight", dist.Normal(guess, 1.0))
        pyro.sample("measurement", dist.Normal(weight, 0.75), obs=torch.tensor(9.5))
        return weight

    pyro.set_rng_seed(0)
    imp = Importance(scale, guide=None, num_samples=2000).run(8.5)
    marginals = Marginals(imp, ["weight", "_RETURN"])
    exact_mean = (8.5 / 1.0 + 9.5 / 0.75**2) / (1 + 1 / 0.75**2)  # 9.14
    assert float(marginals.empirical["weight"].mean) == pytest.approx(exact_mean, abs=0.15)
    assert torch.equal(marginals.support()["weight"], marginals.support()["_RETURN"])


def test_nested_search_schelling_coordination() -> None:
    """Searches nested inside a searched model (each under poutine.block), with the inner
    posterior's marginal observed as a distribution: the Schelling coordination game of
    Pyro's RSA examples. Exact answer by the same recursion written out by hand."""
    pref = 0.6

    def location():
        return pyro.sample("loc", dist.Bernoulli(torch.tensor(pref)))

    def alice(depth):
        prior = location()
        with poutine.block():
            bob_marginal = EmpiricalMarginal(Search(bob).run(depth - 1))
        return pyro.sample("bob_choice", bob_marginal, obs=prior)

    def bob(depth):
        prior = location()
        if depth > 0:
            with poutine.block():
                alice_marginal = EmpiricalMarginal(Search(alice).run(depth))
            return pyro.sample("alice_choice", alice_marginal, obs=prior)
        return prior

    b = pref  # P(bob goes to the preferred place) at depth 0
    for _ in range(2):
        a = pref * b / (pref * b + (1 - pref) * (1 - b))  # alice at depth d, given bob at d - 1
        b = pref * a / (pref * a + (1 - pref) * (1 - a))  # bob at depth d, given alice at d
    got = EmpiricalMarginal(Search(bob).run(2)).log_prob(torch.tensor(1.0)).exp()
    assert float(got) == pytest.approx(b, abs=1e-5)  # 0.8836
