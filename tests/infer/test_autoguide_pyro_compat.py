"""Autoguides hold their parameters as Pyro 1.9 does (constraints, names, initial values), so a
state_dict trained by Pyro gives Pyro's posterior here. Expected numbers are worked by hand from
softplus(u) = log(1 + e^u)."""

from __future__ import annotations

import math

import pytest
import torch

import ember
import ember.distributions as dist
from ember.distributions import constraints
from ember.infer.autoguide import (
    AutoDiagonalNormal,
    AutoIAFNormal,
    AutoLaplaceApproximation,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
    AutoNormalMessenger,
)
from ember.params.serialize import load_digested, save_digested

PHI_1 = 0.8413447460685429  # the standard normal cdf at 1: its quantile is loc + scale


@pytest.fixture(autouse=True)
def _clear() -> None:
    ember.clear_param_store()


def one_site() -> None:
    ember.sample("a", dist.Normal(0.0, 1.0))


def two_sites() -> None:
    ember.sample("a", dist.Normal(0.0, 1.0))
    ember.sample("b", dist.Normal(0.0, 1.0))


def test_auto_normal_scale_is_softplus_of_a_pyro_state_dict() -> None:
    g = AutoNormal(one_site)
    g()
    assert ember.get_param_store().get_param_constraint("AutoNormal.scales.a") is constraints.softplus_positive
    g.load_state_dict({"locs.a_unconstrained": torch.tensor(0.5), "scales.a_unconstrained": torch.tensor(1.0)})
    q = g.quantiles([0.5, PHI_1])["a"]
    assert q.tolist() == pytest.approx([0.5, 0.5 + 1.3132616875182228], abs=1e-6)  # log1p(e)


def test_auto_normal_init_scale_is_the_constrained_value() -> None:
    g = AutoNormal(one_site, init_scale=0.3)
    g()
    assert g.scales.a.item() == pytest.approx(0.3, abs=1e-7)
    assert g.state_dict()["scales.a_unconstrained"].item() == pytest.approx(math.log(math.expm1(0.3)), abs=1e-6)


def test_auto_diagonal_normal_takes_pyro_keys_and_softplus_scale() -> None:
    g = AutoDiagonalNormal(one_site)
    g()
    assert set(g.state_dict()) == {"loc", "scale_unconstrained"}
    g.load_state_dict({"loc": torch.tensor([0.5]), "scale_unconstrained": torch.tensor([0.0])})
    q = g.quantiles([0.5, PHI_1])["a"]
    assert q.tolist() == pytest.approx([0.5, 0.5 + math.log(2.0)], abs=1e-6)


def test_auto_multivariate_normal_takes_pyro_constraints() -> None:
    g = AutoMultivariateNormal(two_sites)
    g()
    store = ember.get_param_store()
    assert store.get_param_constraint("AutoMultivariateNormal.scale") is constraints.softplus_positive
    assert store.get_param_constraint("AutoMultivariateNormal.scale_tril") is constraints.unit_lower_cholesky
    g.load_state_dict({"loc": torch.tensor([0.0, 1.0]), "scale_unconstrained": torch.zeros(2),
                       "scale_tril_unconstrained": torch.tensor([[0.0, 0.0], [1.0, 0.0]])})
    assert g.scale_tril.tolist() == [[1.0, 0.0], [1.0, 1.0]]
    q = g.quantiles([PHI_1])
    ln2 = math.log(2.0)
    assert q["a"].item() == pytest.approx(ln2, abs=1e-6)
    assert q["b"].item() == pytest.approx(1.0 + ln2 * math.sqrt(2.0), abs=1e-6)


