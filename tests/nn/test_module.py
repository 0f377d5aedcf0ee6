"""PyroModule, PyroParam, PyroSample, pyro_method, to_pyro_module_ (issue 12 point 1)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ember
import ember.distributions as dist
from ember import poutine
from ember.distributions import constraints
from ember.nn import PyroModule, PyroParam, PyroSample, pyro_method, to_pyro_module_


@pytest.fixture(autouse=True)
def _clear():
    ember.clear_param_store()
    yield
    ember.clear_param_store()


class Regression(PyroModule):
    def __init__(self) -> None:
        super().__init__()
        self.linear = PyroModule[nn.Linear](3, 1)
        self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, 3]).to_event(2))
        self.linear.bias = PyroSample(lambda self: dist.Normal(self.loc, 10.0).expand([1]).to_event(1))
        self.linear.loc = PyroParam(torch.tensor(0.5))
        self.sigma = PyroParam(torch.tensor(2.0), constraints.positive)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        mean = self.linear(x).squeeze(-1)
        with ember.plate("data", x.shape[0]):
            ember.sample("obs", dist.Normal(mean, self.sigma), obs=y)
        return mean


def test_class_getitem_is_cached_and_a_subclass() -> None:
    cls = PyroModule[nn.Linear]
    assert cls is PyroModule[nn.Linear] and issubclass(cls, nn.Linear) and issubclass(cls, PyroModule)
    assert PyroModule[cls] is cls
    with pytest.raises(TypeError, match="nn.Module subclass"):
        PyroModule[int]


def test_site_names_follow_the_module_path() -> None:
    m = Regression()
    tr = poutine.trace(m).get_trace(torch.randn(4, 3))
    sites = {n: s.type for n, s in tr.nodes.items() if s.type in ("sample", "param")}
    assert sites == {"linear.weight": "sample", "linear.loc": "param", "linear.bias": "sample", "sigma": "param", "obs": "sample"}
    assert tr.nodes["linear.weight"].value.shape == (1, 3)
    # the callable prior read the PyroParam: its mean is 0.5
    assert tr.nodes["linear.bias"].fn.base_dist.loc.item() == pytest.approx(0.5)


def test_named_root_prefixes_sites() -> None:
    m = PyroModule[nn.Linear](2, 2)
    m._pyro_set_supermodule("net", m._pyro_context)
    tr = poutine.trace(m).get_trace(torch.randn(1, 2))
    assert {n for n, s in tr.nodes.items() if s.type == "param"} == {"net.weight", "net.bias"}


def test_store_holds_the_modules_own_parameters_and_svi_steps_them() -> None:
    torch.manual_seed(0)
    m = PyroModule[nn.Linear](2, 1)
    x = torch.randn(20, 2)
    y = x @ torch.tensor([1.0, -2.0]) + 0.5

    def model(x, y):
        with ember.plate("n", 20):
            ember.sample("y", dist.Normal(m(x).squeeze(-1), 0.1), obs=y)

    before = m.weight.detach().clone()
    svi = ember.infer.SVI(model, lambda x, y: None, ember.optim.Adam({"lr": 0.05}), ember.infer.Trace_ELBO())
    svi.step(x, y)
    store = ember.get_param_store()
    assert store.unconstrained("weight") is m._parameters["weight"]
    assert not torch.equal(before, m.weight.detach())  # stepped through the store's tensor
    for _ in range(300):
        svi.step(x, y)
    assert torch.allclose(m.weight.detach(), torch.tensor([[1.0, -2.0]]), atol=0.05)


def test_pyro_param_constraint_event_dim_and_store() -> None:
    class M(PyroModule):
        def __init__(self) -> None:
            super().__init__()
            self.scale = PyroParam(torch.full((3,), 2.0), constraints.positive, event_dim=1)

        def forward(self) -> torch.Tensor:
            return self.scale

    m = M()
    tr = poutine.trace(m).get_trace()
    site = tr.nodes["scale"]
    assert site.type == "param" and site.args[3] == 1
    assert torch.allclose(site.value, torch.full((3,), 2.0))
    store = ember.get_param_store()
    assert store.get_param_constraint("scale") is constraints.positive
    assert torch.allclose(store.unconstrained("scale"), torch.full((3,), 2.0).log())
    assert list(m.state_dict()) == ["scale_unconstrained"]
    # outside a call: the plain constrained value, no store traffic needed
    assert torch.allclose(m.scale, torch.full((3,), 2.0))
    m.scale = torch.full((3,), 5.0)  # a new constrained value
    assert torch.allclose(m.scale, torch.full((3,), 5.0))
    with pytest.raises(ValueError, match="'bad'.*outside its constraint"):
        m.bad = PyroParam(torch.tensor(-1.0), constraints.positive)


def test_state_dict_round_trips() -> None:
    torch.manual_seed(1)
    a = Regression()
    a.sigma = torch.tensor(3.0)
    b = Regression()
    b.load_state_dict(a.state_dict())
    assert torch.allclose(b.sigma, torch.tensor(3.0))
    assert set(a.state_dict()) == {"linear.loc_unconstrained", "sigma_unconstrained"}


def test_values_are_cached_within_one_call() -> None:
    class M(PyroModule):
        def __init__(self) -> None:
            super().__init__()
            self.z = PyroSample(dist.Normal(0.0, 1.0))

        def forward(self) -> tuple:
            return self.z, self.z

        @pyro_method
        def twice(self) -> tuple:
            return self.z, self.z

    m = M()
    a, b = m()
    assert a is b
    c, d = m.twice()
    assert c is d and c is not a
    tr = poutine.trace(m.twice).get_trace()
    assert [n for n, s in tr.nodes.items() if s.type == "sample"] == ["z"]


def test_loaded_store_values_win(tmp_path) -> None:
    torch.manual_seed(2)
    m = PyroModule[nn.Linear](2, 1)
    poutine.trace(m).get_trace(torch.randn(1, 2))
    path = tmp_path / "store.pt"
    ember.get_param_store().save(path)
    trained = m.weight.detach().clone()
    ember.clear_param_store()
    ember.get_param_store().load(path)
    fresh = PyroModule[nn.Linear](2, 1)
    tr = poutine.trace(fresh).get_trace(torch.randn(1, 2))
    assert torch.equal(tr.nodes["weight"].value.detach(), trained)
    assert torch.equal(fresh.weight.detach(), trained)
    assert ember.get_param_store().unconstrained("weight") is fresh._parameters["weight"]
    wrong = PyroModule[nn.Linear](3, 1)
    with pytest.raises(ValueError, match="'weight' with shape \\(1, 2\\).*shape \\(1, 3\\)"):
        wrong(torch.randn(1, 3))


def test_to_pyro_module_in_place() -> None:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
    w = net[0].weight.detach().clone()
    to_pyro_module_(net)
    assert isinstance(net, PyroModule) and isinstance(net[0], PyroModule) and isinstance(net[0], nn.Linear)
    net[2].weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, 3]).to_event(2))
    tr = poutine.trace(net).get_trace(torch.randn(4, 2))
    sites = {n: s.type for n, s in tr.nodes.items() if s.type in ("sample", "param")}
    assert sites == {"0.weight": "param", "0.bias": "param", "2.weight": "sample", "2.bias": "param"}
    assert torch.equal(tr.nodes["0.weight"].value.detach(), w)


def test_pyro_method_refuses_plain_objects() -> None:
    @pyro_method
    def f(self):
        return 1

    with pytest.raises(TypeError, match="PyroModule"):
        f(object())


def test_ember_module_and_random_module_still_work() -> None:
    torch.manual_seed(4)
    net = nn.Linear(2, 1)
    tr = poutine.trace(lambda: ember.module("net", net)).get_trace()
    assert {n for n, s in tr.nodes.items() if s.type == "param"} == {"net$$$weight", "net$$$bias"}
    prior = {"rnet$$$weight": dist.Normal(torch.zeros(1, 2), 1.0).to_event(2), "rnet$$$bias": dist.Normal(torch.zeros(1), 1.0).to_event(1)}
    sampler = ember.random_module("rnet", net, prior)
    tr = poutine.trace(sampler).get_trace()
    assert {n for n, s in tr.nodes.items() if s.type == "sample"} == {"rnet$$$weight", "rnet$$$bias"}


def test_lazy_export_and_no_eager_import() -> None:
    import subprocess
    import sys

    code = "import sys, ember.nn; assert 'ember.nn.module' not in sys.modules; from ember.nn import PyroModule; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_dir_of_nn_lists_the_lazy_module_names():
    import ember.nn

    assert {"PyroModule", "PyroParam", "PyroSample", "pyro_method"} <= set(dir(ember.nn))
