"""ember.poutine.runtime (Pyro's names for the handler stack), ember.poutine.handlers,
poutine.queue / broadcast / unwrap and ember.poutine.util."""

from __future__ import annotations

import queue as pyqueue

import pytest
import torch

import ember
import ember.distributions as dist
from ember import poutine
from ember.poutine import runtime as prt
from ember.poutine import util as putil
from ember.runtime import get_stack


def test_runtime_names_are_the_live_ones() -> None:
    import ember.runtime as rt

    assert prt._PYRO_STACK is get_stack()
    assert prt.apply_stack is rt.apply_stack and prt.Message is rt.Message
    assert prt.NonlocalExit is rt.NonlocalExit is poutine.NonlocalExit
    assert prt.default_process_message is rt.default_process_message
    assert prt.get_param_store() is ember.get_param_store()
    assert prt._PYRO_PARAM_STORE is ember.get_param_store()
    assert not prt.am_i_wrapped()
    with poutine.trace():
        assert prt.am_i_wrapped()
        assert len(prt._PYRO_STACK) == 1
    assert not prt.am_i_wrapped()


def _add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x + y


def test_effectful_is_a_real_effect_site() -> None:
    add = prt.effectful(_add, type="my_add")
    assert prt.effectful(add, type="my_add") is add  # idempotent
    x, y = torch.tensor(1.0), torch.tensor(2.0)
    assert add(x, y) == 3.0  # no handler: a plain call

    with poutine.trace() as tm:
        out = add(x, y, name="s")
    site = tm.trace.nodes["s"]
    assert site.type == "my_add" and site.args == (x, y) and site.value == 3.0 and out == 3.0

    class Double(poutine.Messenger):
        def _pyro_my_add(self, msg):
            msg.value = 2 * msg.fn(*msg.args, **msg.kwargs)
            msg.done = True

    with poutine.trace() as tm, Double():
        out = add(x, y, name="s")
    assert out == 6.0 and tm.trace.nodes["s"].value == 6.0
    # obs= fixes the value (the default action does not call fn)
    with poutine.trace() as tm:
        assert add(x, y, name="o", obs=torch.tensor(10.0)) == 10.0
    assert tm.trace.nodes["o"].is_observed
    # decorator form
    mul = prt.effectful(type="my_mul")(lambda a, b: a * b)
    with poutine.trace() as tm:
        assert mul(x, y, name="m") == 2.0
    assert tm.trace.nodes["m"].type == "my_mul"


def test_effectful_needs_a_type() -> None:
    with pytest.raises(ValueError, match="type"):
        prt.effectful(_add)


def test_get_mask_and_get_plates() -> None:
    assert prt.get_mask() is None and prt.get_plates() == ()
    m = torch.tensor([True, False, True])
    with ember.plate("outer", 3):
        with ember.plate("inner", 2):
            frames = prt.get_plates()
            with poutine.mask(mask=m):
                assert torch.equal(prt.get_mask(), m)
                with poutine.mask(mask=False):
                    assert not bool(prt.get_mask().any())
    assert [(f.name, f.size, f.dim) for f in frames] == [("outer", 3, -1), ("inner", 2, -2)]
    # the probe is not recorded
    with poutine.trace() as tm:
        prt.get_mask()
    assert list(tm.trace.nodes) == []


def test_handlers_module_lists_pyros_handlers() -> None:
    from ember.poutine import handlers

    for name in ["block", "broadcast", "condition", "do", "escape", "infer_config", "lift", "mask", "queue", "replay",
                 "scale", "seed", "substitute", "trace", "uncondition", "unwrap"]:
        assert getattr(handlers, name) is getattr(poutine, name), name


def test_broadcast_is_a_noop_since_plates_broadcast() -> None:
    @poutine.broadcast
    def model():
        with ember.plate("a", 4, dim=-2), ember.plate("b", 3, dim=-1):
            return ember.sample("x", dist.Bernoulli(torch.tensor(0.5)))

    assert model().shape == (4, 3)
    assert poutine.unwrap(model).__name__ == "model"


def test_unwrap() -> None:
    def model():
        return ember.sample("x", dist.Normal(0.0, 1.0))

    wrapped = poutine.trace(poutine.block(poutine.scale(model, scale=2.0)))
    assert poutine.unwrap(wrapped) is model
    assert poutine.unwrap(model) is model
    q = pyqueue.Queue()
    assert poutine.unwrap(poutine.queue(model, queue=q)) is model


