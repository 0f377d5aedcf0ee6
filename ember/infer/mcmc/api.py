"""The MCMC runner: warm-up, sampling, several chains, samples, summaries and diagnostics.

``run`` reads as the algorithm: for each chain, ``state = kernel.init(...)``; then per iteration
``state, info = kernel.transition(state)``, during warm-up ``state = kernel.adapt(state, info)``,
and record. Chains are values (see :mod:`ember.infer.mcmc.hmc`), so they do not share anything
but the kernel's configuration and the model's potential (built, and compiled, once per run).

By default several chains advance together (``chain_method="vectorized"``, see
:mod:`ember.infer.mcmc.vectorized`): no worker processes, so nothing hangs in notebooks or on
Windows, and one batched evaluation of the model serves every chain. Every chain's random key
comes from Ember's random stream (``ember.set_rng_seed``), drawn in the same order in every
``chain_method``, so a chain's draws do not depend on how the chains were run (up to rounding in
the batched evaluation). Each chain gets its own starting point from the kernel's
``init_strategy`` (or ``initial_params``) and its own adaptation.

``summary`` and ``diagnostics`` mean what Pyro's mean: the interval under the percentile labels
is the highest posterior density interval, and ``"acceptance rate"`` is, per chain, the fraction
of post-warm-up transitions that moved the chain (for NUTS: that took a new point from the
trajectory). The mean acceptance *statistic* (what step-size adaptation targets) is
``get_extra_fields()["accept_prob"].mean()``.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch

from ember.infer.mcmc.hmc import HMC
from ember.infer.mcmc.mcmc_kernel import MCMCKernel
from ember.infer.mcmc.threads import ThreadChoice
from ember.infer.mcmc.util import diagnostics as _site_diagnostics
from ember.infer.mcmc.util import format_summary, summary
from ember.primitives import validation_enabled
from ember.util import check_kwargs

__all__ = ["MCMC", "StreamingMCMC"]

_STAT_FIELDS = ("accept_prob", "accepted", "diverging", "num_steps", "tree_depth", "step_size", "potential_energy", "energy")
_BOOL_FIELDS = ("accepted", "diverging")
_INT_FIELDS = ("num_steps", "tree_depth")
_VALID = ("kernel", "num_samples", "warmup_steps", "initial_params", "num_chains", "hook_fn", "mp_context", "disable_progbar",
          "disable_validation", "transforms", "save_params", "chain_method", "thinning", "num_threads")
_IGNORED = {"mp_context": "Ember's worker processes (chain_method='parallel') are always started with 'spawn'"}


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"MCMC: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


class _Recorder:
    """One chain's record of its run: the kept draws and statistics, divergences, acceptance."""

    def __init__(self, mcmc: MCMC, chain: int, dim: int, bar: Any, t0: float, owns_bar: bool = True) -> None:
        self.mcmc = mcmc
        self.chain = chain
        self.owns_bar = owns_bar  # it writes the bar's description and statistics (one chain per bar)
        self.warmup = mcmc.warmup_steps
        self.thinning = mcmc.thinning
        n_keep = len(range(self.warmup, self.warmup + mcmc.num_samples, self.thinning))
        self.draws = np.empty((n_keep, dim))
        self.stats = {k: np.empty(n_keep, dtype=bool if k in _BOOL_FIELDS else np.int64 if k in _INT_FIELDS else np.float64)
                      for k in _STAT_FIELDS}
        self.bar = bar
        self.show = not mcmc.disable_progbar
        self.t0 = t0
        self.tag = "" if mcmc.num_chains == 1 else f" [{chain}]"
        self.divergent: list[int] = []
        self.n_accepted = 0
        self.acc_sum = 0.0
        self.warmup_grads = 0
        self.j = 0
        self.state: Any = None

    def record(self, it: int, state: Any, info: Any) -> None:
        """After iteration ``it`` (0-based, warm-up included) produced ``state`` with ``info``."""
        warmup = self.warmup
        if it < warmup:
            self.warmup_grads += info.num_steps
        else:
            self.n_accepted += info.accepted
            if info.diverging:
                self.divergent.append(it - warmup)
            if (it - warmup) % self.thinning == 0:
                j = self.j
                self._keep(j, state.z)
                for k, v in zip(_STAT_FIELDS, (info.accept_prob, info.accepted, info.diverging, info.num_steps,
                                               info.tree_depth, info.step_size, state.potential_energy, info.energy)):
                    self.stats[k][j] = v
                self.j = j + 1
        self.acc_sum += info.accept_prob
        mcmc = self.mcmc
        if mcmc.hook_fn is not None:
            stage, i = ("Warmup", it) if it < warmup else ("Sample", it - warmup)
            mcmc.hook_fn(mcmc.kernel, mcmc.kernel.unconstrained_params(state), stage + self.tag, i)
        if self.show and self.owns_bar:
            bar = self.bar
            if it == warmup:
                bar.set_description(bar.desc.replace("warmup", "sample").rstrip(": "))
                self.acc_sum = info.accept_prob
            if it % 20 == 0 or it == warmup + mcmc.num_samples - 1:
                n_acc = it + 1 if it < warmup else it - warmup + 1
                bar.set_postfix_str(f"step size {info.step_size:.2e}, acc. prob {self.acc_sum / n_acc:.3f}, "
                                    f"divergences {len(self.divergent)}", refresh=False)
        if self.show:
            self.bar.update()

    def _keep(self, j: int, z: np.ndarray) -> None:
        """Keep the ``j``-th kept draw ``z [D]`` (its unconstrained position)."""
        self.draws[j] = z

    def finish(self, state: Any) -> None:
        self.state = state
        self.wall_time = time.perf_counter() - self.t0

    def store(self) -> None:
        """Append this chain's results to the MCMC object's (chains in order)."""
        m = self.mcmc
        state = self.state
        if self.draws is not None:
            m._z.append(torch.from_numpy(self.draws).to(m._potential.dtype))
        m._stats.append(self.stats)
        m.states.append(state)
        m.step_sizes.append(state.step_size)
        m.inverse_mass_matrices.append(torch.from_numpy(state.inverse_mass_matrix.copy()).to(m._potential.dtype))
        m.kernel._last_state = state
        m.wall_times.append(self.wall_time)
        m._warmup_grad_evals.append(self.warmup_grads)
        m._divergences.append(self.divergent)
        m._acceptance.append(self.n_accepted / m.num_samples)


