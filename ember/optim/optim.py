"""``PyroOptim``: wraps a ``torch.optim`` optimizer so that it can train the parameters of
Ember's parameter store, which are created lazily while a model runs.

Differences from Pyro's ``PyroOptim`` (the public names and call protocol are the same):

* Pyro creates one torch optimizer *per tensor*. Here there is one torch optimizer per
  distinct set of optimizer arguments, holding a single parameter group; parameters
  that appear later join that group. Torch's multi-tensor kernels then update all
  parameters of a group together, and an LR scheduler drives the whole group (a
  parameter that joins late gets the group's current, scheduled learning rate).
* The state is keyed by parameter *name*, not by position, so it can be restored into
  freshly created optimizers in another process whatever order the parameters are
  met in; state loaded for parameters not yet seen waits until they are, and is
  kept by :meth:`PyroOptim.get_plain_state` meanwhile. Files are written atomically and
  read without unpickling code.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
from torch.nn.utils import clip_grad_norm_, clip_grad_value_

from ember.optim.adagrad_rmsprop import AdagradRMSProp as _TorchAdagradRMSProp
from ember.optim.clipped_adam import ClippedAdam as _TorchClippedAdam
from ember.params.param_store import _MODULE_NAMESPACE_DIVIDER, module_from_param_with_module_name, user_param_name
from ember.params.serialize import CheckpointError, load_digested, save_digested
from ember.primitives import get_param_store
from ember.runtime import is_validation_enabled

__all__ = ["OPTIM_STATE_FORMAT", "EmberOptim", "NonFiniteParameterError", "PyroOptim"]

OPTIM_STATE_FORMAT = "ember.optim"
_STATE_VERSION = 1
_CLIP_KEYS = ("clip_norm", "clip_value")


class NonFiniteParameterError(ValueError):
    """An optimizer step made parameters NaN or infinite; they were restored to their values
    before the step. ``names``: the parameters at fault; ``setting``: the optimizer and the
    arguments of their group (e.g. ``"Adam(lr=inf)"``)."""

    def __init__(self, message: str, names: list[str], setting: str) -> None:
        super().__init__(message)
        self.names = names
        self.setting = setting


# ---- helpers ---------------------------------------------------------------------------------------


def _freeze(value: Any) -> Hashable:
    """A hashable canonical form of an argument value (dicts are order-insensitive)."""
    if isinstance(value, dict):
        return ("dict", tuple(sorted(((str(k), _freeze(v)) for k, v in value.items()), key=lambda kv: kv[0])))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_freeze(v) for v in value))
    if isinstance(value, torch.Tensor):
        v = value.detach()
        return ("tensor", str(v.dtype), str(v.device), tuple(v.shape), tuple(v.cpu().flatten().tolist()))
    if isinstance(value, float) and math.isnan(value):
        return ("nan",)
    try:
        hash(value)
    except TypeError:
        return ("object", id(value))
    return value


def _args_label(args: dict[str, Any]) -> str:
    """A readable name for an argument set, used as the key of its group in saved state."""
    if not args:
        return "defaults"
    return ", ".join(f"{k}={args[k]!r}" for k in sorted(args, key=str))


def _argc(fn: Callable) -> int:
    """How many parameters ``fn``'s signature lists (2 when it has none to read, e.g. a builtin)."""
    try:
        return len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return 2


