"""``chain_method="parallel"``: one worker process per chain, started with ``spawn``.

Spawned workers start a fresh interpreter (no fork of a process that holds torch's thread pools,
the usual cause of multiprocessing chains that hang), import Ember, unpickle the kernel (its
configuration and model, not the potential compiled in this process) and the model's arguments,
and each runs one chain sequentially with one intra-op thread. What this needs of the model, and
what happens otherwise:

- the kernel, the model and its arguments must pickle: the model defined at the top level of an
  importable module (a script run as ``python script.py`` needs its sampling under
  ``if __name__ == "__main__":``, as every ``spawn`` program does). A model that does not pickle
  (a lambda, a function defined inside another, a notebook's cell on some platforms) is refused
  here, before any process starts, with a ``ValueError`` that names the fix;
- a worker that dies (out of memory, a script without the ``__main__`` guard) ends the run with a
  ``RuntimeError`` naming the chain, never a hang;
- ``hook_fn`` is refused: it would run in the worker, not in this process.

Each chain's random key comes from Ember's random stream in this process; the worker seeds its own
stream from it (starting points then differ from a sequential run's, the distribution does not).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import pickle
import time
from typing import Any

import numpy as np
import torch

__all__ = ["run_parallel"]


def _worker(payload: bytes) -> dict[str, Any]:
    import ember
    from ember.infer.mcmc.api import MCMC

    job = pickle.loads(payload)
    ember.set_rng_seed(job["seed"])
    mcmc = MCMC(job["kernel"], num_samples=job["num_samples"], warmup_steps=job["warmup_steps"],
                initial_params=job["initial_params"], num_chains=1, chain_method="sequential", disable_progbar=True,
                disable_validation=job["disable_validation"], thinning=job["thinning"], num_threads=1)
    t0 = time.perf_counter()
    mcmc.run(*job["args"], **job["kwargs"])
    return {"z": mcmc._z[0].numpy(), "stats": mcmc._stats[0], "state": mcmc.states[0], "wall": time.perf_counter() - t0,
            "warmup_grads": mcmc._warmup_grad_evals[0], "divergences": mcmc._divergences[0],
            "acceptance": mcmc._acceptance[0], "status": mcmc.compile_status[0]}


def run_parallel(mcmc: Any, args: tuple, kwargs: dict) -> None:
    """Run ``mcmc``'s chains in spawned worker processes and record them as a sequential run would."""
    if mcmc.hook_fn is not None:
        raise ValueError("MCMC(chain_method='parallel'): hook_fn would run in the worker processes, not here; use "
                         "chain_method='vectorized' (the default) or 'sequential' with a hook")
    kernel = mcmc.kernel
    C = mcmc.num_chains
    jobs = []
    for c in range(C):
        job = {"kernel": kernel, "args": args, "kwargs": kwargs, "seed": int(torch.randint(0, 2**31 - 1, ()).item()),
               "num_samples": mcmc.num_samples, "warmup_steps": mcmc.warmup_steps,
               "initial_params": mcmc._chain_initial_params(c), "disable_validation": mcmc.disable_validation,
               "thinning": mcmc.thinning}
        try:
            jobs.append(pickle.dumps(job))
        except Exception as e:  # noqa: BLE001 - pickling fails with many exception types
            raise ValueError(
                f"MCMC(chain_method='parallel') sends the kernel, the model and its arguments to spawned worker "
                f"processes, and they cannot be pickled ({type(e).__name__}: {e}). Define the model at the top level "
                f"of an importable module, or use chain_method='vectorized' (the default: no processes)") from e
    # the structure of the model here too (constrain the draws, name the sites)
    potential = kernel.make_potential(args, kwargs, mcmc._chain_initial_params(0))
    potential.initial_point(kernel.init_strategy, mcmc._chain_initial_params(0))
    mcmc._potential = potential
    ctx = multiprocessing.get_context("spawn")
    results: list[Any] = [None] * C
    with cf.ProcessPoolExecutor(max_workers=C, mp_context=ctx) as pool:
        futures = {pool.submit(_worker, job): c for c, job in enumerate(jobs)}
        for fut in cf.as_completed(futures):
            c = futures[fut]
            try:
                results[c] = fut.result()
            except cf.process.BrokenProcessPool as e:
                raise RuntimeError(
                    f"MCMC(chain_method='parallel'): the worker process of chain {c} died ({e}). A script that starts "
                    f"them must do so under `if __name__ == '__main__':`; or use chain_method='vectorized'") from e
    for r in results:
        mcmc._z.append(torch.from_numpy(np.ascontiguousarray(r["z"])).to(potential.dtype))
        mcmc._stats.append(r["stats"])
        mcmc.states.append(r["state"])
        mcmc.step_sizes.append(r["state"].step_size)
        mcmc.inverse_mass_matrices.append(torch.from_numpy(r["state"].inverse_mass_matrix.copy()).to(potential.dtype))
        mcmc.kernel._last_state = r["state"]
        mcmc.wall_times.append(r["wall"])
        mcmc._warmup_grad_evals.append(r["warmup_grads"])
        mcmc._divergences.append(r["divergences"])
        mcmc._acceptance.append(r["acceptance"])
        mcmc.compile_status.append(f"{r['status']}; parallel: chain in a spawned worker process")
