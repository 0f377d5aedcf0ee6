"""AutoNormalizingFlow and AutoDiscreteParallel: Pyro's parameter names, the flow's density by
hand, a banana fit, and the discrete guide's exact enumerated ELBO on a two-component mixture."""

from __future__ import annotations

import functools
import math

import pytest
import torch

import ember
import ember.distributions as dist
from ember.distributions.transforms import affine_autoregressive, block_autoregressive, iterated
from ember.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from ember.infer.autoguide import AutoDiagonalNormal, AutoDiscreteParallel, AutoIAFNormal, AutoNormalizingFlow


def _three_dims() -> None:
    ember.sample("x", dist.Normal(0.0, 1.0))
    ember.sample("y", dist.Normal(0.0, 1.0).expand([2]).to_event(1))


def _block_layers(i: int) -> dict:
    # read in pyro-ppl 1.9.2 for AutoNormalizingFlow(model, partial(iterated, 2, block_autoregressive)), D = 3
    shapes = [((24, 3), (24, 1), (24,)), ((24, 24), (24, 1), (24,)), ((3, 24), (3, 1), (3,))]
    out = {}
    for j, (w, dw, b) in enumerate(shapes):
        out[f"AutoNormalizingFlow.transform$$${i}.layers.{j}._weight"] = w
        out[f"AutoNormalizingFlow.transform$$${i}.layers.{j}._diag_weight"] = dw
        out[f"AutoNormalizingFlow.transform$$${i}.layers.{j}.bias"] = b
    return out


# Pyro's store also holds "AutoNormalizingFlow._prototype_tensor" (a dtype placeholder it registers
# by accident); Ember leaves it out and ignores it when loading Pyro's state_dicts
PYRO_FLOW_PARAMS = {**_block_layers(0), **_block_layers(1)}
PYRO_IAF_PARAMS = {  # AutoNormalizingFlow(model, affine_autoregressive), D = 3
    "AutoNormalizingFlow.transform$$$arn.layers.0.weight": (10, 3),
    "AutoNormalizingFlow.transform$$$arn.layers.0.bias": (10,),
    "AutoNormalizingFlow.transform$$$arn.layers.1.weight": (6, 10),
    "AutoNormalizingFlow.transform$$$arn.layers.1.bias": (6,),
}


def _store_shapes() -> dict:
    store = ember.get_param_store()
    return {k: tuple(store[k].shape) for k in store.keys()}


def test_flow_parameter_names_and_shapes_are_pyros() -> None:
    g = AutoNormalizingFlow(_three_dims, functools.partial(iterated, 2, block_autoregressive))
    assert g.transform is None
    g()
    assert _store_shapes() == PYRO_FLOW_PARAMS
    keys = set(g.state_dict())
    assert {"transform.0.layers.0._weight", "transform.1.layers.2.mask_o"} <= keys
    post = g.get_posterior()
    assert isinstance(post, torch.distributions.TransformedDistribution) and post.event_shape == (3,)
    assert post.transforms == [g.transform]

    ember.clear_param_store()
    AutoNormalizingFlow(_three_dims, affine_autoregressive)()
    assert _store_shapes() == PYRO_IAF_PARAMS
    assert issubclass(AutoIAFNormal, AutoNormalizingFlow)


def test_flow_log_q_is_the_base_density_minus_the_log_det_by_hand() -> None:
    g = AutoNormalizingFlow(_three_dims, functools.partial(iterated, 2, block_autoregressive))
    g()
    post = g.get_posterior()
    e = torch.randn(3)
    with torch.no_grad():
        jac = torch.autograd.functional.jacobian(lambda v: g.transform(v), e)
        by_hand = torch.distributions.Normal(0.0, 1.0).log_prob(e).sum() - torch.linalg.slogdet(jac).logabsdet
        z = g.transform(e)  # the flow has no closed-form inverse: log_prob reads this draw from its cache
        assert post.log_prob(z).item() == pytest.approx(by_hand.item(), abs=1e-4)
    # the guide's own trace: the latent vector's log q, and each site unpacked from it
    tr = ember.poutine.trace(g).get_trace()
    latent = tr.nodes["_AutoNormalizingFlow_latent"]
    assert latent["value"].shape == (3,) and latent["infer"].get("is_auxiliary")
    assert torch.equal(tr.nodes["x"]["value"], latent["value"][0])
    assert torch.equal(tr.nodes["y"]["value"], latent["value"][1:])


def test_flow_save_load_and_sampled_median(tmp_path) -> None:
    make = functools.partial(AutoNormalizingFlow, _three_dims, functools.partial(iterated, 2, affine_autoregressive))
    g = make()
    g()
    g.save(tmp_path / "g.pt")
    ember.clear_param_store()
    g2 = make().load(tmp_path / "g.pt")
    e = torch.randn(3)
    assert torch.allclose(g2.transform(e), g.transform(e))
    keys = list(ember.get_param_store().keys())
    assert len(keys) == 8 and all(k.startswith("AutoNormalizingFlow.transform$$$") for k in keys)
    q = g2.quantiles([0.25, 0.5, 0.75])  # Monte Carlo (Pyro has none for flows), without the model
    assert q["x"].shape == (3,) and q["y"].shape == (3, 2)
    assert bool((q["y"][0] < q["y"][2]).all())
    assert g2.median()["y"].shape == (2,)


def _banana_model() -> None:
    z = ember.sample("z", dist.Normal(torch.zeros(2), 2.0).to_event(1))
    ember.factor("banana", -0.5 * ((z[..., 1] - 0.5 * z[..., 0] ** 2) / 0.25) ** 2)


