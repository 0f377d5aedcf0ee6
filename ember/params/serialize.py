"""Safe, atomic checkpoint files.

Files are written with ``torch.save`` to a temporary file in the same directory,
flushed, fsynced and renamed over the target, so a crash mid-write leaves the previous
file intact. They are read with ``torch.load(weights_only=True)``, which admits only
tensors and plain containers: loading a file can never execute code. Constraints are
stored as plain-data specs, not as pickled objects.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from typing import Any, BinaryIO

import torch
from torch.distributions import constraints

__all__ = ["atomic_write", "atomic_save", "shared_file_mode", "safe_load", "constraint_to_spec", "constraint_from_spec", "CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, tampered with or of the wrong kind."""


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], mode: int | None = None) -> None:
    """Write ``path`` through ``write(file)`` on a temporary file in the same directory:
    flushed, fsynced, given ``mode`` (default: private, 0600, as ``mkstemp`` makes it), then
    renamed over ``path`` and the directory fsynced. A crash at any point leaves either the
    old file or the new one, never a partial file under ``path``."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
        with contextlib.suppress(OSError):
            dfd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, filename: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``filename`` through :func:`atomic_write`."""
    atomic_write(filename, lambda f: torch.save(obj, f))


def shared_file_mode() -> int:
    """The mode a plain new file gets under the current umask (for caches others may read)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def safe_load(filename: str | os.PathLike, map_location: Any = None, what: str = "checkpoint") -> Any:
    filename = os.fspath(filename)
    if not os.path.exists(filename):
        raise CheckpointError(f"{what} file not found: {filename}")
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure becomes one clear error
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            reason = "it contains Python objects other than tensors and plain data, which Ember refuses to unpickle"
        else:
            reason = f"it is truncated, corrupted or not a torch file ({msg})"
        raise CheckpointError(f"cannot load {what} from {filename}: {reason}") from None


# ---- constraints as plain data -------------------------------------------------------------

_SINGLETONS = {
    name: getattr(constraints, name)
    for name in dir(constraints)
    if not name.startswith("_") and isinstance(getattr(constraints, name), constraints.Constraint)
}
_SINGLETON_NAMES = {id(v): k for k, v in _SINGLETONS.items()}


def _num(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.tolist()
    return x


def constraint_to_spec(c: constraints.Constraint, param_name: str = "?") -> Any:
    """A plain-data description of constraint ``c`` (str, or a dict for parameterized ones)."""
    name = _SINGLETON_NAMES.get(id(c))
    if name is not None:
        return name
    if isinstance(c, constraints.independent):
        return {"type": "independent", "base": constraint_to_spec(c.base_constraint, param_name), "ndims": c.reinterpreted_batch_ndims}
    if isinstance(c, constraints.half_open_interval):
        return {"type": "half_open_interval", "lower": _num(c.lower_bound), "upper": _num(c.upper_bound)}
    if isinstance(c, constraints.interval):
        return {"type": "interval", "lower": _num(c.lower_bound), "upper": _num(c.upper_bound)}
    if isinstance(c, constraints.greater_than_eq):
        return {"type": "greater_than_eq", "lower": _num(c.lower_bound)}
    if isinstance(c, constraints.greater_than):
        return {"type": "greater_than", "lower": _num(c.lower_bound)}
    if isinstance(c, constraints.less_than):
        return {"type": "less_than", "upper": _num(c.upper_bound)}
    raise ValueError(f"param '{param_name}': cannot save constraint {c!r} as plain data; use one of torch.distributions.constraints")


def _tensor_or_num(x: Any) -> Any:
    return torch.tensor(x) if isinstance(x, list) else x


def constraint_from_spec(spec: Any) -> constraints.Constraint:
    if isinstance(spec, str):
        try:
            return _SINGLETONS[spec]
        except KeyError:
            raise CheckpointError(f"unknown constraint '{spec}' in checkpoint") from None
    if not isinstance(spec, dict) or "type" not in spec:
        raise CheckpointError(f"malformed constraint spec in checkpoint: {spec!r}")
    t = spec["type"]
    if t == "independent":
        return constraints.independent(constraint_from_spec(spec["base"]), spec["ndims"])
    if t == "interval":
        return constraints.interval(_tensor_or_num(spec["lower"]), _tensor_or_num(spec["upper"]))
    if t == "half_open_interval":
        return constraints.half_open_interval(_tensor_or_num(spec["lower"]), _tensor_or_num(spec["upper"]))
    if t == "greater_than":
        return constraints.greater_than(_tensor_or_num(spec["lower"]))
    if t == "greater_than_eq":
        return constraints.greater_than_eq(_tensor_or_num(spec["lower"]))
    if t == "less_than":
        return constraints.less_than(_tensor_or_num(spec["upper"]))
    raise CheckpointError(f"unknown constraint type '{t}' in checkpoint")
