"""A model's potential energy on one flat unconstrained vector: what HMC and NUTS move on.

:class:`ModelPotential` runs the model once (with the initialisation strategy choosing each
latent's value, in order) to learn its latent sites. Every latent ``x`` with support ``S`` is
written ``x = T(u)`` with ``T = biject_to(S)`` (or a user-given transform) and ``u`` real; the
``u`` of all sites are laid end to end in one vector ``z`` of length ``D``. The potential is

    U(z) = -[ log p(x_1, ..., x_k, observations) + sum_i log |det dT_i/du_i| ],

the log joint with plate scaling and masks applied as everywhere else in Ember. Evaluating it
runs the model under one small handler that substitutes the latents and adds up each site's
log-density as the site goes by: no trace is built on this hot path. The first run builds a
full trace instead, to check shapes against plates and to refuse what MCMC cannot do
(discrete latents, subsampled plates).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.distributions.transforms import Transform

from ember.distributions.util import lean_biject_to
from ember.infer.elbo import describe_site, first_nonfinite_site
from ember.infer.initialization import init_to_median, init_to_value, init_values_of, resolve_init_strategy
from ember.infer.util import _SetLatents
from ember.poutine.messenger import Messenger
from ember.poutine.misc_messengers import _SubstituteValuesMessenger
from ember.poutine.trace_messenger import TraceMessenger
from ember.poutine.trace_struct import site_log_prob
from ember.runtime import Message, is_latent, is_validation_enabled

__all__ = ["BatchedPotential", "LatentSite", "ModelPotential", "MCMCInitError"]


def _public_grad(u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return torch.autograd.grad(u, z)[0]


_ONES: dict[torch.dtype, torch.Tensor] = {}


def _engine_grad(u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    one = _ONES.get(u.dtype)
    if one is None:
        one = _ONES[u.dtype] = torch.ones((), dtype=u.dtype)
    if u.device != one.device:
        return _public_grad(u, z)
    return torch.autograd.Variable._execution_engine.run_backward((u,), (one,), False, False, (z,), True, False)[0]


def _pick_scalar_grad() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``d u / d z`` for a scalar ``u``: the autograd engine called directly, which skips
    ``torch.autograd.grad``'s argument normalisation (about half the cost of a small model's
    backward pass here; see benchmarks/README.md). Falls back to ``torch.autograd.grad`` if this
    torch's engine does not answer the same way."""
    try:
        x = torch.tensor([1.0, 2.0], requires_grad=True)
        g = _engine_grad((x * x).sum(), x)
        if torch.equal(g, torch.tensor([2.0, 4.0])):
            return _engine_grad
    except Exception:  # noqa: BLE001 - any failure means: use the public API
        pass
    return _public_grad


def _scalar_grad(u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    global _scalar_grad
    _scalar_grad = _pick_scalar_grad()  # decided on first use, not at import
    return _scalar_grad(u, z)


class MCMCInitError(ValueError):
    """No starting point with a finite potential energy and gradient could be found."""


@dataclass
class LatentSite:
    """One latent site's place in the flat unconstrained vector."""

    name: str
    shape: torch.Size  # constrained value's shape
    unconstrained_shape: torch.Size
    offset: int
    size: int
    transform: Transform | None  # None: the identity
    dtype: torch.dtype

    view_shape: torch.Size | None = None  # what its slice of ``z`` is viewed as (None: ``[size]`` already)

    def __post_init__(self) -> None:
        if self.unconstrained_shape != torch.Size([self.size]):
            self.view_shape = self.unconstrained_shape


def _refuse_discrete(name: str, fn: Any) -> None:
    support = getattr(fn, "support", None)
    if support is not None and support.is_discrete:
        raise ValueError(
            f"MCMC: latent site '{name}' is discrete ({type(fn).__name__}, support {support}); HMC and NUTS move on "
            f"continuous latents only. Enumerate it so that the potential sums it out (decorate the model with "
            f"ember.infer.config_enumerate, or give the site infer={{'enumerate': 'parallel'}}), condition it on a value, or "
            f"use importance sampling (ember.infer.Importance)."
        )


class _ChooseInit(Messenger):
    """Give every latent site the value ``strategy(site)`` (used once, at initialisation)."""

    def __init__(self, strategy: Callable) -> None:
        super().__init__()
        self.strategy = strategy

    def _pyro_sample(self, msg: Message) -> None:
        if msg.is_observed or msg.done:
            return
        if msg.infer.get("enumerate") == "parallel":
            return  # enumerated (issue 13): summed out by the potential; drawn from its prior here
        _refuse_discrete(msg.name, msg.fn)
        try:
            value = self.strategy(msg)
        except (NotImplementedError, RuntimeError) as e:  # a strategy that cannot handle this distribution
            raise MCMCInitError(f"the init strategy failed at site '{msg.name}' ({type(msg.fn).__name__}): {e}") from e
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value)
        msg.value = value
        msg.done = True


