"""``TraceEnum_ELBO``: the ELBO with discrete latent sites summed out exactly by parallel enumeration.

Model sites marked ``infer={"enumerate": "parallel"}`` (``config_enumerate``) that the guide does
not sample are *marginalised*: the model's log-density becomes ``log Σ_z p(x, z, w)``, computed by
the plated sum-product of :mod:`ember.ops.contract` over the enumerated dims (cost linear in the
length of a ``markov`` chain). Guide sites marked for parallel enumeration are *integrated*: every
cost is averaged over their values under the guide's probabilities (exactly, by a contraction
weighted by ``q``). Other guide sites are sampled as in ``Trace_ELBO``: pathwise gradients where
reparameterised, else a score-function term whose cost is the whole particle's ELBO.

The ELBO of one particle, with ``z_m`` the model's enumerated sites, ``z_g`` the guide's and ``w``
the sampled ones:

    E_{q(z_g | w)} [ log Σ_{z_m} p(x, z_m, z_g, w) - log q(z_g, w) ]

Monte-Carlo enumeration (``infer={"enumerate": "parallel", "num_samples": n}``, or
``config_enumerate(num_samples=n)``): such a site is drawn ``n`` times along its enumeration dim
(:mod:`ember.poutine.enum_messenger`) and each draw ``z_i`` enters the sums above with the weight
``1/n`` in place of its probability: its log-weight is ``log p(z_i) - log p(z_i).detach() - log n``
(``-log n`` alone for a reparameterised distribution, whose gradient flows through the draws).
In the guide that makes ``E_q`` an average over the draws, ``(1/n) Σ_i cost(z_i)``, an unbiased
estimate of the ELBO and of its gradient (the score-function term rides on the weight), as in
Pyro. In the model it makes ``log Σ_z`` a log-mean-exp, ``log (1/n) Σ_i p(x, ... | z_i)`` with
``z_i ~ p(z)``: an importance-weighted (IWAE-like) estimate whose exponential is unbiased for the
marginal likelihood, so the loss is a consistent upper bound of ``-log p(x)`` that tightens as
``n`` grows. (Pyro 1.9.2's TraceEnum_ELBO gives a model-side draw the weight ``p(z_i)``, a sum no
estimator converges to, and warns that its gradients are wrong; Ember computes the average.) The
draws of a sampled site must come from a distribution free of other enumeration dims (it may not
depend on another enumerated or sampled site: ``ValueError`` naming both); sites downstream of it
may. ``infer_discrete``, ``compute_marginals``, ``sample_posterior`` and the HMC potential need
exact enumeration and refuse sampled sites.

``max_plate_nesting`` (given, or guessed by one run without enumeration) says how many dims on the
right the plates own; enumeration uses the dims to their left. A model site that is more global
than a guide-enumerated site it shares a factor with (a product over a plate of a sum over the
model's site) is refused with an error naming both: its exact sum is exponential in the plate size.

Plate subsampling scales each plate's product (``size / subsample_size``) after the sum over the
enumerated values inside it; any other scale (``poutine.scale``) must be the same on every factor
of the enumerated part (else ``ValueError`` naming the sites).
"""

from __future__ import annotations

import math
import queue as _queue
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ember.infer.compiled_elbo import CompiledLossAndGrads
from ember.infer.elbo import ELBO, check_model_guide_match, is_guide_term
from ember.infer.enum import _sequential_escape
from ember.infer.trace_elbo import _loss_and_surrogate
from ember.infer.util import in_plate
from ember.ops.contract import contract_plated, sum_plates
from ember.ops.einsum import align, contract
from ember.poutine.block_messenger import BlockMessenger
from ember.poutine.enum_messenger import EnumMessenger
from ember.poutine.handlers import queue as poutine_queue
from ember.poutine.replay_messenger import ReplayMessenger
from ember.poutine.trace_messenger import TraceMessenger
from ember.poutine.trace_struct import Trace, scale_and_mask
from ember.poutine.util import enum_extend
from ember.runtime import Message, is_guide_latent, is_validation_enabled

__all__ = ["TraceEnum_ELBO", "JitTraceEnum_ELBO", "enum_sites", "enumerated_log_joint", "plate_symbol", "marginal_log_joint"]


def plate_symbol(name: str) -> tuple:
    """The contraction symbol of the plate named ``name`` (site names are the variables' symbols)."""
    return ("plate", name)


