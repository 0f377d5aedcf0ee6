"""``ember vae --distributed`` on 2 processes (gloo, localhost) with a small fake MNIST: under torchrun it reaches
the loss of a 1-process run with the same global batch, a 1-process distributed run *is* the plain run, a killed
rank makes the other fail at once (not hang) with the last checkpoint intact, and --resume continues with the
same or another number of processes. Nothing is downloaded; Ember's real data cache is not touched."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from _dp_launch import free_port, launch
from _helpers import write_idx_dir

from ember.cli import main
from ember.examples import _runs, vae
from ember.infer import distributed as ed

pytestmark = pytest.mark.skipif(not ed.is_available(), reason="torch.distributed with gloo is not available")

N_TRAIN, N_TEST = 300, 60


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBER_DATA", str(tmp_path / "ember-cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv(vae.TEST_SLEEP_ENV, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def fake_mnist(tmp_path_factory):
    """Ten blurry strokes (one per label) plus noise, as IDX files."""
    d = tmp_path_factory.mktemp("fake-mnist")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:28, 0:28]
    arrays = []
    for n in (N_TRAIN, N_TEST):
        labels = rng.integers(0, 10, n)
        angle = (labels * np.pi / 10)[:, None, None]
        cx, cy = (14 + rng.normal(0, 1.5, (2, n, 1, 1)))
        across = (xx - cx) * np.sin(angle) - (yy - cy) * np.cos(angle)
        along = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        images = np.exp(-(across**2) / 4.0) * (np.abs(along) < 9) + rng.uniform(0, 0.1, (n, 28, 28))
        arrays += [(np.clip(images, 0, 1) * 255).round().astype(np.uint8), labels.astype(np.uint8)]
    write_idx_dir(d, arrays)
    return d


def _common(fake_mnist, *extra):
    return ["--data-dir", str(fake_mnist), "--batch-size", "16", "--z-dim", "4", "--hidden-dim", "32", "--seed", "5",
            "--test-frequency", "1", "--no-plots", "--no-progress", "--embedding", "pca", *extra]


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _ckpt(run):
    return _runs.load_checkpoint(run / "checkpoint.pt", vae.CHECKPOINT_KIND)


def _strip(records):
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in records]


def test_one_process_distributed_run_is_the_plain_run(fake_mnist, tmp_path, monkeypatch):
    # the last batch (300 = 18 x 16 + 12) is kept as it is; rank 0 keeps the run seed: the same run, bit for bit
    assert main(["vae", *_common(fake_mnist), "--epochs", "2", "--out", str(tmp_path / "plain")]) == 0
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    assert main(["vae", *_common(fake_mnist), "--epochs", "2", "--out", str(tmp_path / "d1"), "--distributed"]) == 0
    assert not torch.distributed.is_initialized()  # left again
    a, b = _ckpt(tmp_path / "plain"), _ckpt(tmp_path / "d1")
    assert b["world_size"] == 1 and len(b["rng_ranks"]) == 1
    for k, v in a["params"]["params"].items():
        assert torch.equal(v, b["params"]["params"][k]), k
    assert _strip(_metrics(tmp_path / "plain")) == _strip(_metrics(tmp_path / "d1"))


def test_two_processes_under_torchrun_reach_the_loss_of_one_process(fake_mnist, tmp_path, capfd):
    """The acceptance test: a 2-process epoch (global batch 16 = 8 + 8, last batch 12 = 6 + 6) ends at the loss of
    a 1-process run with the same global batch, within the noise of the latent draws; then --resume continues
    the 2-process run with one process."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["vae", *_common(fake_mnist), "--epochs", "2", "--out", str(one)]) == 0
    capfd.readouterr()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "ember", "vae", "--distributed", *_common(fake_mnist), "--epochs", "2", "--out", str(two)],
                          capture_output=True, text=True, timeout=90, env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("average training loss") == 2  # rank 0 alone prints
    assert "2 processes (gloo)" in proc.stdout
    m1, m2 = _metrics(one), _metrics(two)
    assert [r["epoch"] for r in m2] == [1, 2]
    for r1, r2 in zip(m1, m2):
        assert r2["train_images"] == N_TRAIN
        assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=0.015), (r1, r2)
        assert r2["test_loss"] == pytest.approx(r1["test_loss"], rel=0.015), (r1, r2)
    assert m2[1]["train_loss"] < m2[0]["train_loss"]
    ckpt = _ckpt(two)
    assert ckpt["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2 and ckpt["epoch"] == 2
    assert not torch.equal(ckpt["rng_ranks"][0]["torch"], ckpt["rng_ranks"][1]["torch"])  # a stream per rank

    # a 2-process checkpoint resumed by one (non-distributed) process
    assert main(["vae", "--data-dir", str(fake_mnist), "--out", str(two), "--resume", "--epochs", "3", "--no-progress"]) == 0
    assert f"resuming after epoch 2 from {two / 'checkpoint.pt'}" in capfd.readouterr().out
    assert [r["epoch"] for r in _metrics(two)] == [1, 2, 3]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_a_killed_rank_makes_the_other_fail_at_once_and_the_checkpoint_survives(fake_mnist, tmp_path):
    """The acceptance test: SIGKILL rank 1 in the middle of epoch 2 (of 3): rank 0 stops with a one-line error within
    seconds, although the group's timeout is 60 s; the epoch-1 checkpoint loads and a 2-process --resume finishes."""
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "ember", "vae", "--distributed", *_common(fake_mnist), "--epochs", "3",
            "--out", str(run), "--dist-timeout", "60"]
    procs = launch(argv, 2, tmp_path, name="kill-", EMBER_TEST_SLEEP_PER_STEP="0.05")
    try:
        deadline = time.monotonic() + 60
        while "ember-test: epoch 2 step 3 of 19\n" not in procs.text(1):
            assert all(p.poll() is None for p in procs.procs), procs.all_text()
            assert time.monotonic() < deadline, procs.all_text()
            time.sleep(0.01)
        os.kill(procs.procs[1].pid, signal.SIGKILL)
        t = time.monotonic()
        code = procs.procs[0].wait(timeout=30)
        seconds = time.monotonic() - t
    finally:
        procs.kill()
    log = procs.text(0)
    assert code == 1, log
    assert seconds < 15, (seconds, log)
    errors = [line for line in log.splitlines() if line.startswith("ember vae: error:")]
    assert len(errors) == 1 and "another process died" in errors[0] and "Traceback" not in log, log
    assert "[epoch 001]  average training loss" in log and "[epoch 002]  average training loss" not in log
    ckpt = _ckpt(run)  # intact: it loads, and its checksum matches
    assert ckpt["epoch"] == 1 and ckpt["world_size"] == 2
    assert [r["epoch"] for r in _metrics(run)] == [1]

    # restarted with the same number of processes
    procs = launch([sys.executable, "-m", "ember", "vae", "--distributed", "--data-dir", str(fake_mnist), "--out", str(run),
                    "--resume", "--epochs", "2", "--no-progress"], 2, tmp_path, name="resume-")
    assert procs.wait(60) == [0, 0], procs.all_text()
    assert "resuming after epoch 1" in procs.text(0) and "written by" not in procs.text(0)
    assert [r["epoch"] for r in _metrics(run)] == [1, 2]


def test_distributed_without_torchrun_is_a_usage_error(fake_mnist, tmp_path, monkeypatch, capsys):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    assert main(["vae", *_common(fake_mnist), "--epochs", "1", "--out", str(tmp_path / "run"), "--distributed"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ember vae: error: --distributed:") and "torchrun" in err and len(err.splitlines()) == 1


@pytest.mark.slow
def test_resume_with_the_same_number_of_processes_is_bit_for_bit(fake_mnist, tmp_path):
    """2 processes for 2 epochs, against 1 epoch then --resume for the 2nd: the same checkpoint (parameters,
    optimizer state, every rank's random state, history)."""
    full, part = tmp_path / "full", tmp_path / "part"

    def run2(out, *extra):
        procs = launch([sys.executable, "-m", "ember", "vae", "--distributed", *_common(fake_mnist), "--out", str(out), *extra],
                       2, tmp_path, name=f"{out.name}-")
        assert procs.wait(90) == [0, 0], procs.all_text()

    run2(full, "--epochs", "2")
    run2(part, "--epochs", "1")
    run2(part, "--epochs", "2", "--resume")
    assert _ckpt(full)["digest"] == _ckpt(part)["digest"]
    assert _strip(_metrics(full)) == _strip(_metrics(part))
