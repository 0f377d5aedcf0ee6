"""The No-U-Turn Sampler: multinomial NUTS with the generalised U-turn criterion (Stan's algorithm).

Each transition doubles a trajectory forwards or backwards in time (a uniformly random
direction per doubling) until a U-turn, a divergence or ``max_tree_depth`` doublings. The next
state is drawn from the trajectory with probability proportional to ``exp(-H)``: uniform
progressive sampling inside each new subtree, biased progressive sampling when a subtree joins
the trajectory (Betancourt 2017). The U-turn check uses ``p_sharp = M^-1 p`` at both ends and the
summed momentum of every subtree, plus Stan's two extra checks across the seam of each merge.
The acceptance statistic fed to step-size adaptation is the mean of ``min(1, exp(H0 - H))`` over
every leapfrog step of the transition; an energy error above ``max_energy_error`` is a
divergence and stops the doubling. A transition is *accepted* (Pyro's acceptance-rate count)
when the draw moved: some subtree's proposal replaced the starting point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from ember.infer.initialization import init_to_uniform
from ember.infer.mcmc.hmc import HMC, TransitionInfo, _Integrator

__all__ = ["NUTS"]


# A subtree is a tuple (cheaper to build than an object, a few times per leapfrog step): its outer
# end (position, momentum, gradient, M^-1 p) to keep integrating from, the momentum and M^-1 p at
# its first leaf, its summed momentum, the proposal drawn from it (position, potential energy,
# gradient, Hamiltonian), its log weight, and whether it is valid (no U-turn, no divergence).
_LOG_W, _VALID = 11, 12


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    m = a if a > b else b
    return m + math.log1p(math.exp(-abs(a - b)))


class NUTS(HMC):
    """The No-U-Turn Sampler (see the module docstring); chains are values as in :class:`HMC`.

    Takes the arguments of :class:`HMC` (``trajectory_length``/``num_steps`` are not used) and:

    Args:
        max_tree_depth: at most ``2**max_tree_depth`` leapfrog steps per transition (10).
        use_multinomial_sampling: Ember's NUTS is always multinomial (slice sampling is the older,
            less efficient variant); ``False`` is accepted with a warning.
    """

    def __init__(self, model: Callable | None = None, potential_fn: Callable | None = None, step_size: float = 1.0,
                 adapt_step_size: bool = True, adapt_mass_matrix: bool = True, full_mass: bool = False,
                 use_multinomial_sampling: bool = True, transforms: dict | None = None, max_plate_nesting: int | None = None,
                 jit_compile: bool | None = None, jit_options: dict | None = None, ignore_jit_warnings: bool = False,
                 target_accept_prob: float = 0.8, max_tree_depth: int = 10, init_strategy: Any = init_to_uniform,
                 *, max_energy_error: float = 1000.0, min_step_size: float = 1e-10, max_step_size: float = 1e10,
                 **kwargs: Any) -> None:
        for fixed in ("num_steps", "trajectory_length"):
            if fixed in kwargs:
                raise TypeError(f"NUTS got an unexpected keyword argument {fixed}={kwargs[fixed]!r}: NUTS chooses each "
                                f"trajectory's length itself; use HMC for a fixed one")
        if not use_multinomial_sampling:
            kwargs["use_multinomial_sampling"] = use_multinomial_sampling
        super().__init__(model=model, potential_fn=potential_fn, step_size=step_size, num_steps=1,
                         adapt_step_size=adapt_step_size, adapt_mass_matrix=adapt_mass_matrix, full_mass=full_mass,
                         transforms=transforms, max_plate_nesting=max_plate_nesting, jit_compile=jit_compile,
                         jit_options=jit_options, ignore_jit_warnings=ignore_jit_warnings,
                         target_accept_prob=target_accept_prob, init_strategy=init_strategy,
                         max_energy_error=max_energy_error, min_step_size=min_step_size, max_step_size=max_step_size,
                         **kwargs)
        if isinstance(max_tree_depth, bool) or not isinstance(max_tree_depth, int) or not 1 <= max_tree_depth <= 30:
            raise ValueError(f"NUTS: max_tree_depth must be an integer in [1, 30], got {max_tree_depth!r}")
        self.max_tree_depth = max_tree_depth
        self.use_multinomial_sampling = True

    @classmethod
    def _valid_kwargs(cls) -> list[str]:
        names = [n for n in super()._valid_kwargs() if n not in ("trajectory_length", "num_steps")]
        return names + ["max_tree_depth", "use_multinomial_sampling"]

    @classmethod
    def _ignored_kwargs(cls) -> dict[str, str]:
        return {**super()._ignored_kwargs(),
                "use_multinomial_sampling": "Ember's NUTS always samples multinomially from the trajectory (the "
                                            "slice-sampling variant is older and less efficient)"}

    # ---- the tree --------------------------------------------------------------------------------
    def _build(self, ig: _Integrator, depth: int, z: np.ndarray, p: np.ndarray, g: np.ndarray, eps: float,
               h0: float) -> Generator:
        if depth == 0:  # one leapfrog step (as _Integrator.leapfrog) as a subtree of one leaf
            minv, full = ig.minv, ig.full
            half = 0.5 * eps
            p = p - half * g
            z = z + eps * (minv @ p if full else minv * p)
            u, g = yield z
            p = p - half * g
            ps = minv @ p if full else minv * p
            h = u + 0.5 * float(p.dot(ps))  # ndarray.dot: the same BLAS dot as `@`, at half its call overhead
            if not math.isfinite(h):  # a non-finite potential or momentum: an infinite energy error
                h = math.inf
            ig.n_leapfrog += 1
            delta = h0 - h
            ig.sum_accept += 1.0 if delta > 0 else math.exp(delta)
            valid = -delta <= ig.max_energy_error
            if not valid:
                ig.diverging = True
            return z, p, g, ps, p, ps, p, z, u, g, h, delta, valid
        init = yield from self._build(ig, depth - 1, z, p, g, eps, h0)
        if not init[_VALID]:
            return init
        final = yield from self._build(ig, depth - 1, init[0], init[1], init[2], eps, h0)
        if not final[_VALID]:
            return final
        p1, ps1, pb0, psb0, rho0, w0 = init[1], init[3], init[4], init[5], init[6], init[_LOG_W]
        z2, p2, g2, ps2, pb1, psb1, rho1, w1 = final[0], final[1], final[2], final[3], final[4], final[5], final[6], final[_LOG_W]
        log_w = _logaddexp(w0, w1)
        prop = final if ig.uniform() < math.exp(w1 - log_w) else init
        rho = rho0 + rho1
        # Stan's criterion across the merged tree, and across the seam from each side
        valid = ps2.dot(rho) > 0 and psb0.dot(rho) > 0
        if valid:
            r = rho0 + pb1
            valid = psb1.dot(r) > 0 and psb0.dot(r) > 0
            if valid:
                r = rho1 + p1
                valid = ps2.dot(r) > 0 and ps1.dot(r) > 0
        return z2, p2, g2, ps2, pb0, psb0, rho, prop[7], prop[8], prop[9], prop[10], log_w, bool(valid)

    def _transition(self, ig: _Integrator, z: np.ndarray, u: float, g: np.ndarray, eps: float) -> Generator:
        p = ig.momentum()
        ps = ig.p_sharp(p)
        h0 = u + 0.5 * float(p.dot(ps))
        uniform = ig.uniform
        # the two ends of the trajectory: (z, p, grad); momenta at the seams (Stan's notation)
        fwd = (z, p, g)
        bck = (z, p, g)
        p_fwd_fwd = p_fwd_bck = p_bck_fwd = p_bck_bck = p
        ps_fwd_fwd = ps_fwd_bck = ps_bck_fwd = ps_bck_bck = ps
        rho = p
        log_sum_w = 0.0
        sample = (z, u, g, h0)
        moved = False
        depth = 0
        while depth < self.max_tree_depth:
            if uniform() > 0.5:
                rho_bck = rho
                p_bck_fwd, ps_bck_fwd = p_fwd_fwd, ps_fwd_fwd
                t = yield from self._build(ig, depth, fwd[0], fwd[1], fwd[2], eps, h0)
                fwd = t[:3]
                rho_fwd = t[6]
                p_fwd_bck, ps_fwd_bck = t[4], t[5]
                p_fwd_fwd, ps_fwd_fwd = t[1], t[3]
            else:
                rho_fwd = rho
                p_fwd_bck, ps_fwd_bck = p_bck_bck, ps_bck_bck
                t = yield from self._build(ig, depth, bck[0], bck[1], bck[2], -eps, h0)
                bck = t[:3]
                rho_bck = t[6]
                p_bck_fwd, ps_bck_fwd = t[4], t[5]
                p_bck_bck, ps_bck_bck = t[1], t[3]
            if not t[_VALID]:
                break
            depth += 1
            log_w = t[_LOG_W]
            if log_w > log_sum_w or uniform() < math.exp(log_w - log_sum_w):
                sample = t[7:11]
                moved = True
            log_sum_w = _logaddexp(log_sum_w, log_w)
            rho = rho_bck + rho_fwd
            if not (_no_uturn(ps_bck_bck, ps_fwd_fwd, rho)
                    and _no_uturn(ps_bck_bck, ps_fwd_bck, rho_bck + p_fwd_bck)
                    and _no_uturn(ps_bck_fwd, ps_fwd_fwd, rho_fwd + p_bck_fwd)):
                break
        n = ig.n_leapfrog
        z, u, g, energy = sample
        return z, u, g, TransitionInfo(ig.sum_accept / max(n, 1), moved, ig.diverging, n, depth, energy, eps)


def _no_uturn(ps_minus: np.ndarray, ps_plus: np.ndarray, rho: np.ndarray) -> bool:
    return float(ps_plus.dot(rho)) > 0 and float(ps_minus.dot(rho)) > 0
