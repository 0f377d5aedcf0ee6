"""Multi-MNIST for the Attend-Infer-Repeat example (Eslami et al.): 50x50 canvases holding 0, 1 or 2 MNIST digits.

Each canvas is made like ``pyro.contrib.examples.multi_mnist``, with two differences the brief
asked for (by default overlaps kept, not rejected; a seeded ``numpy.random.Generator`` instead of
the global numpy state):

* the number of digits is uniform on {0, 1, 2};
* each digit is an MNIST image (train digits for the training canvases, test digits for the
  test canvases) shrunk by a factor ``1/s`` with ``s ~ Normal(1.3, 0.1)`` clipped to
  ``[1.1, 1.6]`` -- Pyro's choice -- so its side is ``int(28 / s)`` pixels: 17 to 25, 21 on
  average (28 / 1.3 = 21.5). Resizing is bilinear with antialiasing (``torch.nn.functional.interpolate``),
  so no imaging library is needed;
* its top-left corner is uniform over the positions that keep it inside the canvas;
* digits are added, overlaps allowed, and the intensities clipped to [0, 1] (``overlap="allow"``,
  the default). ``overlap="reject"`` is Pyro's rule instead: a canvas whose raw sum exceeds 1
  anywhere (Pyro: 255) -- two strokes crossing -- is drawn again (digits, sizes, positions; the
  count stays) until it does not. About a third of the 2-digit canvases overlap so; the others,
  and all 0- and 1-digit canvases, are the same under both rules. A canvas with no digit is all zeros.

Canvases are stored as ``uint8`` (intensity x 255, rounded) and returned as float32 in [0, 1].
Everything is a function of ``seed`` (and of the MNIST digits used): the same seed gives the
same arrays. :func:`load_multi_mnist` caches the result as a compressed ``.npz`` (read back with
``allow_pickle=False``) under ``$EMBER_DATA/multi_mnist/`` (default ``~/.cache/ember/multi_mnist``);
building 60,000 + 10,000 canvases from scratch takes a few seconds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ember.params.serialize import atomic_write, shared_file_mode

__all__ = [
    "MultiMNIST",
    "MultiMNISTSplit",
    "load_multi_mnist",
    "make_multi_mnist",
    "multi_mnist_cache_path",
]

logger = logging.getLogger(__name__)

CANVAS_SIZE = 50
MAX_DIGITS = 2
DIGIT_SIZE = 28
SCALE_MEAN, SCALE_SD, SCALE_MIN, SCALE_MAX = 1.3, 0.1, 1.1, 1.6
FORMAT_VERSION = 1
_SPLIT_CODE = {"train": 0, "test": 1}
_ARRAY_KEYS = ("images", "counts", "labels", "boxes")
_CHUNK = 8192
OVERLAP_MODES = ("allow", "reject")
_MAX_REDRAWS = 1000


def _check_overlap(overlap: str) -> None:
    if overlap not in OVERLAP_MODES:
        raise ValueError(f"overlap must be 'allow' or 'reject'; got {overlap!r}")


class MultiMNISTSplit(NamedTuple):
    """One split of multi-MNIST canvases, as torch tensors.

    - ``images``: float32 ``[N, 50, 50]`` in [0, 1];
    - ``counts``: int64 ``[N]``, the number of digits (0, 1 or 2);
    - ``labels``: int64 ``[N, 2]``, each digit's class, -1 for an absent digit;
    - ``boxes``: int64 ``[N, 2, 3]``, each digit's square as (row, column, side) of its top-left
      corner in pixels, -1 for an absent digit.
    """

    images: torch.Tensor
    counts: torch.Tensor
    labels: torch.Tensor
    boxes: torch.Tensor

    def __len__(self) -> int:  # type: ignore[override]
        return int(self.counts.shape[0])


@dataclass
class MultiMNIST:
    """Training and test canvases, the seed they come from and where they were read or made."""

    train: MultiMNISTSplit
    test: MultiMNISTSplit
    seed: int
    source: str = field(default="")
    overlap: str = field(default="allow")

    def __repr__(self) -> str:
        return (f"MultiMNIST(train={len(self.train)}, test={len(self.test)}, seed={self.seed}, overlap={self.overlap!r}, "
                f"source={self.source!r})")


# ---- generation ---------------------------------------------------------------------------------


def _digits_from(mnist: Any, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``[M, 28, 28]`` float32 digit images (in [0, 1]) to draw from, and their labels (or None).

    ``mnist`` is an :class:`ember.data.MNIST` (its train or test images, per ``split``), an array
    or tensor of images ``[M, 784]`` / ``[M, 28, 28]`` (uint8 pixels or floats in [0, 1]), or an
    ``(images, labels)`` pair.
    """
    labels = None
    if hasattr(mnist, "train_images"):
        images = mnist.train_images if split == "train" else mnist.test_images
        labels = mnist.train_labels if split == "train" else mnist.test_labels
    elif isinstance(mnist, (tuple, list)) and len(mnist) == 2:
        images, labels = mnist
    else:
        images = mnist
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.ndim == 2 and images.shape[1] == DIGIT_SIZE * DIGIT_SIZE:
        images = images.reshape(-1, DIGIT_SIZE, DIGIT_SIZE)
    if images.ndim != 3 or images.shape[1:] != (DIGIT_SIZE, DIGIT_SIZE) or images.shape[0] == 0:
        raise ValueError(f"multi-MNIST needs a non-empty set of 28x28 digit images; got an array of shape {images.shape}")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    else:
        images = np.clip(images.astype(np.float32), 0.0, 1.0)
    if labels is not None:
        if isinstance(labels, torch.Tensor):
            labels = labels.detach().cpu().numpy()
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"multi-MNIST: {images.shape[0]} digit images but {labels.shape[0]} labels")
    return images, labels