def test_low_rank_default_rank_is_rounded_and_init_matches_pyro() -> None:
    def model() -> None:
        ember.sample("a", dist.Normal(torch.zeros(5), 1.0).to_event(1))

    g = AutoLowRankMultivariateNormal(model)
    assert g.rank is None
    g()
    assert g.rank == 2 and tuple(g.cov_factor.shape) == (5, 2)  # round(sqrt(5)); ceil would give 3
    assert torch.allclose(g.scale, torch.full((5,), 0.1 * 0.5 ** 0.5))
    assert ember.get_param_store().get_param_constraint("AutoLowRankMultivariateNormal.scale") is constraints.softplus_positive


def test_low_rank_initial_variance_is_about_init_scale_squared() -> None:
    def model() -> None:
        ember.sample("a", dist.Normal(torch.zeros(400), 1.0).to_event(1))

    ember.set_rng_seed(0)
    g = AutoLowRankMultivariateNormal(model, init_scale=0.2)
    g()
    assert g.rank == 20
    var = g.get_posterior().covariance_matrix.diagonal().mean().item()
    assert var == pytest.approx(0.04, rel=0.05)  # 0.5 init^2 (1 + rank * 1/rank)
    assert g.cov_factor.std().item() == pytest.approx(1 / math.sqrt(20), rel=0.05)


def test_laplace_posterior_is_an_independent_delta_on_a_plain_loc() -> None:
    g = AutoLaplaceApproximation(two_sites)
    g()
    assert set(g.state_dict()) == {"loc"}
    post = g.get_posterior()
    assert isinstance(post, dist.Independent) and isinstance(post.base_dist, dist.Delta)
    assert post.event_shape == (2,)


def test_iaf_names_match_pyro_and_a_pyro_state_dict_loads() -> None:
    g = AutoIAFNormal(two_sites)
    g()
    keys = set(g.state_dict())
    assert "transform.0.arn.layers.0.weight" in keys and not any(k.startswith("transforms.") for k in keys)
    assert "AutoIAFNormal.transform$$$0.arn.layers.0.weight" in ember.get_param_store()
    sd = dict(g.state_dict())
    sd["_prototype_tensor"] = torch.tensor(0.0)  # Pyro's state_dict holds this placeholder
    g.load_state_dict(sd)


def test_auto_normal_messenger_names_have_no_prefix() -> None:
    g = AutoNormalMessenger(one_site)
    g()
    assert sorted(ember.get_param_store().keys()) == ["locs.a", "scales.a"]
    assert ember.get_param_store().get_param_constraint("scales.a") is constraints.positive  # exp, as in Pyro


@pytest.mark.parametrize("cls", [AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal, AutoLowRankMultivariateNormal])
def test_a_version_1_ember_file_loads_with_the_same_widths(tmp_path, cls) -> None:
    ember.set_rng_seed(1)
    g = cls(two_sites, init_scale=0.3)
    g()
    path = tmp_path / "g.pt"
    g.save(path)
    want = g.quantiles([0.1, 0.5, 0.9])
    # rewrite the file as Ember wrote it before Pyro's layout: log-scales, loc_unconstrained
    obj = load_digested(path, "ember.autoguide")
    old = {}
    for k, v in obj["state"].items():
        if k == "loc":
            k = "loc_unconstrained"
        elif k == "scale_unconstrained" or k.startswith("scales."):
            v = torch.nn.functional.softplus(v).log()
        old[k] = v
    obj["state"], obj["version"] = old, 1
    save_digested(obj, path, "ember.autoguide")
    ember.clear_param_store()
    got = cls(two_sites, init_scale=0.3).load(path).quantiles([0.1, 0.5, 0.9])
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-6)


def test_an_unknown_file_version_is_a_clear_error(tmp_path) -> None:
    g = AutoNormal(one_site)
    g()
    path = tmp_path / "g.pt"
    g.save(path)
    obj = load_digested(path, "ember.autoguide")
    obj["version"] = 99
    save_digested(obj, path, "ember.autoguide")
    with pytest.raises(ember.params.serialize.CheckpointError, match="version 99"):
        AutoNormal(one_site).load(path)
