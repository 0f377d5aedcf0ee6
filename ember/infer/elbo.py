"""The shared core of the ELBO estimators: traces, checks, plate-aware costs."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ember.infer.util import guess_max_plate_nesting, in_plate
from ember.poutine.guide import GuideMessenger
from ember.poutine.handlers import unwrap
from ember.poutine.replay_messenger import ReplayMessenger
from ember.poutine.trace_messenger import TraceMessenger
from ember.poutine.trace_struct import Trace
from ember.runtime import Message, is_deterministic, is_factor, is_latent, is_observed, is_validation_enabled
from ember.util import check_kwargs

__all__ = ["ELBO", "NonFiniteLossError", "get_importance_trace", "guide_messenger", "check_model_guide_match", "MultiFrameTensor", "is_guide_term"]


def is_guide_term(site: Message) -> bool:
    """A guide site whose log-density is a term of ``log q``: every scored sample site of the
    guide, its latents and auxiliaries and also its ``factor`` sites and observations (as in
    Pyro). A guide factor's ``has_rsample`` says how its gradient is estimated: pathwise
    (``True``) or as a score function (``False``). Deterministic sites are never scored."""
    return site.type == "sample" and not is_deterministic(site)


def _check_guide_observations(guide_trace: Trace, model_sites: set) -> None:
    """Refuse a guide ``factor`` without ``has_rsample``; warn about real observations in the guide."""
    observed = []
    for name, site in guide_trace.nodes.items():
        if not is_observed(site) or is_deterministic(site):
            continue
        if is_factor(site):
            if "has_rsample" not in site.fn.__dict__:
                raise ValueError(
                    f"At guide site factor('{name}', ...): missing specification of has_rsample. A guide factor is a "
                    f"term of log q; pass has_rsample=True if it arises from reparameterized sampling (pathwise "
                    f"gradient) or has_rsample=False otherwise (score-function gradient)."
                )
        elif name not in model_sites:
            observed.append(name)
    if observed:
        warnings.warn(
            f"The guide observes site(s) {observed} that the model does not have. Their log-density is subtracted from "
            f"the ELBO as a term of log q (as in Pyro); if they are data, observe them in the model instead.",
            UserWarning,
            stacklevel=5,
        )


class NonFiniteLossError(ValueError):
    """The loss is NaN or infinite; the message names the first site at fault."""


def _frames_str(frames: Any) -> str:
    return ", ".join(f"{f.name}(size={f.size}, dim={f.dim})" for f in frames) or "none"


def check_model_guide_match(model_trace: Trace, guide_trace: Trace) -> None:
    """Warn about latent sites present in only one of model and guide, and about observations
    in the guide; raise on a guide ``factor`` without ``has_rsample``, on plate size clashes and
    on event-shape mismatches between a guide's value and the model's distribution at the same
    site."""
    model_latents = {n for n, s in model_trace.nodes.items() if is_latent(s)}
    guide_latents = {n for n, s in guide_trace.nodes.items() if is_latent(s)}
    model_sites = {n for n, s in model_trace.nodes.items() if s.type == "sample"}
    _check_guide_observations(guide_trace, model_sites)
    observed_in_model = sorted(n for n in guide_latents if n in model_sites and is_observed(model_trace.nodes[n]))
    if observed_in_model:
        warnings.warn(
            f"The guide samples site(s) {observed_in_model}, which the model observes. The model keeps its observation, "
            f"so the guide's draw is unused while its log-density still enters the loss (a wrong ELBO); remove these "
            f"sites from the guide.",
            UserWarning,
            stacklevel=4,
        )
    missing_in_guide = model_latents - guide_latents
    if missing_in_guide:
        warnings.warn(
            f"Found latent sites in the model but not in the guide: {sorted(missing_in_guide)}. They are drawn from the "
            f"prior at every step and do not contribute to the guide's fit; add them to the guide (or observe them).",
            UserWarning,
            stacklevel=4,
        )
    extra = guide_latents - model_sites  # (observed ones were reported above)
    if extra:
        warnings.warn(
            f"Found sample sites in the guide but not in the model: {sorted(extra)}. Their values are unused by the model; "
            f"rename them to match the model, or mark them infer={{'is_auxiliary': True}}.",
            UserWarning,
            stacklevel=4,
        )
    for name in model_latents & guide_latents:
        ms, gs = model_trace.nodes[name], guide_trace.nodes[name]
        gframes = {f.name: f for f in gs.cond_indep_stack}
        for f in ms.cond_indep_stack:
            g = gframes.get(f.name)
            if g is not None and g.size != f.size:
                raise ValueError(
                    f"Plate size clash at site '{name}': plate '{f.name}' has size {f.size} in the model but {g.size} in "
                    f"the guide (model plates: {_frames_str(ms.cond_indep_stack)}; guide plates: {_frames_str(gs.cond_indep_stack)}). "
                    f"Model and guide must use the same plate sizes and subsample sizes.\n{model_trace.format_shapes()}"
                )
        v = ms.value
        event_shape = getattr(ms.fn, "event_shape", None)
        if isinstance(v, torch.Tensor) and event_shape is not None:
            ed = len(event_shape)
            if v.dim() < ed or v.shape[v.dim() - ed :] != event_shape:
                raise ValueError(
                    f"Shape mismatch at site '{name}': the guide's value has shape {tuple(v.shape)}, but the model's "
                    f"{type(ms.fn).__name__} has event_shape {tuple(event_shape)} (batch_shape {tuple(ms.fn.batch_shape)}). "
                    f"Check .to_event() in model and guide.\n{model_trace.format_shapes()}"
                )


def guide_messenger(guide: Any) -> GuideMessenger | None:
    """The :class:`~ember.poutine.guide.GuideMessenger` under ``guide``'s handlers (Pyro's
    ``isinstance(poutine.unwrap(guide), Messenger)``), or None for an ordinary guide."""
    inner = unwrap(guide)
    return inner if isinstance(inner, GuideMessenger) else None


def get_importance_trace(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, validate: bool | None = None, max_plate_nesting: float | None = None
) -> tuple[Trace, Trace]:
    """Run the guide, replay the model against it, compute log-densities.

    ``max_plate_nesting`` is the window of the log-density shape check (``Trace.max_plate_nesting``):
    the ELBOs pass theirs (infinite by default: every batch dim must be declared by a plate).
    A :class:`~ember.poutine.guide.GuideMessenger` guide (or one wrapped in handlers) runs the
    model itself: it is called once and gives both traces (``get_traces``)."""
    effect_guide = guide_messenger(guide)
    if effect_guide is not None:
        guide(*args, **kwargs)
        model_trace, guide_trace = effect_guide.get_traces()
    else:
        guide_tm = TraceMessenger(guide)
        guide_tm(*args, **kwargs)
        guide_trace = guide_tm.trace
        model_tm = TraceMessenger(ReplayMessenger(model, trace=guide_trace))
        model_tm(*args, **kwargs)
        model_trace = model_tm.trace
    if validate is None:
        validate = is_validation_enabled()
    if validate:
        check_model_guide_match(model_trace, guide_trace)
    model_trace.max_plate_nesting = guide_trace.max_plate_nesting = max_plate_nesting
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    return model_trace, guide_trace


def _tensor_summary(v: Any) -> str:
    if not isinstance(v, torch.Tensor):
        return repr(v)
    if v.numel() <= 6:
        return f"{v.detach().flatten().tolist()} (shape {tuple(v.shape)})"
    vf = v.detach().float()
    return (
        f"shape {tuple(v.shape)}, min {vf.min().item():.4g}, max {vf.max().item():.4g}, "
        f"{int((~torch.isfinite(vf)).sum())} non-finite entries"
    )


def _dist_summary(fn: Any) -> str:
    parts = []
    base = fn
    while hasattr(base, "base_dist"):
        base = base.base_dist
    for k in getattr(base, "arg_constraints", {}):
        v = base.__dict__.get(k)
        if isinstance(v, torch.Tensor):
            parts.append(f"{k}: {_tensor_summary(v)}")
    return "; ".join(parts)


def first_nonfinite_site(traces: list) -> tuple[str, str, Message] | None:
    """``(label, name, site)`` of the first sample site of ``[(label, trace), ...]`` whose
    (computed) log-density is not finite; None if there is none."""
    for label, tr in traces:
        for name, site in tr.nodes.items():
            if site.type != "sample" or site.log_prob_sum is None:
                continue
            lps = site.log_prob_sum
            if isinstance(lps, torch.Tensor) and not bool(torch.isfinite(lps)):
                return label, name, site
    return None


def describe_site(label: str, name: str, site: Message) -> str:
    """``"<label> site 'x' (Normal): log_prob_sum = nan. Value: ... Parameters: ..."``."""
    where = f"{label} site" if label else "site"
    return (
        f"{where} '{name}' ({type(site.fn).__name__}): log_prob_sum = {site.log_prob_sum.item()}. "
        f"Value: {_tensor_summary(site.value)}. Parameters: {_dist_summary(site.fn)}"
    )


def describe_nonfinite(traces: list) -> str:
    """Name the first site whose log-density is not finite, with its value and the
    distribution's parameters."""
    found = first_nonfinite_site(traces)
    if found is None:
        return "no single site has a non-finite log-density (the sum overflowed, or the loss function itself produced it)"
    return "the first non-finite log-density is at " + describe_site(*found)


