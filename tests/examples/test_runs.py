"""Tests of ember.examples._runs: run directories, settings, resuming, metrics, RNG and checkpoints."""

import argparse
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch

import ember
from ember.examples import _runs
from ember.params.serialize import CheckpointError, atomic_save


def _one_line(message):
    assert len(str(message).splitlines()) == 1, message
    return str(message)


# ---- run directories ---------------------------------------------------------------------------


def test_make_run_dir_claims_a_fresh_timestamped_directory(monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda fmt, *a: fmt.replace("%Y%m%d-%H%M%S", "20240101-120000"))
    # three runs started in the same second: each gets a directory of its own
    made = [_runs.make_run_dir(None, "vae") for _ in range(3)]
    assert [str(p) for p in made] == [os.path.join("runs", n) for n in ("vae-20240101-120000", "vae-20240101-120000-2", "vae-20240101-120000-3")]
    assert all(p.is_dir() and not any(p.iterdir()) for p in made)


def test_make_run_dir_with_out(tmp_path):
    out = tmp_path / "a" / "b"
    assert _runs.make_run_dir(str(out), "vae") == out and out.is_dir()
    (out / "metrics.jsonl").write_text("{}\n")
    assert _runs.make_run_dir(str(out), "vae") == out  # an existing run directory is fine (--resume)
    assert (out / "metrics.jsonl").read_text() == "{}\n"


def test_out_that_is_a_file_is_a_usage_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(_runs.UsageError) as e:
        _runs.make_run_dir(str(f), "vae")
    assert _one_line(e.value) == f"--out {f}: exists and is not a directory"
    with pytest.raises(_runs.UsageError, match="exists and is not a directory"):
        _runs.resolve_resume(str(f), None, "vae")  # up front, before any data is loaded
    with pytest.raises(_runs.UsageError, match=f"--out {f / 'sub'}: cannot create the directory"):
        _runs.make_run_dir(str(f / "sub"), "vae")
    assert f.read_text() == "x"


def test_checkpoint_path(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "other.pt").write_bytes(b"")
    assert _runs.checkpoint_path(run) == run / _runs.CHECKPOINT_NAME
    assert _runs.checkpoint_path(run / "other.pt") == run / "other.pt"
    assert _runs.checkpoint_path(tmp_path / "missing.pt") == tmp_path / "missing.pt"
    assert _runs.checkpoint_path(tmp_path / "missing") == tmp_path / "missing" / _runs.CHECKPOINT_NAME


def test_resolve_resume(tmp_path):
    assert _runs.resolve_resume(None, None, "vae") == (None, None)  # a new runs/vae-<time>, named when created
    assert _runs.resolve_resume(str(tmp_path / "r"), None, "vae") == (tmp_path / "r", None)
    with pytest.raises(_runs.UsageError, match="no runs/vae-\\* with a checkpoint"):
        _runs.resolve_resume(None, "", "vae")
    latest = tmp_path / "runs" / "vae-1"
    _runs.save_checkpoint(latest / _runs.CHECKPOINT_NAME, "k", {"epoch": 1})
    assert _runs.resolve_resume(None, "", "vae") == (latest.relative_to(tmp_path), latest.relative_to(tmp_path) / _runs.CHECKPOINT_NAME)
    assert _runs.resolve_resume(str(latest), "", "vae") == (latest, latest / _runs.CHECKPOINT_NAME)
    assert _runs.resolve_resume(None, str(latest / "saved.pt"), "vae") == (latest, latest / "saved.pt")
    with pytest.raises(_runs.UsageError, match="name different run directories"):
        _runs.resolve_resume(str(tmp_path / "elsewhere"), str(latest), "vae")


def test_resolve_run_loads_and_type_checks_the_checkpoint(tmp_path):
    path = tmp_path / "run" / _runs.CHECKPOINT_NAME
    assert _runs.resolve_run(None, None, "vae", "k", ("epoch",), {"epoch": int}) == (None, None, None)
    _runs.save_checkpoint(path, "k", {"epoch": 2, "args": {}})
    run_dir, ckpt_path, ckpt = _runs.resolve_run(str(path.parent), "", "vae", "k", ("epoch",), {"epoch": int, "args": dict})
    assert (run_dir, ckpt_path, ckpt["epoch"]) == (path.parent, path, 2)
    with pytest.raises(CheckpointError, match="missing history"):
        _runs.resolve_run(None, str(path), "vae", "k", ("epoch", "history"), {})
    _runs.save_checkpoint(path, "k", {"epoch": "2", "args": []})
    with pytest.raises(CheckpointError) as e:
        _runs.resolve_run(None, str(path), "vae", "k", ("epoch",), {"epoch": int, "args": dict, "absent": int})
    assert _one_line(e.value) == f"{path}: malformed checkpoint (epoch, args of the wrong type)"


# ---- settings and resuming -----------------------------------------------------------------------


def _ns(**kw):
    return argparse.Namespace(**{"z_dim": None, "lr": None, "epochs": None, "embedding": None, **kw})