class _Factors:
    """The log-density factors of one trace in named-dim form, and what they refer to."""

    def __init__(self) -> None:
        self.var_ordinals: dict[str, frozenset] = {}
        self.var_sites: dict[str, Message] = {}
        self.plates: dict[tuple, tuple[int, float]] = {}


def _ordinal(site: Message, info: _Factors) -> frozenset:
    ordinal = []
    for f in site.cond_indep_stack:
        if f.dim is not None and f.size >= 0:
            sym = plate_symbol(f.name)
            full = f.full_size if f.full_size else f.size
            info.plates[sym] = (f.size, (full / f.size) if f.size else 1.0)
            ordinal.append(sym)
    return frozenset(ordinal)


def _plate_scale(ordinal: frozenset, info: _Factors) -> float:
    s = 1.0
    for p in ordinal:
        s *= info.plates[p][1]
    return s


def _named(site: Message, tensor: torch.Tensor, current: dict, mpn: int, ordinal: frozenset) -> tuple[torch.Tensor, tuple]:
    """``tensor`` (a site's log-density, batch-shaped) with its size-1 dims dropped and every other dim
    named: a plate's symbol, or the enumerated site that owns the dim. Dims right of the deepest plate
    that no plate declares are summed (as every ELBO does)."""
    n = tensor.dim()
    frames = {f.dim: f for f in site.cond_indep_stack if f.dim is not None}
    dims: list = []
    keep: list = []
    free: list = []
    for i, size in enumerate(tensor.shape):
        if size == 1:
            continue
        d = i - n
        if -d <= mpn:
            f = frames.get(d)
            if f is None:
                free.append(i)
                continue
            dims.append(plate_symbol(f.name))
        else:
            owner = current.get(d)
            if owner is None:
                raise ValueError(
                    f"Site '{site.name}' has a log-density of shape {tuple(tensor.shape)}: size {size} at dim {d}, left of the "
                    f"max_plate_nesting={mpn} plate dims, but no enumerated site uses dim {d}. Is max_plate_nesting too "
                    f"small (count the nested plates), or does a batch dim lack its plate?"
                )
            dims.append(owner)
        keep.append(i)
    if free:
        tensor = tensor.sum(free, keepdim=True)
    if len(keep) == n:
        return tensor, tuple(dims)
    return tensor.reshape([tensor.shape[i] for i in keep]), tuple(dims)


def enum_sites(trace: Trace, info: _Factors) -> Iterator[tuple[Message, frozenset, dict]]:
    """``(site, ordinal, owners)`` for each sample site of ``trace`` with a log-density, in order:
    ``owners`` maps each enumerated dim to the site that owns it at that point of the run (a
    ``markov`` chain hands a dim from site to site). Records every enumerated site in ``info``."""
    current: dict[int, str] = {}
    for name, site in trace.nodes.items():
        if site.type != "sample" or site.log_prob is None:
            continue
        ordinal = _ordinal(site, info)
        dim = site.infer.get("_enumerate_dim")
        if dim is not None:
            current = {**current, dim: name}
            info.var_ordinals[name] = ordinal
            info.var_sites[name] = site
        yield site, ordinal, current


def _residual_scale(site: Message, ordinal: frozenset, info: _Factors) -> float:
    scale = site.scale
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise ValueError(
                f"Site '{site.name}' depends on an enumerated site and has a tensor scale of shape {tuple(scale.shape)}; "
                f"TraceEnum_ELBO needs one scale for all factors it sums over (poutine.scale with a number)")
        scale = float(scale)
    return float(scale) / _plate_scale(ordinal, info)


def is_monte_carlo(site: Message) -> bool:
    """Whether ``site`` was drawn ``num_samples`` times along its enumeration dim (Monte-Carlo
    enumeration) rather than enumerated over its support."""
    return "_enumerate_dim" in site.infer and site.infer.get("num_samples") is not None


