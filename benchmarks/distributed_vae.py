"""Data-parallel SVI (``ember.infer.distributed``): the VAE example, training samples per second on 1 and 2
processes (gloo on CPU), torch threads per process fixed (default 1), reported as scaling efficiency.

What is timed, on each rank between two barriers: an epoch over the first ``--subset`` MNIST training images,
each step a full ``DataParallelSVI.step`` (this rank's shard of the batch: guide, one z draw, model, -ELBO,
backward; then the exchange of loss and parameter fingerprints, the gradient all_reduce, Adam). z_dim 50,
hidden 400, Adam 1e-3, Ember's checks on and distribution validation off, as ``ember vae`` runs. Two modes:

- ``strong``: the global batch is ``--batch`` (256, as ``ember vae --distributed``), split over the processes;
- ``weak``: every process takes ``--batch`` images a step (the global batch grows with the processes).

samples/s = images in the epoch / seconds (rank 0's clock). Scaling efficiency with W processes =
samples/s(W) / (W x samples/s(1)). ``comm_ms_per_step``: time rank 0 spends in the step's collectives (its
wait for the slower rank included). The launches alternate (1, 2, 1, 2, ... processes; ``--repeats`` of each)
and each launch times ``--epochs`` epochs per mode after a few untimed warm-up steps; the figures are medians.
The processes are started as torchrun starts them (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the
environment). Prints one JSON line.

    .venv/bin/python benchmarks/distributed_vae.py            # 1 vs 2 processes, 1 thread each
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

Z_DIM, HIDDEN, LR = 50, 400, 1.0e-3


def worker(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    import torch.distributed as dist

    import ember
    from ember.data import load_mnist
    from ember.examples._runs import epoch_generator
    from ember.examples.vae import VAE
    from ember.infer import Trace_ELBO
    from ember.infer import distributed as ed

    info = ed.init_from_env(timeout=120)
    ember.enable_validation(True)
    ember.distributions.enable_validation(False)
    images = load_mnist().train_images[: args.subset].contiguous()
    n = images.shape[0]
    ember.set_rng_seed(0)
    vae = VAE(Z_DIM, HIDDEN)
    ed.seed_rank(0)
    svi = ed.DataParallelSVI(vae.model, vae.guide, ember.optim.Adam({"lr": LR}), Trace_ELBO())

    comm = [0.0]
    originals = {name: getattr(dist, name) for name in ("all_reduce", "all_gather")}

    def timed(fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                comm[0] += time.perf_counter() - t
        return wrapper

    for name, fn in originals.items():
        setattr(dist, name, timed(fn))

    def batches(mode: str, order: torch.Tensor):
        per_step = args.batch if mode == "strong" else args.batch * info.world_size
        for start in range(0, n, per_step):
            idx = order[start : start + per_step]
            if len(idx) < info.world_size:
                break
            yield ed.shard(idx)

    warm = torch.randperm(n, generator=epoch_generator(0, 0))
    svi.setup(images[ed.shard(warm[: args.batch])])
    for k, idx in enumerate(batches("strong", warm)):
        if k == args.warmup:
            break
        svi.step(images[idx])

    out: dict = {"strong": [], "weak": [], "comm_strong": [], "comm_weak": [], "steps": {}}
    for epoch in range(1, args.epochs + 1):
        for mode in ("strong", "weak"):
            order = torch.randperm(n, generator=epoch_generator(0, epoch))
            parts = list(batches(mode, order))
            dist.barrier()
            comm[0] = 0.0
            t = time.perf_counter()
            for idx in parts:
                svi.step(images[idx])
            dist.barrier()
            seconds = time.perf_counter() - t
            images_done = sum(ed.all_reduce_sum([float(len(idx)) for idx in parts]))
            out[mode].append(images_done / seconds)
            out[f"comm_{mode}"].append(1000 * comm[0] / len(parts))
            out["steps"][mode] = len(parts)
    if info.is_main:
        Path(args.result).write_text(json.dumps(out))
    ed.destroy()


def launch(world_size: int, args: argparse.Namespace, result: Path) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, __file__, "--worker", "--result", str(result), "--threads", str(args.threads),
            "--subset", str(args.subset), "--batch", str(args.batch), "--epochs", str(args.epochs), "--warmup", str(args.warmup)]
    procs = []
    for rank in range(world_size):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": str(args.threads)}
        procs.append(subprocess.Popen(argv, env=env))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"{world_size}-process launch failed: exit codes {codes}")
    return json.loads(result.read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", default="1,2", help="process counts to compare (default 1,2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    p.add_argument("--subset", type=int, default=20000, help="training images per epoch (default 20000)")
    p.add_argument("--batch", type=int, default=256, help="global batch (strong) / per-process batch (weak); default 256")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per mode and launch (default 2)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per launch (default 5)")
    p.add_argument("--repeats", type=int, default=2, help="launches per process count, alternating (default 2)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    counts = [int(c) for c in args.procs.split(",")]
    runs: dict[int, list[dict]] = {w: [] for w in counts}
    with tempfile.TemporaryDirectory() as d:
        for r in range(args.repeats):
            for w in counts:
                t = time.perf_counter()
                res = launch(w, args, Path(d) / f"{w}-{r}.json")
                runs[w].append(res)
                print(f"{w} process(es), launch {r + 1}: strong {statistics.median(res['strong']):.0f} samples/s, weak "
                      f"{statistics.median(res['weak']):.0f} samples/s ({time.perf_counter() - t:.1f} s with start-up)",
                      file=sys.stderr)
    import torch

    out: dict = {"benchmark": "distributed_vae", "backend": "gloo", "threads_per_process": args.threads, "images_per_epoch": args.subset,
                 "batch": args.batch, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}
    for mode in ("strong", "weak"):
        sps = {w: statistics.median([x for res in runs[w] for x in res[mode]]) for w in counts}
        base = sps[counts[0]] / counts[0]
        out[mode] = {
            "samples_per_s": {str(w): round(v, 1) for w, v in sps.items()},
            "scaling_efficiency": {str(w): round(v / (w * base), 3) for w, v in sps.items()},
            "comm_ms_per_step": {str(w): round(statistics.median([x for res in runs[w] for x in res[f"comm_{mode}"]]), 2)
                                 for w in counts},
            "steps_per_epoch": {str(w): runs[w][0]["steps"][mode] for w in counts},
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
