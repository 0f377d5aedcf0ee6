"""Stochastic variational inference."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch

from ember.infer.elbo import ELBO, NonFiniteLossError, describe_nonfinite, get_importance_trace
from ember.infer.util import trace_params
from ember.optim.optim import NonFiniteParameterError
from ember.poutine.trace_messenger import TraceMessenger
from ember.runtime import is_validation_enabled
from ember.util import check_kwargs

__all__ = ["SVI"]


class SVI:
    """Fit the parameters of ``model`` and ``guide`` by stochastic gradient steps on a loss.

    :param model: the model, a stochastic function.
    :param guide: the guide (variational distribution), same signature as the model.
    :param optim: an ``ember.optim`` optimizer (wrapping ``torch.optim``).
    :param loss: an ELBO object (``Trace_ELBO()``, ...) or any callable
        ``(model, guide, *args, **kwargs) -> scalar tensor`` to minimise.
    :param on_nonfinite: ``"raise"`` (default) raises on a NaN/inf loss naming the first
        site at fault, and the optimizer's ``NonFiniteParameterError`` when a step would
        leave a parameter NaN/inf; ``"skip"`` warns and skips the step (``step`` returns
        NaN). Either way no parameter moves.

    ``step(*args, **kwargs)`` takes one gradient step on every parameter the model and
    guide touched and returns the loss as a float; ``evaluate_loss`` only estimates it.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        optim: Any,
        loss: Any,
        loss_and_grads: Callable | None = None,
        on_nonfinite: str = "raise",
        **kwargs: Any,
    ) -> None:
        check_kwargs(
            "SVI",
            kwargs,
            valid=("loss_and_grads", "on_nonfinite"),
            ignored={k: "Pyro's deprecated SVI-as-TracePosterior options; call svi.step in a loop" for k in ("num_samples", "num_steps")},
        )
        if not callable(optim):
            raise TypeError(f"SVI: optim must be an ember.optim optimizer (e.g. ember.optim.Adam({{'lr': 1e-3}})); got {optim!r}")
        if isinstance(optim, torch.optim.Optimizer):
            raise TypeError("SVI: pass an ember.optim wrapper (e.g. ember.optim.Adam({'lr': 1e-3})), not a torch.optim.Optimizer instance")
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"SVI: on_nonfinite must be 'raise' or 'skip'; got {on_nonfinite!r}")
        self.model = model
        self.guide = guide
        self.optim = optim
        self.on_nonfinite = on_nonfinite
        if isinstance(loss, ELBO):
            self.loss = loss.loss
            self.loss_and_grads = loss.loss_and_grads
        elif callable(loss):
            if loss_and_grads is None:

                def _loss_and_grads(model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
                    value = loss(model, guide, *args, **kwargs)
                    if not isinstance(value, torch.Tensor):
                        raise TypeError(f"SVI: the loss function must return a scalar tensor; got {type(value).__name__}")
                    f = value.item()
                    if not math.isfinite(f):
                        raise NonFiniteLossError(
                            f"The loss is {f}: {self._diagnose(args, kwargs)}. No gradient step was taken; the parameters are unchanged."
                        )
                    if value.requires_grad:
                        value.backward()
                    return f

                loss_and_grads = _loss_and_grads

            def _loss(model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
                with torch.no_grad():
                    value = loss(model, guide, *args, **kwargs)
                return value.item() if isinstance(value, torch.Tensor) else float(value)

            self.loss = _loss
            self.loss_and_grads = loss_and_grads
        else:
            raise TypeError(f"SVI: loss must be an ELBO object or a callable (model, guide, *args) -> tensor; got {loss!r}")

    def _diagnose(self, args: tuple, kwargs: dict) -> str:
        """Re-run guide and model under trace to find a non-finite site (best effort)."""
        try:
            with torch.no_grad():
                model_trace, guide_trace = get_importance_trace(self.model, self.guide, args, kwargs, validate=False)
            return describe_nonfinite([("model", model_trace), ("guide", guide_trace)])
        except Exception as e:  # noqa: BLE001 - diagnosis must not hide the original problem
            return f"(could not trace model and guide to find the site: {e})"

    def step(self, *args: Any, **kwargs: Any) -> float:
        """One gradient step on the parameters whose ``param`` sites appear in the traces of
        model and guide (Pyro's rule: a parameter hidden with ``poutine.block`` stays put);
        returns the loss estimate (a float, -ELBO for ELBO losses)."""
        with TraceMessenger(param_only=True) as capture:
            try:
                loss = self.loss_and_grads(self.model, self.guide, *args, **kwargs)
            except NonFiniteLossError as e:
                for p in trace_params(capture.trace).values():
                    p.grad = None
                if self.on_nonfinite == "skip":
                    warnings.warn(f"SVI.step skipped: {e}", RuntimeWarning, stacklevel=2)
                    return math.nan
                raise
            except BaseException:
                for p in trace_params(capture.trace).values():
                    p.grad = None
                raise
        touched = trace_params(capture.trace)
        params = list(touched.values())
        if is_validation_enabled():
            self._check_grads(touched)
        try:
            self.optim(params)
        except NonFiniteParameterError as e:  # the optimizer restored the parameters
            if self.on_nonfinite != "skip":
                raise
            warnings.warn(f"SVI.step skipped: {e}", RuntimeWarning, stacklevel=2)
            loss = math.nan
        finally:
            for p in params:
                p.grad = None
        return loss

    def _check_grads(self, touched: dict) -> None:
        grads = [p.grad for p in touched.values() if p.grad is not None]
        if not grads:
            return
        # one fused check (a single device sync); per-parameter only when it fails
        if bool(torch.isfinite(torch.stack([g.sum() for g in grads])).all()):
            return
        bad = [n for n, p in touched.items() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
        if not bad:
            return  # the sums overflowed, the gradients themselves are finite
        for p in touched.values():
            p.grad = None
        msg = f"Non-finite gradients for parameters {bad[:10]} (the loss itself was finite). No step was taken; the parameters are unchanged."
        if self.on_nonfinite == "skip":
            warnings.warn("SVI.step skipped: " + msg, RuntimeWarning, stacklevel=3)
            return
        raise NonFiniteLossError(msg)

    def evaluate_loss(self, *args: Any, **kwargs: Any) -> float:
        """The loss estimate without taking a step (no gradients are computed)."""
        with torch.no_grad():
            return self.loss(self.model, self.guide, *args, **kwargs)
