"""Run directories are never overwritten or mixed, and the environment fails in one line before
training (issue 17, points 2 and 3): what a user of ``ember vae`` / ``ember air`` sees (the
message, the exit status) and the files left behind."""

import errno
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from _helpers import write_idx_dir

from ember.cli import main
from ember.examples import _runs, vae
from ember.params import serialize

N_TRAIN, N_TEST = 64, 16


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBER_DATA", str(tmp_path / "ember-cache"))
    monkeypatch.delenv(vae.TEST_SLEEP_ENV, raising=False)
    monkeypatch.chdir(tmp_path)


def _data(directory, seed):
    rng = np.random.default_rng(seed)
    write_idx_dir(directory, [rng.integers(0, 256, (N_TRAIN, 28, 28)), rng.integers(0, 10, N_TRAIN),
                              rng.integers(0, 256, (N_TEST, 28, 28)), rng.integers(0, 10, N_TEST)])
    return directory


@pytest.fixture
def data_a(tmp_path):
    return _data(tmp_path / "data-a", 0)


def _vae(data, out, *extra):
    return main(["vae", "--data-dir", str(data), "--out", str(out), "--batch-size", "32", "--z-dim", "2",
                 "--hidden-dim", "8", "--no-plots", "--no-progress", "--embedding", "pca", *extra])


def _error(capsys):
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err, captured.out


def _epochs(run):
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _ckpt_epoch(run):
    return _runs.load_checkpoint(run / "checkpoint.pt", vae.CHECKPOINT_KIND)["epoch"]


# ---- point 2: never overwritten, never mixed -------------------------------------------------------


