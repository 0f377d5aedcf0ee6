"""AutoRegressiveNN / DenseNN: the autoregressive property via the Jacobian, output shapes."""

import pytest
import torch
from torch.autograd.functional import jacobian

from ember.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN, ConditionalDenseNN, DenseNN


@pytest.mark.parametrize("input_dim, hidden_dims, skip", [(1, [4], False), (3, [5], False), (5, [7, 9], True), (6, [5, 11], False)])
def test_autoregressive_property(input_dim, hidden_dims, skip):
    torch.manual_seed(0)
    perm = torch.randperm(input_dim)
    net = AutoRegressiveNN(input_dim, hidden_dims, param_dims=[1, 2], permutation=perm, skip_connections=skip).double()
    x = torch.randn(input_dim, dtype=torch.double)
    rank = torch.empty(input_dim, dtype=torch.long)
    rank[perm] = torch.arange(input_dim)
    allowed = (rank.unsqueeze(1) > rank.unsqueeze(0))  # allowed[j, i]: output j may depend on input i
    for k, out_shape in enumerate([(1, input_dim), (2, input_dim)]):
        J = jacobian(lambda v, k=k: net(v)[k], x)
        assert net(x)[k].shape == out_shape
        J = J.reshape(-1, input_dim, input_dim)
        for Jp in J:
            assert bool((Jp[~allowed] == 0).all())
            if input_dim > 1 and max(hidden_dims) >= input_dim:
                assert bool((Jp[allowed] != 0).any())  # connected, not all-zero


def test_single_output_and_batch_shapes():
    net = AutoRegressiveNN(4, [9], param_dims=[1])
    assert net(torch.randn(7, 4)).shape == (7, 4)
    net3 = AutoRegressiveNN(4, [9], param_dims=[3])
    assert net3(torch.randn(2, 7, 4)).shape == (2, 7, 3, 4)
    assert torch.equal(net.get_permutation().sort().values, torch.arange(4))
    with pytest.raises(ValueError, match="permutation"):
        AutoRegressiveNN(3, [5], permutation=torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="hidden"):
        AutoRegressiveNN(6, [3])


def test_conditional_nets():
    torch.manual_seed(0)
    net = ConditionalAutoRegressiveNN(3, 2, [8], param_dims=[1, 1], permutation=torch.arange(3)).double()
    x, c = torch.randn(5, 3, dtype=torch.double), torch.randn(2, dtype=torch.double)
    m, s = net(x, c)
    assert m.shape == s.shape == (5, 3)
    # the first output (rank 0) depends on the context only
    J = jacobian(lambda v: net(v, c)[0], x[0])
    assert bool((J[0] == 0).all())
    Jc = jacobian(lambda cc: net(x[0], cc)[0], c)
    assert bool((Jc != 0).any())
    with pytest.raises(ValueError, match="context"):
        net(x)
    d = ConditionalDenseNN(3, 2, [8], param_dims=[2, 3])
    a, b = d(torch.randn(5, 3), torch.randn(2))
    assert a.shape == (5, 2) and b.shape == (5, 3)
    assert DenseNN(3, [4], param_dims=[6])(torch.randn(5, 3)).shape == (5, 6)


def test_conditional_networks_without_their_context_say_so():
    from ember.nn import ConditionalAutoRegressiveNN, ConditionalDenseNN

    x = torch.randn(5, 3)
    for net in (ConditionalDenseNN(3, 2, [8], param_dims=[1, 1]), ConditionalAutoRegressiveNN(3, 2, [8])):
        with pytest.raises(ValueError, match=f"{type(net).__name__}: this network needs a context of size 2"):
            net(x)
        out = net(x, context=torch.randn(2))  # a context without batch dims is expanded to the inputs'
        assert all(o.shape[0] == 5 for o in (out if isinstance(out, tuple) else (out,)))
