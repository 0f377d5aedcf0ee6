"""The batched NUTS trees (ember.infer.mcmc.batched_nuts) against the recursive single-chain NUTS
(ember.infer.mcmc.nuts): the same trees, draws and statistics, chain by chain, on random states."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ember as pyro
import ember.distributions as dist
import ember.infer.mcmc.vectorized as vectorized
from ember.infer import MCMC, NUTS
from ember.infer.mcmc.batched_nuts import BatchedTrees
from ember.infer.mcmc.hmc import HMCState, _drive, _mass_sqrt, _Streams


def _gaussian(dim: int, seed: int):
    """U(z) = z' A z / 2 for a random positive definite A (badly scaled: long trees and U-turns)."""
    rng = np.random.default_rng(seed)
    q = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    a = q @ np.diag(np.exp(rng.uniform(-3, 2, dim))) @ q.T

    def one(z):
        g = a @ z
        return 0.5 * float(z @ g), g

    def many(zs):  # row by row, so that each chain's potential is bit-for-bit the one above
        out = [one(z) for z in zs]
        return np.array([u for u, _ in out]), np.stack([g for _, g in out])

    return one, many


def _states(C: int, dim: int, seed: int, full: bool, step_size: float | None = None) -> list[HMCState]:
    rng = np.random.default_rng(seed + 100)
    out = []
    for _ in range(C):
        z = rng.standard_normal(dim)
        if full:
            b = rng.standard_normal((dim, dim))
            minv = b @ b.T / dim + 0.1 * np.eye(dim)
        else:
            minv = np.exp(rng.uniform(-1, 1, dim))
        eps = step_size if step_size is not None else float(np.exp(rng.uniform(-3, 0.5)))
        out.append(HMCState(int(rng.integers(0, 1000)), z, 0.0, np.zeros(dim), eps, minv, _mass_sqrt(minv), None,
                            int(rng.integers(0, 2**62))))
    return out


def _recursive(kernel: NUTS, state: HMCState, one):
    u, g = one(state.z)
    state = state._replace(potential_energy=u, grad=g)
    return _drive(kernel._transition_gen(state, _Streams()), one), state


def _batched(kernel: NUTS, states: list[HMCState], many, full: bool):
    C, D = len(states), states[0].z.size
    trees = BatchedTrees(C, D, kernel.max_tree_depth, kernel.max_energy_error, full)
    for c, s in enumerate(states):
        trees.start(c, s)
    active = np.ones(C, dtype=bool)
    results = [None] * C
    while active.any():
        zs = trees.leapfrog_positions()
        u, g = many(zs)
        for c in trees.step(zs, u, g, active.copy()).tolist():
            results[c] = trees.result(c)
            active[c] = False
    return results


@pytest.mark.parametrize("full", [False, True], ids=["diagonal", "dense"])
@pytest.mark.parametrize("max_tree_depth", [10, 3, 18])
def test_batched_trees_are_the_recursive_trees_chain_by_chain(full, max_tree_depth):
    dim, C = 5, 16
    one, many = _gaussian(dim, 0)
    kernel = NUTS(potential_fn=lambda p: None, max_tree_depth=max_tree_depth, full_mass=full)
    states = []
    for s in _states(C, dim, 1, full):
        u, g = one(s.z)
        states.append(s._replace(potential_energy=u, grad=g))
    got = _batched(kernel, states, many, full)
    depths = set()
    for c, s in enumerate(states):
        (new, info), _ = _recursive(kernel, s, one)
        z, u, g, binfo = got[c]
        # the same tree and the same draw, bit for bit (the arithmetic rounds as the recursive code's)
        assert binfo == info, c
        np.testing.assert_array_equal(z, new.z)
        np.testing.assert_array_equal(g, new.grad)
        assert u == new.potential_energy
        depths.add(info.tree_depth)
    assert len(depths) > 2  # the chains' trees differ in depth, so they end at different steps


def test_divergent_chains_stop_alone():
    dim, C = 3, 8
    one, many = _gaussian(dim, 2)
    kernel = NUTS(potential_fn=lambda p: None, max_energy_error=5.0)
    states = []
    for c, s in enumerate(_states(C, dim, 3, False)):
        s = s._replace(step_size=5.0 if c % 2 else 0.2)  # every other chain takes huge steps and diverges
        u, g = one(s.z)
        states.append(s._replace(potential_energy=u, grad=g))
    got = _batched(kernel, states, many, False)
    for c, s in enumerate(states):
        (new, info), _ = _recursive(kernel, s, one)
        assert got[c][3] == info
        np.testing.assert_array_equal(got[c][0], new.z)
    assert any(got[c][3].diverging for c in range(1, C, 2))


def test_a_batch_of_one_is_the_recursive_chain():
    dim = 4
    one, many = _gaussian(dim, 5)
    kernel = NUTS(potential_fn=lambda p: None)
    for s in _states(20, dim, 6, False):
        u, g = one(s.z)
        s = s._replace(potential_energy=u, grad=g)
        (new, info), _ = _recursive(kernel, s, one)
        z, u, g, binfo = _batched(kernel, [s], many, False)[0]
        assert binfo == info
        np.testing.assert_array_equal(z, new.z)
        np.testing.assert_array_equal(g, new.grad)


def _eight_schools(sigma, y):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("J", 8):
        theta = pyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(mu + tau * theta, sigma), obs=y)


@pytest.mark.parametrize("full_mass", [False, True], ids=["diagonal", "dense"])
def test_mcmc_with_batched_trees_draws_what_sequential_chains_draw(monkeypatch, full_mass):
    # the batched trees (used from BATCHED_TREES_MIN_CHAINS chains on) make each chain the chain it
    # is when run alone: same keys, same trees, same adaptation, step-size searches in between
    y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    sigma = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])

    def run(method):
        pyro.set_rng_seed(0)
        return MCMC(NUTS(_eight_schools, full_mass=full_mass), num_samples=40, warmup_steps=40, num_chains=3, chain_method=method,
                    disable_progbar=True).run(sigma, y)

    seq = run("sequential")
    monkeypatch.setattr(vectorized, "BATCHED_TREES_MIN_CHAINS", 2)
    vec = run("vectorized")
    a, b = seq.get_samples(group_by_chain=True), vec.get_samples(group_by_chain=True)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(seq.step_sizes, vec.step_sizes, rtol=1e-6)
    for key in ("num_steps", "tree_depth", "accepted", "diverging"):
        np.testing.assert_array_equal(seq.get_extra_fields()[key], vec.get_extra_fields()[key])
    assert vec.num_grad_evals_warmup == seq.num_grad_evals_warmup
