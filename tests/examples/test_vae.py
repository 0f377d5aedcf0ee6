"""Tests of ember.examples.vae and ``ember vae`` on a small fake MNIST written as IDX files here.

Nothing is downloaded and Ember's real data cache is not touched (EMBER_DATA points into tmp_path).
"""

import json
import struct
import subprocess
import urllib.request

import numpy as np
import pytest
import torch

import ember
from ember import poutine
from ember.cli import main
from ember.examples import _runs, vae
from ember.params.serialize import atomic_save

N_TRAIN, N_TEST = 300, 60
PNGS = ("elbo.png", "reconstructions.png", "samples.png", "embedding.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _idx(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.astype(np.uint8).tobytes()


def _fake_digits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 28x28 images: one of ten blurry strokes per label (so there is structure to learn), plus noise."""
    labels = rng.integers(0, 10, n)
    yy, xx = np.mgrid[0:28, 0:28]
    images = np.zeros((n, 28, 28))
    for i, d in enumerate(labels):
        angle = d * np.pi / 10
        cx, cy = 14 + rng.normal(0, 1.5), 14 + rng.normal(0, 1.5)
        dist_to_line = np.abs((xx - cx) * np.sin(angle) - (yy - cy) * np.cos(angle))
        along = np.abs((xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle))
        images[i] = np.exp(-(dist_to_line**2) / 4.0) * (along < 9)
    images = np.clip(images + rng.uniform(0, 0.1, images.shape), 0, 1)
    return (images * 255).round().astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture(scope="module")
def fake_mnist(tmp_path_factory):
    d = tmp_path_factory.mktemp("fake-mnist")
    rng = np.random.default_rng(0)
    for split, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        x, y = _fake_digits(n, rng)
        (d / f"{split}-images-idx3-ubyte").write_bytes(_idx(x, 2051))
        (d / f"{split}-labels-idx1-ubyte").write_bytes(_idx(y, 2049))
    return d


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBER_DATA", str(tmp_path / "ember-cache"))
    monkeypatch.chdir(tmp_path)  # a default runs/ directory would land here

    def offline(*args, **kwargs):
        raise AssertionError("tests must not download anything")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(subprocess, "run", offline)


def _cli(fake_mnist, out, *extra):
    argv = ["vae", "--data-dir", str(fake_mnist), "--train-subset", str(N_TRAIN), "--batch-size", "32",
            "--out", str(out), "--no-progress", "--embedding", "pca", *extra]
    return main(argv)


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _params(run):
    ckpt = _runs.load_checkpoint(run / "checkpoint.pt", vae.CHECKPOINT_KIND)
    return ckpt["params"]["params"]


# ---- the model ---------------------------------------------------------------------------------


def test_model_and_guide_sites_and_helpers():
    m = vae.VAE(z_dim=20, hidden_dim=100)
    x = torch.rand(7, 784).round()  # binary: the tests run with distribution validation on
    guide_tr = poutine.trace(m.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(m.model, trace=guide_tr)).get_trace(x)
    assert torch.equal(model_tr.nodes["latent"]["value"], guide_tr.nodes["latent"]["value"])
    assert model_tr.nodes["obs"]["is_observed"]
    assert model_tr.nodes["obs"]["fn"].event_shape == (784,) and model_tr.nodes["obs"]["fn"].batch_shape == (7,)
    assert guide_tr.nodes["latent"]["fn"].event_shape == (20,)
    names = set(ember.get_param_store().keys())
    assert "decoder$$$fc1.weight" in names and "encoder$$$fc22.bias" in names
    assert m.encode(x).shape == (7, 20)
    r = m.reconstruct(x)
    assert r.shape == (7, 784) and ((r >= 0) & (r <= 1)).all()
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(m.sample(5, generator=g1), m.sample(5, generator=g2))
    assert m.sample(5).shape == (5, 784)


def test_training_steps_reduce_the_loss_on_tensors():
    ember.distributions.enable_validation(False)
    torch.manual_seed(0)
    m = vae.VAE(z_dim=8, hidden_dim=64)
    x = torch.rand(128, 784).round()
    svi = vae.make_svi(m, lr=1e-2)
    first, _ = vae.train_epoch(svi, x, 32, torch.Generator().manual_seed(0))
    for e in range(4):
        last, quarters = vae.train_epoch(svi, x, 32, torch.Generator().manual_seed(e))
    assert len(quarters) == 4
    assert last < first
    assert vae.evaluate(svi, x, 64) > 0


def test_seed_000_setting_is_reachable_by_flags():
    import argparse

    p = argparse.ArgumentParser()
    vae.add_arguments(p)
    cfg = vae._training_settings(p.parse_args(["--z-dim", "20", "--hidden-dim", "100", "--batch-size", "250"]), None)
    assert (cfg["z_dim"], cfg["hidden_dim"], cfg["batch_size"], cfg["lr"]) == (20, 100, 250, 1e-3)
    cfg = vae._training_settings(p.parse_args([]), None)
    assert (cfg["z_dim"], cfg["hidden_dim"], cfg["batch_size"], cfg["epochs"]) == (50, 400, 256, vae.DEFAULT_EPOCHS)


def test_embedding_pca_shapes():
    coords, how = vae.embed_2d(torch.randn(50, 6), method="pca")
    assert coords.shape == (50, 2) and how == "PCA"


@pytest.mark.filterwarnings("ignore:Could not find the number of physical cores")  # joblib's probe meets our subprocess stub
def test_embedding_tsne_when_scikit_learn_is_installed():
    pytest.importorskip("sklearn")
    coords, how = vae.embed_2d(torch.randn(40, 6), method="tsne")
    assert coords.shape == (40, 2) and how == "t-SNE"
    assert vae.embed_2d(torch.randn(40, 6), method="auto")[1] == "t-SNE"


def test_embedding_tsne_without_scikit_learn_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    with pytest.raises(_runs.UsageError, match="scikit-learn"):
        vae.embed_2d(torch.randn(10, 3), method="tsne")
    assert vae.embed_2d(torch.randn(10, 3), method="auto")[1] == "PCA"


# ---- run helpers -------------------------------------------------------------------------------


def test_epoch_generator_depends_only_on_seed_and_epoch():
    a = torch.randperm(100, generator=_runs.epoch_generator(3, 7))
    torch.randperm(100, generator=_runs.epoch_generator(3, 6))
    assert torch.equal(a, torch.randperm(100, generator=_runs.epoch_generator(3, 7)))
    assert not torch.equal(a, torch.randperm(100, generator=_runs.epoch_generator(3, 8)))
    assert not torch.equal(a, torch.randperm(100, generator=_runs.epoch_generator(4, 7)))


def test_rng_state_roundtrips_through_a_weights_only_file(tmp_path):
    import random

    ember.set_rng_seed(5)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    random.gauss(0, 1)
    state = _runs.rng_state()
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], np.random.normal(), random.gauss(0, 1))
    atomic_save(state, tmp_path / "rng.pt")
    _runs.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)], np.random.normal(), random.gauss(0, 1))
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1])
    assert expected[2:] == again[2:]


# ---- the command line, end to end --------------------------------------------------------------


def test_cli_end_to_end(fake_mnist, tmp_path, capsys):
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    assert _cli(fake_mnist, run, "--epochs", "2", "--test-frequency", "1") == 0
    assert torch.get_num_threads() == threads  # --threads 1 (the default) is undone when main returns
    out = capsys.readouterr().out
    assert out.count(f"run directory: {run}") == 2  # at the start and at the end
    assert "average training loss" in out and "average test loss" in out
    recs = _metrics(run)
    assert [r["epoch"] for r in recs] == [1, 2]
    for r in recs:
        assert r["train_images"] == N_TRAIN
        assert np.isfinite(r["train_loss"]) and np.isfinite(r["test_loss"]) and r["train_loss"] > 0
    q = recs[0]["train_loss_by_quarter"]
    assert len(q) == 4 and q[-1] < q[0], q  # the loss fell within the first epoch
    assert recs[1]["train_loss"] < recs[0]["train_loss"]
    ckpt = _runs.load_checkpoint(run / "checkpoint.pt", vae.CHECKPOINT_KIND)
    assert ckpt["epoch"] == 2 and ckpt["args"]["z_dim"] == 50 and ckpt["args"]["hidden_dim"] == 400
    assert set(ckpt["rng"]) >= {"torch", "numpy", "random"}
    assert any(k.startswith("decoder$$$") for k in ckpt["params"]["params"])
    assert ckpt["optim"]["format"] == "ember.optim"
    for name in PNGS:
        data = (run / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000, name


def test_resume_is_identical_to_an_uninterrupted_run(fake_mnist, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    common = ("--no-plots", "--z-dim", "10", "--hidden-dim", "64", "--seed", "3", "--test-frequency", "5")
    assert _cli(fake_mnist, full, "--epochs", "3", *common) == 0
    assert _cli(fake_mnist, part, "--epochs", "1", *common) == 0
    assert _cli(fake_mnist, part, "--epochs", "3", "--resume", *common[:1]) == 0  # architecture etc. come from the checkpoint
    a, b = _params(full), _params(part)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ma, mb = _metrics(full), _metrics(part)
    assert [r["epoch"] for r in mb] == [1, 2, 3]
    assert [r["train_loss"] for r in ma] == [r["train_loss"] for r in mb]
    assert ma[-1]["test_loss"] == mb[-1]["test_loss"]
    for r in ma + mb:  # no tqdm escapes or timing noise needed to compare
        assert "train_seconds" in r


def test_resume_rejects_a_different_architecture(fake_mnist, tmp_path, capsys):
    run = tmp_path / "run"
    assert _cli(fake_mnist, run, "--epochs", "1", "--no-plots", "--z-dim", "10", "--hidden-dim", "32") == 0
    capsys.readouterr()
    assert _cli(fake_mnist, run, "--epochs", "2", "--no-plots", "--resume", "--z-dim", "12") == 2
    err = capsys.readouterr().err
    assert "--z-dim 12" in err and "10" in err and "Traceback" not in err


def test_truncated_or_tampered_checkpoint_gives_a_clear_error(fake_mnist, tmp_path, capsys):
    run = tmp_path / "run"
    assert _cli(fake_mnist, run, "--epochs", "1", "--no-plots", "--z-dim", "4", "--hidden-dim", "16") == 0
    ckpt = run / "checkpoint.pt"
    data = ckpt.read_bytes()
    capsys.readouterr()

    ckpt.write_bytes(data[: len(data) // 2])
    assert _cli(fake_mnist, run, "--epochs", "2", "--no-plots", "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ember vae: error:") and "truncated" in err and str(ckpt) in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err

    torch.save({"format": vae.CHECKPOINT_KIND, "version": 1, "evil": torch.nn.Linear(1, 1)}, ckpt)  # not plain data
    assert _cli(fake_mnist, run, "--epochs", "2", "--no-plots", "--resume") == 2
    assert "refuses to unpickle" in capsys.readouterr().err

    atomic_save({"format": "something else", "version": 1}, ckpt)
    assert _cli(fake_mnist, run, "--epochs", "2", "--no-plots", "--resume") == 2
    assert "not a ember.examples.vae checkpoint" in capsys.readouterr().err

    assert _cli(fake_mnist, tmp_path / "nowhere", "--epochs", "2", "--no-plots", "--resume") == 2
    assert "not found" in capsys.readouterr().err


def test_garbage_data_dir_exits_2_with_one_line(tmp_path, capsys):
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (garbage / name).write_bytes(b"this is not MNIST at all" * 10)
    argv = ["vae", "--epochs", "1", "--no-progress", "--no-plots", "--out", str(tmp_path / "run")]
    assert main(argv + ["--data-dir", str(garbage)]) == 2
    assert not (tmp_path / "run").exists()  # no empty run directory left behind
    err = capsys.readouterr().err.strip()
    assert err.startswith("ember vae: error:") and "magic number" in err and "train-images-idx3-ubyte" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(argv + ["--data-dir", str(empty)]) == 2  # named explicitly: no silent fallback to the cache
    assert "no IDX files" in capsys.readouterr().err

    assert main(argv + ["--data-dir", str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error(fake_mnist, tmp_path, capsys):
    assert _cli(fake_mnist, tmp_path / "run", "--device", "cuda", "--epochs", "1") == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_bad_flag_values_exit_2(fake_mnist, tmp_path, capsys):
    assert _cli(fake_mnist, tmp_path / "run", "--epochs", "0") == 2
    assert "--epochs must be a positive integer" in capsys.readouterr().err
    assert _cli(fake_mnist, tmp_path / "run", "--lr", "-1") == 2


def test_scale_still_runs(tmp_path):
    assert main(["scale", "--steps", "20", "--no-plot", "--out", str(tmp_path / "scale")]) == 0