class MCMC:
    """Run an MCMC kernel (:class:`~ember.infer.mcmc.NUTS` or :class:`~ember.infer.mcmc.HMC`).

    Args:
        kernel: the kernel.
        num_samples: draws kept per chain (after warm-up, before thinning).
        warmup_steps: adaptation iterations per chain, discarded (default ``num_samples``).
        initial_params: unconstrained starting values by site name (as in Pyro); a leading
            ``num_chains`` dim gives each chain its own. Sites not named use the kernel's
            ``init_strategy``.
        num_chains: number of chains (see ``chain_method``).
        hook_fn: called after every iteration as ``hook_fn(kernel, params, stage, i)`` (Pyro's
            signature): ``params`` the unconstrained position by site, ``stage`` ``"Warmup"`` or
            ``"Sample"`` (``"Warmup [c]"``, ``"Sample [c]"`` for chain ``c`` of several), ``i`` the
            iteration's index within its stage.
        disable_progbar: no progress bar.
        disable_validation: switch Ember's and torch's argument checks off while sampling (the
            model is checked once, at initialisation, either way).
        transforms: ``{site: Transform}`` from constrained to unconstrained values (Pyro's
            direction), given to the kernel.
        save_params: the site names to keep (default: every latent site).
        chain_method: ``"vectorized"`` (default): all chains advance together in this process, one
            batched potential-and-gradient evaluation per leapfrog step for every chain (the chain
            dim is a plate left of the model's plates, or ``torch.func.vmap`` over the chains for a
            model that cannot take one, e.g. ``x @ w`` with a vector latent ``w``), each chain
            with its own step size, mass matrix, adaptation and NUTS tree; a chain whose trajectory is done starts its next
            iteration at once, so no chain waits for another's longer tree. A model that cannot be
            vectorized (it mixes values across the chain dim, or fails with one; checked against
            the single-chain potential at the starting points) runs its chains sequentially, and
            ``compile_status`` says why. ``"sequential"``: one chain after another.
            ``"parallel"``: one spawned worker process per chain (see
            :mod:`ember.infer.mcmc.parallel` for what it needs of the model).
        num_threads: torch's intra-op threads while sampling. ``None`` (default): Ember chooses,
            by timing the potential with one thread and with the current setting during set-up
            (small models run fastest on one, and far faster when other processes keep the cores
            busy); ``thread_status`` says what it chose and why. An integer is used as given.
            The thread setting is restored when ``run`` returns.
        thinning: keep every ``thinning``-th draw.
        mp_context: Pyro's option, accepted without effect (a warning says so).

    An unknown keyword raises ``TypeError`` naming the closest valid one.

    After :meth:`run`: ``compile_status`` (per chain: how the potential ran, and how the chains
    were run, with the reason when they could not be vectorized), ``thread_status`` (the thread
    count used and why), ``states`` (each chain's final :class:`~ember.infer.mcmc.HMCState`),
    ``step_sizes``, ``inverse_mass_matrices``, ``wall_times``.
    """

    _recorder = _Recorder  # what records each chain's run (StreamingMCMC folds draws into statistics instead)

    def __init__(self, kernel: HMC, num_samples: int, warmup_steps: int | None = None, initial_params: dict | None = None,
                 num_chains: int = 1, hook_fn: Any = None, mp_context: Any = None, disable_progbar: bool = False,
                 disable_validation: bool = True, transforms: dict | None = None, save_params: Any = None,
                 chain_method: str = "vectorized", thinning: int = 1, num_threads: int | None = None, **kwargs: Any) -> None:
        check_kwargs("MCMC", {**kwargs, **({"mp_context": mp_context} if mp_context is not None else {})},
                     valid=_VALID, ignored=_IGNORED)
        if not isinstance(kernel, (HMC, MCMCKernel)):
            raise TypeError(f"MCMC: kernel must be an ember.infer.mcmc kernel (NUTS, HMC, or a subclass of MCMCKernel such as "
                            f"RandomWalkKernel), got {type(kernel).__name__}")
        self.kernel = kernel
        self.num_samples = _check_int("num_samples", num_samples, 1)
        self.warmup_steps = self.num_samples if warmup_steps is None else _check_int("warmup_steps", warmup_steps, 0)
        self.num_chains = _check_int("num_chains", num_chains, 1)
        self.thinning = _check_int("thinning", thinning, 1)
        if chain_method not in ("sequential", "parallel", "vectorized"):
            raise ValueError(f"MCMC: unknown chain_method {chain_method!r}; use 'vectorized' (the default), 'sequential' "
                             f"or 'parallel'")
        self.chain_method = chain_method
        if num_threads is not None:
            num_threads = _check_int("num_threads", num_threads, 1)
        self.num_threads = num_threads
        self.thread_status = "not run"
        self._threads: Any = None
        if transforms is not None:
            kernel.transforms = transforms
        if save_params is not None:
            if isinstance(save_params, str) or not all(isinstance(n, str) for n in save_params):
                raise TypeError(f"MCMC: save_params must be a list of site names, got {save_params!r}")
            save_params = list(save_params)
        self.save_params = save_params
        self.initial_params = initial_params
        self.hook_fn = hook_fn
        self.disable_progbar = disable_progbar
        self.disable_validation = disable_validation
        self._z: list[torch.Tensor] = []
        self._stats: list[dict[str, np.ndarray]] = []
        self._potential: Any = None
        self.states: list[Any] = []  # each chain's final state (kernel.transition can continue from it)
        self.step_sizes: list[float] = []
        self.inverse_mass_matrices: list[torch.Tensor] = []
        self.wall_times: list[float] = []
        self._warmup_grad_evals: list[int] = []
        self._divergences: list[list[int]] = []  # per chain: post-warm-up iteration indices (Pyro's)
        self._acceptance: list[float] = []  # per chain: Pyro's acceptance rate
        self.compile_status: list[str] = []  # per chain: "compiled (<runner>)" or "eager: <why>", then how chains ran
        self._generic: list[dict[str, torch.Tensor]] = []  # an MCMCKernel's chains: constrained draws by site, [S, ...]

    # ---- running -----------------------------------------------------------------------------------
    def _chain_initial_params(self, chain: int) -> dict | None:
        if not self.initial_params:
            return None
        out = {}
        for name, v in self.initial_params.items():
            v = torch.as_tensor(v)
            if self.num_chains > 1 and v.dim() > 0 and v.shape[0] == self.num_chains:
                # a per-chain value; a site whose own leading dim equals num_chains is ambiguous,
                # and Pyro's rule (leading dim = chains when num_chains > 1) applies
                v = v[chain]
            out[name] = v
        return out

    def run(self, *args: Any, **kwargs: Any) -> MCMC:
        """Run every chain on ``model(*args, **kwargs)``; returns ``self``."""
        self._z, self._stats, self.states, self.step_sizes, self.inverse_mass_matrices = [], [], [], [], []
        self.wall_times, self._warmup_grad_evals, self._divergences, self._acceptance = [], [], [], []
        self.compile_status, self._generic = [], []
        if isinstance(self.kernel, MCMCKernel):
            self._run_generic(args, kwargs)
            return self
        with ThreadChoice(self.num_threads) as threads:
            self._threads = threads
            fallback = None
            if self.chain_method == "vectorized" and self.num_chains > 1:
                fallback = self._run_vectorized(args, kwargs)
                if fallback is None:
                    self.thread_status = threads.status
                    return self
            if self.chain_method == "parallel" and self.num_chains > 1:
                from ember.infer.mcmc.parallel import run_parallel

                run_parallel(self, args, kwargs)
                self.thread_status = threads.status
                return self
            self._run_sequential(args, kwargs, fallback)
            self.thread_status = threads.status
        return self


    def _run_sequential(self, args: tuple, kwargs: dict, fallback: str | None) -> None:
        from tqdm import tqdm

        kernel = self.kernel
        warmup, total = self.warmup_steps, self.warmup_steps + self.num_samples
        validate = not self.disable_validation
        potential = None
        for chain in range(self.num_chains):
            t0 = time.perf_counter()
            initial = self._chain_initial_params(chain)
            desc = "" if self.num_chains == 1 else f"chain {chain + 1}/{self.num_chains} "
            # the set-up (a starting point, the compiled potential) can take a while on big models
            bar = tqdm(total=total, desc=desc + "setup", disable=self.disable_progbar, dynamic_ncols=True,
                       mininterval=0.3, unit="it")
            try:
                if potential is None:
                    potential = kernel.make_potential(args, kwargs, initial)
                rng_key = int(torch.randint(0, 2**62, ()).item())
                state = kernel.init(potential, warmup, initial, rng_key=rng_key, validate_while_sampling=validate)
            except BaseException:
                bar.close()
                raise
            if chain == 0:
                self._threads.choose(lambda z=state.z: kernel._pot(z), potential.dim)
            status = kernel.compile_status
            if fallback is not None:
                status += f"; sequential chains: {fallback}"
            self.compile_status.append(status)
            self._potential = potential
            bar.set_description(desc + "warmup", refresh=False)
            rec = self._recorder(self, chain, state.z.size, bar, t0)
            with validation_enabled(validate):
                for it in range(total):
                    state, info = kernel.transition(state)
                    if it < warmup:
                        state = kernel.adapt(state, info)
                    rec.record(it, state, info)
            bar.close()
            rec.finish(state)
            rec.store()

    def _run_vectorized(self, args: tuple, kwargs: dict) -> str | None:
        """All chains advance together (see :mod:`ember.infer.mcmc.vectorized`). Returns None when
        done, or why the model cannot be vectorized (nothing has been recorded then)."""
        from tqdm import tqdm

        from ember.infer.mcmc.vectorized import prepare_vectorized, run_chains

        kernel = self.kernel
        C = self.num_chains
        warmup, total = self.warmup_steps, self.warmup_steps + self.num_samples
        validate = not self.disable_validation
        t0 = time.perf_counter()
        bar = tqdm(total=total * C, desc=f"{C} chains setup", disable=self.disable_progbar, dynamic_ncols=True,
                   mininterval=0.3, unit="it")
        try:
            prepared = prepare_vectorized(kernel, args, kwargs, [self._chain_initial_params(c) for c in range(C)],
                                          warmup, validate)
        except BaseException:
            bar.close()
            raise
        if isinstance(prepared, str):
            bar.close()
            return prepared
        batched, states, status = prepared
        self._threads.choose(lambda z=np.stack([s.z for s in states]): batched.potential_and_grad_numpy(z), batched.dim * C)
        self._potential = batched.single
        bar.set_description(f"{C} chains warmup", refresh=False)
        recs = [self._recorder(self, c, states[c].z.size, bar, t0, owns_bar=c == 0) for c in range(C)]
        with validation_enabled(validate):
            finals = run_chains(kernel, batched, states, warmup, total, recs)
        bar.close()
        for c in range(C):
            recs[c].finish(finals[c])
            recs[c].store()
            self.compile_status.append(status)
        return None

    def _run_generic(self, args: tuple, kwargs: dict) -> None:
        """A kernel of one's own (:class:`~ember.infer.mcmc.mcmc_kernel.MCMCKernel`, Pyro's protocol):
        per chain, ``setup``, then ``params = kernel.sample(params)`` per iteration, ``end_warmup``
        after the warm-up ones, ``cleanup``; the kept draws constrained with ``kernel.transforms``."""
        from tqdm import tqdm

        kernel = self.kernel
        warmup, total = self.warmup_steps, self.warmup_steps + self.num_samples
        how = "a kernel of one's own (MCMCKernel): its chains run one after another"
        if self.num_chains > 1 and self.chain_method != "sequential":
            how += f" (chain_method={self.chain_method!r} needs Ember's HMC or NUTS)"
        for chain in range(self.num_chains):
            given = self._chain_initial_params(chain)
            if given is not None:
                kernel.initial_params = given
            desc = "" if self.num_chains == 1 else f"chain {chain + 1}/{self.num_chains} "
            t0 = time.perf_counter()
            with validation_enabled(not self.disable_validation):
                kernel.setup(warmup, *args, **kwargs)
                params = kernel.initial_params
                if params is None:
                    raise ValueError(f"MCMC: {type(kernel).__name__}.setup left no initial_params; give MCMC(initial_params=...) "
                                     f"or set kernel.initial_params in setup")
                if warmup == 0:
                    kernel.end_warmup()
                kept: list[dict[str, torch.Tensor]] = []
                with tqdm(total=total, desc=desc + "warmup", disable=self.disable_progbar, dynamic_ncols=True, mininterval=0.3,
                          unit="it") as bar:
                    for it in range(total):
                        params = kernel.sample(params)
                        stage, i = ("Warmup", it) if it < warmup else ("Sample", it - warmup)
                        if self.hook_fn is not None:
                            self.hook_fn(kernel, params, stage if self.num_chains == 1 else f"{stage} [{chain}]", i)
                        if it == warmup - 1:
                            kernel.end_warmup()
                            bar.set_description(desc + "sample", refresh=False)
                        if it >= warmup and (it - warmup) % self.thinning == 0:
                            kept.append({k: torch.as_tensor(v).detach().clone() for k, v in params.items()})
                        bar.update()
                        if not self.disable_progbar and it % 20 == 0:
                            bar.set_postfix(kernel.logging(), refresh=False)
            diag = kernel.diagnostics()
            kernel.cleanup()
            transforms = getattr(kernel, "transforms", None) or {}
            self._generic.append({k: (transforms[k].inv(torch.stack([d[k] for d in kept])) if k in transforms
                                      else torch.stack([d[k] for d in kept])) for k in kept[0]})
            self._divergences.append([])
            self._acceptance.append(float(diag.get("acceptance rate", float("nan"))))
            self.wall_times.append(time.perf_counter() - t0)
            self.compile_status.append(how)
        self.thread_status = "torch's setting (a kernel of one's own: Ember does not choose its threads)"

    def _require_run(self) -> None:
        if not self._z and not self._generic:
            raise RuntimeError("MCMC: no draws yet; call mcmc.run(*model_args) first")

    # ---- results -------------------------------------------------------------------------------------
    def get_samples(self, num_samples: int | None = None, group_by_chain: bool = False) -> dict[str, torch.Tensor]:
        """Constrained draws by site: ``[num_chains * num_draws, ...]``, or
        ``[num_chains, num_draws, ...]`` with ``group_by_chain=True``. ``num_samples`` picks that
        many draws at random (without replacement) from the pooled chains."""
        self._require_run()
        if self._generic:
            values = {k: torch.stack([c[k] for c in self._generic]) for k in self._generic[0]}
        else:
            z = torch.stack(self._z)  # [C, S, D]
            values = self._potential.constrain(z)
        if self.save_params is not None:
            unknown = [n for n in self.save_params if n not in values]
            if unknown:
                raise ValueError(f"MCMC: save_params names {unknown}, which are not latent sites; latent sites: {list(values)}")
            values = {k: v for k, v in values.items() if k in self.save_params}
        if not group_by_chain:
            values = {k: v.reshape((-1,) + v.shape[2:]) for k, v in values.items()}
            if num_samples is not None:
                total = next(iter(values.values())).shape[0] if values else 0
                if not 0 < num_samples <= total:
                    raise ValueError(f"MCMC.get_samples: num_samples must be in [1, {total}], got {num_samples}")
                idx = torch.randperm(total)[:num_samples]
                values = {k: v[idx] for k, v in values.items()}
        elif num_samples is not None:
            raise ValueError("MCMC.get_samples: num_samples and group_by_chain=True cannot be combined")
        return values

    def get_extra_fields(self, group_by_chain: bool = False) -> dict[str, np.ndarray]:
        """Per kept draw, the statistics of the transition that produced it: ``accept_prob`` (the
        acceptance statistic), ``accepted`` (whether the chain moved), ``diverging``, ``num_steps``
        (leapfrog steps, i.e. gradient evaluations), ``tree_depth``, ``step_size``,
        ``potential_energy``, ``energy`` (the Hamiltonian at the draw). ``[num_chains * draws]``,
        or ``[num_chains, draws]`` with ``group_by_chain=True``. Empty for a kernel of one's own
        (:class:`~ember.infer.mcmc.mcmc_kernel.MCMCKernel`)."""
        self._require_run()
        if self._generic:
            return {}
        out = {k: np.stack([s[k] for s in self._stats]) for k in _STAT_FIELDS}
        if not group_by_chain:
            out = {k: v.reshape(-1) for k, v in out.items()}
        return out

    @property
    def num_divergences(self) -> int:
        """Divergent transitions after warm-up, every chain, thinned-out iterations included."""
        self._require_run()
        return sum(len(d) for d in self._divergences)

    @property
    def num_grad_evals(self) -> int:
        """Gradient evaluations spent on the kept draws (warm-up not counted)."""
        self._require_run()
        return int(sum(s["num_steps"].sum() for s in self._stats))  # 0 for a kernel of one's own

    @property
    def num_grad_evals_warmup(self) -> int:
        """Gradient evaluations spent in warm-up (step-size searches not counted)."""
        self._require_run()
        return int(sum(self._warmup_grad_evals))

    def diagnostics(self) -> dict[str, Any]:
        """Pyro's diagnostics: ``{site: {"n_eff": tensor, "r_hat": tensor}}`` (split R-hat, each of
        the site's shape), ``"divergences": {"chain 0": [post-warm-up iteration indices], ...}`` and
        ``"acceptance rate": {"chain 0": fraction of post-warm-up transitions that moved, ...}``."""
        out: dict[str, Any] = dict(_site_diagnostics(self.get_samples(group_by_chain=True)))
        out["divergences"] = {f"chain {i}": list(d) for i, d in enumerate(self._divergences)}
        out["acceptance rate"] = {f"chain {i}": a for i, a in enumerate(self._acceptance)}
        return out

    def summary(self, prob: float = 0.9) -> None:
        """Print Pyro's table: per latent element the mean, std, median, the ``prob`` highest
        posterior density interval (under the labels ``5.0%``/``95.0%`` for 0.9), n_eff and
        r_hat; then the number of divergences."""
        self._require_run()
        stats = summary(self.get_samples(group_by_chain=True), prob=prob)
        print(format_summary(stats, num_divergences=self.num_divergences))

    def to_arviz(self, **kwargs: Any) -> Any:
        """An ``arviz.InferenceData`` (needs the optional ``arviz`` package); keywords as in
        :func:`ember.infer.mcmc.arviz.to_inference_data`."""
        from ember.infer.mcmc.arviz import to_inference_data

        return to_inference_data(self, **kwargs)

    @property
    def observed(self) -> dict[str, torch.Tensor]:
        self._require_run()
        return {} if self._potential is None else dict(self._potential.observed)

    def __repr__(self) -> str:
        ran = len(self._z) or len(self._generic)
        state = f"{ran} chain(s) run" if ran else "not run"
        return (f"MCMC({type(self.kernel).__name__}, num_samples={self.num_samples}, warmup_steps={self.warmup_steps}, "
                f"num_chains={self.num_chains}; {state})")


