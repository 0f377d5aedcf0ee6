"""The parameter store: named, optionally constrained, learnable tensors."""

from __future__ import annotations

import contextlib
import os
import warnings
import weakref
from collections.abc import Iterator
from typing import Any, TypedDict

import torch
from torch.distributions import constraints, transform_to

from ember.params.serialize import (
    CheckpointError,
    constraint_from_spec,
    constraint_to_spec,
    load_digested,
    save_digested,
    validate_param_store_state,
)

__all__ = ["ParamStoreDict", "StateDict", "module_from_param_with_module_name", "normalize_param_name", "user_param_name",
           "param_with_module_name"]

_MODULE_NAMESPACE_DIVIDER = "$$$"


class StateDict(TypedDict):
    """The type of :meth:`ParamStoreDict.get_state`'s result (as Pyro's): ``"params"`` maps each name
    to its unconstrained tensor (any shape), ``"constraints"`` each name to its constraint."""

    params: dict[str, torch.Tensor]
    constraints: dict[str, constraints.Constraint]


def normalize_param_name(name: str) -> str:
    """A store name with its module divider written as a dot: ``"decoder.fc1.weight"`` for
    ``"decoder$$$fc1.weight"`` (the name as ``named_parameters`` of a containing module gives it)."""
    return name.replace(_MODULE_NAMESPACE_DIVIDER, ".")


def param_with_module_name(pyro_name: str, param_name: str) -> str:
    """The store name of parameter ``param_name`` of the module registered as ``pyro_name``:
    ``"decoder$$$fc1.weight"`` for ``("decoder", "fc1.weight")``."""
    return _MODULE_NAMESPACE_DIVIDER.join([pyro_name, param_name])


def module_from_param_with_module_name(param_name: str) -> str:
    """The module part of a store name: ``"decoder"`` for ``"decoder$$$fc1.weight"``."""
    return param_name.split(_MODULE_NAMESPACE_DIVIDER)[0]


def user_param_name(param_name: str) -> str:
    """The parameter part of a store name (``"fc1.weight"`` for ``"decoder$$$fc1.weight"``); a
    name without a module part is returned as it is."""
    if _MODULE_NAMESPACE_DIVIDER in param_name:
        return param_name.split(_MODULE_NAMESPACE_DIVIDER)[1]
    return param_name


