"""Run directories, settings, metrics, checkpoints and reproducible RNG for Ember's command-line examples.

Shared by ``ember vae``, ``ember air`` and ``ember scale``. Everything a checkpoint holds is plain
data (tensors, numbers, strings, lists, dicts), so it is written with
:func:`ember.params.serialize.atomic_save` and read back with ``torch.load(weights_only=True)``
(:func:`ember.params.serialize.safe_load`): loading a checkpoint never runs code.

- :func:`make_run_dir`, :func:`find_latest_run`, :func:`checkpoint_path`, :func:`resolve_resume`:
  one directory per run (``runs/<name>-<time>``, or ``--out``), and where ``--resume`` continues from.
- :func:`resolve_run`, :func:`merge_settings`, :func:`restore`: the checkpoint a run resumes from,
  the settings it fixes, and the state it restores.
- :class:`RunSetup`: what an example's ``main`` sets up and undoes (torch threads, validation),
  and the run directory created once the data has loaded.
- :func:`load_mnist_arg`: MNIST for ``--data-dir`` (only from there when given).
- :class:`MetricsLog`: ``metrics.jsonl``, one JSON object per line, truncated on resume to
  what the checkpoint covers.
- :func:`rng_state` / :func:`set_rng_state`: torch (CPU and CUDA), numpy and ``random`` states
  as tensors and lists; :func:`fork_rng`: draws that leave the training stream alone.
- :func:`epoch_generator`: a ``torch.Generator`` seeded from ``(seed, epoch)``, so an epoch's
  data order does not depend on what ran before it (a resumed run sees the same batches).
- :func:`save_checkpoint` / :func:`load_checkpoint`: one file, a format tag, a version and a
  SHA-256 digest of the contents. ``torch.load`` notices a damaged archive or pickle, but not
  flipped bytes inside a tensor's data (those load as other numbers); the digest does, so a
  checkpoint either loads exactly as it was saved or raises :class:`CheckpointError`.
  Version-1 files (written before the digest) still load, unchecked.
- :func:`claim_run_dir`, :class:`RunLock`: a run directory is created, locked (a second run on it
  is refused, naming the holder; a killed run's stale lock is taken over), refused if it holds a
  run and neither ``--resume`` nor ``--overwrite`` was given, cleared of a killed write's
  temporary files and checked writable, all before the first step.
- :func:`data_identity`, :func:`check_resumed_data`: ``--resume`` refuses other training data
  (a SHA-256 of the images used, and the source) unless ``--allow-data-change``.
- :func:`writing`, :class:`RunWriteError`: an ``OSError`` while writing is one line naming the
  file and the cause.
- :func:`resolve_device`, :class:`UsageError`: clear errors for the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import errno
import json
import os
import random
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

import ember.distributions as dist
from ember.params.serialize import (
    TMP_SUFFIX,
    CheckpointError,
    atomic_save,
    atomic_write,
    content_digest,
    safe_load,
    shared_file_mode,
    validate_param_store_state,
)
from ember.primitives import enable_validation, get_param_store
from ember.runtime import is_validation_enabled

__all__ = [
    "pyplot",
    "report_plot",
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "LOCK_NAME",
    "CheckpointError",
    "MetricsLog",
    "ResolvedRun",
    "RunLock",
    "RunSetup",
    "RunWriteError",
    "UsageError",
    "check_resumed_data",
    "checkpoint_digest",
    "claim_run_dir",
    "data_identity",
    "data_source",
    "checkpoint_path",
    "epoch_generator",
    "find_latest_run",
    "fork_rng",
    "load_checkpoint",
    "load_mnist_arg",
    "load_run_checkpoint",
    "make_run_dir",
    "merge_settings",
    "resolve_device",
    "resolve_resume",
    "resolve_run",
    "restore",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "writing",
]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
LOCK_NAME = ".ember-run.lock"
_CHECKPOINT_VERSION = 2  # 2: with "digest"; 1: without


class UsageError(ValueError):
    """A problem with the command line or the environment, reported as one line with exit code 2."""


class RunWriteError(UsageError):
    """Writing a run's file failed (no space, read-only, permission): one line naming the file and the cause."""


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-writing Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def report_plot(path: str, made: bool) -> None:
    """Say where the figure is, or that there is none because matplotlib is missing."""
    print(f"  plot: {path}" if made else "  (no plot: matplotlib is not installed; pip install 'ember-ppl[plots]')")