def _discrete_model():
    a = ember.sample("a", dist.Bernoulli(torch.tensor(0.3)))
    b = ember.sample("b", dist.Categorical(torch.tensor([0.2, 0.5, 0.3])))
    return a, b


def test_queue_visits_every_execution_once() -> None:
    q = pyqueue.Queue()
    q.put(poutine.Trace())
    run = poutine.trace(poutine.queue(_discrete_model, queue=q))
    seen = []
    while not q.empty():
        tr = run.get_trace()
        seen.append((int(tr.nodes["a"].value), int(tr.nodes["b"].value)))
    assert sorted(seen) == [(a, b) for a in (0, 1) for b in (0, 1, 2)]
    with pytest.raises(ValueError, match="empty"):
        run()


def test_queue_num_samples_and_max_tries() -> None:
    q = pyqueue.Queue()
    q.put(poutine.Trace())
    run = poutine.trace(poutine.queue(_discrete_model, queue=q, num_samples=1))
    seen = []
    while not q.empty():
        tr = run.get_trace()
        seen.append((int(tr.nodes["a"].value), int(tr.nodes["b"].value)))
    assert seen == [(0, 0)]  # one extension per site: the first support value
    q.put(poutine.Trace())
    with pytest.raises(ValueError, match="max_tries=1"):
        poutine.queue(_discrete_model, queue=q, max_tries=1)()


def test_poutine_util() -> None:
    def model():
        with ember.plate("data", 10, subsample_size=3):
            ember.sample("x", dist.Normal(0.0, 1.0))
        ember.factor("f", torch.tensor(-1.0))
        ember.deterministic("d", torch.tensor(2.0))

    tr = poutine.trace(model).get_trace()
    assert any(putil.site_is_subsample(s) for s in tr.nodes.values())
    pruned = putil.prune_subsample_sites(tr)
    assert not any(putil.site_is_subsample(s) for s in pruned.nodes.values())
    assert "x" in pruned.nodes and "data" in tr.nodes
    assert putil.site_is_factor(tr.nodes["f"]) and not putil.site_is_factor(tr.nodes["x"])
    assert putil.site_is_deterministic(tr.nodes["d"]) and not putil.site_is_deterministic(tr.nodes["f"])

    site = poutine.trace(_discrete_model).get_trace().nodes["b"]
    empty = poutine.Trace()
    assert putil.discrete_escape(empty, site) and putil.all_escape(empty, site)
    ext = putil.enum_extend(empty, site)
    assert [int(t.nodes["b"].value) for t in ext] == [0, 1, 2]
    assert len(putil.enum_extend(empty, site, num_samples=2)) == 2
    normal = poutine.trace(lambda: ember.sample("z", dist.Normal(0.0, 1.0))).get_trace().nodes["z"]
    assert putil.all_escape(empty, normal) and not putil.discrete_escape(empty, normal)
    with pytest.raises(TypeError, match="'z'.*cannot enumerate"):
        putil.enum_extend(empty, normal)


def test_queue_retries_leave_handlers_outside_a_block_alone() -> None:
    """NonlocalExit.reset_stack stops at the block that hides the escaping site (as in Pyro):
    a trace around a blocked search keeps the sites it recorded before."""
    q = pyqueue.Queue()
    q.put(poutine.Trace())
    with poutine.trace() as outer:
        ember.sample("before", dist.Normal(0.0, 1.0))
        with poutine.block():
            run = poutine.trace(poutine.queue(_discrete_model, queue=q))
            while not q.empty():
                run()
    assert list(outer.trace.nodes) == ["before"]


def test_mc_extend_and_validation_switch() -> None:
    torch.manual_seed(0)
    site = poutine.trace(lambda: ember.sample("z", dist.Normal(0.0, 1.0))).get_trace().nodes["z"]
    ext = putil.mc_extend(poutine.Trace(), site, num_samples=3)
    values = [float(t.nodes["z"].value) for t in ext]
    assert len(set(values)) == 3 and float(site.value) not in values
    assert len(putil.mc_extend(poutine.Trace(), site)) == 1
    assert putil.is_validation_enabled()
    putil.enable_validation(False)
    try:
        assert not putil.is_validation_enabled() and not ember.runtime.is_validation_enabled()
    finally:
        putil.enable_validation(True)