def _mc_log_weight(site: Message, tensor: torch.Tensor, dims: tuple) -> torch.Tensor:
    """The log-weight of each draw of a Monte-Carlo enumerated site, in place of its log-density:
    ``-log(num_samples)`` in value (an average over the draws), with the score-function gradient
    ``d log p(z_i)`` where the draws are not reparameterised (``log p - log p.detach()``). ``tensor``
    is the site's masked, unscaled log-density named by ``dims``; the draws must come from a
    distribution that depends on no other enumerated or sampled site (else an error naming both)."""
    others = [d for d in dims if isinstance(d, str) and d != site.name]
    if others:
        raise ValueError(
            f"Site '{site.name}' is Monte-Carlo enumerated (num_samples={site.infer['num_samples']}) but its distribution "
            f"depends on the enumerated or sampled site(s) {others}; TraceEnum_ELBO averages over a site's draws only "
            f"where they come from a distribution free of other enumeration dims. Enumerate '{site.name}' exactly "
            f"(drop num_samples), or sample {others} instead of enumerating them")
    if getattr(site.fn, "has_rsample", False):
        tensor = torch.zeros_like(tensor)
    else:
        tensor = tensor - tensor.detach()
    return tensor - math.log(site.infer["num_samples"])


def _refuse_monte_carlo(trace: Trace, who: str) -> None:
    sampled = [n for n, st in trace.nodes.items() if st.type == "sample" and is_monte_carlo(st)]
    if sampled:
        raise NotImplementedError(
            f"{who} needs the exact enumeration of the model's discrete sites, but {sampled} are Monte-Carlo enumerated "
            f"(infer num_samples): their draws are not the site's support. Drop num_samples for these sites "
            f"(config_enumerate(model) without num_samples)")


def marginal_log_joint(model_trace: Trace, mpn: int, sum_vars: set | None = None, ring: str = "log",
                       tape: list | None = None) -> tuple[list, _Factors]:
    """The model's log-density with its enumerated sites summed out (``ring="max"``: maximised).

    Returns ``(costs, info)``: ``costs`` is a list of ``(ordinal, tensor, dims, scaled)`` whose sum
    over plates (:func:`ember.ops.contract.sum_plates` where ``scaled`` is False; a plain sum where it
    is True) is the log joint; ``dims`` may still name enumerated sites not in ``sum_vars`` (the
    guide's). ``sum_vars`` defaults to every enumerated site of the trace.
    """
    info = _Factors()
    raw = list(enum_sites(model_trace, info))
    if sum_vars is None:
        sum_vars = set(info.var_ordinals)
    costs: list = []
    enum_terms = []
    residual: float | None = None
    residual_site = None
    for site, ordinal, owners in raw:
        tensor, dims = _named(site, scale_and_mask(site.unscaled_log_prob, 1.0, site.mask), owners, mpn, ordinal)
        if site.name in sum_vars and is_monte_carlo(site):
            if tape is not None or ring != "log":
                _refuse_monte_carlo(model_trace, "infer_discrete")
            tensor = _mc_log_weight(site, tensor, dims)
        if any(d in sum_vars for d in dims):
            r = _residual_scale(site, ordinal, info)
            if residual is None:
                residual, residual_site = r, site.name
            elif not math.isclose(r, residual, rel_tol=1e-6):
                raise ValueError(
                    f"Sites '{residual_site}' and '{site.name}' both depend on enumerated sites but carry different scales "
                    f"({residual} and {r}, besides plate subsampling); TraceEnum_ELBO needs one scale for the factors it sums over")
            enum_terms.append((ordinal, tensor, dims))
        elif dims:
            costs.append((ordinal, *_named(site, site.log_prob, owners, mpn, ordinal), True))
        else:
            costs.append((ordinal, site.log_prob_sum, (), True))
    if enum_terms:
        for ordinal, t, dims in contract_plated(enum_terms, info.var_ordinals, sum_vars, info.plates, ring=ring, tape=tape):
            if residual is not None and residual != 1.0:
                t = t * residual
            costs.append((ordinal, t, dims, False))
    return costs, info


def _expectation(ordinal: frozenset, tensor: torch.Tensor, dims: tuple, scaled: bool, weights: list, info: _Factors) -> torch.Tensor:
    """The sum over plates of ``E_q[cost]`` over the guide-enumerated sites ``cost`` names."""
    gvars = [d for d in dims if d in info.var_ordinals]
    if gvars:
        terms = [(torch.exp(w), wd) for w_ord, w, wd in weights if w_ord <= ordinal]
        terms.append((tensor, dims))
        out = tuple(dict.fromkeys(d for _, td in terms for d in td if d in info.plates))
        tensor = contract(terms, out, ring="prob")
        dims = out
    if scaled:
        return tensor.sum()
    tensor, _ = sum_plates(tensor, dims, ordinal, info.plates)
    return tensor