def _describe_os_error(e: OSError) -> str:
    """``"No space left on device (ENOSPC)"``: the cause of ``e`` in words and by name."""
    name = errno.errorcode.get(e.errno, "") if e.errno is not None else ""
    why = e.strerror or str(e) or type(e).__name__
    return f"{why} ({name})" if name else why


@contextlib.contextmanager
def writing(path: str | os.PathLike, after: str = "") -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` into :class:`RunWriteError`:
    ``cannot write <path>: <cause>`` and ``after`` (e.g. what is still intact)."""
    try:
        yield
    except OSError as e:
        target = e.filename if isinstance(e.filename, str) and e.filename else path
        raise RunWriteError(f"cannot write {target}: {_describe_os_error(e)}{'; ' + after if after else ''}") from None


# ---- run directories ---------------------------------------------------------------------------


def _check_out(out: str | os.PathLike | None) -> None:
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")


def make_run_dir(out: str | os.PathLike | None, name: str) -> Path:
    """Create and return the run directory: ``out`` if given (it may exist already, as a directory),
    else a new ``runs/<name>-<YYYYmmdd-HHMMSS>``.

    The timestamped name is claimed by creating it (``mkdir`` without ``exist_ok``), suffixed
    ``-2``, ``-3``... when taken, so two runs started in the same second never share a directory.
    An ``out`` that is not a directory (or cannot be created) is a :class:`UsageError`.
    """
    if out is not None:
        _check_out(out)
        path = Path(out)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--out {out}: cannot create the directory ({e.strerror or e})") from None
        return path
    base = Path("runs") / time.strftime(f"{name}-%Y%m%d-%H%M%S")
    path, k = base, 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            k += 1
            path = base.with_name(f"{base.name}-{k}")
        except OSError as e:
            raise UsageError(f"cannot create the run directory {path} ({e.strerror or e}); pass --out DIR") from None


def find_latest_run(name: str, root: str | os.PathLike = "runs") -> Path | None:
    """The most recently modified ``<root>/<name>-*`` directory holding a checkpoint, or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    runs = [p for p in root.glob(f"{name}-*") if (p / CHECKPOINT_NAME).is_file()]
    return max(runs, key=lambda p: (p / CHECKPOINT_NAME).stat().st_mtime) if runs else None


def checkpoint_path(where: str | os.PathLike) -> Path:
    """The checkpoint file ``where`` names: ``where`` itself if it is a file (or a ``*.pt`` path
    that does not exist), else ``where/checkpoint.pt`` (``where`` taken as a run directory)."""
    path = Path(where)
    if path.is_file() or (not path.exists() and path.suffix == ".pt"):
        return path
    return path / CHECKPOINT_NAME


def _run_files(path: Path) -> list[str]:
    """The files of a run (checkpoint, metrics) that ``path`` already holds."""
    return [n for n in (CHECKPOINT_NAME, METRICS_NAME) if (path / n).exists()]


def _refuse_existing(out: str | os.PathLike, files: list[str]) -> None:
    raise UsageError(f"--out {out}: already holds a run ({', '.join(files)}); pass --resume to continue it, --overwrite "
                     "to replace it, or another --out")


def resolve_resume(out: str | None, resume: str | None, name: str, overwrite: bool = False) -> tuple[Path | None, Path | None]:
    """The run directory and, with ``--resume`` (``resume`` not None; ``""`` for a bare
    ``--resume``), the checkpoint file to continue from: ``resume`` or ``out`` as a run
    directory or a checkpoint file, else the latest ``runs/<name>-*`` with a checkpoint.

    Without ``--resume`` the run directory is ``out`` (None: a new ``runs/<name>-<time>``,
    named when :func:`make_run_dir` creates it); an ``out`` that exists as a file, or that
    already holds a run (a checkpoint or metrics) while ``overwrite`` is false, is a
    :class:`UsageError` at once, before any data is loaded (:func:`claim_run_dir` checks
    again under the run's lock).
    """
    if resume is None:
        _check_out(out)
        if out is not None and not overwrite and Path(out).is_dir():
            files = _run_files(Path(out))
            if files:
                _refuse_existing(out, files)
        return (Path(out) if out is not None else None), None
    if overwrite:
        raise UsageError("--resume and --overwrite contradict each other: --resume continues the run, --overwrite replaces it")
    where = resume or out
    if not where:
        latest = find_latest_run(name)
        if latest is None:
            raise UsageError(f"--resume: no run directory given (--resume RUN_DIR or --out RUN_DIR) and no runs/{name}-* with a checkpoint")
        where = str(latest)
    ckpt_path = checkpoint_path(where)
    if out is not None and resume and Path(out).resolve() != ckpt_path.parent.resolve():
        raise UsageError(f"--resume {resume} and --out {out} name different run directories")
    return ckpt_path.parent, ckpt_path


# ---- resuming ----------------------------------------------------------------------------------


class ResolvedRun(NamedTuple):
    """What :func:`resolve_run` found: the run directory (None: a new one, named when created),
    and with ``--resume`` the checkpoint's path and contents (else None, None)."""

    run_dir: Path | None
    ckpt_path: Path | None
    ckpt: dict[str, Any] | None


def resolve_run(out: str | None, resume: str | None, name: str, kind: str, required: tuple[str, ...],
                types: dict[str, type], overwrite: bool = False) -> ResolvedRun:
    """:func:`resolve_resume`, then, with ``--resume``, the checkpoint loaded (a ``kind`` checkpoint
    with the ``required`` keys; each key of ``types`` it has must be of that type, else
    :class:`CheckpointError`)."""
    run_dir, ckpt_path = resolve_resume(out, resume, name, overwrite)
    if ckpt_path is None:
        return ResolvedRun(run_dir, None, None)
    return ResolvedRun(run_dir, ckpt_path, load_run_checkpoint(ckpt_path, kind, required, types))


def load_run_checkpoint(path: str | os.PathLike, kind: str, required: tuple[str, ...], types: dict[str, type]) -> dict[str, Any]:
    """:func:`load_checkpoint`, and :class:`CheckpointError` if a key of ``types`` holds another type."""
    ckpt = load_checkpoint(path, kind, required=required)
    wrong = [k for k, t in types.items() if k in ckpt and not isinstance(ckpt[k], t)]
    if wrong:
        raise CheckpointError(f"{path}: malformed checkpoint ({', '.join(wrong)} of the wrong type)")
    return ckpt


def merge_settings(args: argparse.Namespace, saved: dict[str, Any] | None, fixed: dict[str, Any],
                   overridable: dict[str, Any]) -> dict[str, Any]:
    """A run's settings from the command line (``args``; None: the flag was not given) and, on
    ``--resume``, the ``saved`` settings of the checkpoint.

    ``fixed`` (name -> default): settings that define the model and its trajectory; the
    checkpoint's value wins, and a different value given on the command line is a
    :class:`UsageError`. ``overridable`` (name -> default): the value given, else the
    checkpoint's, else the default (e.g. the number of epochs, or how the figures are drawn).
    """
    cfg: dict[str, Any] = {}
    for k, default in fixed.items():
        given = getattr(args, k, None)
        if saved is not None and k in saved:
            if given is not None and given != saved[k]:
                raise UsageError(f"--{k.replace('_', '-')} {given}: the run being resumed used {saved[k]}; "
                                 "drop the flag, or start a new run without --resume")
            cfg[k] = saved[k]
        else:
            cfg[k] = default if given is None else given
    for k, default in overridable.items():
        given = getattr(args, k, None)
        cfg[k] = given if given is not None else (saved or {}).get(k, default)
    return cfg


def restore(ckpt_path: Path, ckpt: dict[str, Any], optim: Any, metrics: MetricsLog | None, unit: str,
            read: Callable[[dict[str, Any]], Any] = lambda ckpt: None) -> tuple[int, Any]:
    """Continue a run from the checkpoint ``ckpt`` loaded from ``ckpt_path``: the parameter store,
    ``optim``'s state (an Ember optimizer) and the global RNG states are restored, ``metrics``
    is truncated to the records of ``unit`` (``"epoch"``, ``"step"``) the checkpoint covers,
    and a line says so. ``read(ckpt)`` reads the caller's own state. ``metrics`` None (the
    ranks > 0 of a data-parallel run, which write nothing): no truncation.

    Returns ``(ckpt[unit], read(ckpt))``; :class:`CheckpointError` if the contents are malformed.
    """
    validate_param_store_state(ckpt.get("params"), f"{ckpt_path}")
    try:
        get_param_store().set_state(ckpt["params"])
        optim.set_state(ckpt["optim"])
        done = int(ckpt[unit])
        extra = read(ckpt)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt_path}: malformed checkpoint ({type(e).__name__}: {e})") from None
    set_rng_state(ckpt["rng"])
    if metrics is not None:
        metrics.truncate(unit, done)
    print(f"resuming after {unit} {done} from {ckpt_path}")
    return done, extra


# ---- an example's main -------------------------------------------------------------------------


class RunSetup:
    """The set-up an example's ``main`` shares, as a context manager.

    On entry: the torch CPU thread count is set to ``threads`` (0 or None: torch's choice) and
    Ember's own checks and the distributions' argument validation to ``validation`` (two
    bools), and a clock starts. On exit all three are restored (``main`` may be called
    in-process, e.g. by tests). Once the data has loaded, :meth:`started` creates the run
    directory (only then: a failed start leaves no empty directory) and prints it and the data.
    """

    def __init__(self, threads: int | None, validation: tuple[bool, bool]) -> None:
        self.threads = threads
        self.validation = validation

    def __enter__(self) -> RunSetup:
        self._saved = (torch.get_num_threads(), is_validation_enabled(), dist.is_validation_enabled())
        if self.threads:
            torch.set_num_threads(self.threads)
        enable_validation(self.validation[0])
        dist.enable_validation(self.validation[1])
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        lock = getattr(self, "lock", None)
        if lock is not None:
            lock.release()
        threads, checks, validate = self._saved
        torch.set_num_threads(threads)
        enable_validation(checks)
        dist.enable_validation(validate)

    def started(self, run_dir: str | os.PathLike | None, name: str, data: str, resuming: bool = False,
                overwrite: bool = False, outputs: tuple[str, ...] = ()) -> Path:
        """Create, lock and check the run directory (:func:`claim_run_dir`; the lock is released on
        exit), print it, and print ``data: <data>; <seconds since entry> s``."""
        path, self.lock = claim_run_dir(run_dir, name, resuming, overwrite, outputs)
        print(f"run directory: {path}")
        print(f"data: {data}; {time.perf_counter() - self._t0:.1f} s")
        return path


# ---- owning a run directory ----------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class RunLock:
    """An exclusive lock on a run directory while a run trains: ``<run>/.ember-run.lock``.

    The lock is an ``flock`` on that file (released by the kernel when the process ends, even
    by SIGKILL) and the file records its holder (pid, host, start time) as one JSON line, so a
    second process is told who holds it. Where ``flock`` is unavailable, the recorded pid is
    checked instead. A lock file left by a process that is gone (killed) is taken over, and
    :meth:`acquire` returns a line saying so.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    @staticmethod
    def _describe(info: dict[str, Any]) -> str:
        return f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {info.get('started', '?')}"

    def _read(self, fd: int) -> dict[str, Any]:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            text = os.read(fd, 4096).decode("utf-8", "replace").strip()
            info = json.loads(text) if text else {}
            return info if isinstance(info, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> str | None:
        """Take the lock; :class:`UsageError` naming the holder if another live process has it.
        Returns a message if a stale lock (its process gone) was taken over, else None."""
        try:
            import fcntl
        except ImportError:  # not POSIX: the recorded pid alone
            fcntl = None
        for _ in range(10):  # the file may be replaced between open and flock by a finishing run
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise RunWriteError(f"cannot create the lock file {self.path}: {_describe_os_error(e)}") from None
            flocked = False
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    flocked = True
                except BlockingIOError:
                    holder = self._read(fd)
                    os.close(fd)
                    raise UsageError(f"run directory {self.path.parent} is in use by another ember run ({self._describe(holder)}; "
                                     f"lock {self.path}); wait for it to finish, or pass another --out") from None
                except OSError:  # a file system without flock: fall back to the pid
                    pass
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = self._read(fd)
            me = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
            note = None
            if previous and previous.get("pid") != me["pid"]:
                pid = previous.get("pid")
                alive = isinstance(pid, int) and previous.get("host") == me["host"] and _pid_alive(pid)
                if not flocked and alive:
                    os.close(fd)
                    raise UsageError(f"run directory {self.path.parent} is in use by another ember run ({self._describe(previous)}; "
                                     f"lock {self.path}); wait for it to finish, or pass another --out")
                note = f"taking over the stale lock of {self._describe(previous)}, which no longer holds it (its run was killed)"
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(me) + "\n").encode())
            self._fd = fd
            return note
        raise UsageError(f"could not take the lock {self.path}: it keeps being replaced by other processes")

    def release(self) -> None:
        """Remove the lock file and release the lock (idempotent)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:
                os.unlink(self.path)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = None


def _remove_stale_temporaries(run_dir: Path) -> list[str]:
    """Delete the temporary files an interrupted atomic write left in ``run_dir`` (``.<name>.<random>.tmp``)."""
    removed = []
    for p in sorted(run_dir.glob(".*" + TMP_SUFFIX)):
        if p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p.name)
    return removed


def _check_writable(run_dir: Path) -> None:
    """Create, write, fsync and delete a small file in ``run_dir``; :class:`RunWriteError` if that fails."""
    probe = run_dir / f".ember-write-check-{os.getpid()}{TMP_SUFFIX}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"ember" * 820)  # 4 kB
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(probe)
        raise RunWriteError(f"run directory {run_dir} is not writable: {_describe_os_error(e)}; nothing was trained") from None


def claim_run_dir(run_dir: str | os.PathLike | None, name: str, resuming: bool = False, overwrite: bool = False,
                  outputs: tuple[str, ...] = ()) -> tuple[Path, RunLock]:
    """Create (:func:`make_run_dir`) and lock (:class:`RunLock`) the run directory before training.

    Under the lock: a directory that already holds a run (checkpoint or metrics) is refused
    unless ``resuming`` (``--resume``) or ``overwrite`` (``--overwrite``: its checkpoint,
    metrics and the ``outputs`` figures are deleted first); temporary files of a killed write
    are removed; the directory must be writable. Each step is reported as one line; every
    refusal is a :class:`UsageError` (the lock is released again). Returns the path and the
    lock, which the caller releases when the run ends.
    """
    path = make_run_dir(run_dir, name)
    lock = RunLock(path)
    note = lock.acquire()
    try:
        if note:
            print(note)
        files = _run_files(path)
        if files and not resuming:
            if not overwrite:
                _refuse_existing(path, files)
            removed = [n for n in (CHECKPOINT_NAME, METRICS_NAME, *outputs) if (path / n).is_file()]
            for n in removed:
                with writing(path / n):
                    (path / n).unlink()
            print(f"--overwrite: removed the previous run's {', '.join(removed)} from {path}")
        stale = _remove_stale_temporaries(path)
        if stale:
            print(f"removed {len(stale)} temporary file(s) left by an interrupted write: {', '.join(stale)}")
        _check_writable(path)
    except BaseException:
        lock.release()
        raise
    return path, lock


# ---- the data a run trains on ---------------------------------------------------------------------


def data_source(data_dir: str | None, default: str = "Ember's MNIST (cache or download)") -> str:
    """The data source a run records: ``--data-dir`` resolved to an absolute path, else ``default``."""
    return str(Path(data_dir).expanduser().resolve()) if data_dir is not None else default


def data_identity(images: torch.Tensor, source: str) -> dict[str, Any]:
    """What identifies a run's training data: ``{"images": N, "digest": "sha256:...", "source": source}``,
    the digest over the images exactly as used (``images [N, ...]``: dtype, shape and values)."""
    return {"images": int(images.shape[0]), "digest": content_digest(images.detach().cpu()), "source": str(source)}


def check_resumed_data(ckpt_path: str | os.PathLike, ckpt: dict[str, Any], ident: dict[str, Any], allow_change: bool) -> None:
    """On ``--resume``: :class:`UsageError` if the training data ``ident`` (:func:`data_identity`)
    differ from those the checkpoint recorded (images or source), unless ``allow_change``
    (``--allow-data-change``), which prints the difference and continues. A checkpoint from
    before data digests is not checked (a line says so)."""
    saved = ckpt.get("data")
    if not isinstance(saved, dict):
        print(f"note: {ckpt_path} records no digest of its training data (an older Ember); the data were not compared")
        return
    diffs = []
    if saved.get("digest") != ident["digest"]:
        diffs.append(f"the training images differ ({saved.get('images')} images, {str(saved.get('digest'))[:19]} in the checkpoint; "
                     f"{ident['images']} images, {ident['digest'][:19]} now)")
    if saved.get("source") != ident["source"]:
        diffs.append(f"the data source differs ({saved.get('source')} in the checkpoint, {ident['source']} now)")
    if not diffs:
        return
    if not allow_change:
        raise UsageError(f"--resume {ckpt_path}: {'; '.join(diffs)}; pass --allow-data-change to continue on these data, "
                         "or start a new run")
    print(f"--allow-data-change: continuing on other data: {'; '.join(diffs)}")


def load_mnist_arg(data_dir: str | None) -> Any:
    """MNIST for ``--data-dir``: Ember's standard :func:`ember.data.load_mnist` if None, else
    from ``data_dir`` only (never the cache or a download instead: the user named the data),
    with a :class:`UsageError` if it holds nothing usable (malformed files raise
    :class:`ember.data.MNISTFormatError`)."""
    from ember.data import MNISTNotFoundError, load_mnist

    if data_dir is None:
        return load_mnist()
    if not Path(data_dir).expanduser().exists():
        raise UsageError(f"--data-dir {data_dir}: no such file or directory")
    try:
        return load_mnist(data_dir, download=False, fallback=False)
    except MNISTNotFoundError as e:
        raise UsageError(f"--data-dir {e}") from None


# ---- metrics -----------------------------------------------------------------------------------


class MetricsLog:
    """Append-only JSON-lines metrics file (``<run>/metrics.jsonl``); each record is written at once."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / METRICS_NAME

    def append(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line; an ``OSError`` is a :class:`RunWriteError` naming the file."""
        with writing(self.path, "the checkpoint is intact; free space or fix the permissions, then restart with --resume"):
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

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
        """Keep only records whose ``record[key] <= last`` (used on resume: drop what the checkpoint lost).

        Rewritten atomically (:func:`ember.params.serialize.atomic_write`): a crash leaves the old file or the new one."""
        if not self.path.is_file():
            return
        kept = [r for r in self.read() if isinstance(r.get(key), (int, float)) and r[key] <= last]
        data = "".join(json.dumps(r) + "\n" for r in kept).encode()
        with writing(self.path, "it is unchanged"):
            atomic_write(self.path, lambda f: f.write(data), mode=shared_file_mode())


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


def fork_rng(device: torch.device) -> Any:
    """``torch.random.fork_rng`` over the CPU generator and, for a CUDA ``device``, that device's:
    random draws inside it leave the global streams (the training trajectory) as they were."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


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


def checkpoint_digest(state: dict[str, Any]) -> str:
    """``"sha256:<hex>"`` of a checkpoint's contents (every key but ``"digest"``), as loaded, not as bytes on disk."""
    return content_digest({k: v for k, v in state.items() if k != "digest"})


def save_checkpoint(path: str | os.PathLike, kind: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plain data only) to ``path`` atomically, tagged ``kind`` (e.g. ``"ember.vae"``)
    and with the :func:`checkpoint_digest` of the whole, which :func:`load_checkpoint` checks.
    An ``OSError`` (no space, read-only, permission) is a :class:`RunWriteError`; the previous file stays."""
    state = {"format": kind, "version": _CHECKPOINT_VERSION, **payload}
    state["digest"] = checkpoint_digest(state)
    intact = "the previous checkpoint is intact" if Path(path).exists() else "no checkpoint was written"
    with writing(path, f"{intact}; free space or fix the permissions, then restart with --resume"):
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

