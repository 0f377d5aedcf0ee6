"""Data sets for Ember's examples: :func:`load_mnist`, :func:`load_multi_mnist` and a minimal batching helper."""

from ember.data.mnist import (
    MNIST,
    MNISTFormatError,
    MNISTNotFoundError,
    UnsafePickleError,
    default_cache_dir,
    iterate_minibatches,
    load_mnist,
    read_idx,
    read_mnist_pickle,
)
from ember.data.multi_mnist import MultiMNIST, MultiMNISTSplit, load_multi_mnist, make_multi_mnist, multi_mnist_cache_path

__all__ = [
    "MNIST",
    "MNISTFormatError",
    "MNISTNotFoundError",
    "MultiMNIST",
    "MultiMNISTSplit",
    "UnsafePickleError",
    "default_cache_dir",
    "iterate_minibatches",
    "load_mnist",
    "load_multi_mnist",
    "make_multi_mnist",
    "multi_mnist_cache_path",
    "read_idx",
    "read_mnist_pickle",
]
