"""Normalizing flows: µs per training step of an ``AffineAutoregressive`` and a ``Spline`` flow
at dims 2 and 64, ember vs the same math written by hand in torch, and pyro-ppl when importable
(run with the peers' python, see README's Benchmarks section).

* ``affine_autoregressive`` (an IAF, as in a flow guide): ``z = flow(eps)`` for a fresh batch of
  standard-normal ``eps`` each step; loss = ``mean(log q(z) - log p(z))`` against a fixed Gaussian target
  ``p``; ``log q`` comes from the cached forward pass. MADE network with hidden ``[3 D + 1]``.
* ``spline`` (density estimation): an elementwise linear-rational ``Spline`` (8 bins) on a
  standard-normal base; loss = ``-mean(log q(x))`` on a fixed data batch (one inverse pass).

Every variant: batch 256, Adam(lr=1e-3), the same initial parameters and the same noise; the
loss is read back as a float each step. Prints one JSON line per (flow, dim).

``--check`` (needs pyro-ppl) instead compares ember with pyro-ppl value by value: every flow
loaded with the same ``state_dict`` (outputs, log-determinants, inverses) and the distributions
issue 15 adds (``log_prob`` at the same points); one JSON line per item with the largest
absolute difference.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time

import torch

BATCH = 256
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _normal_lp(x: torch.Tensor, loc: torch.Tensor | float = 0.0) -> torch.Tensor:
    return (-0.5 * (x - loc).pow(2) - _HALF_LOG_2PI).sum(-1)


# ------------------------------------------------------------------ library variants (ember / pyro)
def _library_step(lib, kind: str, dim: int, state: dict):
    dist = lib.distributions
    T = dist.transforms
    torch.manual_seed(0)
    flow = T.affine_autoregressive(dim) if kind == "affine_autoregressive" else T.Spline(dim, count_bins=8, bound=3.0, order="linear")
    if "init" in state:  # the same initial parameters for every variant
        flow.load_state_dict(state["init"], strict=False)
    else:
        state["init"] = {k: v.clone() for k, v in flow.state_dict().items()}
    base = dist.Normal(torch.zeros(dim), torch.ones(dim)).to_event(1)
    q = dist.TransformedDistribution(base, [flow])
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)
    target_loc, data = state["target_loc"], state["data"]

    if kind == "affine_autoregressive":
        def step(noise: torch.Tensor) -> float:
            opt.zero_grad()
            eps = torch.randn(noise.shape)  # fresh noise (a cached transform would hand back last step's z)
            z = flow(eps)
            lq = base.log_prob(eps) - flow.log_abs_det_jacobian(eps, z)
            loss = (lq - _normal_lp(z, target_loc)).mean()
            loss.backward()
            opt.step()
            return loss.item()
    else:
        def step(eps: torch.Tensor) -> float:
            opt.zero_grad()
            loss = -q.log_prob(data).mean()
            loss.backward()
            opt.step()
            q.clear_cache()
            return loss.item()
    return step


# ------------------------------------------------------------------ the same math by hand
def _hand_step(kind: str, dim: int, state: dict):
    init = state["init"]
    target_loc, data = state["target_loc"], state["data"]
    if kind == "affine_autoregressive":
        names = sorted(k for k in init if not k.endswith("mask") and k != "arn.permutation")
        params = {k: init[k].clone().requires_grad_() for k in names}
        masks = {k: init[k] for k in init if k.endswith("mask")}
        w0, b0, w1, b1 = (params[f"arn.layers.{i}.{p}"] for i in (0, 1) for p in ("weight", "bias"))
        m0, m1 = masks["arn.layers.0.mask"], masks["arn.layers.1.mask"]
        opt = torch.optim.Adam(list(params.values()), lr=1e-3)

        def step(noise: torch.Tensor) -> float:
            opt.zero_grad()
            eps = torch.randn(noise.shape)
            h = torch.relu(torch.nn.functional.linear(eps, m0 * w0, b0))
            out = torch.nn.functional.linear(h, m1 * w1, b1).reshape(eps.shape[:-1] + (2, dim))
            mean, s = out[..., 0, :], out[..., 1, :]
            log_scale = s + (s.clamp(-5.0, 3.0) - s).detach()
            z = torch.exp(log_scale) * eps + mean
            lq = _normal_lp(eps) - log_scale.sum(-1)
            loss = (lq - _normal_lp(z, target_loc)).mean()
            loss.backward()
            opt.step()
            return loss.item()

        return step
    from ember.distributions.transforms.spline import rational_spline

    params = {k: init[k].clone().requires_grad_() for k in init}
    opt = torch.optim.Adam(list(params.values()), lr=1e-3)

    def step(eps: torch.Tensor) -> float:
        opt.zero_grad()
        x, ld_inv = rational_spline(data, params["unnormalized_widths"], params["unnormalized_heights"],
                                    params["unnormalized_derivatives"], params["unnormalized_lambdas"], bound=3.0, inverse=True)
        loss = -(_normal_lp(x) + ld_inv.sum(-1)).mean()
        loss.backward()
        opt.step()
        return loss.item()

    return step


def _check_against_pyro() -> None:
    """Largest |ember - pyro| of each flow (same state_dict) and each added distribution's log_prob."""
    import pyro.distributions as P
    import pyro.distributions.transforms as PT

    import ember.distributions as E
    import ember.distributions.transforms as ET

    def emit(name: str, **diffs: float) -> None:
        print(json.dumps({"check": name, **{k: float(f"{v:.3g}") for k, v in diffs.items()}}))

    D = 4
    flows = {
        "affine_autoregressive": (lambda T: T.affine_autoregressive(D), True), "affine_coupling": (lambda T: T.affine_coupling(D), True),
        "spline_linear": (lambda T: T.Spline(D, order="linear"), True), "spline_quadratic": (lambda T: T.Spline(D, order="quadratic"), True),
        "spline_coupling": (lambda T: T.spline_coupling(D), True), "spline_autoregressive": (lambda T: T.spline_autoregressive(D), True),
        "planar": (lambda T: T.planar(D), False), "radial": (lambda T: T.radial(D), False), "householder": (lambda T: T.householder(D, 2), True),
        "sylvester": (lambda T: T.sylvester(D, 2), False), "neural_autoregressive": (lambda T: T.neural_autoregressive(D), False),
        "block_autoregressive": (lambda T: T.block_autoregressive(D), False), "batchnorm": (lambda T: T.batchnorm(D).eval(), True),
        "matrix_exponential": (lambda T: T.matrix_exponential(D), True), "polynomial": (lambda T: T.polynomial(D), False),
    }
    for name, (make, invertible) in flows.items():
        torch.manual_seed(0)
        p = make(PT)
        with torch.no_grad():
            for q in p.parameters():
                q.add_(0.2 * torch.randn_like(q))
        e = make(ET)
        e.load_state_dict(p.state_dict())
        x = torch.randn(5, D)
        yp, ye = p(x), e(x)
        diffs = {"y": (yp - ye).abs().max().item(),
                 "log_det": (p.log_abs_det_jacobian(x, yp) - e.log_abs_det_jacobian(x, ye)).abs().max().item()}
        if invertible:
            diffs["inverse"] = (p.inv(yp.clone()) - e.inv(ye.clone())).abs().max().item()
        emit(name, **diffs)
    dt = torch.double
    t = lambda *v: torch.tensor(v, dtype=dt)  # noqa: E731
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dt)  # noqa: E731
    L = torch.tensor([[1.0, 0, 0], [0.5, 2.0, 0], [-0.3, 0.2, 0.7]], dtype=dt)
    ml, ms, pc, hl, ht, hi = r(3, 2), r(3, 2).abs() + 0.5, r(3), r(4, 3), r(4, 3, 3), r(3)
    lk = torch.distributions.LKJCholesky(3, torch.tensor(2.0, dtype=dt)).sample((4,))
    sphere = torch.nn.functional.normalize(r(5, 3), dim=-1)
    dists = {
        "GammaPoisson": (lambda d: d.GammaPoisson(t(2.0, 0.7), t(0.5, 1.3)), t(0.0, 3.0)),
        "BetaBinomial": (lambda d: d.BetaBinomial(t(2.0, 0.5), t(3.0, 0.8), 10), t(0.0, 7.0)),
        "DirichletMultinomial": (lambda d: d.DirichletMultinomial(t(0.5, 2.0, 1.5), 7), t(2.0, 4.0, 1.0)),
        "ZeroInflatedPoisson": (lambda d: d.ZeroInflatedPoisson(t(3.0, 0.5), gate=t(0.3, 0.6)), t(0.0, 2.0)),
        "ZeroInflatedNegativeBinomial": (lambda d: d.ZeroInflatedNegativeBinomial(t(4.0, 1.5), logits=t(0.3, -0.2), gate=t(0.2, 0.5)), t(0.0, 5.0)),
        "ExtendedBinomial": (lambda d: d.ExtendedBinomial(t(5.0, 8.0), probs=t(0.3, 0.6)), t(2.0, 6.0)),
        "ExtendedBetaBinomial": (lambda d: d.ExtendedBetaBinomial(t(2.0, 0.5), t(3.0, 0.8), t(6.0, 9.0)), t(1.0, 6.0)),
        "LogNormalNegativeBinomial": (lambda d: d.LogNormalNegativeBinomial(t(3.0, 1.0), t(0.2, -0.5), t(0.5, 0.8)), t(0.0, 4.0)),
        "AsymmetricLaplace": (lambda d: d.AsymmetricLaplace(t(0.5, -1.0), t(1.0, 2.0), t(2.0, 0.5)), t(-0.3, 1.7)),
        "SoftAsymmetricLaplace": (lambda d: d.SoftAsymmetricLaplace(t(0.5, -1.0), t(1.0, 2.0), t(2.0, 0.5), t(0.5, 1.0)), t(-0.3, 1.7)),
        "Logistic": (lambda d: d.Logistic(t(0.5, -1.0), t(1.0, 2.0)), t(-0.3, 1.7)),
        "SkewLogistic": (lambda d: d.SkewLogistic(t(0.5, -1.0), t(1.0, 2.0), t(3.0, 0.4)), t(-0.3, 1.7)),
        "FoldedDistribution": (lambda d: d.FoldedDistribution(d.Normal(t(0.7, -2.0), t(1.0, 1.5))), t(0.3, 1.7)),
        "MultivariateStudentT": (lambda d: d.MultivariateStudentT(torch.tensor(6.0, dtype=dt), t(1.0, -1.0, 0.5), L), r(4, 3)),
        "OrderedLogistic": (lambda d: d.OrderedLogistic(t(0.3, -0.2), t(-1.0, 0.5, 2.0)), t(0.0, 3.0)),
        "MixtureOfDiagNormals": (lambda d: d.MixtureOfDiagNormals(ml, ms, t(0.2, -0.5, 1.0)), r(5, 2)),
        "MixtureOfDiagNormalsSharedCovariance": (lambda d: d.MixtureOfDiagNormalsSharedCovariance(ml, ms[0], t(0.2, -0.5, 1.0)), r(5, 2)),
        "VonMises3D": (lambda d: d.VonMises3D(t(1.0, -2.0, 0.5)), sphere),
        "ProjectedNormal": (lambda d: d.ProjectedNormal(pc), sphere),
        "SineBivariateVonMises": (lambda d: d.SineBivariateVonMises(t(0.5), t(-1.0), t(2.0), t(3.0), correlation=t(1.5)), r(5, 1, 2).clamp(-3, 3)),
        "SineSkewed": (lambda d: d.SineSkewed(d.VonMises(t(0.3, -1.0), t(2.0, 1.0)).to_event(1), t(0.4, -0.3)), r(5, 2).clamp(-3, 3)),
        "Stable": (lambda d: d.Stable(t(1.5), t(0.3), t(1.3), t(0.2)), t(-2.0, -0.5, 0.3, 1.0, 3.0)),
        "LKJ": (lambda d: d.LKJ(3, torch.tensor(2.0, dtype=dt)), lk @ lk.transpose(-1, -2)),
        "DiscreteHMM": (lambda d: d.DiscreteHMM(hi, ht, d.Normal(hl, 1.0)), r(5, 4)),
    }
    for name, (make, x) in dists.items():
        emit(name, log_prob=(make(P).log_prob(x) - make(E).log_prob(x)).abs().max().item())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=200, help="steps per round (default 200)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dims", type=int, nargs="+", default=[2, 64])
    p.add_argument("--flows", nargs="+", default=["affine_autoregressive", "spline"])
    p.add_argument("--no-pyro", action="store_true")
    p.add_argument("--check", action="store_true", help="compare values with pyro-ppl instead of timing")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.check:
        _check_against_pyro()
        return
    import ember

    libs = {"ember": ember}
    pyro_version = None
    if not args.no_pyro:
        try:
            import pyro

            libs["pyro"] = pyro
            pyro_version = pyro.__version__
        except ImportError:
            pass
    for kind in args.flows:
        for dim in args.dims:
            gen = torch.Generator().manual_seed(1)
            state = {"target_loc": torch.randn(dim, generator=gen), "data": 1.5 * torch.randn(BATCH, dim, generator=gen)}
            variants = {"ember": _library_step(ember, kind, dim, state)}
            variants["torch"] = _hand_step(kind, dim, state)
            for name, lib in libs.items():
                if name != "ember":
                    variants[name] = _library_step(lib, kind, dim, state)
            noise = torch.randn(BATCH, dim, generator=gen)
            for step in variants.values():  # warm-up
                for _ in range(5):
                    step(noise)
            times: dict[str, list[float]] = {k: [] for k in variants}
            losses: dict[str, float] = {}
            names = list(variants)
            for r in range(args.rounds):
                rot = r % len(names)
                for name in names[rot:] + names[:rot]:
                    torch.manual_seed(r)
                    t = time.perf_counter()
                    for _ in range(args.steps):
                        losses[name] = variants[name](noise)
                    times[name].append((time.perf_counter() - t) / args.steps * 1e6)
                print(f"{kind} D={dim} round {r + 1}: " + ", ".join(f"{k} {times[k][-1]:.0f} µs" for k in names), file=sys.stderr)
            us = {k: round(statistics.median(v), 1) for k, v in times.items()}
            out = {"benchmark": "flows", "flow": kind, "dim": dim, "batch": BATCH, "us_per_step": us,
                   "ratio_to_torch": {k: round(v / us["torch"], 3) for k, v in us.items() if k != "torch"},
                   "final_loss": {k: round(v, 4) for k, v in losses.items()},
                   "threads": args.threads, "torch": torch.__version__, "pyro": pyro_version, "python": platform.python_version()}
            if "pyro" in us:
                out["ember_over_pyro"] = round(us["ember"] / us["pyro"], 3)
            print(json.dumps(out))


if __name__ == "__main__":
    main()
