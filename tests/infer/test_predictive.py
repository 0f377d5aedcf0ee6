"""Predictive: prior, posterior-sample and guide-based predictive draws."""

import math

import pytest
import torch

import ember
import ember.distributions as dist
from ember import poutine
from ember.infer import Importance, Predictive

DATA = torch.tensor([1.0, 2.0, 3.0])
PARALLEL = [False, True]
# the loop costs ~1 ms a sample: moment tests use fewer samples there, with tolerances
# of about 4 standard errors
SIZES = [(False, 800), (True, 4000)]


def model(data):
    loc = ember.sample("loc", dist.Normal(0.0, 1.0))
    ember.deterministic("twice", 2 * loc)
    with ember.plate("data", len(data)):
        ember.sample("obs", dist.Normal(loc, 1.0), obs=data)
    return loc


def guide(data):
    ember.sample("loc", dist.Normal(3.0, 0.5))


def shapes(out):
    return {k: tuple(v.shape) for k, v in out.items()}


# -------------------------------------------------------------------------------- prior
@pytest.mark.parametrize("parallel,n", SIZES)
def test_prior_predictive_moments(parallel, n):
    out = Predictive(model, num_samples=n, parallel=parallel)(DATA)
    assert shapes(out) == {"loc": (n, 1), "twice": (n, 1), "obs": (n, 3)}
    assert torch.equal(out["twice"], 2 * out["loc"])
    obs = out["obs"]
    tol = 4 / math.sqrt(n)
    # the data are not returned: obs is drawn afresh, obs_i = loc + noise_i
    assert not torch.any(obs == DATA)
    assert obs.mean(0).abs().max().item() < 1.5 * tol
    assert torch.allclose(obs.var(0), torch.full((3,), 2.0), atol=3 * tol)
    cov = torch.cov(obs.T)
    assert cov[0, 1].item() == pytest.approx(1.0, abs=2 * tol)
    assert out["loc"].var().item() == pytest.approx(1.0, abs=1.5 * tol)


@pytest.mark.parametrize("parallel,n", SIZES)
def test_prior_predictive_of_the_conditioned_scale_model(parallel, n):
    def scale(guess):
        weight = ember.sample("weight", dist.Normal(guess, 1.0))
        return ember.sample("measurement", dist.Normal(weight, 0.75))

    conditioned = ember.condition(scale, data={"measurement": 9.5})
    out = Predictive(conditioned, num_samples=n, parallel=parallel)(8.5)
    m = out["measurement"]
    assert m.shape == (n,)
    # measurement ~ Normal(8.5, sqrt(1 + 0.75^2)) marginally, not the conditioned 9.5
    tol = 4 / math.sqrt(n)
    assert m.mean().item() == pytest.approx(8.5, abs=1.25 * tol)
    assert m.std().item() == pytest.approx(math.sqrt(1 + 0.75**2), abs=tol)


# ----------------------------------------------------------------- posterior samples
@pytest.mark.parametrize("parallel,n", SIZES)
def test_posterior_predictive_from_samples(parallel, n):
    loc = torch.linspace(-1.0, 1.0, n)
    out = Predictive(model, {"loc": loc}, parallel=parallel)(DATA)
    # default: the sites not given (deterministic ones included)
    assert shapes(out) == {"twice": (n, 1), "obs": (n, 3)}
    assert torch.equal(out["twice"], 2 * loc[:, None])  # Pyro's [N, 1]: one plate in the model
    noise = out["obs"] - loc[:, None]
    tol = 4 / math.sqrt(n)
    assert noise.mean().item() == pytest.approx(0.0, abs=tol / 1.5)
    assert noise.var().item() == pytest.approx(1.0, abs=tol)
    # obs marginally: mean 0, var var(loc) + 1
    assert torch.allclose(out["obs"].mean(0), torch.zeros(3), atol=tol)
    assert torch.allclose(out["obs"].var(0), torch.full((3,), loc.var().item() + 1), atol=2 * tol)
    # return_sites=None: every site, the given samples too
    out = Predictive(model, {"loc": loc}, parallel=parallel, return_sites=None)(DATA)
    assert set(out) == {"loc", "twice", "obs"}
    assert torch.equal(out["loc"], loc[:, None])


