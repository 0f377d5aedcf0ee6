"""SVI steps exactly the parameters whose param sites its traces see (Pyro's rule), and the
parameter store's public mapping contract."""

import pytest
import torch
from torch.distributions import constraints

import ember as pyro
import ember.distributions as dist
from ember import poutine
from ember.infer import SVI, JitTrace_ELBO, Trace_ELBO
from ember.optim import Adam


@pytest.fixture(autouse=True)
def _clean():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def _model(data):
    loc = pyro.sample("loc", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Normal(loc, 1.0), obs=data)


@pytest.mark.parametrize("elbo", [Trace_ELBO, JitTrace_ELBO])
def test_a_blocked_parameter_stays_put(elbo):
    # boosting BBVI: an already fitted component is blocked and must not move
    data = torch.full((20,), 3.0)

    def fitted():
        return pyro.param("old_loc", torch.tensor(-2.0))

    def guide(data):
        old = poutine.block(fitted, hide=["old_loc"])()
        new = pyro.param("new_loc", torch.tensor(0.0))
        pyro.sample("loc", dist.Normal(new + 0.0 * old, 1.0))

    svi = SVI(_model, guide, Adam({"lr": 0.1}), elbo())
    for _ in range(30):
        svi.step(data)
    assert pyro.param("old_loc").item() == -2.0
    assert pyro.param("new_loc").item() > 1.0  # the visible one trains


def test_module_parameters_are_param_sites_and_train():
    net = torch.nn.Linear(1, 1)

    def guide(data):
        pyro.module("net", net)
        pyro.sample("loc", dist.Normal(net(torch.ones(1)).squeeze(), 1.0))

    before = net.weight.detach().clone()
    svi = SVI(_model, guide, Adam({"lr": 0.1}), Trace_ELBO())
    tr = poutine.trace(guide, param_only=True).get_trace(torch.zeros(3))
    assert {n for n, s in tr.nodes.items() if s.type == "param"} == {"net$$$weight", "net$$$bias"}
    svi.step(torch.full((5,), 2.0))
    assert not torch.equal(net.weight.detach(), before)


def test_param_capture_nests():
    def guide():
        pyro.param("a", torch.tensor(1.0))
        with poutine.trace(param_only=True) as inner:
            pyro.param("b", torch.tensor(1.0), constraint=constraints.positive)
        return inner

    with poutine.trace(param_only=True) as outer:
        inner = guide()
    assert list(outer.trace.nodes) == ["a", "b"] and list(inner.trace.nodes) == ["b"]


def test_store_mapping_contract():
    store = pyro.get_param_store()
    v = store.setdefault("s", torch.tensor(2.0), constraints.positive)
    assert v.item() == pytest.approx(2.0)
    assert store.setdefault("s", lambda: 1 / 0).item() == pytest.approx(2.0)  # init not called when present
    assert "s" in store and list(store.keys()) == ["s"] and store.get_all_param_names() == ["s"]
    u = store.unconstrained("s")
    assert u.requires_grad and u.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert dict(store.named_parameters())["s"] is u
    assert store.get_param_constraint("s") is constraints.positive
    assert store.unconstrained("missing") is None
    with store.scope() as inner:
        assert "s" not in store
        pyro.param("t", torch.tensor(5.0))
    assert list(store.keys()) == ["s"] and "t" in inner["params"]
    with store.scope(inner):
        assert pyro.param("t").item() == 5.0
    del store["s"]
    assert "s" not in store and len(store) == 0


def test_strict_keyword_arguments():
    import ember.util
    from ember.infer import Importance, TraceGraph_ELBO

    ember.util._WARNED_IGNORED.clear()  # each accepted-but-ignored option warns once per process

    with pytest.raises(TypeError, match="on_nonfinte=.*did you mean on_nonfinite="):
        SVI(_model, lambda data: None, Adam({"lr": 0.1}), Trace_ELBO(), on_nonfinte="skip")
    with pytest.raises(TypeError, match="num_particle=.*did you mean num_particles="):
        Trace_ELBO(num_particle=3)
    with pytest.raises(TypeError, match="vectorise_particles=.*did you mean vectorize_particles="):
        TraceGraph_ELBO(vectorise_particles=True)
    with pytest.raises(TypeError, match="num_sample=.*did you mean num_samples="):
        Importance(_model, num_sample=10)
    with pytest.warns(UserWarning, match="num_steps= is accepted but has no effect"):
        svi = SVI(_model, lambda data: None, Adam({"lr": 0.1}), Trace_ELBO(), num_steps=100)
    assert not hasattr(svi, "num_steps") and not hasattr(svi, "num_samples")
    with pytest.warns(UserWarning, match="jit_options= is accepted but has no effect"):
        JitTrace_ELBO(jit_options={"check_trace": False})


def test_predictive_strict_keyword_arguments():
    from ember.infer import Predictive

    with pytest.raises(TypeError, match="num_sample=.*did you mean num_samples="):
        Predictive(_model, num_sample=10)
