"""``AdagradRMSProp``: the step-size sequence of ADVI (Kucukelbir et al. 2017, eqs. 10-11), as
Pyro's ``pyro.optim.adagrad_rmsprop.AdagradRMSProp``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["AdagradRMSProp"]


class AdagradRMSProp(torch.optim.Optimizer):
    """A mix of Adagrad and RMSProp: with ``s_1 = g_1^2`` and ``s_k = t g_k^2 + (1 - t) s_{k-1}``
    (elementwise), step ``k`` moves a parameter by ``-eta * k^(-1/2 + delta) * g_k / (1 + sqrt(s_k))``.

    :param params: parameters to optimize, or dicts defining parameter groups.
    :param eta: the step-size scale (default 1).
    :param delta: the step-size exponent's offset from -1/2 (default 1e-16).
    :param t: the weight of the newest squared gradient in the running average (default 0.1).
    """

    def __init__(self, params: Iterable[Any], eta: float = 1.0, delta: float = 1.0e-16, t: float = 0.1) -> None:
        for name, value in (("eta", eta), ("delta", delta)):
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"AdagradRMSProp: {name} must be a number >= 0; got {value!r}")
        if not isinstance(t, (int, float)) or not 0 < t <= 1:
            raise ValueError(f"AdagradRMSProp: t must lie in (0, 1]; got {t!r}")
        super().__init__(params, {"eta": eta, "delta": delta, "t": t})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step for every parameter with a gradient (each of its own shape); returns ``closure()``'s loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise NotImplementedError("AdagradRMSProp does not take sparse gradients")
                state = self.state[p]
                step = state.get("step", 0) + 1
                state["step"] = step
                if step == 1:
                    state["sum"] = g * g
                else:
                    state["sum"].mul_(1.0 - group["t"]).addcmul_(g, g, value=group["t"])
                lr = group["eta"] * step ** (-0.5 + group["delta"])
                p.addcdiv_(g, 1.0 + state["sum"].sqrt(), value=-lr)
        return loss