def test_an_existing_run_is_refused_without_resume_or_overwrite(data_a, tmp_path, capsys):
    run = tmp_path / "run"
    assert _vae(data_a, run, "--epochs", "2") == 0
    before = (run / "checkpoint.pt").read_bytes(), (run / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert _vae(data_a, run, "--epochs", "1") == 2
    err, out = _error(capsys)
    assert err == (f"ember vae: error: --out {run}: already holds a run (checkpoint.pt, metrics.jsonl); pass --resume to "
                   "continue it, --overwrite to replace it, or another --out")
    assert out == ""  # refused before the data were loaded
    assert ((run / "checkpoint.pt").read_bytes(), (run / "metrics.jsonl").read_bytes()) == before
    assert not (run / _runs.LOCK_NAME).exists()


def test_overwrite_starts_a_new_run_without_the_old_metrics(data_a, tmp_path, capsys):
    run = tmp_path / "run"
    assert _vae(data_a, run, "--epochs", "2") == 0
    (run / "elbo.png").write_bytes(b"old figure")
    (run / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert _vae(data_a, run, "--epochs", "1", "--overwrite") == 0
    out = capsys.readouterr().out
    assert f"--overwrite: removed the previous run's checkpoint.pt, metrics.jsonl, elbo.png from {run}\n" in out
    assert _epochs(run) == [1] and _ckpt_epoch(run) == 1
    assert not (run / "elbo.png").exists() and (run / "notes.txt").read_text() == "mine"  # only the run's own files
    assert _vae(data_a, run, "--resume", "--overwrite") == 2
    assert "--resume and --overwrite contradict each other" in _error(capsys)[0]


def _hold_lock(run):
    """A second process holding the run's lock, as a training run does; returns it once it holds it."""
    code = ("import sys, time\nfrom ember.examples._runs import RunLock\nlock = RunLock(sys.argv[1])\nlock.acquire()\n"
            "print('locked', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _stop(proc):
    proc.kill()
    proc.wait()
    proc.stdout.close()


def test_a_second_process_on_the_same_run_gets_one_line_naming_the_holder(data_a, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = _hold_lock(run)  # e.g. a run started a moment earlier on the same --out
    try:
        assert _vae(data_a, run, "--epochs", "1") == 2
        err, _ = _error(capsys)
        assert err.startswith(f"ember vae: error: run directory {run} is in use by another ember run "
                              f"(pid {holder.pid} on {socket.gethostname()}, started 20")
        assert err.endswith(f"lock {run / _runs.LOCK_NAME}); wait for it to finish, or pass another --out")
        assert sorted(p.name for p in run.iterdir()) == [_runs.LOCK_NAME]  # nothing written
        # the same with --resume of a finished run
        _stop(holder)
        assert _vae(data_a, run, "--epochs", "1") == 0
        holder = _hold_lock(run)
        before = (run / "checkpoint.pt").read_bytes()
        assert _vae(data_a, run, "--epochs", "2", "--resume") == 2
        assert f"is in use by another ember run (pid {holder.pid} " in _error(capsys)[0]
        assert (run / "checkpoint.pt").read_bytes() == before
    finally:
        _stop(holder)


def test_a_stale_lock_of_a_killed_run_is_taken_over(data_a, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / _runs.LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "2026-01-01T00:00:00"}))
    assert _vae(data_a, run, "--epochs", "1") == 0
    out = capsys.readouterr().out
    assert (f"taking over the stale lock of pid {dead.pid} on {socket.gethostname()}, started 2026-01-01T00:00:00, "
            "which no longer holds it (its run was killed)\n") in out
    assert not (run / _runs.LOCK_NAME).exists()  # released at the end


def test_temporary_files_of_a_killed_write_are_removed_on_start(data_a, tmp_path, capsys):
    run = tmp_path / "run"
    assert _vae(data_a, run, "--epochs", "1") == 0
    stale = run / ".checkpoint.pt.k2j4x9ab.tmp"
    stale.write_bytes(b"half a checkpoint")
    capsys.readouterr()
    assert _vae(data_a, run, "--epochs", "2", "--resume") == 0
    out = capsys.readouterr().out
    assert f"removed 1 temporary file(s) left by an interrupted write: {stale.name}\n" in out
    assert not stale.exists() and _epochs(run) == [1, 2]


def test_resume_refuses_other_training_data_unless_told(data_a, tmp_path, capsys):
    run = tmp_path / "run"
    assert _vae(data_a, run, "--epochs", "1") == 0
    ckpt = _runs.load_checkpoint(run / "checkpoint.pt", vae.CHECKPOINT_KIND)
    assert ckpt["data"]["images"] == N_TRAIN and ckpt["data"]["source"] == str(data_a.resolve())
    before = (run / "checkpoint.pt").read_bytes()
    data_b = _data(tmp_path / "data-b", 1)  # other images
    capsys.readouterr()
    assert _vae(data_b, run, "--epochs", "2", "--resume") == 2
    err, _ = _error(capsys)
    assert err.startswith(f"ember vae: error: --resume {run / 'checkpoint.pt'}: the training images differ ({N_TRAIN} images, sha256:")
    assert f"; the data source differs ({data_a.resolve()} in the checkpoint, {data_b.resolve()} now); pass --allow-data-change" in err
    assert (run / "checkpoint.pt").read_bytes() == before and _epochs(run) == [1]
    # the same images elsewhere: only the source differs, still refused
    same = tmp_path / "copy-of-a"
    same.mkdir()
    for f in data_a.iterdir():
        (same / f.name).write_bytes(f.read_bytes())
    assert _vae(same, run, "--epochs", "2", "--resume") == 2
    err, _ = _error(capsys)
    assert "the training images differ" not in err and f"the data source differs ({data_a.resolve()} in the checkpoint" in err
    # told: it continues, says so, and the checkpoint records the new data
    assert _vae(data_b, run, "--epochs", "2", "--resume", "--allow-data-change") == 0
    assert "--allow-data-change: continuing on other data: the training images differ" in capsys.readouterr().out
    assert _runs.load_checkpoint(run / "checkpoint.pt", vae.CHECKPOINT_KIND)["data"]["source"] == str(data_b.resolve())
    # the same data: no complaint
    assert _vae(data_b, run, "--epochs", "3", "--resume") == 0


def test_resume_of_a_checkpoint_without_a_data_digest_says_it_was_not_checked(data_a, tmp_path, capsys):
    run = tmp_path / "run"
    assert _vae(data_a, run, "--epochs", "1") == 0
    ckpt = _runs.load_checkpoint(run / "checkpoint.pt", vae.CHECKPOINT_KIND)
    del ckpt["data"], ckpt["digest"], ckpt["format"], ckpt["version"]
    _runs.save_checkpoint(run / "checkpoint.pt", vae.CHECKPOINT_KIND, ckpt)
    capsys.readouterr()
    assert _vae(data_a, run, "--epochs", "2", "--resume") == 0
    assert "records no digest of its training data (an older Ember); the data were not compared" in capsys.readouterr().out


def test_air_refuses_an_existing_run_too(tmp_path, capsys):
    run = tmp_path / "air-run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"x")
    assert main(["air", "--out", str(run), "--steps", "1", "--no-progress", "--no-plots"]) == 2
    assert _error(capsys)[0] == (f"ember air: error: --out {run}: already holds a run (checkpoint.pt); pass --resume to "
                                 "continue it, --overwrite to replace it, or another --out")
    assert (run / "checkpoint.pt").read_bytes() == b"x"


# ---- point 3: the environment fails in one line, before training ----------------------------------


def test_a_read_only_run_directory_fails_before_the_first_step(data_a, tmp_path, capsys, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if ".ember-write-check-" in os.fspath(path):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    run = tmp_path / "run"
    assert _vae(data_a, run, "--epochs", "1") == 2
    err, out = _error(capsys)
    assert err == f"ember vae: error: run directory {run} is not writable: Read-only file system (EROFS); nothing was trained"
    assert "[epoch" not in out
    assert sorted(p.name for p in run.iterdir()) == []  # the lock was released, nothing else written


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write to a read-only directory")
def test_a_directory_without_write_permission(data_a, tmp_path, capsys):
    run = tmp_path / "run"
    assert _vae(data_a, run, "--epochs", "1") == 0
    run.chmod(0o555)
    try:
        assert _vae(data_a, run, "--epochs", "2", "--resume") == 2
        assert "Permission denied (EACCES)" in _error(capsys)[0]
    finally:
        run.chmod(0o755)
    assert _ckpt_epoch(run) == 1


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="finds the checkpoint's file through /proc")
def test_a_full_disk_mid_run_is_one_line_and_the_previous_checkpoint_stays(data_a, tmp_path, capsys, monkeypatch):
    """The disk fills while epoch 2's checkpoint is written (inside torch's zip writer, which used
    to report ``unexpected pos``): one line, exit 2, epoch 1's checkpoint intact, no temporary file."""
    real_fdopen = os.fdopen
    checkpoints = []

    class FullDisk:
        def __init__(self, f):
            self._f, self._n = f, 0

        def write(self, b):
            self._n += len(memoryview(b).cast("B"))
            if self._n > 2000:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self._f.write(b)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def fdopen(fd, *args, **kwargs):
        f = real_fdopen(fd, *args, **kwargs)
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".checkpoint.pt."):
            checkpoints.append(fd)
            if len(checkpoints) == 2:
                return FullDisk(f)
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)
    run = tmp_path / "run"
    assert _vae(data_a, run, "--epochs", "3") == 2
    err, out = _error(capsys)
    assert err == (f"ember vae: error: cannot write {run / 'checkpoint.pt'}: No space left on device (ENOSPC); the previous "
                   "checkpoint is intact; free space or fix the permissions, then restart with --resume")
    assert "[epoch 002]" in out and "[epoch 003]" not in out
    monkeypatch.undo()
    assert _ckpt_epoch(run) == 1
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "metrics.jsonl"]  # no temporaries, no lock
    assert _vae(data_a, run, "--epochs", "3", "--resume") == 0  # and the run continues
    assert _epochs(run) == [1, 2, 3]