def test_merge_settings():
    fixed, overridable = {"z_dim": 50, "lr": 1e-3}, {"embedding": "auto", "epochs": 10}
    assert _runs.merge_settings(_ns(), None, fixed, overridable) == {"z_dim": 50, "lr": 1e-3, "embedding": "auto", "epochs": 10}
    assert _runs.merge_settings(_ns(z_dim=8, epochs=3), None, fixed, overridable)["z_dim"] == 8
    saved = {"z_dim": 20, "embedding": "pca", "epochs": 4}  # an older checkpoint without "lr"
    cfg = _runs.merge_settings(_ns(), saved, fixed, overridable)
    assert cfg == {"z_dim": 20, "lr": 1e-3, "embedding": "pca", "epochs": 4}
    assert list(cfg) == ["z_dim", "lr", "embedding", "epochs"]
    cfg = _runs.merge_settings(_ns(z_dim=20, lr=0.1, embedding="tsne", epochs=9), saved, fixed, overridable)
    assert cfg == {"z_dim": 20, "lr": 0.1, "embedding": "tsne", "epochs": 9}
    with pytest.raises(_runs.UsageError) as e:
        _runs.merge_settings(_ns(z_dim=12), saved, fixed, overridable)
    assert _one_line(e.value).startswith("--z-dim 12: the run being resumed used 20;")


class _Optim:
    def __init__(self):
        self.state = None

    def set_state(self, state):
        if not isinstance(state, dict):
            raise TypeError("expected a dict")
        self.state = state


def test_restore_names_the_checkpoint_it_loaded(tmp_path, capsys):
    ember.param("w", torch.zeros(2))
    params = ember.get_param_store().get_plain_state()
    ember.clear_param_store()
    metrics = _runs.MetricsLog(tmp_path)
    for e in (1, 2, 3):
        metrics.append({"epoch": e})
    ember.set_rng_seed(4)
    rng, expected = _runs.rng_state(), torch.rand(3)
    ckpt = {"epoch": 2, "params": params, "optim": {"o": 1}, "rng": rng, "extra": [5]}
    optim = _Optim()
    path = tmp_path / "saved.pt"
    assert _runs.restore(path, ckpt, optim, metrics, "epoch", lambda c: c["extra"][0]) == (2, 5)
    assert f"resuming after epoch 2 from {path}" in capsys.readouterr().out
    assert torch.equal(ember.param("w"), torch.zeros(2)) and optim.state == {"o": 1}
    assert torch.equal(torch.rand(3), expected)
    assert [r["epoch"] for r in metrics.read()] == [1, 2]
    with pytest.raises(CheckpointError) as e:
        _runs.restore(path, {**ckpt, "optim": None}, optim, metrics, "epoch")
    assert _one_line(e.value) == f"{path}: malformed checkpoint (TypeError: expected a dict)"


def test_run_setup_restores_threads_and_validation(tmp_path, capsys):
    import ember.distributions as dist
    from ember.runtime import is_validation_enabled

    threads = torch.get_num_threads()
    ember.enable_validation(True)
    with pytest.raises(RuntimeError, match="boom"):
        with _runs.RunSetup(1, validation=(False, False)):
            assert torch.get_num_threads() == 1
            assert not is_validation_enabled() and not dist.is_validation_enabled()
            raise RuntimeError("boom")
    assert torch.get_num_threads() == threads and is_validation_enabled() and dist.is_validation_enabled()
    with _runs.RunSetup(0, validation=(True, False)) as setup:
        assert torch.get_num_threads() == threads  # 0: torch's choice, left alone
        assert is_validation_enabled() and not dist.is_validation_enabled()
        run = setup.started(tmp_path / "run", "vae", "3 images")
    assert run.is_dir()
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"run directory: {run}" and out[1].startswith("data: 3 images; ") and out[1].endswith(" s")
    assert dist.is_validation_enabled()


def test_fork_rng_leaves_the_global_stream_alone():
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    with _runs.fork_rng(torch.device("cpu")):
        torch.manual_seed(99)
        torch.rand(5)
    assert torch.equal(torch.rand(3), expected)


def test_load_mnist_arg_reads_only_the_named_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to the cache, so no warning about one
        with pytest.raises(_runs.UsageError) as e:
            _runs.load_mnist_arg(str(tmp_path / "empty"))
    assert _one_line(e.value).startswith(f"--data-dir {tmp_path / 'empty'}: no IDX files")
    with pytest.raises(_runs.UsageError) as e:
        _runs.load_mnist_arg(str(tmp_path / "missing"))
    assert _one_line(e.value) == f"--data-dir {tmp_path / 'missing'}: no such file or directory"


# ---- metrics -----------------------------------------------------------------------------------


