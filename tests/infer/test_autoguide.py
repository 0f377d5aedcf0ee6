"""Autoguides: structure, plates, init strategies, errors, save/load without data, Predictive
and the compiled ELBO (issue 12 points 2-5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import ember
import ember.distributions as dist
from ember import poutine
from ember.infer import SVI, JitTrace_ELBO, Predictive, Trace_ELBO
from ember.infer.autoguide import (
    AutoCallable,
    AutoDelta,
    AutoDiagonalNormal,
    AutoGuideList,
    AutoIAFNormal,
    AutoLaplaceApproximation,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
    AutoNormalMessenger,
    init_to_feasible,
    init_to_generated,
    init_to_median,
    init_to_value,
)
from ember.params import CheckpointError


@pytest.fixture(autouse=True)
def _clean():
    ember.clear_param_store()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    ember.clear_param_store()


def model(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    w = ember.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    s = ember.sample("s", dist.LogNormal(0.0, 1.0))
    with ember.plate("data", x.shape[0]):
        ember.sample("y", dist.Normal((x * w).sum(-1), s), obs=y)


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, generator=g)
    return x, x @ torch.tensor([1.0, -1.0]) + 0.3 * torch.randn(40, generator=g)


ALL = [AutoDelta, AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal, AutoLowRankMultivariateNormal, AutoIAFNormal]


@pytest.mark.parametrize("cls", ALL + [AutoNormalMessenger])
def test_every_guide_draws_each_latent_with_its_shape_and_support(cls) -> None:
    ember.set_rng_seed(0)
    x, y = _data()
    guide = cls(model)
    tr = poutine.trace(guide).get_trace(x, y)
    assert tr.nodes["w"].value.shape == (2,) and tr.nodes["s"].value.shape == ()
    assert tr.nodes["s"].value > 0
    # a messenger guide runs the model, so handlers outside it see the observation (as in Pyro)
    assert ("y" in tr.nodes) == (cls is AutoNormalMessenger)
    tr.compute_log_prob()
    assert torch.isfinite(tr.log_prob_sum())


def test_continuous_guides_score_the_jacobian() -> None:
    # one latent x ~ LogNormal: the guide's log q(x) must equal the density of exp(u), u ~ N(loc, scale)
    def m():
        ember.sample("x", dist.LogNormal(0.0, 1.0))

    for cls in (AutoNormal, AutoDiagonalNormal):
        ember.clear_param_store()
        guide = cls(m)
        tr = poutine.trace(guide).get_trace()
        tr.compute_log_prob()
        xv = tr.nodes["x"].value
        total = sum(s.log_prob_sum for s in tr.nodes.values() if s.type == "sample")
        loc = guide.median()["x"].log()
        expected = dist.LogNormal(loc, 0.1).log_prob(xv)
        assert torch.allclose(total, expected, atol=1e-5), cls


def test_auto_normal_local_latents_under_a_subsampled_plate() -> None:
    ember.set_rng_seed(0)
    data = torch.arange(10.0)

    def local_model(data):
        with ember.plate("items", 10, subsample_size=4) as idx:
            z = ember.sample("z", dist.Normal(0.0, 10.0))
            ember.sample("obs", dist.Normal(z, 0.1), obs=data[idx])

    guide = AutoNormal(local_model)
    svi = SVI(local_model, guide, ember.optim.Adam({"lr": 0.1}), Trace_ELBO())
    for _ in range(600):
        svi.step(data)
    loc = guide.median()["z"]
    assert loc.shape == (10,)  # full-size parameters
    assert torch.allclose(loc, data, atol=0.1)
    # the model's plate used the guide's indices: each step touches only 4 entries
    tr = poutine.trace(guide).get_trace(data)
    assert tr.nodes["z"].value.shape == (4,)
    with pytest.raises(ValueError, match="'z' is in plate 'items', which subsamples 4 of 10"):
        AutoDiagonalNormal(local_model)(data)
    with pytest.raises(ValueError, match="'z' is in plate 'items', which subsamples 4 of 10"):
        AutoNormalMessenger(local_model)(data)


def test_create_plates_passes_minibatch_indices() -> None:
    data = torch.arange(6.0)

    def local_model(data, idx):
        with ember.plate("items", 6, subsample=idx):
            ember.sample("z", dist.Normal(0.0, 1.0))

    guide = AutoNormal(local_model, create_plates=lambda data, idx: ember.plate("items", 6, subsample=idx))
    tr = poutine.trace(guide).get_trace(data, torch.tensor([1, 4]))
    assert tr.nodes["z"].value.shape == (2,)
    with torch.no_grad():
        guide.locs.z = torch.arange(6.0)
        guide.scales.z = torch.full((6,), 1e-6)
    tr = poutine.trace(guide).get_trace(data, torch.tensor([5, 0]))
    assert torch.allclose(tr.nodes["z"].value, torch.tensor([5.0, 0.0]), atol=1e-3)


def test_vectorized_particles_and_predictive_in_parallel() -> None:
    ember.set_rng_seed(0)
    x, y = _data()
    for cls in (AutoNormal, AutoDiagonalNormal):
        ember.clear_param_store()
        guide = cls(model)
        svi = SVI(model, guide, ember.optim.Adam({"lr": 0.05}), Trace_ELBO(num_particles=4, vectorize_particles=True))
        for _ in range(300):
            svi.step(x, y)
        pred = Predictive(model, guide=guide, num_samples=2000, parallel=True)(x)
        # Pyro's shapes: w, outside the model's one plate, keeps a singleton dim for it
        assert pred["w"].shape == (2000, 1, 2) and pred["y"].shape == (2000, 40)
        pred["w"] = pred["w"].squeeze(1)
        med = guide.median()
        q = guide.quantiles([0.25, 0.75])
        assert torch.allclose(pred["w"].median(0).values, med["w"], atol=0.02)
        iqr = q["w"][1] - q["w"][0]
        sample_iqr = pred["w"].quantile(0.75, 0) - pred["w"].quantile(0.25, 0)
        assert torch.allclose(sample_iqr, iqr, rtol=0.15)


def test_init_strategies() -> None:
    def m():
        ember.sample("a", dist.Normal(3.0, 1.0))
        ember.sample("b", dist.Uniform(2.0, 4.0))

    g = AutoDelta(m, init_loc_fn=init_to_feasible)
    g.setup()
    assert g.median() == {"a": pytest.approx(0.0), "b": pytest.approx(3.0)}
    ember.clear_param_store()
    g = AutoDelta(m, init_loc_fn=init_to_value(values={"a": 1.5}, fallback=init_to_feasible))
    g.setup()
    assert g.median()["a"].item() == 1.5
    ember.clear_param_store()
    g = AutoDelta(m, init_loc_fn=init_to_generated(generate=lambda: init_to_value(values={"a": 7.0}, fallback=init_to_feasible)))
    g.setup()
    assert g.median()["a"].item() == 7.0
    ember.clear_param_store()
    g = AutoDelta(m, init_loc_fn="median")
    g.setup()
    assert abs(g.median()["a"].item() - 3.0) < 1.5


def test_bad_input_names_the_site() -> None:
    def discrete():
        ember.sample("k", dist.Bernoulli(0.5))
        ember.sample("a", dist.Normal(0.0, 1.0))

    for cls in ALL:
        with pytest.raises(ValueError, match="latent site 'k' is discrete"):
            cls(discrete)()
    with pytest.raises(ValueError, match="latent site 'k' is discrete"):
        AutoNormalMessenger(discrete)()
    with pytest.raises(ValueError, match="unknown init_strategy 'middle'"):
        AutoNormal(model, init_loc_fn="middle")
    x, y = _data()
    with pytest.raises(ValueError, match=r"init_to_value names \['v'\].*latent sites are \['w', 's'\]"):
        AutoNormal(model, init_loc_fn=init_to_value(values={"v": 1.0}))(x, y)
    for cls in (AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal, AutoLowRankMultivariateNormal, AutoNormalMessenger):
        for bad in (-1.0, 0, True, "0.1"):
            with pytest.raises(ValueError, match=f"{cls.__name__}: init_scale must be a positive number; got {bad!r}"):
                cls(model, init_scale=bad)


def test_a_guide_reused_with_a_changed_model_is_refused(tmp_path) -> None:
    x, y = _data()
    guide = AutoNormal(model)
    guide(x, y)
    path = tmp_path / "g.pt"
    guide.save(path)

    def changed(x, y=None):
        ember.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        ember.sample("s", dist.LogNormal(0.0, 1.0))

    ember.clear_param_store()
    g2 = AutoNormal(changed).load(path)
    with pytest.raises(ValueError, match=r"latent site 'w' has changed.*shape \(2,\).*shape \(3,\)"):
        g2(x, y)

    def renamed(x, y=None):
        ember.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        ember.sample("sigma", dist.LogNormal(0.0, 1.0))

    g3 = AutoNormal(renamed).load(path)
    with pytest.raises(ValueError, match="no longer has latent site 's'"):
        g3(x, y)


def test_save_refuses_tampering_and_other_classes(tmp_path) -> None:
    x, y = _data()
    guide = AutoDiagonalNormal(model)
    guide(x, y)
    path = tmp_path / "g.pt"
    guide.save(path)
    with pytest.raises(CheckpointError, match="holds a AutoDiagonalNormal, not a AutoNormal"):
        AutoNormal(model).load(path)
    raw = bytearray(path.read_bytes())
    raw[-20] ^= 0x01
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="do not match the checksum"):
        AutoDiagonalNormal(model).load(bad)


_CHILD = textwrap.dedent(
    """
    import json, sys, torch, ember
    sys.path.insert(0, {tests!r})
    from test_autoguide import model, _data
    from ember.infer import Predictive
    from ember.infer.autoguide import {cls}
    guide = {cls}(model).load({path!r})
    out = {{"median": {{k: v.tolist() for k, v in guide.median().items()}},
           "quantiles": {{k: v.tolist() for k, v in guide.quantiles([0.1, 0.9]).items()}}}}
    ember.set_rng_seed(5)
    x, _ = _data()
    pred = Predictive(model, guide=guide, num_samples=7, parallel=True)(x)
    out["pred"] = {{k: v.tolist() for k, v in pred.items()}}
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("cls", [AutoNormal, pytest.param(AutoDiagonalNormal, marks=pytest.mark.slow),
                                 pytest.param(AutoMultivariateNormal, marks=pytest.mark.slow)])
