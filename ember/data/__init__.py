"""Data sets for Ember's examples: :func:`load_mnist` and a minimal batching helper."""

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
