"""The one hot path: messages, the handler stack and ``apply_stack``; the message protocol.

Every primitive (``sample``, ``param``, ...) builds a :class:`Message` and hands it to
:func:`apply_stack`. Handlers (``ember.poutine``) sit on a global stack; the innermost
(most recently entered) handler sees a message first. A handler may set ``msg.stop`` to
hide the message from the handlers outside it. After the walk, the default action fills
in ``msg.value`` unless a handler already did (``msg.done``), then the visited handlers
post-process the message from the outermost to the innermost (as in Pyro).

The protocol
============

Message types
-------------
``"sample"``     a random variable (``ember.sample``, ``factor``, ``deterministic``); the only type
                 estimators, samplers and predictors score.
``"param"``      a learnable parameter read (``ember.param``, ``ember.module``).
``"subsample"``  the indices a plate draws (``fn`` a ``_Subsample``; ``fn.size`` the plate's full
                 size). ``trace`` records it and ``replay`` makes a model use the guide's indices;
                 nothing else sees it: it is never a latent, never scored.
any other        ``effectful(fn, type=...)`` functions (``ember.poutine.runtime``): recorded by
                 ``trace`` when named, otherwise passed through.

Fields (who sets, who reads)
----------------------------
``type``, ``name``      the primitive; ``name`` is unique per run for sample sites. ``lift`` turns a
                        param into a sample message; ``do`` renames the intervened one ``name__CF``.
``fn``, ``args``,       the distribution (or, for params, the store getter) and its call arguments.
``kwargs``              ``plate`` replaces ``fn`` by ``fn.expand(...)`` to broadcast batch dims.
``value``               set by the primitive (``obs``), ``condition``, ``substitute``, ``replay``,
                        ``do``, or the default action (``fn(*args, **kwargs)``). Read by everyone.
``is_observed``         set by the primitive, ``condition``, ``uncondition``, ``do``. Read through
                        :func:`is_observed` / :func:`is_latent`.
``infer``               options for inference (see below). Set by the primitive, ``infer_config``,
                        ``uncondition``, ``replay`` (a *copy* of the guide site's), ``lift``.
``scale``               a float or tensor: ``plate`` subsampling and ``poutine.scale`` multiply it.
``mask``                None, a bool or a bool tensor: ``poutine.mask`` and ``Distribution.mask``
                        (through the distribution) combine with ``&``.
``cond_indep_stack``    the plates (``CondIndepStackFrame``) around the site, outermost first; set
                        by ``plate`` (sample and param messages).
``done``                the value is final: the default action does not draw.
``stop``                handlers outside the current one do not see the message (``block``).
``continuation``        called with the message after post-processing (``escape``).
``log_prob``,           filled once by ``Trace.compute_log_prob`` (via :func:`site_log_prob`):
``unscaled_log_prob``,  the scaled and masked log-density, the raw one, its sum, and the
``log_prob_sum``,       Pyro-compatible score parts.
``score_parts``
``_intervener_id``      private to ``do`` (which intervention already acted on this site).

The aliasing rule
-----------------
Trace nodes *are* the live messages (no copies). A message's ``infer`` dict may be shared (the
user's own dict literal; a guide site's dict). **A handler never mutates an ``infer`` dict: to
change it, it assigns a new one** (``msg.infer = {**msg.infer, "key": value}``); ``replay`` gives
the model's message a copy of the guide site's dict. So what one handler does to a site never
reaches another trace.

``infer`` keys
--------------
``is_auxiliary``   (guide) a latent of the guide alone: not matched against the model; its
                   −log q is part of every ELBO's loss and of every score-function cost.
``baseline``       (guide, ``TraceGraph_ELBO``) baseline options of a non-reparameterized site.
``was_observed``,  set by ``uncondition`` / ``Predictive``: the site was observed, with this value.
``obs``
``_deterministic`` set by ``deterministic``: a recorded value, never scored or drawn.
``enumerate``      (reserved for enumeration) ``"parallel"`` or ``"sequential"``.

Site roles
----------
:func:`is_sample`, :func:`is_observed`, :func:`is_latent`, :func:`is_auxiliary`,
:func:`is_guide_latent`, :func:`is_deterministic`, :func:`is_factor`, :func:`is_subsample`: the
one vocabulary every estimator, sampler and predictor uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, NamedTuple

import torch

__all__ = [
    "Message",
    "apply_stack",
    "get_stack",
    "is_validation_enabled",
    "NonlocalExit",
    "ScoreParts",
    "scale_and_mask",
    "is_sample",
    "is_observed",
    "is_latent",
    "is_auxiliary",
    "is_guide_latent",
    "is_deterministic",
    "is_factor",
    "is_subsample",
]

# The handler stack: index 0 is the outermost handler, the last element the innermost.
_STACK: list = []

# Ember's own checks (shapes, model/guide structure, finiteness). torch's distribution
# argument validation is switched separately (ember.distributions.enable_validation).
_VALIDATION: list = [__debug__]


def is_validation_enabled() -> bool:
    """Whether Ember's own checks are on (``ember.enable_validation``; on by default): shapes at
    sample sites, the non-finite guards of the optimizers and ELBOs, unused ``condition`` names."""
    return _VALIDATION[0]


def get_stack() -> list:
    """The live handler stack (outermost first). Do not mutate it by hand."""
    return _STACK


_FIELDS = (
    "type",
    "name",
    "fn",
    "args",
    "kwargs",
    "value",
    "is_observed",
    "infer",
    "scale",
    "mask",
    "cond_indep_stack",
    "done",
    "stop",
    "continuation",
    # filled by Trace.compute_log_prob
    "log_prob",
    "unscaled_log_prob",
    "log_prob_sum",
    "score_parts",
    # bookkeeping of individual handlers
    "_intervener_id",
    "_extra",
)


class Message:
    """A sample/param/... site in flight through the handler stack.

    Attribute access (``msg.value``) is the fast way; item access (``msg["value"]``,
    ``msg.get("infer")``, ``"value" in msg``) is supported for code written against
    Pyro's dict-based messages and trace nodes. Unknown keys set by item access are
    kept in a side dictionary.

    Shapes of the tensor fields at a sample site: ``value`` has shape
    ``fn.batch_shape + fn.event_shape`` (the plates' dims included, at their subsample sizes);
    ``log_prob``, once a trace has computed it, has shape ``fn.batch_shape``; ``scale`` and
    ``mask`` are numbers or tensors that broadcast to ``fn.batch_shape``. The module docstring of
    ``ember.runtime`` (the message protocol) says who sets and reads each field.
    """

    __slots__ = _FIELDS

    def __init__(
        self,
        type: str,
        name: str | None,
        fn: Any = None,
        args: tuple = (),
        kwargs: dict | None = None,
        value: Any = None,
        is_observed: bool = False,
        infer: dict | None = None,
        scale: Any = 1.0,
        mask: Any = None,
        cond_indep_stack: tuple = (),
    ) -> None:
        self.type = type
        self.name = name
        self.fn = fn
        self.args = args
        self.kwargs = {} if kwargs is None else kwargs
        self.value = value
        self.is_observed = is_observed
        self.infer = {} if infer is None else infer
        self.scale = scale
        self.mask = mask
        self.cond_indep_stack = cond_indep_stack
        self.done = False
        self.stop = False
        self.continuation = None
        self.log_prob = None
        self.unscaled_log_prob = None
        self.log_prob_sum = None
        self.score_parts = None
        self._intervener_id = None
        self._extra = None

    # ---- dict-style compatibility -------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        if key in _FIELD_SET:
            v = getattr(self, key)
            if v is None and key in _OPTIONAL_KEYS:
                raise KeyError(key)
            return v
        if self._extra is not None and key in self._extra:
            return self._extra[key]
        raise KeyError(key)

    def __setitem__(self, key: str, value: Any) -> None:
        if key in _FIELD_SET:
            setattr(self, key, value)
        else:
            if self._extra is None:
                self._extra = {}
            self._extra[key] = value

    def __contains__(self, key: str) -> bool:
        try:
            self[key]
        except KeyError:
            return False
        return True

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __delitem__(self, key: str) -> None:
        if key in _FIELD_SET:
            if key not in self:
                raise KeyError(key)
            setattr(self, key, _DEFAULTS[key]() if callable(_DEFAULTS[key]) else _DEFAULTS[key])
        elif self._extra is not None and key in self._extra:
            del self._extra[key]
        else:
            raise KeyError(key)

    def pop(self, key: str, *default: Any) -> Any:
        """``dict.pop``: remove ``key`` and return its value (a field goes back to its default:
        ``infer`` to ``{}``, ``scale`` to ``1.0``, ``value`` and the filled-in scores to None)."""
        if len(default) > 1:
            raise TypeError(f"pop expected at most 2 arguments, got {1 + len(default)}")
        if key not in self:
            if default:
                return default[0]
            raise KeyError(key)
        value = self[key]
        del self[key]
        return value

    def setdefault(self, key: str, default: Any = None) -> Any:
        """``dict.setdefault``: ``self[key]`` if present, else set it to ``default`` and return that."""
        if key in self:
            return self[key]
        self[key] = default
        return default

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def values(self) -> list:
        return [self[k] for k in self.keys()]

    def keys(self) -> list:
        ks = [k for k in _PUBLIC_FIELDS if k in self]
        if self._extra:
            ks.extend(self._extra)
        return ks

    def items(self) -> list:
        return [(k, self[k]) for k in self.keys()]

    def update(self, other: dict | None = None, **kw: Any) -> None:
        for k, v in dict(other or {}, **kw).items():
            self[k] = v

    def copy(self) -> Message:
        new = Message.__new__(Message)
        for k in _FIELDS:
            setattr(new, k, getattr(self, k))
        new.infer = dict(self.infer)
        if self._extra is not None:
            new._extra = dict(self._extra)
        return new

    def __repr__(self) -> str:
        return f"Message(type={self.type!r}, name={self.name!r}, fn={self.fn!r})"


_FIELD_SET = frozenset(f for f in _FIELDS if not f.startswith("_"))
# what ``del msg[field]`` restores (callables make a fresh container)
_DEFAULTS: dict = {
    "type": None, "name": None, "fn": None, "args": (), "kwargs": dict, "value": None, "is_observed": False,
    "infer": dict, "scale": 1.0, "mask": None, "cond_indep_stack": (), "done": False, "stop": False,
    "continuation": None, "log_prob": None, "unscaled_log_prob": None, "log_prob_sum": None, "score_parts": None,
}
MutableMapping.register(Message)  # isinstance(msg, MutableMapping), as Pyro's dict messages are
_PUBLIC_FIELDS = tuple(f for f in _FIELDS if not f.startswith("_"))
# keys that "exist" only once they have been filled in
_OPTIONAL_KEYS = frozenset({"log_prob", "unscaled_log_prob", "log_prob_sum", "score_parts"})


def scale_and_mask(tensor: torch.Tensor, scale: Any = 1.0, mask: Any = None) -> torch.Tensor:
    """Zero ``tensor`` where ``mask`` is False (never NaN * 0) and multiply by ``scale``."""
    if mask is not None and mask is not True:
        if mask is False:
            tensor = torch.zeros_like(tensor)
        else:
            tensor = torch.where(mask, tensor, tensor.new_zeros(()))
    if not (type(scale) is float and scale == 1.0):
        tensor = tensor * scale
    return tensor


class ScoreParts(NamedTuple):
    """A sample site's terms of a gradient estimator (Pyro's ``ScoreParts``), in ``site["score_parts"]``
    once ``Trace.compute_score_parts`` ran: ``log_prob`` (scaled and masked, the batch shape),
    ``score_function`` (the unscaled, unmasked log-density of a site without ``rsample``, else 0) and
    ``entropy_term`` (the scaled, masked log-density of a site with ``rsample``, else 0)."""

    log_prob: Any
    score_function: Any
    entropy_term: Any

    def scale_and_mask(self, scale: Any = 1.0, mask: Any = None) -> ScoreParts:
        """Scale and mask ``log_prob`` and ``entropy_term`` (a tensor or 0); ``score_function`` is
        never scaled or masked."""
        ent = self.entropy_term
        if isinstance(ent, torch.Tensor):
            ent = scale_and_mask(ent, scale, mask)
        return ScoreParts(scale_and_mask(self.log_prob, scale, mask), self.score_function, ent)


class NonlocalExit(Exception):
    """Raised by ``poutine.escape`` to leave a model early at a chosen site."""

    def __init__(self, site: Message, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.site = site

    def reset_stack(self) -> None:
        """Let the handlers that saw the escaping site clean up after themselves: from the
        innermost outwards, up to the first that hides the site (``block``), as in Pyro, so
        that the handlers outside a ``block`` (a ``trace`` around ``TracePosterior.run``) keep
        what they recorded."""
        for frame in reversed(_STACK):
            frame._reset()
            hide_fn = getattr(frame, "hide_fn", None)
            if hide_fn is not None and hide_fn(self.site):
                break


def default_process_message(msg: Message) -> None:
    """Compute ``msg.value`` when no handler has."""
    if msg.done or msg.value is not None:
        msg.done = True
        return
    msg.value = msg.fn(*msg.args, **msg.kwargs)
    msg.done = True


def apply_stack(msg: Message) -> Message:
    """Run ``msg`` through the handler stack; see the module docstring."""
    stack = _STACK
    n = len(stack)
    visited = 0
    for i in range(n - 1, -1, -1):
        visited += 1
        h = stack[i]
        f = h._pre.get(msg.type)  # read each time: lift turns a param message into a sample
        if f is not None:
            f(h, msg)
            if msg.stop:
                break
    default_process_message(msg)
    for i in range(n - visited, n):
        h = stack[i]
        f = h._post.get(msg.type)
        if f is not None:
            f(h, msg)
    cont: Callable | None = msg.continuation
    if cont is not None:
        msg.continuation = None
        cont(msg)
    return msg


# ---- site roles: the one vocabulary -------------------------------------------------------


def is_sample(site: Message) -> bool:
    """A random variable: a ``sample`` message (latent, observed, factor or deterministic)."""
    return site.type == "sample"


def is_subsample(site: Message) -> bool:
    """The indices a plate drew (a ``subsample`` message): never scored, never a latent."""
    return site.type == "subsample"


def is_observed(site: Message) -> bool:
    """A sample site with a fixed value that is scored: data, ``factor``, ``condition``."""
    return site.type == "sample" and site.is_observed


def is_auxiliary(site: Message) -> bool:
    """A guide latent marked ``infer={"is_auxiliary": True}``: not matched against the model."""
    return site.type == "sample" and not site.is_observed and bool(site.infer.get("is_auxiliary", False))


def is_latent(site: Message) -> bool:
    """A latent variable shared by model and guide: unobserved, not auxiliary."""
    return site.type == "sample" and not site.is_observed and not site.infer.get("is_auxiliary", False)


def is_guide_latent(site: Message) -> bool:
    """A variable the guide draws: its −log q belongs to the ELBO (latents and auxiliaries)."""
    return site.type == "sample" and not site.is_observed


def is_deterministic(site: Message) -> bool:
    """A value recorded by ``deterministic``: observed, never scored or redrawn."""
    return site.type == "sample" and bool(site.infer.get("_deterministic", False))


def is_factor(site: Message) -> bool:
    """A ``factor`` site: an observed ``Unit`` whose log-density is the given factor."""
    return site.type == "sample" and site.is_observed and hasattr(site.fn, "log_factor")
