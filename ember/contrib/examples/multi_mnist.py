"""Pyro's ``pyro.contrib.examples.multi_mnist``: ``load(root)`` for the AIR example, from
:func:`ember.data.load_multi_mnist`.

``X, Y = load(root)``: ``X`` uint8 ``[60000, 50, 50]`` canvases (intensity x 255) holding 0, 1
or 2 MNIST training digits each, ``Y`` a list of 60,000 lists of those digits' classes, so
that ``len(Y[i])`` is canvas ``i``'s count (what Pyro's AIR script reads). As in Pyro, digits
whose strokes would cross are drawn again (``overlap="reject"``). The canvases are generated
deterministically from Ember's MNIST (from ``root`` when it holds the MNIST files, else Ember's
cache or a checked download) and cached under ``$EMBER_DATA/multi_mnist`` (no pickles: Pyro's
own ``multi_mnist_uint8.npz``, which needs unpickling to read, is not used).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

__all__ = ["load"]


def load(root_path: str | os.PathLike | None, *, num_images: int = 60000, seed: int = 0) -> tuple[np.ndarray, list]:
    """Multi-MNIST for Pyro's AIR example: ``(X uint8 [num_images, 50, 50], Y list of label lists)``
    (see the module docstring). ``num_images`` and ``seed`` are Ember's additions."""
    from ember.contrib.examples.util import _user_dir
    from ember.data import load_mnist, load_multi_mnist

    # MNIST from root_path if it holds the files; otherwise the standard MNIST, which
    # load_multi_mnist reads only when its cache lacks the canvases
    mnist: Any = load_mnist(_user_dir(root_path)) if _user_dir(root_path) is not None else None
    split = load_multi_mnist(num_train=num_images, num_test=0, seed=seed, mnist=mnist, overlap="reject").train
    x = split.images.mul(255.0).round_().to(torch.uint8).numpy()
    y = [[int(c) for c in labels[:count]] for labels, count in zip(split.labels.tolist(), split.counts.tolist())]
    return x, y
