"""Tests of ember.examples.scale and ``ember scale``."""

from ember.cli import main


def test_scale_still_runs(tmp_path):
    assert main(["scale", "--steps", "20", "--no-plot", "--out", str(tmp_path / "scale")]) == 0


def test_scale_writes_a_timestamped_run_directory(tmp_path, capsys):
    assert main(["scale", "--steps", "20", "--no-plot"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("scale-") and (run / "summary.json").is_file() and (run / "metrics.jsonl").is_file()
    assert f"run directory: {run.relative_to(tmp_path)}" in capsys.readouterr().out


def _error(capsys):
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("ember scale: error:") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "Normal(" not in captured.out  # nothing was fitted
    return err


def test_steps_below_one_exit_2(tmp_path, capsys):
    for steps in ("0", "-5"):
        assert main(["scale", "--steps", steps, "--no-plot", "--out", str(tmp_path / "scale")]) == 2
        assert _error(capsys) == f"ember scale: error: --steps must be a positive integer, got {steps}"
    assert not (tmp_path / "scale").exists()


def test_out_naming_a_file_exits_2(tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("x")
    assert main(["scale", "--steps", "20", "--no-plot", "--out", str(f)]) == 2
    assert _error(capsys) == f"ember scale: error: --out {f}: exists and is not a directory"
    assert f.read_text() == "x"
