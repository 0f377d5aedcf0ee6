"""The model × estimator matrix (issue 11, point 9).

One list of estimators (``ESTIMATORS``) and one list of model/guide pairs (``CASES``). Every valid
cell (pair × estimator × {1, 3, 3 vectorized} particles) checks, on the same random numbers
(``ember.set_rng_seed`` before each call):

* ``loss`` ≈ ``differentiable_loss`` ≈ ``loss_and_grads`` (the value);
* the gradients ``loss_and_grads`` leaves in ``.grad`` equal autograd's gradient of
  ``differentiable_loss``, and are finite, for every parameter in the store;
* with ``num_particles > 1`` (not vectorized), the loss is the mean of single-particle losses;
* for Monte-Carlo ELBOs, the loss equals ``-(log p - log q)`` of the same draws computed by hand
  with ``torch.distributions`` (``BY_HAND``), and for reparameterized guides the gradients equal
  autograd's gradients of that by-hand loss (an oracle independent of Ember's traces and surrogates).

Beside the cells: agreement between estimators where the by-hand checks do not imply it; the
analytic-KL estimator by hand; the auxiliary-site rule (issue 11 point 3) for every estimator;
expectations against closed forms (a conjugate Normal model, discrete latents by enumeration);
whether the compiled estimator compiles static models; invalid pairs and their error or warning;
and the coupled-particle estimators (``TraceTailAdaptive_ELBO``, ``ReweightedWakeSleep``), whose
gradients are not the ELBO's, each over every case against its own gradient by hand.
Known bugs are strict xfails whose reason states the bug.

Adding an estimator later means adding one ``Estimator`` to ``ESTIMATORS`` (and saying, with its
flags, what the math promises for it).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch.distributions import constraints

import ember as pyro
import ember.distributions as dist
from ember import poutine
from ember.infer import JitTrace_ELBO, Trace_ELBO, TraceEnum_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from ember.infer.renyi_elbo import RenyiELBO
from ember.infer.trace_elbo import JitTraceMeanField_ELBO
from ember.infer.tracegraph_elbo import JitTraceGraph_ELBO


# =========================================================================================
# Estimators: the one list
# =========================================================================================
@dataclass(frozen=True)
class Estimator:
    """An ELBO class and what the math promises about it.

    :param mc_loss: its loss on one draw is ``-(log p(x, z) - log q(z))`` of that draw (summed
        over sites, scaled and masked), so it equals every other such estimator's value.
    :param full_score_cost: each non-reparameterized site's score is multiplied by the whole
        particle's cost (``Trace_ELBO``'s estimator), so its gradient on one draw equals
        ``Trace_ELBO``'s; ``False`` for estimators that Rao-Blackwellize (``TraceGraph_ELBO``).
    :param analytic_kl: uses ``KL(q || p)`` in closed form where torch registers one.
    :param compiled: compiles ``loss_and_grads`` after its first (eager) call; ``True`` also
        means the cell expects it to compile for models of static structure.
    :param averages_particles: the loss of n particles is the mean of n single-particle losses
        (``False`` for e.g. ``RenyiELBO``, whose loss is a log-mean-exp over particles).
    :param vectorizable: accepts ``vectorize_particles=True``.
    :param per_datum_cost: a score's cost is kept per datum along the site's plates (``False``: the
        whole particle's cost, which is unbiased where per-datum costs are not).
    """

    name: str
    cls: type
    mc_loss: bool = True
    full_score_cost: bool = True
    analytic_kl: bool = False
    compiled: bool = False
    averages_particles: bool = True
    vectorizable: bool = True
    per_datum_cost: bool = True

    def make(self, **kwargs: Any) -> Any:
        return self.cls(**kwargs)


# When adding an estimator, say with the flags what the math promises. E.g. TraceEnum_ELBO: mc_loss only
# where no site is enumerated (a per-case exception goes in Case.xfail or a new Case flag); RenyiELBO:
# mc_loss=False, averages_particles=False (with alpha = 0 and one particle it equals Trace_ELBO).
ESTIMATORS = [
    Estimator("Trace_ELBO", Trace_ELBO),
    Estimator("TraceGraph_ELBO", TraceGraph_ELBO, full_score_cost=False),
    Estimator("TraceMeanField_ELBO", TraceMeanField_ELBO, analytic_kl=True),
    Estimator("JitTrace_ELBO", JitTrace_ELBO, compiled=True),
    Estimator("JitTraceGraph_ELBO", JitTraceGraph_ELBO, full_score_cost=False, compiled=True),
    Estimator("JitTraceMeanField_ELBO", JitTraceMeanField_ELBO, analytic_kl=True, compiled=True),
    # alpha = 1: the ELBO as the limit of the Renyi bound; each particle's score takes its whole cost (not per datum)
    Estimator("RenyiELBO_alpha1", functools.partial(RenyiELBO, alpha=1.0, num_particles=1), full_score_cost=False, per_datum_cost=False),
    # alpha = 0 (IWAE): its expectation is not the ELBO's, so the ELBO-expectation tests below skip it
    Estimator("RenyiELBO", functools.partial(RenyiELBO, num_particles=1), mc_loss=False, full_score_cost=False,
              averages_particles=False, per_datum_cost=False),
    # no site is enumerated in these cases: each score-function site takes its particle's whole cost,
    # and a guide with one runs its particles one by one (warning), so the vectorized cells leave it out
    # (test_trace_enum_runs_score_function_particles_one_by_one checks that path)
    Estimator("TraceEnum_ELBO", functools.partial(TraceEnum_ELBO, strict_enumeration_warning=False), full_score_cost=False,
              vectorizable=False),
]
EST_BY_NAME = {e.name: e for e in ESTIMATORS}

PARTICLES = {
    "1": {"num_particles": 1},
    "3": {"num_particles": 3},
    "3vec": {"num_particles": 3, "vectorize_particles": True},
}


# =========================================================================================
# Model/guide pairs
# =========================================================================================
X4 = torch.tensor([0.4, -1.1, 2.0, 0.3])
X6 = torch.tensor([0.5, -0.2, 1.3, 2.1, -0.7, 0.9])
X32 = torch.tensor([[0.1, 0.8], [-0.6, 1.5], [2.2, 0.4]])
X43 = torch.tensor([[0.2, -0.3, 1.0], [0.7, 0.1, -0.4], [1.9, 0.5, 0.3], [-0.8, 1.2, 0.6]])
X42 = X43[:, :2].contiguous()
Y4 = torch.tensor([0, 2, 1, 2])
MASK4 = torch.tensor([True, False, True, True])


def _pos(name: str, init: Any) -> torch.Tensor:
    return pyro.param(name, torch.as_tensor(init, dtype=torch.get_default_dtype()), constraint=constraints.positive)


def _real(name: str, init: Any) -> torch.Tensor:
    return pyro.param(name, torch.as_tensor(init, dtype=torch.get_default_dtype()))


def _normal_guide_site(name: str, shape: tuple = (), loc: float = 0.0, scale: float = 0.7) -> torch.Tensor:
    """``name ~ Normal(param, positive param)`` of batch shape ``shape``."""
    return pyro.sample(name, dist.Normal(_real(f"{name}_loc", torch.full(shape, loc)), _pos(f"{name}_scale", torch.full(shape, scale))))


# ---- nested plates: mu, z_a per a (dim -2), z_ab per (a, b) (dim -1); x (3, 2) -------------------
def nested_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("a", 3, dim=-2):
        z_a = pyro.sample("z_a", dist.Normal(mu, 1.0))
        with pyro.plate("b", 2, dim=-1):
            z_ab = pyro.sample("z_ab", dist.Normal(z_a, 1.0))
            pyro.sample("x", dist.Normal(z_ab, 0.5), obs=x)


def nested_guide(x):
    _normal_guide_site("mu")
    with pyro.plate("a", 3, dim=-2):
        _normal_guide_site("z_a", (3, 1))
        with pyro.plate("b", 2, dim=-1):
            _normal_guide_site("z_ab", (3, 2), loc=0.2)


# ---- nested plates with automatic dims: the outer plate gets dim -1, the inner one dim -2 ------------
def nested_auto_model(x):
    with pyro.plate("a", 3):
        z_a = pyro.sample("z_a", dist.Normal(0.0, 1.0))  # (3,)
        with pyro.plate("b", 2):
            pyro.sample("x", dist.Normal(z_a, 1.0), obs=x.T)  # (2, 3)


def nested_auto_guide(x):
    with pyro.plate("a", 3):
        _normal_guide_site("z_a", (3,))


# ---- crossed plates: a row effect and a column effect, both under the (row, col) likelihood ---------
def crossed_model(x):
    row = pyro.plate("row", 3, dim=-2)
    col = pyro.plate("col", 2, dim=-1)
    with row:
        r = pyro.sample("r", dist.Normal(0.0, 1.0))  # (3, 1)
    with col:
        c = pyro.sample("c", dist.Normal(0.0, 1.0))  # (2,)
    with row, col:
        pyro.sample("x", dist.Normal(r + c, 1.0), obs=x)  # (3, 2)


def crossed_guide(x):
    with pyro.plate("row", 3, dim=-2):
        _normal_guide_site("r", (3, 1))
    with pyro.plate("col", 2, dim=-1):
        _normal_guide_site("c", (2,))


# ---- subsampling: subsample_size (random indices drawn in the guide, replayed in the model) ------
def subsample_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    with pyro.plate("data", 6, subsample_size=3) as idx:
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x[idx])


def subsample_guide(x):
    _normal_guide_site("mu")
    loc, scale = _real("z_loc", torch.zeros(6)), _pos("z_scale", torch.full((6,), 0.5))
    with pyro.plate("data", 6, subsample_size=3) as idx:
        pyro.sample("z", dist.Normal(loc[idx], scale[idx]))


# ---- subsampling: explicit indices -----------------------------------------------------------
IDX = torch.tensor([0, 2, 5])


def subsample_idx_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 2.0))
    with pyro.plate("data", 6, subsample=IDX) as idx:
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=x[idx])


def subsample_idx_guide(x):
    _normal_guide_site("mu")
    loc, scale = _real("z_loc", torch.zeros(6)), _pos("z_scale", torch.full((6,), 0.5))
    with pyro.plate("data", 6, subsample=IDX) as idx:
        pyro.sample("z", dist.Normal(loc[idx], scale[idx]))


# ---- an auxiliary guide site ------------------------------------------------------------------
def aux_model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", 4):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def aux_guide(x):
    u = pyro.sample("u", dist.Normal(_real("u_loc", 0.1), 1.0), infer={"is_auxiliary": True})
    pyro.sample("z", dist.Normal(_real("w", 0.5) * u, _pos("z_scale", 0.8)))


# ---- discrete latents (score function; no enumeration) ----------------------------------------
def discrete_model(x):
    p = pyro.sample("p", dist.Beta(2.0, 2.0))
    with pyro.plate("data", 4):
        c = pyro.sample("c", dist.Bernoulli(p))
        k = pyro.sample("k", dist.Categorical(torch.ones(3) / 3))
        pyro.sample("x", dist.Normal(2.0 * c + 0.5 * k.to(x.dtype), 1.0), obs=x)


def discrete_guide(x):
    pyro.sample("p", dist.Beta(_pos("p_a", 2.0), _pos("p_b", 3.0)))
    with pyro.plate("data", 4):
        pyro.sample("c", dist.Bernoulli(probs=pyro.param("c_probs", torch.full((4,), 0.4), constraint=constraints.unit_interval)))
        pyro.sample("k", dist.Categorical(probs=pyro.param("k_probs", torch.ones(4, 3) / 3, constraint=constraints.simplex)))


# ---- deterministic (model only); prior without a registered KL ---------------------------------
def deterministic_model(x):
    z = pyro.sample("z", dist.StudentT(4.0, 0.0, 1.0))
    y = pyro.deterministic("y", 2.0 * z + 1.0)
    with pyro.plate("data", 4):
        pyro.sample("x", dist.Normal(y, 1.0), obs=x)


def deterministic_guide(x):
    z = _normal_guide_site("z")
    pyro.deterministic("z2", z * z)


# ---- factor -------------------------------------------------------------------------------------
def factor_model(x):
    z = pyro.sample("z", dist.Cauchy(0.0, 1.0))
    pyro.factor("f", -0.5 * z**2)
    with pyro.plate("data", 4):
        pyro.factor("g", -(x - z).abs())


def factor_guide(x):
    _normal_guide_site("z")


# ---- poutine.mask over latents and observations -----------------------------------------------
def mask_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", 4), poutine.mask(mask=MASK4):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def mask_guide(x):
    _normal_guide_site("mu")
    with pyro.plate("data", 4), poutine.mask(mask=MASK4):
        _normal_guide_site("z", (4,))


# ---- poutine.scale ------------------------------------------------------------------------------
def scale_model(x):
    with poutine.scale(scale=0.25):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 4), poutine.scale(scale=torch.tensor([1.0, 2.0, 0.5, 3.0])):
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def scale_guide(x):
    with poutine.scale(scale=0.25):
        _normal_guide_site("z")


# ---- observation mask via .mask() ----------------------------------------------------------
def obs_mask_model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", 4):
        pyro.sample("x", dist.Normal(z, 1.0).mask(MASK4), obs=x)


def obs_mask_guide(x):
    _normal_guide_site("z")


# ---- recursion: a geometric number of Bernoulli draws ------------------------------------------
MAX_DEPTH = 12


def _geometric(p: torch.Tensor, t: int = 0) -> int:
    b = pyro.sample(f"b_{t}", dist.Bernoulli(p))
    if b.item() == 1 and t < MAX_DEPTH:
        return 1 + _geometric(p, t + 1)
    return 0


def recursion_model(x):
    n = _geometric(torch.tensor(0.5))
    pyro.sample("x", dist.Normal(float(n), 1.0), obs=x[0])


def recursion_guide(x):
    _geometric(pyro.param("geo_p", torch.tensor(0.6), constraint=constraints.unit_interval))


# ---- dynamic structure: which latent exists depends on a random choice ----------------------------
def dynamic_model(x):
    c = pyro.sample("c", dist.Bernoulli(0.4))
    if c.item() == 1:
        z = pyro.sample("z_pos", dist.Gamma(2.0, 1.0))
    else:
        z = -pyro.sample("z_neg", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", 4):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def dynamic_guide(x):
    c = pyro.sample("c", dist.Bernoulli(pyro.param("c_p", torch.tensor(0.5), constraint=constraints.unit_interval)))
    if c.item() == 1:
        pyro.sample("z_pos", dist.Gamma(_pos("g_a", 2.0), _pos("g_b", 1.5)))
    else:
        pyro.sample("z_neg", dist.LogNormal(_real("ln_loc", 0.0), _pos("ln_scale", 0.5)))


# ---- to_event ------------------------------------------------------------------------------------
def event_model(x):
    z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    with pyro.plate("data", 4):
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def event_guide(x):
    pyro.sample("z", dist.Normal(_real("z_loc", torch.zeros(3)), _pos("z_scale", torch.full((3,), 0.6))).to_event(1))


# ---- sequential plates ------------------------------------------------------------------------
def sequential_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    for i in pyro.plate("data", 4):
        z = pyro.sample(f"z_{i}", dist.Normal(mu, 1.0))
        pyro.sample(f"x_{i}", dist.Normal(z, 1.0), obs=x[i])


def sequential_guide(x):
    _normal_guide_site("mu")
    loc, scale = _real("z_loc", torch.zeros(4)), _pos("z_scale", torch.full((4,), 0.6))
    for i in pyro.plate("data", 4):
        pyro.sample(f"z_{i}", dist.Normal(loc[i], scale[i]))


# ---- a subsampled sequential plate: the guide draws the indices, the model's site names follow ------
def sequential_subsample_model(x):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    for j in pyro.plate("data", 6, subsample_size=2):
        z = pyro.sample(f"z_{j}", dist.Normal(mu, 1.0))
        pyro.sample(f"x_{j}", dist.Normal(z, 1.0), obs=x[j])


def sequential_subsample_guide(x):
    _normal_guide_site("mu")
    loc, scale = _real("z_loc", torch.zeros(6)), _pos("z_scale", torch.full((6,), 0.6))
    for j in pyro.plate("data", 6, subsample_size=2):
        pyro.sample(f"z_{j}", dist.Normal(loc[j], scale[j]))


# ---- ember.module networks (an encoder in the guide, a decoder in the model) -------------------
def _make_net(n_in: int, n_out: int, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Linear(n_in, n_out)
    with torch.no_grad():
        net.weight.copy_(torch.randn(net.weight.shape, generator=g) * 0.5)
        net.bias.copy_(torch.randn(net.bias.shape, generator=g) * 0.1)
    return net


DECODER = _make_net(1, 1, 11)
ENCODER = _make_net(1, 2, 12)


def module_model(x):
    dec = pyro.module("decoder", DECODER)
    with pyro.plate("data", 4):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(dec(z.unsqueeze(-1)).squeeze(-1), 1.0), obs=x)


def module_guide(x):
    enc = pyro.module("encoder", ENCODER)
    with pyro.plate("data", 4):
        out = enc(x.unsqueeze(-1))
        pyro.sample("z", dist.Normal(out[..., 0], torch.nn.functional.softplus(out[..., 1])))


# ---- constrained parameters: positive, interval, simplex, lower_cholesky ----------------------
def constrained_model(x):
    sigma = pyro.sample("sigma", dist.LogNormal(0.0, 1.0))
    w = pyro.sample("w", dist.Dirichlet(torch.ones(3)))
    loc = pyro.sample("loc", dist.MultivariateNormal(torch.zeros(2), torch.eye(2)))
    with pyro.plate("data", 4):
        pyro.sample("x", dist.MultivariateNormal(loc, scale_tril=sigma[..., None, None] * torch.eye(2)), obs=x)
        pyro.sample("y", dist.Categorical(w), obs=Y4)


def constrained_guide(x):
    s = pyro.param("s_scale", torch.tensor(0.5), constraint=constraints.interval(0.05, 2.0))
    pyro.sample("sigma", dist.LogNormal(_real("s_loc", 0.0), s))
    pyro.sample("w", dist.Dirichlet(_pos("w_conc", torch.tensor([1.0, 2.0, 3.0]))))
    tril = pyro.param("loc_tril", torch.tensor([[0.7, 0.0], [0.2, 0.5]]), constraint=constraints.lower_cholesky)
    pyro.sample("loc", dist.MultivariateNormal(_real("loc_loc", torch.zeros(2)), scale_tril=tril))


@dataclass(frozen=True)
class Case:
    """A valid model/guide pair.

    :param reparam: every guide latent is reparameterized (no score-function terms).
    :param analytic_kl: some guide latent has a torch-registered ``KL(q || p)`` with its prior, so
        ``TraceMeanField_ELBO`` differs from ``Trace_ELBO`` on a draw (checked both ways).
    :param static: the structure does not depend on sampled values (``JitTrace_ELBO`` compiles).
    :param vectorizable: runs under ``vectorize_particles`` (no Python control flow on samples).
    :param xfail: ``{(estimator name, particles key or "*", check): reason}`` for known bugs;
        ``check`` is ``"cell"``, ``"agree"``, ``"compile"`` or ``"by_hand_kl"``.
    """

    name: str
    model: Callable
    guide: Callable
    args: tuple
    reparam: bool = True
    analytic_kl: bool = True
    static: bool = True
    vectorizable: bool = True
    xfail: dict = field(default_factory=dict)


# Known bugs, each pinned by a strict xfail (the test must start passing when the bug is fixed).
def _jit_xfail(reason: str) -> dict:
    """The same known compile failure for every compiled estimator."""
    return {(j, "*", "compile"): reason for j in ("JitTrace_ELBO", "JitTraceGraph_ELBO", "JitTraceMeanField_ELBO")}


JIT_DIRICHLET = (
    "JitTrace_ELBO does not compile a guide with a Beta or Dirichlet site: their rsample goes through torch's "
    "_Dirichlet autograd.Function, which lacks setup_context, and torch.func (grad_and_value) refuses it; the step runs eagerly"
)

CASES = [
    Case("nested_plates", nested_model, nested_guide, (X32,)),
    Case("nested_plates_auto", nested_auto_model, nested_auto_guide, (X32,)),
    Case("crossed_plates", crossed_model, crossed_guide, (X32,)),
    Case("subsample_size", subsample_model, subsample_guide, (X6,)),
    Case("subsample_indices", subsample_idx_model, subsample_idx_guide, (X6,)),
    Case("auxiliary", aux_model, aux_guide, (X4,)),
    Case("discrete", discrete_model, discrete_guide, (X4,), reparam=False, xfail=_jit_xfail(JIT_DIRICHLET)),
    Case("deterministic", deterministic_model, deterministic_guide, (X4,), analytic_kl=False),
    Case("factor", factor_model, factor_guide, (X4,), analytic_kl=False),
    Case("poutine_mask", mask_model, mask_guide, (X4,)),
    Case("poutine_scale", scale_model, scale_guide, (X4,)),
    Case("obs_mask", obs_mask_model, obs_mask_guide, (X4,)),
    Case("recursion", recursion_model, recursion_guide, (X4,), reparam=False, analytic_kl=False, static=False, vectorizable=False),
    Case("dynamic", dynamic_model, dynamic_guide, (X4,), reparam=False, static=False, vectorizable=False),
    Case("to_event", event_model, event_guide, (X43,)),
    Case("sequential_plates", sequential_model, sequential_guide, (X4,)),
    Case("sequential_subsample", sequential_subsample_model, sequential_subsample_guide, (X6,), static=False),
    Case("module", module_model, module_guide, (X4,), static=False),  # JitTrace refuses nn.Module params (documented)
    Case("constrained_params", constrained_model, constrained_guide, (X42,), xfail=_jit_xfail(JIT_DIRICHLET)),
]
CASE_BY_NAME = {c.name: c for c in CASES}


# =========================================================================================
# Helpers
# =========================================================================================
def _params() -> dict[str, torch.Tensor]:
    """The store's unconstrained parameters (what gradients are taken with respect to)."""
    return dict(pyro.get_param_store().named_parameters())


def _zero_grads() -> None:
    for p in _params().values():
        p.grad = None


def _close(a: Any, b: Any, what: str, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    a = torch.as_tensor(a.detach() if isinstance(a, torch.Tensor) else a, dtype=torch.float64)
    b = torch.as_tensor(b.detach() if isinstance(b, torch.Tensor) else b, dtype=torch.float64)
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def _warm_up(est: Estimator, elbo: Any, case: Case) -> None:
    """First call: creates the parameters, guesses plate nesting, compiles (JitTrace). A valid pair
    warns about nothing, except a compiled estimator saying it runs eagerly (whether it compiles
    is ``test_compiles_where_static``'s question)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        elbo.loss_and_grads(case.model, case.guide, *case.args)
    msgs = [str(w.message) for w in caught]
    if est.compiled:
        msgs = [m for m in msgs if "runs eagerly" not in m]
    assert not msgs, f"{est.name} on the valid pair '{case.name}' warned: {msgs}"
    _zero_grads()


def _loss_grads_on_seed(elbo: Any, case: Case, seed: int) -> tuple[float, dict[str, torch.Tensor | None]]:
    _zero_grads()
    pyro.set_rng_seed(seed)
    value = elbo.loss_and_grads(case.model, case.guide, *case.args)
    grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in _params().items()}
    _zero_grads()
    return value, grads


def _xfail_marks(case: Case, est: Estimator, pkey: str, check: str) -> list:
    """``xfail(strict=True)`` for a cell listed in ``case.xfail``: it must fail until the bug is fixed."""
    for key in [(est.name, pkey, check), (est.name, "*", check)]:
        if key in case.xfail:
            return [pytest.mark.xfail(strict=True, reason=case.xfail[key])]
    return []


def _cell_params() -> list:
    out = []
    for case in CASES:
        for est in ESTIMATORS:
            for pkey, kw in PARTICLES.items():
                if kw.get("vectorize_particles") and not (case.vectorizable and est.vectorizable):
                    continue
                marks = _xfail_marks(case, est, pkey, "cell")
                # a compiled estimator records a graph per cell (~1 s): its multi-particle cells are slow
                if est.compiled and pkey != "1":
                    marks.append(pytest.mark.slow)
                out.append(pytest.param(case, est, pkey, id=f"{case.name}-{est.name}-{pkey}", marks=marks))
    return out


# =========================================================================================
# The matrix
# =========================================================================================
@pytest.mark.parametrize("case, est, pkey", _cell_params())
def test_cell(case: Case, est: Estimator, pkey: str) -> None:
    """loss ≈ differentiable_loss ≈ loss_and_grads on the same random numbers; the stored
    gradients are autograd's gradients of differentiable_loss and finite; particles average; and
    where the estimator's loss is the Monte-Carlo ELBO, loss and gradients equal the by-hand ones
    (``_check_by_hand``)."""
    kw = PARTICLES[pkey]
    elbo = est.make(**kw)
    _warm_up(est, elbo, case)
    seed = 123
    pyro.set_rng_seed(seed)
    loss = elbo.loss(case.model, case.guide, *case.args)
    pyro.set_rng_seed(seed)
    surrogate = elbo.differentiable_loss(case.model, case.guide, *case.args)
    params = _params()
    names = list(params)
    auto = torch.autograd.grad(surrogate, [params[n] for n in names], allow_unused=True)
    value, grads = _loss_grads_on_seed(elbo, case, seed)

    assert isinstance(loss, float) and math.isfinite(loss), f"loss is {loss!r}"
    _close(surrogate.detach(), loss, "differentiable_loss vs loss")
    _close(value, loss, "loss_and_grads vs loss")
    assert names, "no parameters were created"
    for n, g_auto in zip(names, auto):
        g = grads[n]
        if g is None and g_auto is None and not case.static:
            continue  # a parameter of a branch that this draw did not take
        assert g is not None, f"parameter '{n}' got no gradient from loss_and_grads"
        assert bool(torch.isfinite(g).all()), f"parameter '{n}' has a non-finite gradient {g}"
        assert g_auto is not None, f"parameter '{n}' is not in differentiable_loss's graph"
        _close(g, g_auto, f"gradient of '{n}': loss_and_grads vs autograd of differentiable_loss", rtol=1e-4, atol=1e-5)

    if kw["num_particles"] > 1 and not kw.get("vectorize_particles") and est.averages_particles:
        single = est.make(num_particles=1)
        pyro.set_rng_seed(seed)
        singles = [single.loss(case.model, case.guide, *case.args) for _ in range(kw["num_particles"])]
        _close(loss, sum(singles) / len(singles), "the loss of 3 particles vs the mean of 3 single-particle losses")

    if est.mc_loss and not (est.analytic_kl and case.analytic_kl) and (kw["num_particles"] == 1 or est.averages_particles):
        _check_by_hand(est, elbo, case, kw)


def _guide_values(tr: Any) -> dict:
    return {name: site["value"] for name, site in tr.nodes.items() if site["type"] in ("sample", "subsample")}


def _check_by_hand(est: Estimator, elbo: Any, case: Case, kw: dict) -> None:
    """On the draws a seed gives (the guide traced once per particle, or once inside a plate of
    particles at the ELBO's particle dim when vectorized), the loss is the mean over particles of
    -(log p - log q) computed by hand with torch.distributions (``BY_HAND``): plates, subsample
    scaling, masks, scales, factors, auxiliary sites, to_event, ... For reparameterized guides,
    the gradient ``loss_and_grads`` leaves on every parameter (unconstrained; nn.Module weights
    included) is autograd's gradient of that by-hand loss through the same draws: the pathwise
    estimator, independently of Ember's surrogate."""
    n = kw["num_particles"]
    params = _params()
    names = list(params)
    for seed in (21, 22):
        pyro.set_rng_seed(seed)
        if kw.get("vectorize_particles") and n > 1:
            with pyro.plate("num_particles_vectorized", n, dim=-int(elbo.max_plate_nesting) - 1):
                values = [_guide_values(poutine.trace(case.guide).get_trace(*case.args))]
        else:
            values = [_guide_values(poutine.trace(case.guide).get_trace(*case.args)) for _ in range(n)]
        expected = sum(BY_HAND[case.name](v, *case.args) for v in values) / n
        pyro.set_rng_seed(seed)
        _close(elbo.loss(case.model, case.guide, *case.args), expected, f"{est.name} loss on '{case.name}' vs by hand, seed {seed}")
        value, grads = _loss_grads_on_seed(elbo, case, seed)
        _close(value, expected, f"{est.name} loss_and_grads on '{case.name}' vs by hand, seed {seed}")
        if not case.reparam:
            continue
        by_hand = torch.autograd.grad(expected, [params[k] for k in names], allow_unused=True)
        for k, g_hand in zip(names, by_hand):
            assert g_hand is not None, f"the by-hand loss of '{case.name}' does not depend on '{k}'"
            assert grads[k] is not None, f"{est.name}: parameter '{k}' got no gradient"
            _close(grads[k], g_hand, f"{est.name} gradient of '{k}' on '{case.name}' vs by hand, seed {seed}", rtol=1e-4, atol=1e-5)


def _agree_params() -> list:
    """The cells whose agreement the by-hand checks do not already imply: score-function gradients
    (equal for estimators with the whole particle's cost), and analytic-KL estimators (equal where no
    KL applies, different where one does: this checks each case's ``analytic_kl`` flag)."""
    out = []
    for case in CASES:
        for est in ESTIMATORS:
            if est.name == "Trace_ELBO" or not (est.analytic_kl or (not case.reparam and est.full_score_cost)):
                continue
            out.append(pytest.param(case, est, id=f"{case.name}-{est.name}", marks=_xfail_marks(case, est, "1", "agree")))
    return out


@pytest.mark.parametrize("case, est", _agree_params())
def test_agrees_with_trace_elbo(case: Case, est: Estimator) -> None:
    """On one draw, each estimator's loss is Trace_ELBO's where the math says so (every
    Monte-Carlo ELBO; TraceMeanField where no analytic KL applies, and then it must differ
    where one does), and so are the gradients: for reparameterized guides, and for score-function
    guides when the estimator multiplies each score by the whole particle's cost."""
    ref = Trace_ELBO()
    elbo = est.make()
    _warm_up(EST_BY_NAME["Trace_ELBO"], ref, case)
    _warm_up(est, elbo, case)
    for seed in (5, 6, 7):
        ref_value, ref_grads = _loss_grads_on_seed(ref, case, seed)
        value, grads = _loss_grads_on_seed(elbo, case, seed)
        kl_applies = est.analytic_kl and case.analytic_kl
        if not est.mc_loss:
            continue
        if kl_applies:
            assert abs(value - ref_value) > 1e-6, (
                f"'{case.name}' is flagged as having an analytic KL, but {est.name} gave Trace_ELBO's loss {ref_value}"
            )
            continue
        _close(value, ref_value, f"{est.name} vs Trace_ELBO loss on seed {seed}")
        if case.reparam or est.full_score_cost:
            for n, g in ref_grads.items():
                if g is None or grads[n] is None:
                    assert g is None and grads[n] is None, f"'{n}' has a gradient under only one of {est.name} and Trace_ELBO"
                    continue
                _close(grads[n], g, f"{est.name} vs Trace_ELBO gradient of '{n}' on seed {seed}", rtol=1e-4, atol=1e-5)


def _static_params() -> list:
    out = []
    for case in CASES:
        if not case.static:
            continue
        for est in ESTIMATORS:
            if est.compiled:
                out.append(pytest.param(case, est, id=f"{case.name}-{est.name}", marks=_xfail_marks(case, est, "1", "compile")))
    return out


@pytest.mark.parametrize("case, est", _static_params())
def test_compiles_where_static(case: Case, est: Estimator) -> None:
    """A compiled estimator compiles every model of static structure in the matrix (nn.Module
    networks excepted: refused, documented)."""
    elbo = est.make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        elbo.loss_and_grads(case.model, case.guide, *case.args)
    assert elbo.compile_status.startswith("compiled"), f"{est.name} on '{case.name}': {elbo.compile_status}"


# =========================================================================================
# Each pair's loss on one draw, by hand (torch.distributions directly: an oracle independent of
# Ember's traces, scale/mask handling and estimators)
# =========================================================================================
td = torch.distributions


def _p(name: str) -> torch.Tensor:
    return pyro.param(name)  # keeps the graph to the unconstrained parameter (for gradients by hand)


def _qn(name: str, v: dict, idx: Any = None) -> torch.Tensor:
    """log q of ``_normal_guide_site(name)`` (entries ``idx`` of its parameters), summed."""
    loc, scale = _p(f"{name}_loc"), _p(f"{name}_scale")
    if idx is not None:
        loc, scale = loc[idx], scale[idx]
    return td.Normal(loc, scale).log_prob(v[name]).sum()


def _lpn(value: torch.Tensor, loc: Any, scale: Any) -> torch.Tensor:
    return td.Normal(loc, scale).log_prob(value).sum()


def _hand_nested(v: dict, x: torch.Tensor) -> torch.Tensor:
    log_p = _lpn(v["mu"], 0.0, 1.0) + _lpn(v["z_a"], v["mu"], 1.0) + _lpn(v["z_ab"], v["z_a"], 1.0) + _lpn(x, v["z_ab"], 0.5)
    return -(log_p - _qn("mu", v) - _qn("z_a", v) - _qn("z_ab", v))


def _hand_nested_auto(v: dict, x: torch.Tensor) -> torch.Tensor:
    return -(_lpn(v["z_a"], 0.0, 1.0) + _lpn(x.T, v["z_a"], 1.0) - _qn("z_a", v))


def _hand_crossed(v: dict, x: torch.Tensor) -> torch.Tensor:
    log_p = _lpn(v["r"], 0.0, 1.0) + _lpn(v["c"], 0.0, 1.0) + _lpn(x, v["r"] + v["c"], 1.0)
    return -(log_p - _qn("r", v) - _qn("c", v))


def _hand_subsample(v: dict, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    s = 6 / len(idx)
    local = _lpn(v["z"], v["mu"], 1.0) + _lpn(x[idx], v["z"], 0.5) - td.Normal(_p("z_loc")[idx], _p("z_scale")[idx]).log_prob(v["z"]).sum()
    return -(_lpn(v["mu"], 0.0, 2.0) - _qn("mu", v) + s * local)


def _hand_aux(v: dict, x: torch.Tensor) -> torch.Tensor:
    log_q = _lpn(v["z"], _p("w") * v["u"], _p("z_scale")) + _lpn(v["u"], _p("u_loc"), 1.0)  # the rule: -log q(u) counts
    return -(_lpn(v["z"], 0.0, 1.0) + _lpn(x, v["z"], 1.0) - log_q)


def _hand_discrete(v: dict, x: torch.Tensor) -> torch.Tensor:
    p, c, k = v["p"], v["c"], v["k"]
    log_p = (
        td.Beta(2.0, 2.0).log_prob(p).sum()
        + td.Bernoulli(p).log_prob(c).sum()
        + td.Categorical(torch.ones(3) / 3).log_prob(k).sum()
        + _lpn(x, 2.0 * c + 0.5 * k.to(x.dtype), 1.0)
    )
    log_q = (
        td.Beta(_p("p_a"), _p("p_b")).log_prob(p).sum()
        + td.Bernoulli(_p("c_probs")).log_prob(c).sum()
        + td.Categorical(_p("k_probs")).log_prob(k).sum()
    )
    return -(log_p - log_q)


def _hand_deterministic(v: dict, x: torch.Tensor) -> torch.Tensor:
    z = v["z"]
    return -(td.StudentT(4.0, 0.0, 1.0).log_prob(z).sum() + _lpn(x, 2.0 * z + 1.0, 1.0) - _qn("z", v))


def _hand_factor(v: dict, x: torch.Tensor) -> torch.Tensor:
    z = v["z"]
    return -(td.Cauchy(0.0, 1.0).log_prob(z).sum() - 0.5 * (z**2).sum() - (x - z).abs().sum() - _qn("z", v))


def _hand_mask(v: dict, x: torch.Tensor) -> torch.Tensor:
    m = MASK4
    z = v["z"][..., m]  # (particles,)* x (the unmasked data)
    local = _lpn(z, v["mu"], 1.0) + _lpn(x[m], z, 1.0) - td.Normal(_p("z_loc")[m], _p("z_scale")[m]).log_prob(z).sum()
    return -(_lpn(v["mu"], 0.0, 1.0) - _qn("mu", v) + local)


def _hand_scale(v: dict, x: torch.Tensor) -> torch.Tensor:
    s = torch.tensor([1.0, 2.0, 0.5, 3.0])
    z = v["z"]
    return -0.25 * (_lpn(z, 0.0, 1.0) + (s * td.Normal(z, 1.0).log_prob(x)).sum() - _qn("z", v))


def _hand_obs_mask(v: dict, x: torch.Tensor) -> torch.Tensor:
    return -(_lpn(v["z"], 0.0, 1.0) + _lpn(x[MASK4], v["z"], 1.0) - _qn("z", v))


def _hand_recursion(v: dict, x: torch.Tensor) -> torch.Tensor:
    bs = [v[f"b_{t}"] for t in range(MAX_DEPTH + 1) if f"b_{t}" in v]
    n = 0
    while n < len(bs) - 1 and bs[n].item() == 1:
        n += 1
    if bs[n].item() == 1:
        n += 1  # the depth cap: every draw was a success
    b = torch.stack(bs)
    log_p = td.Bernoulli(0.5).log_prob(b).sum() + _lpn(x[0], float(n), 1.0)
    return -(log_p - td.Bernoulli(_p("geo_p")).log_prob(b).sum())


def _hand_dynamic(v: dict, x: torch.Tensor) -> torch.Tensor:
    c = v["c"]
    log_p = td.Bernoulli(0.4).log_prob(c)
    log_q = td.Bernoulli(_p("c_p")).log_prob(c)
    if c.item() == 1:
        z = v["z_pos"]
        log_p = log_p + td.Gamma(2.0, 1.0).log_prob(z)
        log_q = log_q + td.Gamma(_p("g_a"), _p("g_b")).log_prob(z)
    else:
        log_p = log_p + td.LogNormal(0.0, 1.0).log_prob(v["z_neg"])
        log_q = log_q + td.LogNormal(_p("ln_loc"), _p("ln_scale")).log_prob(v["z_neg"])
        z = -v["z_neg"]
    return -(log_p + _lpn(x, z, 1.0) - log_q)


def _hand_event(v: dict, x: torch.Tensor) -> torch.Tensor:
    return -(_lpn(v["z"], 0.0, 1.0) + _lpn(x, v["z"], 1.0) - _qn("z", v))


def _hand_sequential(v: dict, x: torch.Tensor, n: int = 4) -> torch.Tensor:
    js = sorted(int(k[2:]) for k in v if k.startswith("z_") and k[2:].isdigit())
    s = n / len(js)
    local = sum(
        _lpn(v[f"z_{j}"], v["mu"], 1.0) + _lpn(x[j], v[f"z_{j}"], 1.0) - _lpn(v[f"z_{j}"], _p("z_loc")[j], _p("z_scale")[j]) for j in js
    )
    return -(_lpn(v["mu"], 0.0, 1.0) - _qn("mu", v) + s * local)


def _hand_module(v: dict, x: torch.Tensor) -> torch.Tensor:
    z = v["z"]
    out = ENCODER(x.unsqueeze(-1))
    dec = DECODER(z.unsqueeze(-1)).squeeze(-1)
    log_q = td.Normal(out[..., 0], torch.nn.functional.softplus(out[..., 1])).log_prob(z).sum()
    return -(_lpn(z, 0.0, 1.0) + _lpn(x, dec, 1.0) - log_q)


def _hand_constrained(v: dict, x: torch.Tensor) -> torch.Tensor:
    sigma, w, loc = v["sigma"], v["w"], v["loc"]
    log_p = (
        td.LogNormal(0.0, 1.0).log_prob(sigma).sum()
        + td.Dirichlet(torch.ones(3)).log_prob(w).sum()
        + td.MultivariateNormal(torch.zeros(2), torch.eye(2)).log_prob(loc).sum()
        + td.MultivariateNormal(loc, scale_tril=sigma[..., None, None] * torch.eye(2)).log_prob(x).sum()
        + td.Categorical(w).log_prob(Y4).sum()
    )
    log_q = (
        td.LogNormal(_p("s_loc"), _p("s_scale")).log_prob(sigma).sum()
        + td.Dirichlet(_p("w_conc")).log_prob(w).sum()
        + td.MultivariateNormal(_p("loc_loc"), scale_tril=_p("loc_tril")).log_prob(loc).sum()
    )
    return -(log_p - log_q)


BY_HAND: dict[str, Callable] = {
    "nested_plates": _hand_nested,
    "nested_plates_auto": _hand_nested_auto,
    "crossed_plates": _hand_crossed,
    "subsample_size": lambda v, x: _hand_subsample(v, x, v["data"]),
    "subsample_indices": lambda v, x: _hand_subsample(v, x, IDX),
    "auxiliary": _hand_aux,
    "discrete": _hand_discrete,
    "deterministic": _hand_deterministic,
    "factor": _hand_factor,
    "poutine_mask": _hand_mask,
    "poutine_scale": _hand_scale,
    "obs_mask": _hand_obs_mask,
    "recursion": _hand_recursion,
    "dynamic": _hand_dynamic,
    "to_event": _hand_event,
    "sequential_plates": _hand_sequential,
    "sequential_subsample": lambda v, x: _hand_sequential(v, x, n=6),
    "module": _hand_module,
    "constrained_params": _hand_constrained,
}


def test_every_case_has_a_loss_by_hand() -> None:
    assert sorted(BY_HAND) == sorted(c.name for c in CASES)


# ---- the analytic-KL estimators, by hand: -(sum of observed log p - sum of scaled, masked KL(q || p)) ----
def _kl(name: str, v: dict, loc_p: Any, scale_p: Any, idx: Any = None) -> torch.Tensor:
    """KL(q || N(loc_p, scale_p)) per entry, q = ``_normal_guide_site(name)`` (entries ``idx``)."""
    loc, scale = _p(f"{name}_loc"), _p(f"{name}_scale")
    if idx is not None:
        loc, scale = loc[idx], scale[idx]
    return td.kl_divergence(td.Normal(loc, scale), td.Normal(loc_p, scale_p))


BY_HAND_KL: dict[str, Callable] = {
    "nested_plates": lambda v, x: (
        -(-_kl("mu", v, 0.0, 1.0).sum() - _kl("z_a", v, v["mu"], 1.0).sum() - _kl("z_ab", v, v["z_a"], 1.0).sum() + _lpn(x, v["z_ab"], 0.5))
    ),
    "subsample_indices": lambda v, x: (
        -(-_kl("mu", v, 0.0, 2.0).sum() + 2.0 * (-_kl("z", v, v["mu"], 1.0, IDX).sum() + _lpn(x[IDX], v["z"], 0.5)))
    ),
    "auxiliary": lambda v, x: (
        -(
            -td.kl_divergence(td.Normal(_p("w") * v["u"], _p("z_scale")), td.Normal(0.0, 1.0)).sum()
            + _lpn(x, v["z"], 1.0)
            - _lpn(v["u"], _p("u_loc"), 1.0)
        )
    ),
    "poutine_mask": lambda v, x: (
        -(-_kl("mu", v, 0.0, 1.0).sum() - _kl("z", v, v["mu"], 1.0)[..., MASK4].sum() + _lpn(x[MASK4], v["z"][..., MASK4], 1.0))
    ),
    "poutine_scale": lambda v, x: (
        -0.25 * (-_kl("z", v, 0.0, 1.0).sum() + (torch.tensor([1.0, 2.0, 0.5, 3.0]) * td.Normal(v["z"], 1.0).log_prob(x)).sum())
    ),
    "obs_mask": lambda v, x: -(-_kl("z", v, 0.0, 1.0).sum() + _lpn(x[MASK4], v["z"], 1.0)),
    "to_event": lambda v, x: -(-_kl("z", v, 0.0, 1.0).sum() + _lpn(x, v["z"], 1.0)),
}


def _by_hand_kl_params() -> list:
    return [
        pytest.param(CASE_BY_NAME[name], est, id=f"{name}-{est.name}", marks=_xfail_marks(CASE_BY_NAME[name], est, "1", "by_hand_kl"))
        for name in BY_HAND_KL
        for est in ESTIMATORS
        if est.analytic_kl
    ]


@pytest.mark.parametrize("case, est", _by_hand_kl_params())
def test_by_hand_analytic_kl(case: Case, est: Estimator) -> None:
    """An analytic-KL estimator's loss on one draw: each latent's log q - log p replaced by its KL
    to the model's conditional given the upstream draws, scaled and masked as the model site is;
    observed terms (and auxiliary sites' -log q) stay Monte-Carlo."""
    elbo = est.make()
    _warm_up(est, elbo, case)
    for seed in (51, 52):
        pyro.set_rng_seed(seed)
        tr = poutine.trace(case.guide).get_trace(*case.args)
        values = {name: site["value"] for name, site in tr.nodes.items() if site["type"] in ("sample", "subsample")}
        expected = BY_HAND_KL[case.name](values, *case.args)
        value, grads = _loss_grads_on_seed(elbo, case, seed)
        _close(value, expected, f"{est.name} loss on '{case.name}', seed {seed}")
        params = _params()
        names = list(params)
        by_hand = torch.autograd.grad(expected, [params[n] for n in names], allow_unused=True)
        for n, g_hand in zip(names, by_hand):
            if g_hand is None:
                assert grads[n] is None or bool((grads[n] == 0).all()), f"{est.name}: '{n}' has a gradient the by-hand loss lacks"
                continue
            _close(grads[n], g_hand, f"{est.name} gradient of '{n}' on '{case.name}', seed {seed}", rtol=1e-4, atol=1e-5)


# =========================================================================================
# The auxiliary-site rule (issue 11 point 3)
# =========================================================================================
# Rule: an auxiliary guide site's -log q belongs to every estimator's loss and to the cost
# that multiplies every score-function term. On a discrete z with an auxiliary u | z, one draw:
#   cost = log p(z) + log p(x | z) - log q(z) - log q(u | z)
#   loss = -cost,   d loss / d theta = (z - sigmoid(theta)) * (1 - cost)    (q(z) = Bernoulli(logits=theta))
# and every estimator agrees (TraceGraph's downstream cost of z is the whole particle here).
AUX_X = torch.tensor(1.3)


def aux_rule_model(x):
    z = pyro.sample("z", dist.Bernoulli(0.3))
    pyro.sample("x", dist.Normal(2.0 * z, 1.0), obs=x)


def aux_rule_guide(x):
    z = pyro.sample("z", dist.Bernoulli(logits=pyro.param("theta", torch.tensor(0.2))))
    pyro.sample("u", dist.Normal(2.0 * z - 1.0, 1.0 + z), infer={"is_auxiliary": True})


def _aux_rule_by_hand(seed: int) -> tuple[float, float, float]:
    """(loss, d loss / d theta, z) of the draw ``seed`` gives, under the rule."""
    pyro.set_rng_seed(seed)
    tr = poutine.trace(aux_rule_guide).get_trace(AUX_X)
    z, u = tr.nodes["z"]["value"].item(), tr.nodes["u"]["value"].item()
    theta = pyro.param("theta").item()
    q1 = 1 / (1 + math.exp(-theta))
    log_q_z = math.log(q1 if z else 1 - q1)
    log_q_u = torch.distributions.Normal(2.0 * z - 1.0, 1.0 + z).log_prob(torch.tensor(u)).item()
    log_p = math.log(0.3 if z else 0.7) + torch.distributions.Normal(2.0 * z, 1.0).log_prob(AUX_X).item()
    cost = log_p - log_q_z - log_q_u
    return -cost, (z - q1) * (1 - cost), z


# Estimators that break the rule today: {name: "issue 11 point 3: auxiliary rule pending (what it does)"}.
AUX_LOSS_XFAIL: dict = {}
AUX_COST_XFAIL: dict = {}


def _rule_params(xfails: dict) -> list:
    return [
        pytest.param(est, id=est.name, marks=[pytest.mark.xfail(strict=True, reason=xfails[est.name])] if est.name in xfails else [])
        for est in ESTIMATORS
    ]


@pytest.mark.parametrize("est", _rule_params(AUX_LOSS_XFAIL))
def test_auxiliary_site_in_loss(est: Estimator) -> None:
    elbo = est.make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a compiled estimator may say it runs eagerly
        elbo.loss_and_grads(aux_rule_model, aux_rule_guide, AUX_X)
    for seed in range(6):
        loss, _, _ = _aux_rule_by_hand(seed)
        pyro.set_rng_seed(seed)
        _close(elbo.loss(aux_rule_model, aux_rule_guide, AUX_X), loss, f"{est.name} loss on seed {seed}")
        pyro.set_rng_seed(seed)
        _close(elbo.loss_and_grads(aux_rule_model, aux_rule_guide, AUX_X), loss, f"{est.name} loss_and_grads on seed {seed}")


@pytest.mark.parametrize("est", _rule_params(AUX_COST_XFAIL))
def test_auxiliary_site_in_score_cost(est: Estimator) -> None:
    elbo = est.make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        elbo.loss_and_grads(aux_rule_model, aux_rule_guide, AUX_X)
    zs = set()
    for seed in range(6):
        _, grad, z = _aux_rule_by_hand(seed)
        zs.add(z)
        _, grads = _loss_grads_on_seed(elbo, CASE_AUX_RULE, seed)
        _close(grads["theta"], grad, f"{est.name} d loss / d theta on seed {seed}", rtol=1e-4, atol=1e-5)
    assert zs == {0.0, 1.0}, "the seeds should cover both values of z"


CASE_AUX_RULE = Case("aux_rule", aux_rule_model, aux_rule_guide, (AUX_X,), reparam=False)


# =========================================================================================
# Exact analytic checks: expectations against closed forms
# =========================================================================================
# Conjugate: z ~ N(0, 1), x | z ~ N(z, 1), x = 1; q(z) = N(m, s). The posterior is N(1/2, 1/2).
CONJ_X = torch.tensor(1.0)
N_PARTICLES = 4000


def conj_model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def conj_guide(x):
    pyro.sample("z", dist.Normal(pyro.param("m", torch.tensor(0.3)), pyro.param("s", torch.tensor(0.8), constraint=constraints.positive)))


def _conj_neg_elbo(m: torch.Tensor, s: torch.Tensor, x: float = 1.0) -> torch.Tensor:
    """-E_q[log p(x, z) - log q(z)] in closed form."""
    log2pi = math.log(2 * math.pi)
    e_log_p = -log2pi - 0.5 * (m**2 + s**2) - 0.5 * ((x - m) ** 2 + s**2)
    entropy = 0.5 * (log2pi + 1) + torch.log(s)
    return -(e_log_p + entropy)


@pytest.mark.parametrize("est", [pytest.param(e, id=e.name) for e in ESTIMATORS if e.vectorizable and e.mc_loss])
def test_conjugate_normal_expected_loss_and_gradient(est: Estimator) -> None:
    """Each estimator's loss and gradient (w.r.t. m and the unconstrained log s), averaged over
    4000 vectorized particles, against the closed form. The per-particle gradient's standard
    deviation is at most 2 here (pathwise: d/dm = 2z - x, z = m + s eps), so 4 standard errors
    is 0.13; a missing entropy or KL term would be off by 1 in the log-s gradient."""
    m = torch.tensor(0.3, requires_grad=True)
    log_s = torch.tensor(0.8).log().requires_grad_(True)
    exact = _conj_neg_elbo(m, log_s.exp())
    exact.backward()
    elbo = est.make(num_particles=N_PARTICLES, vectorize_particles=True, max_plate_nesting=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        elbo.loss_and_grads(conj_model, conj_guide, CONJ_X)  # warm-up (compiles JitTrace_ELBO)
    _zero_grads()
    pyro.set_rng_seed(3)
    loss = elbo.loss_and_grads(conj_model, conj_guide, CONJ_X)
    grads = {n: p.grad for n, p in _params().items()}
    tol = 4 * 2.0 / math.sqrt(N_PARTICLES)
    assert loss == pytest.approx(exact.item(), abs=tol)
    assert grads["m"].item() == pytest.approx(m.grad.item(), abs=tol)
    assert grads["s"].item() == pytest.approx(log_s.grad.item(), abs=tol)


@pytest.mark.parametrize("est", [pytest.param(e, id=e.name) for e in ESTIMATORS])
def test_conjugate_normal_at_the_posterior(est: Estimator) -> None:
    """With q the exact posterior N(1/2, 1/2), log p(x, z) - log q(z) = log p(x) for every z: a
    Monte-Carlo ELBO's loss is -log p(x) on every draw (exactly, not on average). With an analytic
    KL the loss varies from draw to draw but its mean is still -log p(x) (p(x) = N(x; 0, sqrt 2))."""
    pyro.param("m", torch.tensor(0.5))
    pyro.param("s", torch.tensor(0.5).sqrt(), constraint=constraints.positive)
    neg_log_px = -torch.distributions.Normal(0.0, math.sqrt(2.0)).log_prob(CONJ_X).item()
    exact_per_draw = est.mc_loss and not est.analytic_kl
    elbo = est.make(num_particles=1 if exact_per_draw else N_PARTICLES, vectorize_particles=not exact_per_draw)
    for seed in range(3):
        pyro.set_rng_seed(seed)
        loss = elbo.loss(conj_model, conj_guide, CONJ_X)
        # analytic KL: loss = KL + E[-log p(x|z)], per-particle sd = s * |x - z| <= 1
        assert loss == pytest.approx(neg_log_px, abs=1e-5 if exact_per_draw else 4 / math.sqrt(N_PARTICLES))


# Discrete, per datum: z_i ~ Bernoulli(0.3), x_i | z_i ~ N(2 z_i, 1), i < 3; q(z_i) = Bernoulli(logits=theta_i).
# The ELBO is a sum over data of a two-term sum: its gradient is exact by brute force.
DISC_X = torch.tensor([1.5, -0.4, 2.2])
DISC_THETA = torch.tensor([0.2, -1.0, 0.7])


def disc_model(x):
    with pyro.plate("data", 3):
        z = pyro.sample("z", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(2.0 * z, 1.0), obs=x)


def disc_guide(x):
    with pyro.plate("data", 3):
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("theta", DISC_THETA.clone())))


def _disc_neg_elbo(theta: torch.Tensor) -> torch.Tensor:
    q1 = torch.sigmoid(theta)
    total = torch.zeros(())
    for z, qz in ((1.0, q1), (0.0, 1 - q1)):
        log_p = math.log(0.3 if z else 0.7) + torch.distributions.Normal(2.0 * z, 1.0).log_prob(DISC_X)
        total = total + (qz * (log_p - torch.log(qz))).sum()
    return -total


def _disc_particle_grad_sd(theta: torch.Tensor) -> torch.Tensor:
    """The exact standard deviation, per datum, of one particle's score-function gradient
    ``(z_i - q_i) (1 - c_i)``, ``c_i = log p(z_i, x_i) - log q(z_i)`` (the cost kept per datum)."""
    q1 = torch.sigmoid(theta)
    moments = [torch.zeros(3), torch.zeros(3)]
    for z, qz in ((1.0, q1), (0.0, 1 - q1)):
        c = math.log(0.3 if z else 0.7) + torch.distributions.Normal(2.0 * z, 1.0).log_prob(DISC_X) - torch.log(qz)
        g = (z - q1) * (1 - c)
        moments[0] = moments[0] + qz * g
        moments[1] = moments[1] + qz * g**2
    return (moments[1] - moments[0] ** 2).sqrt()


@pytest.mark.parametrize("est", [pytest.param(e, id=e.name) for e in ESTIMATORS if e.vectorizable and e.mc_loss])
def test_discrete_score_function_gradient_brute_force(est: Estimator) -> None:
    """The score-function gradient, averaged over 4000 vectorized particles, against the exact
    gradient by enumeration, within 4 exact standard errors of the per-datum estimator (0.08 to
    0.11 here; leaving out the score term would give ~0 instead of the exact 0.52 for theta_1)."""
    theta = DISC_THETA.clone().requires_grad_(True)
    _disc_neg_elbo(theta).backward()
    elbo = est.make(num_particles=N_PARTICLES, vectorize_particles=True, max_plate_nesting=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        elbo.loss_and_grads(disc_model, disc_guide, DISC_X)
    _zero_grads()
    pyro.set_rng_seed(4)
    loss = elbo.loss_and_grads(disc_model, disc_guide, DISC_X)
    g = _params()["theta"].grad
    tol = 4 * _disc_particle_grad_sd(DISC_THETA) / math.sqrt(N_PARTICLES)
    assert loss == pytest.approx(_disc_neg_elbo(DISC_THETA).item(), abs=0.1)
    assert bool(((g - theta.grad).abs() <= tol).all()), (
        f"{est.name}: gradient {g.tolist()} vs exact {theta.grad.tolist()} (tolerance {tol.tolist()})"
    )


# Dependent discrete latents: z1 ~ Bernoulli(0.3); z2_i | z1 ~ Bernoulli(0.2 + 0.6 z1), i < 2;
# x_i ~ N(z1 + 2 z2_i, 1). Guides: z1 then z2 | z1 (the model's order), z2 then z1 | z2 (reversed). The
# exact ELBO is a sum over 8 configurations; every estimator must be unbiased, whatever it drops or keeps.
CHAIN_X = torch.tensor([2.4, 0.3])
CHAIN_THETA = {"t1": torch.tensor(0.3), "t2": torch.tensor([-0.4, 0.5]), "t3": torch.tensor(0.8)}


def chain_model(x):
    z1 = pyro.sample("z1", dist.Bernoulli(0.3))
    with pyro.plate("data", 2):
        z2 = pyro.sample("z2", dist.Bernoulli(0.2 + 0.6 * z1))
        pyro.sample("x", dist.Normal(z1 + 2.0 * z2, 1.0), obs=x)


def chain_guide_forward(x):
    t = {k: pyro.param(k, v.clone()) for k, v in CHAIN_THETA.items()}
    z1 = pyro.sample("z1", dist.Bernoulli(logits=t["t1"]))
    with pyro.plate("data", 2):
        pyro.sample("z2", dist.Bernoulli(logits=t["t2"] + t["t3"] * z1))


def chain_guide_reversed(x):
    t = {k: pyro.param(k, v.clone()) for k, v in CHAIN_THETA.items()}
    with pyro.plate("data", 2):
        z2 = pyro.sample("z2", dist.Bernoulli(logits=t["t2"]))
    pyro.sample("z1", dist.Bernoulli(logits=t["t1"] + t["t3"] * z2.sum(-1, keepdim=True)))  # (particles, 1)


def _chain_neg_elbo(t: dict, reversed_guide: bool) -> torch.Tensor:
    total = torch.zeros(())
    for z1 in (0.0, 1.0):
        for z2a in (0.0, 1.0):
            for z2b in (0.0, 1.0):
                z2 = torch.tensor([z2a, z2b])
                log_p = (
                    td.Bernoulli(torch.tensor(0.3)).log_prob(torch.tensor(z1))
                    + td.Bernoulli(torch.tensor(0.2 + 0.6 * z1)).log_prob(z2).sum()
                    + td.Normal(z1 + 2.0 * z2, 1.0).log_prob(CHAIN_X).sum()
                )
                if reversed_guide:
                    log_q = td.Bernoulli(logits=t["t2"]).log_prob(z2).sum() + td.Bernoulli(logits=t["t1"] + t["t3"] * z2.sum()).log_prob(
                        torch.tensor(z1)
                    )
                else:
                    log_q = (
                        td.Bernoulli(logits=t["t1"]).log_prob(torch.tensor(z1))
                        + td.Bernoulli(logits=t["t2"] + t["t3"] * z1).log_prob(z2).sum()
                    )
                total = total + log_q.exp() * (log_p - log_q)
    return -total


PLATE_LOCAL_COST_BIAS = (
    "score-function costs kept per datum along a site's plates are biased when a later guide site outside the plate "
    "depends on the plate's sites: here z1 ~ q(z1 | z2_1 + z2_2) is sampled after the plate, so datum j's model terms "
    "(log p(z2_j | z1), log p(x_j | z1, z2_j)) depend on z2_i through z1, yet z2_i's cost keeps datum i's terms only "
    "(MultiFrameTensor.sum_to). The mean gradient of t2 is [-0.540, 0.748] (the exact expectation of the per-datum "
    "estimator) instead of [-0.501, 0.721]. Pyro's Trace_ELBO makes the same assumption; DESIGN.md §6 asks for every cost "
    "that truly depends on the site"
)


def _chain_params() -> list:
    out = []
    for est in ESTIMATORS:
        if not (est.vectorizable and est.mc_loss):
            continue
        out.append(pytest.param(est, False, id=f"{est.name}-guide_in_model_order"))
        marks = [pytest.mark.xfail(strict=True, reason=PLATE_LOCAL_COST_BIAS)] if est.per_datum_cost else []
        out.append(pytest.param(est, True, id=f"{est.name}-guide_reversed", marks=marks))
    return out


@pytest.mark.parametrize("est, reversed_guide", _chain_params())
def test_dependent_discrete_unbiased(est: Estimator, reversed_guide: bool) -> None:
    """Score-function gradients with dependent discrete latents, per-datum and global, in and out
    of the model's order: the mean of 20 independent estimates (4000 vectorized particles each) is
    within 4 estimated standard errors (about 0.005) of the exact gradient (enumeration of 8
    configurations).
    Catches a cost that leaves out a term depending on the site (a biased Rao-Blackwellization)."""
    guide = chain_guide_reversed if reversed_guide else chain_guide_forward
    t = {k: v.clone().requires_grad_(True) for k, v in CHAIN_THETA.items()}
    exact = torch.autograd.grad(_chain_neg_elbo(t, reversed_guide), list(t.values()))
    exact_flat = torch.cat([g.reshape(-1) for g in exact])
    elbo = est.make(num_particles=4000, vectorize_particles=True, max_plate_nesting=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        elbo.loss_and_grads(chain_model, guide, CHAIN_X)
    samples = []
    for r in range(20):
        _, grads = _loss_grads_on_seed(elbo, Case("chain", chain_model, guide, (CHAIN_X,)), 200 + r)
        samples.append(torch.cat([grads[k].reshape(-1) for k in CHAIN_THETA]))
    s = torch.stack(samples)
    mean, se = s.mean(0), s.std(0) / math.sqrt(len(samples))
    assert bool(((mean - exact_flat).abs() <= 4 * se + 1e-3).all()), (
        f"{est.name}: mean gradient {mean.tolist()} vs exact {exact_flat.tolist()} (standard errors {se.tolist()})"
    )


# =========================================================================================
# Invalid pairs: the error or warning names the site and the fix
# =========================================================================================
def _m_two_latents(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", 4):
        pyro.sample("x", dist.Normal(z + w, 1.0), obs=x)


def _g_missing_w(x):
    _normal_guide_site("z")


def _m_one_latent(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", 4):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _g_extra_v(x):
    _normal_guide_site("z")
    _normal_guide_site("v")


def _m_local(x):
    with pyro.plate("data", 4):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def _m_local_unused(x):
    with pyro.plate("data", 4):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
    pyro.sample("x", dist.Normal(z.sum(), 1.0), obs=x[0])


def _g_wrong_plate_size(x):
    with pyro.plate("data", 3):
        _normal_guide_site("z", (3,))


def _g_samples_observed(x):
    _normal_guide_site("z")
    with pyro.plate("data", 4):
        pyro.sample("x", dist.Normal(0.0, 1.0))


def _m_bad_batch(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", 4):
        pyro.sample("x", dist.Normal(z * torch.ones(3), 1.0), obs=x[:3])


def _m_event(x):
    z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    pyro.sample("x", dist.Normal(z.sum(), 1.0), obs=x[0])


def _g_event_wrong(x):
    pyro.sample("z", dist.Normal(_real("z_loc", torch.zeros(2)), 1.0).to_event(1))


def _m_chain(x):
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    b = pyro.sample("b", dist.Normal(a, 1.0))
    with pyro.plate("data", 4):
        pyro.sample("x", dist.Normal(b, 1.0), obs=x)


def _g_chain_reversed(x):
    b = _normal_guide_site("b")
    pyro.sample("a", dist.Normal(_real("w", 0.5) * b, _pos("a_scale", 0.7)))


INVALID = [
    # (id, model, guide, kind, pattern)
    ("guide_lacks_model_latent", _m_two_latents, _g_missing_w, UserWarning, r"latent sites in the model but not in the guide: \['w'\]"),
    ("guide_site_model_lacks", _m_one_latent, _g_extra_v, UserWarning, r"in the guide but not in the model: \['v'\].*is_auxiliary"),
    (
        "plate_size_clash",
        _m_local_unused,
        _g_wrong_plate_size,
        ValueError,
        r"site 'z'.*plate 'data' has size 4 in the model but 3 in the guide",
    ),
    ("plate_size_clash_used_downstream", _m_local, _g_wrong_plate_size, ValueError, r"'z'.*guide|guide.*'z'"),
    ("batch_shape_vs_plate", _m_bad_batch, _g_missing_w, ValueError, r"plate\('data'\).*site 'x'.*batch_shape \(3,\).*size 4"),
    ("event_shape_mismatch", _m_event, _g_event_wrong, ValueError, r"site 'z'.*shape \(2,\).*event_shape \(3,\)"),
    ("guide_samples_observed_site", _m_one_latent, _g_samples_observed, UserWarning, r"\['x'\].*observes"),
    ("guide_order_not_mean_field", _m_chain, _g_chain_reversed, UserWarning, r"(?i)mean.field"),
]
# Pairs invalid for some estimators only: {id: which estimators}.
INVALID_ONLY: dict[str, Callable[[Estimator], bool]] = {"guide_order_not_mean_field": lambda e: e.analytic_kl}
INVALID_XFAIL: dict = {}


def _invalid_params() -> list:
    out = []
    for case in INVALID:
        for est in ESTIMATORS:
            if not INVALID_ONLY.get(case[0], lambda e: True)(est):
                continue
            marks = [pytest.mark.xfail(strict=True, reason=INVALID_XFAIL[case[0]])] if case[0] in INVALID_XFAIL else []
            out.append(pytest.param(est, *case[1:], id=f"{case[0]}-{est.name}", marks=marks))
    return out


@pytest.mark.parametrize("est, model, guide, kind, pattern", _invalid_params())
def test_invalid_pair(est: Estimator, model: Callable, guide: Callable, kind: type, pattern: str) -> None:
    elbo = est.make()
    if issubclass(kind, Warning):
        with pytest.warns(kind, match=pattern):
            elbo.loss_and_grads(model, guide, X4)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a model-but-not-guide warning may come first
            with pytest.raises(kind, match=pattern):
                elbo.loss_and_grads(model, guide, X4)


def test_trace_enum_runs_score_function_particles_one_by_one():
    """TraceEnum_ELBO asked to vectorize the particles of a guide with a score-function site
    (neither reparameterized nor enumerated) warns and runs them one by one: the same gradient
    as vectorize_particles=False on the same seed, and near the exact one."""
    theta = DISC_THETA.clone().requires_grad_(True)
    _disc_neg_elbo(theta).backward()
    grads = {}
    for vec in (True, False):
        pyro.clear_param_store()
        pyro.set_rng_seed(7)
        elbo = TraceEnum_ELBO(num_particles=400, vectorize_particles=vec, max_plate_nesting=1, strict_enumeration_warning=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            elbo.loss_and_grads(disc_model, disc_guide, DISC_X)
        assert any("sites ['z'] are neither reparameterized nor enumerated" in str(w.message) for w in caught) == vec
        grads[vec] = _params()["theta"].grad.clone()
    torch.testing.assert_close(grads[True], grads[False])
    tol = 4 * _disc_particle_grad_sd(DISC_THETA) / math.sqrt(400)
    assert bool(((grads[True] - theta.grad).abs() <= tol).all())


# =========================================================================================
# The coupled-particle estimators: TraceTailAdaptive_ELBO and ReweightedWakeSleep
# =========================================================================================
# Neither fits the cells above: their gradients are not the ELBO's (the tail-adaptive gradient
# weights each particle by its rank; reweighted wake-sleep gives the model and the guide different
# objectives, with the draws held fixed) and RWS's loss is a pair. So each gets its own cell over
# every case, with an oracle by hand from the per-particle losses L_k = -(log p - log q) of BY_HAND.
from ember.infer import ReweightedWakeSleep, TraceTailAdaptive_ELBO  # noqa: E402

K_COUPLED = 3


def _per_particle_values(case: Case, elbo: Any, seed: int, vectorized: bool) -> list[dict]:
    """The guide's values of each of the estimator's ``K_COUPLED`` particles on ``seed``, one dict
    per particle (a vectorized draw is cut along the particle dim, kept as a dim of size 1, which the
    by-hand losses treat as one particle)."""
    pyro.set_rng_seed(seed)
    if not vectorized:
        return [_guide_values(poutine.trace(case.guide).get_trace(*case.args)) for _ in range(K_COUPLED)]
    pdim = -int(elbo.max_plate_nesting) - 1
    with pyro.plate("num_particles_vectorized", K_COUPLED, dim=pdim):
        tr = poutine.trace(case.guide).get_trace(*case.args)
    out = []
    for k in range(K_COUPLED):
        values = {}
        for name, site in tr.nodes.items():
            if site["type"] == "sample":
                v = site["value"]
                d = v.dim() - len(site["fn"].event_shape) + pdim  # the particle dim, left of the plates and event dims
                values[name] = v.narrow(d, k, 1) if d >= 0 else v
            elif site["type"] == "subsample":
                values[name] = site["value"]  # the indices, shared by every particle
        out.append(values)
    return out


def _detached(values: dict) -> dict:
    return {k: v.detach() for k, v in values.items()}


def _model_and_guide_params(case: Case) -> tuple[set, set]:
    guide_tr = poutine.trace(case.guide).get_trace(*case.args)
    model_tr = poutine.trace(poutine.replay(case.model, trace=guide_tr)).get_trace(*case.args)
    store = pyro.get_param_store()

    def names(tr: Any) -> set:
        return {name for name, site in tr.nodes.items() if site["type"] == "param" and name in store}

    return names(model_tr), names(guide_tr)


def _grad_or_zero(out: torch.Tensor, params: dict) -> dict:
    names = list(params)
    grads = torch.autograd.grad(out, [params[n] for n in names], allow_unused=True, retain_graph=True)
    return {n: torch.zeros_like(params[n]) if g is None else g for n, g in zip(names, grads)}


def _coupled_cell(case: Case, elbo: Any) -> tuple[float, dict]:
    """Warm up ``elbo`` on ``case``, check loss ≈ differentiable_loss ≈ loss_and_grads and the stored
    gradients against autograd's of differentiable_loss; return the loss on seed 31 and its gradients."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        elbo.loss_and_grads(case.model, case.guide, *case.args)
    assert not caught, f"{type(elbo).__name__} on the valid pair '{case.name}' warned: {[str(w.message) for w in caught]}"
    _zero_grads()
    seed = 31
    pyro.set_rng_seed(seed)
    loss = elbo.loss(case.model, case.guide, *case.args)
    pyro.set_rng_seed(seed)
    surrogate = elbo.differentiable_loss(case.model, case.guide, *case.args)
    auto = _grad_or_zero(surrogate, _params())
    value, grads = _loss_grads_on_seed(elbo, case, seed)
    total = sum(loss) if isinstance(loss, tuple) else loss
    _close(surrogate.detach(), total, "differentiable_loss vs loss")
    _close(torch.tensor(value), torch.tensor(loss), "loss_and_grads vs loss")
    for n, g in grads.items():
        g = torch.zeros_like(auto[n]) if g is None else g
        assert bool(torch.isfinite(g).all()), f"parameter '{n}' has a non-finite gradient {g}"
        _close(g, auto[n], f"gradient of '{n}': loss_and_grads vs autograd of differentiable_loss", rtol=1e-4, atol=1e-5)
    return value, grads


def _tail_adaptive_cases() -> list:
    return [pytest.param(c, id=c.name) for c in CASES if c.reparam and c.vectorizable]


@pytest.mark.parametrize("case", _tail_adaptive_cases())
def test_tail_adaptive_cell(case: Case) -> None:
    """TraceTailAdaptive_ELBO on every reparameterized pair: its loss is the mean of the particles'
    -(log p - log q) by hand, and its gradient is, by hand, sum_k gamma_k d(L_k) with log q's
    direct dependence on the guide's parameters removed (the draws' path only), gamma_k
    proportional to (the fraction of particles with log w >= log w_k) ** beta."""
    elbo = TraceTailAdaptive_ELBO(num_particles=K_COUPLED, vectorize_particles=True)
    value, grads = _coupled_cell(case, elbo)
    per = _per_particle_values(case, elbo, 31, vectorized=True)
    hand = BY_HAND[case.name]
    losses = torch.stack([hand(v, *case.args) for v in per])  # L_k = -log w_k, with graphs
    _close(value, losses.mean(), f"TraceTailAdaptive_ELBO loss on '{case.name}' vs by hand")
    log_w = -losses.detach()
    tail = torch.stack([(log_w >= lw).to(log_w.dtype).mean() for lw in log_w])
    gamma = tail ** elbo.tail_adaptive_beta
    gamma = gamma / gamma.sum()
    model_params, guide_params = _model_and_guide_params(case)
    params = _params()
    full = _grad_or_zero((gamma * losses).sum(), params)
    direct = _grad_or_zero((gamma * torch.stack([hand(_detached(v), *case.args) for v in per])).sum(), params)
    for n in params:
        expected = full[n] - (direct[n] if n in guide_params and n not in model_params else 0.0)
        _close(torch.zeros_like(expected) if grads[n] is None else grads[n], expected, f"tail-adaptive gradient of '{n}' on '{case.name}' vs by hand", rtol=1e-4, atol=1e-5)


def test_tail_adaptive_refuses_score_function_guides() -> None:
    for case in CASES:
        if case.reparam or not case.vectorizable:
            continue
        elbo = TraceTailAdaptive_ELBO(num_particles=K_COUPLED)
        with pytest.raises(ValueError, match=r"guide site '\w+' \(\w+\) is not reparameterizable"):
            elbo.loss_and_grads(case.model, case.guide, *case.args)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_reweighted_wake_sleep_cell(case: Case) -> None:
    """ReweightedWakeSleep on every pair (discrete and dynamic ones too: its draws are never
    differentiated): wake-theta is -log mean_k w_k by hand; the model's parameters get its
    gradient, sum_k w~_k dL_k with the draws fixed, and the guide's get -sum_k w~_k dL_k (the
    gradient of -sum_k w~_k log q(z_k)), w~ the normalised weights."""
    elbo = ReweightedWakeSleep(num_particles=K_COUPLED, vectorize_particles=case.vectorizable)
    (theta, _phi), grads = _coupled_cell(case, elbo)
    per = [_detached(v) for v in _per_particle_values(case, elbo, 31, vectorized=case.vectorizable)]
    losses = torch.stack([BY_HAND[case.name](v, *case.args) for v in per])
    _close(theta, -(torch.logsumexp(-losses.detach(), 0) - math.log(K_COUPLED)), f"wake-theta loss on '{case.name}' vs by hand")
    weights = torch.softmax(-losses.detach(), 0)
    model_params, guide_params = _model_and_guide_params(case)
    assert not model_params & guide_params
    by_hand = _grad_or_zero((weights * losses).sum(), _params())
    for n, g in by_hand.items():
        expected = g if n in model_params else -g
        _close(torch.zeros_like(g) if grads[n] is None else grads[n], expected, f"RWS gradient of '{n}' on '{case.name}' vs by hand", rtol=1e-4, atol=1e-5)
