"""The introductory scale example of inference: how much does an object weigh, given a noisy scale?

    weight | guess          ~ Normal(guess, 1)
    measurement | weight   ~ Normal(weight, 0.75)

Conditioned on ``measurement = 9.5`` with ``guess = 8.5`` the exact posterior is
``Normal(9.14, 0.6)``; SVI with a Normal guide recovers it. Run ``ember scale``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any

import torch
from torch.distributions import constraints

import ember
import ember.distributions as dist
from ember.examples._main import run_main
from ember.examples._runs import UsageError, make_run_dir
from ember.infer import SVI, Trace_ELBO

__all__ = ["scale", "conditioned_scale", "guide_abs", "guide_constrained", "exact_posterior", "train", "main", "add_arguments"]


def scale(guess: Any) -> torch.Tensor:
    """The model: a weight drawn around the guess, measured with noise 0.75."""
    weight = ember.sample("weight", dist.Normal(guess, 1.0))
    return ember.sample("measurement", dist.Normal(weight, 0.75))


def conditioned_scale(guess: Any, measurement: float = 9.5) -> torch.Tensor:
    return ember.condition(scale, data={"measurement": measurement})(guess)


def guide_abs(guess: Any) -> torch.Tensor:
    """The tutorial's first guide: an unconstrained ``b`` passed through ``abs``."""
    a = ember.param("a", torch.tensor(float(guess)))
    b = ember.param("b", torch.tensor(1.0))
    return ember.sample("weight", dist.Normal(a, torch.abs(b)))


def guide_constrained(guess: Any) -> torch.Tensor:
    """The tutorial's second guide: ``b`` constrained positive by the parameter store."""
    a = ember.param("a", torch.tensor(float(guess)))
    b = ember.param("b", torch.tensor(1.0), constraint=constraints.positive)
    return ember.sample("weight", dist.Normal(a, b))


def exact_posterior(guess: float = 8.5, measurement: float = 9.5, sd_weight: float = 1.0, sd_meas: float = 0.75) -> tuple[float, float]:
    """Mean and sd of weight | measurement (conjugate Normal-Normal)."""
    prec = 1 / sd_weight**2 + 1 / sd_meas**2
    loc = (guess / sd_weight**2 + measurement / sd_meas**2) / prec
    return loc, math.sqrt(1 / prec)


def train(num_steps: int = 2500, lr: float = 0.001, momentum: float = 0.1, guess: float = 8.5, measurement: float = 9.5,
          guide: str = "constrained", seed: int = 0, progress: bool = True) -> dict:
    """Fit the guide with SVI (SGD, as in the seed); return the loss history and a, b."""
    ember.set_rng_seed(seed)
    ember.clear_param_store()
    guide_fn = {"abs": guide_abs, "constrained": guide_constrained}[guide]

    def model(g: Any) -> torch.Tensor:
        return conditioned_scale(g, measurement)

    svi = SVI(model, guide_fn, ember.optim.SGD({"lr": lr, "momentum": momentum}), loss=Trace_ELBO())
    losses, a_hist, b_hist = [], [], []
    it = range(num_steps)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(it, desc="scale SVI", unit="step", dynamic_ncols=True)
        it = bar
    run = None
    for t in it:
        loss = svi.step(guess)
        run = loss if run is None else 0.98 * run + 0.02 * loss
        losses.append(loss)
        a_hist.append(ember.param("a").item())
        b_hist.append(abs(ember.param("b").item()))
        if bar is not None and t % 50 == 0:
            bar.set_postfix(loss=f"{run:.3f}", a=f"{a_hist[-1]:.3f}", b=f"{b_hist[-1]:.3f}")
    return {"losses": losses, "a": a_hist, "b": b_hist}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=2500, help="SVI steps (default 2500, as in the seed)")
    p.add_argument("--lr", type=float, default=0.001, help="SGD learning rate (default 0.001)")
    p.add_argument("--momentum", type=float, default=0.1, help="SGD momentum (default 0.1)")
    p.add_argument("--guess", type=float, default=8.5, help="prior guess of the weight (default 8.5)")
    p.add_argument("--measurement", type=float, default=9.5, help="the observed measurement (default 9.5)")
    p.add_argument("--guide", choices=["constrained", "abs"], default="constrained", help="which of the tutorial's guides: b constrained positive by the store, or unconstrained through abs")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--out", default=None, help="run directory (default runs/scale-<time>)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG plot")


def main(args: argparse.Namespace) -> int:
    if args.steps < 1:
        raise UsageError(f"--steps must be a positive integer, got {args.steps}")
    out = str(make_run_dir(args.out, "scale"))
    print(f"run directory: {out}")
    hist = train(args.steps, args.lr, args.momentum, args.guess, args.measurement, args.guide, args.seed)
    loc, sd = exact_posterior(args.guess, args.measurement)
    tail = max(1, len(hist["a"]) // 10)
    a = sum(hist["a"][-tail:]) / tail
    b = sum(hist["b"][-tail:]) / tail
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        for t in range(0, len(hist["losses"]), 10):
            f.write(json.dumps({"step": t, "loss": hist["losses"][t], "a": hist["a"][t], "b": hist["b"][t]}) + "\n")
    summary = {"a": a, "b": b, "exact_loc": loc, "exact_scale": sd, "steps": args.steps, "guide": args.guide}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"posterior of weight | measurement = {args.measurement}:")
    print(f"  SVI guide   Normal({a:.3f}, {b:.3f})   (mean of the last {tail} steps)")
    print(f"  exact       Normal({loc:.3f}, {sd:.3f})")
    if not args.no_plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
            n = len(hist["a"])
            axes[0].plot(hist["a"], lw=1)
            axes[0].plot([0, n], [loc, loc], "k:")
            axes[0].set_title("a (guide mean)")
            axes[1].plot(hist["b"], lw=1)
            axes[1].plot([0, n], [sd, sd], "k:")
            axes[1].set_title("b (guide sd)")
            for ax in axes:
                ax.set_xlabel("step")
            fig.tight_layout()
            fig.savefig(os.path.join(out, "params.png"), dpi=100)
            plt.close(fig)
            print(f"  plot: {os.path.join(out, 'params.png')}")
        except ImportError:
            print("  (install matplotlib for the plot: pip install 'ember-ppl[plots]')")
    print(f"run directory: {out}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m ember.examples.scale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    raise SystemExit(run_main(main, parser.parse_args(), "scale"))
