"""The language: ``sample``, ``param``, ``module``, ``plate``, ``factor``, ``deterministic``, ..."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.distributions import constraints

from ember.distributions.torch_dist import TorchDistributionMixin as _Mixin
from ember.params import _PARAM_STORE, clear_param_store, get_param_store
from ember.poutine.plate_messenger import PlateMessenger, plate
from ember.poutine.seed_messenger import set_rng_seed
from ember.poutine.util import _obs_to_tensor
from ember.runtime import _STACK, _VALIDATION, Message, apply_stack

__all__ = [
    "sample",
    "param",
    "module",
    "plate",
    "iarange",
    "irange",
    "factor",
    "deterministic",
    "set_rng_seed",
    "get_param_store",
    "clear_param_store",
    "enable_validation",
    "validation_enabled",
]

_Distribution = torch.distributions.Distribution


_EMBER_CLASSES: dict = {}


def _as_ember_distribution(fn: Any) -> Any:
    """A copy of a plain ``torch.distributions`` object with Ember's extensions."""
    import copy

    cls = type(fn)
    new_cls = _EMBER_CLASSES.get(cls)
    if new_cls is None:
        import ember.distributions as edist

        new_cls = getattr(edist, cls.__name__, None)
        if not (isinstance(new_cls, type) and new_cls.__bases__[-1] is cls):
            new_cls = type(cls.__name__, (_Mixin, cls), {"__module__": cls.__module__})
        _EMBER_CLASSES[cls] = new_cls
    new = copy.copy(fn)
    new.__class__ = new_cls
    return new


def _not_a_distribution(name: str, fn: Any) -> TypeError:
    hint = ""
    if isinstance(fn, type):
        hint = (
            f" You passed the class {fn.__name__} itself; instantiate it with its parameters, e.g. "
            f"sample('{name}', dist.{fn.__name__}(...)). (The 2017 form sample(name, dist.normal, mu, sigma) is not supported.)"
        )
    elif callable(fn):
        hint = " A plain function cannot be a sample site's distribution: it needs a log_prob to be scored."
    return TypeError(f"sample site '{name}': expected a distribution (e.g. dist.Normal(0., 1.)), got {fn!r}.{hint}")


def sample(name: str, fn: Any, *args: Any, obs: Any = None, obs_mask: Any = None, infer: dict | None = None, **kwargs: Any) -> torch.Tensor:
    """Draw a value named ``name`` from distribution ``fn`` (or, with ``obs``, observe
    ``obs`` under it). Handlers may intercept the site: ``condition`` fixes its value,
    ``trace`` records it, ``replay`` reuses a recorded value, ...

    ``obs`` may be a tensor, a Python number or a numpy array. ``infer`` holds options
    for inference algorithms (e.g. ``{"baseline": {...}}`` for ``TraceGraph_ELBO``).

    Shapes: the value has shape ``fn.batch_shape + fn.event_shape`` once the enclosing plates
    have expanded the distribution (each plate's dim, at its subsample size, where the batch
    shape has 1 or nothing); an ``obs`` must broadcast to that shape without growing it. Under
    vectorized particles, samples or chains, more batch dims appear on the left.

    ``obs_mask`` (a bool tensor broadcastable to the batch shape) observes ``obs`` only where it is
    True and imputes the rest, as Pyro does, with three sites: ``name + "_observed"`` (observed,
    its log-density masked to the True entries), ``name + "_unobserved"`` (a latent the guide
    should sample, masked to the False entries) and ``name`` (a deterministic site: ``obs`` where
    the mask is True, the imputed draw elsewhere), whose value is returned.
    """
    if obs_mask is not None:
        return _masked_observe(name, fn, obs, obs_mask, infer, args, kwargs)
    if obs is not None and not isinstance(obs, torch.Tensor):
        try:
            obs = _obs_to_tensor(obs, fn)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(
                f"sample site '{name}': the observation must be numeric (a tensor, a number, a list or a numpy array of "
                f"numbers); got {type(obs).__name__} {obs!r:.80}"
            ) from e
    err = getattr(fn, "_ember_arg_error", None)
    if err is not None:
        raise ValueError(f"sample site '{name}': the distribution {type(fn).__name__} got an invalid argument. {err}") from err
    if not isinstance(fn, _Distribution):
        if isinstance(fn, type) or not (hasattr(fn, "log_prob") and callable(fn)):
            raise _not_a_distribution(name, fn)
    elif not isinstance(fn, _Mixin):
        fn = _as_ember_distribution(fn)
    if not _STACK:
        # no handler active: just draw (or return the observation)
        if obs is not None:
            return obs
        return fn(*args, **kwargs)
    msg = Message("sample", name, fn, args, kwargs, obs, obs is not None, infer)
    apply_stack(msg)
    return msg.value


