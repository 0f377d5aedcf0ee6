"""Bad input to enumeration gets one clear error naming the site."""

from __future__ import annotations

import pytest
import torch

import ember
import ember.distributions as dist
from ember.infer import TraceEnum_ELBO, config_enumerate
from ember.poutine import enum, markov, trace


def _guide(*args, **kwargs):
    pass


def test_enumerating_a_continuous_site_names_it():
    def model():
        ember.sample("loc", dist.Normal(0.0, 1.0), infer={"enumerate": "parallel"})

    with pytest.raises(ValueError, match=r"'loc'.*Normal.*finite support"):
        TraceEnum_ELBO(max_plate_nesting=0).loss(model, _guide)


def test_config_enumerate_skips_continuous_sites():
    def model():
        ember.sample("loc", dist.Normal(0.0, 1.0))
        ember.sample("z", dist.Bernoulli(0.3))

    tr = trace(config_enumerate(model)).get_trace()
    assert "enumerate" not in tr.nodes["loc"].infer
    assert tr.nodes["z"].infer["enumerate"] == "parallel"


def test_max_plate_nesting_too_small_names_site_and_plate():
    def model():
        with ember.plate("outer", 2):
            with ember.plate("inner", 3):
                ember.sample("z", dist.Categorical(torch.ones(4) / 4))

    with pytest.raises(ValueError, match=r"'z'.*plate 'inner'.*max_plate_nesting=1.*>= 2"):
        TraceEnum_ELBO(max_plate_nesting=1).loss(config_enumerate(model), _guide)


def test_enum_dim_colliding_with_a_plate_dim():
    def model():
        with ember.plate("p", 3, dim=-3):
            ember.sample("z", dist.Categorical(torch.ones(2) / 2))

    with pytest.raises(ValueError, match=r"'z'.*plate 'p' at dim -3.*collides"):
        trace(enum(config_enumerate(model), first_available_dim=-2)).get_trace()


def test_undeclared_batch_dim_left_of_the_plates():
    def model():
        ember.sample("z", dist.Categorical(torch.ones(5, 1, 2) / 2), infer={"enumerate": "parallel"})

    with pytest.raises(ValueError, match=r"'z'.*size 5 at dim -2.*max_plate_nesting=1"):
        trace(enum(model, first_available_dim=-2)).get_trace()


def test_markov_history_too_short_names_both_sites():
    p = torch.full((2, 2, 2), 0.5)

    def model():
        a = b = 0
        for t in markov(range(4), history=1):
            a, b = b, ember.sample(f"x_{t}", dist.Categorical(p[a, b]))

    with pytest.raises(ValueError, match=r"'x_2' depends on.*'x_0'.*history is too short"):
        trace(enum(config_enumerate(model), first_available_dim=-1)).get_trace()


def test_enum_needs_first_available_dim():
    def model():
        ember.sample("z", dist.Bernoulli(0.3), infer={"enumerate": "parallel"})

    with pytest.raises(ValueError, match=r"'z'.*first_available_dim"):
        trace(enum(model)).get_trace()


@pytest.mark.parametrize("kwargs, match", [
    ({"default": "both"}, "default"),
    ({"num_samples": 0}, "num_samples"),
    ({"num_samples": 3, "default": "sequential"}, "sequential"),
    ({"num_samples": 3, "tmc": "fancy"}, "tmc"),
])
def test_config_enumerate_arguments(kwargs, match):
    with pytest.raises((ValueError, NotImplementedError), match=match):
        config_enumerate(_guide, **kwargs)


def test_markov_arguments():
    with pytest.raises(ValueError, match="history"):
        markov(history=-1)
    with pytest.raises(NotImplementedError, match="vectorized"):
        markov(dim=-1)


def test_markov_is_transparent_without_enumeration():
    def model():
        x = torch.tensor(0.0)
        for t in ember.markov(range(3)):
            x = ember.sample(f"x_{t}", dist.Normal(x, 1.0))
        return x

    tr = trace(model).get_trace()
    assert [n for n in tr.nodes if n.startswith("x_")] == ["x_0", "x_1", "x_2"]


def test_pyro_style_positional_constructors():
    from ember.poutine import EnumMessenger, MarkovMessenger

    assert EnumMessenger(-2).first_available_dim == -2
    assert MarkovMessenger(3).history == 3


def test_iter_discrete_traces_visits_every_joint_value_once():
    from ember.infer.enum import iter_discrete_traces

    def model():
        a = ember.sample("a", dist.Bernoulli(0.3), infer={"enumerate": "sequential"})
        ember.sample("b", dist.Categorical(torch.tensor([0.2, 0.3, 0.5])), infer={"enumerate": "sequential"})
        return a

    seen = sorted((float(tr.nodes["a"].value), int(tr.nodes["b"].value)) for tr in iter_discrete_traces("flat", model))
    assert seen == [(a, b) for a in (0.0, 1.0) for b in range(3)]


def test_warns_once_when_nothing_is_enumerated():
    def model():
        ember.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor(0.5))

    elbo = TraceEnum_ELBO(max_plate_nesting=0)
    with pytest.warns(UserWarning, match="no sample site marked for enumeration"):
        elbo.loss(model, _guide)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        elbo.loss(model, _guide)
        TraceEnum_ELBO(max_plate_nesting=0, strict_enumeration_warning=False).loss(model, _guide)
