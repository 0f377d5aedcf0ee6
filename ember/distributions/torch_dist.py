"""Ember's extensions of ``torch.distributions``: one mixin applied to every class."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributions as _td
from torch.distributions import constraints

__all__ = ["Distribution", "TorchDistributionMixin", "TorchDistribution", "MaskedDistribution", "ExpandedDistribution"]


def as_bool_mask(mask: Any, who: str) -> Any:
    """A boolean mask from a bool, a boolean tensor, or a numeric tensor of 0s and 1s
    (the AIR tutorial masks with the float ``z_pres``; Pyro converts it with ``.bool()``).
    Fractional values are refused: they are weights, for ``poutine.scale``."""
    if isinstance(mask, bool):
        return torch.tensor(mask)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{who} expects a bool or a tensor of booleans (or of 0s and 1s); got {type(mask).__name__}")
    if mask.dtype == torch.bool:
        return mask
    m = mask.detach()
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError(
            f"{who}: a numeric mask must hold only 0s and 1s; got values such as "
            f"{m[(m != 0) & (m != 1)].flatten()[:3].tolist()}. To weight log-densities use poutine.scale."
        )
    return m != 0


def _deferring_init(dist: Any, init: Any, args: tuple, kwargs: dict) -> None:
    """Run a distribution's ``__init__``; inside a model (a handler is active) an invalid
    argument does not raise here but is kept in ``dist._ember_arg_error``, so that the sample
    site it is built for reports it with the site's name (``ember.sample`` raises it; log_prob,
    sample and rsample refuse to run). Outside inference the error is raised at once."""
    try:
        init(*args, **kwargs)
    except ValueError as e:
        from ember.runtime import _STACK

        if not _STACK or "Expected parameter" not in str(e) or kwargs.get("validate_args"):
            raise
        kwargs = dict(kwargs, validate_args=False)
        init(*args, **kwargs)
        dist._ember_arg_error = e


def distribution_init(dist: Any, batch_shape: torch.Size, event_shape: torch.Size = torch.Size(), validate_args: bool | None = None) -> None:
    """``torch.distributions.Distribution.__init__`` with the deferred argument error (see
    :func:`_deferring_init`), for Ember classes that set their parameters themselves (on the hot
    path: one call, no wrapper, when the arguments are valid)."""
    try:
        _td.Distribution.__init__(dist, batch_shape, event_shape, validate_args)
    except ValueError:
        _deferring_init(dist, lambda *a, **k: _td.Distribution.__init__(dist, *a, **k), (batch_shape, event_shape), {"validate_args": validate_args})


class TorchDistributionMixin:
    """What Ember adds to a ``torch.distributions.Distribution``.

    * calling a distribution draws a sample (``rsample`` when reparameterizable), so
      it can be used directly as a sample site's function;
    * ``to_event(n)`` / ``independent(n)``: reinterpret the rightmost ``n`` batch dims
      as event dims (all of them when ``n`` is None);
    * ``mask(m)``: switch off the log-density where the boolean ``m`` is False;
    * ``expand_by(shape)``: prepend batch dims; ``shape(sample_shape)``: the shape of a
      sample, ``sample_shape + batch_shape + event_shape``.

    Shapes, for every distribution: ``batch_shape`` indexes independent, differently
    parameterized copies (the broadcast shape of the parameters, less any event dims) and
    ``event_shape`` is the shape of one draw (``()`` for a scalar distribution, ``(D,)`` for a
    distribution over vectors such as ``MultivariateNormal`` or ``Dirichlet``). A sample has
    shape ``sample_shape + batch_shape + event_shape``; ``log_prob`` of a value of that shape
    has shape ``sample_shape + batch_shape``: the event dims are summed over, the batch dims
    are not.
    """

    # The argument error of a distribution built while inference runs (a handler is active),
    # kept so that ``ember.sample`` can name the site it was built for; None when valid.
    _ember_arg_error: ValueError | None = None

    def _refuse_if_invalid(self) -> None:
        err = self._ember_arg_error
        if err is not None:
            raise ValueError(f"{type(self).__name__} was built with an invalid argument: {err}") from err

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """The log-density (or log-mass) of ``value``.

        ``value`` has shape ``sample_shape + batch_shape + event_shape`` (or any shape that
        broadcasts to ``batch_shape + event_shape`` on the right); the result has shape
        ``sample_shape + batch_shape``: one number per event, the event dims consumed."""
        self._refuse_if_invalid()
        return super().log_prob(value)  # type: ignore[misc]

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """Draw without gradients: a tensor of shape ``sample_shape + batch_shape + event_shape``."""
        self._refuse_if_invalid()
        return super().sample(sample_shape)  # type: ignore[misc]

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """Draw by reparameterization (gradients flow to the parameters), where ``has_rsample``:
        a tensor of shape ``sample_shape + batch_shape + event_shape``."""
        self._refuse_if_invalid()
        return super().rsample(sample_shape)  # type: ignore[misc]

    def __call__(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """A draw, by ``rsample`` where the distribution has one and ``sample`` otherwise: a
        tensor of shape ``sample_shape + batch_shape + event_shape``."""
        self._refuse_if_invalid()
        if self.has_rsample:
            return self.rsample(sample_shape)
        return self.sample(sample_shape)

    @property
    def event_dim(self) -> int:
        """The number of event dims, ``len(event_shape)``."""
        return len(self.event_shape)

    def shape(self, sample_shape: torch.Size = torch.Size()) -> torch.Size:
        """The shape of a draw: ``sample_shape + batch_shape + event_shape``."""
        return torch.Size(sample_shape) + self.batch_shape + self.event_shape

    def expand(self, batch_shape: Any, _instance: Any = None) -> Any:
        """The same distribution with batch shape ``batch_shape`` (``batch_shape`` must end in this
        distribution's batch shape, where a size-1 dim may grow; the event shape is unchanged).
        A class with an ``expand`` of its own (every torch class) uses it; one without (a
        distribution written by hand that sets ``batch_shape`` in ``__init__``, ``Empirical``) is
        wrapped in an :class:`ExpandedDistribution`, which broadcasts its draws and log-densities."""
        parent = super().expand  # type: ignore[misc]
        if getattr(parent, "__func__", None) is _td.Distribution.expand:
            return ExpandedDistribution(self, batch_shape)
        return parent(batch_shape, _instance)

    def expand_by(self, sample_shape: Any) -> TorchDistributionMixin:
        """The same distribution with ``sample_shape`` prepended to its batch shape: batch
        shape ``sample_shape + batch_shape``, event shape unchanged (no copy of the parameters)."""
        batch_shape = torch.Size(sample_shape) + self.batch_shape
        try:
            return self.expand(batch_shape)
        except NotImplementedError:
            return ExpandedDistribution(self, batch_shape)

    def to_event(self, reinterpreted_batch_ndims: int | None = None) -> TorchDistributionMixin:
        """Treat the rightmost ``reinterpreted_batch_ndims`` batch dims (all of them when None) as
        event dims: batch shape ``(B1, B2)`` and event shape ``(E,)`` become batch shape ``(B1,)``
        and event shape ``(B2, E)`` with ``to_event(1)``, and ``log_prob`` sums over the moved
        dims (an ``Independent`` distribution). Nested ``Independent`` wrappers are merged into one;
        a negative ``n`` moves the last ``-n`` reinterpreted event dims back to the batch
        (``d.to_event(1).to_event(-1)`` is ``d``), as in Pyro."""
        n = len(self.batch_shape) if reinterpreted_batch_ndims is None else reinterpreted_batch_ndims
        if n == 0:
            return self
        if n > len(self.batch_shape):
            raise ValueError(
                f"{type(self).__name__}.to_event({n}): the distribution has only "
                f"{len(self.batch_shape)} batch dims (batch_shape {tuple(self.batch_shape)}, event_shape "
                f"{tuple(self.event_shape)}). Did you mean .expand_by(...) first?"
            )
        # unwrap Independents, as Pyro does: one Independent around the innermost distribution
        base, total = self, n
        while isinstance(base, _td.Independent):
            total += base.reinterpreted_batch_ndims
            base = base.base_dist
        if total < 0:
            raise ValueError(
                f"{type(self).__name__}.to_event({n}): only {total - n} of its event dims (event_shape "
                f"{tuple(self.event_shape)}) were reinterpreted batch dims; a negative argument can move only "
                f"those back to the batch, not {type(base).__name__}'s own event_shape {tuple(base.event_shape)}"
            )
        if total == 0:
            return base
        from ember.distributions import Independent

        return Independent(base, total)

    def independent(self, reinterpreted_batch_ndims: int | None = None) -> TorchDistributionMixin:
        """Old name of :meth:`to_event` (same shapes)."""
        return self.to_event(reinterpreted_batch_ndims)

    def mask(self, mask: Any) -> TorchDistributionMixin:
        """Switch off the log-density where ``mask`` (bool, or a boolean tensor whose shape
        broadcasts with ``batch_shape``) is False; the batch shape becomes the broadcast of the
        two, the event shape is unchanged, and ``log_prob`` is 0 where the mask is False."""
        return MaskedDistribution(self, mask)


class TorchDistribution(TorchDistributionMixin, _td.Distribution):
    """Base class for Ember-only distributions, built from a ``batch_shape`` and an
    ``event_shape`` (``torch.distributions.Distribution``'s constructor) with the shape contract of
    :class:`TorchDistributionMixin`: samples of shape ``sample_shape + batch_shape + event_shape``,
    ``log_prob`` of shape ``sample_shape + batch_shape``."""


class _FromBase:
    """What a wrapper of ``base_dist`` (a mask, an expansion) takes from it unchanged:
    ``has_rsample``, ``has_enumerate_support`` and ``support``."""

    @property
    def has_rsample(self) -> bool:
        return self.base_dist.has_rsample  # type: ignore[attr-defined]

    @property
    def has_enumerate_support(self) -> bool:
        return self.base_dist.has_enumerate_support  # type: ignore[attr-defined]

    @constraints.dependent_property
    def support(self):
        return self.base_dist.support  # type: ignore[attr-defined]


class MaskedDistribution(_FromBase, TorchDistribution):
    """``base_dist`` with its log-density zeroed where ``mask`` is False. ``mask`` broadcasts
    with ``base_dist.batch_shape``; the batch shape is the broadcast of the two (``base_dist`` is
    expanded to it), the event shape is ``base_dist``'s. Samples are ``base_dist``'s draws."""

    arg_constraints: dict = {}

    def __init__(self, base_dist: _td.Distribution, mask: Any) -> None:
        mask = as_bool_mask(mask, ".mask()")
        try:
            batch_shape = torch.broadcast_shapes(mask.shape, base_dist.batch_shape)
        except RuntimeError:
            raise ValueError(
                f".mask(): mask shape {tuple(mask.shape)} does not broadcast with the batch shape "
                f"{tuple(base_dist.batch_shape)} of {type(base_dist).__name__}"
            ) from None
        if batch_shape != base_dist.batch_shape:
            base_dist = base_dist.expand(batch_shape)
        if mask.shape != batch_shape:
            mask = mask.expand(batch_shape)
        self.base_dist = base_dist
        self._mask = mask
        super().__init__(base_dist.batch_shape, base_dist.event_shape, validate_args=False)

    def expand(self, batch_shape: Any, _instance: Any = None) -> MaskedDistribution:
        batch_shape = torch.Size(batch_shape)
        return MaskedDistribution(self.base_dist.expand(batch_shape), self._mask.expand(batch_shape))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self.base_dist.sample(sample_shape)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self.base_dist.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``base_dist.log_prob(value)`` (shape ``sample_shape + batch_shape``), with 0 where the
        mask is False."""
        lp = self.base_dist.log_prob(value)
        return torch.where(self._mask, lp, lp.new_zeros(()))

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        return self.base_dist.enumerate_support(expand)

    @property
    def mean(self) -> torch.Tensor:
        return self.base_dist.mean

    @property
    def variance(self) -> torch.Tensor:
        return self.base_dist.variance


def _expansion(base_shape: torch.Size, shape: torch.Size, who: str) -> tuple[int, list[int]]:
    """How ``base_shape`` broadcasts to ``shape`` (right-aligned): the number of new leading dims,
    and the positions (in ``base_shape``) of the size-1 dims that grow. Raises ``ValueError``
    naming both shapes when ``shape`` is not an expansion of ``base_shape``."""
    lead = len(shape) - len(base_shape)
    if lead < 0 or any(b != 1 and b != s for b, s in zip(base_shape, shape[lead:])):
        raise ValueError(
            f"{who}: cannot expand batch shape {tuple(base_shape)} to {tuple(shape)}: the new shape must "
            f"end in the old one, where only size-1 dims may grow"
        )
    grown = [j for j, (b, s) in enumerate(zip(base_shape, shape[lead:])) if b == 1 and s != 1]
    return lead, grown


class ExpandedDistribution(_FromBase, TorchDistribution):
    """``base_dist`` with its batch shape expanded to ``batch_shape`` (Pyro's
    ``ExpandedDistribution``; what ``.expand`` returns for a distribution with no ``expand`` of its
    own). The copies along the new dims are independent: ``sample`` draws each of them, and
    ``log_prob`` is ``base_dist``'s log-density broadcast to the new batch shape.

    Shapes: ``batch_shape`` is the given ``batch_shape``, which must end in ``base_dist.batch_shape``
    (where size-1 dims may grow); ``event_shape`` is ``base_dist.event_shape``. ``sample(sample_shape)``
    has shape ``sample_shape + batch_shape + event_shape``; ``log_prob`` of a value of that shape has
    shape ``sample_shape + batch_shape``."""

    arg_constraints: dict = {}

    def __init__(self, base_dist: _td.Distribution, batch_shape: Any = torch.Size()) -> None:
        batch_shape = torch.Size(batch_shape)
        who = f"ExpandedDistribution of {type(base_dist).__name__}"
        self._lead, self._grown = _expansion(base_dist.batch_shape, batch_shape, who)
        self.base_dist = base_dist
        super().__init__(batch_shape, base_dist.event_shape, validate_args=False)

    def expand(self, batch_shape: Any, _instance: Any = None) -> ExpandedDistribution:
        batch_shape = torch.Size(batch_shape)
        _expansion(self.batch_shape, batch_shape, f"ExpandedDistribution of {type(self.base_dist).__name__}")
        return ExpandedDistribution(self.base_dist, batch_shape)

    def _draw(self, draw: Any, sample_shape: Any) -> torch.Tensor:
        # draw sample_shape + new leading dims + the grown dims' sizes from the base, then move each
        # grown size into the place of the base's size-1 dim (which is dropped by the reshape)
        sample_shape = torch.Size(sample_shape)
        lead_shape = self.batch_shape[: self._lead]
        grown_sizes = tuple(self.batch_shape[self._lead + j] for j in self._grown)
        x = draw(sample_shape + lead_shape + grown_sizes)
        if self._grown:
            p, m, k = len(sample_shape) + self._lead, len(grown_sizes), len(self.base_dist.batch_shape)
            where = {j: p + i for i, j in enumerate(self._grown)}
            batch = [where.get(j, p + m + j) for j in range(k)]
            dropped = [p + m + j for j in self._grown]
            order = list(range(p)) + batch + list(range(p + m + k, x.dim())) + dropped
            x = x.permute(order)
        return x.reshape(sample_shape + self.batch_shape + self.event_shape)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self._draw(self.base_dist.sample, sample_shape)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self._draw(self.base_dist.rsample, sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``base_dist.log_prob(value)`` broadcast to ``value``'s sample and batch dims and
        ``batch_shape``: shape ``sample_shape + batch_shape``."""
        lp = self.base_dist.log_prob(value)
        shape = torch.broadcast_shapes(self.batch_shape, value.shape[: value.dim() - len(self.event_shape)], lp.shape)
        return lp.expand(shape)

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        """The base's support, of shape ``(K,) + batch_shape + event_shape`` (size-1 batch dims
        when ``expand`` is False)."""
        values = self.base_dist.enumerate_support(expand=False)
        n_base = len(self.base_dist.batch_shape)
        values = values.reshape(values.shape[:1] + (1,) * len(self.batch_shape) + values.shape[1 + n_base :])
        return values.expand(values.shape[:1] + self.batch_shape + self.event_shape) if expand else values

    @property
    def mean(self) -> torch.Tensor:
        return self.base_dist.mean.expand(self.batch_shape + self.event_shape)

    @property
    def variance(self) -> torch.Tensor:
        return self.base_dist.variance.expand(self.batch_shape + self.event_shape)


class _DistributionMeta(type(_td.Distribution)):  # type: ignore[misc]
    def __instancecheck__(cls, instance: Any) -> bool:
        # as in Pyro, every Ember distribution is a Distribution (the torch classes carry the mixin)
        if cls is Distribution and isinstance(instance, TorchDistributionMixin):
            return True
        return super().__instancecheck__(instance)


class Distribution(TorchDistribution, metaclass=_DistributionMeta):
    """The base class for distributions written by hand (Pyro's ``pyro.distributions.Distribution``):
    subclass it and define ``sample`` and ``log_prob`` (``rsample``, ``support``,
    ``enumerate_support`` where they exist); ``Distribution()`` needs no arguments (empty batch and
    event shapes). Instances are callable (they draw a sample). Every Ember distribution is an
    instance of it.

    Keep the shape contract of :class:`TorchDistributionMixin`: pass ``batch_shape`` and
    ``event_shape`` to ``__init__``; ``sample(sample_shape)`` returns a tensor of shape
    ``sample_shape + batch_shape + event_shape`` and ``log_prob(value)`` one of shape
    ``sample_shape + batch_shape``."""

    has_rsample = False
    has_enumerate_support = False
    arg_constraints: dict = {}

    def __init__(self, batch_shape: torch.Size = torch.Size(), event_shape: torch.Size = torch.Size(), validate_args: bool | None = None) -> None:
        super().__init__(batch_shape, event_shape, validate_args=validate_args)
