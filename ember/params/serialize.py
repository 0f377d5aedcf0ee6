"""Safe, atomic, checksummed checkpoint files.

Files are written with ``torch.save`` to a temporary file in the same directory,
flushed, fsynced and renamed over the target, so a crash mid-write leaves the previous
file intact. They are read with ``torch.load(weights_only=True)``, which admits only
tensors and plain containers: loading a file can never execute code. Constraints are
stored as plain-data specs, not as pickled objects.

Parameter-store and optimizer files (:func:`save_digested` / :func:`load_digested`) are a
three-line header followed by the ``torch.save`` bytes::

    ember-file 2\n
    <kind, e.g. ember.param_store>\n
    sha256:<64 hex digits of SHA-256 over the kind line and the payload bytes>\n
    <torch.save payload>

Every byte of the file is covered: a flipped bit in the header makes it unreadable as an
Ember file, one in the payload fails the checksum, and either is a :class:`CheckpointError`
before anything is unpickled. Files written before the header (a bare ``torch.save`` zip,
format version 1) still load, with a :class:`UnverifiedCheckpointWarning`: nothing can
tell a flipped bit in them from a saved value, so they are checked only for form.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import warnings
from collections.abc import Callable
from typing import Any, BinaryIO

import torch
from torch.distributions import constraints

__all__ = [
    "CheckpointError",
    "UnverifiedCheckpointWarning",
    "atomic_save",
    "atomic_write",
    "constraint_from_spec",
    "constraint_to_spec",
    "content_digest",
    "load_digested",
    "safe_load",
    "save_digested",
    "shared_file_mode",
    "validate_param_store_state",
]

FILE_MAGIC = b"ember-file 2\n"
TMP_SUFFIX = ".tmp"  # atomic_write's temporary files: ".<name>.<random>.tmp" beside the target


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, tampered with or of the wrong kind."""


class UnverifiedCheckpointWarning(UserWarning):
    """A file written before Ember checksummed it was loaded: it could not be verified."""


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], mode: int | None = None) -> None:
    """Write ``path`` through ``write(file)`` on a temporary file in the same directory:
    flushed, fsynced, given ``mode`` (default: private, 0600, as ``mkstemp`` makes it), then
    renamed over ``path`` and the directory fsynced. A crash at any point leaves either the
    old file or the new one, never a partial file under ``path``."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=TMP_SUFFIX, dir=d)
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
    """``torch.save(obj)`` to ``filename`` through :func:`atomic_write`.

    A failing write (no space, ...) surfaces as the ``OSError`` it is, not as the
    ``unexpected pos`` ``RuntimeError`` torch's zip writer makes of it."""

    def write(f: BinaryIO) -> None:
        w = _WriteErrors(f)
        try:
            torch.save(obj, w)
        except RuntimeError:
            if w.error is not None:
                raise w.error from None
            raise

    atomic_write(filename, write)


