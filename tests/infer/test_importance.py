"""Importance sampling, Empirical and EmpiricalMarginal."""

import math

import pytest
import torch

import ember
import ember.distributions as dist
from ember import poutine
from ember.infer import Empirical, EmpiricalMarginal, Importance

GUESS, MEAS = 8.5, 9.5
POST_LOC = (GUESS * 0.75**2 + MEAS * 1.0) / (1 + 0.75**2)  # 9.14
POST_SD = math.sqrt(0.75**2 / (1 + 0.75**2))  # 0.6
LOG_EVIDENCE = dist.Normal(GUESS, math.sqrt(1 + 0.75**2)).log_prob(torch.tensor(MEAS)).item()


# seed 003's scale model
def scale(guess):
    weight = ember.sample("weight", dist.Normal(guess, 1.0))
    return ember.sample("measurement", dist.Normal(weight, 0.75))


conditioned_scale = ember.condition(scale, data={"measurement": MEAS})


def perfect_guide(guess):
    loc = (0.75**2 * guess + 9.5) / (1 + 0.75**2)  # 9.14
    scale = math.sqrt(0.75**2 / (1 + 0.75**2))  # 0.6
    return ember.sample("weight", dist.Normal(loc, scale))


def scale_log_weight(w, guide_dist=None):
    """log p(weight=w, measurement=9.5) - log q(w), by hand."""
    lp = dist.Normal(GUESS, 1.0).log_prob(w) + dist.Normal(w, 0.75).log_prob(torch.tensor(MEAS))
    return lp if guide_dist is None else lp - guide_dist.log_prob(w)


def test_exact_posterior_constants():
    assert POST_LOC == pytest.approx(9.14)
    assert POST_SD == pytest.approx(0.6)


# ------------------------------------------------------------------------ the scale model
# the sequential loop costs ~1 ms a sample: fewer samples there keep the file fast
@pytest.mark.parametrize("vectorize,n", [(None, 3000), (False, 1000)])
def test_perfect_guide_constant_weights(vectorize, n):
    imp = Importance(conditioned_scale, perfect_guide, num_samples=n, vectorize=vectorize).run(GUESS)
    assert imp.vectorized is (vectorize is None)
    assert len(imp.log_weights) == n and torch.stack(imp.log_weights).shape == (n,)  # a list of scalars, as in Pyro
    # log p(x, z) - q(z) = log p(x) when q is the exact posterior
    assert torch.allclose(torch.stack(imp.log_weights), torch.full((n,), LOG_EVIDENCE), atol=1e-4)
    assert imp.get_log_normalizer().item() == pytest.approx(LOG_EVIDENCE, abs=1e-4)
    assert imp.log_evidence.item() == pytest.approx(LOG_EVIDENCE, abs=1e-4)
    assert imp.get_ESS().item() == pytest.approx(n, rel=1e-3)
    w = imp.get_normalized_weights()
    assert w.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(imp.get_normalized_weights(log_scale=True).exp(), w)
    marginal = EmpiricalMarginal(imp, "weight")
    assert marginal.mean.item() == pytest.approx(POST_LOC, abs=0.05)
    assert marginal.variance.sqrt().item() == pytest.approx(POST_SD, abs=0.05)


@pytest.mark.parametrize("vectorize,n", [(None, 4000), (False, 1500)])
def test_prior_as_proposal(vectorize, n):
    ember.set_rng_seed(1)
    imp = Importance(conditioned_scale, num_samples=n, vectorize=vectorize).run(GUESS)
    assert imp.vectorized is (vectorize is None)
    marginal = EmpiricalMarginal(imp, sites="weight")
    assert marginal.mean.item() == pytest.approx(POST_LOC, abs=0.05)
    assert marginal.variance.sqrt().item() == pytest.approx(POST_SD, abs=0.05)
    assert imp.get_log_normalizer().item() == pytest.approx(LOG_EVIDENCE, abs=0.05)
    # the prior cancels: the log-weights are the log-likelihoods of the prior draws
    w = imp.site_values("weight")
    assert torch.allclose(torch.stack(imp.log_weights), dist.Normal(w, 0.75).log_prob(torch.tensor(MEAS)), atol=1e-5)
    assert 1 < imp.get_ESS().item() < n
    # _RETURN (the default site) is the observed measurement
    assert torch.all(EmpiricalMarginal(imp).enumerate_support() == MEAS)


