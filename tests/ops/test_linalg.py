"""ember.ops.linalg (Pyro's pyro.ops.linalg): against torch.linalg and values from pyro-ppl 1.9.2."""

import warnings

import pytest
import torch

from ember.ops.linalg import determinant_3d, eig_3d, ignore_torch_deprecation_warnings, inv3d, rinverse

A = torch.tensor([[[2.0, 1.0, 0.5], [0.3, 3.0, 1.0], [0.2, 0.1, 4.0]],
                  [[4.0, 1.0, 2.0], [1.0, 3.0, 0.5], [2.0, 0.5, 5.0]]], dtype=torch.float64)


def test_determinant_and_inverse_3d():
    torch.testing.assert_close(determinant_3d(A), torch.tensor([22.515, 44.0], dtype=torch.float64))
    torch.testing.assert_close(inv3d(A), torch.linalg.inv(A))
    # sym=True copies the upper triangle of the inverse into the lower one (as pyro does, even if A is not symmetric)
    sym = inv3d(A, sym=True)
    torch.testing.assert_close(sym[1], torch.linalg.inv(A[1]))
    torch.testing.assert_close(sym[0], torch.linalg.inv(A[0]).triu() + torch.linalg.inv(A[0]).triu(1).T)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_rinverse_every_size(n):
    M = torch.eye(n, dtype=torch.float64) * 3 + torch.arange(n * n, dtype=torch.float64).reshape(n, n) / 10
    M = M.expand(2, n, n)
    torch.testing.assert_close(rinverse(M), torch.linalg.inv(M))
    with pytest.raises(ValueError):
        rinverse(torch.ones(2, 3))


def test_eig_3d_sorted_ascending():
    got = eig_3d(A[1:])
    expected = torch.linalg.eigvalsh(A[1:])  # ascending
    torch.testing.assert_close(torch.stack(got, -1), expected)
    assert [g.item() for g in got] == pytest.approx([2.0965216172967196, 3.072223952005075, 6.8312544306982055], abs=1e-12)
    # a multiple of the identity (r at the edge of acos): all eigenvalues equal
    assert [g.item() for g in eig_3d(2 * torch.eye(3, dtype=torch.float64) + 1e-9 * torch.ones(3, 3, dtype=torch.float64))] == \
        pytest.approx([2.0, 2.0, 2.0], abs=1e-6)


def test_ignore_torch_deprecation_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ignore_torch_deprecation_warnings():
            warnings.warn("torch.triangular_solve is deprecated in favour of ...", UserWarning, stacklevel=1)
            warnings.warn("something else", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else"]
