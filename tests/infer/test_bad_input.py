"""Bad input gets a clear error that names the site, the shapes or the value at fault."""

import warnings

import pytest
import torch
from torch.distributions import constraints

import ember as pyro
import ember.distributions as dist
from ember.infer import SVI, NonFiniteLossError, Trace_ELBO
from ember.optim import Adam


def test_wrong_shaped_obs_inside_plate():
    def model(data):
        with pyro.plate("data", 10):
            pyro.sample("obs", dist.Normal(0.0, 1.0), obs=data)

    with pytest.raises(ValueError, match=r"'obs'.*\n?.*") as e:
        model(torch.zeros(5))
    # outside any handler the plate itself still checks
    assert "plate('data')" in str(e.value) and "(5,)" in str(e.value) and "size 10" in str(e.value)


def test_plate_size_clash_between_model_and_guide():
    def model():
        with pyro.plate("data", 10):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    def guide():
        loc = pyro.param("loc", torch.zeros(5))
        with pyro.plate("data", 5):
            pyro.sample("z", dist.Normal(loc, 1.0))

    svi = SVI(model, guide, Adam({"lr": 0.01}), Trace_ELBO())
    with pytest.raises(ValueError) as e:
        svi.step()
    msg = str(e.value)
    assert "'z'" in msg and "'data'" in msg and "10" in msg and "5" in msg
    assert "has size 10 in the model but 5 in the guide" in msg  # caught at the site itself, as the model runs


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_non_positive_scale(bad):
    with pytest.raises(ValueError, match="positive"):
        pyro.poutine.scale(scale=bad)


def test_init_outside_constraint():
    with pytest.raises(ValueError, match=r"param 'sigma'.*outside its constraint"):
        pyro.param("sigma", torch.tensor([1.0, -2.0]), constraint=constraints.positive)


def test_duplicate_site_names():
    def model():
        pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(0.0, 1.0))

    with pytest.raises(RuntimeError, match="Multiple sample sites named 'x'"):
        pyro.poutine.trace(model).get_trace()


def test_sample_with_non_distribution():
    with pytest.raises(TypeError, match=r"sample site 'w'.*expected a distribution"):
        pyro.sample("w", lambda: 1.0)
    with pytest.raises(TypeError, match=r"instantiate it"):
        pyro.sample("w", dist.Normal, 0.0, 1.0)


def _nan_model(x):
    s = pyro.param("s", torch.tensor(1.0))
    pyro.sample("y", dist.Normal(0.0, s), obs=x)


def _empty_guide(x):
    pass


def test_nan_loss_raises_names_site_and_leaves_params_unchanged():
    pyro.distributions.enable_validation(False)
    svi = SVI(_nan_model, _empty_guide, Adam({"lr": 0.1}), Trace_ELBO())
    svi.step(torch.tensor(0.5))
    before = pyro.param("s").detach().clone()
    with pytest.raises(NonFiniteLossError) as e:
        svi.step(torch.tensor(float("nan")))
    assert "'y'" in str(e.value) and "unchanged" in str(e.value)
    assert torch.equal(pyro.param("s").detach(), before)
    # and the next good step works (no stale gradient left behind)
    svi.step(torch.tensor(0.5))
    assert pyro.get_param_store()._params["s"].grad is None


def test_nan_loss_skip_option():
    pyro.distributions.enable_validation(False)
    svi = SVI(_nan_model, _empty_guide, Adam({"lr": 0.1}), Trace_ELBO(), on_nonfinite="skip")
    svi.step(torch.tensor(0.5))
    before = pyro.param("s").detach().clone()
    with pytest.warns(RuntimeWarning, match="'y'"):
        loss = svi.step(torch.tensor(float("inf")))
    assert loss != loss  # nan
    assert torch.equal(pyro.param("s").detach(), before)


def test_nan_loss_with_custom_callable_loss_names_site():
    from ember.poutine import replay, trace

    def simple_mc_elbo(model, guide, *args):
        guide_trace = trace(guide).get_trace(*args)
        model_trace = trace(replay(model, trace=guide_trace)).get_trace(*args)
        return -(model_trace.log_prob_sum() - guide_trace.log_prob_sum())

    pyro.distributions.enable_validation(False)
    svi = SVI(_nan_model, _empty_guide, Adam({"lr": 0.1}), simple_mc_elbo)
    svi.step(torch.tensor(0.5))
    before = pyro.param("s").detach().clone()
    with pytest.raises(NonFiniteLossError, match="'y'"):
        svi.step(torch.tensor(float("nan")))
    assert torch.equal(pyro.param("s").detach(), before)


def test_model_guide_mismatch_warnings_name_sites():
    def model():
        pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.Normal(0.0, 1.0))

    def guide():
        loc = pyro.param("loc", torch.tensor(0.0))
        pyro.sample("a", dist.Normal(loc, 1.0))
        pyro.sample("c", dist.Normal(loc, 1.0))

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        Trace_ELBO().loss(model, guide)
    text = " ".join(str(x.message) for x in w)
    assert "['b']" in text and "model but not in the guide" in text
    assert "['c']" in text and "guide but not in the model" in text


def test_event_shape_mismatch_between_guide_and_model():
    def model():
        pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))

    def guide():
        pyro.sample("z", dist.Normal(torch.zeros(4), 1.0).to_event(1))

    with pytest.raises(ValueError, match=r"site 'z'"):
        Trace_ELBO().loss(model, guide)


