"""Density estimation with a normalizing flow: a 2-D "two moons" data set, a spline-coupling
flow on a standard-normal base, fitted by maximum likelihood written as SVI (the model observes
the data under the flow's distribution; the guide is empty, so the ELBO is the log-likelihood).

Pyro's flow tutorial does the same with ``pyro.distributions.transforms.spline_coupling``.
Writes ``summary.json`` (held-out mean log-likelihood of the flow and of a fitted Gaussian),
``metrics.jsonl`` and ``density.png`` (the data beside the learned density).
Run ``ember flows`` or ``python -m ember.examples.flows`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

import torch

import ember
import ember.distributions as dist
from ember.distributions import transforms as T
from ember.examples._main import run_main
from ember.examples._runs import UsageError, make_run_dir
from ember.infer import SVI, Trace_ELBO

__all__ = ["add_arguments", "build_flow", "main", "moons", "train"]


def moons(n: int, noise: float = 0.08, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` points (``[n, 2]``) of two interleaved half circles with Gaussian noise, centred and scaled to unit-ish spread."""
    t = torch.rand(n, generator=generator) * math.pi
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    pts = torch.stack([x, y], -1) + noise * torch.randn(n, 2, generator=generator)
    return (pts - torch.tensor([0.5, 0.25])) * 2


def build_flow(count_bins: int = 8, hidden: int = 32, layers: int = 2) -> tuple[dist.TransformedDistribution, list]:
    """A standard-normal base pushed through ``layers`` spline couplings with the coordinates swapped between them."""
    transforms: list = []
    for i in range(layers):
        if i:
            transforms.append(T.permute(2, torch.tensor([1, 0])))
        transforms.append(T.spline_coupling(2, count_bins=count_bins, hidden_dims=[hidden, hidden]))
    base = dist.Normal(torch.zeros(2), torch.ones(2)).to_event(1)
    return dist.TransformedDistribution(base, transforms), transforms


def train(data: torch.Tensor, steps: int = 1000, lr: float = 5e-3, seed: int = 0, progress: bool = True, **flow_kwargs: Any) -> dict:
    """Fit the flow to ``data`` (``[n, 2]``) by SVI with an empty guide; return the flow and the loss history."""
    ember.set_rng_seed(seed)
    ember.clear_param_store()
    flow_dist, transforms = build_flow(**flow_kwargs)
    modules = torch.nn.ModuleList([t for t in transforms if isinstance(t, torch.nn.Module)])

    def model(x: torch.Tensor) -> None:
        ember.module("flow", modules)
        with ember.plate("data", x.size(0)):
            ember.sample("x", flow_dist, obs=x)

    def guide(x: torch.Tensor) -> None:
        pass

    svi = SVI(model, guide, ember.optim.Adam({"lr": lr}), Trace_ELBO())
    losses = []
    it: Any = range(steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="flow MLE", unit="step", dynamic_ncols=True)
    for _ in it:
        losses.append(svi.step(data) / data.size(0))
        flow_dist.clear_cache()  # the same data tensor is transformed again next step
    return {"flow": flow_dist, "losses": losses}


def _plot(path: str, data: torch.Tensor, flow_dist: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = torch.linspace(-4, 4, 200)
    X, Y = torch.meshgrid(g, g, indexing="xy")
    with torch.no_grad():
        dens = flow_dist.log_prob(torch.stack([X, Y], -1).reshape(-1, 2)).exp().reshape(200, 200)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    axes[0].scatter(data[:, 0], data[:, 1], s=2, alpha=0.5)
    axes[0].set_title("data (two moons)")
    axes[1].imshow(dens.numpy(), origin="lower", extent=(-4, 4, -4, 4), cmap="viridis")
    axes[1].set_title("learned density (spline coupling flow)")
    for ax in axes:
        ax.set_xlim(-4, 4)
        ax.set_ylim(-4, 4)
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=1000, help="SVI (maximum-likelihood) steps (default 1000)")
    p.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate (default 0.005)")
    p.add_argument("--num-data", type=int, default=1024, help="training points (default 1024; as many held out)")
    p.add_argument("--count-bins", type=int, default=8, help="spline bins (default 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", default=None, help="run directory (default runs/flows-<time>)")
    p.add_argument("--no-plot", action="store_true", help="skip density.png")


def main(args: argparse.Namespace) -> int:
    if args.steps < 1 or args.num_data < 2 or args.count_bins < 2:
        raise UsageError(f"--steps and --num-data must be positive and --count-bins >= 2; got {args.steps}, {args.num_data}, {args.count_bins}")
    out = str(make_run_dir(args.out, "flows"))
    print(f"run directory: {out}")
    gen = torch.Generator().manual_seed(args.seed)
    data, held_out = moons(args.num_data, generator=gen), moons(args.num_data, generator=gen)
    res = train(data, args.steps, args.lr, args.seed, progress=sys.stderr.isatty(), count_bins=args.count_bins)
    flow_dist = res["flow"]
    gauss = torch.distributions.MultivariateNormal(data.mean(0), torch.cov(data.T))
    with torch.no_grad():
        ll_flow = float(flow_dist.log_prob(held_out).mean())
        ll_gauss = float(gauss.log_prob(held_out).mean())
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        for t in range(0, len(res["losses"]), 10):
            f.write(json.dumps({"step": t, "loss_per_point": res["losses"][t]}) + "\n")
    summary = {"held_out_loglik_flow": ll_flow, "held_out_loglik_gaussian": ll_gauss, "steps": args.steps, "num_data": args.num_data}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"held-out mean log-likelihood: flow {ll_flow:.3f}, Gaussian {ll_gauss:.3f}")
    if not args.no_plot:
        path = os.path.join(out, "density.png")
        _plot(path, data, flow_dist)
        print(f"  plot: {path}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m ember.examples.flows", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(run_main(main, parser.parse_args(), "flows"))
