"""ember.contrib.examples: Pyro's get_data_loader / MNIST / multi_mnist.load entry points, on a
small fake MNIST (IDX files in a temporary directory; Ember's cache isolated there too)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _helpers import write_idx_dir

from ember.contrib.examples import multi_mnist
from ember.contrib.examples.util import MNIST, get_data_directory, get_data_loader, print_and_log

N_TRAIN, N_TEST = 30, 12


@pytest.fixture()
def fake_mnist(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBER_DATA", str(tmp_path / "cache"))  # never the user's cache, never a download
    rng = np.random.default_rng(0)
    arrays = []
    for n in (N_TRAIN, N_TEST):
        x = np.zeros((n, 28, 28), dtype=np.uint8)
        x[:, 8:20, 10:18] = rng.integers(1, 256, size=(n, 12, 8))
        arrays += [x, rng.integers(0, 10, n)]
    d = tmp_path / "mnist"
    write_idx_dir(d, arrays)
    return d, arrays


def test_mnist_dataset_is_torchvision_shaped(fake_mnist) -> None:
    d, arrays = fake_mnist
    ds = MNIST(d, train=True)
    assert ds.data.dtype == torch.uint8 and ds.data.shape == (N_TRAIN, 28, 28)
    assert np.array_equal(ds.data.numpy(), arrays[0]) and np.array_equal(ds.targets.numpy(), arrays[1])
    img, label = ds[3]
    assert img.shape == (1, 28, 28) and img.dtype == torch.float32
    assert torch.allclose(img[0] * 255, torch.from_numpy(arrays[0][3]).float()) and label == int(arrays[1][3])
    test = MNIST(d, train=False, transform=lambda x: x.reshape(-1), target_transform=lambda y: y + 100)
    assert len(test) == N_TEST and test[0][0].shape == (784,) and test[0][1] == int(arrays[3][0]) + 100


def test_get_data_loader(fake_mnist) -> None:
    d, arrays = fake_mnist
    loader = get_data_loader("MNIST", d, batch_size=8, is_training_set=False, shuffle=False,
                             dataset_transforms=[lambda x: x * 2.0])
    assert isinstance(loader, torch.utils.data.DataLoader) and len(loader.dataset) == N_TEST
    x, y = next(iter(loader))
    assert x.shape == (8, 1, 28, 28) and y.shape == (8,)
    assert torch.allclose(x[:, 0] * 255 / 2.0, torch.from_numpy(arrays[2][:8]).float(), atol=1e-4)
    assert torch.equal(y, torch.from_numpy(arrays[3][:8]).long())
    # what pyro's multi_mnist.load_mnist reads
    assert loader.dataset.data.cpu().numpy().shape == (N_TEST, 28, 28)
    with pytest.raises(ValueError, match="'MNIST' only.*'CIFAR10'"):
        get_data_loader("CIFAR10", d)
    with pytest.raises(ValueError, match="batch_size"):
        get_data_loader("MNIST", d, batch_size=0)


def test_multi_mnist_load_as_pyros_air_script_reads_it(fake_mnist) -> None:
    d, arrays = fake_mnist
    X_np, Y = multi_mnist.load(d, num_images=40)
    assert X_np.dtype == np.uint8 and X_np.shape == (40, 50, 50) and len(Y) == 40
    # the AIR script's own lines
    X_np = X_np.astype(np.float32)
    X_np /= 255.0
    X = torch.from_numpy(X_np)
    true_counts = torch.tensor([len(objs) for objs in Y], dtype=torch.float)
    assert set(true_counts.tolist()) <= {0.0, 1.0, 2.0} and X.max() <= 1.0
    # a canvas has ink exactly when it has digits; labels come from the training labels
    assert torch.equal((X.reshape(40, -1).sum(-1) > 0), true_counts > 0)
    assert {c for objs in Y for c in objs} <= set(arrays[1].tolist())
    X2, Y2 = multi_mnist.load(d, num_images=40)  # deterministic (and read from the cache)
    assert np.array_equal(X2, (X_np * 255).round().astype(np.uint8)) and Y2 == Y


def test_helpers(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("CI", raising=False)
    assert get_data_directory("/a/b/script.py") == "/a/b/.data"
    monkeypatch.setenv("CI", "1")
    assert get_data_directory("/a/b/script.py").endswith(".data") and "/a/b" not in get_data_directory("/a/b/script.py")
    with open(tmp_path / "log.txt", "w") as f:
        print_and_log(f, "hello")
    assert capsys.readouterr().out == "hello\n" and (tmp_path / "log.txt").read_text() == "hello\n"
