"""The Gaussian-mixture example (ember.examples.mixture): the tutorial's MAP fit with the assignments
summed out, the assignments recovered by infer_discrete, and NUTS on the same model."""

from __future__ import annotations

import json

import pytest
import torch

from ember.examples import mixture


def test_map_fit_and_assignments_on_the_tutorial_data():
    fit = mixture.fit_map(mixture.TUTORIAL_DATA, steps=200)
    assert fit["losses"][-1] < fit["losses"][0]
    # two points in one component, three in the other: the MAP weights are the proportions
    assert torch.allclose(fit["weights"], torch.tensor([0.375, 0.625]), atol=0.02)
    assert torch.allclose(fit["locs"], torch.tensor([0.5, 11.0]), atol=0.1)
    values = {k: fit[k] for k in ("weights", "scale", "locs")}
    assert mixture.map_assignments(mixture.TUTORIAL_DATA, values).tolist() == [0, 0, 1, 1, 1]


@pytest.mark.slow
def test_main_with_nuts(tmp_path):
    import argparse

    p = argparse.ArgumentParser()
    mixture.add_arguments(p)
    args = p.parse_args(["--out", str(tmp_path), "--steps", "100", "--nuts-samples", "100"])
    assert mixture.main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["assignment"] == [0, 0, 1, 1, 1]
    locs = sorted(summary["nuts_mean"]["locs"])
    assert abs(locs[0] - 0.5) < 1.5 and abs(locs[1] - 11.0) < 1.5


def test_hmm_example_recovers_the_states():
    from ember.examples import hmm

    ys, states = hmm.generate(8, 30, seed=1)
    res = hmm.fit(ys, steps=60, lr=0.05)
    assert res["losses"][-1] < res["losses"][0]
    params = {k: res[k] for k in ("trans", "locs", "scale")}
    order = res["locs"].argsort()
    assert torch.allclose(res["locs"][order], hmm.TRUE["locs"], atol=0.3)
    decoded = order.argsort()[hmm.decode(ys, params)]
    assert decoded.shape == states.shape
    assert (decoded == states).double().mean() > 0.9
    # the fitted parameters explain the data at least about as well as the true ones
    assert hmm.log_likelihood(ys, params) > hmm.log_likelihood(ys, hmm.TRUE) - 5.0


@pytest.mark.parametrize("argv", [["hmm", "--steps", "3", "--num-sequences", "2", "--length", "5"],
                                  ["mixture", "--steps", "3", "--nuts-samples", "0"]])
def test_the_ember_command_runs_the_enumeration_examples(argv, tmp_path, capsys):
    from ember.cli import build_parser

    args = build_parser().parse_args(argv + ["--out", str(tmp_path)])
    assert args.run(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert "final_loss" in summary
    assert str(tmp_path) in capsys.readouterr().out
    pytest.importorskip("matplotlib")
    assert (tmp_path / f"{argv[0]}.png").stat().st_size > 10_000


def test_the_enumeration_examples_refuse_bad_sizes_in_one_line(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "ember", "hmm", "--length", "1", "--out", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and "--length >= 2" in r.stderr and "Traceback" not in r.stderr


def test_without_matplotlib_the_examples_say_how_to_get_the_plot(tmp_path, capsys, monkeypatch):
    from ember.cli import build_parser
    from ember.examples import hmm

    monkeypatch.setattr(hmm, "pyplot", lambda: None)
    args = build_parser().parse_args(["hmm", "--steps", "2", "--num-sequences", "2", "--length", "5", "--out", str(tmp_path)])
    assert args.run(args) == 0
    assert "(no plot: matplotlib is not installed; pip install 'ember-ppl[plots]')" in capsys.readouterr().out
    assert not (tmp_path / "hmm.png").exists()