def test_a_saved_guide_loads_in_a_new_process_without_data(tmp_path, cls) -> None:
    ember.set_rng_seed(0)
    x, y = _data()
    guide = cls(model)
    svi = SVI(model, guide, ember.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(50):
        svi.step(x, y)
    path = os.fspath(tmp_path / "guide.pt")
    guide.save(path)
    expected = {"median": {k: v.tolist() for k, v in guide.median().items()},
                "quantiles": {k: v.tolist() for k, v in guide.quantiles([0.1, 0.9]).items()}}
    ember.set_rng_seed(5)
    pred = Predictive(model, guide=guide, num_samples=7, parallel=True)(x)
    expected["pred"] = {k: v.tolist() for k, v in pred.items()}
    code = _CHILD.format(tests=os.path.dirname(__file__), cls=cls.__name__, path=path)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert _close(got, expected)


def _close(a, b) -> bool:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return all(_close(a[k], b[k]) for k in a)
    assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-6), (a, b)
    return True


def test_guide_list_and_callable() -> None:
    ember.set_rng_seed(0)
    x, y = _data()

    def s_guide(x, y=None):
        ember.sample("s", dist.Delta(ember.param("s_map", torch.tensor(1.0), dist.constraints.positive)))

    guide = AutoGuideList(model)
    guide.append(AutoNormal(poutine.block(model, hide=["s"])))
    guide.append(AutoCallable(model, s_guide, median=lambda *a: {"s": ember.param("s_map").detach()}))
    svi = SVI(model, guide, ember.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(400):
        svi.step(x, y)
    med = guide.median()
    assert set(med) == {"w", "s"}
    assert torch.allclose(med["w"], torch.tensor([1.0, -1.0]), atol=0.15)
    assert 0.15 < med["s"].item() < 0.5
    assert any(k.startswith("AutoGuideList.0.locs") for k in ember.get_param_store().keys())


def test_guide_list_saves_and_loads(tmp_path) -> None:
    ember.set_rng_seed(0)
    x, y = _data()

    def build():
        g = AutoGuideList(model)
        g.append(AutoNormal(poutine.block(model, hide=["s"])))
        g.append(AutoDelta(poutine.block(model, expose=["s"])))
        return g

    guide = build()
    svi = SVI(model, guide, ember.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(20):
        svi.step(x, y)
    path = tmp_path / "list.pt"
    guide.save(path)
    before = guide.median()
    ember.clear_param_store()
    after = build().load(path).median()
    assert set(after) == {"w", "s"} and all(torch.equal(before[k], after[k]) for k in before)
    wrong = AutoGuideList(model)
    wrong.append(AutoNormal(model))
    with pytest.raises(CheckpointError, match=r"saved with parts \['AutoNormal', 'AutoDelta'\]"):
        wrong.load(path)


def test_jit_trace_elbo_compiles_an_autoguide() -> None:
    ember.set_rng_seed(0)
    x, y = _data()
    for cls in (AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal):
        ember.clear_param_store()
        guide = cls(model)
        elbo = JitTrace_ELBO()
        svi = SVI(model, guide, ember.optim.Adam({"lr": 0.05}), elbo)
        losses = [svi.step(x, y) for _ in range(300)]
        assert elbo.compile_status.startswith("compiled"), (cls, elbo.compile_status)
        assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20
        assert torch.allclose(guide.median()["w"], torch.tensor([1.0, -1.0]), atol=0.15)


def test_init_median_default_of_auto_delta_uses_the_prior() -> None:
    def m():
        ember.sample("a", dist.Normal(5.0, 0.01))

    g = AutoDelta(m, init_loc_fn=init_to_median(num_samples=31))
    g.setup()
    assert abs(g.median()["a"].item() - 5.0) < 0.01


def test_auto_normal_messenger_saves_and_loads(tmp_path) -> None:
    ember.set_rng_seed(0)
    x, y = _data()
    guide = AutoNormalMessenger(model)
    svi = SVI(model, guide, ember.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(30):
        svi.step(x, y)
    path = tmp_path / "m.pt"
    guide.save(path)
    before = guide.median()
    ember.clear_param_store()
    again = AutoNormalMessenger(model).load(path)
    after = again.median()
    assert set(after) == {"w", "s"} and all(torch.equal(before[k], after[k]) for k in before)
    assert "locs.w" in ember.get_param_store()


def test_importable_as_pyro_lays_it_out() -> None:
    import ember.infer.autoguide.initialization as init_mod

    assert ember.infer.autoguide.AutoNormal is AutoNormal
    for name in ("init_to_feasible", "init_to_generated", "init_to_median", "init_to_mean", "init_to_sample", "init_to_uniform",
                 "init_to_value", "InitMessenger"):
        assert getattr(init_mod, name) is getattr(ember.infer.autoguide, name)
    assert init_mod.init_to_median is ember.infer.init_to_median  # shared with MCMC


@pytest.mark.parametrize("cls", [AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal, AutoLowRankMultivariateNormal])
def test_median_and_quantiles_of_plated_and_event_sites(cls) -> None:
    def m():
        ember.sample("a", dist.Dirichlet(torch.ones(3)))
        with ember.plate("p", 4):
            with ember.plate("q", 2, dim=-2):
                ember.sample("g", dist.Gamma(2.0, 1.0))
            ember.sample("v", dist.MultivariateNormal(torch.zeros(2), torch.eye(2)))

    guide = cls(m)
    guide()
    med, q = guide.median(), guide.quantiles([0.1, 0.5, 0.9])
    shapes = {"a": (3,), "g": (2, 4), "v": (4, 2)}
    for k, shape in shapes.items():
        assert med[k].shape == shape and q[k].shape == (3,) + shape
    assert torch.allclose(q["g"][1], med["g"], rtol=1e-5) and (q["g"][0] < q["g"][2]).all() and (q["g"][0] > 0).all()
    assert torch.allclose(med["a"].sum(), torch.tensor(1.0))


def test_jit_trace_elbo_compiles_a_pyro_module_model_with_priors_built_in_init() -> None:
    from torch import nn

    from ember.nn import PyroModule, PyroSample

    class Regression(PyroModule):
        def __init__(self) -> None:
            super().__init__()
            self.linear = PyroModule[nn.Linear](2, 1)  # priors made while validation is on: they check their values
            self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, 2]).to_event(2))
            self.linear.bias = PyroSample(dist.Normal(0.0, 10.0).expand([1]).to_event(1))

        def forward(self, x, y=None):
            mean = self.linear(x).squeeze(-1)  # outside the plate: the weights are global
            with ember.plate("data", x.shape[0]):
                ember.sample("obs", dist.Normal(mean, 0.3), obs=y)

    ember.set_rng_seed(0)
    x, y = _data()
    m = Regression()
    guide = AutoDiagonalNormal(m)
    elbo = JitTrace_ELBO()
    svi = SVI(m, guide, ember.optim.Adam({"lr": 0.05}), elbo)
    for _ in range(200):
        svi.step(x, y)
    assert elbo.compile_status.startswith("compiled"), elbo.compile_status
    assert torch.allclose(guide.median()["linear.weight"], torch.tensor([[1.0, -1.0]]), atol=0.15)


@pytest.mark.parametrize("cls", ALL + [AutoLaplaceApproximation])
def test_every_guide_round_trips_through_save_and_load(tmp_path, cls) -> None:
    ember.set_rng_seed(0)
    x, y = _data()
    guide = cls(model)
    svi = SVI(model, guide, ember.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(5):
        svi.step(x, y)
    path = tmp_path / "g.pt"
    guide.save(path)
    ember.set_rng_seed(1)
    before = guide.median()
    ember.clear_param_store()
    again = cls(model).load(path)
    ember.set_rng_seed(1)
    after = again.median()
    assert all(torch.allclose(before[k], after[k]) for k in before)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in guide.state_dict().items()}