@pytest.mark.parametrize("parallel", PARALLEL)
def test_pyro_shaped_samples_are_accepted(parallel):
    loc = torch.randn(50, 1)  # Pyro returns [N, 1] for a global site of a model with one plate
    out = Predictive(model, {"loc": loc}, parallel=parallel, return_sites=["loc", "twice"])(DATA)
    assert shapes(out) == {"loc": (50, 1), "twice": (50, 1)}
    assert torch.equal(out["twice"], 2 * loc)


@pytest.mark.parametrize("parallel,n", SIZES)
def test_guide_based(parallel, n):
    out = Predictive(model, guide=guide, num_samples=n, parallel=parallel)(DATA)
    # with a guide every site of the model comes back, the guide's latents too
    assert shapes(out) == {"loc": (n, 1), "twice": (n, 1), "obs": (n, 3)}
    tol = 4 / math.sqrt(n)
    assert out["loc"].mean().item() == pytest.approx(3.0, abs=tol / 2)
    assert out["loc"].std().item() == pytest.approx(0.5, abs=tol / 3)
    assert torch.equal(out["twice"], 2 * out["loc"])
    assert torch.allclose(out["obs"].mean(0), torch.full((3,), 3.0), atol=tol)
    assert torch.allclose(out["obs"].var(0), torch.full((3,), 1.25), atol=1.5 * tol)
    only_obs = Predictive(model, guide=guide, num_samples=10, parallel=parallel, return_sites=["obs"])(DATA)
    assert shapes(only_obs) == {"obs": (10, 3)}


def test_posterior_predictive_after_importance():
    imp = Importance(model, guide, num_samples=500).run(DATA)
    resampled = torch.distributions.Categorical(logits=torch.stack(list(imp.log_weights))).sample((400,))  # a list, as Pyro's
    samples = {"loc": imp.site_values("loc")[resampled]}
    out = Predictive(model, samples, parallel=True)(DATA)
    assert out["obs"].shape == (400, 3)


# ------------------------------------------------------------- shapes, plates, events
def rich_model(x):
    # a global vector with an event dim, two nested plates, a local latent, an
    # observation broadcast over data without a plate, and a deterministic site
    # (written to broadcast from the right, as vectorized code must)
    w = ember.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    s = ember.sample("s", dist.HalfNormal(1.0))
    with ember.plate("rows", x.shape[0], dim=-2):
        r = ember.sample("r", dist.Normal(0.0, 1.0))
        with ember.plate("cols", x.shape[1], dim=-1):
            mean = ember.deterministic("mean", r + x * w[..., 0] + w[..., 1])
            ember.sample("y", dist.Normal(mean, s), obs=x)
    ember.sample("total", dist.Normal(w.sum(-1), 1.0), obs=torch.zeros(4))


X = torch.arange(6.0).reshape(3, 2) / 6


def test_shapes_with_plates_and_events_parallel_equals_sequential():
    n = 40
    samples = {"w": torch.randn(n, 2), "s": torch.rand(n) + 0.5, "r": torch.randn(n, 3, 1)}
    # Pyro's shapes: each site's distribution padded with ones to the model's 2 plate dims
    expected = {"mean": (n, 3, 2), "y": (n, 3, 2), "total": (n, 1, 1, 4)}
    seq = Predictive(rich_model, samples)(X)
    par = Predictive(rich_model, samples, parallel=True)(X)
    assert shapes(seq) == expected and shapes(par) == expected
    # the deterministic site depends on the given samples only: identical in both
    assert torch.allclose(seq["mean"], par["mean"], atol=1e-6)
    by_hand = samples["r"] + X * samples["w"][:, None, None, 0] + samples["w"][:, None, None, 1]
    assert torch.allclose(seq["mean"], by_hand, atol=1e-6)
    every = Predictive(rich_model, samples, parallel=True, return_sites=None)(X)
    assert shapes(every) == dict(expected, w=(n, 1, 1, 2), s=(n, 1, 1), r=(n, 3, 1))
    assert torch.equal(every["w"][:, 0, 0], samples["w"])