class ParamStoreDict:
    """Maps names to parameters. Each parameter is kept as an *unconstrained* leaf
    tensor (what optimizers update); reading it returns the constrained value
    ``transform_to(constraint)(unconstrained)``, recomputed at each read so that
    gradients flow to the unconstrained tensor.

    Module parameters (``ember.module``) are stored as the module's own
    ``nn.Parameter`` objects under ``"<module name>$$$<parameter path>"``.
    """

    def __init__(self) -> None:
        self._params: dict[str, torch.Tensor] = {}  # name -> unconstrained leaf tensor
        self._constraints: dict[str, constraints.Constraint] = {}
        self._transforms: dict[str, Any] = {}  # name -> transform_to(constraint), None for real
        self._param_to_name: dict[int, str] = {}  # id(unconstrained) -> name
        # module name -> (weakref to module, [(full name, parameter), ...])
        self._modules: dict[str, tuple] = {}
        # names set by set_state/load whose constraint no ember.param call has declared yet
        self._unchecked: set[str] = set()

    # ---- mapping protocol ----------------------------------------------------------------
    def clear(self) -> None:
        """Remove every parameter."""
        self._params.clear()
        self._constraints.clear()
        self._transforms.clear()
        self._param_to_name.clear()
        self._modules.clear()
        self._unchecked.clear()

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, constrained value)`` pairs; each value has the shape its parameter was created with."""
        for name in list(self._params):
            yield name, self[name]

    def keys(self) -> Any:
        return self._params.keys()

    def values(self) -> Iterator[torch.Tensor]:
        """The constrained values, each of the shape its parameter was created with."""
        for name in list(self._params):
            yield self[name]

    def __bool__(self) -> bool:
        return bool(self._params)

    def __len__(self) -> int:
        return len(self._params)

    def __contains__(self, name: str) -> bool:
        return name in self._params

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._params))

    def __delitem__(self, name: str) -> None:
        t = self._params.pop(name)
        self._constraints.pop(name, None)
        self._transforms.pop(name, None)
        self._param_to_name.pop(id(t), None)

    def __getitem__(self, name: str) -> torch.Tensor:
        """The constrained value of parameter ``name`` (``.unconstrained()`` gives its leaf)."""
        return self._constrained(name, self._params[name])

    def __setitem__(self, name: str, new_constrained_value: torch.Tensor) -> None:
        """Set parameter ``name`` (constrained value), keeping its constraint."""
        c = self._constraints.get(name, constraints.real)
        self._set(name, new_constrained_value, c)

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, unconstrained tensor) pairs: what an optimizer updates. An unconstrained tensor
        can differ in shape from its constrained value (a ``corr_cholesky`` parameter of shape
        ``(K, K)`` is held as ``K (K - 1) / 2`` numbers; most constraints keep the shape)."""
        return iter(list(self._params.items()))

    def get_all_param_names(self) -> list:
        return list(self._params)

    def unconstrained(self, name: str) -> torch.Tensor | None:
        """The unconstrained leaf tensor of ``name`` (what an optimizer updates), or None; its shape is
        that of the constraint's unconstrained space (the constrained shape for most constraints)."""
        return self._params.get(name)

    def is_module_param(self, name: str) -> bool:
        """Whether ``name`` is a parameter of a module registered with ``ember.module``."""
        return self._is_module_param(name)

    def setdefault(self, name: str, init_constrained_value: Any, constraint: constraints.Constraint = constraints.real) -> torch.Tensor:
        """The constrained value of ``name``, created from ``init_constrained_value`` (a tensor,
        a number or a zero-argument callable, called only when needed) if absent; it keeps the
        shape of the initial value."""
        return self.get_param(name, init_constrained_value, constraint)

    def bind(self, name: str, unconstrained: torch.Tensor, constraint: constraints.Constraint = constraints.real) -> None:
        """Hold the leaf tensor ``unconstrained`` itself (a ``PyroModule``'s ``nn.Parameter``) as the
        unconstrained value of ``name``, so the module and the store share one tensor (of any shape;
        the constrained value is ``transform_to(constraint)`` of it)."""
        old = self._params.get(name)
        if old is not None:
            self._param_to_name.pop(id(old), None)
        self._params[name] = _hold(unconstrained)
        self._constraints[name] = constraint
        self._transforms[name] = None if constraint is constraints.real else transform_to(constraint)
        self._param_to_name[id(unconstrained)] = name
        self._unchecked.discard(name)

    @contextlib.contextmanager
    def scope(self, state: dict | None = None) -> Iterator[dict]:
        """Run a block with its own parameters: ``with store.scope() as s: ...`` starts from an
        empty store (or from ``state``, a :meth:`get_state` dict), and on exit restores the
        parameters held before; ``s`` then holds the block's final state, to enter again later
        with ``store.scope(s)``."""
        saved = self.get_state()
        saved_modules = dict(self._modules)
        self.clear()
        if state is not None:
            self.set_state(state)
        inner: dict = {}
        try:
            yield inner
        finally:
            inner.update(self.get_state())
            self.clear()
            self.set_state(saved)
            self._modules.update(saved_modules)

    def replace_param(self, param_name: str, new_param: torch.Tensor, old_param: torch.Tensor) -> None:
        """Set ``param_name`` to the constrained value ``new_param`` (any shape: the parameter takes
        it), checking that it held ``old_param``; Pyro's signature."""
        held = self._params.get(param_name)
        if held is None:
            raise KeyError(f"replace_param: no parameter '{param_name}' in the store")
        ref = getattr(old_param, "unconstrained", None)
        if held is not old_param and not (callable(ref) and ref() is held):
            raise ValueError(f"replace_param: '{param_name}' does not hold the given old tensor (pass its current value, "
                             f"e.g. ember.param('{param_name}'), or its unconstrained leaf)")
        self[param_name] = new_param

    # ---- the hot path -------------------------------------------------------------------------
    def get_param(self, name: str, init_tensor: Any = None, constraint: constraints.Constraint = constraints.real, event_dim: int | None = None) -> torch.Tensor:
        """Return the constrained value of ``name``, creating it from ``init_tensor``
        (a tensor, a number or a zero-argument callable) the first time; the value keeps the
        shape of ``init_tensor``."""
        u = self._params.get(name)
        if u is None:
            if init_tensor is None:
                raise KeyError(
                    f"param '{name}' is not in the parameter store and no initial value was given. "
                    f"Call ember.param('{name}', init_value) first (known params: {sorted(self._params)[:10]})"
                )
            if callable(init_tensor) and not isinstance(init_tensor, torch.Tensor):
                init_tensor = init_tensor()
            self._set(name, init_tensor, constraint)
            u = self._params[name]
        elif self._unchecked and name in self._unchecked:
            u = self._check_loaded(name, constraint)
        return self._constrained(name, u)

    def _constrained(self, name: str, u: torch.Tensor) -> torch.Tensor:
        """The constrained value of ``name``'s leaf ``u``: ``u`` itself for an unconstrained parameter
        (whose ``.unconstrained()`` is ``u``, set in :func:`_hold`), else its transform of ``u``,
        answering ``.unconstrained()`` with ``u`` as Pyro's values do (weakly held: the value does not
        keep a replaced parameter alive)."""
        t = self._transforms.get(name)
        if t is None:
            return u
        v = t(u)
        v.unconstrained = weakref.ref(u)
        return v

    def _set(self, name: str, value: Any, constraint: constraints.Constraint) -> None:
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value, dtype=torch.get_default_dtype())
        if not isinstance(constraint, constraints.Constraint):
            raise TypeError(f"param '{name}': constraint must be a torch.distributions.constraints object; got {constraint!r}")
        with torch.no_grad():
            value = value.detach()
            if not value.is_floating_point():
                raise TypeError(f"param '{name}': parameters must be floating point tensors; got dtype {value.dtype}")
            if constraint is not constraints.real:
                ok = bool(torch.as_tensor(constraint.check(value)).all())
                u = transform_to(constraint).inv(value)
                if not ok:
                    # a value the transform projects into the constraint (e.g. a positive
                    # vector onto the simplex) is accepted with a warning; others are errors
                    # only normalising a positive vector onto the simplex counts as a projection
                    projected = transform_to(constraint)(u)
                    if constraint is constraints.simplex and bool((value > 0).all()) and bool(torch.isfinite(u).all()):
                        warnings.warn(
                            f"param '{name}': the initial value is not in {_cname(constraint)}; using its projection "
                            f"{projected.flatten()[:5].tolist()} instead",
                            UserWarning,
                            stacklevel=4,
                        )
                    else:
                        okt = torch.as_tensor(constraint.check(value))
                        bad = value[~okt.expand(value.shape)] if value.dim() and okt.shape == value.shape else value
                        raise ValueError(
                            f"param '{name}': the initial value lies outside its constraint {_cname(constraint)} "
                            f"(offending values: {bad.flatten()[:5].tolist()}). Give an initial value inside the constraint."
                        )
                if not bool(torch.isfinite(u).all()):
                    raise ValueError(
                        f"param '{name}': the initial value {value.flatten()[:5].tolist()} sits on the boundary of "
                        f"{_cname(constraint)}, which maps to an infinite unconstrained value; move it inside."
                    )
            else:
                u = value.clone()
        u = u.contiguous().requires_grad_(True)
        old = self._params.get(name)
        if old is not None:
            self._param_to_name.pop(id(old), None)
        self._params[name] = _hold(u)
        self._constraints[name] = constraint
        self._transforms[name] = None if constraint is constraints.real else transform_to(constraint)
        self._param_to_name[id(u)] = name

    def _check_loaded(self, name: str, constraint: constraints.Constraint) -> torch.Tensor:
        """First ember.param(name, constraint=...) after a load: a loaded value outside the declared
        constraint is an error; one inside it but stored under another constraint takes the declared
        one. ``real``, the default, declares nothing: the stored constraint stays (as in Pyro, where
        ``param(name)`` of a stored parameter keeps its constraint)."""
        self._unchecked.discard(name)
        old = self._constraints[name]
        if constraint is constraints.real:
            return self._params[name]
        try:
            same = constraint is old or constraint_to_spec(constraint, name) == constraint_to_spec(old, name)
        except ValueError:  # a constraint without a plain-data form: compare by the check below
            same = False
        if same:
            return self._params[name]
        value = self[name].detach()
        ok = torch.as_tensor(constraint.check(value))
        if not bool(ok.all()):
            bad = value[~ok.expand(value.shape)] if value.dim() and ok.shape == value.shape else value
            raise ValueError(
                f"param '{name}': the value loaded into the parameter store (stored with constraint {_cname(old)}) lies "
                f"outside the constraint {_cname(constraint)} that ember.param declares (offending values: "
                f"{bad.flatten()[:5].tolist()}). Load a store saved by this model, or delete '{name}' from the store to re-initialise it."
            )
        self._set(name, value, constraint)
        return self._params[name]

    # ---- modules -------------------------------------------------------------------------------
    def _register_module(self, name: str, nn_module: torch.nn.Module, update_module_params: bool) -> list:
        """Bind the parameters of ``nn_module`` to ``name$$$path`` entries; return them."""
        entry = self._modules.get(name)
        if entry is not None and entry[0]() is nn_module:
            plist = entry[1]
            # a parameter may have been added or swapped since registration
            if all(self._params.get(n) is p for n, p in plist):
                return plist
        old_module = entry[0]() if entry is not None else None
        plist = []
        replaced = []
        for pname, p in nn_module.named_parameters():
            full = param_with_module_name(name, pname)
            old = self._params.get(full)
            if old is not None and old is not p:
                if old_module is not None and old_module is not nn_module and not update_module_params:
                    replaced.append(full)
                else:
                    # values loaded from a checkpoint (or update_module_params=True):
                    # copy them into the module, which stays the single source of truth
                    if old.shape != p.shape:
                        raise ValueError(
                            f"module '{name}': the parameter store holds '{full}' with shape {tuple(old.shape)}, "
                            f"but the module's parameter has shape {tuple(p.shape)}. Was the store loaded from a "
                            f"checkpoint of a differently sized network?"
                        )
                    with torch.no_grad():
                        p.copy_(old.detach().to(device=p.device, dtype=p.dtype))
                self._param_to_name.pop(id(old), None)
            self._params[full] = _hold(p)
            self._constraints[full] = constraints.real
            self._transforms[full] = None
            self._param_to_name[id(p)] = full
            plist.append((full, p))
        if replaced:
            warnings.warn(
                f"ember.module('{name}', ...) was given a different module object than before; the parameter store "
                f"now holds the new module's parameters ({len(replaced)} tensors replaced, e.g. '{replaced[0]}') and "
                f"the old values are dropped. To keep training the old values, reuse the old module object; to start "
                f"from stored values on purpose, use update_module_params=True.",
                UserWarning,
                stacklevel=4,
            )
        # entries of a module parameter that no longer exists
        prefix = name + _MODULE_NAMESPACE_DIVIDER
        current = {n for n, _ in plist}
        for n in [n for n in self._params if n.startswith(prefix) and n not in current]:
            del self[n]
        self._modules[name] = (weakref.ref(nn_module), plist)
        return plist

    # ---- names -----------------------------------------------------------------------------------
    def param_name(self, p: torch.Tensor) -> str | None:
        """The name of the unconstrained tensor ``p`` (any shape; found by identity, not value), or None
        if it is not in the store."""
        return self._param_to_name.get(id(p))

    def get_param_constraint(self, name: str) -> constraints.Constraint:
        return self._constraints[name]

    # ---- state, save, load -----------------------------------------------------------------------
    def get_state(self) -> StateDict:
        """``{"params": {name: unconstrained tensor (a detached copy)}, "constraints": {name: constraint
        object}}``, as Pyro's. :meth:`save` writes the constraints as plain-data specs."""
        return {
            "params": {k: v.detach().clone() for k, v in self._params.items()},
            "constraints": dict(self._constraints),
        }

    def get_plain_state(self) -> dict:
        """:meth:`get_state` with each constraint as a plain-data spec (str or dict), for files
        that hold plain data only (checkpoints); :meth:`set_state` takes either form."""
        state = self.get_state()
        state["constraints"] = {k: constraint_to_spec(c, k) for k, c in state["constraints"].items()}
        return state

    def set_state(self, state: dict) -> None:
        """Replace the values in the store by those in ``state`` (see :meth:`get_state`).
        Module parameters already bound to a module are updated in place."""
        if not isinstance(state, dict) or "params" not in state or "constraints" not in state:
            raise ValueError("ParamStore.set_state: expected a dict with 'params' and 'constraints' (from get_state/save)")
        for name, u in state["params"].items():
            if not isinstance(u, torch.Tensor):
                raise ValueError(f"ParamStore.set_state: entry '{name}' is not a tensor")
            c = state["constraints"].get(name, constraints.real)
            if not isinstance(c, constraints.Constraint):
                c = constraint_from_spec(c)  # a plain-data spec, as files hold
            cur = self._params.get(name)
            if cur is not None and self._is_module_param(name):
                if cur.shape != u.shape:
                    raise ValueError(f"ParamStore.set_state: '{name}' has shape {tuple(u.shape)} in the state but {tuple(cur.shape)} in the module")
                with torch.no_grad():
                    cur.copy_(u.to(device=cur.device, dtype=cur.dtype))
                continue
            if cur is not None:
                self._param_to_name.pop(id(cur), None)
            t = _hold(u.detach().clone().requires_grad_(True))
            self._params[name] = t
            self._constraints[name] = c
            self._transforms[name] = None if c is constraints.real else transform_to(c)
            self._param_to_name[id(t)] = name
            self._unchecked.add(name)

    def _is_module_param(self, name: str) -> bool:
        if _MODULE_NAMESPACE_DIVIDER not in name:
            return False
        entry = self._modules.get(module_from_param_with_module_name(name))
        return entry is not None and entry[0]() is not None

    def save(self, filename: str | os.PathLike) -> None:
        """Write the store to ``filename`` atomically (temp file, fsync, rename), with a SHA-256
        checksum over every byte (:func:`ember.params.serialize.save_digested`)."""
        save_digested({"format": "ember.param_store", "version": 2, **self.get_plain_state()}, filename, "ember.param_store")

    def load(self, filename: str | os.PathLike, map_location: Any = None) -> None:
        """Load a store written by :meth:`save`. Never executes code from the file; a damaged,
        changed or malformed file is a :class:`CheckpointError` and leaves the store as it was."""
        state = load_digested(filename, "ember.param_store", map_location, "parameter store",
                              kinds={"ember.optim": "; it is an optimizer state: load it with the optimizer's .load(...)"})
        if not isinstance(state, dict) or state.get("format") != "ember.param_store":
            tag = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise CheckpointError(f"{filename}: not an Ember parameter store (format tag {tag!r})")
        validate_param_store_state(state, os.fspath(filename))
        self.set_state(state)

    # ---- constraint helper for pickling -------------------------------------------------------------
    def __getstate__(self) -> dict:
        return self.get_plain_state()  # constraints by name: a pickled singleton would come back a copy

    def __setstate__(self, state: dict) -> None:
        self.__init__()
        self.set_state(state)


def _hold(u: torch.Tensor) -> torch.Tensor:
    """``u`` (an unconstrained leaf entering the store) answering ``u.unconstrained()`` with itself,
    as the value of an unconstrained parameter does in Pyro."""
    u.unconstrained = weakref.ref(u)
    return u


def _cname(c: Any) -> str:
    return type(c).__name__.lstrip("_")