def _draw(rng: np.random.Generator, shape: tuple[int, ...], m: int, canvas_size: int) -> tuple[np.ndarray, ...]:
    """Each digit slot's source digit, side and top-left corner (row, column), drawn with ``rng`` (in that order)."""
    source = rng.integers(0, m, size=shape)
    scales = np.clip(rng.normal(SCALE_MEAN, SCALE_SD, size=shape), SCALE_MIN, SCALE_MAX)
    sides = np.minimum((DIGIT_SIZE / scales).astype(np.int64), canvas_size)
    corner = rng.random(size=(*shape, 2))
    rows = np.floor(corner[..., 0] * (canvas_size - sides + 1)).astype(np.int64)
    cols = np.floor(corner[..., 1] * (canvas_size - sides + 1)).astype(np.int64)
    return source, sides, rows, cols


def _render(digits: np.ndarray, source: np.ndarray, sides: np.ndarray, rows: np.ndarray, cols: np.ndarray, used: np.ndarray,
            canvas_size: int) -> np.ndarray:
    """The raw (unclipped) float32 canvases ``[n, size, size]``: the sum of each canvas's used digits, shrunk and placed."""
    n, max_digits = used.shape
    canvases = np.zeros((n, canvas_size, canvas_size), dtype=np.float32)
    # One digit slot at a time, so that no canvas appears twice in one (vectorized) addition.
    for k in range(max_digits):
        (ii,) = np.nonzero(used[:, k])
        for side in np.unique(sides[ii, k]):
            i_sel = ii[sides[ii, k] == side]
            src = torch.from_numpy(digits[source[i_sel, k]])[:, None]
            small = torch.nn.functional.interpolate(src, size=(int(side), int(side)), mode="bilinear", antialias=True,
                                                    align_corners=False)
            small = small[:, 0].clamp_(0.0, 1.0).numpy()
            span = np.arange(side)
            r = (rows[i_sel, k][:, None] + span)[:, :, None]
            c = (cols[i_sel, k][:, None] + span)[:, None, :]
            canvases[i_sel[:, None, None], r, c] += small
    return canvases


def _generate(digits: np.ndarray, digit_labels: np.ndarray | None, num_images: int, rng: np.random.Generator,
              canvas_size: int = CANVAS_SIZE, max_digits: int = MAX_DIGITS, overlap: str = "allow") -> dict[str, np.ndarray]:
    """``num_images`` canvases as numpy arrays (``images`` uint8), drawn with ``rng``.

    All random numbers are drawn up front, for every digit slot of every canvas (used or not),
    so the result depends only on the generator's state. With ``overlap="reject"`` the canvases
    whose raw sum exceeds 1 somewhere are then drawn again (digits, sides and corners; the count
    stays), all of them at once with the same generator, until none is left: a canvas that never
    overlapped is the same as with ``"allow"``.
    """
    _check_overlap(overlap)
    n, m = int(num_images), digits.shape[0]
    counts = rng.integers(0, max_digits + 1, size=n)
    source, sides, rows, cols = _draw(rng, (n, max_digits), m, canvas_size)

    used = np.arange(max_digits)[None, :] < counts[:, None]  # [n, max_digits]
    images = np.zeros((n, canvas_size, canvas_size), dtype=np.uint8)
    overlapping = []
    for start in range(0, n, _CHUNK):  # float canvases a chunk at a time (all 60,000 would take 600 MB)
        stop = min(n, start + _CHUNK)
        canvases = _render(digits, source[start:stop], sides[start:stop], rows[start:stop], cols[start:stop], used[start:stop],
                           canvas_size)
        if overlap == "reject":
            overlapping.append(start + np.nonzero(canvases.reshape(stop - start, -1).max(1) > 1.0)[0])
        np.clip(canvases, 0.0, 1.0, out=canvases)
        images[start:stop] = np.rint(canvases * 255.0)

    redo = np.concatenate(overlapping) if overlapping else np.zeros(0, dtype=np.int64)
    for _ in range(_MAX_REDRAWS):
        if redo.size == 0:
            break
        s, z, r, c = _draw(rng, (redo.size, max_digits), m, canvas_size)
        source[redo], sides[redo], rows[redo], cols[redo] = s, z, r, c
        still = []
        for start in range(0, redo.size, _CHUNK):
            idx = redo[start : start + _CHUNK]
            canvases = _render(digits, s[start : start + idx.size], z[start : start + idx.size], r[start : start + idx.size],
                               c[start : start + idx.size], used[idx], canvas_size)
            bad = canvases.reshape(idx.size, -1).max(1) > 1.0
            still.append(idx[bad])
            np.clip(canvases, 0.0, 1.0, out=canvases)
            images[idx] = np.rint(canvases * 255.0)
        redo = np.concatenate(still)
    else:
        if redo.size:
            raise ValueError(f"multi-MNIST: {redo.size} canvases still overlap after {_MAX_REDRAWS} redraws; "
                             "these digits cannot be placed without overlapping (use overlap='allow')")

    labels = np.full((n, max_digits), -1, dtype=np.int64)
    if digit_labels is not None:
        labels[used] = digit_labels[source[used]]
    boxes = np.stack([rows, cols, sides], -1)
    boxes[~used] = -1
    return {"images": images, "counts": counts.astype(np.int64), "labels": labels, "boxes": boxes}


