"""An Ember optimizer's update as a pure function of tensors, for a recorded multi-step graph.

``SVI.run`` records several SVI steps as one graph (:mod:`ember.infer.compiled_elbo`); the
optimizer update must then be tensor operations too. :func:`functional_update` reads the torch
optimizers behind a :class:`~ember.optim.PyroOptim` and returns a :class:`FunctionalUpdate` that
repeats, operation for operation, what ``torch.optim.SGD``, ``torch.optim.Adam``/``AdamW`` and
Ember's ``ClippedAdam`` do in one ``step()`` (with the wrapper's per-parameter ``clip_args``),
taking the optimizer state as inputs and returning the new state instead of updating it in
place. Hyperparameters that stay fixed are constants of the graph; what changes from step to
step (Adam's bias corrections, ClippedAdam's decaying learning rate) is computed in Python, as
the torch optimizers compute it, and goes in as a schedule tensor. :meth:`FunctionalUpdate.commit`
writes the results back into the torch optimizers' state (and the parameters), so saving,
loading and later ``svi.step`` calls see the same state as after a step loop.

Anything else (other optimizers, an LR scheduler wrapper, ``amsgrad``, ``fused``/``capturable``
flavours, a tensor learning rate, parameters of several dtypes) is refused with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import torch

from ember.optim.clipped_adam import ClippedAdam
from ember.optim.optim import PyroOptim

__all__ = ["FunctionalUpdate", "functional_update"]

_SGD_KEYS = {"lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "foreach", "differentiable", "fused"}
_ADAM_KEYS = {"lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused",
              "decoupled_weight_decay"}
_CLIPPED_KEYS = {"lr", "betas", "eps", "weight_decay", "clip_norm", "lrd"}


class _Rule:
    """One parameter's update: its kind, group, state, clipping, and how many state tensors and
    schedule values per step it takes."""

    def __init__(self, kind: str, name: str, p: torch.Tensor, optimizer: torch.optim.Optimizer, group: dict,
                 clip_norm: float | None, clip_value: float | None) -> None:
        self.kind, self.name, self.p, self.optimizer, self.group = kind, name, p, optimizer, group
        self.clip_norm, self.clip_value = clip_norm, clip_value
        self.state_keys = (("momentum_buffer",) if group["momentum"] != 0 else ()) if kind == "sgd" else ("exp_avg", "exp_avg_sq")
        self.n_sched = 0 if kind == "sgd" else 2 if kind == "adam" else 1

    @property
    def state(self) -> dict:
        """The torch optimizer's state of the parameter, read afresh (loading a state replaces it)."""
        return self.optimizer.state[self.p]

    def constants(self) -> Hashable:
        """What the recorded graph holds as constants (a change means recording again)."""
        # Adam's and ClippedAdam's lr reaches the graph through the per-step schedule; SGD's, and
        # AdamW's in its decoupled weight decay, is a constant of the graph
        lr_in_graph = self.kind == "sgd" or (self.group.get("decoupled_weight_decay", False) and self.group["weight_decay"] != 0)
        skip = {"params"} if lr_in_graph else {"params", "lr"}
        return (self.kind, id(self.optimizer), self.clip_norm, self.clip_value,
                tuple(sorted((k, repr(v)) for k, v in self.group.items() if k not in skip)))

    def step_count(self) -> int:
        step = self.state.get("step", 0)
        return int(step.item()) if isinstance(step, torch.Tensor) else int(step)

    def schedule(self, k: int) -> list[float]:
        """The ``k`` steps' values computed in Python exactly as the torch optimizer computes them."""
        if self.kind == "sgd":
            return []
        beta1, beta2 = self.group["betas"]
        t0, lr = self.step_count(), self.group["lr"]
        out: list[float] = []
        for j in range(1, k + 1):
            t = t0 + j
            if self.kind == "adam":  # torch.optim.adam._single_tensor_adam
                out += [-(lr / (1 - beta1 ** float(t))), (1 - beta2 ** float(t)) ** 0.5]
            else:  # ClippedAdam.step: the group's lr decays first
                lr *= self.group["lrd"]
                out.append(-(lr * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)))
        return out

    def update(self, p: torch.Tensor, g: torch.Tensor, state: list[torch.Tensor], sched: list[torch.Tensor]
               ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One step, as tensor operations: ``(new parameter, new state)``."""
        grp = self.group
        if self.clip_norm is not None:  # torch.nn.utils.clip_grad_norm_ on one tensor
            total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, 2.0)]), 2.0)
            g = g * torch.clamp(self.clip_norm / (total + 1e-6), max=1.0)
        if self.clip_value is not None:
            g = g.clamp(-self.clip_value, self.clip_value)
        if self.kind == "sgd":  # torch.optim.sgd._single_tensor_sgd
            if grp["maximize"]:
                g = -g
            if grp["weight_decay"] != 0:
                g = g.add(p, alpha=grp["weight_decay"])
            if grp["momentum"] != 0:
                buf = state[0].mul(grp["momentum"]).add(g, alpha=1 - grp["dampening"])
                g = g.add(buf, alpha=grp["momentum"]) if grp["nesterov"] else buf
                state = [buf]
            return p.add(g, alpha=-grp["lr"]), state
        beta1, beta2 = grp["betas"]
        m, v = state
        if self.kind == "adam":
            if grp["maximize"]:
                g = -g
            if grp["weight_decay"] != 0:
                if grp.get("decoupled_weight_decay", False):
                    p = p.mul(1 - grp["lr"] * grp["weight_decay"])
                else:
                    g = g.add(p, alpha=grp["weight_decay"])
            m = m.lerp(g, 1 - beta1)
            v = v.mul(beta2).addcmul(g, g, value=1 - beta2)
            neg_step_size, bc2_sqrt = sched
            denom = (v.sqrt() / bc2_sqrt).add(grp["eps"])
            return p + neg_step_size * m / denom, [m, v]
        g = g.clamp(-grp["clip_norm"], grp["clip_norm"])  # ClippedAdam.step
        if grp["weight_decay"] != 0:
            g = g.add(p, alpha=grp["weight_decay"])
        m = m.mul(beta1).add(g, alpha=1.0 - beta1)
        v = v.mul(beta2).addcmul(g, g, value=1.0 - beta2)
        return p + sched[0] * m / v.sqrt().add(grp["eps"]), [m, v]


class FunctionalUpdate:
    """The update of the parameters ``params`` (unconstrained leaves of the parameter store, in
    a fixed order) by a :class:`PyroOptim`, as tensor operations; see the module docstring."""

    def __init__(self, rules: list[_Rule], dtype: torch.dtype) -> None:
        self.rules = rules
        self.dtype = dtype

    @property
    def key(self) -> Hashable:
        """Changes when anything the recorded graph holds as a constant changes."""
        return tuple(r.constants() for r in self.rules)

    def ready(self) -> bool:
        """Whether every parameter's optimizer state has what :meth:`update` takes (a state loaded
        since may lack it)."""
        for r in self.rules:
            state = r.state
            if r.kind != "sgd" and state.get("step") is None:
                return False
            if not all(isinstance(state.get(k), torch.Tensor) and state[k].shape == r.p.shape for k in r.state_keys):
                return False
        return True

    def state(self) -> list[torch.Tensor]:
        """The optimizer state tensors, flat, in the order :meth:`update` takes them (each of its
        parameter's shape, e.g. Adam's two moments; a shape ``()`` tensor for a step count)."""
        return [r.state[k] for r in self.rules for k in r.state_keys]

    def schedule(self, k: int) -> torch.Tensor:
        """The per-step values of ``k`` steps: a tensor of shape ``(k * sum(n_sched),)``, step by
        step (shape ``(1,)`` when there are none, so that the graph always has the input)."""
        values: list[float] = []
        per = [r.schedule(k) for r in self.rules]
        for j in range(k):
            for r, s in zip(self.rules, per):
                values += s[j * r.n_sched : (j + 1) * r.n_sched]
        return torch.tensor(values or [0.0], dtype=self.dtype)

    def update(self, j: int, params: list[torch.Tensor], grads: list[torch.Tensor], state: list[torch.Tensor],
               sched: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Step ``j`` of a chunk: ``params`` and ``grads`` (one per rule, same shapes), ``state``
        (:meth:`state`'s layout), ``sched`` (the schedule's numbers as 0-dim tensors) ->
        ``(new params, new state)``."""
        per_step = sum(r.n_sched for r in self.rules)
        at, si = j * per_step, 0
        new_p, new_s = [], []
        for r, p, g in zip(self.rules, params, grads):
            n = len(r.state_keys)
            q, s = r.update(p, g, state[si : si + n], sched[at : at + r.n_sched])
            at += r.n_sched
            si += n
            new_p.append(q)
            new_s += s
        return new_p, new_s

    @torch.no_grad()
    def commit(self, params: list[torch.Tensor], state: list[torch.Tensor], k: int) -> None:
        """Write ``k`` steps' results into the parameters and the torch optimizers' state, as ``k``
        calls of the optimizer would have left them: ``params`` and ``state`` in the order and of
        the shapes of the parameters and of :meth:`state`."""
        si = 0
        for r, q in zip(self.rules, params):
            r.p.copy_(q)
            for key in r.state_keys:
                r.state[key].copy_(state[si])
                si += 1
            if r.kind == "adam":
                r.state["step"] += k
            elif r.kind == "clipped":
                r.state["step"] = r.state["step"] + k
        decayed: set = set()
        for r in self.rules:  # ClippedAdam decays every group's lr once per step() call
            if r.kind == "clipped" and id(r.optimizer) not in decayed:
                decayed.add(id(r.optimizer))
                for group in r.optimizer.param_groups:
                    for _ in range(k):
                        group["lr"] *= group["lrd"]


