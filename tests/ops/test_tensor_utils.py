"""ember.ops.tensor_utils (Pyro's pyro.ops.tensor_utils): closed forms, hand-computed values, and
values computed with pyro-ppl 1.9.2."""

import math

import pytest
import torch

import ember
from ember.ops import tensor_utils as tu

D = torch.float64


def t(*values):
    return torch.tensor(values, dtype=D)


def test_public_names_are_pyros():
    names = ["as_complex", "block_diag_embed", "block_diagonal", "broadcast_tensors_without_dim", "cholesky_solve", "convolve",
             "dct", "haar_transform", "idct", "inverse_haar_transform", "matmul", "matvecmul", "next_fast_len", "periodic_cumsum",
             "periodic_features", "periodic_repeat", "precision_to_scale_tril", "repeated_matmul", "safe_cholesky",
             "safe_normalize", "triangular_solve", "rfft", "irfft", "CHOLESKY_RELATIVE_JITTER"]
    assert all(callable(getattr(tu, n)) for n in names[:-1]) and tu.CHOLESKY_RELATIVE_JITTER == 4.0


def test_block_diag_embed_and_back():
    m = torch.arange(12, dtype=D).reshape(3, 2, 2) + 1
    big = tu.block_diag_embed(m)
    assert big.shape == (6, 6)
    torch.testing.assert_close(big, torch.block_diag(*m))
    torch.testing.assert_close(tu.block_diagonal(big, 3), m)
    batched = torch.randn(4, 2, 3, 1, dtype=D)
    assert tu.block_diag_embed(batched).shape == (4, 6, 2)
    torch.testing.assert_close(tu.block_diagonal(tu.block_diag_embed(batched), 2), batched)


def test_periodic_repeat_and_cumsum():
    x = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert tu.periodic_repeat(x, 4, 0).tolist() == [[1, 2, 3], [4, 5, 6], [1, 2, 3], [4, 5, 6]]
    assert tu.periodic_repeat(x, 4, 1).tolist() == [[1, 2, 3, 1], [4, 5, 6, 4]]
    assert tu.periodic_repeat(x, 2, -1).tolist() == [[1, 2], [4, 5]]
    y = torch.arange(1.0, 8.0).unsqueeze(-1).expand(7, 2)
    # period 3: [1, 2, 3, 1+4, 2+5, 3+6, 1+4+7]
    assert tu.periodic_cumsum(y, 3, 0)[:, 0].tolist() == [1, 2, 3, 5, 7, 9, 12]
    assert tu.periodic_cumsum(y.T, 2, -1)[1].tolist() == [1, 2, 4, 6, 9, 12, 16]


def test_periodic_features():
    f = tu.periodic_features(4, dtype=D)  # one frequency pi/2: [cos, -sin]
    torch.testing.assert_close(f, t([1.0, 0.0], [0.0, -1.0], [-1.0, 0.0], [0.0, 1.0]), atol=1e-15, rtol=0)
    assert tu.periodic_features(10, 8, 3).shape == (10, 4)  # 2 * ceil(8 / 3) - 2
    assert tu.periodic_features(12, 12).shape == (12, 10)
    with pytest.raises(ValueError, match="Nyquist|min_period"):
        tu.periodic_features(10, 8, 1)


def test_next_fast_len():
    assert [tu.next_fast_len(n) for n in (1, 7, 11, 97, 121, 1000)] == [1, 8, 12, 100, 125, 1000]
    with pytest.raises(ValueError):
        tu.next_fast_len(0)


def test_convolve_modes():
    s, k = t(1.0, 2.0, 3.0), t(0.0, 1.0, 0.5)
    torch.testing.assert_close(tu.convolve(s, k), t(0.0, 1.0, 2.5, 4.0, 1.5), atol=1e-12, rtol=0)  # numpy.convolve
    s4, ones = t(1.0, 2.0, 3.0, 4.0), t(1.0, 1.0)
    torch.testing.assert_close(tu.convolve(s4, ones, "same"), t(1.0, 3.0, 5.0, 7.0))
    torch.testing.assert_close(tu.convolve(s4, ones, "valid"), t(3.0, 5.0, 7.0))
    assert tu.convolve(torch.randn(2, 1, 5), torch.randn(3, 4), "valid").shape == (2, 3, 2)
    with pytest.raises(ValueError, match="mode"):
        tu.convolve(s, k, "circular")


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_repeated_matmul(n):
    M = torch.randn(2, 3, 3, dtype=D) / 2
    got = tu.repeated_matmul(M, n)
    assert got.shape == (n, 2, 3, 3)
    for i in range(n):
        torch.testing.assert_close(got[i], torch.linalg.matrix_power(M, i + 1))


