"""Monte-Carlo enumeration: ``infer={"enumerate": "parallel", "num_samples": n}`` draws n values of a
site along its enumeration dim, and TraceEnum_ELBO averages over them (ember/infer/traceenum_elbo.py)."""

import math

import pytest
import torch

import ember
import ember.distributions as dist
from ember import poutine
from ember.infer import TraceEnum_ELBO, config_enumerate, infer_discrete

MC = {"enumerate": "parallel", "num_samples": 5}


# ------------------------------------------------------------------ the draws and their dims
def _shapes_model(tmc):
    infer = dict(MC, tmc=tmc)
    a = ember.sample("a", dist.Normal(0.0, 1.0), infer=infer)
    with ember.plate("p", 3):
        ember.sample("b", dist.Normal(a, 1e-4), infer=infer)
        ember.sample("c", dist.Categorical(torch.ones(3, 4) / 4), infer=infer)
    ember.sample("d", dist.Normal(0.0, 1.0), infer=infer)


@pytest.mark.parametrize("tmc, b_shape", [("diagonal", (5, 1, 3)), ("mixture", (5, 1, 3)), ("full", (5, 5, 3))])
def test_sampled_sites_take_one_enumeration_dim_each_with_pyros_shapes(tmc, b_shape):
    tr = poutine.trace(poutine.enum(lambda: _shapes_model(tmc), first_available_dim=-2)).get_trace()
    shapes = {n: (tuple(s["value"].shape), s["infer"]["_enumerate_dim"]) for n, s in tr.nodes.items() if s["type"] == "sample"}
    # the shapes pyro 1.9.2 gives for the same model
    assert shapes == {"a": ((5, 1), -2), "b": (b_shape, -3), "c": ((5, 1, 1, 3), -4), "d": ((5, 1, 1, 1, 1), -5)}
    a, b = tr.nodes["a"]["value"], tr.nodes["b"]["value"]
    if tmc == "diagonal":  # draw i of b is drawn given draw i of a
        assert torch.allclose(b[:, 0, :], a.expand(5, 3), atol=1e-2)
    elif tmc == "mixture":  # draw i of b is drawn given some draw of a
        assert ((b[:, 0, :1] - a.reshape(1, 5)).abs() < 1e-2).any(-1).all()
    else:  # every pair of draws
        assert torch.allclose(b, a.reshape(1, 5, 1).expand(5, 5, 3), atol=1e-2)


def test_config_enumerate_num_samples_marks_every_latent_site_and_keeps_a_sites_own_choice():
    def model():
        ember.sample("x", dist.Normal(0.0, 1.0))
        ember.sample("k", dist.Bernoulli(0.5), infer={"num_samples": 2})
        ember.sample("e", dist.Bernoulli(0.5), infer={"enumerate": "sequential"})
        ember.sample("y", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))

    tr = poutine.trace(config_enumerate(model, num_samples=4, tmc="mixture")).get_trace()
    assert tr.nodes["x"]["infer"] == {"enumerate": "parallel", "num_samples": 4, "expand": False, "tmc": "mixture"}
    assert tr.nodes["k"]["infer"]["num_samples"] == 2
    assert tr.nodes["e"]["infer"]["enumerate"] == "sequential"
    assert tr.nodes["y"]["infer"] == {}
    full = poutine.trace(config_enumerate(model, num_samples=4, tmc="full")).get_trace()
    assert full.nodes["x"]["infer"]["expand"] is True


def test_one_draw_is_a_size_one_dim():
    def model():
        ember.sample("z", dist.Categorical(torch.ones(3) / 3), infer={"enumerate": "parallel", "num_samples": 1})

    site = poutine.trace(poutine.enum(model, first_available_dim=-1)).get_trace().nodes["z"]
    assert site["value"].shape == (1,)


# ------------------------------------------------------------------ the guide: an average over its draws
X = torch.tensor([0.8, -0.3, 2.1, 0.4])
PROBS = torch.tensor([0.2, 0.5, 0.3])
LOCS = torch.tensor([-1.0, 0.5, 2.0])
QLOG = torch.tensor([[0.1, 0.2, 0.7], [0.3, 0.3, 0.4], [0.6, 0.2, 0.2], [0.2, 0.2, 0.6]]).log()


