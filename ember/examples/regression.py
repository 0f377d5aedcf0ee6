"""Bayesian linear regression with ``PyroModule[nn.Linear]``, ``PyroSample`` priors and an
autoguide, as in Pyro's Bayesian-regression tutorial, on real data: the diabetes data set
bundled with scikit-learn (442 patients, 10 baseline variables, disease progression one year
later; Efron, Hastie, Johnstone & Tibshirani, "Least Angle Regression", 2004; distributed with
scikit-learn under its BSD-3-Clause licence, no download). Needs the ``regression`` extra:
``pip install "ember-ppl[regression]"`` (scikit-learn, matplotlib).

The features and the target are standardised on a training split (80%, by ``--seed``); the
model is ``y ~ Normal(w . x + b, sigma)`` with ``w ~ Normal(0, 1)``, ``b ~ Normal(0, 10)``,
``sigma ~ Uniform(0, 10)``; the guide is ``AutoDiagonalNormal`` or ``AutoMultivariateNormal``
(``--guide``). ``Predictive(model, guide=guide, ...)`` gives the posterior of the regression
mean and the posterior predictive on the held-out 20%.

Writes ``summary.json`` (posterior medians and 90% intervals of the weights and sigma, held-out
RMSE and the coverage of the 90% predictive intervals), ``metrics.jsonl`` (the loss every 10
steps), ``guide.pt`` (the trained guide: ``AutoDiagonalNormal(model).load(path)`` rebuilds it
without data) and ``regression.png`` (weights' intervals; held-out predictions with their 90%
intervals). Run ``ember regression`` or ``python -m ember.examples.regression``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import torch
from torch import nn

import ember
import ember.distributions as dist
from ember.examples._main import run_main
from ember.examples._runs import UsageError, make_run_dir
from ember.infer import SVI, JitTrace_ELBO, Predictive, Trace_ELBO
from ember.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal
from ember.nn import PyroModule, PyroSample

__all__ = ["BayesianRegression", "add_arguments", "load_data", "main", "train"]

GUIDES = {"diagonal": AutoDiagonalNormal, "multivariate": AutoMultivariateNormal}


class BayesianRegression(PyroModule):
    """``y ~ Normal(x @ w + b, sigma)`` for ``x`` ``[n, in_features]``; returns the mean ``[n]``."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.linear = PyroModule[nn.Linear](in_features, 1)
        self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, in_features]).to_event(2))
        self.linear.bias = PyroSample(dist.Normal(0.0, 10.0).expand([1]).to_event(1))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        sigma = ember.sample("sigma", dist.Uniform(0.0, 10.0))
        mean = self.linear(x).squeeze(-1)
        with ember.plate("data", x.shape[0]):
            ember.sample("obs", dist.Normal(mean, sigma), obs=y)
        return mean


def load_data(seed: int = 0, train_fraction: float = 0.8) -> dict[str, Any]:
    """The diabetes data, split and standardised on the training part: ``x_train`` ``[n, 10]``,
    ``y_train`` ``[n]``, ``x_test``, ``y_test``, ``features`` (names)."""
    try:
        from sklearn.datasets import load_diabetes
    except ImportError:
        raise UsageError("this example reads the diabetes data bundled with scikit-learn, which is not installed: "
                         "pip install \"ember-ppl[regression]\" (or pip install scikit-learn)") from None
    d = load_diabetes(scaled=False)
    x = torch.as_tensor(d.data, dtype=torch.get_default_dtype())
    y = torch.as_tensor(d.target, dtype=torch.get_default_dtype())
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_train = int(train_fraction * len(y))
    tr, te = perm[:n_train], perm[n_train:]
    mx, sx = x[tr].mean(0), x[tr].std(0)
    my, sy = y[tr].mean(), y[tr].std()
    return {"x_train": (x[tr] - mx) / sx, "y_train": (y[tr] - my) / sy, "x_test": (x[te] - mx) / sx, "y_test": (y[te] - my) / sy,
            "features": list(d.feature_names)}


def train(data: dict, guide_name: str = "diagonal", steps: int = 2000, lr: float = 0.03, seed: int = 0,
          progress: bool = True, jit: bool = False) -> dict:
    """Fit the guide by SVI (``jit``: with ``JitTrace_ELBO``); return the model, the guide and the loss per step."""
    ember.set_rng_seed(seed)
    ember.clear_param_store()
    model = BayesianRegression(data["x_train"].shape[1])
    guide = GUIDES[guide_name](model)
    svi = SVI(model, guide, ember.optim.Adam({"lr": lr}), JitTrace_ELBO() if jit else Trace_ELBO())
    losses = []
    it: Any = range(steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"SVI ({guide_name})", unit="step", dynamic_ncols=True)
    for _ in it:
        losses.append(svi.step(data["x_train"], data["y_train"]))
    return {"model": model, "guide": guide, "losses": losses}


def _interval(samples: torch.Tensor, lo: float = 0.05, hi: float = 0.95) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q = torch.quantile(samples, torch.tensor([lo, 0.5, hi], dtype=samples.dtype), dim=0)
    return q[0], q[1], q[2]