class _Substitute(_SetLatents):
    """Substitute the latents from ``values`` and add up every site's log-density (the hot path)."""

    def __init__(self, values: dict) -> None:
        super().__init__(None, values, "MCMC")
        self.log_joint: Any = None

    def missing(self, name: str) -> str:
        return (f"MCMC: latent site '{name}' did not appear when the model was first run; HMC and NUTS need the same "
                f"latent sites every time (random control flow that adds latents is not supported)")

    def _pyro_post_sample(self, msg: Message) -> None:
        site_log_prob(msg)
        lp = msg.log_prob_sum
        total = self.log_joint
        self.log_joint = lp if total is None else total + lp


class ModelPotential:
    """The potential energy of ``model(*args, **kwargs)`` on a flat unconstrained vector.

    Args:
        model: the model (observations conditioned, e.g. with ``obs=`` or ``condition``).
        model_args, model_kwargs: its arguments.
        transforms: optional ``{site: Transform}`` mapping unconstrained to constrained values
            (default ``biject_to(site.fn.support)``).

    After :meth:`initial_point` (or any call that runs the model), :attr:`sites` lists the
    latent sites in order and :attr:`dim` is ``D``.
    """

    # sites marked infer={"enumerate": "parallel"} (config_enumerate) are not moved on: potential()
    # sums them out (issue 13); this is the number of plate dims then (None: no enumerated sites)
    _enum_mpn: int | None = None

    def __init__(self, model: Callable, model_args: tuple = (), model_kwargs: dict | None = None,
                 transforms: dict | None = None) -> None:
        self.model = model
        self.args = tuple(model_args)
        self.kwargs = dict(model_kwargs or {})
        self.user_transforms = dict(transforms or {})
        self.sites: list[LatentSite] = []
        self.dim = 0
        self.dtype = torch.get_default_dtype()
        self.observed: dict[str, torch.Tensor] = {}
        self._structure_known = False
        self._compiled: Callable | None = None
        self.compiled: str | None = None  # the runner of the compiled potential ("static runtime", "torchscript", "fx"), else None
        self.compile_problem: str | None = None  # why it runs eagerly, when compiling was tried and refused

    # ---- structure ---------------------------------------------------------------------------
    def _learn_structure(self, trace: Any) -> None:
        enumerated: list[str] = []
        sites: list[LatentSite] = []
        observed: dict[str, torch.Tensor] = {}
        offset = 0
        dtypes = []
        for name, site in trace.nodes.items():
            fn = site.fn
            if site.type == "subsample":
                if fn.subsample_size < fn.size:
                    raise ValueError(
                        f"MCMC: plate '{name}' subsamples {fn.subsample_size} of {fn.size} items; HMC and NUTS need the "
                        f"exact log density, so use the full data (drop subsample_size) when running MCMC"
                    )
                continue
            if site.type != "sample":
                continue
            if site.is_observed:
                if isinstance(site.value, torch.Tensor):
                    observed[name] = site.value.detach()
                continue
            if site.infer.get("enumerate") == "parallel":
                enumerated.append(name)  # summed out by potential() (issue 13)
                continue
            support = getattr(fn, "support", None)
            if support is None:
                raise ValueError(f"MCMC: latent site '{name}' ({type(fn).__name__}) has no support; cannot map it to "
                                 f"unconstrained space")
            _refuse_discrete(name, fn)
            value = site.value
            if not isinstance(value, torch.Tensor) or not value.dtype.is_floating_point:
                raise ValueError(f"MCMC: latent site '{name}' has a non-floating value {value!r}")
            t = self.user_transforms.get(name)
            if t is None:
                t = lean_biject_to(support)
            shape = value.shape
            try:
                ushape = torch.Size(t.inverse_shape(shape))
            except (NotImplementedError, AttributeError):
                ushape = t.inv(value).shape
            size = int(math.prod(ushape))
            identity = t == torch.distributions.transforms.identity_transform
            sites.append(LatentSite(name, shape, ushape, offset, size, None if identity else t, value.dtype))
            dtypes.append(value.dtype)
            offset += size
        self.sites = sites
        self._sizes = [st.size for st in sites]
        self.dim = offset
        self.observed = observed
        if dtypes:
            dt = dtypes[0]
            for d in dtypes[1:]:
                dt = torch.promote_types(dt, d)
            self.dtype = dt
        self._structure_known = True
        if enumerated:  # issue 13: plates own this many dims; enumeration uses those to their left
            from ember.infer.util import guess_max_plate_nesting

            self._enum_mpn = guess_max_plate_nesting(trace)

    def trace_at(self, strategy: Callable) -> Any:
        """Run the model once with latents chosen by ``strategy``; return its trace."""
        chooser = _ChooseInit(strategy)
        with torch.no_grad():
            with TraceMessenger() as tm, chooser:
                self.model(*self.args, **self.kwargs)
        values = init_values_of(strategy)
        if values:
            latents = [n for n, s in tm.trace.nodes.items() if is_latent(s)]
            unknown = sorted(set(values) - set(latents))
            if unknown:
                raise ValueError(
                    f"MCMC: init_to_value names {unknown}, which are not latent sites of the model; its latent sites are {latents}"
                )
        return tm.trace

    # ---- conversions ---------------------------------------------------------------------------
    def unconstrain(self, values: dict) -> torch.Tensor:
        """Constrained values by site name -> the flat unconstrained vector ``[D]``."""
        parts = []
        for s in self.sites:
            v = torch.as_tensor(values[s.name]).detach()
            if v.shape != s.shape:
                raise ValueError(f"MCMC: the value for site '{s.name}' has shape {tuple(v.shape)}, expected {tuple(s.shape)}")
            u = v if s.transform is None else s.transform.inv(v)
            parts.append(u.reshape(-1).to(self.dtype))
        if not parts:
            return torch.zeros(0, dtype=self.dtype)
        return torch.cat(parts)

    def constrain(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat unconstrained vectors ``[..., D]`` -> constrained values ``{site: [..., *shape]}``."""
        lead = z.shape[:-1]
        out = {}
        for s in self.sites:
            u = z[..., s.offset:s.offset + s.size].reshape(lead + s.unconstrained_shape)
            v = u if s.transform is None else s.transform(u)
            out[s.name] = v if v.dtype == s.dtype else v.to(s.dtype)
        return out

    def _values_and_logdet(self, z: torch.Tensor) -> tuple[dict, Any]:
        # one split (one autograd node) rather than a slice per site; views only where needed
        values = {}
        logdet: Any = 0.0
        pieces = z.split(self._sizes) if len(self.sites) > 1 else (z,)
        for s, u in zip(self.sites, pieces):
            if s.view_shape is not None:
                u = u.view(s.view_shape)
            t = s.transform
            if t is None:
                v = u
            else:
                v = t(u)
                lad = t.log_abs_det_jacobian(u, v)
                logdet = logdet + (lad.sum() if lad.dim() else lad)
            values[s.name] = v if v.dtype == s.dtype else v.to(s.dtype)
        return values, logdet

    # ---- the potential --------------------------------------------------------------------------
    def potential(self, z: torch.Tensor) -> torch.Tensor:
        """``U(z)``: a scalar tensor, differentiable in ``z``."""
        values, logdet = self._values_and_logdet(z)
        if self._enum_mpn is not None:  # issue 13: the model's enumerated sites summed out exactly
            from ember.infer.traceenum_elbo import enumerated_log_joint

            return -(enumerated_log_joint(self.model, self.args, self.kwargs, values, self._enum_mpn) + logdet)
        h = _Substitute(values)
        with h:
            self.model(*self.args, **self.kwargs)
        log_joint = h.log_joint
        if log_joint is None:
            log_joint = 0.0
        return -(log_joint + logdet)

    def potential_and_grad(self, z: torch.Tensor) -> tuple[float, torch.Tensor]:
        """``(U(z), dU/dz)`` for the flat unconstrained position ``z`` of shape ``(D,)``: ``U`` a
        Python float (``inf`` where it is not finite), the gradient of shape ``(D,)``."""
        if self._compiled is not None:
            out = self._compiled(z.detach().to(torch.float64))
            value = float(out[-1])
            return (math.inf if value != value else value), out[:-1].to(z.dtype)
        return self._eager_potential_and_grad(z)

    def potential_and_grad_numpy(self, z: np.ndarray) -> tuple[float, np.ndarray]:
        """The same on a float64 NumPy vector (what the samplers hold): ``(U, grad)``, grad float64."""
        if self._compiled is not None:
            out = self._compiled(torch.from_numpy(z)).numpy()
            value = float(out[-1])
            return (math.inf if value != value else value), out[:-1]
        value, g = self._eager_potential_and_grad(torch.from_numpy(z).to(self.dtype))
        return value, g.to(torch.float64).numpy()

    def _eager_potential_and_grad(self, z: torch.Tensor) -> tuple[float, torch.Tensor]:
        z = z.detach().requires_grad_(True)
        try:
            u = self.potential(z)
        except torch.linalg.LinAlgError:
            # e.g. a Cholesky factor of a matrix built from latents that is not positive definite
            # there: no density at this point (as the compiled graph reports it), not a crash
            return math.inf, torch.zeros_like(z)
        if not isinstance(u, torch.Tensor) or not u.requires_grad:
            # no latent influences the density (or no latents at all)
            return float(u), torch.zeros_like(z)
        g = _scalar_grad(u, z)
        value = u.item()
        if value != value:
            value = math.inf
        return value, g

    def compile(self, z: torch.Tensor, u: float, g: torch.Tensor) -> bool:
        """Record the potential and its gradient at ``z`` (shape ``(D,)``) as one graph and use it
        from now on (see :mod:`ember.infer.mcmc.compile`); ``(u, g)`` are the eager ``U(z)`` (a
        float) and gradient (shape ``(D,)``) it must reproduce. Runs the model with validation off (the eager start has already checked
        it). Returns whether it worked; otherwise :attr:`compile_problem` says why and the model
        keeps running eagerly."""
        from ember.infer.mcmc.compile import compile_value_and_grad
        from ember.primitives import validation_enabled

        self._compiled = None
        if z.device.type != "cpu":
            self.compile_problem = "compiling is done for CPU models only (the samplers' state is in NumPy)"
            return False
        with validation_enabled(False):
            compiled, how = compile_value_and_grad(self.potential, z, self._eager_potential_and_grad)
        if compiled is None:
            self.compiled, self.compile_problem = None, how
            return False
        self._compiled, self.compiled, self.compile_problem = compiled, how, None
        return True

    # ---- initialisation ---------------------------------------------------------------------------
    def initial_point(self, init_strategy: Any = init_to_median, initial_params: dict | None = None,
                      max_tries: int = 100) -> tuple[torch.Tensor, float, torch.Tensor]:
        """A starting point ``z0`` with finite potential and gradient: ``(z0, U(z0), dU/dz(z0))``,
        ``z0`` and the gradient of shape ``(D,)`` (every latent's unconstrained value, flattened
        and concatenated), ``U`` a float.

        ``initial_params`` (unconstrained values by site name, as in Pyro) wins over
        ``init_strategy`` for the sites it names. Random strategies are retried up to
        ``max_tries`` times.
        """
        strategy = resolve_init_strategy(init_strategy, None)
        last_problem = ""
        for attempt in range(max_tries):
            trace = self.trace_at(strategy)
            if attempt == 0:
                self._learn_structure(trace)
                if is_validation_enabled():
                    trace.compute_log_prob()  # shape checks against plates, with the site named
                if initial_params:
                    strategy = init_to_value(values=self._constrained_initial(initial_params), fallback=strategy)
                    trace = self.trace_at(strategy)
            values = {s.name: trace.nodes[s.name].value for s in self.sites}
            z = self.unconstrain(values)
            if not torch.isfinite(z).all():
                bad = [s.name for s in self.sites if not torch.isfinite(z[s.offset:s.offset + s.size]).all()]
                last_problem = f"the initial value of {bad} is on the boundary of (or outside) its support"
                continue
            u, g = self.potential_and_grad(z)
            if math.isfinite(u) and bool(torch.isfinite(g).all()):
                return z, u, g
            last_problem = self._explain_nonfinite(z, u, g)
            if initial_params and all(s.name in initial_params for s in self.sites):
                break  # deterministic: retrying cannot help
        raise MCMCInitError(f"MCMC could not find a valid starting point: {last_problem}")

    def _constrained_initial(self, initial_params: dict) -> dict:
        by_name = {s.name: s for s in self.sites}
        unknown = set(initial_params) - set(by_name)
        if unknown:
            raise ValueError(f"MCMC: initial_params names {sorted(unknown)}, which are not latent sites of the model; "
                             f"latent sites: {list(by_name)}")
        out = {}
        for name, u in initial_params.items():
            s = by_name[name]
            u = torch.as_tensor(u, dtype=s.dtype)
            if u.shape != s.unconstrained_shape:
                raise ValueError(f"MCMC: initial_params['{name}'] has shape {tuple(u.shape)}; the site's unconstrained "
                                 f"value has shape {tuple(s.unconstrained_shape)}")
            out[name] = u if s.transform is None else s.transform(u)
        return out

    def _explain_nonfinite(self, z: torch.Tensor, u: float, g: torch.Tensor) -> str:
        with torch.no_grad():
            values, _ = self._values_and_logdet(z)
            try:
                with TraceMessenger() as tm, _SubstituteValuesMessenger(data=values):
                    self.model(*self.args, **self.kwargs)
                tm.trace.compute_log_prob()
            except (ValueError, RuntimeError) as e:
                return f"running the model at the initial values raised {type(e).__name__}: {e}"
            found = first_nonfinite_site([("", tm.trace)])
            if found is not None:
                return (f"the log density is not finite at {describe_site(*found)}. Check that the data lie in the support "
                        f"of the likelihood and that parameters are valid at the initial values")
            for s in self.sites:
                if s.transform is not None:
                    uu = z[s.offset:s.offset + s.size].view(s.unconstrained_shape)
                    if not torch.isfinite(s.transform.log_abs_det_jacobian(uu, s.transform(uu))).all():
                        return f"the log-Jacobian of site '{s.name}''s transform to its support is not finite at the initial value"
        if not math.isfinite(u):
            return f"the potential energy is {u}"
        bad_grad = [s.name for s in self.sites if not torch.isfinite(g[s.offset:s.offset + s.size]).all()]
        return f"the gradient of the log density is not finite with respect to site(s) {bad_grad}"


class FunctionPotential:
    """The same interface for a user's ``potential_fn(params) -> scalar`` over a dict of
    unconstrained tensors (no model, no transforms): samples are reported unconstrained."""

    def __init__(self, potential_fn: Callable, initial_params: dict) -> None:
        self.potential_fn = potential_fn
        sites = []
        offset = 0
        dtypes = []
        for name, v in initial_params.items():
            v = torch.as_tensor(v)
            if not v.dtype.is_floating_point:
                raise ValueError(f"MCMC: initial_params['{name}'] must be a floating tensor, got dtype {v.dtype}")
            sites.append(LatentSite(name, v.shape, v.shape, offset, v.numel(), None, v.dtype))
            offset += v.numel()
            dtypes.append(v.dtype)
        self.sites = sites
        self.dim = offset
        self.dtype = dtypes[0] if dtypes else torch.get_default_dtype()
        for d in dtypes[1:]:
            self.dtype = torch.promote_types(self.dtype, d)
        self.observed: dict[str, torch.Tensor] = {}
        self.initial_params = {k: torch.as_tensor(v) for k, v in initial_params.items()}
        self._compiled: Callable | None = None
        self.compiled: str | None = None
        self.compile_problem: str | None = None

    unconstrain = ModelPotential.unconstrain
    constrain = ModelPotential.constrain

    def _values(self, z: torch.Tensor) -> dict:
        return {s.name: z[s.offset:s.offset + s.size].view(s.shape).to(s.dtype) for s in self.sites}

    def potential(self, z: torch.Tensor) -> torch.Tensor:
        return self.potential_fn(self._values(z))

    potential_and_grad = ModelPotential.potential_and_grad
    potential_and_grad_numpy = ModelPotential.potential_and_grad_numpy
    _eager_potential_and_grad = ModelPotential._eager_potential_and_grad
    compile = ModelPotential.compile

    def initial_point(self, init_strategy: Any = None, initial_params: dict | None = None, max_tries: int = 1) -> tuple:
        z = self.unconstrain(initial_params or self.initial_params)
        u, g = self.potential_and_grad(z)
        if not (math.isfinite(u) and bool(torch.isfinite(g).all())):
            bad = [s.name for s in self.sites if not torch.isfinite(g[s.offset:s.offset + s.size]).all()]
            raise MCMCInitError(f"MCMC could not start: potential_fn at initial_params is {u}"
                                + (f" and its gradient is not finite for {bad}" if bad else ""))
        return z, u, g


# ---- many chains at once ----------------------------------------------------------------------------
CHAIN_PLATE = "_ember_mcmc_chains"


class _BatchedSubstitute(_Substitute):
    """Substitute the latents of ``C`` chains (values shaped with the chain dim at ``chain_dim``)
    and add up each site's log-density per chain into ``log_joint`` (``[C]``)."""

    def __init__(self, values: dict, num_chains: int, chain_dim: int) -> None:
        super().__init__(values)
        self.num_chains = num_chains
        self.chain_dim = chain_dim

    def _pyro_post_sample(self, msg: Message) -> None:
        lp = site_log_prob(msg)
        c = self.num_chains
        if not isinstance(lp, torch.Tensor) or lp.dim() < -self.chain_dim or lp.shape[self.chain_dim] == 1:
            per_chain = lp.sum() if isinstance(lp, torch.Tensor) else torch.as_tensor(lp)  # the same for every chain
        else:
            left = lp.dim() + self.chain_dim
            if left > 0 or lp.shape[self.chain_dim] != c:
                raise ValueError(f"site '{msg.name}': its log-density has shape {tuple(lp.shape)}, which has no chain dim "
                                 f"of size {c} at dim {self.chain_dim} (and nothing left of it)")
            per_chain = lp.reshape(c, -1).sum(-1)
        total = self.log_joint
        self.log_joint = per_chain if total is None else total + per_chain


class BatchedPotential:
    """The potential energies of ``C`` chains of a :class:`ModelPotential` in one evaluation.

    ``how="plate"``: the model runs once inside a plate of size ``C`` at
    ``chain_dim = -(max_plate_nesting + 1)`` (left of every batch dim the model uses, as vectorized
    ELBO particles do), with each latent substituted by the ``C`` chains' values (the chain dim in
    front, size-1 dims padding it out to the plate's dim). Each site's log-density is summed per
    chain, so ``U(z)`` is ``[C]`` for ``z [C, D]``, and one backward pass of ``U.sum()`` gives every
    chain's gradient (the chains do not interact). A model whose tensor algebra assumes its own
    shapes (``x @ w`` with ``w`` a vector latent) cannot take a chain dim this way;
    ``how="vmap"`` then maps the single-chain potential over the chains with ``torch.func.vmap``
    (the model's Python still runs once per evaluation; every operation is batched for it).
    :meth:`check` compares either with the single-chain potential before it is used.
    """

    def __init__(self, single: ModelPotential, num_chains: int, max_plate_nesting: int, how: str = "plate") -> None:
        if how == "plate" and getattr(single, "_enum_mpn", None) is not None:
            # a chain plate would have to sit left of the enumeration dims; vmap over the chains
            # sums each chain's enumerated sites out on its own instead
            raise ValueError("the model has enumerated sites, which a chain plate cannot hold (torch.func.vmap can)")
        if how not in ("plate", "vmap"):
            raise ValueError(f"BatchedPotential: how must be 'plate' or 'vmap', got {how!r}")
        self.how = how
        self.single = single
        self.num_chains = num_chains
        self.chain_dim = -(max_plate_nesting + 1)
        self.dim = single.dim
        self.dtype = single.dtype
        self._compiled: Callable | None = None
        self.compiled: str | None = None
        self.compile_problem: str | None = None
        self._pad: dict[str, int] = {}

    def set_event_dims(self, trace: Any) -> None:
        """Learn each latent's event dims from a trace of the model (its batch dims get padded)."""
        n = -self.chain_dim - 1
        for s in self.single.sites:
            site = trace.nodes[s.name]
            event_dim = len(getattr(site.fn, "event_shape", ()))
            batch_dim = len(s.shape) - event_dim
            self._pad[s.name] = n - batch_dim
            if batch_dim > n:
                raise ValueError(f"site '{s.name}' has {batch_dim} batch dims, more than the model's {n} plate dims")

    def potential(self, z: torch.Tensor) -> torch.Tensor:
        """``U(z)`` for ``z [C, D]``: a ``[C]`` tensor, differentiable in ``z``."""
        if self.how == "vmap":
            return torch.func.vmap(self.single.potential)(z)
        c = self.num_chains
        values = {}
        logdet: Any = 0.0
        single = self.single
        pieces = z.split(single._sizes, dim=-1) if len(single.sites) > 1 else (z,)
        for s, u in zip(single.sites, pieces):
            u = u.reshape((c,) + tuple(s.unconstrained_shape))
            t = s.transform
            if t is None:
                v = u
            else:
                v = t(u)
                lad = t.log_abs_det_jacobian(u, v)
                logdet = logdet + lad.reshape(c, -1).sum(-1)
            v = v.reshape((c,) + (1,) * self._pad[s.name] + tuple(s.shape))
            values[s.name] = v if v.dtype == s.dtype else v.to(s.dtype)
        h = _BatchedSubstitute(values, c, self.chain_dim)
        from ember.poutine.plate_messenger import PlateMessenger

        with PlateMessenger(CHAIN_PLATE, c, dim=self.chain_dim), h:
            single.model(*single.args, **single.kwargs)
        log_joint = h.log_joint
        if log_joint is None:
            log_joint = torch.zeros(c, dtype=z.dtype)
        return -(log_joint + logdet)

    def eager_potential_and_grad(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U [C], dU/dz [C, D])`` run eagerly (non-finite values of ``U`` become ``inf``)."""
        z = z.detach().requires_grad_(True)
        u = self.potential(z)
        if not u.requires_grad:
            g = torch.zeros_like(z)
        else:
            g = torch.autograd.grad(u.sum(), z)[0]
        u = u.detach()
        return torch.where(torch.isnan(u), torch.full_like(u, math.inf), u), g

    def potential_and_grad_numpy(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """On float64 NumPy ``z [C, D]``: ``(U [C], grad [C, D])``, float64, NaN energies as ``inf``."""
        if self._compiled is not None:
            out = self._compiled(torch.from_numpy(z)).numpy()
            c, d = z.shape
            u = out[c * d:]
            g = out[:c * d].reshape(c, d)
        else:
            ut, gt = self.eager_potential_and_grad(torch.from_numpy(z).to(self.dtype))
            u, g = ut.to(torch.float64).numpy(), gt.to(torch.float64).numpy()
        if np.isnan(u).any():
            u = np.where(np.isnan(u), math.inf, u)
        return u, g

    def check(self, z: torch.Tensor) -> str | None:
        """Compare the batched potential and gradient at ``z [C, D]`` (and a nearby point) with the
        single-chain model's, chain by chain; return what differs (None when they agree)."""
        from ember.infer.compile import agrees

        gen = torch.Generator().manual_seed(1)
        for point in (z, z + 0.1 * torch.randn(z.shape, generator=gen, dtype=z.dtype)):
            try:
                u, g = self.eager_potential_and_grad(point)
            except Exception as e:  # noqa: BLE001 - whatever the model does with a chain dim
                msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
                where = f"a chain dim at {self.chain_dim}" if self.how == "plate" else "torch.func.vmap over the chains"
                return f"the model fails with {where}: {type(e).__name__}: {msg}"
            if u.shape != (self.num_chains,) or g.shape != point.shape:
                return f"the batched potential has shape {tuple(u.shape)}, not ({self.num_chains},)"
            for c in range(self.num_chains):
                u1, g1 = self.single._eager_potential_and_grad(point[c])
                if not math.isfinite(u1):
                    continue
                if not (math.isclose(float(u[c]), u1, rel_tol=1e-4, abs_tol=1e-4) and agrees(g[c], g1)):
                    where = f"the chain dim {self.chain_dim}" if self.how == "plate" else "the vmapped chains"
                    return (f"the batched potential of chain {c} is {float(u[c]):.6g} where the model alone gives "
                            f"{u1:.6g} (or a different gradient): the model mixes values across {where}")
        return None

    def compile(self, z: torch.Tensor) -> bool:
        """Record ``z [C, D] -> [dU/dz (C*D), U (C)]`` as one graph, checked against the eager
        batched potential (see :mod:`ember.infer.mcmc.compile`); False with :attr:`compile_problem` set
        when it cannot be."""
        from ember.infer.mcmc.compile import compile_batched_value_and_grad
        from ember.primitives import validation_enabled

        self._compiled = None
        with validation_enabled(False):
            compiled, how = compile_batched_value_and_grad(self.potential, z.detach(), self.eager_potential_and_grad)
        if compiled is None:
            self.compiled, self.compile_problem = None, how
            return False
        self._compiled, self.compiled, self.compile_problem = compiled, how, None
        return True