def _to_split(arrays: dict[str, np.ndarray]) -> MultiMNISTSplit:
    return MultiMNISTSplit(
        images=torch.from_numpy(arrays["images"].astype(np.float32) / 255.0),
        counts=torch.from_numpy(np.ascontiguousarray(arrays["counts"], dtype=np.int64)),
        labels=torch.from_numpy(np.ascontiguousarray(arrays["labels"], dtype=np.int64)),
        boxes=torch.from_numpy(np.ascontiguousarray(arrays["boxes"], dtype=np.int64)),
    )


def _rng(seed: int, split: str) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed) % (2**63), _SPLIT_CODE[split]]))


def make_multi_mnist(num_images: int, seed: int = 0, mnist: Any = None, split: str = "train", overlap: str = "allow") -> MultiMNISTSplit:
    """``num_images`` multi-MNIST canvases, a deterministic function of ``seed``, ``overlap`` and the digits.

    ``mnist``: where the digits come from -- an :class:`ember.data.MNIST` (default: :func:`ember.data.load_mnist`),
    whose ``split`` (``"train"`` or ``"test"``) images are used, or an array/tensor of 28x28
    digit images (``[M, 784]`` or ``[M, 28, 28]``; uint8 or floats in [0, 1]), or an
    ``(images, labels)`` pair. ``overlap``: ``"allow"`` (default) keeps overlapping digits, their sum
    clipped to 1; ``"reject"`` draws a 2-digit canvas again while its raw sum exceeds 1 anywhere
    (Pyro's rule). Nothing is cached; see :func:`load_multi_mnist`.
    """
    _check_overlap(overlap)
    if split not in _SPLIT_CODE:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    if not isinstance(num_images, (int, np.integer)) or num_images < 0:
        raise ValueError(f"num_images must be a non-negative integer; got {num_images!r}")
    if mnist is None:
        from ember.data.mnist import load_mnist

        mnist = load_mnist()
    digits, labels = _digits_from(mnist, split)
    return _to_split(_generate(digits, labels, int(num_images), _rng(seed, split), overlap=overlap))


# ---- cache --------------------------------------------------------------------------------------


def _fingerprint(mnist: Any) -> str:
    """A short hash of the digits ``mnist`` holds (so canvases of different digits never share a cache file)."""
    h = hashlib.blake2b(digest_size=8)
    for split in ("train", "test"):
        digits, labels = _digits_from(mnist, split)
        h.update(np.ascontiguousarray((digits * 255).round().astype(np.uint8)).tobytes())
        if labels is not None:
            h.update(labels.tobytes())
    return h.hexdigest()


def multi_mnist_cache_path(num_train: int = 60000, num_test: int = 10000, seed: int = 0, cache_dir: str | os.PathLike | None = None,
                           mnist: Any = None, overlap: str = "allow") -> Path:
    """The ``.npz`` file :func:`load_multi_mnist` reads or writes for these arguments
    (``overlap="reject"`` adds ``-reject`` to the name; ``"allow"`` keeps the original name)."""
    _check_overlap(overlap)
    if cache_dir is None:
        from ember.data.mnist import default_cache_dir

        cache_dir = default_cache_dir() / "multi_mnist"
    digits = "mnist" if mnist is None else f"digits-{_fingerprint(mnist)}"
    tag = "" if overlap == "allow" else f"-{overlap}"
    name = f"multi_mnist-{digits}-seed{int(seed)}{tag}-train{int(num_train)}-test{int(num_test)}-v{FORMAT_VERSION}.npz"
    return Path(cache_dir).expanduser() / name