@pytest.mark.parametrize("vectorize", [None, False])
def test_log_weights_are_per_sample_log_joint_minus_guide(vectorize):
    """The vectorized and the sequential paths give, sample by sample, exactly the
    hand-computed log p(x, z_i) - log q(z_i) of their own draws."""
    q = dist.Normal(9.0, 0.8)

    def guide(guess):
        ember.sample("weight", dist.Normal(9.0, 0.8))

    imp = Importance(conditioned_scale, guide, num_samples=50, vectorize=vectorize).run(GUESS)
    w = imp.site_values("weight")
    assert w.shape == (50,)
    assert torch.allclose(torch.stack(imp.log_weights), scale_log_weight(w, q), atol=1e-5)
    # exec_traces: one model trace per sample, with that sample's value and log joint
    traces = imp.exec_traces
    assert len(traces) == 50
    for i in (0, 17, 49):
        tr = traces[i]
        assert tr.nodes["weight"].value.shape == ()
        assert tr.nodes["weight"].value.item() == pytest.approx(w[i].item())
        assert tr.nodes["measurement"].is_observed
        assert (tr.log_prob_sum() - q.log_prob(w[i])).item() == pytest.approx(imp.log_weights[i].item(), abs=1e-5)


def test_vectorized_and_sequential_agree_statistically():
    def guide(guess):
        ember.sample("weight", dist.Normal(9.0, 1.0))

    ember.set_rng_seed(3)
    vec = Importance(conditioned_scale, guide, num_samples=1000, vectorize=True).run(GUESS)
    seq = Importance(conditioned_scale, guide, num_samples=1000, vectorize=False).run(GUESS)
    assert vec.vectorized and not seq.vectorized
    assert vec.log_evidence.item() == pytest.approx(seq.log_evidence.item(), abs=0.03)
    mv, ms = EmpiricalMarginal(vec, "weight"), EmpiricalMarginal(seq, "weight")
    assert mv.mean.item() == pytest.approx(ms.mean.item(), abs=0.05)
    assert mv.variance.item() == pytest.approx(ms.variance.item(), abs=0.05)


# ------------------------------------------------------------------------ plates, shapes
DATA = torch.tensor([0.5, 1.2, 0.9, 1.7, 1.1])
SIGMA = 0.5


def normal_normal(data):
    loc = ember.sample("loc", dist.Normal(0.0, 1.0))
    with ember.plate("data", len(data)):
        ember.sample("obs", dist.Normal(loc, SIGMA), obs=data)
    return loc


def normal_normal_no_plate(data):
    # the observation broadcasts a scalar distribution over the data: batch dims that
    # no plate declares (the sample plate must go left of them)
    loc = ember.sample("loc", dist.Normal(0.0, 1.0))
    ember.sample("obs", dist.Normal(loc, SIGMA), obs=data)
    return loc


def normal_normal_exact(data):
    prec = 1.0 + len(data) / SIGMA**2
    post_loc = (data.sum() / SIGMA**2 / prec).item()
    cov = torch.eye(len(data)) * SIGMA**2 + torch.ones(len(data), len(data))
    evidence = dist.MultivariateNormal(torch.zeros(len(data)), cov).log_prob(data).item()
    return post_loc, math.sqrt(1 / prec), evidence


@pytest.mark.parametrize("model", [normal_normal, normal_normal_no_plate])
def test_plate_model_vectorized(model):
    post_loc, post_sd, evidence = normal_normal_exact(DATA)

    def guide(data):
        ember.sample("loc", dist.Normal(post_loc, 1.5 * post_sd))

    imp = Importance(model, guide, num_samples=3000).run(DATA)
    assert imp.vectorized is True and imp.fallback_reason is None
    assert imp.max_plate_nesting == 1
    assert imp.log_evidence.item() == pytest.approx(evidence, abs=0.03)
    m = EmpiricalMarginal(imp, "loc")
    assert m.mean.item() == pytest.approx(post_loc, abs=0.02)
    assert m.variance.sqrt().item() == pytest.approx(post_sd, abs=0.02)
    # each weight is the log joint of its own draw
    loc = imp.site_values("loc")
    by_hand = dist.Normal(0.0, 1.0).log_prob(loc) + dist.Normal(loc[:, None], SIGMA).log_prob(DATA).sum(-1)
    by_hand = by_hand - dist.Normal(post_loc, 1.5 * post_sd).log_prob(loc)
    assert torch.allclose(torch.stack(imp.log_weights), by_hand, atol=1e-4)
    # the observed data in every sample
    assert imp.site_values("obs").shape == (3000, 5)
    assert torch.equal(imp.site_values("obs")[7], DATA)


