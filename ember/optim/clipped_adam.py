"""``ClippedAdam``: Adam with elementwise gradient clamping and learning-rate decay.

Same hyperparameters and update rule as Pyro's ``pyro.optim.clipped_adam.ClippedAdam``,
so a model trained with it follows the same trajectory as under Pyro.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = ["ClippedAdam"]


class ClippedAdam(torch.optim.Optimizer):
    """Adam whose gradients are clamped elementwise to ``[-clip_norm, clip_norm]``
    and whose learning rate is multiplied by ``lrd`` at every step.

    :param params: parameters to optimize, or dicts defining parameter groups.
    :param lr: learning rate (default 1e-3).
    :param betas: coefficients of the running averages of the gradient and of its
        square (default (0.9, 0.999)).
    :param eps: added to the denominator for numerical stability (default 1e-8).
    :param weight_decay: L2 penalty added to the gradient (default 0).
    :param clip_norm: bound of the elementwise clamp of the gradients (default 10).
    :param lrd: learning-rate decay factor per step (default 1, no decay).

    Each call of :meth:`step` first multiplies every group's ``lr`` by its ``lrd``
    (as Pyro does, so step ``t`` uses ``lr * lrd**t``), then, for every parameter
    with a gradient, clamps the gradient *in place* and applies the Adam update
    ``p -= lr * sqrt(1 - beta2**t) / (1 - beta1**t) * m / (sqrt(v) + eps)``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        clip_norm: float = 10.0,
        lrd: float = 1.0,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"ClippedAdam: invalid learning rate {lr} (must be >= 0)")
        if not eps >= 0.0:
            raise ValueError(f"ClippedAdam: invalid eps {eps} (must be >= 0)")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"ClippedAdam: invalid betas {betas} (two values in [0, 1))")
        if not weight_decay >= 0.0:
            raise ValueError(f"ClippedAdam: invalid weight_decay {weight_decay} (must be >= 0)")
        if not clip_norm > 0.0:
            raise ValueError(f"ClippedAdam: invalid clip_norm {clip_norm} (must be > 0)")
        if not lrd > 0.0:
            raise ValueError(f"ClippedAdam: invalid lrd {lrd} (must be > 0)")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay, "clip_norm": clip_norm, "lrd": lrd}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimization step; ``closure`` (optional) re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            group["lr"] *= group["lrd"]
            lr = group["lr"]
            beta1, beta2 = group["betas"]
            clip, eps, wd = group["clip_norm"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if grad.is_sparse:
                    raise RuntimeError("ClippedAdam does not support sparse gradients")
                grad.clamp_(-clip, clip)
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                t = state["step"]
                if wd != 0:
                    grad = grad.add(p, alpha=wd)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                step_size = lr * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
                p.addcdiv_(exp_avg, exp_avg_sq.sqrt().add_(eps), value=-step_size)
        return loss
