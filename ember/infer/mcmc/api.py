"""The MCMC runner: warm-up, sampling, several chains, samples, summaries and diagnostics.

Chains run one after another in this process (``chain_method="sequential"``): no worker
processes, so nothing hangs in notebooks or on Windows, and every chain's random stream comes
from Ember's (``ember.set_rng_seed``). Each chain gets its own starting point from the
kernel's ``init_strategy`` (or ``initial_params``) and its own adaptation.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import torch

from ember.infer.mcmc.diagnostics import effective_sample_size, format_summary, split_gelman_rubin, summary
from ember.infer.mcmc.hmc import HMC
from ember.primitives import validation_enabled

__all__ = ["MCMC"]

_STAT_FIELDS = ("accept_prob", "diverging", "num_steps", "tree_depth", "step_size", "potential_energy", "energy")


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"MCMC: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


class MCMC:
    """Run an MCMC kernel (:class:`~ember.infer.mcmc.NUTS` or :class:`~ember.infer.mcmc.HMC`).

    Args:
        kernel: the kernel.
        num_samples: draws kept per chain (after warm-up, before thinning).
        warmup_steps: adaptation iterations per chain, discarded (default ``num_samples``).
        initial_params: unconstrained starting values by site name (as in Pyro); a leading
            ``num_chains`` dim gives each chain its own. Sites not named use the kernel's
            ``init_strategy``.
        num_chains: number of chains (run one after another in this process).
        chain_method: ``"sequential"``; ``"parallel"`` is accepted and runs sequentially too
            (with a warning), since worker processes are what makes other libraries hang.
        disable_progbar: no progress bar.
        disable_validation: switch Ember's and torch's argument checks off while sampling (the
            model is checked once, at initialisation, either way).
        thinning: keep every ``thinning``-th draw.
    """

    def __init__(self, kernel: HMC, num_samples: int, warmup_steps: int | None = None, initial_params: dict | None = None,
                 num_chains: int = 1, hook_fn: Any = None, mp_context: Any = None, disable_progbar: bool = False,
                 disable_validation: bool = True, transforms: dict | None = None, save_params: Any = None,
                 chain_method: str = "sequential", thinning: int = 1) -> None:
        if not isinstance(kernel, HMC):
            raise TypeError(f"MCMC: kernel must be an ember.infer.mcmc kernel (NUTS or HMC), got {type(kernel).__name__}")
        self.kernel = kernel
        self.num_samples = _check_int("num_samples", num_samples, 1)
        self.warmup_steps = self.num_samples if warmup_steps is None else _check_int("warmup_steps", warmup_steps, 0)
        self.num_chains = _check_int("num_chains", num_chains, 1)
        self.thinning = _check_int("thinning", thinning, 1)
        if chain_method not in ("sequential", "parallel", "vectorized"):
            raise ValueError(f"MCMC: unknown chain_method {chain_method!r}; use 'sequential'")
        if chain_method != "sequential" and self.num_chains > 1:
            warnings.warn(f"MCMC: chain_method={chain_method!r}: Ember runs chains one after another in this process",
                          stacklevel=2)
        self.chain_method = "sequential"
        if transforms is not None:
            kernel.transforms = transforms
        self.initial_params = initial_params
        self.hook_fn = hook_fn
        self.disable_progbar = disable_progbar
        self.disable_validation = disable_validation
        self._z: list[torch.Tensor] = []
        self._stats: list[dict[str, np.ndarray]] = []
        self._potential: Any = None
        self.step_sizes: list[float] = []
        self.inverse_mass_matrices: list[torch.Tensor] = []
        self.wall_times: list[float] = []
        self._warmup_grad_evals: list[int] = []
        self.compile_status: list[str] = []  # per chain: "compiled (<runner>)" or "eager: <why>"

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
        from tqdm import tqdm

        kernel = self.kernel
        self._z, self._stats, self.step_sizes, self.inverse_mass_matrices, self.wall_times = [], [], [], [], []
        self._warmup_grad_evals = []
        self.compile_status = []
        total = self.warmup_steps + self.num_samples
        keep = range(self.warmup_steps, total, self.thinning)
        n_keep = len(keep)
        for chain in range(self.num_chains):
            t0 = time.perf_counter()
            initial = self._chain_initial_params(chain)
            desc = "" if self.num_chains == 1 else f"chain {chain + 1}/{self.num_chains} "
            # the set-up (a starting point, the compiled potential) can take a while on big models
            bar = tqdm(total=total, desc=desc + "setup", disable=self.disable_progbar, dynamic_ncols=True,
                       mininterval=0.3, unit="it")
            potential = kernel.make_potential(args, kwargs, initial)
            seed = int(torch.randint(0, 2**62, ()).item())
            try:
                z, u, g = kernel.setup_chain(potential, self.warmup_steps, initial, seed,
                                             validate_while_sampling=not self.disable_validation)
            except BaseException:
                bar.close()
                raise
            self.compile_status.append(kernel.compile_status)
            self._potential = potential
            draws = np.empty((n_keep, z.size))
            stats = {k: np.empty(n_keep, dtype=bool if k == "diverging" else np.int64 if k in ("num_steps", "tree_depth")
                                 else np.float64) for k in _STAT_FIELDS}
            bar.set_description(desc + "warmup", refresh=False)
            divergences = 0
            acc_sum = 0.0
            warmup_grads = 0
            j = 0
            with validation_enabled(not self.disable_validation):
                for it in range(total):
                    z, u, g, st = kernel.step(it, z, u, g)
                    divergences += st["diverging"]
                    acc_sum += st["accept_prob"]
                    if it < self.warmup_steps:
                        warmup_grads += st["num_steps"]
                    if it >= self.warmup_steps and (it - self.warmup_steps) % self.thinning == 0:
                        draws[j] = z
                        for k in _STAT_FIELDS:
                            stats[k][j] = st[k]
                        j += 1
                    if self.hook_fn is not None:
                        self.hook_fn(kernel, torch.from_numpy(z), "Warmup" if it < self.warmup_steps else "Sample", it)
                    if not self.disable_progbar:
                        if it == self.warmup_steps:
                            bar.set_description(desc + "sample")
                            acc_sum = st["accept_prob"]
                        bar.update()
                        if it % 20 == 0 or it == total - 1:
                            n_acc = it + 1 if it < self.warmup_steps else it - self.warmup_steps + 1
                            bar.set_postfix_str(f"step size {st['step_size']:.2e}, acc. prob {acc_sum / n_acc:.3f}, "
                                                f"divergences {divergences}", refresh=False)
            bar.close()
            self._z.append(torch.from_numpy(draws).to(potential.dtype))
            self._stats.append(stats)
            self.step_sizes.append(kernel._step_size)
            self.inverse_mass_matrices.append(kernel.inverse_mass_matrix.clone())
            self.wall_times.append(time.perf_counter() - t0)
            self._warmup_grad_evals.append(warmup_grads)
        return self

    def _require_run(self) -> None:
        if not self._z:
            raise RuntimeError("MCMC: no draws yet; call mcmc.run(*model_args) first")

    # ---- results -------------------------------------------------------------------------------------
    def get_samples(self, num_samples: int | None = None, group_by_chain: bool = False) -> dict[str, torch.Tensor]:
        """Constrained draws by site: ``[num_chains * num_draws, ...]``, or
        ``[num_chains, num_draws, ...]`` with ``group_by_chain=True``. ``num_samples`` picks that
        many draws at random (without replacement) from the pooled chains."""
        self._require_run()
        z = torch.stack(self._z)  # [C, S, D]
        values = self._potential.constrain(z)
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
        """Per-draw sampler statistics: ``accept_prob``, ``diverging``, ``num_steps`` (leapfrog
        steps, i.e. gradient evaluations), ``tree_depth``, ``step_size``, ``potential_energy``,
        ``energy`` (the Hamiltonian at the draw)."""
        self._require_run()
        out = {k: np.stack([s[k] for s in self._stats]) for k in _STAT_FIELDS}
        if not group_by_chain:
            out = {k: v.reshape(-1) for k, v in out.items()}
        return out

    @property
    def num_divergences(self) -> int:
        self._require_run()
        return int(sum(s["diverging"].sum() for s in self._stats))

    @property
    def num_grad_evals(self) -> int:
        """Gradient evaluations spent on the kept draws (warm-up not counted)."""
        self._require_run()
        return int(sum(s["num_steps"].sum() for s in self._stats))

    @property
    def num_grad_evals_warmup(self) -> int:
        """Gradient evaluations spent in warm-up (step-size searches not counted)."""
        self._require_run()
        return int(sum(self._warmup_grad_evals))

    def diagnostics(self) -> dict[str, Any]:
        """``{site: {"n_eff": ..., "r_hat": ...}, "divergences": {"chain 0": [draw indices]},
        "acceptance rate": {"chain 0": mean acceptance statistic}}``."""
        samples = self.get_samples(group_by_chain=True)
        out: dict[str, Any] = {}
        for name, v in samples.items():
            d: dict[str, Any] = {"n_eff": torch.as_tensor(effective_sample_size(v))}
            if v.shape[1] >= 4:
                d["r_hat"] = torch.as_tensor(split_gelman_rubin(v))
            out[name] = d
        out["divergences"] = {f"chain {i}": np.nonzero(s["diverging"])[0].tolist() for i, s in enumerate(self._stats)}
        out["acceptance rate"] = {f"chain {i}": float(s["accept_prob"].mean()) for i, s in enumerate(self._stats)}
        return out

    def summary(self, prob: float = 0.9) -> None:
        """Print mean, sd, median, the ``prob`` interval, n_eff and r_hat of every latent
        element, and the number of divergences."""
        self._require_run()
        stats = summary(self.get_samples(group_by_chain=True), prob=prob)
        print(format_summary(stats, num_divergences=self.num_divergences))

    def to_arviz(self) -> Any:
        """An ``arviz.InferenceData`` (needs the optional ``arviz`` package)."""
        from ember.infer.mcmc.arviz import to_inference_data

        return to_inference_data(self)

    @property
    def observed(self) -> dict[str, torch.Tensor]:
        self._require_run()
        return dict(self._potential.observed)

    def __repr__(self) -> str:
        state = f"{len(self._z)} chain(s) run" if self._z else "not run"
        return (f"MCMC({type(self.kernel).__name__}, num_samples={self.num_samples}, warmup_steps={self.warmup_steps}, "
                f"num_chains={self.num_chains}; {state})")
