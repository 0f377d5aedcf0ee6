"""ember.ops.welford (Pyro's pyro.ops.welford): against the two-pass sample covariance, Stan's
shrinkage by hand, and values computed with pyro-ppl 1.9.2."""

import pytest
import torch

from ember.ops.welford import WelfordArrowheadCovariance, WelfordCovariance

XS = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 2.0], [3.0, 0.0, 1.0], [2.0, 2.0, 2.0]], dtype=torch.float64)
COV = torch.cov(XS.T)  # the two-pass unbiased estimate
W, JITTER = 4 / 9, 1e-3 * 5 / 9  # Stan's shrinkage for n = 4


def _fed(w):
    for x in XS:
        w.update(x)
    return w


def test_diagonal_and_dense_match_two_pass_and_stan_shrinkage():
    diag = _fed(WelfordCovariance())
    torch.testing.assert_close(diag.get_covariance(regularize=False), COV.diagonal())
    torch.testing.assert_close(diag.get_covariance(), W * COV.diagonal() + JITTER)
    # pyro-ppl 1.9.2's regularized diagonal
    torch.testing.assert_close(diag.get_covariance(), torch.tensor([0.5468518518518518, 1.0005555555555556, 0.4079629629629629],
                                                                   dtype=torch.float64))
    dense = _fed(WelfordCovariance(diagonal=False))
    torch.testing.assert_close(dense.get_covariance(regularize=False), COV)
    torch.testing.assert_close(dense.get_covariance(), W * COV + JITTER * torch.eye(3, dtype=torch.float64))
    assert dense.n_samples == 4
    dense.reset()
    assert dense.n_samples == 0
    with pytest.raises(RuntimeError, match="Insufficient samples|insufficient samples"):
        dense.get_covariance()


@pytest.mark.parametrize("head", [0, 1, 2, 3])
def test_arrowhead_holds_the_head_rows_and_the_tail_variances(head):
    w = _fed(WelfordArrowheadCovariance(head_size=head))
    top, bottom = w.get_covariance(regularize=False)
    assert top.shape == (head, 3) and bottom.shape == (3 - head,)
    torch.testing.assert_close(top, COV[:head])
    torch.testing.assert_close(bottom, COV.diagonal()[head:])
    top, bottom = w.get_covariance()
    torch.testing.assert_close(top, W * COV[:head] + JITTER * torch.eye(3, dtype=torch.float64)[:head])
    torch.testing.assert_close(bottom, W * COV.diagonal()[head:] + JITTER)


def test_one_draw_is_not_enough():
    w = WelfordArrowheadCovariance(1)
    w.update(torch.zeros(2))
    with pytest.raises(RuntimeError):
        w.get_covariance()
