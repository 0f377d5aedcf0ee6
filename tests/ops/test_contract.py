"""The plated sum-product (ember.ops.contract) and the log-space einsum (ember.ops.einsum) against
brute-force loops."""

from __future__ import annotations

import itertools

import pytest
import torch

from ember.ops.contract import contract_plated, einsum, sum_plates
from ember.ops.einsum import contract
from ember.ops.einsum import einsum as log_einsum


@pytest.fixture(autouse=True)
def _double():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


def test_log_einsum_equals_log_of_einsum():
    x, y, z = torch.randn(3, 4), torch.randn(4, 5), torch.randn(5)
    expected = torch.einsum("ab,bc,c->a", x.exp(), y.exp(), z.exp()).log()
    assert torch.allclose(log_einsum("ab,bc,c->a", x, y, z), expected)
    assert torch.allclose(log_einsum("ab,bc,c->a", x, y, z, backend="torch"), torch.einsum("ab,bc,c->a", x, y, z))
    brute = (x[:, :, None] + y[None] + z).amax(-1).amax(-1)
    assert torch.allclose(log_einsum("ab,bc,c->a", x, y, z, backend="torch_max"), brute)


def test_size_one_dims_broadcast():
    x, y = torch.randn(3, 1), torch.randn(1, 4)
    assert torch.allclose(log_einsum("ab,ab->a", x, y), (x + y).logsumexp(-1))


def test_long_chain_neither_underflows_nor_loses_gradients():
    n, k = 400, 3
    factors = [(torch.randn(k, k) - 30.0, (f"x{t}", f"x{t + 1}")) for t in range(n)]
    out = contract(factors, ())
    # the forward algorithm, step by step in log space
    alpha = torch.zeros(k)
    for t, _ in factors:
        alpha = (alpha[:, None] + t).logsumexp(0)
    assert torch.isfinite(out) and torch.allclose(out, alpha.logsumexp(0))


def test_gradient_matches_autograd_of_the_brute_force():
    x = torch.randn(3, 4, requires_grad=True)
    y = torch.randn(4, 2, requires_grad=True)
    out = log_einsum("ab,bc->", x, y)
    ref = (x[:, :, None] + y[None]).logsumexp((0, 1, 2))
    g = torch.autograd.grad(out, (x, y))
    g_ref = torch.autograd.grad(ref, (x, y))
    assert all(torch.allclose(a, b) for a, b in zip(g, g_ref))


def test_plated_einsum_equals_brute_force():
    # sum_g exp(e[g]) prod_i [ sum_u exp(a[g,i,u] + b[i,u]) prod_j sum_v exp(c[i,j,u,v] + d[i,j,v]) ]: a variable's
    # plates are those of every operand it occurs in
    a, b, c, d, e = torch.randn(2, 4, 3), torch.randn(4, 3), torch.randn(4, 5, 3, 2), torch.randn(4, 5, 2), torch.randn(2)
    got = einsum("giu,iu,ijuv,ijv,g->", a, b, c, d, e, plates="ij")
    total = 0.0
    for g in range(2):
        prod_i = e[g].exp()
        for i in range(4):
            s = 0.0
            for u in range(3):
                prod_j = 1.0
                for j in range(5):
                    prod_j *= sum((c[i, j, u, v] + d[i, j, v]).exp() for v in range(2))
                s += (a[g, i, u] + b[i, u]).exp() * prod_j
            prod_i *= s
        total += prod_i
    assert torch.allclose(got, torch.as_tensor(total).log())
    # u global (it occurs outside the plate too): sum_g sum_u exp(a2[g,u]) prod_i exp(b[i,u])
    a2 = torch.randn(2, 3)
    assert torch.allclose(einsum("gu,iu->", a2, b, plates="i"), (a2 + b.sum(0)).logsumexp((0, 1)))


def test_plated_einsum_keeps_global_output():
    a, b = torch.randn(3), torch.randn(4, 3)
    got = einsum("a,ia->a", a, b, plates="i")
    assert torch.allclose(got, a + b.sum(0))


def test_subsampling_scale_multiplies_the_plate_product():
    x = torch.randn(6, 2)
    factors = [(frozenset({"i"}), x, ("i", "z"))]
    (ordinal, t, dims), = contract_plated(factors, {"z": frozenset({"i"})}, {"z"}, {"i": (6, 10 / 6)})
    assert ordinal == frozenset() and dims == ()
    assert torch.allclose(t, 10 / 6 * x.logsumexp(-1).sum())


def test_kept_variable_blocks_its_plate():
    x = torch.randn(6, 2, 3)  # plate i, kept y (local to i), summed z (local to i)
    out = contract_plated([(frozenset({"i"}), x, ("i", "y", "z"))], {"y": frozenset({"i"}), "z": frozenset({"i"})}, {"z"},
                          {"i": (6, 1.0)})
    (ordinal, t, dims), = out
    assert ordinal == frozenset({"i"}) and set(dims) == {"i", "y"}
    t2, d2 = sum_plates(t, dims, ordinal, {"i": (6, 1.0)}, keep=frozenset())
    assert d2 == ("y",) or set(d2) == {"y"}


def test_intractable_structure_names_the_variables():
    # a global z summed under a product over i of a factor that also holds a kept local y
    x = torch.randn(4, 2, 2)
    with pytest.raises(ValueError, match="'z'"):
        contract_plated([(frozenset({"i"}), x, ("i", "z", "y"))], {"z": frozenset(), "y": frozenset({"i"})}, {"z"}, {"i": (4, 1.0)})


def test_factor_outside_its_variables_plate_is_refused():
    with pytest.raises(ValueError, match="replicated"):
        contract_plated([(frozenset(), torch.randn(2), ("z",))], {"z": frozenset({"i"})}, {"z"}, {"i": (3, 1.0)})


@pytest.mark.parametrize("n", [1, 2, 5])
def test_chain_in_a_plate_matches_enumeration(n):
    # prod_i sum_{x1..xn} prod_t f[i, x_{t-1}, x_t]
    k = 2
    f = torch.randn(3, n, k, k)
    factors = [(frozenset({"i"}), f[:, t], ("i", f"x{t}", f"x{t + 1}")) for t in range(n)]
    var_ord = {f"x{t}": frozenset({"i"}) for t in range(n + 1)}
    (_, t, dims), = contract_plated(factors, var_ord, set(var_ord), {"i": (3, 1.0)})
    brute = 0.0
    for i in range(3):
        terms = [sum(f[i, t, xs[t], xs[t + 1]] for t in range(n)) for xs in itertools.product(range(k), repeat=n + 1)]
        brute += torch.stack(terms).logsumexp(0)
    assert torch.allclose(t, brute)