def test_bad_optim_and_loss_arguments():
    with pytest.raises(TypeError, match="ember.optim"):
        SVI(_nan_model, _empty_guide, torch.optim.Adam([torch.zeros(1, requires_grad=True)]), Trace_ELBO())
    with pytest.raises(TypeError, match="loss"):
        SVI(_nan_model, _empty_guide, Adam({"lr": 0.1}), loss="elbo")
    with pytest.raises(ValueError, match="num_particles"):
        Trace_ELBO(num_particles=0)


def test_nonfinite_gradient_raises_and_leaves_params_unchanged():
    def model():
        p = pyro.param("p", torch.tensor(0.0))
        # finite value, but d/dp sqrt(p^2) at p = 0 is 0 * inf = nan
        pyro.factor("f", -torch.sqrt(p * p))

    svi = SVI(model, _empty_guide_noargs, Adam({"lr": 0.1}), Trace_ELBO())
    with pytest.raises(NonFiniteLossError, match=r"Non-finite gradients for parameters \['p'\]"):
        svi.step()
    assert pyro.param("p").item() == 0.0
    assert pyro.get_param_store()._params["p"].grad is None


def _empty_guide_noargs():
    pass


# ---- issue 17 point 6: model checks that name the site ---------------------------------------


def test_non_numeric_observation_names_the_site():
    def model():
        pyro.sample("x", dist.Normal(0.0, 1.0), obs="3.5")

    with pytest.raises(TypeError, match=r"sample site 'x': the observation must be numeric.*str '3.5'"):
        pyro.poutine.trace(model).get_trace()


@pytest.mark.parametrize("scale", [-1.0, float("nan")])
def test_invalid_distribution_argument_names_the_site(scale):
    def model():
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, scale), obs=torch.tensor(0.5))

    def guide():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match=r"sample site 'x': the distribution Normal got an invalid argument.*scale"):
        Trace_ELBO().loss(model, guide)
    with pytest.raises(ValueError, match="scale"):  # outside inference: torch's error, at once
        dist.Normal(0.0, scale)


@pytest.mark.parametrize("idx", [[0, 12], [-1, 2], [0.5, 1.0]])
def test_subsample_indices_out_of_range_or_not_integers(idx):
    with pytest.raises(ValueError, match=r"plate 'data'.*(\[0, 9\]|integers)"):
        pyro.plate("data", 10, subsample=torch.tensor(idx))


def test_condition_and_substitute_with_names_no_site_uses_warn_once():
    def model():
        return pyro.sample("x", dist.Normal(0.0, 1.0))

    conditioned = pyro.condition(model, data={"x": torch.tensor(1.0), "y_typo": torch.tensor(2.0)})
    with pytest.warns(UserWarning, match=r"condition: the data names \['y_typo'\].*no site"):
        conditioned()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        conditioned()  # once only
    with pytest.warns(UserWarning, match=r"substitute: the data names \['w'\]"):
        pyro.poutine.substitute(model, data={"w": torch.tensor(0.0)})()


def test_vectorized_particles_guess_that_no_longer_fits_says_so():
    calls = []

    def model():
        calls.append(1)
        with pyro.plate("rows", 3, dim=-1):
            if len(calls) == 1:  # the guessing run sees one plate ...
                pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.zeros(3))
            else:  # ... later runs a second one, at a dim the particles now hold
                with pyro.plate("cols", 2, dim=-2):
                    pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.zeros(2, 3))

    def guide():
        pass

    elbo = Trace_ELBO(num_particles=2, vectorize_particles=True)
    with pytest.raises(ValueError, match=r"(?s)asks for dim -2.*max_plate_nesting=1 batch dims guessed from the first step"):
        elbo.loss(model, guide)


def test_init_to_value_with_names_the_model_lacks_is_an_error_listing_the_sites():
    from ember.infer import MCMC, NUTS
    from ember.infer.initialization import init_to_value

    def model():
        pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor(0.3))

    kernel = NUTS(model, init_strategy=init_to_value(values={"muu": torch.tensor(0.0)}))
    with pytest.raises(ValueError, match=r"init_to_value names \['muu'\].*latent sites are \['mu'\]"):
        MCMC(kernel, num_samples=2, warmup_steps=2, disable_progbar=True).run()


def test_a_dim_left_of_the_particle_plate_is_refused_under_vectorized_particles():
    # keepdim=True on an event dim turns the particle dim into a new batch dim: the loss would sum
    # num_particles copies of the likelihood (45 against 7.5 here), so the shape check refuses it
    import ember as pyro
    import ember.distributions as dist
    from ember.infer import Trace_ELBO

    def model(y):
        a = pyro.sample("a", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("n", 3):
            b = pyro.sample("b", dist.Normal(0.0, 1.0))
            pyro.sample("y", dist.Normal(a.sum(-1, keepdim=True) + b, 1.0), obs=y)

    def guide(y):
        pyro.sample("a", dist.Normal(pyro.param("am", torch.zeros(2)), 1.0).to_event(1))
        with pyro.plate("n", 3):
            pyro.sample("b", dist.Normal(pyro.param("bm", torch.zeros(3)), 1.0))

    y = torch.tensor([0.5, 1.0, -0.3])
    Trace_ELBO().loss(model, guide, y)  # one particle at a time: fine
    with pytest.raises(ValueError, match=r"(?s)site 'y'.*shape \(8, 8, 3\).*dim -3.*keepdim=True"):
        Trace_ELBO(num_particles=8, vectorize_particles=True).loss(model, guide, y)
