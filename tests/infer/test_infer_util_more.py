"""The rest of Pyro's pyro.infer.util helpers, by hand."""

from __future__ import annotations

import math

import pytest
import torch

import ember as pyro
import ember.distributions as dist
from ember import poutine
from ember.infer.util import (
    check_fully_reparametrized,
    get_dependent_plate_dims,
    get_plate_stacks,
    torch_backward,
    torch_exp,
    torch_sum,
    validation_enabled,
)


def _model():
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    with pyro.plate("i", 3, dim=-1):
        b = pyro.sample("b", dist.Normal(a, 1.0))
        with pyro.plate("j", 2, dim=-2):
            pyro.sample("c", dist.Bernoulli(logits=b), obs=torch.ones(2, 3))


def test_number_or_tensor_helpers():
    assert torch_exp(1.0) == math.e and torch.equal(torch_exp(torch.zeros(2)), torch.ones(2))
    x = torch.ones(2, 3)
    assert torch_sum(x, (-1,)).shape == (2,) and torch_sum(x, (-3, -1)).shape == (2,) and torch_sum(x, (-4,)) is x
    with pytest.raises(ValueError, match="negative"):
        torch_sum(x, (0,))
    w = torch.tensor(2.0, requires_grad=True)
    torch_backward(3 * w)
    torch_backward(1.0)
    torch_backward(torch.ones(()))
    assert w.grad == 3.0
    assert validation_enabled is pyro.validation_enabled


def test_plate_stacks_and_dependent_dims():
    tr = poutine.trace(_model).get_trace()
    stacks = get_plate_stacks(tr)
    assert {k: [f.name for f in v] for k, v in stacks.items()} == {"a": [], "b": ["i"], "c": ["i", "j"]}
    sites = [tr.nodes[n] for n in ("a", "b", "c")]
    assert get_dependent_plate_dims(sites) == [-2, -1]
    assert get_dependent_plate_dims(sites[1:]) == [-2]
    assert get_dependent_plate_dims([]) == []


def test_check_fully_reparametrized_names_the_site():
    tr = poutine.trace(_model).get_trace()
    check_fully_reparametrized(tr.nodes["b"])
    with pytest.raises(NotImplementedError, match="guide site 'c' \\(Bernoulli\\)"):
        check_fully_reparametrized(tr.nodes["c"])


def test_multi_frame_tensor_at_pyros_path():
    from ember.infer.elbo import MultiFrameTensor
    from ember.infer.util import MultiFrameTensor as at_pyros_path

    assert at_pyros_path is MultiFrameTensor
