"""Tests of ember.examples.vae and ``ember vae`` on a small fake MNIST written as IDX files here.

Nothing is downloaded and Ember's real data cache is not touched (tests/examples/conftest.py).
The run helpers of ember.examples._runs are tested in test_runs.py.
"""

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch
from _helpers import PNG_MAGIC, write_idx_dir

import ember
from ember import poutine
from ember.cli import main
from ember.examples import _runs, vae
from ember.params.serialize import atomic_save

N_TRAIN, N_TEST = 300, 60
PNGS = ("elbo.png", "reconstructions.png", "samples.png", "embedding.png")


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
    write_idx_dir(d, [a for n in (N_TRAIN, N_TEST) for a in _fake_digits(n, rng)])
    return d


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


def test_report_settings_default_to_the_resumed_runs_but_may_be_changed():
    import argparse

    p = argparse.ArgumentParser()
    vae.add_arguments(p)
    saved = {**vae._TRAINING_DEFAULTS, "epochs": 3, "test_frequency": 2, "embedding": "pca", "embedding_points": 30}
    cfg = vae._training_settings(p.parse_args(["--resume"]), {"args": saved})
    assert (cfg["test_frequency"], cfg["embedding"], cfg["embedding_points"], cfg["epochs"]) == (2, "pca", 30, 3)
    cfg = vae._training_settings(p.parse_args(["--resume", "--test-frequency", "1", "--embedding", "tsne"]), {"args": saved})
    assert (cfg["test_frequency"], cfg["embedding"], cfg["embedding_points"]) == (1, "tsne", 30)
    older = {k: v for k, v in saved.items() if k not in vae._REPORT_DEFAULTS}  # a checkpoint from before they were saved
    cfg = vae._training_settings(p.parse_args(["--resume"]), {"args": older})
    assert (cfg["test_frequency"], cfg["embedding"], cfg["embedding_points"]) == (5, "auto", None)


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