def _model():
    s = ember.sample("s", dist.Normal(0.0, 1.0))
    b = ember.sample("b", dist.Bernoulli(0.4))
    with ember.plate("d", 4):
        z = ember.sample("z", dist.Categorical(PROBS))
        ember.sample("x", dist.Normal(LOCS[z] + s + b, 1.0), obs=X)


def _guide(qlog=QLOG, **infer):
    ember.sample("s", dist.Normal(0.3, 0.7), infer=dict(infer))
    ember.sample("b", dist.Bernoulli(0.7), infer=dict(infer, enumerate="parallel") if infer else {"enumerate": "parallel"})
    with ember.plate("d", 4):
        ember.sample("z", dist.Categorical(logits=qlog), infer=dict(infer, enumerate="parallel") if infer else {"enumerate": "parallel"})


@pytest.mark.parametrize("vectorized, expected", [(False, 12.956695556640625), (True, 13.693286895751953)])
def test_guide_draws_give_pyros_loss_on_the_same_draws(vectorized, expected):
    # pyro 1.9.2, same seed, same model and guide (its draws consume the random stream as Ember's do)
    torch.manual_seed(0)
    elbo = TraceEnum_ELBO(max_plate_nesting=1, num_particles=3 if vectorized else 1, vectorize_particles=vectorized)
    assert elbo.loss(_model, config_enumerate(_guide, num_samples=3)) == pytest.approx(expected, rel=1e-5)


def test_guide_draws_give_pyros_gradient_on_the_same_draws():
    qlog = QLOG.clone().requires_grad_()
    torch.manual_seed(1)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(_model, config_enumerate(lambda: _guide(qlog), num_samples=3))
    (grad,) = torch.autograd.grad(loss, qlog)
    pyro_grad = torch.tensor([[-0.4932, -0.3946, 0.8878], [-0.7435, -0.2585, 1.0020],
                              [1.7054, -0.8527, -0.8527], [-1.1604, -0.3777, 1.5381]])
    assert loss.item() == pytest.approx(17.44631576538086, rel=1e-5)
    assert torch.allclose(grad, pyro_grad, atol=2e-4)


def test_a_guide_bernoulli_loss_is_the_average_over_its_draws():
    x = torch.tensor(0.8)

    def model():
        z = ember.sample("z", dist.Bernoulli(0.3))
        ember.sample("x", dist.Normal(2.0 * z, 1.0), obs=x)

    def guide():
        ember.sample("z", dist.Bernoulli(0.6), infer={"enumerate": "parallel", "num_samples": 7})

    torch.manual_seed(3)
    loss = TraceEnum_ELBO(max_plate_nesting=0).loss(model, guide)
    torch.manual_seed(3)
    z = poutine.trace(poutine.enum(guide, first_available_dim=-1)).get_trace().nodes["z"]["value"]
    elbo = dist.Bernoulli(0.3).log_prob(z) + dist.Normal(2.0 * z, 1.0).log_prob(x) - dist.Bernoulli(0.6).log_prob(z)
    assert loss == pytest.approx(-elbo.mean().item(), rel=1e-5)


def _batched(fn, batches):
    """Mean and standard error over ``batches`` calls of ``fn`` (each itself an average of vectorized particles)."""
    vals = torch.stack([fn() for _ in range(batches)])
    return vals.mean(0), vals.std(0) / math.sqrt(batches)