def test_parallel_and_sequential_give_the_same_distribution():
    n = 1000
    ember.set_rng_seed(5)
    samples = {"w": torch.randn(n, 2) * 0.5 + torch.tensor([1.0, -1.0]), "s": torch.full((n,), 0.1), "r": torch.zeros(n, 3, 1)}
    seq = Predictive(rich_model, samples)(X)
    par = Predictive(rich_model, samples, parallel=True)(X)
    for site in ("y", "total"):
        assert torch.allclose(seq[site].mean(0), par[site].mean(0), atol=0.15), site
        assert torch.allclose(seq[site].std(0), par[site].std(0), atol=0.1), site
        # y ~ Normal(x w0 + w1, 0.1); total ~ Normal(w0 + w1, 1)
    by_hand = X * samples["w"][:, None, None, 0] + samples["w"][:, None, None, 1]
    for out in (seq, par):
        assert (out["y"] - by_hand).std().item() == pytest.approx(0.1, abs=0.01)
        assert out["total"].mean().item() == pytest.approx(0.0, abs=0.08)
        assert out["total"].var().item() == pytest.approx(1.5, abs=0.15)


@pytest.mark.parametrize("parallel", PARALLEL)
def test_prior_predictive_rich_model(parallel):
    out = Predictive(rich_model, num_samples=20, parallel=parallel)(X)
    assert shapes(out) == {"w": (20, 1, 1, 2), "s": (20, 1, 1), "r": (20, 3, 1), "mean": (20, 3, 2), "y": (20, 3, 2),
                           "total": (20, 1, 1, 4)}


def test_return_value_and_single_name():
    loc = torch.randn(7)
    for parallel in PARALLEL:
        out = Predictive(model, {"loc": loc}, return_sites=["_RETURN", "obs"], parallel=parallel)(DATA)
        assert torch.equal(out["_RETURN"], loc)
        assert out["obs"].shape == (7, 3)
        assert set(Predictive(model, {"loc": loc}, return_sites="obs", parallel=parallel)(DATA)) == {"obs"}


def test_get_vectorized_trace():
    loc = torch.randn(9)
    tr = Predictive(model, {"loc": loc}).get_vectorized_trace(DATA)
    assert tr.nodes["loc"].value.shape == (9, 1)  # the sample plate sits at dim -2
    assert torch.equal(tr.nodes["loc"].value[:, 0], loc)
    assert tr.nodes["obs"].value.shape == (9, 3)
    tr = Predictive(model, guide=guide, num_samples=4).get_vectorized_trace(DATA)
    assert tr.nodes["obs"].value.shape == (4, 3)


# --------------------------------------------------------------- random control flow
def geometric():
    n = 0
    while ember.sample(f"b_{n}", dist.Bernoulli(0.5)).item() == 1:
        n += 1
    return ember.sample("count", dist.Delta(torch.tensor(float(n))))


def test_random_control_flow_needs_the_loop():
    out = Predictive(geometric, num_samples=2000, return_sites=["count"])()
    assert out["count"].shape == (2000,)
    assert out["count"].mean().item() == pytest.approx(1.0, abs=0.1)  # Geometric(1/2) on {0, 1, ...}
    with pytest.raises(RuntimeError, match="parallel=False"):
        Predictive(geometric, num_samples=10, return_sites=["count"], parallel=True)()


# -------------------------------------------------------------------------- misc
def test_no_gradients_and_hidden_from_outer_handlers():
    loc = torch.randn(5, requires_grad=True)
    with poutine.trace() as tm:
        out = Predictive(model, {"loc": loc})(DATA)
    assert list(tm.trace.nodes) == []
    assert not out["obs"].requires_grad and not out["twice"].requires_grad


def test_is_a_module_with_the_guide_registered():
    net = torch.nn.Linear(1, 1)

    def nn_guide(data):
        ember.module("net", net)
        ember.sample("loc", dist.Normal(net(torch.ones(1)).squeeze(-1), 1.0))

    class Guide(torch.nn.Module):
        def forward(self, data):
            return nn_guide(data)

    p = Predictive(model, guide=Guide(), num_samples=3)
    assert isinstance(p, torch.nn.Module)
    assert p(DATA)["obs"].shape == (3, 3)


