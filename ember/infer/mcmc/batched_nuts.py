"""NUTS trees of many chains as batched NumPy operations, one set of operations per leapfrog step.

:mod:`ember.infer.mcmc.nuts` builds a chain's trajectory recursively, in Python floats and
``[D]`` vectors. Here the same algorithm runs iteratively for ``C`` chains at once, on ``[C, ...]``
arrays: each chain is somewhere in its own tree (its own depth, direction, leaf within the current
subtree, step size and mass matrix), and every call of :meth:`BatchedTrees.step` advances every
chain by one leaf. A chain whose transition ends (a U-turn, a divergence, ``max_tree_depth``) is
reported by :meth:`BatchedTrees.step`; its driver records it, adapts, and starts the chain's next
transition with :meth:`BatchedTrees.start` before the next step, so no chain waits for another's
tree.

The recursion becomes a binary counter. The subtree of a doubling at depth ``d`` has ``2**d``
leaves; after leaf ``n`` (0-based) the recursive code merges ``k`` pairs of sibling subtrees,
where ``k`` is the number of trailing one bits of ``n``: the new leaf with the pending subtree of
size 1, that result with the pending subtree of size 2, and so on. So each chain keeps, per
level ``j``, the pending left subtree of size ``2**j`` (its log weight, proposal, end momenta and
summed momentum), and a step computes all ``k`` merges of every chain at once: the merged log
weights are a running ``logaddexp``, the summed momenta a running sum, each merge's three U-turn
checks (Stan's, as in :mod:`~ember.infer.mcmc.nuts`) use only pending and leaf values, and the
proposal kept is the leaf's unless some merge chose its left sibling (then the highest such
sibling's). The merges are checked in order and the first one that turns ends the transition.

Random numbers are consumed as the recursive code consumes them, from the same per-chain Philox
stream: the momentum, then uniforms in blocks of 32, one per doubling's direction, one per merge
(drawn before its U-turn check; none after the first merge that turns), and one per joined
subtree whose log weight does not exceed the trajectory's. The arithmetic rounds as the recursive code's does
(dot products as BLAS's, ``exp`` as Python's, NumPy's ``logaddexp`` as the recursive code's), so a
chain follows the same tree to the same draw, bit for bit, as in :mod:`~ember.infer.mcmc.nuts`
given the same potential energies and gradients.

A step takes the same number of NumPy calls whatever the number of chains, several times the
calls of one chain's recursive leaf, and on small vectors a call costs about the same whatever
its size: :func:`~ember.infer.mcmc.vectorized.run_chains` uses these trees from
``BATCHED_TREES_MIN_CHAINS`` chains on.
"""

from __future__ import annotations

import math

import numpy as np

from ember.infer.mcmc.hmc import _STREAM_TRANSITION, HMCState, TransitionInfo, _Streams

__all__ = ["BatchedTrees"]

# the vectors of a (sub)tree, slots of the [..., 7, D] arrays: its proposal's position and gradient,
# the momentum and M^-1 p at its first and last leaf, its summed momentum
_Z, _G, _P_BEG, _PS_BEG, _P_END, _PS_END, _RHO = range(7)
# its scalars: log weight, the proposal's potential energy and Hamiltonian
_LOG_W, _U, _H = range(3)
# a trajectory end's slots in the [C, 2, 4, D] array of ends (axis 1: 0 the backward end, 1 the forward one)
_EZ, _EG, _EP, _EPS = range(4)
_BLOCK = 32  # uniforms drawn at a time, as hmc._Integrator.uniform draws them


