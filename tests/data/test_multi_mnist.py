"""Tests of ember.data.multi_mnist on a small fake MNIST (random blobs), so they run in a second."""

import numpy as np
import pytest
import torch

from ember.data import MNIST, load_multi_mnist, make_multi_mnist, multi_mnist_cache_path
from ember.data import multi_mnist as mm


def _fake_digits(n: int, seed: int, label_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28x28 uint8 "digits": a random blob of ink in the middle of each (never empty), and labels."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    images[:, 6:22, 8:20] = rng.integers(0, 256, size=(n, 16, 12))
    images[:, 14, 14] = 255
    return images, (rng.integers(0, 5, size=n) + label_offset).astype(np.int64)


def _fake_mnist() -> MNIST:
    tr, trl = _fake_digits(40, 0, label_offset=0)  # train digits are labelled 0..4
    te, tel = _fake_digits(20, 1, label_offset=5)  # test digits 5..9
    f = lambda a: torch.from_numpy(a.reshape(len(a), -1).astype(np.float32) / 255)  # noqa: E731
    return MNIST(f(tr), torch.from_numpy(trl), f(te), torch.from_numpy(tel), source="fake")


@pytest.fixture
def fake():
    return _fake_digits(50, 0)


def test_same_seed_same_canvases_other_seed_other_canvases(fake):
    a = make_multi_mnist(300, seed=1, mnist=fake)
    b = make_multi_mnist(300, seed=1, mnist=fake)
    c = make_multi_mnist(300, seed=2, mnist=fake)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.counts, c.counts)
    # the first canvases do not depend on how many are made
    d = make_multi_mnist(100, seed=1, mnist=fake)
    assert d.images.shape[0] == 100


def test_shapes_dtypes_and_ranges(fake):
    d = make_multi_mnist(500, seed=0, mnist=fake)
    assert d.images.shape == (500, 50, 50) and d.images.dtype == torch.float32
    assert d.counts.shape == (500,) and d.counts.dtype == torch.int64
    assert d.labels.shape == (500, 2) and d.boxes.shape == (500, 2, 3)
    assert float(d.images.min()) >= 0.0 and float(d.images.max()) <= 1.0
    assert set(d.counts.tolist()) <= {0, 1, 2}
    # each used digit slot has a label and a box inside the canvas; unused ones are -1
    used = torch.arange(2)[None, :] < d.counts[:, None]
    assert (d.labels[used] >= 0).all() and (d.labels[~used] == -1).all()
    assert (d.boxes[~used] == -1).all()
    r, c, side = d.boxes[used].unbind(-1)
    assert ((side >= 17) & (side <= 25)).all()  # 28 / s, s ~ N(1.3, 0.1) clipped to [1.1, 1.6]
    assert (r >= 0).all() and (c >= 0).all() and (r + side <= 50).all() and (c + side <= 50).all()


def test_counts_are_roughly_uniform(fake):
    d = make_multi_mnist(3000, seed=0, mnist=fake)
    freq = torch.bincount(d.counts, minlength=3).float() / 3000
    assert freq.shape == (3,)
    assert ((freq - 1 / 3).abs() < 0.04).all(), freq


def test_empty_canvas_for_no_digit_and_ink_only_inside_the_boxes(fake):
    d = make_multi_mnist(400, seed=3, mnist=fake)
    zero = d.counts == 0
    assert zero.any() and (d.images[zero] == 0).all()
    assert (d.images[~zero].flatten(1).amax(1) > 0).all()
    for i in range(400):
        inside = torch.zeros(50, 50, dtype=torch.bool)
        for k in range(int(d.counts[i])):
            r, c, s = d.boxes[i, k].tolist()
            inside[r : r + s, c : c + s] = True
        assert (d.images[i][~inside] == 0).all()


def test_overlaps_are_clipped_not_rejected():
    # one all-white digit: two of them on a canvas overlap often, and the sum is clipped to 1
    white = np.full((1, 28, 28), 255, dtype=np.uint8)
    d = make_multi_mnist(300, seed=0, mnist=white)
    assert float(d.images.max()) == 1.0
    two = d.counts == 2
    assert two.any()


