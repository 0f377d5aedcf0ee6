"""``ConditionalGeneralizedChannelPermute`` reads ``nn(context)`` as Pyro does: one ``C * C``
output holding the LU parameters (``L`` = strict lower part + I, ``U`` = upper part), and
``conditional_generalized_channel_permute`` builds Pyro's network, so Pyro's state_dicts load."""

import pytest
import torch

from ember.distributions import transforms as T
from ember.nn import DenseNN

C = 3


class Fixed(torch.nn.Module):
    """An "nn" returning fixed LU parameters (one per context row)."""

    def __init__(self, lu):
        super().__init__()
        self.lu = lu

    def forward(self, context):
        return self.lu.flatten(-2).expand(context.shape[:-1] + (C * C,))


LU = torch.tensor([[2.0, 0.5, -1.0], [0.3, -1.5, 0.2], [-0.4, 0.7, 0.5]], dtype=torch.float64)


def test_pyro_network_layout_so_its_state_dict_loads():
    t = T.conditional_generalized_channel_permute(2, channels=3)
    shapes = {k: tuple(v.shape) for k, v in t.state_dict().items()}
    # what pyro-ppl 1.9.2's conditional_generalized_channel_permute(2, channels=3) holds
    assert shapes == {"permutation": (3, 3), "nn.layers.0.weight": (30, 2), "nn.layers.0.bias": (30,),
                      "nn.layers.1.weight": (30, 30), "nn.layers.1.bias": (30,), "nn.layers.2.weight": (9, 30),
                      "nn.layers.2.bias": (9,)}


def test_lu_parameters_give_w_equal_p_l_u_and_its_log_det():
    perm = torch.tensor([2, 0, 1])
    t = T.ConditionalGeneralizedChannelPermute(Fixed(LU), channels=C, permutation=perm)
    c = t.condition(torch.zeros(2, dtype=torch.float64))  # an unbatched context
    x = torch.randn(4, C, 2, 5, dtype=torch.float64)
    y = c(x)
    P = torch.eye(C, dtype=torch.float64)[perm]
    L = torch.tensor([[1.0, 0, 0], [0.3, 1, 0], [-0.4, 0.7, 1]], dtype=torch.float64)
    U = torch.tensor([[2.0, 0.5, -1.0], [0, -1.5, 0.2], [0, 0, 0.5]], dtype=torch.float64)
    W = P @ L @ U
    assert torch.allclose(y, torch.einsum("ij,njhw->nihw", W, x))
    expected = 10 * torch.log(torch.tensor(2.0 * 1.5 * 0.5, dtype=torch.float64))  # H W log|det W|
    assert torch.allclose(c.log_abs_det_jacobian(x, y), expected.expand(4))
    assert torch.allclose(c.inv(y.clone()), x)


def test_a_dense_nn_with_one_c_squared_output_for_unbatched_and_batched_contexts():
    torch.manual_seed(0)
    t = T.ConditionalGeneralizedChannelPermute(DenseNN(2, [20], param_dims=[C * C]), channels=C)
    x = torch.randn(2, C, 4, 4)
    ctx = torch.randn(2, 2)
    batched = t.condition(ctx)(x)
    for i in range(2):
        one = t.condition(ctx[i])
        assert torch.allclose(batched[i], one(x[i]), atol=1e-6)
        assert torch.allclose(one.inv(one(x[i]).clone()), x[i], atol=1e-4)
    ld = t.condition(ctx).log_abs_det_jacobian(x, batched)
    assert ld.shape == (2,)
    assert torch.allclose(ld[1], t.condition(ctx[1]).log_abs_det_jacobian(x[1], batched[1]))


def test_a_network_with_the_wrong_output_is_refused_with_the_expected_shape():
    t = T.ConditionalGeneralizedChannelPermute(DenseNN(2, [20], param_dims=[C * C, C * C]), channels=C)
    with pytest.raises(ValueError, match=r"one tensor of shape \(\.\.\., 9\).*tuple of 2"):
        t.condition(torch.zeros(2))
    t = T.ConditionalGeneralizedChannelPermute(DenseNN(2, [20], param_dims=[4]), channels=C)
    with pytest.raises(ValueError, match=r"\(\.\.\., 9\).*got shape \(4,\)"):
        t.condition(torch.zeros(2))