def _flip_inside_largest_tensor(path):
    """Flip one byte in the middle of the largest record of the torch zip archive (a tensor's data)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    assert "/data/" in info.filename and info.compress_type == zipfile.ZIP_STORED
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.file_size // 2] ^= 0x40
    path.write_bytes(bytes(data))


def test_checkpoint_with_flipped_bytes_gives_a_clear_error(fake_mnist, tmp_path, capsys):
    # torch.load does not notice flipped bytes inside a tensor's data (they load as other
    # numbers): the checkpoint's digest does
    run = tmp_path / "run"
    assert _cli(fake_mnist, run, "--epochs", "1", "--no-plots", "--z-dim", "4", "--hidden-dim", "16") == 0
    ckpt = run / "checkpoint.pt"
    assert _runs.load_checkpoint(ckpt, vae.CHECKPOINT_KIND)["digest"].startswith("sha256:")
    _flip_inside_largest_tensor(ckpt)
    capsys.readouterr()
    assert _cli(fake_mnist, run, "--epochs", "2", "--no-plots", "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ember vae: error:") and str(ckpt) in err
    assert "corrupted or tampered with" in err and "checksum" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert [r["epoch"] for r in _metrics(run)] == [1]  # nothing was trained or truncated


# ---- killed mid-epoch ------------------------------------------------------------------------------


def _spawn_vae(args, log, sleep_per_step=None):
    env = dict(os.environ)
    env.pop(vae.TEST_SLEEP_ENV, None)
    if sleep_per_step is not None:
        env[vae.TEST_SLEEP_ENV] = str(sleep_per_step)
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "ember", "vae", *args], stdout=f, stderr=subprocess.STDOUT, env=env)


def _finish(proc, log, timeout=120):
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0, log.read_text()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_sigkill_in_the_middle_of_epoch_3_then_resume_ends_as_an_uninterrupted_run(fake_mnist, tmp_path):
    """The acceptance test: ``ember vae`` SIGKILLed in the middle of epoch 3 and restarted with
    ``--resume`` continues from the epoch-2 checkpoint and ends with the same parameters,
    metrics and figures (byte for byte) as an uninterrupted run with the same seed."""
    epochs, batch = 4, 16
    steps = -(-N_TRAIN // batch)  # 19 steps per epoch
    common = ["--data-dir", str(fake_mnist), "--batch-size", str(batch), "--z-dim", "4", "--hidden-dim", "32",
              "--seed", "11", "--test-frequency", "2", "--embedding", "pca", "--no-progress"]
    full, killed = tmp_path / "full", tmp_path / "killed"

    # killed: EMBER_TEST_SLEEP_PER_STEP makes the run report each step and sleep after it,
    # so the SIGKILL lands at a known step of epoch 3, with 17 steps (>= 1.7 s) still to go
    kill_log = tmp_path / "killed.log"
    proc = _spawn_vae([*common, "--epochs", str(epochs), "--out", str(killed)], kill_log, sleep_per_step=0.1)
    try:
        deadline = time.monotonic() + 120
        while f"ember-test: epoch 3 step 2 of {steps}\n" not in kill_log.read_text():
            assert proc.poll() is None, kill_log.read_text()
            assert time.monotonic() < deadline, kill_log.read_text()
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    text = kill_log.read_text()
    assert "[epoch 002]  average training loss" in text and "[epoch 003]  average training loss" not in text
    assert f"epoch 3 step {steps} of {steps}" not in text
    assert _runs.load_checkpoint(killed / "checkpoint.pt", vae.CHECKPOINT_KIND)["epoch"] == 2
    assert [r["epoch"] for r in _metrics(killed)] == [1, 2]
    assert not any((killed / name).exists() for name in PNGS)

    # restarted with only --resume and the total: the model, data order, test schedule and
    # embedding settings come from the checkpoint
    resume_log = tmp_path / "resume.log"
    _finish(_spawn_vae(["--data-dir", str(fake_mnist), "--out", str(killed), "--resume", "--epochs", str(epochs),
                        "--no-progress"], resume_log), resume_log)
    assert "resuming after epoch 2" in resume_log.read_text()

    # uninterrupted, the same way (a fresh process)
    full_log = tmp_path / "full.log"
    _finish(_spawn_vae([*common, "--epochs", str(epochs), "--out", str(full)], full_log), full_log)

    a, b = _params(full), _params(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ca = _runs.load_checkpoint(full / "checkpoint.pt", vae.CHECKPOINT_KIND)
    cb = _runs.load_checkpoint(killed / "checkpoint.pt", vae.CHECKPOINT_KIND)
    assert ca["digest"] == cb["digest"]  # parameters, optimizer and RNG states, history: all equal
    ma, mb = _metrics(full), _metrics(killed)
    assert [r["epoch"] for r in mb] == list(range(1, epochs + 1))
    for ra, rb in zip(ma, mb):
        assert {k: v for k, v in ra.items() if not k.endswith("_seconds")} == {k: v for k, v in rb.items() if not k.endswith("_seconds")}
    assert "test_loss" in mb[-1]
    for name in PNGS:
        assert (full / name).read_bytes() == (killed / name).read_bytes(), name


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


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("ember vae: error:") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_out_naming_a_file_exits_2(fake_mnist, tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("x")
    assert _cli(fake_mnist, f, "--epochs", "1", "--no-plots") == 2
    assert _one_line_error(capsys) == f"ember vae: error: --out {f}: exists and is not a directory"
    assert f.read_text() == "x"


def test_embedding_tsne_without_scikit_learn_fails_before_training(fake_mnist, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    run = tmp_path / "run"
    common = ("--epochs", "1", "--z-dim", "4", "--hidden-dim", "16", "--embedding", "tsne")
    assert _cli(fake_mnist, run, *common) == 2
    assert "scikit-learn" in _one_line_error(capsys)
    assert not run.exists()  # nothing was trained
    assert _cli(fake_mnist, run, *common, "--no-plots") == 0  # no figures: no embedding needed
    assert [r["epoch"] for r in _metrics(run)] == [1]


def test_resume_names_the_checkpoint_it_loaded(fake_mnist, tmp_path, capsys):
    run = tmp_path / "run"
    small = ("--no-plots", "--z-dim", "4", "--hidden-dim", "16")
    assert _cli(fake_mnist, run, "--epochs", "1", *small) == 0
    saved = run / "saved.pt"
    (run / "checkpoint.pt").rename(saved)
    capsys.readouterr()
    assert _cli(fake_mnist, run, "--epochs", "2", "--no-plots", "--resume", str(saved)) == 0
    assert f"resuming after epoch 1 from {saved}" in capsys.readouterr().out
    assert [r["epoch"] for r in _metrics(run)] == [1, 2]

    state = _runs.load_checkpoint(saved, vae.CHECKPOINT_KIND)
    payload = {k: v for k, v in state.items() if k not in ("format", "version", "digest")}
    _runs.save_checkpoint(saved, vae.CHECKPOINT_KIND, {**payload, "history": {"train": 5, "test": []}})
    assert _cli(fake_mnist, run, "--epochs", "3", "--no-plots", "--resume", str(saved)) == 2
    err = _one_line_error(capsys)
    assert f"{saved}: malformed checkpoint" in err and "checkpoint.pt" not in err
