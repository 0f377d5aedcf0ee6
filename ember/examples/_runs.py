"""Run directories, metrics, checkpoints and reproducible RNG for Ember's command-line examples.

Shared by ``ember vae`` (and the AIR example to come). Everything a checkpoint holds is plain
data (tensors, numbers, strings, lists, dicts), so it is written with
:func:`ember.params.serialize.atomic_save` and read back with ``torch.load(weights_only=True)``
(:func:`ember.params.serialize.safe_load`): loading a checkpoint never runs code.

- :func:`make_run_dir`, :func:`find_latest_run`: one directory per run (``runs/<name>-<time>``).
- :class:`MetricsLog`: ``metrics.jsonl``, one JSON object per line, truncated on resume to
  what the checkpoint covers.
- :func:`rng_state` / :func:`set_rng_state`: torch (CPU and CUDA), numpy and ``random`` states
  as tensors and lists.
- :func:`epoch_generator`: a ``torch.Generator`` seeded from ``(seed, epoch)``, so an epoch's
  data order does not depend on what ran before it (a resumed run sees the same batches).
- :func:`save_checkpoint` / :func:`load_checkpoint`: one file, a format tag, a version and a
  SHA-256 digest of the contents. ``torch.load`` notices a damaged archive or pickle, but not
  flipped bytes inside a tensor's data (those load as other numbers); the digest does, so a
  checkpoint either loads exactly as it was saved or raises :class:`CheckpointError`.
  Version-1 files (written before the digest) still load, unchecked.
- :func:`resolve_device`, :class:`UsageError`: clear errors for the command line.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ember.params.serialize import CheckpointError, atomic_save, safe_load

__all__ = [
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "CheckpointError",
    "MetricsLog",
    "checkpoint_digest",
    "UsageError",
    "epoch_generator",
    "find_latest_run",
    "load_checkpoint",
    "make_run_dir",
    "resolve_device",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
_CHECKPOINT_VERSION = 2  # 2: with "digest"; 1: without


class UsageError(ValueError):
    """A problem with the command line or the environment, reported as one line with exit code 2."""


# ---- run directories ---------------------------------------------------------------------------


def make_run_dir(out: str | os.PathLike | None, name: str, root: str | os.PathLike = "runs", create: bool = True) -> Path:
    """``out`` if given, else ``<root>/<name>-<YYYYmmdd-HHMMSS>`` (suffixed ``-2``, ``-3``... if taken).

    Created unless ``create=False`` (then the caller creates it, e.g. once the data has loaded).
    """
    if out is not None:
        path = Path(out)
    else:
        base = Path(root) / time.strftime(f"{name}-%Y%m%d-%H%M%S")
        path, k = base, 1
        while path.exists():
            k += 1
            path = base.with_name(f"{base.name}-{k}")
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def find_latest_run(name: str, root: str | os.PathLike = "runs") -> Path | None:
    """The most recently modified ``<root>/<name>-*`` directory holding a checkpoint, or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    runs = [p for p in root.glob(f"{name}-*") if (p / CHECKPOINT_NAME).is_file()]
    return max(runs, key=lambda p: (p / CHECKPOINT_NAME).stat().st_mtime) if runs else None


# ---- metrics -----------------------------------------------------------------------------------


def resolve_resume(out: str | None, resume: str | None, name: str) -> tuple[Path, Path | None]:
    """The run directory and, with ``--resume`` (``resume`` not None; ``""`` for a bare
    ``--resume``), the checkpoint file to continue from: ``resume`` or ``out`` as a run
    directory or a checkpoint file, else the latest ``runs/<name>-*`` with a checkpoint."""
    if resume is None:
        return make_run_dir(out, name, create=False), None
    where = resume or out
    if not where:
        latest = find_latest_run(name)
        if latest is None:
            raise UsageError(f"--resume: no run directory given (--resume RUN_DIR or --out RUN_DIR) and no runs/{name}-* with a checkpoint")
        where = str(latest)
    path = Path(where)
    ckpt_path = path if path.is_file() else path / CHECKPOINT_NAME
    if out is not None and resume and Path(out).resolve() != ckpt_path.parent.resolve():
        raise UsageError(f"--resume {resume} and --out {out} name different run directories")
    return ckpt_path.parent, ckpt_path


