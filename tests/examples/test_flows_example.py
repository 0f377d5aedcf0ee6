"""The flow density-estimation example runs end to end and writes its summary."""

import argparse
import json

import torch

from ember.examples import flows


def test_flows_example_runs(tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = argparse.Namespace(steps=15, lr=5e-3, num_data=128, count_bins=4, seed=0, out=str(tmp_path), no_plot=True)
        assert flows.main(args) == 0
    finally:
        torch.set_num_threads(n)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) >= {"held_out_loglik_flow", "held_out_loglik_gaussian"}
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2


def test_moons_shape():
    x = flows.moons(50, generator=torch.Generator().manual_seed(0))
    assert x.shape == (50, 2) and torch.isfinite(x).all()


def test_flows_is_an_ember_command():
    from ember.cli import build_parser

    args = build_parser().parse_args(["flows", "--steps", "3", "--no-plot"])
    assert args.run is flows.main and args.steps == 3