def test_metrics_log_truncate_is_atomic_and_keeps_the_file_mode(tmp_path):
    log = _runs.MetricsLog(tmp_path)
    for step in (1, 2, 3, 4):
        log.append({"step": step, "loss": 1.0 / step})
    with open(log.path, "a") as f:
        f.write('{"step": 5, "lo')  # torn by a crash mid-write
    mode = stat.S_IMODE(log.path.stat().st_mode)
    log.truncate("step", 2)
    assert [json.loads(line)["step"] for line in log.path.read_text().splitlines()] == [1, 2]
    assert stat.S_IMODE(log.path.stat().st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == [_runs.METRICS_NAME]  # no temporary file left
    _runs.MetricsLog(tmp_path / "nothing").truncate("step", 2)  # no file yet: nothing to do


# ---- RNG -------------------------------------------------------------------------------------------


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


# ---- checkpoints ---------------------------------------------------------------------------------


def test_any_single_flipped_byte_is_caught_or_harmless(tmp_path):
    """Flip every byte of a small checkpoint in turn: each either loads exactly what was saved
    (a byte torch.load ignores, e.g. zip padding) or raises CheckpointError, never anything else."""
    payload = {"epoch": 2, "params": {"w": torch.randn(40), "b": torch.randn(3, 2)}, "rng": {"state": [1, 2, 3]}, "lr": 1e-3}
    path = tmp_path / "c.pt"
    _runs.save_checkpoint(path, "k", payload)
    digest = _runs.load_checkpoint(path, "k")["digest"]
    data = path.read_bytes()
    caught = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's notes about the flipped pickle protocol byte
        for pos in range(len(data)):
            flipped = bytearray(data)
            flipped[pos] ^= 0x01
            path.write_bytes(bytes(flipped))
            try:
                state = _runs.load_checkpoint(path, "k")
            except CheckpointError:
                caught += 1
            else:
                assert _runs.checkpoint_digest(state) == digest, pos
    assert caught > len(data) // 4


def test_checkpoints_without_a_digest(tmp_path):
    old = tmp_path / "v1.pt"  # written before checkpoints had a digest: still loads
    atomic_save({"format": "k", "version": 1, "epoch": 3}, old)
    assert _runs.load_checkpoint(old, "k")["epoch"] == 3
    new = tmp_path / "v2.pt"
    _runs.save_checkpoint(new, "k", {"epoch": 3})
    state = _runs.load_checkpoint(new, "k")
    del state["digest"]
    atomic_save(state, new)
    with pytest.raises(CheckpointError, match="no checksum"):
        _runs.load_checkpoint(new, "k")


# ---- killed mid-write ------------------------------------------------------------------------------


def _small_checkpoint(value):
    return {"epoch": int(value), "params": {"w": torch.full((1000,), float(value))}}


def _leftover_tmp_files(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_a_failed_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "run" / "checkpoint.pt"
    _runs.save_checkpoint(path, "k", _small_checkpoint(1))
    before = path.read_bytes()
    real_save = torch.save

    def dies_half_way(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(_runs.RunWriteError) as e:
        _runs.save_checkpoint(path, "k", _small_checkpoint(2))
    assert str(e.value) == (f"cannot write {path}: No space left on device (ENOSPC); the previous checkpoint is intact; "
                            "free space or fix the permissions, then restart with --resume")
    monkeypatch.undo()
    assert path.read_bytes() == before
    state = _runs.load_checkpoint(path, "k")
    assert state["epoch"] == 1 and torch.equal(state["params"]["w"], torch.ones(1000))
    assert _leftover_tmp_files(path.parent) == []  # the partial temporary file was removed


_WRITER = """
import io, os, sys, time
import torch
from ember.examples import _runs

real_save = torch.save

def stalls_half_way(obj, f, *args, **kwargs):
    buf = io.BytesIO()
    real_save(obj, buf)
    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    f.flush()
    os.fsync(f.fileno())
    print("half written", flush=True)
    time.sleep(120)  # SIGKILLed here

torch.save = stalls_half_way
_runs.save_checkpoint(sys.argv[1], "k", {"epoch": 2, "params": {"w": torch.full((1000,), 2.0)}})
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_a_checkpoint_killed_mid_write_leaves_the_previous_one_loadable(tmp_path):
    path = tmp_path / "run" / "checkpoint.pt"
    _runs.save_checkpoint(path, "k", _small_checkpoint(1))
    before = path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # blocks until the writer is half-way through
        assert line.strip() == "half written", proc.stderr.read() if proc.poll() is not None else line
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    # the killed writer left its partial temporary file (nothing could clean it up), under
    # another name: the checkpoint itself is the previous one, byte for byte
    leftovers = _leftover_tmp_files(path.parent)
    assert len(leftovers) == 1 and leftovers[0].startswith(".checkpoint.pt.")
    assert 0 < (path.parent / leftovers[0]).stat().st_size < len(before)
    assert path.read_bytes() == before
    state = _runs.load_checkpoint(path, "k")
    assert state["epoch"] == 1 and torch.equal(state["params"]["w"], torch.ones(1000))
    with pytest.raises(CheckpointError):  # the partial file is not a checkpoint
        _runs.load_checkpoint(path.parent / leftovers[0], "k")
    assert _runs.find_latest_run("run", root=tmp_path) is None  # (it is not named like a run either)
    _runs.save_checkpoint(path, "k", _small_checkpoint(3))  # and the next save goes through
    assert _runs.load_checkpoint(path, "k")["epoch"] == 3
