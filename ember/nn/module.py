"""``PyroModule``: ``torch.nn.Module`` whose attributes may be parameters with constraints
(:class:`PyroParam`) or random variables (:class:`PyroSample`), named by the module path.

``PyroModule[nn.Linear](3, 1)`` is an ``nn.Linear`` whose ``weight`` and ``bias`` become
learnable parameters of the parameter store under the names ``"weight"`` and ``"bias"``
(``"<path>.weight"`` for a submodule at ``<path>``, as in Pyro); assigning
``module.weight = PyroSample(dist.Normal(0., 1.).expand([1, 3]).to_event(2))`` makes it a
sample site of that name instead, drawn once per call of the outermost module.

While a ``PyroModule`` (or a :func:`pyro_method`) runs, every attribute read of a parameter goes
through ``ember.param`` (one ``param`` site: SVI steps it, handlers see it) and every read of a
``PyroSample`` through ``ember.sample``; values are cached until the outermost call returns, so
reading ``self.weight`` twice gives the same draw. The store holds the module's own
``nn.Parameter`` objects (unconstrained), so ``state_dict()``, ``torch.optim`` and the store never
diverge; if the store already holds a value under a parameter's name (a loaded store, another
module instance), the module takes it. Outside a call, attribute reads return plain values.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.distributions import constraints, transform_to

__all__ = ["PyroModule", "PyroModuleList", "PyroParam", "PyroSample", "pyro_method", "to_pyro_module_"]


class PyroParam(NamedTuple):
    """A constrained parameter attribute: ``module.x = PyroParam(init, constraint, event_dim)``.

    ``init`` is the constrained initial value (a tensor, or a zero-argument callable returning
    one); ``constraint`` a ``torch.distributions.constraints`` object; ``event_dim`` the number
    of rightmost dims that are not batch dims (for local parameters inside plates).
    """

    init_value: Any = None
    constraint: constraints.Constraint = constraints.real
    event_dim: int | None = None


class PyroSample(NamedTuple):
    """A random attribute: ``module.x = PyroSample(prior)``, where ``prior`` is a distribution or a
    function ``prior(module) -> distribution`` (priors that depend on other attributes)."""

    prior: Any


def _make_name(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class _Context:
    """Shared by a module and its submodules: how deep the calls are, and the values read
    (name -> tensor) during the outermost call."""

    __slots__ = ("active", "cache")

    def __init__(self) -> None:
        self.active = 0
        self.cache: dict[str, torch.Tensor] = {}

    def __enter__(self) -> None:
        self.active += 1

    def __exit__(self, *exc: Any) -> None:
        self.active -= 1
        if not self.active:
            self.cache.clear()

    def __deepcopy__(self, memo: dict) -> _Context:
        return _Context()


def _store() -> Any:
    from ember.params import get_param_store

    return get_param_store()


def _init_pyro_attrs(m: nn.Module, name: str) -> None:
    if "_pyro_params" in m.__dict__:  # PyroModule.__init__ reached twice through a mixin's MRO
        return
    object.__setattr__(m, "_pyro_name", name)
    object.__setattr__(m, "_pyro_context", _Context())
    object.__setattr__(m, "_pyro_samples", OrderedDict())
    object.__setattr__(m, "_pyro_params", OrderedDict())


class _PyroModuleMeta(type(nn.Module)):
    _mixin_cache: dict[type, type] = {}

    def __getitem__(cls, Module: type) -> type:
        if not (isinstance(Module, type) and issubclass(Module, nn.Module)):
            raise TypeError(f"PyroModule[...] expects a torch.nn.Module subclass, e.g. PyroModule[nn.Linear]; got {Module!r}")
        if issubclass(Module, PyroModule):
            return Module
        if Module is nn.Module:
            return PyroModule
        cache = _PyroModuleMeta._mixin_cache
        if Module not in cache:
            cache[Module] = _PyroModuleMeta(f"Pyro{Module.__name__}", (Module, PyroModule),
                                            {"__module__": Module.__module__, "__qualname__": f"PyroModule[{Module.__qualname__}]"})
        return cache[Module]


class PyroModule(nn.Module, metaclass=_PyroModuleMeta):
    """An ``nn.Module`` whose parameters live in Ember's parameter store under their module path
    and whose attributes may be :class:`PyroParam` or :class:`PyroSample`.

    :param name: the name of this module (the prefix of its sites); ``""`` for a top-level
        module, whose sites are then named by attribute paths (``"linear.weight"``).
    """

    def __init__(self, name: str = "") -> None:
        _init_pyro_attrs(self, name)
        super().__init__()

    # ---- naming -------------------------------------------------------------------------------
    def _pyro_set_supermodule(self, name: str, context: _Context) -> None:
        self._pyro_name = name
        self._pyro_context = context
        for key, child in self._modules.items():
            if isinstance(child, PyroModule):
                child._pyro_set_supermodule(_make_name(name, key), context)

    def add_module(self, name: str, module: nn.Module | None) -> None:
        """Register child ``module`` under ``name`` (as ``setattr`` does): a :class:`PyroModule`
        child takes the name ``"<this module's name>.<name>"`` and shares this module's context.
        Containers such as :class:`PyroModuleList` add their children this way."""
        if isinstance(module, PyroModule):
            module._pyro_set_supermodule(_make_name(self._pyro_name, name), self._pyro_context)
        super().add_module(name, module)

    def _pyro_get_fullname(self, name: str) -> str:
        return _make_name(self._pyro_name, name)

    def named_pyro_params(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, constrained value)`` of every :class:`PyroParam` (like ``named_parameters``); each
        value has the shape the parameter was given (the constrained shape)."""
        mods = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for mod_prefix, mod in mods:
            if isinstance(mod, PyroModule):
                for name in mod._pyro_params:
                    yield _make_name(mod_prefix, name), getattr(mod, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._pyro_context:
            return super().__call__(*args, **kwargs)

    # ---- attributes ---------------------------------------------------------------------------
    def __setattr__(self, name: str, value: Any) -> None:
        d = self.__dict__
        if "_pyro_params" not in d or "_parameters" not in d:  # before nn.Module.__init__ has run
            return super().__setattr__(name, value)
        if isinstance(value, PyroModule):
            value._pyro_set_supermodule(_make_name(self._pyro_name, name), self._pyro_context)
            self._pyro_forget(name)
            return super().__setattr__(name, value)
        if isinstance(value, PyroParam):
            init, constraint, event_dim = value
            if callable(init) and not isinstance(init, torch.Tensor):
                init = init()
            if init is None:
                raise ValueError(f"PyroParam '{self._pyro_get_fullname(name)}': give an initial value")
            if not isinstance(constraint, constraints.Constraint):
                raise TypeError(f"PyroParam '{self._pyro_get_fullname(name)}': constraint must be a "
                                f"torch.distributions.constraints object; got {constraint!r}")
            init = torch.as_tensor(init, dtype=None if isinstance(init, torch.Tensor) else torch.get_default_dtype())
            with torch.no_grad():
                if not bool(torch.as_tensor(constraint.check(init)).all()):
                    raise ValueError(f"PyroParam '{self._pyro_get_fullname(name)}': the initial value lies outside its "
                                     f"constraint {type(constraint).__name__.lstrip('_')}")
                u = transform_to(constraint).inv(init.detach()).clone()
            self._pyro_forget(name)
            self._pyro_forget_torch(name)
            super().__setattr__(name + "_unconstrained", nn.Parameter(u))
            self._pyro_params[name] = (constraint, event_dim)
            return None
        if isinstance(value, PyroSample):
            self._pyro_forget(name)
            self._pyro_forget_torch(name)
            self._pyro_samples[name] = value.prior
            return None
        if name in self._pyro_params and isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
            # a new constrained value for an existing PyroParam: written into its unconstrained tensor
            constraint = self._pyro_params[name][0]
            with torch.no_grad():
                getattr(self, name + "_unconstrained").copy_(transform_to(constraint).inv(value))
            return None
        self._pyro_forget(name)
        return super().__setattr__(name, value)

    def _pyro_forget(self, name: str) -> None:
        if name in self._pyro_params:
            del self._pyro_params[name]
            nn.Module.__delattr__(self, name + "_unconstrained")
        self._pyro_samples.pop(name, None)

    def _pyro_forget_torch(self, name: str) -> None:
        for table in ("_parameters", "_buffers", "_modules"):
            t = self.__dict__.get(table)
            if t is not None and name in t:
                del t[name]
        self.__dict__.pop(name, None)

    def __delattr__(self, name: str) -> None:
        if name in self.__dict__.get("_pyro_params", ()) or name in self.__dict__.get("_pyro_samples", ()):
            self._pyro_forget(name)
            return
        super().__delattr__(name)

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        pyro_params = d.get("_pyro_params")
        if pyro_params is not None:
            if name in pyro_params:
                return self._pyro_read_param(name, *pyro_params[name])
            prior = d["_pyro_samples"].get(name)
            if prior is not None:
                return self._pyro_read_sample(name, prior)
            params = d["_parameters"]
            if name in params and params[name] is not None and d["_pyro_context"].active:
                return self._pyro_read_torch_param(name)
        return super().__getattr__(name)

    def _pyro_sync(self, key: str, fullname: str, constraint: constraints.Constraint) -> nn.Parameter:
        """The module's parameter ``key`` after agreeing with the store on ``fullname``."""
        params = self.__dict__["_parameters"]
        mine = params[key]
        store = _store()
        held = store.unconstrained(fullname)
        if held is mine:
            return mine
        if held is None:
            store.bind(fullname, mine, constraint)
            return mine
        # the store already holds a value under this name (loaded, or another instance's): take it
        if held.shape != mine.shape:
            raise ValueError(f"PyroModule: the parameter store holds '{fullname}' with shape {tuple(held.shape)}, but the "
                             f"module's parameter has shape {tuple(mine.shape)}; clear it from the store "
                             f"(del ember.get_param_store()['{fullname}']) or load a matching store")
        if not isinstance(held, nn.Parameter):
            held = nn.Parameter(held.detach().to(dtype=mine.dtype, device=mine.device))
        params[key] = held
        store.bind(fullname, held, constraint)
        return held

    def _pyro_read_param(self, name: str, constraint: constraints.Constraint, event_dim: int | None) -> torch.Tensor:
        ctx = self._pyro_context
        key = name + "_unconstrained"
        if not ctx.active:
            return transform_to(constraint)(self.__dict__["_parameters"][key])
        fullname = self._pyro_get_fullname(name)
        cached = ctx.cache.get(fullname)
        if cached is not None:
            return cached
        from ember.primitives import param

        u = self._pyro_sync(key, fullname, constraint)
        value = param(fullname, u, constraint, event_dim)
        ctx.cache[fullname] = value
        return value

    def _pyro_read_torch_param(self, name: str) -> torch.Tensor:
        ctx = self._pyro_context
        fullname = self._pyro_get_fullname(name)
        cached = ctx.cache.get(fullname)
        if cached is not None:
            return cached
        from ember.primitives import param

        p = self._pyro_sync(name, fullname, constraints.real)
        value = param(fullname, p)
        ctx.cache[fullname] = value
        return value

    def _pyro_read_sample(self, name: str, prior: Any) -> torch.Tensor:
        from ember.primitives import sample

        ctx = self._pyro_context
        fullname = self._pyro_get_fullname(name)
        if ctx.active:
            cached = ctx.cache.get(fullname)
            if cached is not None:
                return cached
        if not isinstance(prior, torch.distributions.Distribution) and callable(prior):
            with ctx:  # a prior reading other attributes reads them in this call
                prior = prior(self)
                value = sample(fullname, prior)
                if ctx.active > 1:
                    ctx.cache[fullname] = value
            return value
        value = sample(fullname, prior)
        if ctx.active:
            ctx.cache[fullname] = value
        return value


class PyroModuleList(nn.ModuleList, PyroModule):
    """A :class:`torch.nn.ModuleList` that is a :class:`PyroModule` (``PyroModule[nn.ModuleList]``
    is this class): its :class:`PyroModule` children are named by their index under the list's
    name (``"layers.0.weight"`` for the list ``layers``), also when appended later. Indexing gives
    the child; a slice gives a plain ``torch.nn.ModuleList`` of the children (as Pyro does, so that
    slicing does not rename them).

    :param modules: the initial children (an iterable of ``nn.Module``).
    """

    def __init__(self, modules: Iterable[nn.Module] | None = None) -> None:
        _init_pyro_attrs(self, "")
        nn.ModuleList.__init__(self, modules)

    def __getitem__(self, idx: int | slice) -> nn.Module | nn.ModuleList:
        if isinstance(idx, slice):
            return nn.ModuleList(list(self._modules.values())[idx])
        return self._modules[self._get_abs_string_index(idx)]


_PyroModuleMeta._mixin_cache[nn.ModuleList] = PyroModuleList


def pyro_method(fn: Callable) -> Callable:
    """Decorate a ``PyroModule`` method other than ``forward`` so that it reads parameters and
    samples as a call of the module does (one cached value per site while it runs)."""

    @functools.wraps(fn)
    def wrapped(self: PyroModule, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(self, PyroModule):
            raise TypeError(f"pyro_method {fn.__name__!r} is for methods of a PyroModule; got a {type(self).__name__}")
        with self._pyro_context:
            return fn(self, *args, **kwargs)

    return wrapped


def to_pyro_module_(m: nn.Module, recurse: bool = True) -> None:
    """Turn ``m`` (and, with ``recurse``, its submodules) into ``PyroModule`` in place: the class
    becomes ``PyroModule[type(m)]``, the parameters keep their values and become store
    parameters under their module paths."""
    if not isinstance(m, nn.Module):
        raise TypeError(f"to_pyro_module_ expects a torch.nn.Module, got {type(m).__name__}")
    if not isinstance(m, PyroModule):
        m.__class__ = PyroModule[type(m)]
        _init_pyro_attrs(m, "")
    if recurse:
        for name, child in list(m._modules.items()):
            if child is not None:
                to_pyro_module_(child, recurse=True)
                setattr(m, name, child)