def _plot(path: str, features: list, weights: torch.Tensor, y_test: torch.Tensor, mean: torch.Tensor, obs: torch.Tensor, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w_lo, w_med, w_hi = _interval(weights)
    m_lo, m_med, m_hi = _interval(mean)
    o_lo, _, o_hi = _interval(obs)
    order = m_med.argsort()
    idx = torch.arange(len(order))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    ax.errorbar(w_med, range(len(features)), xerr=torch.stack([w_med - w_lo, w_hi - w_med]), fmt="o", capsize=3)
    ax.axvline(0.0, color="grey", lw=0.8)
    ax.set_yticks(range(len(features)), features)
    ax.set_xlabel("weight (standardised), median and 90% interval")
    ax.set_title("posterior of the weights")
    ax = axes[1]
    ax.fill_between(idx, o_lo[order], o_hi[order], alpha=0.25, label="90% posterior predictive")
    ax.fill_between(idx, m_lo[order], m_hi[order], alpha=0.5, label="90% interval of the mean")
    ax.plot(idx, m_med[order], lw=1.2, label="posterior median of the mean")
    ax.scatter(idx, y_test[order], s=8, color="k", label="held-out data")
    ax.set_xlabel("held-out patients, by predicted mean")
    ax.set_ylabel("disease progression (standardised)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--guide", choices=sorted(GUIDES), default="diagonal",
                   help="AutoDiagonalNormal or AutoMultivariateNormal (default diagonal)")
    p.add_argument("--steps", type=int, default=2000, help="SVI steps (default 2000)")
    p.add_argument("--lr", type=float, default=0.03, help="Adam learning rate (default 0.03)")
    p.add_argument("--num-samples", type=int, default=800, help="posterior samples for the intervals (default 800)")
    p.add_argument("--jit", action="store_true", help="compile the ELBO (JitTrace_ELBO): the same fit, faster steps")
    p.add_argument("--seed", type=int, default=0, help="random seed (the train/test split too)")
    p.add_argument("--out", default=None, help="run directory (default runs/regression-<time>)")
    p.add_argument("--no-plot", action="store_true", help="skip regression.png")


def main(args: argparse.Namespace) -> int:
    if args.steps < 1 or args.num_samples < 2 or not args.lr > 0:
        raise UsageError(f"--steps must be >= 1, --num-samples >= 2 and --lr > 0; got {args.steps}, {args.num_samples}, {args.lr}")
    data = load_data(args.seed)
    out = str(make_run_dir(args.out, "regression"))
    print(f"run directory: {out}")
    res = train(data, args.guide, args.steps, args.lr, args.seed, progress=sys.stderr.isatty(), jit=getattr(args, "jit", False))
    model, guide = res["model"], res["guide"]
    guide.save(os.path.join(out, "guide.pt"))
    predictive = Predictive(model, guide=guide, num_samples=args.num_samples, return_sites=("linear.weight", "sigma", "obs", "_RETURN"))
    samples = predictive(data["x_test"])
    weights = samples["linear.weight"].reshape(args.num_samples, -1)
    mean, obs, y_test = samples["_RETURN"], samples["obs"], data["y_test"]
    o_lo, _, o_hi = _interval(obs)
    coverage = float(((y_test >= o_lo) & (y_test <= o_hi)).float().mean())
    rmse = float((mean.mean(0) - y_test).pow(2).mean().sqrt())
    w_lo, w_med, w_hi = _interval(weights)
    s_lo, s_med, s_hi = _interval(samples["sigma"])
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        for t in range(0, len(res["losses"]), 10):
            f.write(json.dumps({"step": t, "loss": res["losses"][t]}) + "\n")
    summary = {
        "guide": type(guide).__name__, "steps": args.steps, "final_loss": sum(res["losses"][-50:]) / min(50, len(res["losses"])),
        "weights": {name: {"median": float(w_med[i]), "q05": float(w_lo[i]), "q95": float(w_hi[i])} for i, name in enumerate(data["features"])},
        "sigma": {"median": float(s_med), "q05": float(s_lo), "q95": float(s_hi)},
        "test_rmse": rmse, "test_coverage_90": coverage, "num_test": len(y_test),
    }
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"{type(guide).__name__}: held-out RMSE {rmse:.3f} (standardised), 90% predictive intervals cover {coverage:.0%}")
    top = sorted(summary["weights"].items(), key=lambda kv: -abs(kv[1]["median"]))[:3]
    print("  largest weights: " + ", ".join(f"{k} {v['median']:+.2f} [{v['q05']:+.2f}, {v['q95']:+.2f}]" for k, v in top))
    if not args.no_plot:
        path = os.path.join(out, "regression.png")
        _plot(path, data["features"], weights, y_test, mean, obs, f"held-out predictions ({type(guide).__name__})")
        print(f"  plot: {path}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m ember.examples.regression", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(run_main(main, parser.parse_args(), "regression"))