def _dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot products over the last dim, each rounded as the recursive code's ``a @ b`` (BLAS's dot)."""
    return np.vecdot(a, b)


def _exp_neg(x: np.ndarray) -> np.ndarray:
    """``exp(min(x, 0))`` element by element with Python's ``math.exp`` (NumPy's array ``exp`` can
    differ in the last bit, and the acceptance statistic feeds step-size adaptation). Every
    exponent the recursive code takes is at most 0; rows that are not in use here may hold anything."""
    x = np.minimum(x, 0.0)
    return np.fromiter(map(math.exp, x.ravel().tolist()), np.float64, x.size).reshape(x.shape)


def _trailing_ones(n: np.ndarray) -> np.ndarray:
    m = n + 1
    return np.log2(m & -m).astype(np.int64)


class BatchedTrees:
    """The NUTS transitions of ``C`` chains in progress (see the module docstring).

    ``start(c, state)`` begins chain ``c``'s next transition; ``leapfrog_positions()`` gives every
    chain's next position ``[C, D]``; ``step(z, u, g, active)`` takes the potential energies ``[C]``
    and gradients ``[C, D]`` there and returns the chains (among ``active``) whose transition is
    over; ``result(c)`` is chain ``c``'s ``(z, U, grad, TransitionInfo)``. Rows of chains not
    ``active`` are computed and ignored (``start`` resets them)."""

    def __init__(self, num_chains: int, dim: int, max_tree_depth: int, max_energy_error: float, full_mass: bool) -> None:
        C, D, L = num_chains, dim, max_tree_depth
        self.C, self.D, self.L = C, D, L
        self.neg_max_error = -max_energy_error
        self.full = full_mass
        self.rows = np.arange(C)
        self.levels = np.arange(L)
        self.eps = np.ones(C)  # the transition's step size
        self.minv = np.zeros((C, D, D)) if full_mass else np.ones((C, D))
        self.h0 = np.zeros(C)
        self.de = np.ones((C, 1))  # the current doubling's signed step size, and half of it
        self.hde = np.full((C, 1), 0.5)
        # the integration cursor: the last leaf computed (where the next leapfrog starts)
        self.z, self.p, self.g = np.zeros((C, D)), np.zeros((C, D)), np.zeros((C, D))
        self.ph = np.zeros((C, D))  # the half-stepped momentum of the leapfrog in flight
        self.ends = np.zeros((C, 2, 4, D))  # the trajectory's ends: position, gradient, momentum, M^-1 p
        self.fw = np.zeros(C, dtype=np.int64)  # 1 while doubling forwards
        self.rho = np.zeros((C, D))  # the trajectory's summed momentum
        self.log_sum_w = np.zeros(C)
        self.sample_v = np.zeros((C, 2, D))  # the draw so far: position, gradient
        self.sample_s = np.zeros((C, 2))  # its potential energy and Hamiltonian
        self.moved = np.zeros(C, dtype=bool)
        self.diverging = np.zeros(C, dtype=bool)
        self.depth = np.zeros(C, dtype=np.int64)  # doublings completed
        self.last_leaf = np.zeros(C, dtype=np.int64)  # 2**depth - 1: the current subtree's last leaf
        self.n = np.zeros(C, dtype=np.int64)  # the leaf's index in the current subtree (0 when not active)
        self.steps = 0
        self.first_step = np.zeros(C, dtype=np.int64)  # the step count when each transition started
        self.sum_accept = np.zeros(C)
        # pending left subtrees per level, and the tree ending at the newest leaf
        self.V = np.zeros((C, L, 7, D))
        self.S = np.zeros((C, L, 3))
        self.tv = np.zeros((C, 7, D))
        self.ts = np.zeros((C, 3))
        # trailing one bits of n (merges after leaf n), tabulated for every leaf index of a subtree
        self.trailing = _trailing_ones(np.arange(1 << (L - 1))) if L <= 16 else None
        # uniforms: each chain's stream, buffered; buf[c, ptr[c]:end[c]] not consumed yet
        self.streams = [_Streams() for _ in range(C)]
        self.reserve = L + 2  # the most uniforms one step consumes per chain
        self.buf = np.zeros((C, self.reserve + 2 * _BLOCK))
        self.last = self.buf.shape[1] - 1
        self.ptr = np.zeros(C, dtype=np.int64)
        self.end = np.zeros(C, dtype=np.int64)

    # ---- a chain's transition starts and ends -----------------------------------------------------------
    def start(self, c: int, state: HMCState) -> None:
        """Begin chain ``c``'s transition from ``state``: draw its momentum and the first direction
        exactly as :meth:`NUTS._transition` does."""
        gen = self.streams[c].get(state.rng_key, state.iteration, _STREAM_TRANSITION)
        minv, msqrt = state.inverse_mass_matrix, state.mass_sqrt
        e = gen.standard_normal(self.D)
        full = minv.ndim == 2
        p = msqrt @ e if full else e * msqrt
        ps = minv @ p if full else minv * p
        z, u, g, eps = state.z, state.potential_energy, state.grad, state.step_size
        h0 = u + 0.5 * float(p @ ps)
        buf = self.buf[c]
        buf[:_BLOCK] = gen.random(_BLOCK)
        de = eps if buf[0] > 0.5 else -eps
        self.ptr[c], self.end[c] = 1, _BLOCK
        self.eps[c], self.minv[c], self.h0[c] = eps, minv, h0
        self.fw[c] = de > 0
        self.de[c], self.hde[c] = de, 0.5 * de
        self.z[c], self.p[c], self.g[c] = z, p, g
        end = self.ends[c]
        end[:, _EZ], end[:, _EG], end[:, _EP], end[:, _EPS] = z, g, p, ps
        self.rho[c] = p
        self.log_sum_w[c] = 0.0
        self.sample_v[c, 0], self.sample_v[c, 1] = z, g
        self.sample_s[c] = u, h0
        self.moved[c] = self.diverging[c] = False
        self.depth[c] = self.last_leaf[c] = self.n[c] = 0
        self.first_step[c] = self.steps
        self.sum_accept[c] = 0.0

    def result(self, c: int) -> tuple[np.ndarray, float, np.ndarray, TransitionInfo]:
        """Chain ``c``'s finished transition: the drawn ``z``, its ``U`` and gradient, and the info."""
        n = self.steps - int(self.first_step[c])
        u, h = self.sample_s[c].tolist()
        info = TransitionInfo(float(self.sum_accept[c]) / max(n, 1), bool(self.moved[c]), bool(self.diverging[c]), n,
                              int(self.depth[c]), h, float(self.eps[c]))
        return self.sample_v[c, 0].copy(), u, self.sample_v[c, 1].copy(), info

    # ---- one leaf for every chain ----------------------------------------------------------------------
    def _sharp(self, p: np.ndarray) -> np.ndarray:
        if self.full:
            return np.matmul(self.minv, p[..., None])[..., 0]
        return self.minv * p

    def leapfrog_positions(self) -> np.ndarray:
        """The first half of every chain's leapfrog step: the positions ``[C, D]`` to evaluate."""
        self.ph = ph = self.p - self.hde * self.g
        return self.z + self.de * self._sharp(ph)

    def _refill(self, low: np.ndarray) -> None:
        """Buffer ``reserve`` uniforms for the ``low`` chains (drawing blocks of 32 from their streams)."""
        for c in np.flatnonzero(low).tolist():
            ptr, end = int(self.ptr[c]), int(self.end[c])
            buf = self.buf[c]
            rest = end - ptr
            buf[:rest] = buf[ptr:end]
            while rest < self.reserve:
                buf[rest:rest + _BLOCK] = self.streams[c].gen.random(_BLOCK)  # (a chain not started: unused)
                rest += _BLOCK
            self.ptr[c], self.end[c] = 0, rest

    def step(self, z: np.ndarray, u: np.ndarray, g: np.ndarray, active: np.ndarray) -> np.ndarray:
        """Finish every chain's leapfrog step at ``z`` (from :meth:`leapfrog_positions`) with the
        potential energies ``u [C]`` and gradients ``g [C, D]`` there; build the trees on; return
        the indices of the ``active`` chains whose transition is over (a new ``z`` array each step:
        the trees keep it)."""
        rows = self.rows
        self.steps += 1
        p = self.ph - self.hde * g
        ps = self._sharp(p)
        h = u + 0.5 * _dots(p, ps)
        delta = self.h0 - h
        divergent = ~(delta >= self.neg_max_error) & active  # NaN too
        n = self.n
        k = self.trailing[n] if self.trailing is not None else _trailing_ones(n)  # merges after this leaf (n is 0 in chains not active)
        over = None
        if np.count_nonzero(divergent):
            bad = ~np.isfinite(h)  # a non-finite energy: an infinite energy error
            h[bad] = math.inf
            delta[bad] = -math.inf
            self.diverging |= divergent
            k[divergent] = 0
            over = divergent
        self.sum_accept += _exp_neg(delta)
        if np.count_nonzero(low := self.end - self.ptr < self.reserve):
            self._refill(low)
        tv, ts = self.tv, self.ts  # the tree ending at this leaf: the leaf, then merged
        tv[:, _Z], tv[:, _G], tv[:, _P_BEG::2], tv[:, _PS_BEG:_RHO:2] = z, g, p[:, None], ps[:, None]
        ts[:, _LOG_W], ts[:, _U], ts[:, _H] = delta, u, h
        K = int(k.max())
        used = k  # uniforms consumed by each chain this step
        if K:
            used, turned = self._merge(K, k, p, ps, delta)
            if turned is not None:
                over = turned if over is None else over | turned
        alive = active if over is None else active & ~over
        complete = (n == self.last_leaf) & alive  # the doubling's subtree is built
        self.V[rows, k] = tv
        self.S[rows, k] = ts
        self.n = (n + 1) * alive
        self.z, self.p, self.g = z, p, g
        if np.count_nonzero(complete):
            joined = self._join(complete, used)
            over = joined if over is None else over | joined
        self.ptr += used
        return np.empty(0, dtype=np.int64) if over is None else np.flatnonzero(over)

    def _merge(self, K: int, k: np.ndarray, p: np.ndarray, ps: np.ndarray, delta: np.ndarray) -> tuple:
        """Merge the newest leaf with the pending subtrees at levels ``0 .. k-1`` (``k`` per chain,
        at most ``K``), leaving the merged tree in ``tv, ts``; returns the uniforms used per chain
        and the chains whose subtree turned (or None)."""
        rows, tv, ts = self.rows, self.tv, self.ts
        V, S = self.V[:, :K], self.S[:, :K]
        W = np.logaddexp.accumulate(np.concatenate((delta[:, None], S[:, :, _LOG_W]), axis=1), axis=1)  # T_j's log weight
        R = np.cumsum(np.concatenate((p[:, None], V[:, :, _RHO]), axis=1), axis=1)  # T_j's summed momentum
        beg = np.concatenate((tv[:, None, _P_BEG:_PS_BEG + 1], V[:, :, _P_BEG:_PS_BEG + 1]), axis=1)  # T_j's first p, M^-1 p
        R1 = R[:, 1:]
        r2 = V[:, :, _RHO] + beg[:, :K, 0]
        r3 = R[:, :K] + V[:, :, _P_END]
        ps1 = ps[:, None]
        ok = np.minimum(np.minimum(np.minimum(_dots(V[:, :, _PS_BEG], R1), _dots(ps1, R1)),
                                   np.minimum(_dots(V[:, :, _PS_BEG], r2), _dots(beg[:, :K, 1], r2))),
                        np.minimum(_dots(V[:, :, _PS_END], r3), _dots(ps1, r3))) > 0
        doing = self.levels[:K] < k[:, None]  # [C, K]: chain c merges at level j
        uni = self.buf[rows[:, None], np.minimum(self.ptr[:, None] + self.levels[:K], self.last)]
        left = doing & ~(uni < _exp_neg(W[:, :K] - W[:, 1:]))  # the merge keeps its left sibling's proposal
        turned = None
        used = k
        bad = doing & ~ok
        if np.count_nonzero(bad):
            turned = bad.any(axis=1)
            used = np.where(turned, np.argmax(bad, axis=1) + 1, k)
        has_left = left.any(axis=1)
        if np.count_nonzero(has_left):
            j = K - 1 - np.argmax(left[:, ::-1], axis=1)  # the highest such level
            h = has_left[:, None]
            tv[:, _Z:_G + 1] = np.where(h[:, :, None], V[rows, j, _Z:_G + 1], tv[:, _Z:_G + 1])
            ts[:, _U:] = np.where(h, S[rows, j, _U:], ts[:, _U:])
        tv[:, _P_BEG:_PS_BEG + 1] = beg[rows, k]
        tv[:, _RHO] = R[rows, k]
        ts[:, _LOG_W] = W[rows, k]
        return used, turned

    def _join(self, complete: np.ndarray, used: np.ndarray) -> np.ndarray:
        """The subtrees of the ``complete`` chains join their trajectories (as in the loop of
        :meth:`NUTS._transition`); returns the chains whose transition is over. Adds the uniforms
        drawn to ``used`` (in place)."""
        cm, rows, tv, ts = complete, self.rows, self.tv, self.ts
        self.depth += cm
        self.n *= ~cm  # the next doubling's first leaf
        self.last_leaf = np.where(cm, 2 * self.last_leaf + 1, self.last_leaf)
        log_w, lsw = ts[:, _LOG_W], self.log_sum_w
        heavier = log_w > lsw  # no uniform is drawn then
        uni = self.buf[rows, np.minimum(self.ptr + used, self.last)]
        take = cm & (heavier | (uni < _exp_neg(log_w - lsw)))
        used += cm & ~heavier
        if np.count_nonzero(take):
            self.sample_v = np.where(take[:, None, None], tv[:, _Z:_G + 1], self.sample_v)
            self.sample_s = np.where(take[:, None], ts[:, _U:], self.sample_s)
            self.moved |= take
        self.log_sum_w = np.where(cm, np.logaddexp(lsw, log_w), lsw)
        # the U-turn checks across the whole trajectory and both seams
        fw = self.fw
        near, far_ps = self.ends[rows, fw], self.ends[rows, 1 - fw, _EPS]
        t_rho, t_ps_end = tv[:, _RHO], tv[:, _PS_END]
        rho = self.rho + t_rho
        r2 = self.rho + tv[:, _P_BEG]
        r3 = t_rho + near[:, _EP]
        no_turn = np.minimum(np.minimum(np.minimum(_dots(far_ps, rho), _dots(t_ps_end, rho)),
                                        np.minimum(_dots(far_ps, r2), _dots(tv[:, _PS_BEG], r2))),
                             np.minimum(_dots(near[:, _EPS], r3), _dots(t_ps_end, r3))) > 0
        self.rho = np.where(cm[:, None], rho, self.rho)
        # the subtree's last leaf (the cursor) is the trajectory's new end
        idx = np.flatnonzero(cm)
        leaf = np.concatenate((self.z[idx, None], self.g[idx, None], tv[idx, _P_END:_PS_END + 1]), axis=1)
        self.ends[idx, fw[idx]] = leaf
        go_on = cm & no_turn & (self.depth < self.L)
        if np.count_nonzero(go_on):
            uni = self.buf[rows, np.minimum(self.ptr + used, self.last)]
            used += go_on
            fw = np.where(go_on, uni > 0.5, fw)
            self.fw = fw
            start = self.ends[rows, fw]
            g = go_on[:, None]
            self.z = np.where(g, start[:, _EZ], self.z)
            self.p = np.where(g, start[:, _EP], self.p)
            self.g = np.where(g, start[:, _EG], self.g)
            de = np.where(fw, self.eps, -self.eps)[:, None]
            self.de = np.where(g, de, self.de)
            self.hde = np.where(g, 0.5 * de, self.hde)
        return cm & ~go_on
