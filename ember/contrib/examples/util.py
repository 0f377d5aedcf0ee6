"""Pyro's ``pyro.contrib.examples.util``: MNIST for Pyro's example scripts, from Ember's loader.

``get_data_loader("MNIST", data_dir, batch_size, ...)`` returns a ``torch.utils.data.DataLoader``
over :class:`MNIST`, a torchvision-style dataset (``.data`` uint8 ``[N, 28, 28]``, ``.targets``
int64 ``[N]``; an item is ``(image, label)`` with the image float32 ``[1, 28, 28]`` in [0, 1], as
torchvision's ``ToTensor`` gives). The digits come from :func:`ember.data.load_mnist`: from
``data_dir`` when it holds the MNIST files (IDX, gzipped or not, torchvision's ``MNIST/raw/``
layout, or ``mnist.pkl.gz``), otherwise from Ember's cache or a checked download. torchvision
is not needed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["MNIST", "get_data_directory", "get_data_loader", "print_and_log"]


def _user_dir(root: str | os.PathLike | None) -> Path | None:
    """``root`` if it may hold MNIST (a file, or a non-empty directory); None otherwise."""
    if root is None:
        return None
    p = Path(root).expanduser()
    return p if p.is_file() or (p.is_dir() and any(p.iterdir())) else None


def _load(root: str | os.PathLike | None) -> Any:
    from ember.data import load_mnist

    return load_mnist(_user_dir(root))  # root, else Ember's cache, then a checked download


class MNIST(Dataset):
    """MNIST as torchvision's ``datasets.MNIST(root, train, transform, target_transform, download)``
    presents it, read by Ember's loader (see the module docstring).

    ``data``: uint8 ``[N, 28, 28]``; ``targets``: int64 ``[N]`` (60,000 training or 10,000 test
    digits). ``dataset[i]`` is ``(transform(image), target_transform(label))`` with ``image``
    float32 ``[1, 28, 28]`` in [0, 1]. ``download=False`` only reads ``root`` and the cache.
    """

    def __init__(
        self,
        root: str | os.PathLike | None,
        train: bool = True,
        transform: Callable | None = None,
        target_transform: Callable | None = None,
        download: bool = True,
    ) -> None:
        from ember.data import load_mnist

        mnist = _load(root) if download else load_mnist(root, download=False)
        images = mnist.train_images if train else mnist.test_images
        self.data = images.reshape(-1, 28, 28).mul(255.0).round_().to(torch.uint8)
        self.targets = (mnist.train_labels if train else mnist.test_labels).clone()
        self.root = root
        self.train = train
        self.transform = transform
        self.target_transform = target_transform
        self.source = mnist.source

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        img: Any = self.data[index].to(torch.get_default_dtype()).div_(255.0).unsqueeze(0)
        target: Any = int(self.targets[index])
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    # torchvision's older attribute names, which Pyro's example utilities still read
    @property
    def train_data(self) -> torch.Tensor:
        return self.data

    @property
    def train_labels(self) -> torch.Tensor:
        return self.targets

    @property
    def test_data(self) -> torch.Tensor:
        return self.data

    @property
    def test_labels(self) -> torch.Tensor:
        return self.targets


def _compose(transforms: Sequence[Callable]) -> Callable | None:
    transforms = list(transforms)
    if not transforms:
        return None

    def apply(x: Any) -> Any:
        for t in transforms:
            x = t(x)
        return x

    return apply


def get_data_loader(
    dataset_name: str,
    data_dir: str | os.PathLike | None,
    batch_size: int = 1,
    dataset_transforms: Sequence[Callable] | None = None,
    is_training_set: bool = True,
    shuffle: bool = True,
) -> DataLoader:
    """A ``DataLoader`` over the training (``is_training_set``) or test split of
    ``dataset_name`` (``"MNIST"``, the one Pyro's examples load this way), in batches of
    ``batch_size``: each batch is ``(images [B, 1, 28, 28] float in [0, 1], labels [B])``,
    after ``dataset_transforms`` (callables on one image tensor, applied in order)."""
    if dataset_name != "MNIST":
        raise ValueError(f"get_data_loader: Ember provides the dataset 'MNIST' only (Pyro's examples load no other this way); got {dataset_name!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"get_data_loader: batch_size must be a positive integer; got {batch_size!r}")
    dataset = MNIST(data_dir, train=is_training_set, transform=_compose(dataset_transforms or ()))
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)


def print_and_log(logger: Any, msg: str) -> None:
    """Print ``msg`` and, when ``logger`` (a writable file) is given, write it there as a line."""
    print(msg)
    sys.stdout.flush()
    if logger is not None:
        logger.write(f"{msg}\n")
        logger.flush()


def get_data_directory(filepath: str | os.PathLike | None = None) -> str:
    """Where an example keeps its data: ``.data`` beside ``filepath`` (the script's
    ``__file__``), or ``~/.data`` when the environment variable ``CI`` is set (as in Pyro)."""
    if "CI" in os.environ or filepath is None:
        return os.path.expanduser("~/.data")
    return os.path.abspath(os.path.join(os.path.dirname(filepath), ".data"))