def _masked_observe(name: str, fn: Any, obs: Any, obs_mask: Any, infer: dict | None, args: tuple, kwargs: dict) -> torch.Tensor:
    """``sample(name, fn, obs=obs, obs_mask=obs_mask)``: split into an observed, an unobserved and a
    deterministic site (see :func:`sample`)."""
    from ember.poutine.scale_messenger import MaskMessenger

    if not isinstance(obs_mask, torch.Tensor) or obs_mask.dtype != torch.bool:
        what = f"a tensor of dtype {obs_mask.dtype}" if isinstance(obs_mask, torch.Tensor) else f"{type(obs_mask).__name__} {obs_mask!r:.60}"
        raise TypeError(f"sample site '{name}': obs_mask must be a bool tensor (True: observed, False: imputed); got {what}")
    event_dim = len(getattr(fn, "event_shape", ()))
    with MaskMessenger(mask=obs_mask):
        observed = sample(f"{name}_observed", fn, *args, obs=obs, infer=infer, **kwargs)
    with MaskMessenger(mask=~obs_mask):
        unobserved = sample(f"{name}_unobserved", fn, *args, infer=infer, **kwargs)
    batch_mask = obs_mask.reshape(obs_mask.shape + (1,) * event_dim)
    try:
        value = torch.where(batch_mask, observed, unobserved)
    except RuntimeError as e:
        raise ValueError(
            f"sample site '{name}': obs_mask of shape {tuple(obs_mask.shape)} does not broadcast with the site's value of "
            f"shape {tuple(unobserved.shape)} (event shape {tuple(fn.event_shape)}); the mask covers the batch dims only"
        ) from e
    return deterministic(name, value, event_dim=event_dim)


class _ParamGetter:
    """The ``fn`` of a param message: looks the value up in the store."""

    __slots__ = ()

    def __call__(self, name: str, init_tensor: Any = None, constraint: Any = constraints.real, event_dim: Any = None) -> torch.Tensor:
        return _PARAM_STORE.get_param(name, init_tensor, constraint, event_dim)


_get_param = _ParamGetter()


def param(name: str, init_tensor: Any = None, constraint: constraints.Constraint = constraints.real, event_dim: int | None = None) -> torch.Tensor:
    """The learnable parameter ``name``: created from ``init_tensor`` (a tensor, number
    or zero-argument callable) on the first call, then returned from the store.
    With ``constraint`` the store keeps an unconstrained tensor and returns its
    constrained image. ``event_dim`` marks the rightmost dims that are not batch dims
    (for local parameters inside plates)."""
    if not _STACK:
        return _PARAM_STORE.get_param(name, init_tensor, constraint, event_dim)
    msg = Message("param", name, _get_param, (name, init_tensor, constraint, event_dim), None)
    apply_stack(msg)
    return msg.value