class MetricsLog:
    """Append-only JSON-lines metrics file (``<run>/metrics.jsonl``); each record is flushed at once."""

    def __init__(self, run_dir: str | os.PathLike, name: str = METRICS_NAME) -> None:
        self.path = Path(run_dir) / name

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def read(self) -> list[dict[str, Any]]:
        """The records written so far (a torn last line, from a crash mid-write, is skipped)."""
        if not self.path.is_file():
            return []
        out = []
        with open(self.path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def truncate(self, key: str, last: int) -> None:
        """Keep only records whose ``record[key] <= last`` (used on resume: drop what the checkpoint lost)."""
        if not self.path.is_file():
            return
        kept = [r for r in self.read() if isinstance(r.get(key), (int, float)) and r[key] <= last]
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w") as f:
            for r in kept:
                f.write(json.dumps(r) + "\n")
        os.replace(tmp, self.path)


# ---- RNG -----------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """The global RNG states of torch (CPU, and every CUDA device if initialised), numpy and ``random``, as plain data."""
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "random": {"version": int(py_version), "state": [int(v) for v in py_state], "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    try:
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
        r = state["random"]
        random.setstate((r["version"], tuple(r["state"]), r["gauss_next"]))
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"malformed RNG state in checkpoint ({type(e).__name__}: {e})") from None
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``(seed, epoch)`` alone (via numpy's SeedSequence).

    Shuffling epoch ``epoch`` with it gives the same order whether or not the run was
    interrupted and resumed before it.
    """
    ss = np.random.SeedSequence([int(seed) % (2**63), int(epoch)])
    g = torch.Generator()
    g.manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] % (2**63)))
    return g


# ---- checkpoints ---------------------------------------------------------------------------------


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


def checkpoint_digest(state: dict[str, Any]) -> str:
    """``"sha256:<hex>"`` of a checkpoint's contents (every key but ``"digest"``), as loaded, not as bytes on disk."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "digest"})
    return "sha256:" + h.hexdigest()


def save_checkpoint(path: str | os.PathLike, kind: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plain data only) to ``path`` atomically, tagged ``kind`` (e.g. ``"ember.vae"``)
    and with the :func:`checkpoint_digest` of the whole, which :func:`load_checkpoint` checks."""
    state = {"format": kind, "version": _CHECKPOINT_VERSION, **payload}
    state["digest"] = checkpoint_digest(state)
    atomic_save(state, path)


def load_checkpoint(path: str | os.PathLike, kind: str, required: tuple[str, ...] = (), map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` for ``kind``; raise :class:`CheckpointError`
    (one clear line) if it is missing, truncated, tampered with, of another kind or lacks a ``required`` key."""
    state = safe_load(path, map_location=map_location, what=f"{kind} checkpoint")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not an Ember checkpoint (a {type(state).__name__}, not a dict)")
    digest = state.get("digest")
    if digest is not None and (not isinstance(digest, str) or checkpoint_digest(state) != digest):
        raise CheckpointError(f"cannot load {kind} checkpoint from {path}: its contents do not match the checksum "
                              "saved with them (the file was corrupted or tampered with after it was written)")
    if state.get("format") != kind:
        raise CheckpointError(f"{path}: not a {kind} checkpoint (format tag {state.get('format')!r})")
    version = state.get("version")
    if not isinstance(version, int) or version > _CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint version {version!r} (this Ember reads <= {_CHECKPOINT_VERSION})")
    if version >= 2 and digest is None:
        raise CheckpointError(f"cannot load {kind} checkpoint from {path}: it has no checksum (corrupted or tampered with)")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint is missing {', '.join(missing)}")
    return state


# ---- devices -------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``, or :class:`UsageError` if it is not usable here (e.g. cuda without a GPU)."""
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"--device {name!r}: {e}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise UsageError(f"--device cuda: CUDA is not available ({why}, torch {torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type != "cpu":
        raise UsageError(f"--device {name!r}: expected cpu or cuda")
    return device