def _read_cache(path: Path, num_train: int, num_test: int, overlap: str = "allow") -> dict[str, dict[str, np.ndarray]] | None:
    """The cached arrays, or None (with a warning logged) if the file is missing, damaged or does not fit."""
    if not path.is_file():
        return None
    try:
        # what the members inflate to (zipfile stops there), against what the canvases need (~2.6 kB each):
        # a damaged or crafted cache is not inflated beyond that
        with zipfile.ZipFile(path) as z:
            inflated = sum(i.file_size for i in z.infolist())
        if inflated > (num_train + num_test) * 4096 + (1 << 20):
            raise ValueError(f"it would inflate to {inflated} bytes, more than {num_train + num_test} canvases need")
        with np.load(path, allow_pickle=False) as f:
            if int(f["version"]) != FORMAT_VERSION:
                raise ValueError(f"format version {int(f['version'])}")
            saved = str(f["overlap"]) if "overlap" in f.files else "allow"  # files written before the option: "allow"
            if saved != overlap:
                raise ValueError(f"canvases made with overlap={saved!r}, not {overlap!r}")
            out = {s: {k: f[f"{s}_{k}"] for k in _ARRAY_KEYS} for s in ("train", "test")}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as e:
        logger.warning("multi-MNIST cache %s is unreadable (%s); regenerating it", path, e)
        return None
    for split, n in (("train", num_train), ("test", num_test)):
        a = out[split]
        ok = (a["images"].shape == (n, CANVAS_SIZE, CANVAS_SIZE) and a["images"].dtype == np.uint8 and a["counts"].shape == (n,)
              and a["labels"].shape == (n, MAX_DIGITS) and a["boxes"].shape == (n, MAX_DIGITS, 3))
        if not ok:
            logger.warning("multi-MNIST cache %s holds arrays of unexpected shapes; regenerating it", path)
            return None
    return out


def _write_cache(path: Path, arrays: dict[str, dict[str, np.ndarray]], seed: int, overlap: str = "allow") -> None:
    """Write the arrays to ``path`` atomically (a temporary file in the same directory, then a rename)."""
    flat = {f"{s}_{k}": v for s, a in arrays.items() for k, v in a.items()}
    atomic_write(path, lambda f: np.savez_compressed(f, version=np.int64(FORMAT_VERSION), seed=np.int64(seed), overlap=np.str_(overlap),
                                                     **flat),
                 mode=shared_file_mode())


def load_multi_mnist(num_train: int = 60000, num_test: int = 10000, seed: int = 0, cache_dir: str | os.PathLike | None = None,
                     mnist: Any = None, overlap: str = "allow") -> MultiMNIST:
    """Training and test multi-MNIST canvases, generated once and then read from a cached ``.npz``.

    Training canvases use MNIST's training digits, test canvases its test digits, each split from
    its own stream of ``seed``. ``mnist`` (an :class:`ember.data.MNIST`, default the standard one
    from :func:`ember.data.load_mnist`, loaded only when the cache lacks the file) supplies the
    digits; other digits get their own cache file (named by a hash of the digits). ``cache_dir``
    defaults to ``$EMBER_DATA/multi_mnist`` (``~/.cache/ember/multi_mnist``). ``overlap``: ``"allow"``
    (default) or ``"reject"``, as :func:`make_multi_mnist`; each has its own cache file.
    """
    _check_overlap(overlap)
    for name, v in (("num_train", num_train), ("num_test", num_test)):
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{name} must be a non-negative integer; got {v!r}")
    path = multi_mnist_cache_path(num_train, num_test, seed, cache_dir, mnist, overlap)
    arrays = _read_cache(path, num_train, num_test, overlap)
    if arrays is not None:
        source = f"cache {path}"
    else:
        if mnist is None:
            from ember.data.mnist import load_mnist

            mnist = load_mnist()
        arrays = {}
        for split, n in (("train", num_train), ("test", num_test)):
            digits, labels = _digits_from(mnist, split)
            arrays[split] = _generate(digits, labels, n, _rng(seed, split), overlap=overlap)
        try:
            _write_cache(path, arrays, seed, overlap)
            source = f"generated, cached in {path}"
        except OSError as e:
            logger.warning("could not cache multi-MNIST in %s: %s", path, e)
            source = "generated (not cached)"
    return MultiMNIST(train=_to_split(arrays["train"]), test=_to_split(arrays["test"]), seed=int(seed), source=source, overlap=overlap)