def test_prior_proposal_with_plate_and_local_latents():
    """Local latents in a plate (one per datum): per-sample values [N, 5]."""

    def model(data):
        loc = ember.sample("loc", dist.Normal(0.0, 1.0))
        with ember.plate("data", len(data)):
            z = ember.sample("z", dist.Normal(loc, 1.0))
            ember.sample("obs", dist.Normal(z, SIGMA), obs=data)

    ember.set_rng_seed(2)
    vec = Importance(model, num_samples=4000).run(DATA)
    seq = Importance(model, num_samples=100, vectorize=False).run(DATA)
    assert vec.vectorized and not seq.vectorized
    for imp in (vec, seq):
        z = imp.site_values("z")
        assert z.shape == (imp.num_samples, 5)
        assert imp.exec_traces[3].nodes["z"].value.shape == (5,)
        assert torch.equal(imp.exec_traces[3].nodes["z"].value, z[3])
        # prior proposal: the weights are the likelihoods
        assert torch.allclose(torch.stack(imp.log_weights), dist.Normal(z, SIGMA).log_prob(DATA).sum(-1), atol=1e-4)
    # marginally obs ~ MVN(0, I (1 + sigma^2) + 1 1^T)
    cov = torch.eye(5) * (1 + SIGMA**2) + torch.ones(5, 5)
    exact = dist.MultivariateNormal(torch.zeros(5), cov).log_prob(DATA).item()
    assert vec.log_evidence.item() == pytest.approx(exact, abs=0.1)


def test_subsampled_plate_scales_the_log_likelihood():
    def model(data):
        loc = ember.sample("loc", dist.Normal(0.0, 1.0))
        with ember.plate("data", len(data), subsample=torch.arange(5)) as idx:
            ember.sample("obs", dist.Normal(loc, SIGMA), obs=data[idx])

    data = torch.cat([DATA, DATA])
    imp = Importance(model, num_samples=20).run(data)
    assert imp.vectorized
    loc = imp.site_values("loc")
    # the first copy, scaled by 10 / 5, is the full data's log-likelihood
    full = dist.Normal(loc[:, None], SIGMA).log_prob(data).sum(-1)
    assert torch.allclose(torch.stack(imp.log_weights), full, atol=1e-4)


# ------------------------------------------------------------------ random control flow
def geometric_model():
    n = 0
    while True:
        if ember.sample(f"b_{n}", dist.Bernoulli(0.5)).item() == 0:
            break
        n += 1
    ember.sample("obs", dist.Normal(float(n), 1.0), obs=torch.tensor(2.0))
    return torch.tensor(float(n))


def test_random_control_flow_falls_back_to_sequential():
    ember.set_rng_seed(4)
    imp = Importance(geometric_model, num_samples=1000).run()
    assert imp.vectorized is False
    assert "RuntimeError" in imp.fallback_reason
    ns = torch.arange(30.0)
    post = torch.softmax((ns + 1) * math.log(0.5) + dist.Normal(ns, 1.0).log_prob(torch.tensor(2.0)), 0)
    m = EmpiricalMarginal(imp)  # "_RETURN": n
    assert m.mean.item() == pytest.approx((post * ns).sum().item(), abs=0.15)
    evidence = torch.logsumexp((ns + 1) * math.log(0.5) + dist.Normal(ns, 1.0).log_prob(torch.tensor(2.0)), 0).item()
    assert imp.log_evidence.item() == pytest.approx(evidence, abs=0.1)
    with pytest.raises(KeyError, match="b_1"):
        imp.site_values("b_1")  # present in some traces only


def test_vectorize_true_raises_instead_of_falling_back():
    with pytest.raises(RuntimeError):
        Importance(geometric_model, num_samples=10, vectorize=True).run()


def test_too_small_max_plate_nesting_falls_back():
    imp = Importance(normal_normal_no_plate, num_samples=7, max_plate_nesting=0).run(DATA)
    assert imp.vectorized is False and imp.fallback_reason
    with pytest.raises(Exception):
        Importance(normal_normal_no_plate, num_samples=7, max_plate_nesting=0, vectorize=True).run(DATA)


