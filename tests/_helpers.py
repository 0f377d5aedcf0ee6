"""Helpers shared by test modules in several directories (``from _helpers import ...``: pytest puts
``tests/`` on ``sys.path`` when it loads ``tests/conftest.py``)."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """``array`` (as uint8) in the IDX format; the magic number defaults to ``0x0800 | ndim`` (2051 for images, 2049 for labels)."""
    array = np.asarray(array, dtype=np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()


def write_maybe_gz(path: Path, data: bytes, gz: bool) -> Path:
    """Write ``data`` to ``path``, or gzipped to ``path`` + ``.gz``; returns the path written."""
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_idx_dir(directory: Path, arrays: Sequence[np.ndarray], gz: Sequence[bool] = (False,) * 4) -> None:
    """The four MNIST IDX files in ``directory`` (created if needed), from ``arrays`` = (train images,
    train labels, test images, test labels); ``gz[i]``: gzip file ``i``."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, a, z in zip(IDX_NAMES, arrays, gz):
        write_maybe_gz(directory / name, idx_bytes(a), z)