def module(name: str, nn_module: torch.nn.Module, update_module_params: bool = False) -> torch.nn.Module:
    """Register the parameters of ``nn_module`` as ``name$$$<path>`` params (so that
    inference trains them) and return the module.

    The store holds the module's own ``nn.Parameter`` objects, so the module and the
    store never diverge. If the store already holds values under these names that
    belong to no live module (e.g. loaded from a checkpoint), or
    ``update_module_params=True``, those values are copied into ``nn_module``. If they
    belong to a *different* module object registered earlier under the same name, the
    new module's parameters replace them and a warning says so (Pyro would silently
    keep training the old tensors).
    """
    if not isinstance(nn_module, torch.nn.Module):
        raise TypeError(f"module '{name}': expected a torch.nn.Module, got {type(nn_module).__name__}")
    plist = _PARAM_STORE._register_module(name, nn_module, update_module_params)
    if _STACK:
        # each parameter is a param site: inference steps what its traces see
        for full, _ in plist:
            msg = Message("param", full, _get_param, (full, None, constraints.real, None), None)
            apply_stack(msg)
    return nn_module


def random_module(name: str, nn_module: torch.nn.Module, prior: Any, *args: Any, **kwargs: Any) -> Callable:
    """Return a function that samples a copy of ``nn_module`` with its parameters drawn
    from ``prior`` (a distribution or dict of them), via ``poutine.lift``."""
    from ember.poutine import lift

    def _fn() -> torch.nn.Module:
        import copy

        nn_copy = copy.deepcopy(nn_module)
        with lift(prior=prior):
            for pname, p in list(nn_copy.named_parameters()):
                full = f"{name}$$${pname}"
                value = param(full, p.detach())
                _set_module_tensor(nn_copy, pname, value)
        return nn_copy

    return _fn


def _set_module_tensor(m: torch.nn.Module, path: str, value: torch.Tensor) -> None:
    *parents, leaf = path.split(".")
    for p in parents:
        m = getattr(m, p)
    del m._parameters[leaf]
    setattr(m, leaf, value)


def factor(name: str, log_factor: Any, *, has_rsample: bool | None = None) -> None:
    """Add ``log_factor`` (a tensor, batched along active plates) to the log-density as an
    observed ``Unit`` site named ``name`` (marked ``infer={"is_auxiliary": True}``, as in Pyro).

    In a model it is a term of ``log p``; in a guide a term of ``log q``, subtracted in every
    ELBO. A guide factor must say how its gradient is estimated: ``has_rsample=True`` when it
    arises from reparameterized sampling (differentiated pathwise), ``False`` otherwise (a
    score-function term); without it the ELBOs' model/guide check raises ``ValueError``."""
    from ember.distributions import Unit

    if not isinstance(log_factor, torch.Tensor):
        log_factor = torch.as_tensor(log_factor, dtype=torch.get_default_dtype())
    if has_rsample is not None and not isinstance(has_rsample, bool):
        raise TypeError(f"factor('{name}'): has_rsample must be True, False or None; got {has_rsample!r}")
    unit = Unit(log_factor, has_rsample=has_rsample)
    sample(name, unit, obs=unit.sample(), infer={"is_auxiliary": True})


def deterministic(name: str, value: torch.Tensor, event_dim: int | None = None) -> torch.Tensor:
    """Record ``value`` under ``name`` in traces (as an observed point mass with zero
    log-density) and return it unchanged (same shape). Its rightmost ``event_dim`` dims
    (default: all of them) are the event; the dims left of those are batch dims, which
    must agree with the enclosing plates."""
    from ember.distributions import Delta

    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(value, dtype=torch.get_default_dtype())
    if not _STACK:
        return value
    event_dim = value.dim() if event_dim is None else event_dim
    return sample(name, Delta(value, event_dim=event_dim).mask(False), obs=value, infer={"_deterministic": True})


def iarange(name: str, size: int | None = None, subsample_size: int | None = None, subsample: Any = None, dim: int | None = None, use_cuda: bool | None = None, device: Any = None) -> PlateMessenger:
    """Old name of :func:`plate` (vectorized)."""
    return plate(name, size, subsample_size, subsample, dim, use_cuda, device)