def test_guide_draws_estimate_the_exact_elbo_and_its_gradient_without_bias():
    qlog = QLOG.clone().requires_grad_()

    def loss_grad(elbo, guide):
        loss = elbo.differentiable_loss(_model, guide)
        return torch.cat([loss.detach().reshape(1), torch.autograd.grad(loss, qlog)[0].reshape(-1)])

    def exact_z_guide():  # s sampled as in Trace_ELBO; b, z enumerated exactly
        _guide(qlog)

    torch.manual_seed(0)
    exact, exact_se = _batched(lambda: loss_grad(TraceEnum_ELBO(max_plate_nesting=1, num_particles=200, vectorize_particles=True),
                                                 exact_z_guide), 10)
    mc_guide = config_enumerate(lambda: _guide(qlog), num_samples=3)
    mc, mc_se = _batched(lambda: loss_grad(TraceEnum_ELBO(max_plate_nesting=1, num_particles=200, vectorize_particles=True),
                                           mc_guide), 20)
    se = (exact_se ** 2 + mc_se ** 2).sqrt()
    assert ((mc - exact).abs() <= 4.5 * se + 1e-4).all(), ((mc - exact) / se)
    assert torch.isfinite(mc).all()


def test_loss_and_grads_matches_autograd_of_differentiable_loss():
    qlog = QLOG.clone().requires_grad_()
    guide = config_enumerate(lambda: _guide(qlog), num_samples=4)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    torch.manual_seed(5)
    (grad,) = torch.autograd.grad(elbo.differentiable_loss(_model, guide), qlog)
    torch.manual_seed(5)
    elbo.loss_and_grads(_model, guide)
    assert torch.isfinite(qlog.grad).all()
    assert torch.allclose(qlog.grad, grad)


# ------------------------------------------------------------------ the model: a log-mean-exp over its draws
def _mc_model(n, x=X):
    g = ember.sample("g", dist.Normal(0.0, 1.0), infer={"enumerate": "parallel", "num_samples": n})
    with ember.plate("d", 4):
        z = ember.sample("z", dist.Categorical(PROBS), infer={"enumerate": "parallel", "num_samples": n})
        y = ember.sample("y", dist.Bernoulli(torch.sigmoid(g)), infer={"enumerate": "parallel"})  # exact, downstream of g
        ember.sample("x", dist.Normal(LOCS[z] + g + y, 1.0), obs=x)


def _log_evidence():
    """log p(x) of _mc_model, by quadrature over g."""
    g = torch.linspace(-8, 8, 4001)
    lp = dist.Normal(0.0, 1.0).log_prob(g)
    py = torch.sigmoid(g)
    for xj in X:
        per_z = dist.Normal(LOCS.reshape(3, 1, 1) + g.reshape(1, 1, -1) + torch.tensor([0.0, 1.0]).reshape(1, 2, 1), 1.0).log_prob(xj)
        per_z = per_z + PROBS.log().reshape(3, 1, 1) + torch.stack([(1 - py).log(), py.log()]).unsqueeze(0)
        lp = lp + per_z.logsumexp(0).logsumexp(0)
    return (lp.logsumexp(0) + math.log(g[1] - g[0])).item()


def test_model_draws_give_a_likelihood_whose_exponential_is_unbiased_and_a_consistent_loss():
    log_px = _log_evidence()
    torch.manual_seed(0)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    vals = torch.tensor([elbo.loss(lambda: _mc_model(3), lambda: None) for _ in range(400)])
    ratio = (-vals - log_px).exp()  # p_hat / p(x): mean 1
    assert abs(ratio.mean().item() - 1.0) <= 4.5 * ratio.std().item() / math.sqrt(len(ratio))
    assert vals.mean().item() > -log_px  # Jensen: an upper bound of -log p(x) in expectation
    assert elbo.loss(lambda: _mc_model(1000), lambda: None) == pytest.approx(-log_px, abs=0.12)


def test_model_draws_with_one_value_support_size_match_exact_enumeration():
    def model(infer):
        z = ember.sample("z", dist.Categorical(torch.tensor([1.0])), infer=infer)
        ember.sample("x", dist.Normal(z.float(), 1.0), obs=torch.tensor(0.3))

    exact = TraceEnum_ELBO(max_plate_nesting=0).loss(lambda: model({"enumerate": "parallel"}), lambda: None)
    mc = TraceEnum_ELBO(max_plate_nesting=0).loss(lambda: model({"enumerate": "parallel", "num_samples": 6}), lambda: None)
    assert mc == pytest.approx(exact, rel=1e-6)