class TraceEnum_ELBO(ELBO):
    """The ELBO with parallel enumeration of discrete sites in model and guide (module docstring).

    Accepts ``ELBO``'s arguments; ``max_plate_nesting`` should be given when the model's plates
    are known (it is otherwise guessed by one run of model and guide without enumeration).
    With ``strict_enumeration_warning`` (default), a model and guide without any site marked for
    enumeration warn once (``Trace_ELBO`` is the cheaper estimator then).
    """

    def __init__(self, *args: Any, strict_enumeration_warning: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, strict_enumeration_warning=strict_enumeration_warning, **kwargs)
        self._warn_no_enumeration = strict_enumeration_warning
        self._vectorizable: bool | None = None  # decided on the first vectorized call (_get_traces)

    def _guess_mpn(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> int:
        if self.max_plate_nesting == math.inf:
            # every call needs the nesting, so the look at the model's plates draws nothing from the
            # caller's random stream: the draws are those of an ELBO that was told max_plate_nesting
            with torch.random.fork_rng(devices=[]):
                self.max_plate_nesting = self._guess_max_plate_nesting(model, guide, args, kwargs)
        mpn = self.max_plate_nesting
        if isinstance(mpn, float):
            if mpn != int(mpn) or mpn < 0:
                raise ValueError(f"TraceEnum_ELBO: max_plate_nesting must be a non-negative integer; got {mpn!r}")
            mpn = int(mpn)
        return mpn

    def _score_sites(self, guide: Callable, args: tuple, kwargs: dict) -> list[str]:
        """The guide's latent sites that are neither reparameterized nor enumerated (score-function
        sites), from one look at the guide that draws nothing from the caller's random stream."""
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            tm = TraceMessenger(guide)
            tm(*args, **kwargs)
        return [n for n, st in tm.trace.nodes.items() if st.type == "sample" and is_guide_latent(st)
                and not st.fn.has_rsample and not st.infer.get("enumerate")]

    def _get_traces(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Iterator[tuple[Trace, Trace]]:
        mpn = self._guess_mpn(model, guide, args, kwargs)
        if self.vectorize_particles and self.num_particles > 1 and self._vectorizable is None:
            # a score-function site's surrogate takes its particle's whole cost; in one vectorized
            # trace that cost would be every particle's (unbiased, but with a variance that grows
            # with the number of particles), so such guides run their particles one by one
            score = self._score_sites(guide, args, kwargs)
            self._vectorizable = not score
            if score:
                warnings.warn(f"TraceEnum_ELBO: the guide's sites {score} are neither reparameterized nor enumerated, so "
                              f"the particles run one after another instead of vectorized (mark them for enumeration, "
                              f"config_enumerate(guide), to sum them out exactly)", UserWarning, stacklevel=4)
        if self.vectorize_particles and self.num_particles > 1 and self._vectorizable:
            dim = -mpn - 1
            name, num = "num_particles_vectorized", self.num_particles
            yield from self._iter_traces(in_plate(model, name, num, dim), in_plate(guide, name, num, dim), args, kwargs, mpn + 1)
        else:
            for _ in range(self.num_particles):
                yield from self._iter_traces(model, guide, args, kwargs, mpn)

    def _iter_traces(self, model: Callable, guide: Callable, args: tuple, kwargs: dict, mpn: int) -> Iterator[tuple[Trace, Trace]]:
        """One (model, guide) trace pair; or, when the guide has sites marked for sequential
        enumeration, one pair per joint value of those sites (each weighted by its probability
        in :meth:`_differentiable_loss_particle`)."""
        guide_enum = EnumMessenger(guide, first_available_dim=-mpn - 1, max_plate_nesting=mpn)
        guide_tm = TraceMessenger(guide_enum)
        guide_tm(*args, **kwargs)
        guide_trace = guide_tm.trace
        sequential = [st for st in guide_trace.nodes.values()
                      if st.type == "sample" and st.infer.get("enumerate") == "sequential" and not st.is_observed]
        if not sequential:
            yield self._model_trace(model, guide_trace, guide_enum.next_available_dim, args, kwargs, mpn)
            return
        for st in sequential:
            if st.infer.get("num_samples") is not None:
                raise ValueError(
                    f"TraceEnum_ELBO: guide site '{st.name}' is marked for sequential enumeration with num_samples="
                    f"{st.infer['num_samples']}; Monte-Carlo enumeration draws its samples in parallel: use "
                    f"infer={{'enumerate': 'parallel', 'num_samples': n}}")
            if not getattr(st.fn, "has_enumerate_support", False) or st.fn.batch_shape.numel() != 1:
                raise ValueError(
                    f"TraceEnum_ELBO: guide site '{st.name}' is marked for sequential enumeration, but its distribution "
                    f"{type(st.fn).__name__} (batch_shape {tuple(st.fn.batch_shape)}) is not a single discrete variable; "
                    f"enumerate batched sites in parallel")
        q: _queue.LifoQueue = _queue.LifoQueue()
        q.put(Trace())
        runner = poutine_queue(guide_enum, queue=q, escape_fn=_sequential_escape, extend_fn=enum_extend)
        while not q.empty():
            guide_tm = TraceMessenger(runner)
            guide_tm(*args, **kwargs)
            yield self._model_trace(model, guide_tm.trace, guide_enum.next_available_dim, args, kwargs, mpn)

    def _model_trace(self, model: Callable, guide_trace: Trace, first_dim: int, args: tuple, kwargs: dict,
                     mpn: int) -> tuple[Trace, Trace]:
        model_enum = EnumMessenger(ReplayMessenger(model, trace=guide_trace), first_available_dim=first_dim, max_plate_nesting=mpn)
        model_tm = TraceMessenger(model_enum)
        model_tm(*args, **kwargs)
        model_trace = model_tm.trace
        for name, site in model_trace.nodes.items():
            if (site.type == "sample" and not site.is_observed and site.infer.get("enumerate") == "sequential"
                    and name not in guide_trace.nodes):
                raise NotImplementedError(
                    f"TraceEnum_ELBO: model site '{name}' asks for sequential enumeration, which is done in the guide only; "
                    f"mark it 'parallel' (config_enumerate(model))")
        if is_validation_enabled():
            # the model's enumerated sites are summed out, not expected in the guide
            view = Trace()
            view.nodes = OrderedDict((n, st) for n, st in model_trace.nodes.items()
                                     if not ("_enumerate_dim" in st.infer and n not in guide_trace.nodes))
            check_model_guide_match(view, guide_trace)
        model_trace.max_plate_nesting = guide_trace.max_plate_nesting = mpn
        model_trace.compute_log_prob()
        guide_trace.compute_log_prob()
        return model_trace, guide_trace

    def _differentiable_loss_particle(self, model_trace: Trace, guide_trace: Trace) -> tuple[torch.Tensor, Any]:
        mpn = int(model_trace.max_plate_nesting)  # set by _model_trace: the plates' dims
        if self._warn_no_enumeration:
            self._warn_no_enumeration = False
            if not any(st.type == "sample" and st.infer.get("enumerate") for tr in (model_trace, guide_trace)
                       for st in tr.nodes.values()):
                warnings.warn("TraceEnum_ELBO found no sample site marked for enumeration (config_enumerate, or "
                              "infer={'enumerate': 'parallel'}); without one, Trace_ELBO computes the same estimate faster",
                              UserWarning, stacklevel=4)
        # the guide: its enumerated sites (weights), every latent's -log q (costs)
        ginfo = _Factors()
        weights = []
        costs = []
        nonreparam = []
        seq_log_weight: Any = 0.0  # log q of the sequentially enumerated values of this trace
        for site, ordinal, owners in enum_sites(guide_trace, ginfo):
            if not is_guide_term(site):
                continue
            tensor, dims = _named(site, site.log_prob, owners, mpn, ordinal)
            costs.append((ordinal, -tensor, dims, True))
            if "_enumerate_dim" in site.infer:
                w, wdims = _named(site, site.unscaled_log_prob, owners, mpn, ordinal)
                if is_monte_carlo(site):
                    w = _mc_log_weight(site, w, wdims)
                weights.append((ordinal, w, wdims))
            elif site.infer.get("enumerate") == "sequential":
                seq_log_weight = seq_log_weight + site.unscaled_log_prob.sum()
            elif not site.fn.has_rsample:
                nonreparam.append(site)
        guide_vars = set(ginfo.var_ordinals)
        model_vars = {n for n, s in model_trace.nodes.items() if s.type == "sample" and "_enumerate_dim" in s.infer and n not in guide_vars}
        mcosts, minfo = marginal_log_joint(model_trace, mpn, sum_vars=model_vars)
        info = minfo
        info.plates.update(ginfo.plates)
        for n in guide_vars:
            info.var_ordinals[n] = ginfo.var_ordinals[n]
        gvar_only = _Factors()
        gvar_only.plates = info.plates
        gvar_only.var_ordinals = {n: info.var_ordinals[n] for n in guide_vars}
        elbo: Any = 0.0
        for ordinal, tensor, dims, scaled in mcosts + costs:
            elbo = elbo + _expectation(ordinal, tensor, dims, scaled, weights, gvar_only)
        if not isinstance(elbo, torch.Tensor):
            elbo = torch.tensor(float(elbo))
        if isinstance(seq_log_weight, torch.Tensor):
            elbo = seq_log_weight.exp() * elbo
        if not nonreparam:
            return _loss_and_surrogate(elbo)
        score: Any = 0.0
        for site in nonreparam:
            score = score + scale_and_mask(site.unscaled_log_prob, 1.0, site.mask).sum()
        return _loss_and_surrogate(elbo, score * elbo.detach())


    # ---- posteriors of the model's enumerated sites ---------------------------------------------
    def _enumerated_traces(self, model: Callable, guide: Callable, args: tuple, kwargs: dict, who: str) -> tuple[Trace, Trace]:
        """One (model, guide) trace pair with the model's enumerated sites enumerated, refusing what
        ``who`` cannot do (several particles, enumerated guide sites), as Pyro does."""
        if self.num_particles != 1:
            raise NotImplementedError(f"TraceEnum_ELBO.{who}() works with num_particles=1; this ELBO has {self.num_particles}")
        self._check_guide(guide)
        with torch.no_grad(), BlockMessenger():
            model_trace, guide_trace = next(iter(self._get_traces(model, guide, args, kwargs)))
        enumerated = [n for n, st in guide_trace.nodes.items() if st.type == "sample" and not st.is_observed
                      and st.infer.get("enumerate")]
        _refuse_monte_carlo(model_trace, f"TraceEnum_ELBO.{who}()")
        if enumerated:
            raise NotImplementedError(f"TraceEnum_ELBO.{who}() does not support enumerated guide sites; the guide "
                                      f"enumerates {enumerated} (sample them, or move the enumeration to the model)")
        return model_trace, guide_trace

    def compute_marginals(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> OrderedDict:
        """The posterior marginal of each site the model enumerates (and the guide does not sample),
        given the observations and one draw of the guide's latents: ``{site: distribution}`` in
        model order, a ``Bernoulli`` for a Bernoulli site, a ``OneHotCategorical`` for a one-hot
        one, else a ``Categorical`` over the indices of the site's ``enumerate_support``. Its batch
        shape is the site's plates (leading size-1 dims dropped), one marginal per plate entry.

        The marginals are the adjoint of the plated sum-product that sums every enumerated site
        out of the model's joint (:mod:`ember.ops.contract`), so any model this ELBO can train
        has them, global discrete sites over plated ones included; plate subsampling scales do
        not enter them."""
        model_trace, guide_trace = self._enumerated_traces(model, guide, args, kwargs, "compute_marginals")
        return _compute_marginals(model_trace, guide_trace)

    def sample_posterior(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Any:
        """Run ``model`` once with its latents drawn from the guide and its enumerated sites drawn
        jointly from their posterior given those and the observations; return what the model
        returns (wrap the call in ``poutine.trace`` to read the values)."""
        from ember.infer.discrete import infer_discrete

        mpn = self._guess_mpn(model, guide, args, kwargs)
        _, guide_trace = self._enumerated_traces(model, guide, args, kwargs, "sample_posterior")
        replayed = ReplayMessenger(model, trace=guide_trace)
        return infer_discrete(replayed, first_available_dim=-mpn - 1, temperature=1)(*args, **kwargs)


def _marginal_dist(fn: Any, probs: torch.Tensor) -> Any:
    """The distribution of a site whose distribution is ``fn`` with ``probs`` over its enumerated
    values on the last dim."""
    import ember.distributions as dist

    base = fn
    while hasattr(base, "base_dist") and not isinstance(base, (torch.distributions.Bernoulli, torch.distributions.OneHotCategorical)):
        base = base.base_dist
    if isinstance(base, torch.distributions.Bernoulli):
        return dist.Bernoulli(probs=probs[..., 1])
    if isinstance(base, torch.distributions.OneHotCategorical):
        return dist.OneHotCategorical(probs=probs)
    return dist.Categorical(probs=probs)


def _compute_marginals(model_trace: Trace, guide_trace: Trace) -> OrderedDict:
    """``{site: marginal distribution}`` of the model's enumerated sites (see ``compute_marginals``).

    Each site ``z`` gets an indicator term ``theta[plates of z, z]`` (zeros) in the log joint; the
    gradient of ``log sum_{all enumerated sites} p`` in ``theta`` is the posterior probability of
    each value of ``z`` at each plate entry (the sum-product's adjoint, one backward pass for all
    sites). That needs only the full sum, which the ELBO itself computes."""
    mpn = int(model_trace.max_plate_nesting)
    info = _Factors()
    raw = list(enum_sites(model_trace, info))
    model_vars = {n for n in info.var_ordinals if n not in guide_trace.nodes}
    plates = {p: (size, 1.0) for p, (size, _scale) in info.plates.items()}  # posteriors are not subsampling-scaled
    terms = []
    for site, ordinal, owners in raw:
        tensor, dims = _named(site, scale_and_mask(site.unscaled_log_prob, 1.0, site.mask), owners, mpn, ordinal)
        if any(d in model_vars for d in dims):
            terms.append((ordinal, tensor, dims))
    names = [n for n in model_trace.nodes if n in model_vars]
    indicators = {}
    for name in names:
        site, ordinal = info.var_sites[name], info.var_ordinals[name]
        frames = {f.dim: plate_symbol(f.name) for f in site.cond_indep_stack if f.dim is not None}
        layout = [frames[d] for d in range(-mpn, 0) if frames.get(d) in ordinal and plates[frames[d]][0] > 1]
        size = site.unscaled_log_prob.shape[site.infer["_enumerate_dim"]]
        theta = torch.zeros([plates[p][0] for p in layout] + [size], requires_grad=True)
        indicators[name] = (theta, tuple(layout) + (name,), [frames.get(d, ("_free", d)) for d in range(-mpn, 0)] + [name])
        terms.append((ordinal, theta, tuple(layout) + (name,)))
    if not names:
        return OrderedDict()
    with torch.enable_grad():
        log_z: Any = 0.0
        for t_ord, t, dims in contract_plated(terms, info.var_ordinals, model_vars, plates):
            log_z = log_z + sum_plates(t, dims, t_ord, plates)[0].sum()
        grads = torch.autograd.grad(log_z, [indicators[n][0] for n in names])
    out: OrderedDict = OrderedDict()
    for name, grad in zip(names, grads):
        _, dims, target = indicators[name]
        probs = align(grad.detach(), dims, target)
        while probs.dim() > 1 and probs.shape[0] == 1:
            probs = probs.squeeze(0)
        out[name] = _marginal_dist(info.var_sites[name].fn, probs)
    return out


class JitTraceEnum_ELBO(CompiledLossAndGrads, TraceEnum_ELBO):
    """``TraceEnum_ELBO`` compiled (see :mod:`ember.infer.compiled_elbo`): one recorded graph of the
    guide, the enumerated model and the contraction per argument signature; where the model or guide
    is not static it warns once and runs eagerly (``compile_status`` says why)."""



def enumerated_log_joint(model: Callable, args: tuple, kwargs: dict, values: dict, max_plate_nesting: int) -> torch.Tensor:
    """``log Σ_z p(x, z, values)``: the log joint of ``model`` with the sites in ``values`` set to
    those values and its sites marked for parallel enumeration summed out (a scalar tensor,
    differentiable in ``values``). What HMC and NUTS move on for a model with enumerated sites."""
    from ember.poutine.misc_messengers import _SubstituteValuesMessenger

    mpn = max_plate_nesting
    tm = TraceMessenger(EnumMessenger(_SubstituteValuesMessenger(model, data=values), first_available_dim=-mpn - 1))
    tm(*args, **kwargs)
    tr = tm.trace
    _refuse_monte_carlo(tr, "The enumerated log joint (HMC/NUTS potential)")
    tr.max_plate_nesting = mpn
    tr.compute_log_prob()
    costs, info = marginal_log_joint(tr, mpn)
    total: Any = 0.0
    for ordinal, tensor, dims, scaled in costs:
        total = total + (tensor.sum() if scaled else sum_plates(tensor, dims, ordinal, info.plates)[0])
    return total if isinstance(total, torch.Tensor) else torch.tensor(float(total))