irange = iarange  # old name of the sequential ``for i in plate(...)``: the same object serves both


def enable_validation(is_validate: bool = True) -> None:
    """Switch Ember's checks (shapes, model/guide structure, finite losses) and torch's
    distribution validation on or off. On by default; off for the last few percent of
    speed once a model is known to be right."""
    from ember.distributions import enable_validation as dist_enable_validation

    _VALIDATION[0] = bool(is_validate)
    dist_enable_validation(is_validate)


class validation_enabled:
    """Context manager: ``with validation_enabled(False): ...``."""

    def __init__(self, is_validate: bool = True) -> None:
        self.is_validate = is_validate

    def __enter__(self) -> None:
        self._old = (_VALIDATION[0], bool(torch.distributions.Distribution._validate_args))
        enable_validation(self.is_validate)

    def __exit__(self, *exc: Any) -> None:
        _VALIDATION[0] = self._old[0]
        torch.distributions.Distribution.set_default_validate_args(self._old[1])


# ---- Pyro's plate_stack and subsample (issue 11 point 7) ---------------------------------------
import contextlib  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402


@contextlib.contextmanager
def plate_stack(prefix: str, sizes: Sequence[int], rightmost_dim: int = -1) -> Iterator[None]:
    """A contiguous stack of plates named ``f"{prefix}_{i}"``, one per entry of ``sizes``
    (leftmost first), at dims ``rightmost_dim - len(sizes) + 1, ..., rightmost_dim``: inside,
    a site with no batch shape is broadcast to ``sizes``. ``rightmost_dim`` is negative."""
    if not isinstance(rightmost_dim, int) or rightmost_dim >= 0:
        raise ValueError(f"plate_stack('{prefix}'): rightmost_dim must be a negative integer; got {rightmost_dim!r}")
    with contextlib.ExitStack() as stack:
        for i, size in enumerate(reversed(list(sizes))):
            stack.enter_context(plate(f"{prefix}_{i}", size, dim=rightmost_dim - i))
        yield


def subsample(data: torch.Tensor, event_dim: int) -> torch.Tensor:
    """``data`` restricted to the subsample indices of the enclosing subsampling plates: along
    each such plate's dim (counted left of the ``event_dim`` rightmost dims), a dim of the
    plate's full size is indexed by the plate's indices; a dim already of the subsample size
    (or 1, or missing) is left as it is. Outside subsampling plates ``data`` is returned.
    Lets a model take full-size data while its plates draw (or replay) minibatches."""
    if not isinstance(event_dim, int) or event_dim < 0:
        raise ValueError(f"subsample: event_dim must be a non-negative integer; got {event_dim!r}")
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"subsample: data must be a tensor; got {type(data).__name__}")
    for frame in list(_STACK):
        if not isinstance(frame, PlateMessenger) or frame.dim is None or frame.subsample is None:
            continue
        dim = frame.dim - event_dim
        if -dim > data.dim():
            continue
        n = data.size(dim)
        if n == frame.size and n != frame.subsample_size:
            data = data.index_select(dim, frame.subsample.to(device=data.device))
        elif n not in (1, frame.subsample_size):
            raise ValueError(
                f"subsample: data of shape {tuple(data.shape)} has size {n} at dim {dim} (plate '{frame.name}' dim "
                f"{frame.dim}, event_dim={event_dim}); expected the plate's full size {frame.size} or its subsample size "
                f"{frame.subsample_size}"
            )
    return data


__all__ += ["plate_stack", "subsample"]


def barrier(data: Any) -> Any:
    """Pyro's ``barrier`` (for ``poutine.collapse``'s lazy values): an effect site of type
    ``"barrier"`` that returns ``data`` as it is (Ember's values are never lazy)."""
    from ember.poutine.runtime import effectful

    return effectful(_identity, type="barrier")(data)


def _identity(data: Any) -> Any:
    return data


__all__ += ["barrier"]