class MultiFrameTensor:
    """Per-site costs grouped by the plates they live in, so that a cost can be summed
    down to the plates of a given site (keeping those dims: per-datum costs)."""

    def __init__(self) -> None:
        self._terms: dict = {}

    def add(self, frames: tuple, value: torch.Tensor) -> None:
        key = frozenset((f.name, f.dim) for f in frames if f.dim is not None)
        old = self._terms.get(key)
        self._terms[key] = value if old is None else old + value

    def sum_to(self, target_frames: tuple) -> Any:
        names = {f.name for f in target_frames if f.dim is not None}
        total: Any = 0.0
        for key, t in self._terms.items():
            if not isinstance(t, torch.Tensor) or t.dim() == 0:
                total = total + t
                continue
            keep = {d for (n, d) in key if n in names}
            dims = [d for d in range(-t.dim(), 0) if d not in keep]
            if dims:
                t = t.sum(dims, keepdim=True)
            total = total + t
        return total


_ELBO_KWARGS = (
    "num_particles",
    "max_plate_nesting",
    "max_iarange_nesting",
    "vectorize_particles",
    "strict_enumeration_warning",
    "ignore_jit_warnings",
    "jit_options",
    "retain_graph",
    "tail_adaptive_beta",
)


class ELBO:
    """Base of the ELBO estimators.

    :param num_particles: samples per step; the loss averages over them.
    :param max_plate_nesting: how many plate dims the model uses (only needed with
        ``vectorize_particles``; guessed by a trial run when left infinite).
    :param vectorize_particles: draw all particles at once along an extra plate on the
        left, instead of a Python loop.
    :param retain_graph: passed to ``backward``.
    Pyro's ``ignore_jit_warnings`` is accepted (Ember's recording raises no jit warnings) and
    ``jit_options`` warns once if set (Ember compiles with make_fx, not ``torch.jit``); an unknown
    keyword is a ``TypeError`` naming the closest valid one.
    """

    def __init__(
        self,
        num_particles: int = 1,
        max_plate_nesting: float = math.inf,
        max_iarange_nesting: float | None = None,
        vectorize_particles: bool = False,
        strict_enumeration_warning: bool = True,
        ignore_jit_warnings: bool = False,
        jit_options: dict | None = None,
        retain_graph: bool | None = None,
        tail_adaptive_beta: float = -1.0,
        **kwargs: Any,
    ) -> None:
        owner = type(self).__name__
        check_kwargs(owner, kwargs, valid=_ELBO_KWARGS)
        if jit_options:  # (ignore_jit_warnings is met as it is: Ember's recording raises no jit warnings)
            check_kwargs(owner, {"jit_options": jit_options}, ignored={"jit_options": "Ember records graphs with make_fx, not torch.jit"})
        if max_iarange_nesting is not None:
            max_plate_nesting = max_iarange_nesting
        if not isinstance(num_particles, int) or num_particles < 1:
            raise ValueError(f"num_particles must be a positive integer; got {num_particles!r}")
        self.num_particles = num_particles
        self.max_plate_nesting = max_plate_nesting
        self.vectorize_particles = vectorize_particles
        self.retain_graph = retain_graph
        self.strict_enumeration_warning = strict_enumeration_warning
        self.tail_adaptive_beta = tail_adaptive_beta

    # ---- particles -------------------------------------------------------------------------
    def _guess_max_plate_nesting(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> int:
        with torch.no_grad():
            # with Ember's checks as they are: a model/guide mismatch is reported here as it would be later
            model_trace, guide_trace = get_importance_trace(model, guide, args, kwargs)
        return guess_max_plate_nesting(model_trace, guide_trace)

    def _get_traces(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Iterator[tuple[Trace, Trace]]:
        if self.vectorize_particles and self.num_particles > 1:
            if self.max_plate_nesting == math.inf:
                self.max_plate_nesting = self._guess_max_plate_nesting(model, guide, args, kwargs)
                self._guessed_nesting = True
            dim = -int(self.max_plate_nesting) - 1
            name, num = "num_particles_vectorized", self.num_particles
            try:
                # the shape check covers every dim: one left of the particle plate is never a plate's, and its
                # terms would be summed into the loss (a model's keepdim=True turning the particle dim into a new one)
                traces = get_importance_trace(in_plate(model, name, num, dim), in_plate(guide, name, num, dim), args, kwargs,
                                              max_plate_nesting=math.inf)
            except (ValueError, RuntimeError) as e:
                if not getattr(self, "_guessed_nesting", False):
                    raise
                raise type(e)(
                    f"{e}\n(vectorize_particles: the particles run in a plate at dim {dim}, left of the "
                    f"max_plate_nesting={int(self.max_plate_nesting)} batch dims guessed from the first step's traces. If "
                    f"the model's plates or batch dims have grown since (other data, dynamic structure), that guess no "
                    f"longer fits: pass max_plate_nesting= to {type(self).__name__}. A dim left of the particles' plate can also come "
                    f"from the model's own arithmetic on a latent that carries the particle dim, such as keepdim=True on an event "
                    f"dim or a reshape: write it to broadcast from the right.)"
                ) from e
            yield traces
        else:
            for _ in range(self.num_particles):
                yield get_importance_trace(model, guide, args, kwargs, max_plate_nesting=self.max_plate_nesting)

    def _check_guide(self, guide: Callable) -> None:
        """Refuse a GuideMessenger guide in an estimator that pairs its traces itself instead of
        with :func:`get_importance_trace` (TraceEnum_ELBO, as in Pyro). One comparison for the others."""
        if type(self)._get_traces is not ELBO._get_traces and guide_messenger(guide) is not None:
            raise NotImplementedError(
                f"{type(self).__name__} does not support GuideMessenger guides (nor does Pyro's): it runs the guide and "
                f"replays the model itself, while a GuideMessenger runs the model. Use Trace_ELBO, TraceGraph_ELBO, "
                f"TraceMeanField_ELBO or RenyiELBO, or an ordinary guide (e.g. AutoNormal)"
            )

    # ---- the interface ---------------------------------------------------------------------
    def _differentiable_loss_particle(self, model_trace: Trace, guide_trace: Trace) -> tuple[torch.Tensor, Any]:
        """Return (loss, surrogate loss) of one particle (or one vectorized batch)."""
        raise NotImplementedError

    def _check_finite(self, loss: float, model_trace: Trace, guide_trace: Trace) -> None:
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"The loss is {loss}: {describe_nonfinite([('model', model_trace), ('guide', guide_trace)])}. "
                f"No gradient step was taken; the parameters are unchanged."
            )

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """An estimate of -ELBO (a float); no gradients."""
        self._check_guide(guide)
        with torch.no_grad():
            total = 0.0
            for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
                loss, _ = self._differentiable_loss_particle(model_trace, guide_trace)
                total += loss.item()
            return total / self.num_particles

    def _loss_and_surrogate(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[Any, Any]:
        """(loss, surrogate) averaged over the particles, as tensors (no checks, no ``.item()``)."""
        self._check_guide(guide)
        loss: Any = None
        surrogate: Any = None
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            l_, s_ = self._differentiable_loss_particle(model_trace, guide_trace)
            loss = l_ if loss is None else loss + l_
            surrogate = s_ if surrogate is None else surrogate + s_
        n = self.num_particles
        return (loss, surrogate) if n == 1 else (loss / n, surrogate / n)

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """A differentiable surrogate whose gradient estimates the gradient of -ELBO (its value
        equals the -ELBO estimate for reparameterized guides): a scalar tensor (shape ``()``),
        averaged over the particles."""
        return self._loss_and_surrogate(model, guide, args, kwargs)[1]

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """Estimate -ELBO (returned as a float) and backpropagate its gradient."""
        self._check_guide(guide)
        total = 0.0
        div = self.num_particles
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss, surrogate = self._differentiable_loss_particle(model_trace, guide_trace)
            value = loss.item()
            self._check_finite(value, model_trace, guide_trace)
            total += value
            if isinstance(surrogate, torch.Tensor) and surrogate.requires_grad:
                if div != 1:
                    surrogate = surrogate / div
                surrogate.backward(retain_graph=self.retain_graph)
        return total / div

    def __call__(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``elbo(model, guide, *args)`` is :meth:`differentiable_loss`: a scalar tensor (shape ``()``)
        to minimise with any torch optimizer (Pyro's ELBO-as-a-loss-function use)."""
        return self.differentiable_loss(model, guide, *args, **kwargs)
