"""``PyroLRScheduler``: a :class:`PyroOptim` whose torch optimizers are driven by a
``torch.optim.lr_scheduler`` scheduler (one scheduler per torch optimizer)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import lr_scheduler as _sched

from ember.optim.optim import PyroOptim, _callable_name, _reraise

__all__ = ["EmberLRScheduler", "PyroLRScheduler"]

_LRScheduler = getattr(_sched, "LRScheduler", None) or _sched._LRScheduler


class PyroLRScheduler(PyroOptim):
    """Wrap a torch LR scheduler class and an optimizer for Ember's parameters.

    :param scheduler_constructor: a ``torch.optim.lr_scheduler`` class.
    :param optim_args: ``{"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.01}, **scheduler_kwargs}``:
        the torch optimizer class, its arguments (a dict, or a callable
        ``(module_name, param_name) -> dict`` as for :class:`PyroOptim`) and the
        scheduler's keyword arguments (e.g. ``"gamma": 0.1``).
    :param clip_args: gradient clipping, as for :class:`PyroOptim`.

    Use it as the optimizer of SVI (``svi.step`` calls ``scheduler(params)``) and call
    :meth:`step` to advance the schedules, e.g. once per epoch (``ReduceLROnPlateau``
    takes the metric: ``scheduler.step(loss)``).

    Example::

        scheduler = ember.optim.ExponentialLR({"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.01}, "gamma": 0.1})
        svi = SVI(model, guide, scheduler, loss=Trace_ELBO())
        for epoch in range(10):
            for x in data:
                svi.step(x)
            scheduler.step()
    """

    def __init__(self, scheduler_constructor: Callable[..., Any], optim_args: dict[str, Any], clip_args: Any = None) -> None:
        sched_name = _callable_name(scheduler_constructor)
        if not callable(scheduler_constructor):
            raise TypeError(
                f"PyroLRScheduler: scheduler_constructor must be a torch.optim.lr_scheduler class, got {scheduler_constructor!r}"
            )
        if not isinstance(optim_args, dict) or "optimizer" not in optim_args:
            raise ValueError(
                f"{sched_name}: optim_args must be a dict like {{'optimizer': torch.optim.SGD, 'optim_args': {{'lr': 0.01}}, "
                f"<scheduler arguments>}}, got {optim_args!r}"
            )
        kwargs = dict(optim_args)  # Pyro pops from the caller's dict; leave it intact
        optimizer = kwargs.pop("optimizer")
        inner_args = kwargs.pop("optim_args", {})
        self.pt_scheduler_constructor = scheduler_constructor
        self._scheduler_ctor_name = sched_name
        self.kwargs = kwargs
        super().__init__(optimizer, inner_args, clip_args)

    def _make_scheduler(self, optimizer: torch.optim.Optimizer, names: list[str]) -> Any:
        try:
            return self.pt_scheduler_constructor(optimizer, **self.kwargs)
        except (TypeError, ValueError) as e:
            _reraise(
                e,
                f"cannot create the scheduler {self._scheduler_ctor_name} with arguments {self.kwargs!r} "
                f"(optimizer {self._optim_name}, param '{names[0]}'): {e}",
            )

    def _scheduler_name(self) -> str | None:
        return self._scheduler_ctor_name

    def step(self, *args: Any, **kwargs: Any) -> None:
        """Advance every scheduler (``ReduceLROnPlateau`` needs the metric: ``step(loss)``)."""
        for record in self._records.values():
            record.scheduler.step(*args, **kwargs)

    @property
    def schedulers(self) -> list[Any]:
        """The torch schedulers created so far (one per torch optimizer)."""
        return [r.scheduler for r in self._records.values()]

    def get_last_lr(self) -> list[float]:
        """The learning rates last set by the schedulers, concatenated over the torch optimizers."""
        return [lr for r in self._records.values() for lr in r.scheduler.get_last_lr()]


EmberLRScheduler = PyroLRScheduler


def _scheduler_wrapper(scheduler_class: type, name: str | None = None) -> type[PyroLRScheduler]:
    """A :class:`PyroLRScheduler` subclass ``Name(optim_args, clip_args=None)`` for ``scheduler_class``."""
    name = name or scheduler_class.__name__

    def __init__(self: PyroLRScheduler, optim_args: dict[str, Any], clip_args: Any = None) -> None:
        PyroLRScheduler.__init__(self, scheduler_class, optim_args, clip_args)

    doc = (
        f"Ember wrapper of :class:`torch.optim.lr_scheduler.{scheduler_class.__name__}`: ``{name}(optim_args, clip_args=None)`` with "
        f"``optim_args = {{'optimizer': torch.optim.SGD, 'optim_args': {{'lr': 0.01}}, **scheduler_kwargs}}``; see :class:`PyroLRScheduler`."
    )
    return type(name, (PyroLRScheduler,), {"__init__": __init__, "__doc__": doc, "__module__": "ember.optim", "__qualname__": name})


LambdaLR = _scheduler_wrapper(_sched.LambdaLR)
MultiplicativeLR = _scheduler_wrapper(_sched.MultiplicativeLR)
StepLR = _scheduler_wrapper(_sched.StepLR)
MultiStepLR = _scheduler_wrapper(_sched.MultiStepLR)
ConstantLR = _scheduler_wrapper(_sched.ConstantLR)
LinearLR = _scheduler_wrapper(_sched.LinearLR)
ExponentialLR = _scheduler_wrapper(_sched.ExponentialLR)
PolynomialLR = _scheduler_wrapper(_sched.PolynomialLR)
CosineAnnealingLR = _scheduler_wrapper(_sched.CosineAnnealingLR)
ReduceLROnPlateau = _scheduler_wrapper(_sched.ReduceLROnPlateau)
CyclicLR = _scheduler_wrapper(_sched.CyclicLR)
OneCycleLR = _scheduler_wrapper(_sched.OneCycleLR)
CosineAnnealingWarmRestarts = _scheduler_wrapper(_sched.CosineAnnealingWarmRestarts)

SCHEDULER_WRAPPERS: dict[str, type[PyroLRScheduler]] = {
    cls.__name__: cls
    for cls in (
        LambdaLR,
        MultiplicativeLR,
        StepLR,
        MultiStepLR,
        ConstantLR,
        LinearLR,
        ExponentialLR,
        PolynomialLR,
        CosineAnnealingLR,
        ReduceLROnPlateau,
        CyclicLR,
        OneCycleLR,
        CosineAnnealingWarmRestarts,
    )
}
# every other scheduler class of torch, as Pyro wraps them all (LRScheduler, SequentialLR and
# ChainedScheduler included: the names exist, though the last two are built from schedulers that
# need the optimizer first)
for _name, _cls in vars(_sched).items():
    if (
        isinstance(_cls, type)
        and issubclass(_cls, _LRScheduler)
        and not _name.startswith("_")
        and _name not in SCHEDULER_WRAPPERS
    ):
        SCHEDULER_WRAPPERS[_name] = _scheduler_wrapper(_cls, _name)
del _name, _cls
# Pyro's name for the base class's wrapper (torch's old name of LRScheduler)
SCHEDULER_WRAPPERS.setdefault("_LRScheduler", _scheduler_wrapper(_LRScheduler, "_LRScheduler"))
