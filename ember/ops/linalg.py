"""Small batched linear algebra (Pyro's ``pyro.ops.linalg``): closed-form inverses of 1x1, 2x2
and 3x3 matrices, the 3x3 determinant, and the eigenvalues of symmetric 3x3 matrices."""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator

import torch

__all__ = ["determinant_3d", "eig_3d", "ignore_torch_deprecation_warnings", "inv3d", "rinverse"]


@contextlib.contextmanager
def ignore_torch_deprecation_warnings() -> Iterator[None]:
    """A context in which torch's "torch.triangular_solve is deprecated" warning is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.triangular_solve is deprecated")
        yield


def rinverse(M: torch.Tensor, sym: bool = False) -> torch.Tensor:
    """The inverse of each matrix in a batch ``M`` of shape ``(..., N, N)`` (same shape out): by
    formula for ``N <= 3`` (``sym=True`` lets a 3x3 symmetric matrix copy the upper triangle of its
    inverse), else by :func:`torch.inverse`."""
    n = M.size(-1)
    if M.size(-2) != n:
        raise ValueError(f"rinverse: expected square matrices (..., N, N); got shape {tuple(M.shape)}")
    if n == 1:
        return 1.0 / M
    if n == 2:
        a, b, c, d = M[..., 0, 0], M[..., 0, 1], M[..., 1, 0], M[..., 1, 1]
        adj = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2)
        return adj / (a * d - b * c)[..., None, None]
    if n == 3:
        return inv3d(M, sym=sym)
    return torch.inverse(M)


def _minor(H: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """The cofactor ``C[i, j]`` of each 3x3 matrix in ``H`` (``(..., 3, 3)`` -> ``(...)``), by the
    cyclic rule (rows ``i+1, i+2`` and columns ``j+1, j+2`` mod 3, whose sign is built in)."""
    r1, r2, c1, c2 = (i + 1) % 3, (i + 2) % 3, (j + 1) % 3, (j + 2) % 3
    return H[..., r1, c1] * H[..., r2, c2] - H[..., r1, c2] * H[..., r2, c1]


def determinant_3d(H: torch.Tensor) -> torch.Tensor:
    """The determinants (shape ``(...)``) of a batch ``H`` of 3x3 matrices ``(..., 3, 3)``, by
    cofactor expansion along the first row."""
    return sum(H[..., 0, j] * _minor(H, 0, j) for j in range(3))


def inv3d(H: torch.Tensor, sym: bool = False) -> torch.Tensor:
    """The inverses (shape ``(..., 3, 3)``) of a batch ``H`` of 3x3 matrices ``(..., 3, 3)``: the
    adjugate over the determinant. With ``sym=True`` the matrices are taken as symmetric and the
    lower triangle of each inverse is copied from its upper triangle."""
    cof = [[_minor(H, i, j) for j in range(3)] for i in range(3)]  # cof[i][j] = C[i, j]
    # inverse[r, c] = C[c, r] / det
    rows = []
    for r in range(3):
        rows.append(torch.stack([cof[c][r] if not (sym and r > c) else cof[r][c] for c in range(3)], -1))
    adj = torch.stack(rows, -2)
    return adj / determinant_3d(H)[..., None, None]


def eig_3d(H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The eigenvalues ``(smallest, middle, largest)`` (each of shape ``(...)``) of a batch ``H`` of
    symmetric 3x3 matrices ``(..., 3, 3)``, by the trigonometric solution of the characteristic
    cubic (Smith, 1961)."""
    off = H[..., 0, 1] ** 2 + H[..., 0, 2] ** 2 + H[..., 1, 2] ** 2
    q = (H[..., 0, 0] + H[..., 1, 1] + H[..., 2, 2]) / 3
    spread = (H[..., 0, 0] - q) ** 2 + (H[..., 1, 1] - q) ** 2 + (H[..., 2, 2] - q) ** 2 + 2 * off
    p = torch.sqrt(spread / 6)
    eye = torch.eye(3, dtype=H.dtype, device=H.device)
    B = (H - q[..., None, None] * eye) / p[..., None, None]
    r = determinant_3d(B) / 2
    phi = torch.acos(r.clamp(-1.0, 1.0)) / 3
    phi = torch.where(r <= -1 + 1e-6, torch.full_like(phi, math.pi / 3), phi)
    phi = torch.where(r >= 1 - 1e-6, torch.zeros_like(phi), phi)
    largest = q + 2 * p * torch.cos(phi)
    smallest = q + 2 * p * torch.cos(phi + 2 * math.pi / 3)
    middle = 3 * q - largest - smallest
    return smallest, middle, largest