def test_model_draw_gradients_are_finite_and_flow_to_the_prior():
    loc = torch.tensor(0.2, requires_grad=True)
    logit = torch.tensor(-0.3, requires_grad=True)

    def model():
        g = ember.sample("g", dist.Normal(loc, 1.0), infer={"enumerate": "parallel", "num_samples": 8})
        k = ember.sample("k", dist.Bernoulli(logits=logit), infer={"enumerate": "parallel", "num_samples": 8})
        with ember.plate("d", 4):
            ember.sample("x", dist.Normal(g + k, 1.0), obs=X)

    torch.manual_seed(2)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, lambda: None)
    grads = torch.autograd.grad(loss, [loc, logit])
    assert all(torch.isfinite(g) and g != 0 for g in grads)


# ------------------------------------------------------------------ what is refused, by name
def test_a_sampled_site_that_depends_on_an_enumerated_site_is_refused_by_name():
    def model():
        a = ember.sample("a", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        ember.sample("b", dist.Normal(a, 1.0), infer={"enumerate": "parallel", "num_samples": 3, "tmc": "mixture"})

    with pytest.raises(ValueError, match=r"Site 'b' is Monte-Carlo enumerated.*\['a'\]"):
        TraceEnum_ELBO(max_plate_nesting=0).loss(model, lambda: None)


def test_a_guide_sampled_site_that_depends_on_another_is_refused_by_name():
    def model():
        a = ember.sample("a", dist.Normal(0.0, 1.0))
        ember.sample("b", dist.Normal(a, 1.0))

    def guide():
        a = ember.sample("a", dist.Normal(0.0, 1.0), infer=dict(MC))
        ember.sample("b", dist.Normal(a, 1.0), infer=dict(MC))

    with pytest.raises(ValueError, match=r"Site 'b' is Monte-Carlo enumerated.*\['a'\]"):
        TraceEnum_ELBO(max_plate_nesting=0).loss(model, guide)


def test_diagonal_draws_need_as_many_ancestor_values():
    def model():
        a = ember.sample("a", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        ember.sample("b", dist.Normal(a, 1.0), infer=dict(MC))

    with pytest.raises(ValueError, match=r"Site 'b' \(num_samples=5, tmc='diagonal'\).*size 2"):
        poutine.trace(poutine.enum(model, first_available_dim=-1)).get_trace()


@pytest.mark.parametrize("infer, match", [
    ({"enumerate": "parallel", "num_samples": 0}, r"Site 'z' has infer\['num_samples'\]=0"),
    ({"enumerate": "parallel", "num_samples": 2, "tmc": "fancy"}, r"Site 'z' has infer\['tmc'\]='fancy'"),
])
def test_invalid_site_settings_are_refused_by_name(infer, match):
    def model():
        ember.sample("z", dist.Bernoulli(0.5), infer=infer)

    with pytest.raises(ValueError, match=match):
        poutine.trace(poutine.enum(model, first_available_dim=-1)).get_trace()


def test_sequential_guide_site_with_num_samples_is_refused_by_name():
    def model():
        ember.sample("z", dist.Bernoulli(0.5))

    def guide():
        ember.sample("z", dist.Bernoulli(0.5), infer={"enumerate": "sequential", "num_samples": 2})

    with pytest.raises(ValueError, match=r"guide site 'z' is marked for sequential enumeration with num_samples=2"):
        TraceEnum_ELBO(max_plate_nesting=0).loss(model, guide)


def _discrete_model():
    z = ember.sample("z", dist.Bernoulli(0.3), infer={"enumerate": "parallel", "num_samples": 4})
    ember.sample("x", dist.Normal(2.0 * z, 1.0), obs=torch.tensor(0.8))


def test_posterior_tools_refuse_sampled_sites_by_name():
    elbo = TraceEnum_ELBO(max_plate_nesting=0)
    with pytest.raises(NotImplementedError, match=r"compute_marginals\(\).*\['z'\].*Monte-Carlo"):
        elbo.compute_marginals(_discrete_model, lambda: None)
    with pytest.raises(NotImplementedError, match=r"infer_discrete.*\['z'\].*Monte-Carlo"):
        infer_discrete(_discrete_model, first_available_dim=-1)()