# ------------------------------------------------------------------------ bad input
def test_inconsistent_leading_dims():
    with pytest.raises(ValueError, match=r"'a': 10.*'b': 12|'b': 12.*'a': 10"):
        Predictive(model, {"a": torch.zeros(10), "b": torch.zeros(12)})


def test_num_samples_disagrees_with_samples():
    with pytest.raises(ValueError, match="num_samples=5.*10"):
        Predictive(model, {"loc": torch.zeros(10)}, num_samples=5)
    assert Predictive(model, {"loc": torch.zeros(10)}, num_samples=10).num_samples == 10


def test_neither_samples_nor_num_samples():
    with pytest.raises(ValueError, match="num_samples"):
        Predictive(model)
    with pytest.raises(ValueError, match="num_samples"):
        Predictive(model, guide=guide)
    with pytest.raises(ValueError, match="num_samples"):
        Predictive(model, {})


def test_guide_and_samples_together():
    with pytest.raises(ValueError, match="not both"):
        Predictive(model, {"loc": torch.zeros(3)}, guide=guide)


def test_guide_in_the_samples_slot():
    with pytest.raises(TypeError, match="guide="):
        Predictive(model, guide)


@pytest.mark.parametrize("n", [0, -1, 2.5, True])
def test_bad_num_samples(n):
    with pytest.raises(ValueError, match="num_samples"):
        Predictive(model, num_samples=n)


def test_bad_samples():
    with pytest.raises(ValueError, match="scalar"):
        Predictive(model, {"loc": torch.tensor(1.0)})
    with pytest.raises(TypeError, match="'loc'"):
        Predictive(model, {"loc": object()})


@pytest.mark.parametrize("parallel", PARALLEL)
def test_sample_with_the_wrong_shape(parallel):
    with pytest.raises(ValueError, match=r"posterior_samples\['w'\].*\(3,\).*\(2,\)"):
        Predictive(rich_model, {"w": torch.zeros(4, 3)}, parallel=parallel)(X)


def test_unknown_return_site():
    with pytest.raises(ValueError, match=r"\['nope'\].*'obs'"):
        Predictive(model, num_samples=2, return_sites=["obs", "nope"])(DATA)
    with pytest.raises(TypeError, match="return_sites"):
        Predictive(model, num_samples=2, return_sites=[1])


def _b_model(x):
    b = ember.sample("b", dist.Normal(0.0, 1.0))
    c = ember.sample("c", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    ember.deterministic("d", b * 2)
    ember.deterministic("e", c * 2, event_dim=1)
    with ember.plate("p", 3):
        ember.sample("y", dist.Normal(b * x, 1.0))
    return b


@pytest.mark.parametrize("parallel", PARALLEL)
def test_sites_outside_plates_keep_pyros_singleton_dims(parallel):
    # shapes printed by pyro-ppl 1.9.2 for the same calls
    x = torch.ones(3)
    out = Predictive(_b_model, num_samples=4, parallel=parallel)(x)
    assert shapes(out) == {"b": (4, 1), "c": (4, 1, 2), "d": (4, 1), "e": (4, 1, 2), "y": (4, 3)}
    given = Predictive(_b_model, posterior_samples={"b": torch.zeros(4)}, parallel=parallel,
                       return_sites=["b", "y", "d", "e", "_RETURN"])(x)
    assert shapes(given) == {"_RETURN": (4,), "b": (4, 1), "d": (4, 1), "e": (4, 1, 2), "y": (4, 3)}
    guide = ember.infer.autoguide.AutoNormal(_b_model)
    guide(x)
    drawn = Predictive(_b_model, guide=guide, num_samples=4, parallel=parallel)(x)
    assert shapes(drawn) == {"b": (4, 1), "c": (4, 1, 2), "d": (4, 1), "e": (4, 1, 2), "y": (4, 3)}