def test_write_errors_name_the_file_and_the_cause(tmp_path):
    with pytest.raises(_runs.RunWriteError) as e:
        with _runs.writing(tmp_path / "x", "it is unchanged"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "fig.png"))
    assert str(e.value) == f"cannot write {tmp_path / 'fig.png'}: Permission denied (EACCES); it is unchanged"


def test_atomic_save_reports_the_os_error_not_torchs_zip_writer(tmp_path, monkeypatch):
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self._f = f

        def write(self, b):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: Full(real_fdopen(fd, *a, **k)))
    with pytest.raises(OSError) as e:
        serialize.atomic_save({"w": torch.zeros(100)}, tmp_path / "c.pt")
    assert e.value.errno == errno.ENOSPC and not isinstance(e.value, RuntimeError)
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_with_malformed_parameters_is_refused_by_name(data_a, tmp_path, capsys):
    run = tmp_path / "run"
    assert _vae(data_a, run, "--epochs", "1") == 0
    ckpt = _runs.load_checkpoint(run / "checkpoint.pt", vae.CHECKPOINT_KIND)
    ckpt["params"]["params"]["encoder$$$fc1.bias"] = torch.zeros(8, dtype=torch.int64)
    for k in ("digest", "format", "version"):
        del ckpt[k]
    _runs.save_checkpoint(run / "checkpoint.pt", vae.CHECKPOINT_KIND, ckpt)  # a valid digest over bad contents
    capsys.readouterr()
    assert _vae(data_a, run, "--epochs", "2", "--resume") == 2
    assert _error(capsys)[0] == (f"ember vae: error: {run / 'checkpoint.pt'}: malformed parameter store: param "
                                 "'encoder$$$fc1.bias' has dtype torch.int64; parameters are floating-point tensors")
