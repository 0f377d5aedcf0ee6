"""A hidden Markov model fitted with its hidden states summed out (``markov`` + ``TraceEnum_ELBO``).

The data are generated (``--seed``): ``--num-sequences`` sequences of length ``--length`` from a
3-state HMM with sticky transitions (0.9 on the diagonal, 0.05 elsewhere), the first state uniform,
and Gaussian emissions ``Normal(locs[x_t], 0.5)`` with ``locs = (-2, 0, 2)``. The model has the same
form with unknown ``trans``, ``locs`` and ``scale`` (parameters: maximum likelihood, the guide is
empty); the states of each time step are enumerated in parallel, for all sequences at once (a
``sequences`` plate), and ``markov`` lets every step reuse the same two enumeration dims, so a step
of SVI costs time linear in the length. Afterwards ``infer_discrete`` (temperature 0: Viterbi)
decodes the states; ``summary.json`` reports the fitted parameters (states ordered by location), the
decoding accuracy against the true states, and the log-likelihood of the data under the fitted and
the true parameters.

Run ``python -m ember.examples.hmm`` (``--help`` for options).
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
from ember.infer import SVI, TraceEnum_ELBO, config_enumerate, infer_discrete
from ember.poutine import trace

__all__ = ["TRUE", "add_arguments", "decode", "fit", "generate", "log_likelihood", "main", "model", "plot"]

K = 3
TRUE = {"trans": torch.full((K, K), 0.05) + 0.85 * torch.eye(K), "locs": torch.tensor([-2.0, 0.0, 2.0]), "scale": torch.tensor(0.5)}


def generate(num_sequences: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ys [num_sequences, length], states [num_sequences, length])`` from the true HMM."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(K, (num_sequences,), generator=g)
    states, ys = [], []
    for _ in range(length):
        states.append(x)
        ys.append(TRUE["locs"][x] + TRUE["scale"] * torch.randn(num_sequences, generator=g))
        x = torch.multinomial(TRUE["trans"][x], 1, generator=g).squeeze(-1)
    return torch.stack(ys, -1), torch.stack(states, -1)


@config_enumerate
def model(ys: torch.Tensor, params: dict | None = None) -> None:
    """``ys [N, T]``; sites ``x_t [N]`` (enumerated) and ``y_t [N]`` (observed). ``params`` (trans,
    locs, scale) replaces the learned parameters (to score the data under the true ones)."""
    if params is None:
        trans = ember.param("trans", (torch.full((K, K), 1.0 / K) + 0.5 * torch.eye(K)) / 1.5, constraint=dist.constraints.simplex)
        locs = ember.param("locs", torch.quantile(ys.flatten(), torch.linspace(0.1, 0.9, K)))
        scale = ember.param("scale", ys.std(), constraint=dist.constraints.positive)
    else:
        trans, locs, scale = params["trans"], params["locs"], params["scale"]
    with ember.plate("sequences", ys.shape[0], dim=-1):
        x = None
        for t in ember.markov(range(ys.shape[1])):
            probs = torch.full((K,), 1.0 / K) if x is None else trans[x]
            x = ember.sample(f"x_{t}", dist.Categorical(probs))
            ember.sample(f"y_{t}", dist.Normal(locs[x], scale), obs=ys[:, t])


def _guide(ys: torch.Tensor, params: dict | None = None) -> None:
    pass


def fit(ys: torch.Tensor, steps: int = 100, lr: float = 0.05, progress_bar: bool = False) -> dict[str, Any]:
    """Maximum likelihood by SVI with the states summed out: ``{"losses", "trans", "locs", "scale"}``
    (``trans`` of shape ``(K, K)``, ``locs`` ``(K,)``, ``scale`` ``()``)."""
    ember.clear_param_store()
    svi = SVI(model, _guide, ember.optim.Adam({"lr": lr}), TraceEnum_ELBO(max_plate_nesting=1))
    losses = svi.run(steps, ys, progress_bar=progress_bar).tolist()
    store = ember.get_param_store()
    return {"losses": losses, **{k: store[k].detach() for k in ("trans", "locs", "scale")}}


def log_likelihood(ys: torch.Tensor, params: dict) -> float:
    """``log p(ys)`` with the states summed out."""
    with torch.no_grad():
        return -TraceEnum_ELBO(max_plate_nesting=1).loss(model, _guide, ys, params)


def decode(ys: torch.Tensor, params: dict) -> torch.Tensor:
    """The most probable state sequences ``[N, T]`` (Viterbi, via ``infer_discrete``)."""
    tr = trace(infer_discrete(model, first_available_dim=-2, temperature=0)).get_trace(ys, params)
    return torch.stack([tr.nodes[f"x_{t}"].value for t in range(ys.shape[1])], -1)


def plot(path: str, ys: torch.Tensor, states: torch.Tensor, decoded: torch.Tensor, fitted_locs: torch.Tensor,
         losses: list) -> bool:
    """``hmm.png``: the first sequence's observations with the true and the decoded states' locations
    (``ys``, ``states``, ``decoded`` of shape ``(N, T)``; ``fitted_locs`` of shape ``(K,)``, in the
    order of the true states), and the loss by step. False when matplotlib is not installed."""
    plt = pyplot()
    if plt is None:
        return False

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [3, 1]})
    t = torch.arange(ys.shape[1])
    ax.plot(t, ys[0], ".", color="0.45", label="observation")
    ax.step(t, TRUE["locs"][states[0]], where="mid", lw=2.0, alpha=0.6, label="true state's location")
    ax.step(t, fitted_locs[decoded[0]], where="mid", lw=1.0, ls="--", color="k", label="Viterbi state (fitted location)")
    ax.set_xlabel("time step")
    ax.set_title("first sequence")
    ax.legend(fontsize=8, loc="upper right")
    ax2.plot(losses)
    ax2.set_xlabel("SVI step")
    ax2.set_ylabel("-log p(data)")
    ax2.set_title("loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--num-sequences", type=int, default=20)
    p.add_argument("--length", type=int, default=100)
    p.add_argument("--steps", type=int, default=100, help="SVI steps (default 100)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="directory for summary.json and hmm.png (default: a new runs/hmm-<date-time>)")
    p.add_argument("--no-plot", action="store_true", help="skip hmm.png")


def main(args: argparse.Namespace) -> int:
    if args.steps < 1 or args.num_sequences < 1 or args.length < 2:
        raise UsageError(f"--steps and --num-sequences must be positive and --length >= 2; got {args.steps}, "
                         f"{args.num_sequences}, {args.length}")
    out = str(make_run_dir(args.out, "hmm"))
    print(f"run directory: {out}")
    ys, states = generate(args.num_sequences, args.length, args.seed)
    res = fit(ys, args.steps, args.lr, progress_bar=True)
    params = {k: res[k] for k in ("trans", "locs", "scale")}
    order = res["locs"].argsort()  # fitted states ordered by location, as the true ones are
    rank = order.argsort()
    decoded = rank[decode(ys, params)]  # in the order of the true states
    accuracy = float((decoded == states).double().mean())
    summary = {"final_loss": res["losses"][-1], "locs": res["locs"][order].tolist(), "scale": float(res["scale"]),
               "trans": res["trans"][order][:, order].tolist(), "decoding_accuracy": accuracy,
               "loglik_fitted": log_likelihood(ys, params), "loglik_true": log_likelihood(ys, TRUE)}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"locs {summary['locs']}, scale {summary['scale']:.3f}; Viterbi accuracy {accuracy:.3f}; log-likelihood "
          f"{summary['loglik_fitted']:.1f} (fitted) vs {summary['loglik_true']:.1f} (true parameters)")
    if not getattr(args, "no_plot", False):
        path = os.path.join(out, "hmm.png")
        report_plot(path, plot(path, ys, states, decoded, res["locs"][order], res["losses"]))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m ember.examples.hmm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(run_main(main, parser.parse_args(), "hmm"))