def test_flow_fits_a_banana_better_than_the_diagonal_normal() -> None:
    results = {}
    guides = {
        "diag": lambda: AutoDiagonalNormal(_banana_model),
        "flow": lambda: AutoNormalizingFlow(_banana_model, functools.partial(iterated, 2, block_autoregressive)),
    }
    for key, make in guides.items():
        ember.clear_param_store()
        ember.set_rng_seed(3)
        guide = make()
        svi = SVI(_banana_model, guide, ember.optim.Adam({"lr": 0.02}), Trace_ELBO(num_particles=8, vectorize_particles=True))
        for _ in range(400):
            svi.step()
        with torch.no_grad():
            results[key] = -Trace_ELBO(num_particles=4000, vectorize_particles=True).loss(_banana_model, guide)
    assert results["flow"] > results["diag"] + 0.1, results


# ---- AutoDiscreteParallel ---------------------------------------------------------------------------

WEIGHTS = torch.tensor([0.3, 0.7])
LOCS = torch.tensor([-1.0, 2.0])
DATA = torch.tensor([-1.0, 0.5, 2.0])


def _mixture(data: torch.Tensor = DATA) -> None:
    with ember.plate("data", len(data)):
        z = ember.sample("z", dist.Categorical(WEIGHTS))
        ember.sample("x", dist.Normal(LOCS[z], 1.0), obs=data)


def _all_kinds() -> None:
    w = ember.sample("w", dist.Bernoulli(0.4))
    ember.sample("oh", dist.OneHotCategorical(torch.tensor([0.2, 0.3, 0.5])))
    with ember.plate("data", 3):
        z = ember.sample("z", dist.Categorical(WEIGHTS))
        ember.sample("x", dist.Normal(LOCS[z] + w, 1.0), obs=DATA)


def test_discrete_parameter_names_shapes_and_constraints_are_pyros() -> None:
    g = AutoDiscreteParallel(_all_kinds)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(_all_kinds, g)
    assert loss == pytest.approx(9.701816, abs=1e-4)  # pyro-ppl 1.9.2 on this model and guide
    store = ember.get_param_store()
    assert _store_shapes() == {"AutoDiscreteParallel.w_probs": (), "AutoDiscreteParallel.oh_probs": (3,),
                               "AutoDiscreteParallel.z_probs": (3, 2)}
    assert isinstance(store.get_param_constraint("AutoDiscreteParallel.w_probs"), torch.distributions.constraints.interval)
    assert store.get_param_constraint("AutoDiscreteParallel.z_probs") is torch.distributions.constraints.simplex
    assert torch.allclose(store["AutoDiscreteParallel.z_probs"], WEIGHTS.expand(3, 2))  # the model's probs
    assert set(g.state_dict()) == {"w_probs_unconstrained", "oh_probs_unconstrained", "z_probs_unconstrained"}
    tr = ember.poutine.trace(g).get_trace()
    for name in ("w", "oh", "z"):
        assert tr.nodes[name]["infer"] == {"enumerate": "parallel"}
    assert type(tr.nodes["oh"]["fn"]).__name__ == "OneHotCategorical"


def test_discrete_refuses_what_pyro_refuses() -> None:
    def continuous() -> None:
        ember.sample("a", dist.Normal(0.0, 1.0))

    def sequential_site() -> None:
        ember.sample("a", dist.Bernoulli(0.5), infer={"enumerate": "sequential"})

    def poisson() -> None:
        ember.sample("a", dist.Poisson(3.0))

    def sequential_plate() -> None:
        for i in ember.plate("s", 2):
            ember.sample(f"a{i}", dist.Bernoulli(0.5))

    for model in (continuous, sequential_site, poisson):
        with pytest.raises(NotImplementedError, match="site \"a\""):
            AutoDiscreteParallel(model)()
    with pytest.raises(NotImplementedError, match="sequential"):
        AutoDiscreteParallel(sequential_plate)()


def _exact_terms() -> tuple[torch.Tensor, torch.Tensor]:
    """``log p(z = k, x_i)`` ``[N, 2]`` and the exact posterior ``p(z_i = k | x_i)`` ``[N, 2]``."""
    joint = WEIGHTS.log() + torch.distributions.Normal(LOCS, 1.0).log_prob(DATA.unsqueeze(-1))
    return joint, (joint - joint.logsumexp(-1, keepdim=True)).exp()


def test_discrete_loss_is_the_exact_sum_over_assignments() -> None:
    g = AutoDiscreteParallel(_mixture)
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    g()
    with torch.no_grad():
        g.z_probs = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    joint, post = _exact_terms()
    q = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    by_hand = -(q * (joint - q.log())).sum()
    assert elbo.loss(_mixture, g) == pytest.approx(by_hand.item(), abs=1e-5)
    # at the exact posterior the ELBO is log p(x)
    with torch.no_grad():
        g.z_probs = post
    assert elbo.loss(_mixture, g) == pytest.approx(-joint.logsumexp(-1).sum().item(), abs=1e-5)


def test_discrete_training_moves_the_probs_to_the_exact_posterior() -> None:
    g = AutoDiscreteParallel(_mixture)
    g()
    svi = SVI(_mixture, g, ember.optim.Adam({"lr": 0.05}), TraceEnum_ELBO(max_plate_nesting=1))
    _, post = _exact_terms()

    def kl() -> float:
        q = g.z_probs.detach()
        return (q * (q.log() - post.log())).sum().item()

    before = kl()
    for _ in range(300):
        svi.step()
    assert kl() < 0.01 * before
    assert torch.allclose(g.z_probs.detach(), post, atol=0.02)
    assert math.isfinite(before) and before > 0.05