def test_accepts_mnist_objects_tensors_and_float_images(fake):
    images, labels = fake
    a = make_multi_mnist(50, seed=0, mnist=(images, labels))
    b = make_multi_mnist(50, seed=0, mnist=torch.from_numpy(images.reshape(50, -1).astype(np.float32) / 255))
    assert torch.equal(a.images, b.images)
    assert (b.labels == -1).all()  # no labels given
    m = _fake_mnist()
    tr = make_multi_mnist(200, seed=0, mnist=m, split="train")
    te = make_multi_mnist(200, seed=0, mnist=m, split="test")
    assert set(tr.labels[tr.labels >= 0].tolist()) <= {0, 1, 2, 3, 4}
    assert set(te.labels[te.labels >= 0].tolist()) <= {5, 6, 7, 8, 9}
    with pytest.raises(ValueError):
        make_multi_mnist(10, seed=0, mnist=np.zeros((3, 10, 10)))
    with pytest.raises(ValueError):
        make_multi_mnist(10, seed=0, mnist=fake, split="valid")
    with pytest.raises(ValueError):
        make_multi_mnist(-1, seed=0, mnist=fake)


def test_cache_is_written_then_reused(tmp_path, monkeypatch):
    m = _fake_mnist()
    first = load_multi_mnist(num_train=120, num_test=30, seed=5, cache_dir=tmp_path, mnist=m)
    path = multi_mnist_cache_path(120, 30, 5, tmp_path, m)
    assert path.is_file() and path.suffix == ".npz"
    assert first.source.startswith("generated")
    assert len(first.train) == 120 and len(first.test) == 30
    with np.load(path, allow_pickle=False) as f:  # plain arrays, no pickles
        assert f["train_images"].dtype == np.uint8 and f["train_images"].shape == (120, 50, 50)

    def boom(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(mm, "_generate", boom)
    second = load_multi_mnist(num_train=120, num_test=30, seed=5, cache_dir=tmp_path, mnist=m)
    assert second.source.startswith("cache")
    for split in ("train", "test"):
        for x, y in zip(getattr(first, split), getattr(second, split)):
            assert torch.equal(x, y)
    # the cached canvases are those make_multi_mnist makes
    monkeypatch.undo()
    direct = make_multi_mnist(120, seed=5, mnist=m, split="train")
    assert torch.equal(direct.images, second.train.images) and torch.equal(direct.counts, second.train.counts)


def test_other_digits_or_sizes_get_other_cache_files(tmp_path):
    m = _fake_mnist()
    other = _fake_mnist()
    other.train_images = 1 - other.train_images
    p = multi_mnist_cache_path(10, 5, 0, tmp_path, m)
    assert p != multi_mnist_cache_path(10, 5, 0, tmp_path, other)
    assert p != multi_mnist_cache_path(11, 5, 0, tmp_path, m)
    assert p != multi_mnist_cache_path(10, 5, 1, tmp_path, m)
    assert multi_mnist_cache_path(10, 5, 0, tmp_path, None).name.startswith("multi_mnist-mnist-")


def test_a_damaged_cache_is_regenerated(tmp_path, caplog):
    m = _fake_mnist()
    path = multi_mnist_cache_path(20, 10, 0, tmp_path, m)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a zip file")
    d = load_multi_mnist(20, 10, 0, cache_dir=tmp_path, mnist=m)
    assert d.source.startswith("generated") and len(d.train) == 20
    assert "regenerating" in caplog.text
    assert load_multi_mnist(20, 10, 0, cache_dir=tmp_path, mnist=m).source.startswith("cache")


def test_default_cache_dir_follows_ember_data(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBER_DATA", str(tmp_path / "cache"))
    assert multi_mnist_cache_path(1, 1, 0).parent == tmp_path / "cache" / "multi_mnist"


# ---- overlap="reject" (Pyro's rule) --------------------------------------------------------------


def _arrays_digest(split) -> str:
    import hashlib

    h = hashlib.sha256()
    for k in ("images", "counts", "labels", "boxes"):
        v = getattr(split, k).numpy()
        h.update(k.encode() + str(v.dtype).encode() + v.tobytes())
    return h.hexdigest()


def test_allow_is_the_default_and_unchanged(fake):
    # digest of make_multi_mnist(500, seed=7) on these digits, taken with the code from before the
    # overlap option existed (the real 60,000 + 10,000 canvases were also checked against the cache
    # written then: identical arrays)
    d = make_multi_mnist(500, seed=7, mnist=fake)
    assert _arrays_digest(d) == "1dad3b23743a4946909a72f3b574c75ab1bcd2dceb99b6b1fd0d691327cf839f"
    assert _arrays_digest(make_multi_mnist(500, seed=7, mnist=fake, overlap="allow")) == _arrays_digest(d)


def _indexed_digits(n: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Blob digits labelled by their own index, so a canvas's labels say which digits it holds."""
    images, _ = _fake_digits(n, seed)
    images[:, 6:22, 8:20] = np.maximum(images[:, 6:22, 8:20], 120)  # dense ink: two blobs that meet overlap
    return images, np.arange(n, dtype=np.int64)


def _raw_canvases(d, digits: np.ndarray) -> np.ndarray:
    """The raw (unclipped) canvases, re-rendered from the labels (= digit indices) and boxes."""
    used = (d.counts[:, None] > torch.arange(2)[None]).numpy()
    lab, box = d.labels.numpy().clip(0), d.boxes.numpy()
    return mm._render(digits.astype(np.float32) / 255, lab, box[..., 2].clip(1), box[..., 0], box[..., 1], used, 50)


def test_reject_redraws_overlapping_canvases_until_their_raw_sum_is_at_most_one():
    digits, labels = _indexed_digits()
    allow = make_multi_mnist(600, seed=4, mnist=(digits, labels))
    reject = make_multi_mnist(600, seed=4, mnist=(digits, labels), overlap="reject")
    # the re-rendering reproduces the canvases
    raw = {}
    for name, d in (("allow", allow), ("reject", reject)):
        canvases = _raw_canvases(d, digits)
        assert np.array_equal(np.rint(np.clip(canvases, 0, 1) * 255), np.rint(d.images.numpy() * 255))  # the canvases, re-rendered
        raw[name] = canvases.reshape(len(canvases), -1).max(1)
    raw_allow, raw_reject = raw["allow"], raw["reject"]
    two = (allow.counts == 2).numpy()
    assert (raw_allow[two] > 1).mean() > 0.2  # many overlapping pairs when overlaps are allowed...
    assert (raw_reject <= 1).all()  # ...and none when they are rejected
    # the same counts; canvases that did not overlap are the same; only overlapping 2-digit ones were redrawn
    assert torch.equal(allow.counts, reject.counts)
    kept = raw_allow <= 1
    assert torch.equal(allow.images[kept], reject.images[kept]) and torch.equal(allow.boxes[kept], reject.boxes[kept])
    assert not torch.equal(allow.boxes[~kept], reject.boxes[~kept])
    assert (reject.labels[reject.counts == 2] >= 0).all()
    # deterministic, and a function of the seed
    again = make_multi_mnist(600, seed=4, mnist=(digits, labels), overlap="reject")
    assert _arrays_digest(again) == _arrays_digest(reject)
    assert _arrays_digest(make_multi_mnist(600, seed=5, mnist=(digits, labels), overlap="reject")) != _arrays_digest(reject)


def test_reject_counts_shapes_and_threshold():
    # flat squares of ink: two of them overlap (sum > 1) exactly where their boxes intersect, at 0.6 + 0.6;
    # at 0.4 + 0.4 the sum stays below 1 and nothing is redrawn
    for level, redrawn in ((153, True), (102, False)):
        square = np.full((1, 28, 28), level, dtype=np.uint8)
        allow = make_multi_mnist(400, seed=0, mnist=square)
        reject = make_multi_mnist(400, seed=0, mnist=square, overlap="reject")
        assert torch.equal(allow.counts, reject.counts)
        assert ((reject.counts >= 0) & (reject.counts <= 2)).all()
        freq = torch.bincount(reject.counts, minlength=3).float() / 400
        assert ((freq - 1 / 3).abs() < 0.08).all(), freq
        b = reject.boxes[reject.counts == 2]
        (r0, c0, s0), (r1, c1, s1) = b[:, 0].unbind(-1), b[:, 1].unbind(-1)
        meet = (torch.minimum(r0 + s0, r1 + s1) > torch.maximum(r0, r1)) & (torch.minimum(c0 + s0, c1 + s1) > torch.maximum(c0, c1))
        if redrawn:
            assert not meet.any()
            assert float(reject.images.max()) == pytest.approx(0.6, abs=1 / 255)
            assert not torch.equal(allow.images, reject.images)
        else:
            assert meet.any()
            assert torch.equal(allow.images, reject.images) and torch.equal(allow.boxes, reject.boxes)
    with pytest.raises(ValueError, match="overlap"):
        make_multi_mnist(10, seed=0, mnist=square, overlap="clip")


def test_reject_gives_up_when_digits_cannot_avoid_each_other(monkeypatch):
    monkeypatch.setattr(mm, "_MAX_REDRAWS", 3)
    white = np.full((1, 28, 28), 255, dtype=np.uint8)
    with pytest.raises(ValueError, match="still overlap"):
        mm._generate(white.astype(np.float32) / 255, None, 200, np.random.default_rng(0), canvas_size=30, overlap="reject")


def test_allow_and_reject_have_their_own_cache_files(tmp_path, caplog):
    m = _fake_mnist()
    p_allow = multi_mnist_cache_path(60, 20, 3, tmp_path, m)
    p_reject = multi_mnist_cache_path(60, 20, 3, tmp_path, m, overlap="reject")
    assert p_allow == multi_mnist_cache_path(60, 20, 3, tmp_path, m, overlap="allow") != p_reject
    assert multi_mnist_cache_path(60000, 10000, 0, tmp_path).name == "multi_mnist-mnist-seed0-train60000-test10000-v1.npz"  # as before
    assert multi_mnist_cache_path(60000, 10000, 0, tmp_path, overlap="reject").name == "multi_mnist-mnist-seed0-reject-train60000-test10000-v1.npz"
    a = load_multi_mnist(60, 20, 3, cache_dir=tmp_path, mnist=m)
    r = load_multi_mnist(60, 20, 3, cache_dir=tmp_path, mnist=m, overlap="reject")
    assert a.overlap == "allow" and r.overlap == "reject" and "reject" in repr(r)
    assert p_allow.is_file() and p_reject.is_file()
    for split in ("train", "test"):
        assert torch.equal(getattr(r, split).images, make_multi_mnist(len(getattr(r, split)), 3, m, split, overlap="reject").images)
    assert load_multi_mnist(60, 20, 3, cache_dir=tmp_path, mnist=m, overlap="reject").source.startswith("cache")
    # a file holding the other kind of canvases (say, copied by hand) is not used
    p_reject.write_bytes(p_allow.read_bytes())
    again = load_multi_mnist(60, 20, 3, cache_dir=tmp_path, mnist=m, overlap="reject")
    assert again.source.startswith("generated") and "overlap='allow'" in caplog.text
    assert torch.equal(again.train.images, r.train.images)
    # a cache written before the option (no 'overlap' entry) holds overlap-allowed canvases
    with np.load(p_allow, allow_pickle=False) as f:
        old = {k: f[k] for k in f.files if k != "overlap"}
    with open(p_allow, "wb") as f:
        np.savez_compressed(f, **old)
    assert load_multi_mnist(60, 20, 3, cache_dir=tmp_path, mnist=m).source.startswith("cache")
    with pytest.raises(ValueError, match="overlap"):
        load_multi_mnist(60, 20, 3, cache_dir=tmp_path, mnist=m, overlap="nope")