def _callable_name(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or type(obj).__name__


def _reraise(err: Exception, message: str) -> NoReturn:
    """Raise an exception of the type of ``err`` with ``message``, chained to ``err``."""
    try:
        new = type(err)(message)
    except Exception:  # noqa: BLE001 - an exception type with an unusual constructor
        new = (TypeError if isinstance(err, TypeError) else ValueError)(message)
    raise new from err


def _check_clip_args(clip_args: Any, where: str) -> tuple[float | None, float | None]:
    if clip_args is None:
        return None, None
    if not isinstance(clip_args, dict):
        raise TypeError(f"{where}: clip_args must be a dict like {{'clip_norm': 10.0}}, got {type(clip_args).__name__}")
    unknown = sorted(str(k) for k in clip_args if k not in _CLIP_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown clip_args {unknown}; the valid keys are {list(_CLIP_KEYS)}")
    out = []
    for key in _CLIP_KEYS:
        v = clip_args.get(key)
        if v is not None:
            v = float(v)
            if not v > 0:
                raise ValueError(f"{where}: clip_args['{key}'] must be > 0, got {v}")
        out.append(v)
    return out[0], out[1]


def _to_param(value: Any, p: torch.Tensor, key: Any, group: dict[str, Any]) -> Any:
    """A copy of a saved state value placed like torch's ``load_state_dict`` places it."""
    if isinstance(value, torch.Tensor):
        if key == "step":
            if group.get("capturable") or group.get("fused"):
                return value.to(dtype=torch.float32, device=p.device, copy=True)
            return value.clone()
        if value.is_floating_point() and p.is_floating_point():
            return value.to(dtype=p.dtype, device=p.device, copy=True)
        return value.to(device=p.device, copy=True)
    if isinstance(value, dict):
        return {k: _to_param(v, p, k, group) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_param(v, p, key, group) for v in value]
    return copy.deepcopy(value)


@dataclass(eq=False)
class _Record:
    """One torch optimizer (and its scheduler) serving every param of one argument set."""

    label: str
    optimizer: torch.optim.Optimizer
    scheduler: Any = None


@dataclass(eq=False)
class _Entry:
    """A parameter known to a :class:`PyroOptim`."""

    param: torch.Tensor
    name: str
    record: _Record
    clip_norm: float | None
    clip_value: float | None


# ---- PyroOptim -----------------------------------------------------------------------------------


class PyroOptim:
    """Wrap a torch optimizer class for Ember's dynamically created parameters.

    :param optim_constructor: a ``torch.optim.Optimizer`` class (or any callable
        ``(params, **args) -> optimizer``).
    :param optim_args: the optimizer's keyword arguments: a dict, or a callable
        ``(module_name, param_name) -> dict`` giving per-parameter arguments (for the
        parameter ``"decoder$$$fc1.weight"`` of ``ember.module("decoder", ...)`` it is
        called with ``("decoder", "fc1.weight")``; for a plain parameter ``"a"`` with
        ``("a", "a")``).
    :param clip_args: optional gradient clipping applied to each parameter's gradient
        before the step: ``{"clip_norm": x}`` (clip the gradient's norm, per
        parameter) and/or ``{"clip_value": x}`` (clamp elementwise); a dict or a
        callable like ``optim_args``.

    Calling the object with the parameters touched by a step, ``optim(params)``, steps
    those that have a gradient (other parameters of the same torch optimizer are left
    alone), creating or extending the torch optimizers as needed. Parameters with the
    same arguments share one torch optimizer (see :attr:`optimizers`).
    """

    def __init__(
        self,
        optim_constructor: Callable[..., torch.optim.Optimizer],
        optim_args: dict[str, Any] | Callable[..., dict[str, Any]],
        clip_args: dict[str, Any] | Callable[[str, str], dict[str, Any]] | None = None,
    ) -> None:
        if not callable(optim_constructor):
            raise TypeError(f"PyroOptim: optim_constructor must be a torch.optim.Optimizer class, got {optim_constructor!r}")
        self.pt_optim_constructor = optim_constructor
        self._optim_name = _callable_name(optim_constructor)
        if isinstance(optim_args, dict):
            optim_args = dict(optim_args)
        elif not callable(optim_args):
            raise TypeError(
                f"{self._optim_name}: optim_args must be a dict of optimizer arguments or a callable "
                f"(param_name) -> dict or (module_name, param_name) -> dict, got {type(optim_args).__name__}"
            )
        self.pt_optim_args = optim_args
        self.pt_optim_args_argc = _argc(optim_args) if callable(optim_args) else None
        if isinstance(clip_args, dict):
            clip_args = dict(clip_args)
            _check_clip_args(clip_args, self._optim_name)
        elif clip_args is not None and not callable(clip_args):
            raise TypeError(f"{self._optim_name}: clip_args must be a dict, a callable or None, got {type(clip_args).__name__}")
        self.pt_clip_args = clip_args
        self._records: dict[Hashable, _Record] = {}
        self._entries: dict[int, _Entry] = {}  # id(param) -> entry (the entry holds the param alive)
        self._by_name: dict[str, torch.Tensor] = {}
        self._pending_params: dict[str, dict[str, Any]] = {}  # loaded state not yet installed
        self._pending_groups: dict[str, dict[str, Any]] = {}
        self._backup: dict[int, torch.Tensor] = {}  # id(param) -> its value before the current step
        self._snap_key: tuple[int, ...] = ()  # the ids of the parameters the last step updated, and their buffers
        self._snap_bufs: list[torch.Tensor] = []
        self._finite_flags: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # device -> (found, 1.0)

    # ---- the step ----------------------------------------------------------------------------------
    def __call__(self, params: Iterable[torch.Tensor], *args: Any, **kwargs: Any) -> None:
        """Step the parameters ``params`` (unconstrained leaf tensors of the parameter
        store, of any shape; each keeps its shape) that have a gradient. ``args``/``kwargs`` go to the torch optimizers'
        ``step`` (e.g. a closure).

        :raises NonFiniteParameterError: with Ember's validation on (the default), if the step
            left a parameter NaN or infinite (e.g.
            ``lr=inf``, or a non-finite gradient with Ember's checks off). Every parameter
            this call stepped is then restored to its value before the step, and the
            optimizer state (moments) of those at fault is reset if it became non-finite
            too; the error names them and the optimizer setting.
        """
        touched: dict[int, torch.Tensor] = {}
        for p in params:
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"{self._optim_name}: expected parameter tensors, got {type(p).__name__}")
            touched.setdefault(id(p), p)
        new = [p for i, p in touched.items() if i not in self._entries]
        if new:
            self._attach(new)
        active: dict[int, _Record] = {}
        for i, p in touched.items():
            if p.grad is None:
                continue
            entry = self._entries[i]
            if entry.clip_norm is not None:
                clip_grad_norm_(p, entry.clip_norm)
            if entry.clip_value is not None:
                clip_grad_value_(p, entry.clip_value)
            active.setdefault(id(entry.record), entry.record)
        if not active:
            return
        if not is_validation_enabled():  # Ember's checks off: the last bit of speed, no guard
            for record in active.values():
                self._step(record, touched, args, kwargs)
            return
        stepped = [p for p in touched.values() if p.grad is not None]
        backup = self._snapshot(stepped)
        for record in active.values():
            self._step(record, touched, args, kwargs)
        self._check_finite(stepped, backup)

    def _snapshot(self, ps: list[torch.Tensor]) -> list[torch.Tensor]:
        """Copies of ``ps`` into buffers kept between steps (no allocation per step; the buffer list
        is reused while the same parameters are stepped)."""
        key = tuple(map(id, ps))
        detached = [p.detach() for p in ps]
        if key == self._snap_key:
            try:
                torch._foreach_copy_(self._snap_bufs, detached)
                return self._snap_bufs
            except RuntimeError:  # a parameter changed shape, dtype or device in place
                pass
        backup = self._backup
        bufs = []
        for p in detached:
            b = backup.get(id(p))
            if b is None or b.shape != p.shape or b.dtype != p.dtype or b.device != p.device:
                b = torch.empty_like(p, memory_format=torch.contiguous_format)
            bufs.append(b)
        for k, b in zip(key, bufs):
            backup[k] = b
        torch._foreach_copy_(bufs, detached)
        self._snap_key, self._snap_bufs = key, bufs
        return bufs

    def _all_finite(self, ps: list[torch.Tensor]) -> bool:
        """Whether every entry of ``ps`` (detached) is finite: one fused pass per (device, dtype) (torch's AMP
        check, which also multiplies in place by exactly 1.0, a no-op), one sync; a stack of sums as fallback."""
        first = ps[0]
        if all(p.device == first.device and p.dtype == first.dtype for p in ps):
            groups = [ps]
        else:
            by: dict[tuple, list[torch.Tensor]] = {}
            for p in ps:
                by.setdefault((p.device, p.dtype), []).append(p)
            groups = list(by.values())
        try:
            for group in groups:
                flags = self._finite_flags.get(group[0].device)
                if flags is None:
                    flags = self._finite_flags[group[0].device] = (torch.zeros(1, device=group[0].device),
                                                                   torch.ones(1, device=group[0].device))
                found, one = flags
                found.zero_()
                torch._amp_foreach_non_finite_check_and_unscale_(group, found, one)
                if bool(found):
                    return False
            return True
        except (AttributeError, RuntimeError, TypeError):  # a dtype or build without the fused check
            return bool(torch.isfinite(torch.stack([p.sum() for p in ps])).all()) or all(bool(torch.isfinite(p).all()) for p in ps)

    def _check_finite(self, ps: list[torch.Tensor], backup: list[torch.Tensor]) -> None:
        """After a step: one fused finiteness check of ``ps`` (:meth:`_all_finite`); if it fails, restore
        ``ps`` from ``backup`` and raise :class:`NonFiniteParameterError`."""
        detached = [p.detach() for p in ps]
        if self._all_finite(detached):
            return
        bad = [p for p in ps if not bool(torch.isfinite(p.detach()).all())]
        if not bad:
            return
        sample = bad[0].detach().flatten()[:3].tolist()
        torch._foreach_copy_(detached, backup)
        names, settings, reset = [], [], []
        for p in bad:
            entry = self._entries[id(p)]
            names.append(entry.name)
            label = f"{self._optim_name}({entry.record.label if entry.record.label != 'defaults' else ''})"
            if label not in settings:
                settings.append(label)
            state = entry.record.optimizer.state.get(p)
            if state and any(isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())
                             for v in state.values()):
                entry.record.optimizer.state.pop(p, None)
                reset.append(entry.name)
        setting = ", ".join(settings)
        msg = (f"the {setting} step made parameters {names[:10]}{' ...' if len(names) > 10 else ''} non-finite (e.g. "
               f"'{names[0]}' became {sample}); every parameter this step updated is restored to its value before the step")
        if reset:
            msg += f", and the non-finite optimizer state of {reset[:10]} is reset"
        msg += (". Lower the learning rate, clip the gradients (clip_args={'clip_norm': 10.0}), or check the model for "
                "values that overflow")
        raise NonFiniteParameterError(msg, names, setting)

    def _step(self, record: _Record, touched: dict[int, torch.Tensor], args: tuple, kwargs: dict) -> None:
        # Torch steps every param of the optimizer that has a gradient: hide the
        # gradients of those not touched by this step.
        hidden = []
        for group in record.optimizer.param_groups:
            for q in group["params"]:
                if q.grad is not None and id(q) not in touched:
                    hidden.append((q, q.grad))
                    q.grad = None
        try:
            record.optimizer.step(*args, **kwargs)
        finally:
            for q, g in hidden:
                q.grad = g

    # ---- attaching params to torch optimizers ---------------------------------------------------------
    def _attach(self, new: list[torch.Tensor]) -> None:
        store = get_param_store()
        batches: dict[Hashable, tuple[dict[str, Any], list[tuple[torch.Tensor, str, tuple]]]] = {}
        for p in new:
            name = store.param_name(p)
            if name is None:
                raise ValueError(
                    f"{self._optim_name}: got a tensor of shape {tuple(p.shape)} that is not a parameter of Ember's "
                    f"parameter store. Ember optimizers update the (unconstrained) parameters created by ember.param "
                    f"and ember.module, which SVI passes; use a torch.optim optimizer directly for other tensors."
                )
            if not p.is_leaf:
                raise ValueError(f"{self._optim_name}: parameter '{name}' is not a leaf tensor and cannot be optimized")
            args = self._resolve(self.pt_optim_args, name, "optim_args")
            clip = _check_clip_args(self._resolve(self.pt_clip_args, name, "clip_args"), f"{self._optim_name} (param '{name}')")
            key = _freeze(args)
            batches.setdefault(key, (args, []))[1].append((p, name, clip))
        for key, (args, items) in batches.items():
            ps = [p for p, _, _ in items]
            names = [n for _, n, _ in items]
            record = self._records.get(key)
            if record is None:
                record = self._create(key, args, ps, names)
            else:
                self._join(record, ps)
            for p, name, (clip_norm, clip_value) in items:
                old = self._by_name.get(name)
                if old is not None and old is not p:
                    self._detach(old)  # the store replaced this param by a new tensor
                self._entries[id(p)] = _Entry(p, name, record, clip_norm, clip_value)
                self._by_name[name] = p
                saved = self._pending_params.pop(name, None)
                if saved is not None:
                    self._install_param_state(record, p, name, saved)

    def _resolve(self, spec: Any, name: str, what: str) -> Any:
        """The arguments for param ``name``: ``spec`` itself (a dict), or what the callable returns.
        As in Pyro, a one-argument optim_args callable gets the full name (``"a.b.c"``, the
        module divider ``$$$`` written as ``.``), otherwise ``(module_name, param_name)``."""
        if spec is None or isinstance(spec, dict):
            return spec
        if what == "optim_args" and self.pt_optim_args_argc == 1:
            value = spec(name.replace(_MODULE_NAMESPACE_DIVIDER, "."))
        else:
            value = spec(module_from_param_with_module_name(name), user_param_name(name))
        if not (isinstance(value, dict) or (value is None and what == "clip_args")):
            raise TypeError(
                f"{self._optim_name}: the {what} callable returned {type(value).__name__} for param '{name}'; it must return a dict"
            )
        return value

    def _create(self, key: Hashable, args: dict[str, Any], params: list[torch.Tensor], names: list[str]) -> _Record:
        label = _args_label(args)
        taken = {r.label for r in self._records.values()}
        base, n = label, 1
        while label in taken:
            n += 1
            label = f"{base} #{n}"
        try:
            optimizer = self.pt_optim_constructor(params, **args)
        except (TypeError, ValueError) as e:
            more = f" (and {len(names) - 1} other params)" if len(names) > 1 else ""
            _reraise(e, f"cannot create the optimizer {self._optim_name} for param '{names[0]}'{more} with optim_args {args!r}: {e}")
        if not hasattr(optimizer, "param_groups") or not hasattr(optimizer, "state"):
            raise TypeError(f"{self._optim_name}(params, **optim_args) returned {type(optimizer).__name__}, not a torch optimizer")
        record = _Record(label, optimizer, self._make_scheduler(optimizer, names))
        self._records[key] = record
        self._restore_group(record, names)
        return record

    def _make_scheduler(self, optimizer: torch.optim.Optimizer, names: list[str]) -> Any:
        """Hook for :class:`PyroLRScheduler`: the scheduler driving a new torch optimizer."""
        return None

    @staticmethod
    def _join(record: _Record, params: list[torch.Tensor]) -> None:
        groups = record.optimizer.param_groups
        if len(groups) == 1:
            groups[0]["params"].extend(params)  # share the group: its hyperparameters and schedule
        else:
            record.optimizer.add_param_group({"params": params})

    def _detach(self, p: torch.Tensor) -> None:
        self._backup.pop(id(p), None)
        self._snap_key, self._snap_bufs = (), []
        entry = self._entries.pop(id(p), None)
        if entry is None:
            return
        if self._by_name.get(entry.name) is p:
            del self._by_name[entry.name]
        optimizer = entry.record.optimizer
        for group in optimizer.param_groups:
            plist = group["params"]
            for i, q in enumerate(plist):
                if q is p:
                    del plist[i]  # in place: some optimizers (LBFGS) keep a reference to the list
                    break
        optimizer.state.pop(p, None)

    def _live(self, record: _Record) -> list[_Entry]:
        """The entries of ``record`` whose tensor is still the store's parameter of that name."""
        store = get_param_store()
        out = []
        for group in record.optimizer.param_groups:
            for p in group["params"]:
                entry = self._entries.get(id(p))
                if entry is not None and entry.param is p and store.param_name(p) == entry.name:
                    out.append(entry)
        return out

    # ---- introspection ------------------------------------------------------------------------------
    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The torch optimizers created so far (one per distinct argument set)."""
        return [r.optimizer for r in self._records.values()]

    @property
    def optim_objs(self) -> dict[torch.Tensor, Any]:
        """Pyro-compatible view: param tensor -> its torch optimizer (its scheduler for
        :class:`PyroLRScheduler`). Several params share one object."""
        return {e.param: (e.record.scheduler if e.record.scheduler is not None else e.record.optimizer) for e in self._entries.values()}

    def __repr__(self) -> str:
        args = self.pt_optim_args if isinstance(self.pt_optim_args, dict) else _callable_name(self.pt_optim_args)
        return f"{type(self).__name__}({self._optim_name}, {args!r}, {len(self._entries)} params in {len(self._records)} optimizers)"

    # ---- state ----------------------------------------------------------------------------------------
    def _scheduler_name(self) -> str | None:
        return None

    def get_state(self) -> dict[str, Any]:
        """Pyro's optimizer state: ``{param name: state}`` for each parameter this optimizer has
        met since it was made or loaded, where ``state`` is the ``state_dict()`` of a torch
        optimizer over that parameter alone (``{"state": {0: {...}}, "param_groups": [{..., "params":
        [0]}]}``), or, with a learning-rate scheduler, ``{"scheduler": ..., "optimizer": ...}``.
        Each tensor keeps the parameter's shape. As in Pyro, state loaded by :meth:`set_state` or
        :meth:`load` for parameters not met since is not included (right after a load the dict
        is empty); :meth:`get_plain_state` includes it, and :meth:`save` writes that.
        """
        out: dict[str, Any] = {}
        for record in self._records.values():
            for entry in self._live(record):
                p = entry.param
                group = next((g for g in record.optimizer.param_groups if any(q is p for q in g["params"])),
                             record.optimizer.param_groups[0])
                hyper = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
                st = record.optimizer.state.get(p)
                opt_state = {"state": {0: copy.deepcopy(dict(st))} if st else {}, "param_groups": [{**hyper, "params": [0]}]}
                if record.scheduler is not None:
                    out[entry.name] = {"scheduler": copy.deepcopy(record.scheduler.state_dict()), "optimizer": opt_state}
                else:
                    out[entry.name] = opt_state
        return out

    def get_plain_state(self) -> dict[str, Any]:
        """Ember's fuller optimizer state, as plain data (tensors, numbers, strings, containers)::

            {"format": "ember.optim", "version": 1, "optimizer": "Adam", "scheduler": None,
             "params": {name: {"group": label, "shape": [...], "state": {"step": ..., "exp_avg": ...}}},
             "groups": {label: {"hyperparams": {"lr": ..., ...}, "scheduler": state_dict or None, "params": [names]}}}

        Per parameter name: its torch optimizer state and the label of its group; per
        group (one per argument set): its hyperparameters (current, e.g. decayed,
        learning rate) and its scheduler's state. State loaded by :meth:`set_state`
        for parameters not met since is included as loaded.
        """
        params = copy.deepcopy(self._pending_params)
        groups = copy.deepcopy(self._pending_groups)
        for record in self._records.values():
            names = []
            for entry in self._live(record):
                p = entry.param
                state = record.optimizer.state.get(p, {})
                params[entry.name] = {"group": record.label, "shape": list(p.shape), "state": copy.deepcopy(dict(state))}
                names.append(entry.name)
            hyper = {k: copy.deepcopy(v) for k, v in record.optimizer.param_groups[0].items() if k != "params"}
            sched = copy.deepcopy(record.scheduler.state_dict()) if record.scheduler is not None else None
            groups[record.label] = {"hyperparams": hyper, "scheduler": sched, "params": names}
        return {
            "format": OPTIM_STATE_FORMAT,
            "version": _STATE_VERSION,
            "optimizer": self._optim_name,
            "scheduler": self._scheduler_name(),
            "params": params,
            "groups": groups,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Load ``state``: from :meth:`get_state` (Pyro's form) or :meth:`get_plain_state`.
        Parameters already attached get their state now; the others when a step first touches
        them."""
        if isinstance(state, dict) and "format" not in state:
            state = self._from_pyro_state(state)
        self._check_state(state)
        self._pending_params.update(copy.deepcopy(state["params"]))
        self._pending_groups.update(copy.deepcopy(state["groups"]))
        for record in self._records.values():
            live = self._live(record)
            self._restore_group(record, [e.name for e in live])
            for entry in live:
                saved = self._pending_params.pop(entry.name, None)
                if saved is not None:
                    self._install_param_state(record, entry.param, entry.name, saved)

    def _from_pyro_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """:meth:`get_state`'s (Pyro's) per-parameter form as :meth:`get_plain_state`'s: each
        parameter gets a group of its own, holding its hyperparameters and scheduler state."""
        where = f"{type(self).__name__}.set_state"
        params: dict[str, Any] = {}
        groups: dict[str, Any] = {}
        for name, entry in state.items():
            opt = entry.get("optimizer", entry) if isinstance(entry, dict) else None
            if not isinstance(opt, dict) or not isinstance(opt.get("state"), dict) or not isinstance(opt.get("param_groups"), list):
                raise TypeError(f"{where}: malformed optimizer state for param '{name}' (expected a torch optimizer "
                                f"state_dict, as get_state() gives, or the dict of get_plain_state())")
            per_param = opt["state"].get(0, next(iter(opt["state"].values()), {}))
            label = f"pyro:{name}"
            hyper = {k: v for k, v in (opt["param_groups"][0] if opt["param_groups"] else {}).items() if k != "params"}
            groups[label] = {"hyperparams": hyper, "scheduler": entry.get("scheduler"), "params": [name]}
            params[name] = {"group": label, "shape": None, "state": dict(per_param)}
        return {"format": OPTIM_STATE_FORMAT, "version": _STATE_VERSION, "optimizer": None, "scheduler": None,
                "params": params, "groups": groups}

    def _check_state(self, state: Any) -> None:
        where = f"{type(self).__name__}.set_state"
        if not isinstance(state, dict):
            raise TypeError(f"{where}: expected the dict of get_state(), got {type(state).__name__}")
        if state.get("format") != OPTIM_STATE_FORMAT:
            raise ValueError(f"{where}: not an Ember optimizer state (format tag {state.get('format')!r}, expected {OPTIM_STATE_FORMAT!r})")
        version = state.get("version")
        if not isinstance(version, int) or version > _STATE_VERSION:
            raise ValueError(f"{where}: unsupported optimizer state version {version!r} (this Ember reads version <= {_STATE_VERSION})")
        if not isinstance(state.get("params"), dict) or not isinstance(state.get("groups"), dict):
            raise TypeError(f"{where}: malformed optimizer state (missing 'params' or 'groups')")
        for name, entry in state["params"].items():
            if not isinstance(entry, dict) or not isinstance(entry.get("state"), dict):
                raise TypeError(f"{where}: malformed optimizer state for param '{name}' (expected a dict with a 'state' dict)")
            shape = entry.get("shape")
            if shape is not None and not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
                raise TypeError(f"{where}: malformed optimizer state for param '{name}': shape {shape!r} is not a list of sizes")
            if entry.get("group") is not None and entry["group"] not in state["groups"]:
                raise ValueError(f"{where}: malformed optimizer state for param '{name}': its group {entry['group']!r} is not saved")
            for key, value in entry["state"].items():
                for v in value if isinstance(value, (list, tuple)) else [value]:  # LBFGS keeps lists of tensors
                    if isinstance(v, torch.Tensor):
                        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                            raise ValueError(f"{where}: malformed optimizer state for param '{name}': '{key}' holds non-finite values")
                    elif v is not None and not isinstance(v, (int, float)):
                        raise TypeError(f"{where}: malformed optimizer state for param '{name}': '{key}' holds a "
                                        f"{type(v).__name__}, expected tensors or numbers")
        for label, group in state["groups"].items():
            if not isinstance(group, dict) or not isinstance(group.get("hyperparams"), dict):
                raise TypeError(f"{where}: malformed optimizer state for group '{label}'")
        saved = state.get("optimizer")
        if saved is not None and saved != self._optim_name:
            raise ValueError(
                f"{where}: the state was saved by a {saved} optimizer but this one is {self._optim_name}; "
                f"to switch optimizers, start the new one fresh instead of loading the old state"
            )
        saved_sched, sched = state.get("scheduler"), self._scheduler_name()
        if saved_sched is not None and sched is not None and saved_sched != sched:
            raise ValueError(f"{where}: the state was saved with a {saved_sched} scheduler but this one uses {sched}")

    def _restore_group(self, record: _Record, names: list[str]) -> None:
        """Install the saved hyperparameters and scheduler state of ``record``'s group,
        found by its label or else through the saved group of one of ``names``."""
        saved = self._pending_groups.pop(record.label, None)
        if saved is None:
            for name in names:
                entry = self._pending_params.get(name)
                if entry is not None and entry.get("group") in self._pending_groups:
                    saved = self._pending_groups.pop(entry["group"])
                    break
        if saved is None:
            return
        for group in record.optimizer.param_groups:
            group.update({k: copy.deepcopy(v) for k, v in saved["hyperparams"].items() if k != "params"})
        if record.scheduler is not None and saved.get("scheduler") is not None:
            record.scheduler.load_state_dict(copy.deepcopy(saved["scheduler"]))

    def _install_param_state(self, record: _Record, p: torch.Tensor, name: str, saved: dict[str, Any]) -> None:
        shape = saved.get("shape")
        if shape is not None and tuple(shape) != tuple(p.shape):
            raise ValueError(
                f"{self._optim_name}: the saved optimizer state of param '{name}' is for shape {tuple(shape)}, "
                f"but the param now has shape {tuple(p.shape)}"
            )
        group = next((g for g in record.optimizer.param_groups if any(q is p for q in g["params"])), record.optimizer.param_groups[0])
        record.optimizer.state[p] = {k: _to_param(v, p, k, group) for k, v in saved["state"].items()}

    def save(self, filename: str | os.PathLike) -> None:
        """Write :meth:`get_plain_state` to ``filename`` atomically (temp file, fsync, rename), with a
        SHA-256 checksum over every byte (:func:`ember.params.serialize.save_digested`)."""
        save_digested(self.get_plain_state(), filename, OPTIM_STATE_FORMAT)

    def load(self, filename: str | os.PathLike, map_location: Any = None) -> None:
        """Load a state written by :meth:`save` (never executes code from the file).

        :raises CheckpointError: if the file is missing, truncated, tampered with (any changed
            byte fails its checksum), malformed or not an Ember optimizer state. Files written
            before checksums load with an ``UnverifiedCheckpointWarning``.
        """
        state = load_digested(filename, OPTIM_STATE_FORMAT, map_location, "optimizer state",
                              kinds={"ember.param_store": "; it is a parameter store: load it with ember.get_param_store().load(...)"})
        tag = state.get("format") if isinstance(state, dict) else type(state).__name__
        if tag != OPTIM_STATE_FORMAT:
            hint = "; it is a parameter store: load it with ember.get_param_store().load(...)" if tag == "ember.param_store" else ""
            raise CheckpointError(f"{os.fspath(filename)}: not an Ember optimizer state (format tag {tag!r}){hint}")
        try:
            self.set_state(state)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{os.fspath(filename)}: {e}") from None


