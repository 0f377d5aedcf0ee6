"""Distributed ranks agree before they train (issue 17, point 8): two gloo processes on localhost;
a rank with other data, fewer images or another flag makes every rank exit at once with one line
naming the rank and the difference (not training silently, not hanging until the timeout).
Each test starts two processes (~12 s); all but the first are marked slow."""

import subprocess
import sys
import time

import numpy as np
import pytest
from _dp_launch import Procs, free_port, worker_env
from _helpers import write_idx_dir

from ember.infer import distributed as ed

pytestmark = pytest.mark.skipif(not ed.is_available(), reason="torch.distributed with gloo is not available")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBER_DATA", str(tmp_path / "ember-cache"))


def _data(directory, seed, n_train=40, n_test=8):
    rng = np.random.default_rng(seed)
    write_idx_dir(directory, [rng.integers(0, 256, (n_train, 28, 28)), rng.integers(0, 10, n_train),
                              rng.integers(0, 256, (n_test, 28, 28)), rng.integers(0, 10, n_test)])
    return directory


def _launch(tmp_path, argv_of_rank):
    """One process per rank, each with its own command line; a long group timeout (a hang would show)."""
    port = free_port()
    procs, logs = [], []
    for rank, extra in enumerate(argv_of_rank):
        log = tmp_path / f"agree-{rank}.log"
        with open(log, "w") as f:
            argv = [sys.executable, "-m", "ember", "vae", "--distributed", "--batch-size", "8", "--z-dim", "2", "--hidden-dim",
                    "8", "--epochs", "1", "--no-plots", "--no-progress", "--dist-timeout", "120", "--out", str(tmp_path / "run"),
                    *extra]
            procs.append(subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path,
                                          env=worker_env(rank, len(argv_of_rank), port)))
        logs.append(log)
    return Procs(procs, logs)


def _errors(procs, rank):
    log = procs.text(rank)
    assert "Traceback" not in log, log
    return [line for line in log.splitlines() if line.startswith("ember vae: error:")]


def _run(tmp_path, argv_of_rank):
    procs = _launch(tmp_path, argv_of_rank)
    t = time.monotonic()
    try:
        codes = procs.wait(60)
    finally:
        procs.kill()
    return procs, codes, time.monotonic() - t


def test_a_rank_with_another_data_dir_stops_every_rank(tmp_path):
    a, b = _data(tmp_path / "a", 0), _data(tmp_path / "b", 1)
    procs, codes, seconds = _run(tmp_path, [["--data-dir", str(a)], ["--data-dir", str(b)]])
    assert codes == [1, 1], procs.all_text()
    for rank in (0, 1):
        (err,) = _errors(procs, rank)
        tag = "" if rank == 0 else "rank 1: "
        assert err.startswith(f"ember vae: error: {tag}the ranks disagree at start-up, so none trains: rank 1 differs from "
                              "rank 0: test images: the same shape [8, 784] but other contents"), err
        assert "training images: the same shape [40, 784] but other contents" in err
        assert f"--data-dir '{b}' (rank 0: '{a}')" in err
        assert "[epoch" not in procs.text(rank)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    assert seconds < 40  # at once, not after the 120 s timeout


@pytest.mark.slow
def test_a_rank_with_fewer_images_stops_every_rank_instead_of_hanging(tmp_path):
    a = _data(tmp_path / "a", 0)
    fewer = _data(tmp_path / "fewer", 0, n_train=39)
    procs, codes, seconds = _run(tmp_path, [["--data-dir", str(a)], ["--data-dir", str(fewer)]])
    assert codes == [1, 1], procs.all_text()
    (err,) = _errors(procs, 0)
    assert "training images: 39 items [39, 784] float32, sha256 " in err and "(rank 0: 40 items [40, 784] float32" in err
    assert "another process died" not in procs.all_text()
    assert seconds < 40


@pytest.mark.slow
def test_a_rank_with_another_flag_stops_every_rank(tmp_path):
    a = _data(tmp_path / "a", 0)
    procs, codes, _ = _run(tmp_path, [["--data-dir", str(a)], ["--data-dir", str(a), "--lr", "0.01"]])
    assert codes == [1, 1], procs.all_text()
    (err,) = _errors(procs, 1)
    assert err.startswith("ember vae: error: rank 1: the ranks disagree at start-up, so none trains: rank 1 differs from "
                          "rank 0: lr 0.01 (rank 0: None).")
    assert "--data-dir" not in err  # the data agree: the directories are not shown


@pytest.mark.slow
def test_the_same_data_under_another_path_is_fine(tmp_path):
    a, copy = _data(tmp_path / "a", 0), _data(tmp_path / "copy", 0)  # per-machine paths, same files
    procs, codes, _ = _run(tmp_path, [["--data-dir", str(a)], ["--data-dir", str(copy)]])
    assert codes == [0, 0], procs.all_text()
    assert "[epoch 001]  average training loss" in procs.text(0)


@pytest.fixture
def one_process_group(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    ed.init_from_env()
    yield
    ed.destroy()


def test_one_process_agrees_with_itself_and_skips_a_non_finite_step(one_process_group):
    import math

    import torch

    import ember
    import ember.distributions as dist
    from ember import optim
    from ember.infer import Trace_ELBO

    ed.check_agreement({"lr": 0.1}, {"x": torch.zeros(3)})  # nothing to compare with: no collective

    def model(x):
        loc = ember.param("loc", torch.tensor(0.0))
        with ember.plate("data", len(x)):
            ember.sample("obs", dist.Normal(loc, 1.0), obs=x)

    x = torch.tensor([1.0, 2.0])
    for mode in ("raise", "skip"):
        ember.clear_param_store()
        svi = ed.DataParallelSVI(model, lambda x: None, optim.Adam({"lr": math.inf}), Trace_ELBO(), on_nonfinite=mode)
        svi.setup(x)
        if mode == "raise":
            with pytest.raises(optim.NonFiniteParameterError, match=r"Adam\(lr=inf\) step made parameters \['loc'\]"):
                svi.step(x)
        else:
            with pytest.warns(RuntimeWarning, match=r"DataParallelSVI.step skipped: the Adam\(lr=inf\) step"):
                assert math.isnan(svi.step(x))
        assert ember.param("loc").item() == 0.0


@pytest.mark.slow
def test_a_locked_run_directory_stops_every_rank(tmp_path):
    a = _data(tmp_path / "a", 0)
    (tmp_path / "run").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom ember.examples._runs import RunLock\n"
                               "RunLock(sys.argv[1]).acquire()\nprint('locked', flush=True)\ntime.sleep(60)\n",
                               str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        procs, codes, seconds = _run(tmp_path, [["--data-dir", str(a)], ["--data-dir", str(a)]])
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert codes == [2, 1], procs.all_text()
    assert f"is in use by another ember run (pid {holder.pid} " in _errors(procs, 0)[0]
    (err,) = _errors(procs, 1)
    assert err.startswith("ember vae: error: rank 1: rank 0 failed during claiming the run directory (UsageError: run directory")
    assert seconds < 40
