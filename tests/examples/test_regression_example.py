"""The Bayesian-regression example (PyroModule, PyroSample, autoguides, Predictive) runs end to end."""

import argparse
import json
import sys

import pytest
import torch

from ember.examples import regression
from ember.examples._runs import UsageError


@pytest.mark.filterwarnings("error:JitTrace_ELBO runs eagerly")
def test_regression_example_runs(tmp_path):
    pytest.importorskip("sklearn")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = argparse.Namespace(guide="multivariate", steps=300, lr=0.05, num_samples=50, seed=0, out=str(tmp_path), no_plot=True,
                                  jit=True)
        assert regression.main(args) == 0
    finally:
        torch.set_num_threads(n)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["guide"] == "AutoMultivariateNormal" and set(summary["weights"]) >= {"bmi", "bp", "s5"}
    assert summary["weights"]["bmi"]["q05"] > 0  # body-mass index raises progression, as every analysis of these data finds
    assert summary["test_rmse"] < 0.9 and 0.5 < summary["test_coverage_90"] <= 1.0
    assert (tmp_path / "guide.pt").exists()


def test_missing_scikit_learn_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(UsageError, match="scikit-learn"):
        regression.load_data()


def test_regression_is_an_ember_command():
    from ember.cli import build_parser

    args = build_parser().parse_args(["regression", "--guide", "multivariate", "--steps", "3"])
    assert args.run is regression.main and args.guide == "multivariate"