class _WriteErrors:
    """A file proxy that remembers the first ``OSError`` its ``write`` raised (torch hides it)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.error: OSError | None = None

    def write(self, b: Any) -> int:
        try:
            return self._f.write(b)
        except OSError as e:
            if self.error is None:
                self.error = e
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def shared_file_mode() -> int:
    """The mode a plain new file gets under the current umask (for caches others may read)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def safe_load(filename: str | os.PathLike | io.BytesIO, map_location: Any = None, what: str = "checkpoint",
              name: str | None = None) -> Any:
    """``torch.load(filename, weights_only=True)``; every failure is one :class:`CheckpointError`
    naming the file (``name``, for an in-memory ``filename``)."""
    if not isinstance(filename, io.BytesIO):
        filename = os.fspath(filename)
        if not os.path.exists(filename):
            raise CheckpointError(f"{what} file not found: {filename}")
    shown = name if name is not None else filename
    try:
        return torch.load(filename, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure becomes one clear error
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            reason = "it contains Python objects other than tensors and plain data, which Ember refuses to unpickle"
        else:
            reason = f"it is truncated, corrupted or not a torch file ({msg})"
        raise CheckpointError(f"cannot load {what} from {shown}: {reason}") from None


# ---- checksummed files ---------------------------------------------------------------------


def _feed(h: Any, obj: Any) -> None:
    """Hash ``obj`` (plain data) into ``h``: type tags, lengths, shapes and dtypes included, dict order kept."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(b"D%d;" % len(obj))
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(b"%c%d;" % (b"L" if isinstance(obj, list) else b"U", len(obj)))
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, str):
        b = obj.encode("utf-8", "surrogatepass")
        h.update(b"S%d;" % len(b) + b)
    elif isinstance(obj, (bytes, bytearray)):
        h.update(b"B%d;" % len(obj) + bytes(obj))
    elif obj is None or isinstance(obj, bool):
        h.update(repr(obj).encode() + b";")
    elif isinstance(obj, int):
        h.update(b"I%d;" % obj)
    elif isinstance(obj, float):
        h.update(b"F" + obj.hex().encode() + b";")
    else:  # torch.Size, torch.dtype, torch.device, ...: whatever weights_only loading admits
        h.update(f"O{type(obj).__qualname__}:{obj!r};".encode())


def content_digest(obj: Any) -> str:
    """``"sha256:<hex>"`` of plain data ``obj`` as loaded (tensors by dtype, shape and bytes; dict order kept)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return "sha256:" + h.hexdigest()


def _file_digest(kind: bytes, payload: bytes) -> bytes:
    return b"sha256:" + hashlib.sha256(kind + b"\n" + payload).hexdigest().encode()


def save_digested(obj: Any, filename: str | os.PathLike, kind: str) -> None:
    """Write ``obj`` (plain data) to ``filename`` atomically, as the header (magic, ``kind``,
    SHA-256) and the ``torch.save`` bytes; :func:`load_digested` checks every byte."""
    if "\n" in kind or not kind:
        raise ValueError(f"save_digested: kind must be one non-empty line, got {kind!r}")
    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    k = kind.encode()
    header = FILE_MAGIC + k + b"\n" + _file_digest(k, payload) + b"\n"
    atomic_write(filename, lambda f: (f.write(header), f.write(payload)))


def load_digested(filename: str | os.PathLike, kind: str, map_location: Any = None, what: str = "checkpoint",
                  kinds: dict[str, str] | None = None) -> Any:
    """Read a file :func:`save_digested` wrote for ``kind``; return its object.

    :class:`CheckpointError` (one line naming the file) if it is missing, not an Ember file,
    of another kind (named by ``kinds``, kind -> hint, when known), or if any byte differs from
    what was written (the checksum). A file without the header (written by Ember before
    checksums, a bare ``torch.save``) loads with an :class:`UnverifiedCheckpointWarning`.
    """
    filename = os.fspath(filename)
    try:
        with open(filename, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CheckpointError(f"{what} file not found: {filename}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {what} file {filename}: {e.strerror or e}") from None
    if not data.startswith(FILE_MAGIC):
        if data.startswith(b"PK\x03\x04"):  # a bare torch.save zip: an older Ember file
            warnings.warn(f"{filename}: {what} written without a checksum (an older Ember); loading it unverified. "
                          f"Save it again to add one.", UnverifiedCheckpointWarning, stacklevel=3)
            return safe_load(filename, map_location=map_location, what=what)
        raise CheckpointError(f"cannot load {what} from {filename}: not an Ember file (its first bytes are {data[:16]!r}; "
                              f"expected {FILE_MAGIC!r}): corrupted, or some other file")
    rest = data[len(FILE_MAGIC):]
    parts = rest.split(b"\n", 2)
    if len(parts) < 3:
        raise CheckpointError(f"cannot load {what} from {filename}: truncated header")
    got_kind, digest, payload = parts
    if got_kind != kind.encode():
        try:
            shown = got_kind.decode()
        except UnicodeDecodeError:
            shown = repr(got_kind)
        hint = (kinds or {}).get(shown, "")
        raise CheckpointError(f"cannot load {what} from {filename}: it holds {shown!r}, not {kind!r}{hint}")
    if digest != _file_digest(got_kind, payload):
        raise CheckpointError(f"cannot load {what} from {filename}: its contents do not match the checksum saved with "
                              f"them (the file was corrupted or changed after it was written)")
    return safe_load(io.BytesIO(payload), map_location=map_location, what=what, name=filename)


def validate_param_store_state(state: Any, where: str) -> None:
    """:class:`CheckpointError` naming ``where`` and the entry unless ``state`` is what
    ``ParamStoreDict.get_state`` returns: ``{"params": {name: floating-point finite tensor},
    "constraints": {name: constraint spec}}`` with a constraint only for stored names."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: malformed parameter store (a {type(state).__name__}, expected a dict)")
    params, specs = state.get("params"), state.get("constraints")
    if not isinstance(params, dict) or not isinstance(specs, dict):
        raise CheckpointError(f"{where}: malformed parameter store: 'params' and 'constraints' must be dicts, got "
                              f"{type(params).__name__} and {type(specs).__name__}")
    for name, u in params.items():
        if not isinstance(name, str):
            raise CheckpointError(f"{where}: malformed parameter store: parameter name {name!r} is not a string")
        if not isinstance(u, torch.Tensor):
            raise CheckpointError(f"{where}: malformed parameter store: param '{name}' is a {type(u).__name__}, not a tensor")
        if not u.is_floating_point():
            raise CheckpointError(f"{where}: malformed parameter store: param '{name}' has dtype {u.dtype}; "
                                  f"parameters are floating-point tensors")
        if not bool(torch.isfinite(u).all()):
            raise CheckpointError(f"{where}: malformed parameter store: param '{name}' holds non-finite values")
    extra = sorted(str(k) for k in specs if k not in params)
    if extra:
        raise CheckpointError(f"{where}: malformed parameter store: constraints for parameters it does not hold: {extra[:5]}")
    for name, spec in specs.items():
        try:
            constraint_from_spec(spec)
        except CheckpointError as e:
            raise CheckpointError(f"{where}: malformed parameter store: param '{name}': {e}") from None


# ---- constraints as plain data -------------------------------------------------------------

_SINGLETONS = {
    name: getattr(constraints, name)
    for name in dir(constraints)
    if not name.startswith("_") and isinstance(getattr(constraints, name), constraints.Constraint)
}

def _add_ember_singletons() -> None:
    """Ember's own singletons (``softplus_positive``, ``unit_lower_cholesky``, ...): autoguide scales
    use them, and ``softplus_positive`` must not be saved as the ``greater_than(0)`` it subclasses."""
    from ember.distributions import constraints as ember_constraints

    known = {id(v) for v in _SINGLETONS.values()}
    for name in dir(ember_constraints):
        c = getattr(ember_constraints, name)
        if not name.startswith("_") and isinstance(c, constraints.Constraint) and id(c) not in known:
            _SINGLETONS[name] = c
            known.add(id(c))


_add_ember_singletons()
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


def constraint_from_spec(spec: Any) -> constraints.Constraint:
    """The constraint a :func:`constraint_to_spec` spec describes; :class:`CheckpointError` if it is malformed."""
    try:
        return _constraint_from_spec(spec)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"malformed constraint spec in checkpoint: {spec!r} ({type(e).__name__}: {e})") from None


def _bound(x: Any) -> Any:
    """A constraint bound from a spec: a number, or a list of numbers (a tensor)."""
    if isinstance(x, bool) or not isinstance(x, (int, float, list)):
        raise TypeError(f"a bound must be a number or a list of numbers, got {type(x).__name__}")
    return torch.tensor(x) if isinstance(x, list) else x


def _constraint_from_spec(spec: Any) -> constraints.Constraint:
    if isinstance(spec, str):
        try:
            return _SINGLETONS[spec]
        except KeyError:
            raise CheckpointError(f"unknown constraint '{spec}' in checkpoint") from None
    if not isinstance(spec, dict) or "type" not in spec:
        raise CheckpointError(f"malformed constraint spec in checkpoint: {spec!r}")
    t = spec["type"]
    if t == "independent":
        ndims = spec["ndims"]
        if isinstance(ndims, bool) or not isinstance(ndims, int) or ndims < 0:
            raise TypeError(f"ndims must be an integer >= 0, got {ndims!r}")
        return constraints.independent(_constraint_from_spec(spec["base"]), ndims)
    if t == "interval":
        return constraints.interval(_bound(spec["lower"]), _bound(spec["upper"]))
    if t == "half_open_interval":
        return constraints.half_open_interval(_bound(spec["lower"]), _bound(spec["upper"]))
    if t == "greater_than":
        return constraints.greater_than(_bound(spec["lower"]))
    if t == "greater_than_eq":
        return constraints.greater_than_eq(_bound(spec["lower"]))
    if t == "less_than":
        return constraints.less_than(_bound(spec["upper"]))
    raise CheckpointError(f"unknown constraint type {t!r} in checkpoint")
