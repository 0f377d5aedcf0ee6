"""Vindex against explicit loops over the broadcast batch."""

from __future__ import annotations

import itertools

import pytest
import torch

from ember.ops.indexing import Vindex, vindex


def test_plain_indices_behave_like_indexing():
    x = torch.randn(4, 5, 6)
    assert torch.equal(Vindex(x)[1, :, 2], x[1, :, 2])
    assert torch.equal(Vindex(x)[..., 3], x[..., 3])
    assert torch.equal(vindex(x, (0, 1, 2)), x[0, 1, 2])


def test_tensor_indices_broadcast_on_the_left():
    torch.manual_seed(0)
    x = torch.randn(4, 5, 6)
    i = torch.randint(4, (3, 1, 1))  # an enumeration dim and a plate dim
    j = torch.randint(6, (7,))
    out = Vindex(x)[i, :, j]
    assert out.shape == (3, 1, 7, 5)
    for a, b, c in itertools.product(range(3), range(1), range(7)):
        assert torch.equal(out[a, b, c], x[i[a, b, 0], :, j[c]])


def test_batched_tensor_with_ellipsis():
    torch.manual_seed(1)
    x = torch.randn(2, 1, 4, 5, 6)  # batch (2, 1), event (4, 5, 6)
    i = torch.randint(4, (3, 1, 1))
    j = torch.randint(6, (7,))
    out = Vindex(x)[..., i, :, j]
    assert out.shape == (3, 2, 7, 5)
    for a, b, c in itertools.product(range(3), range(2), range(7)):
        assert torch.equal(out[a, b, c], x[b, 0, i[a, 0, 0], :, j[c]])


def test_mixture_indexing_with_an_enumerated_value():
    locs = torch.randn(3, 2)  # K components with a 2-d event
    z = torch.arange(3).reshape(3, 1)  # enumerated along dim -2, plate of size 1
    assert torch.equal(Vindex(locs)[z, :], locs[:, None, :].expand(3, 1, 2))


def test_gradients_flow():
    x = torch.randn(4, 5, requires_grad=True)
    Vindex(x)[torch.tensor([[0], [3]]), torch.tensor([1, 2])].sum().backward()
    expected = torch.zeros(4, 5)
    expected[0, 1] = expected[0, 2] = expected[3, 1] = expected[3, 2] = 1
    assert torch.equal(x.grad, expected)


@pytest.mark.parametrize("args, match", [
    ((slice(1, 3), 0), "only ':'"),
    ((torch.tensor([True, False]), 0), "dtype"),
    ((0, Ellipsis), "first"),
    ((0,), "needs 2 indices"),
    ((torch.tensor(0.5), 0), "dtype"),
])
def test_bad_indices_are_named(args, match):
    with pytest.raises(IndexError, match=match):
        vindex(torch.randn(3, 4), args)
