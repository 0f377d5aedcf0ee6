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


class _Tree:
    """A subtree: its outer end state (to keep integrating from), the momenta at both ends and
    their ``M^-1 p``, the summed momentum, the proposal drawn from it and its log weight."""

    __slots__ = ("z_end", "p_end", "g_end", "ps_end", "p_beg", "ps_beg", "rho", "z_prop", "u_prop", "g_prop", "h_prop",
                 "log_w", "valid")


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
    @staticmethod
    def _leaf(ig: _Integrator, z: np.ndarray, p: np.ndarray, g: np.ndarray, eps: float, h0: float) -> Generator:
        z, p, g, u = yield from ig.leapfrog(z, p, g, eps)
        ps = ig.p_sharp(p)
        h = u + 0.5 * float(p @ ps)
        if not math.isfinite(h):  # a non-finite potential or momentum: an infinite energy error
            h = math.inf
        ig.n_leapfrog += 1
        delta = h0 - h
        ig.sum_accept += 1.0 if delta > 0 else math.exp(delta)
        t = _Tree()
        t.z_end, t.p_end, t.g_end, t.ps_end = z, p, g, ps
        t.p_beg, t.ps_beg, t.rho = p, ps, p
        t.z_prop, t.u_prop, t.g_prop, t.h_prop = z, u, g, h
        t.log_w = delta
        if -delta > ig.max_energy_error:
            ig.diverging = True
            t.valid = False
        else:
            t.valid = True
        return t

    def _build(self, ig: _Integrator, depth: int, z: np.ndarray, p: np.ndarray, g: np.ndarray, eps: float,
               h0: float) -> Generator:
        if depth == 0:
            return (yield from self._leaf(ig, z, p, g, eps, h0))
        init = yield from self._build(ig, depth - 1, z, p, g, eps, h0)
        if not init.valid:
            return init
        final = yield from self._build(ig, depth - 1, init.z_end, init.p_end, init.g_end, eps, h0)
        if not final.valid:
            return final
        log_w = _logaddexp(init.log_w, final.log_w)
        t = _Tree()
        if ig.uniform() < math.exp(final.log_w - log_w):
            t.z_prop, t.u_prop, t.g_prop, t.h_prop = final.z_prop, final.u_prop, final.g_prop, final.h_prop
        else:
            t.z_prop, t.u_prop, t.g_prop, t.h_prop = init.z_prop, init.u_prop, init.g_prop, init.h_prop
        t.log_w = log_w
        rho = init.rho + final.rho
        t.valid = (_no_uturn(init.ps_beg, final.ps_end, rho)
                   and _no_uturn(init.ps_beg, final.ps_beg, init.rho + final.p_beg)
                   and _no_uturn(init.ps_end, final.ps_end, final.rho + init.p_end))
        t.z_end, t.p_end, t.g_end, t.ps_end = final.z_end, final.p_end, final.g_end, final.ps_end
        t.p_beg, t.ps_beg, t.rho = init.p_beg, init.ps_beg, rho
        return t

    def _transition(self, ig: _Integrator, z: np.ndarray, u: float, g: np.ndarray, eps: float) -> Generator:
        p = ig.momentum()
        ps = ig.p_sharp(p)
        h0 = u + 0.5 * float(p @ ps)
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
                fwd = (t.z_end, t.p_end, t.g_end)
                rho_fwd = t.rho
                p_fwd_bck, ps_fwd_bck = t.p_beg, t.ps_beg
                p_fwd_fwd, ps_fwd_fwd = t.p_end, t.ps_end
            else:
                rho_fwd = rho
                p_fwd_bck, ps_fwd_bck = p_bck_bck, ps_bck_bck
                t = yield from self._build(ig, depth, bck[0], bck[1], bck[2], -eps, h0)
                bck = (t.z_end, t.p_end, t.g_end)
                rho_bck = t.rho
                p_bck_fwd, ps_bck_fwd = t.p_beg, t.ps_beg
                p_bck_bck, ps_bck_bck = t.p_end, t.ps_end
            if not t.valid:
                break
            depth += 1
            if t.log_w > log_sum_w or uniform() < math.exp(t.log_w - log_sum_w):
                sample = (t.z_prop, t.u_prop, t.g_prop, t.h_prop)
                moved = True
            log_sum_w = _logaddexp(log_sum_w, t.log_w)
            rho = rho_bck + rho_fwd
            if not (_no_uturn(ps_bck_bck, ps_fwd_fwd, rho)
                    and _no_uturn(ps_bck_bck, ps_fwd_bck, rho_bck + p_fwd_bck)
                    and _no_uturn(ps_bck_fwd, ps_fwd_fwd, rho_fwd + p_bck_fwd)):
                break
        n = ig.n_leapfrog
        z, u, g, energy = sample
        return z, u, g, TransitionInfo(ig.sum_accept / max(n, 1), moved, ig.diverging, n, depth, energy, eps)


def _no_uturn(ps_minus: np.ndarray, ps_plus: np.ndarray, rho: np.ndarray) -> bool:
    return float(ps_plus @ rho) > 0 and float(ps_minus @ rho) > 0
