"""Vectorized chains: every chain advances with one batched evaluation of the model per leapfrog step.

A chain's sampler is written as a generator (:mod:`ember.infer.mcmc.hmc`): it yields each position
``z [D]`` whose potential energy and gradient it needs and is sent ``(U, dU/dz)`` back. Here the
whole run of a chain (initial step-size search, then per iteration ``transition``, warm-up
``adapt`` and recording) is one such generator, and :func:`run_chains` drives ``C`` of them
together: it stacks the positions they wait on into ``z [C, D]``, evaluates the
:class:`~ember.infer.mcmc.potential.BatchedPotential` once (compiled where the model allows it),
and sends each chain its row. Each chain keeps everything of its own: its random stream (the same
Philox key as it would have run with sequentially), step size, mass matrix, adaptation windows
and NUTS tree, which stops when *that* chain turns or diverges. A chain whose iteration is over
does not wait for the others: it starts its next iteration in the same batched step, so a run
costs about as many batched evaluations as its busiest chain needs leapfrog steps in total (not
the sum over iterations of the longest tree, as in lock-step vectorized NUTS). Chains that have
finished their run are padded with their last position until every chain is done. With many
chains, NUTS trees are built by batched operations instead of a generator per chain
(:mod:`ember.infer.mcmc.batched_nuts`; the same draws), one set of operations per step for all chains.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import torch

from ember.infer.initialization import init_to_value
from ember.infer.mcmc.hmc import HMC, HMCState, _Streams
from ember.infer.mcmc.potential import BatchedPotential, ModelPotential
from ember.infer.util import guess_max_plate_nesting
from ember.primitives import validation_enabled

__all__ = ["prepare_vectorized", "run_chains"]


def prepare_vectorized(kernel: HMC, args: tuple, kwargs: dict, initial: list[dict | None], warmup: int,
                       validate: bool) -> tuple[BatchedPotential, list[HMCState], str] | str:
    """Starting points for ``len(initial)`` chains (each chain's random key, then its starting
    point, drawn from Ember's stream in the order a sequential run draws them) and the batched
    potential, checked against the single-chain one there and compiled when allowed.

    Returns ``(batched, states, compile_status)``, or the reason the model cannot be vectorized
    (then nothing has been drawn from Ember's random stream, and the caller runs the chains
    sequentially)."""
    C = len(initial)
    if kernel.model is None:
        return "a potential_fn kernel has no model to put a chain plate around"
    potential = kernel.make_potential(args, kwargs, initial[0])
    rng_state = torch.get_rng_state()
    keys, states = [], []
    for c in range(C):
        keys.append(int(torch.randint(0, 2**62, ()).item()))
        zt, u, gt = potential.initial_point(kernel.init_strategy, initial[c])
        if zt.numel() == 0:
            raise ValueError(f"{type(kernel).__name__}: the model has no latent sample sites, so there is nothing to "
                             f"sample (observed sites: {sorted(potential.observed)})")
        states.append(kernel._new_state(zt, u, gt, warmup, keys[c]))
    z0 = torch.stack([torch.from_numpy(s.z) for s in states]).to(potential.dtype)
    problem = _batched_problem(potential, C, z0, validate)
    if isinstance(problem, str):
        torch.set_rng_state(rng_state)  # the sequential run draws the same keys and starting points
        return problem
    batched = problem
    if kernel.jit_compile is False:
        status = "eager (jit_compile=False)"
    elif validate:
        status = "eager: validation is on while sampling (MCMC(disable_validation=False)), and its checks are Python control flow"
    elif batched.compile(z0):
        status = f"compiled ({batched.compiled})"
    else:
        status = f"eager: {batched.compile_problem}"
    kernel.compile_status = status
    # what the kernel samples from now on, chain by chain (mcmc.states can be continued with kernel.transition)
    kernel.potential = potential
    kernel._mass_groups()  # full_mass blocks naming sites the model lacks fail here, before sampling
    kernel._pot = potential.potential_and_grad_numpy
    kernel._compiled_for = None
    how = "a chain plate" if batched.how == "plate" else "torch.func.vmap"
    return batched, states, f"{status}; vectorized: {C} chains, one batched evaluation per step ({how})"


def _batched_problem(potential: ModelPotential, C: int, z0: torch.Tensor, validate: bool) -> BatchedPotential | str:
    """A checked batched potential: the chain dim as a plate if the model takes it, else
    ``torch.func.vmap`` over the chains; or why neither gives each chain's potential. Checked
    with validation as it will be while sampling (a check that is Python control flow fails under
    vmap here, not in the middle of the run)."""
    try:
        trace = potential.trace_at(init_to_value(values=potential.constrain(z0[0]), fallback=None))
        nesting = guess_max_plate_nesting(trace)
        mapped = BatchedPotential(potential, C, nesting, how="vmap")
        batched: BatchedPotential | None = None
        problem = "the model has enumerated sites, which a chain plate cannot hold"
        if getattr(potential, "_enum_mpn", None) is None:
            batched = BatchedPotential(potential, C, nesting)
            batched.set_event_dims(trace)
    except Exception as e:  # noqa: BLE001 - a model Ember cannot batch: run it chain by chain
        return f"the model cannot be batched over chains ({type(e).__name__}: {e})"
    with validation_enabled(validate):
        if batched is not None:
            problem = batched.check(z0)
            if problem is None:
                return batched
        problem_vmap = mapped.check(z0)
    if problem_vmap is None:
        return mapped
    return f"{problem}; and {problem_vmap}"


def _chain(kernel: HMC, state: HMCState, warmup: int, total: int, rec: Any) -> Generator:
    """One chain's whole run as a generator (see the module docstring); returns its final state."""
    streams = _Streams()
    state = yield from kernel._init_step_size_gen(state, streams)
    transition, adapt, record = kernel._transition_gen, kernel._adapt_gen, rec.record
    for it in range(total):
        state, info = yield from transition(state, streams)
        if it < warmup:
            state = yield from adapt(state, info, streams)
        record(it, state, info)
    return state


# NUTS chains build their trees as batched NumPy operations from this many chains on. On a tree's
# small vectors a NumPy call costs about the same whatever its size, and a batched leaf takes
# several times the calls of one chain's recursive code (benchmarks/README.md measures where the two cross).
BATCHED_TREES_MIN_CHAINS = 32


def run_chains(kernel: HMC, batched: BatchedPotential, states: list[HMCState], warmup: int, total: int,
               recorders: list[Any], batched_trees: bool | None = None) -> list[HMCState]:
    """Run ``len(states)`` chains to the end together; ``recorders[c].record(it, state, info)``
    after each iteration of chain ``c``. Returns the final states. With ``batched_trees`` NUTS
    chains build their trees together as batched operations (:mod:`ember.infer.mcmc.batched_nuts`);
    otherwise each chain's transition is its own generator (the draws are the same either way).
    ``None``: batched from :data:`BATCHED_TREES_MIN_CHAINS` chains on."""
    from ember.infer.mcmc.nuts import NUTS

    if batched_trees is None:
        batched_trees = len(states) >= BATCHED_TREES_MIN_CHAINS
    if batched_trees and isinstance(kernel, NUTS):
        return _run_nuts_chains(kernel, batched, states, warmup, total, recorders)
    C = len(states)
    gens = [_chain(kernel, s, warmup, total, r) for s, r in zip(states, recorders)]
    finals: list[Any] = [None] * C
    zs = np.stack([s.z for s in states])
    active = []
    for c, g in enumerate(gens):
        try:
            zs[c] = next(g)
            active.append(c)
        except StopIteration as stop:
            finals[c] = stop.value
    evaluate = batched.potential_and_grad_numpy
    while active:
        u, grad = evaluate(zs)
        u = u.tolist()
        still = []
        for c in active:
            try:
                zs[c] = gens[c].send((u[c], grad[c]))
                still.append(c)
            except StopIteration as stop:
                finals[c] = stop.value
        active = still
    return finals


_TREE = object()  # what a NUTS chain's generator yields (with its state) to have the batched trees run its transition


def _nuts_chain(kernel: HMC, state: HMCState, warmup: int, total: int, rec: Any) -> Generator:
    """One NUTS chain's whole run as a generator: it yields a position ``z`` whose potential and
    gradient it needs (the step-size searches), or ``(_TREE, state)`` for a transition, and is sent
    ``(new_state, info)`` back; returns its final state."""
    streams = _Streams()
    state = yield from kernel._init_step_size_gen(state, streams)
    adapt, record = kernel._adapt_gen, rec.record
    for it in range(total):
        state, info = yield _TREE, state
        if it < warmup:
            state = yield from adapt(state, info, streams)
        record(it, state, info)
    return state


def _run_nuts_chains(kernel: Any, batched: BatchedPotential, states: list[HMCState], warmup: int, total: int,
                     recorders: list[Any]) -> list[HMCState]:
    """:func:`run_chains` for NUTS: per batched evaluation, every chain inside a transition takes
    one leaf of its tree (:class:`~ember.infer.mcmc.batched_nuts.BatchedTrees`) and every chain in
    a step-size search takes its next probe; a chain whose transition ends is recorded and adapted
    and starts its next transition before the next evaluation."""
    from ember.infer.mcmc.batched_nuts import BatchedTrees

    C, D = len(states), states[0].z.size
    trees = BatchedTrees(C, D, kernel.max_tree_depth, kernel.max_energy_error, kernel.full_mass)
    gens = [_nuts_chain(kernel, s, warmup, total, r) for s, r in zip(states, recorders)]
    finals: list[Any] = [None] * C
    in_tree = np.zeros(C, dtype=bool)
    asking = np.zeros(C, dtype=bool)  # a chain whose generator asked for the potential at zreq[c]
    zreq = np.stack([s.z for s in states])
    started: list[Any] = [None] * C  # the state each chain's transition started from

    def answer(c: int, request: Any) -> None:
        if type(request) is tuple:
            started[c] = request[1]
            trees.start(c, request[1])
            in_tree[c], asking[c] = True, False
        else:
            zreq[c] = request
            in_tree[c], asking[c] = False, True

    for c, g in enumerate(gens):
        try:
            answer(c, next(g))
        except StopIteration as stop:
            finals[c] = stop.value
    evaluate = batched.potential_and_grad_numpy
    quiet = {"invalid": "ignore", "over": "ignore"}  # rows not in use, and divergent leaves (handled)
    while in_tree.any() or asking.any():
        with np.errstate(**quiet):
            zs = trees.leapfrog_positions()
        ask = np.flatnonzero(asking)
        if ask.size:
            zs[ask] = zreq[ask]
        done_rows = np.flatnonzero(~in_tree & ~asking)
        if done_rows.size:  # chains at their end: padded with their last position
            zs[done_rows] = zreq[done_rows]
        u, grad = evaluate(zs)
        with np.errstate(**quiet):
            over = trees.step(zs, u, grad, in_tree.copy())
        for c in ask.tolist():
            try:
                answer(c, gens[c].send((float(u[c]), grad[c])))
            except StopIteration as stop:
                finals[c], asking[c] = stop.value, False
        for c in over.tolist():
            z, uc, gc, info = trees.result(c)
            s = started[c]
            new = s._replace(iteration=s.iteration + 1, z=z, potential_energy=uc, grad=gc)
            try:
                answer(c, gens[c].send((new, info)))
            except StopIteration as stop:
                finals[c], in_tree[c] = stop.value, False
                zreq[c] = stop.value.z
    return finals