# ---------------------------------------------------------------------------- no latents
@pytest.mark.parametrize("vectorize", [None, False])
def test_model_without_latents(vectorize):
    def model(data):
        with ember.plate("data", len(data)):
            ember.sample("obs", dist.Normal(1.0, SIGMA), obs=data)

    imp = Importance(model, num_samples=5, vectorize=vectorize).run(DATA)
    exact = dist.Normal(1.0, SIGMA).log_prob(DATA).sum()
    assert torch.allclose(torch.stack(imp.log_weights), exact.expand(5), atol=1e-5)
    assert imp.log_evidence.item() == pytest.approx(exact.item(), abs=1e-5)
    assert imp.get_ESS().item() == pytest.approx(5.0)


# -------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("n", [0, -3, 2.5, True])
def test_bad_num_samples(n):
    with pytest.raises(ValueError, match="num_samples"):
        Importance(conditioned_scale, num_samples=n)


def test_bad_vectorize_flag():
    with pytest.raises(ValueError, match="vectorize"):
        Importance(conditioned_scale, vectorize="yes")


@pytest.mark.parametrize("vectorize", [None, False])
def test_guide_missing_a_latent(vectorize):
    def model():
        a = ember.sample("a", dist.Normal(0.0, 1.0))
        b = ember.sample("b", dist.Normal(a, 1.0))
        ember.sample("obs", dist.Normal(b, 1.0), obs=torch.tensor(0.3))

    def guide():
        ember.sample("a", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"\['b'\]"):
        Importance(model, guide, num_samples=4, vectorize=vectorize).run()


@pytest.mark.parametrize("vectorize", [None, False])
def test_all_weights_minus_inf_names_the_site(vectorize):
    def model():
        x = ember.sample("x", dist.Normal(0.0, 1.0))
        ember.factor("impossible", torch.tensor(-math.inf) + 0 * x)

    with pytest.raises(ValueError, match=r"all 6 log-weights are -inf.*'impossible'"):
        Importance(model, num_samples=6, vectorize=vectorize).run()


@pytest.mark.parametrize("vectorize", [None, False])
def test_nan_weight_names_the_site(vectorize):
    def model():
        x = ember.sample("x", dist.Normal(0.0, 1.0))
        ember.factor("broken", x * torch.tensor(math.nan))

    with pytest.raises(ValueError, match=r"NaN.*'broken'"):
        Importance(model, num_samples=6, vectorize=vectorize).run()


def test_some_minus_inf_weights_are_fine():
    def model():
        x = ember.sample("x", dist.Normal(0.0, 1.0))
        ember.factor("positive_only", torch.where(x > 0, 0.0, -math.inf))

    imp = Importance(model, num_samples=400).run()
    w = imp.get_normalized_weights()
    xs = imp.site_values("x")
    assert torch.all(w[xs <= 0] == 0) and w.sum().item() == pytest.approx(1.0)
    assert imp.log_evidence.item() == pytest.approx(math.log(0.5), abs=0.1)
    assert EmpiricalMarginal(imp, "x").sample((100,)).min().item() > 0


def test_results_need_run():
    imp = Importance(conditioned_scale, num_samples=3)
    with pytest.raises(RuntimeError, match="run"):
        imp.get_ESS()
    with pytest.raises(RuntimeError, match="run"):
        EmpiricalMarginal(imp, "weight")
    assert imp.exec_traces == []


def test_run_returns_self_and_is_hidden_from_outer_handlers():
    with poutine.trace() as tm:
        imp = Importance(conditioned_scale, num_samples=5)
        assert imp.run(GUESS) is imp
    assert [n for n in tm.trace.nodes] == []
    assert not any(w.requires_grad for w in imp.log_weights)


# ------------------------------------------------------------------ Empirical(Marginal)
def test_empirical_moments_sample_log_prob():
    samples = torch.tensor([0.0, 1.0, 2.0, 1.0])
    log_w = torch.log(torch.tensor([1.0, 2.0, 3.0, 2.0]))
    e = Empirical(samples, log_w)
    p = torch.tensor([1.0, 2.0, 3.0, 2.0]) / 8
    mean = (p * samples).sum()
    assert e.mean.item() == pytest.approx(mean.item())
    assert e.variance.item() == pytest.approx((p * (samples - mean) ** 2).sum().item())
    assert e.batch_shape == () and e.event_shape == ()
    assert e.support is dist.constraints.real
    # log_prob: the total weight of the equal samples
    lp = e.log_prob(torch.tensor([1.0, 2.0, 5.0]))
    assert torch.allclose(lp.exp(), torch.tensor([0.5, 3 / 8, 0.0]))
    draws = e.sample((20000,))
    assert draws.shape == (20000,)
    assert (draws == 1.0).float().mean().item() == pytest.approx(0.5, abs=0.02)
    assert e.sample_size == 4
    assert torch.equal(e.enumerate_support(), samples)