EmberOptim = PyroOptim


# ---- wrappers of torch optimizers -----------------------------------------------------------------


def _optim_wrapper(optim_class: type, name: str | None = None) -> type[PyroOptim]:
    """A :class:`PyroOptim` subclass ``Name(optim_args, clip_args=None)`` for ``optim_class``."""
    name = name or optim_class.__name__

    def __init__(self: PyroOptim, optim_args: Any, clip_args: Any = None) -> None:
        PyroOptim.__init__(self, optim_class, optim_args, clip_args)

    doc = (
        f"Ember wrapper of :class:`{optim_class.__module__}.{optim_class.__qualname__}`: ``{name}(optim_args, clip_args=None)``.\n\n"
        f"``optim_args`` is a dict of its arguments or a callable ``(module_name, param_name) -> dict``; see :class:`PyroOptim`."
    )
    return type(name, (PyroOptim,), {"__init__": __init__, "__doc__": doc, "__module__": "ember.optim", "__qualname__": name})


Adam = _optim_wrapper(torch.optim.Adam)
AdamW = _optim_wrapper(torch.optim.AdamW)
SGD = _optim_wrapper(torch.optim.SGD)
RMSprop = _optim_wrapper(torch.optim.RMSprop)
Rprop = _optim_wrapper(torch.optim.Rprop)
Adagrad = _optim_wrapper(torch.optim.Adagrad)
Adadelta = _optim_wrapper(torch.optim.Adadelta)
Adamax = _optim_wrapper(torch.optim.Adamax)
ASGD = _optim_wrapper(torch.optim.ASGD)
NAdam = _optim_wrapper(torch.optim.NAdam)
RAdam = _optim_wrapper(torch.optim.RAdam)
SparseAdam = _optim_wrapper(torch.optim.SparseAdam)
LBFGS = _optim_wrapper(torch.optim.LBFGS)
ClippedAdam = _optim_wrapper(_TorchClippedAdam)
AdagradRMSProp = _optim_wrapper(_TorchAdagradRMSProp)

OPTIMIZER_WRAPPERS: dict[str, type[PyroOptim]] = {
    cls.__name__: cls
    for cls in (Adam, AdamW, SGD, RMSprop, Rprop, Adagrad, Adadelta, Adamax, ASGD, NAdam, RAdam, SparseAdam, LBFGS, ClippedAdam,
                AdagradRMSProp)
}
# optimizers of newer torch versions (e.g. Adafactor)
for _name, _cls in vars(torch.optim).items():
    if (
        isinstance(_cls, type)
        and issubclass(_cls, torch.optim.Optimizer)
        and _cls is not torch.optim.Optimizer
        and not _name.startswith("_")
        and _name not in OPTIMIZER_WRAPPERS
    ):
        OPTIMIZER_WRAPPERS[_name] = _optim_wrapper(_cls, _name)
del _name, _cls