def _kind(optimizer: torch.optim.Optimizer, group: dict) -> str | None:
    t = type(optimizer)
    if t is torch.optim.SGD and set(group) - {"params"} <= _SGD_KEYS and not group.get("fused") and not group.get("differentiable"):
        return "sgd"
    if t in (torch.optim.Adam, torch.optim.AdamW) and set(group) - {"params"} <= _ADAM_KEYS:
        if group.get("amsgrad") or group.get("fused") or group.get("capturable") or group.get("differentiable"):
            return None
        return "adam"
    if t is ClippedAdam and set(group) - {"params"} <= _CLIPPED_KEYS:
        return "clipped"
    return None


def functional_update(optim: Any, params: list[torch.Tensor]) -> FunctionalUpdate | str:
    """A :class:`FunctionalUpdate` for ``params`` (tensors of any shape, each already stepped once
    by ``optim``, so that its optimizer state exists), or why the update cannot be recorded (a
    sentence)."""
    if not isinstance(optim, PyroOptim) or type(optim).__call__ is not PyroOptim.__call__:
        return f"the optimizer {type(optim).__name__} is not an ember.optim wrapper of a torch optimizer"
    if optim._scheduler_name() is not None:
        return f"the optimizer is an LR scheduler wrapper ({type(optim).__name__}), whose schedule runs in Python"
    rules = []
    for p in params:
        entry = optim._entries.get(id(p))
        if entry is None:
            return "a parameter has not been stepped by the optimizer yet"
        opt = entry.record.optimizer
        group = next((g for g in opt.param_groups if any(q is p for q in g["params"])), None)
        if group is None or not all(isinstance(group.get(k, 0.0), (int, float, tuple, bool, type(None))) for k in group if k != "params"):
            return f"the optimizer group of parameter '{entry.name}' has tensor hyperparameters"
        kind = _kind(opt, group)
        if kind is None:
            return (f"the update of {type(opt).__name__} (parameter '{entry.name}', options "
                    f"{ {k: v for k, v in group.items() if k != 'params'} }) is not expressed as a graph (SGD, Adam, AdamW "
                    f"and ClippedAdam are, without amsgrad, fused or capturable)")
        rule = _Rule(kind, entry.name, p, opt, group, entry.clip_norm, entry.clip_value)
        missing = [k for k in rule.state_keys + (("step",) if kind != "sgd" else ()) if rule.state.get(k) is None]
        if missing:
            return f"the optimizer state of parameter '{entry.name}' lacks {missing}"
        if any(not isinstance(rule.state[k], torch.Tensor) or rule.state[k].shape != p.shape for k in rule.state_keys):
            return f"the optimizer state of parameter '{entry.name}' does not have the parameter's shape"
        rules.append(rule)
    dtypes = {p.dtype for p in params}
    if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
        return f"the parameters have several dtypes ({sorted(map(str, dtypes))})"
    return FunctionalUpdate(rules, next(iter(dtypes)))