def test_empirical_event_shape_and_integer_samples():
    samples = torch.tensor([[0, 1], [1, 1], [0, 1]])
    e = Empirical(samples, torch.zeros(3))
    assert e.event_shape == (2,)
    assert torch.allclose(e.mean, torch.tensor([1 / 3, 1.0]))
    assert e.sample((5, 2)).shape == (5, 2, 2)
    assert e.log_prob(torch.tensor([0, 1])).exp().item() == pytest.approx(2 / 3)
    assert e.log_prob(torch.tensor([[1, 1], [1, 0]])).exp().tolist() == pytest.approx([1 / 3, 0.0])
    with pytest.raises(ValueError, match="agree"):
        Empirical(samples, torch.zeros(4))


def test_empirical_marginal_of_several_sites():
    def model():
        a = ember.sample("a", dist.Normal(0.0, 1.0))
        b = ember.sample("b", dist.Normal(a, 1.0))
        ember.sample("c", dist.Normal(b, 1.0).expand([2]).to_event(1))
        ember.sample("obs", dist.Normal(b, 1.0), obs=torch.tensor(1.0))

    imp = Importance(model, num_samples=50).run()
    m = EmpiricalMarginal(imp, ["a", "b"])
    assert m.event_shape == (2,)
    assert m.sample().shape == (2,)
    assert torch.allclose(m.enumerate_support()[:, 1], imp.site_values("b"))
    assert m.mean.shape == (2,)
    with pytest.raises(ValueError, match="different shapes"):
        EmpiricalMarginal(imp, ["a", "c"])
    with pytest.raises(TypeError, match="sites"):
        EmpiricalMarginal(imp, 3)
    assert EmpiricalMarginal(imp, "c").event_shape == (2,)


def test_importance_is_a_trace_posterior_as_in_pyro():
    from ember.infer.abstract_infer import Marginals, TracePosterior
    from ember.ops.stats import waic

    def model(x):
        z = ember.sample("z", dist.Bernoulli(0.3))
        ember.sample("x", dist.Normal(z, 1.0), obs=x)
        return z

    torch.manual_seed(0)
    x = torch.tensor(0.8)
    imp = Importance(model, None, num_samples=50).run(x)
    assert isinstance(imp, TracePosterior)
    assert imp.num_chains == 1 and imp.chain_ids == [0] * 50
    assert isinstance(imp.log_weights, list) and all(w.shape == () for w in imp.log_weights)
    lw = torch.stack(imp.log_weights)
    z = imp.site_values("z")
    assert torch.allclose(lw, dist.Normal(z, 1.0).log_prob(x))  # proposals from the prior: weight = likelihood
    marg = imp.marginal(sites=["z"])
    assert isinstance(marg, Marginals)
    w = torch.softmax(lw, 0)
    assert float(marg.empirical["z"].mean) == pytest.approx(float((w * z).sum()), abs=1e-6)
    assert torch.equal(imp.marginal().support()["_RETURN"], z)
    ic = imp.information_criterion()
    expected_waic, expected_p = waic(dist.Normal(z, 1.0).log_prob(x)[:, None], lw)
    assert float(ic["waic"]) == pytest.approx(float(expected_waic), abs=1e-5)
    assert float(ic["p_waic"]) == pytest.approx(float(expected_p), abs=1e-5)
    tr = imp()  # one trace drawn by weight, observed sites removed
    assert "z" in tr.nodes and "x" not in tr.nodes


def test_log_weights_mixin_by_hand():
    from ember.infer.importance import LogWeightsMixin

    class Weights(LogWeightsMixin):
        log_weights = [torch.tensor(0.0), torch.tensor(math.log(3.0))]

    w = Weights()
    torch.testing.assert_close(w.get_log_normalizer(), torch.tensor(math.log(2.0)))  # log((1 + 3) / 2)
    torch.testing.assert_close(w.get_normalized_weights(), torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(w.get_ESS(), torch.tensor(1 / (0.25**2 + 0.75**2)))