class _StreamingRecorder(_Recorder):
    """A chain's record that folds each kept draw, constrained, into the run's statistics (keyed
    ``(chain, site)``) instead of keeping it."""

    def __init__(self, mcmc: Any, chain: int, dim: int, bar: Any, t0: float, owns_bar: bool = True) -> None:
        super().__init__(mcmc, chain, 0, bar, t0, owns_bar)
        self.draws = None  # no draws are kept

    def _keep(self, j: int, z: np.ndarray) -> None:
        m = self.mcmc
        values = m._potential.constrain(torch.from_numpy(z).to(m._potential.dtype))
        if m.save_params is not None:
            values = {k: v for k, v in values.items() if k in m.save_params}
        m._statistics.update({(self.chain, k): v for k, v in values.items()})


class StreamingMCMC(MCMC):
    """MCMC that keeps statistics of the draws instead of the draws (Pyro's ``StreamingMCMC``):
    for a model whose draws would not fit in memory. Each kept draw, constrained, updates
    ``statistics`` (a :class:`~ember.ops.streaming.StatsOfDict`, default: count, mean and variance
    per site) under the key ``(chain, site)``.

    Takes :class:`MCMC`'s arguments (HMC or NUTS; not ``chain_method="parallel"``) and
    ``statistics``. After :meth:`run`: :meth:`get_statistics` and :meth:`diagnostics`;
    ``get_samples`` has nothing to return.
    """

    _recorder = _StreamingRecorder

    def __init__(self, kernel: HMC, num_samples: int, warmup_steps: int | None = None, initial_params: dict | None = None,
                 statistics: Any = None, num_chains: int = 1, hook_fn: Any = None, disable_progbar: bool = False,
                 disable_validation: bool = True, transforms: dict | None = None, save_params: Any = None,
                 chain_method: str = "vectorized", **kwargs: Any) -> None:
        from ember.ops.streaming import CountMeanVarianceStats, StatsOfDict

        if not isinstance(kernel, HMC):
            raise TypeError(f"StreamingMCMC: kernel must be Ember's HMC or NUTS, got {type(kernel).__name__}")
        if chain_method == "parallel":
            raise ValueError("StreamingMCMC: chain_method='parallel' is not supported (its workers return their draws); use "
                             "'vectorized' or 'sequential'")
        super().__init__(kernel, num_samples, warmup_steps, initial_params, num_chains=num_chains, hook_fn=hook_fn,
                         disable_progbar=disable_progbar, disable_validation=disable_validation, transforms=transforms,
                         save_params=save_params, chain_method=chain_method, **kwargs)
        if statistics is None:
            statistics = StatsOfDict(default=CountMeanVarianceStats)
        self._prototype_statistics = statistics
        self._statistics = copy.deepcopy(statistics)

    def run(self, *args: Any, **kwargs: Any) -> StreamingMCMC:
        """Run every chain on ``model(*args, **kwargs)``, folding the kept draws into the statistics
        (afresh for each run); returns ``self``."""
        self._statistics = copy.deepcopy(self._prototype_statistics)
        super().run(*args, **kwargs)
        return self

    def _require_run(self) -> None:
        if not self._divergences:
            raise RuntimeError("StreamingMCMC: nothing run yet; call run(*model_args) first")

    def get_samples(self, num_samples: int | None = None, group_by_chain: bool = False) -> dict[str, torch.Tensor]:
        raise RuntimeError("StreamingMCMC keeps statistics, not draws: use get_statistics() (or MCMC for the draws)")

    def get_statistics(self, group_by_chain: bool = True) -> dict:
        """``{(chain, site): statistic}`` (each a dict such as ``{"count", "mean", "variance"}``; the
        mean and variance of the site's shape), or with ``group_by_chain=False`` ``{site: statistic}``
        of every chain's draws together."""
        self._require_run()
        if group_by_chain:
            return self._statistics.get()
        merged: dict = {}
        for (_, name), stat in self._statistics.stats.items():
            merged[name] = merged[name].merge(stat) if name in merged else stat
        return {k: v.get() for k, v in merged.items()}

    def diagnostics(self) -> dict[str, Any]:
        """``{site: {"r_hat": tensor}}`` from each chain's mean and variance (Gelman-Rubin's
        potential scale reduction, unsplit: the draws are not kept), when the statistics have
        them; plus ``"divergences"`` and ``"acceptance rate"`` per chain, as :meth:`MCMC.diagnostics`."""
        from ember.infer.mcmc.util import diagnostics_from_stats

        self._require_run()
        out: dict[str, Any] = dict(diagnostics_from_stats(self._statistics.get(), self.num_samples, self.num_chains))
        out["divergences"] = {f"chain {i}": list(d) for i, d in enumerate(self._divergences)}
        out["acceptance rate"] = {f"chain {i}": a for i, a in enumerate(self._acceptance)}
        return out