def test_dct_idct_haar():
    # orthonormal DCT-II of [1, 2, 3, 4] (scipy.fft.dct(norm="ortho"), also pyro's)
    torch.testing.assert_close(tu.dct(t(1.0, 2.0, 3.0, 4.0)), t(5.0, -2.230442497387663, 0.0, -0.15851266778110734),
                               atol=1e-12, rtol=0)
    z = torch.randn(3, 5, 4, dtype=D)
    for dim in (-1, 0, 1, -2):
        torch.testing.assert_close(tu.idct(tu.dct(z, dim), dim), z)
        torch.testing.assert_close(tu.dct(z, dim), tu.dct(z.movedim(dim, -1)).movedim(-1, dim))
    # Haar of [1, 2, 3, 4, 5]: lo of lo = 5, then (3 - 7)/2, then (1 - 2)/sqrt2, (3 - 4)/sqrt2, the odd 5 kept
    h = tu.haar_transform(t(1.0, 2.0, 3.0, 4.0, 5.0))
    torch.testing.assert_close(h, t(5.0, -2.0, -math.sqrt(0.5), -math.sqrt(0.5), 5.0))
    torch.testing.assert_close(tu.inverse_haar_transform(h), t(1.0, 2.0, 3.0, 4.0, 5.0))


def test_cholesky_helpers():
    A = torch.randn(3, 4, 4, dtype=D)
    P = A @ A.mT + torch.eye(4, dtype=D)
    L = torch.linalg.cholesky(P)
    torch.testing.assert_close(tu.safe_cholesky(P), L)
    assert tu.safe_cholesky(t([[0.0]], [[4.0]])).tolist() == [[[math.sqrt(torch.finfo(D).tiny)]], [[2.0]]]
    b = torch.randn(3, 4, 2, dtype=D)
    torch.testing.assert_close(tu.cholesky_solve(b, L), torch.linalg.solve(P, b))
    torch.testing.assert_close(L @ tu.triangular_solve(b, L), b)
    torch.testing.assert_close(L.mT @ tu.triangular_solve(b, L, transpose=True), b)
    torch.testing.assert_close(L.mT @ tu.triangular_solve(b, L.mT, upper=True), b)
    assert tu.cholesky_solve(t([6.0]).reshape(1, 1), t([2.0]).reshape(1, 1)).item() == 1.5
    assert tu.triangular_solve(t([6.0]).reshape(1, 1), t([2.0]).reshape(1, 1)).item() == 3.0
    scale = tu.precision_to_scale_tril(P)
    torch.testing.assert_close(scale @ scale.mT, torch.linalg.inv(P))
    assert bool((scale.triu(1) == 0).all())
    torch.testing.assert_close(tu.precision_to_scale_tril(t([2.0, 0.5], [0.5, 1.0])),
                               t([0.7559289460184544, 0.0], [-0.3779644730092272, 1.0]))


def test_jitter_is_a_setting():
    P = t([1.0, 0.0], [0.0, 1.0])
    with ember.settings.context(cholesky_relative_jitter=0):
        assert tu.safe_cholesky(P).tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert tu.safe_cholesky(P)[0, 0].item() == math.sqrt(1 + 4 * torch.finfo(D).eps)


def test_matmul_matvecmul():
    x, y = torch.randn(2, 1, dtype=D), torch.randn(1, 3, dtype=D)
    torch.testing.assert_close(tu.matmul(x, y), x @ y)
    X, v = torch.randn(2, 3, 4, dtype=D), torch.randn(2, 4, dtype=D)
    torch.testing.assert_close(tu.matvecmul(X, v), (X @ v.unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(tu.matvecmul(t([2.0], [3.0]), t(5.0, 7.0)), t(10.0, 21.0))


def test_safe_normalize_and_broadcast_without_dim():
    torch.testing.assert_close(tu.safe_normalize(t([3.0, 4.0], [0.0, 0.0])), t([0.6, 0.8], [1.0, 0.0]))
    torch.testing.assert_close(tu.safe_normalize(t([3.0, -4.0]), p=1), t([3 / 7, -4 / 7]))
    a, b = tu.broadcast_tensors_without_dim([torch.zeros(2, 1, 3), torch.zeros(5, 4)], -1)
    assert a.shape == (2, 5, 3) and b.shape == (2, 5, 4)
    a, b = tu.broadcast_tensors_without_dim([torch.zeros(2, 3), torch.zeros(1, 5)], 1)
    assert a.shape == (2, 3) and b.shape == (2, 5)
    with pytest.raises(ValueError):
        tu.broadcast_tensors_without_dim([torch.zeros(2, 3), torch.zeros(5)], 0)


def test_as_complex():
    x = torch.arange(8.0).reshape(2, 2, 2)
    assert tu.as_complex(x).tolist() == [[complex(0, 1), complex(2, 3)], [complex(4, 5), complex(6, 7)]]
    odd = torch.arange(12.0).reshape(2, 3, 2)[:, ::2]  # strides that a view cannot take... copied
    torch.testing.assert_close(tu.as_complex(odd), torch.view_as_complex(odd.contiguous()))
