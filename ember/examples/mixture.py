"""A Gaussian mixture with its assignments summed out: Pyro's Gaussian-mixture tutorial in Ember.

The model (the tutorial's): ``weights ~ Dirichlet(0.5)``, one ``scale ~ LogNormal(0, 2)``, ``K`` locations
``~ Normal(0, 10)``; each datum picks a component ``assignment ~ Categorical(weights)`` and is
``Normal(locs[assignment], scale)``. ``config_enumerate`` marks the assignments for parallel
enumeration, so

1. ``TraceEnum_ELBO`` fits a MAP guide (point masses on weights, scale and locations) with the
   assignments summed out exactly, and ``infer_discrete`` (temperature 0) recovers each datum's
   most probable component;
2. NUTS samples the weights, scale and locations with the assignments summed out of its potential.

The data: the tutorial's five points ``[0, 1, 10, 11, 12]``, or ``--num-data`` points drawn (with
``--seed``) from two unit-variance Gaussians at -3 and 3 in proportions 0.4 / 0.6.
Run ``python -m ember.examples.mixture`` (``--help`` for options); writes ``summary.json`` to a run
directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import torch

import ember
import ember.distributions as dist
from ember.examples._main import run_main
from ember.examples._runs import UsageError, make_run_dir, pyplot, report_plot
from ember.infer import MCMC, NUTS, SVI, TraceEnum_ELBO, config_enumerate, infer_discrete
from ember.poutine import condition, trace

__all__ = ["K", "add_arguments", "fit_map", "guide", "main", "map_assignments", "model", "plot", "run_nuts"]

K = 2
TUTORIAL_DATA = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0])


@config_enumerate
def model(data: torch.Tensor) -> None:
    """The mixture: ``data`` is ``[N]``; sites ``weights [K]``, ``scale []``, ``locs [K]``, ``assignment [N]``."""
    weights = ember.sample("weights", dist.Dirichlet(0.5 * torch.ones(K)))
    scale = ember.sample("scale", dist.LogNormal(0.0, 2.0))
    with ember.plate("components", K):
        locs = ember.sample("locs", dist.Normal(0.0, 10.0))
    with ember.plate("data", len(data)):
        assignment = ember.sample("assignment", dist.Categorical(weights))
        ember.sample("obs", dist.Normal(locs[assignment], scale), obs=data)


def guide(data: torch.Tensor) -> None:
    """MAP: a point mass on the weights, the scale and the locations (initialised from the data's
    spread); the assignments are summed out by the ELBO, not guessed."""
    weights = ember.param("auto_weights", torch.ones(K) / K, constraint=dist.constraints.simplex)
    scale = ember.param("auto_scale", (data.var() / 2).sqrt(), constraint=dist.constraints.positive)
    locs = ember.param("auto_locs", torch.quantile(data, torch.linspace(0.2, 0.8, K)))
    ember.sample("weights", dist.Delta(weights, event_dim=1))
    ember.sample("scale", dist.Delta(scale))
    with ember.plate("components", K):
        ember.sample("locs", dist.Delta(locs))


def fit_map(data: torch.Tensor, steps: int = 200, lr: float = 0.1, seed: int = 0, progress_bar: bool = False) -> dict[str, Any]:
    """Fit :func:`guide` by SVI with ``TraceEnum_ELBO``: ``{"losses": [...], "weights", "scale", "locs"}``."""
    ember.set_rng_seed(seed)
    ember.clear_param_store()
    svi = SVI(model, guide, ember.optim.Adam({"lr": lr, "betas": (0.8, 0.99)}), TraceEnum_ELBO(max_plate_nesting=1))
    losses = svi.run(steps, data, progress_bar=progress_bar).tolist()
    store = ember.get_param_store()
    return {"losses": losses, "weights": store["auto_weights"].detach(), "scale": store["auto_scale"].detach(),
            "locs": store["auto_locs"].detach()}


def map_assignments(data: torch.Tensor, values: dict[str, torch.Tensor]) -> torch.Tensor:
    """The most probable component of each datum (``[N]``) given ``values`` of weights, scale, locs."""
    tr = trace(infer_discrete(condition(model, data=values), first_available_dim=-2, temperature=0)).get_trace(data)
    return tr.nodes["assignment"].value


def run_nuts(data: torch.Tensor, num_samples: int = 200, warmup_steps: int = 200, seed: int = 0,
             progress_bar: bool = False) -> dict[str, torch.Tensor]:
    """NUTS on :func:`model` with the assignments summed out of the potential: the draws."""
    ember.set_rng_seed(seed)
    mcmc = MCMC(NUTS(model), num_samples=num_samples, warmup_steps=warmup_steps, disable_progbar=not progress_bar)
    mcmc.run(data)
    return mcmc.get_samples()


def plot(path: str, data: torch.Tensor, values: dict[str, torch.Tensor], assignment: torch.Tensor,
         draws: dict[str, torch.Tensor] | None = None) -> bool:
    """``mixture.png``: the data (``(N,)``, coloured by their MAP component ``assignment``, ``(N,)``)
    under the MAP mixture density (``values``: weights ``(K,)``, scale ``()``, locs ``(K,)``), and,
    with NUTS ``draws`` (locs ``(S, K)``), the posterior of the two locations. False when
    matplotlib is not installed."""
    plt = pyplot()
    if plt is None:
        return False

    ncols = 2 if draws is not None else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 3.8), squeeze=False)
    ax = axes[0, 0]
    lo, hi = float(data.min()) - 4.0, float(data.max()) + 4.0
    x = torch.linspace(lo, hi, 400)
    comp = values["weights"] * torch.distributions.Normal(values["locs"], values["scale"]).log_prob(x[:, None]).exp()
    for k in range(K):
        ax.plot(x, comp[:, k], lw=1.2, label=f"component {k} (weight {float(values['weights'][k]):.2f})")
    ax.plot(x, comp.sum(-1), "k--", lw=1.0, label="mixture density (MAP)")
    ax.scatter(data, torch.zeros_like(data), c=[f"C{int(a)}" for a in assignment], zorder=3, s=40, label="data (MAP component)")
    ax.set_xlabel("x")
    ax.legend(fontsize=8)
    ax.set_title("MAP fit, assignments summed out")
    if draws is not None:
        ax = axes[0, 1]
        locs = draws["locs"]
        ax.hist(locs.min(-1).values, bins=30, alpha=0.6, label="smaller location")
        ax.hist(locs.max(-1).values, bins=30, alpha=0.6, label="larger location")
        ax.set_xlabel("location")
        ax.set_title(f"NUTS posterior ({locs.shape[0]} draws)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-data", type=int, default=0, help="draw this many points instead of the tutorial's five (default 0)")
    p.add_argument("--steps", type=int, default=200, help="SVI steps (default 200)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--nuts-samples", type=int, default=200, help="NUTS draws after as many warm-up steps (0: skip NUTS)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="directory for summary.json and mixture.png (default: a new runs/mixture-<date-time>)")
    p.add_argument("--no-plot", action="store_true", help="skip mixture.png")


def main(args: argparse.Namespace) -> int:
    if args.steps < 1 or args.num_data < 0 or args.nuts_samples < 0:
        raise UsageError(f"--steps must be positive and --num-data, --nuts-samples non-negative; got {args.steps}, "
                         f"{args.num_data}, {args.nuts_samples}")
    out = str(make_run_dir(args.out, "mixture"))
    print(f"run directory: {out}")
    if args.num_data:
        gen = torch.Generator().manual_seed(args.seed)
        z = (torch.rand(args.num_data, generator=gen) < 0.6).long()
        data = torch.tensor([-3.0, 3.0])[z] + torch.randn(args.num_data, generator=gen)
    else:
        data = TUTORIAL_DATA
    fit = fit_map(data, args.steps, args.lr, args.seed, progress_bar=True)
    values = {k: fit[k] for k in ("weights", "scale", "locs")}
    assignment = map_assignments(data, values)
    summary: dict[str, Any] = {"final_loss": fit["losses"][-1], "weights": fit["weights"].tolist(), "scale": float(fit["scale"]),
                               "locs": fit["locs"].tolist(), "assignment": assignment.tolist()}
    print(f"MAP: weights {summary['weights']}, locs {summary['locs']}, scale {summary['scale']:.3f}; "
          f"assignments {summary['assignment']}")
    draws = None
    if args.nuts_samples:
        draws = run_nuts(data, args.nuts_samples, args.nuts_samples, args.seed, progress_bar=True)
        summary["nuts_mean"] = {k: v.mean(0).tolist() for k, v in draws.items()}
        print(f"NUTS posterior means: {summary['nuts_mean']}")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    if not getattr(args, "no_plot", False):
        path = os.path.join(out, "mixture.png")
        report_plot(path, plot(path, data, values, assignment, draws))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m ember.examples.mixture", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(run_main(main, parser.parse_args(), "mixture"))
