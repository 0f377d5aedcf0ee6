"""Handler and runtime behaviours matched to Pyro 1.9.2 (found by the differential tester):
``obs_mask``, plates sharing a name, ``block`` on "observe", the dict face of messages,
``substitute`` on params only, Monte-Carlo enumeration, ``subsample_size > size``,
``format_shapes`` and ``ScoreParts``. Expected values are worked out by hand (or, for the
table layout, printed by pyro-ppl 1.9.2)."""

import math
from collections.abc import MutableMapping

import pytest
import torch

import ember as pyro
import ember.distributions as dist
from ember import poutine
from ember.infer import SVI, Trace_ELBO
from ember.optim import SGD
from ember.poutine.util import all_escape, discrete_escape, enum_extend
from ember.runtime import Message, ScoreParts

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


# ---------------------------------------------------------------- 1. obs_mask
def masked_model():
    with pyro.plate("p", 3):
        return pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor([1.0, 2.0, 3.0]), obs_mask=torch.tensor([True, False, True]))


def test_obs_mask_splits_the_site_into_observed_unobserved_and_deterministic():
    tr = poutine.trace(masked_model).get_trace()
    assert [(n, s.type, s.is_observed) for n, s in tr.nodes.items() if s.type == "sample"] == [
        ("x_observed", "sample", True),
        ("x_unobserved", "sample", False),
        ("x", "sample", True),
    ]
    obs, unobs, x = tr.nodes["x_observed"], tr.nodes["x_unobserved"], tr.nodes["x"]
    assert obs.mask.tolist() == [True, False, True] and unobs.mask.tolist() == [False, True, False]
    assert obs.value.tolist() == [1.0, 2.0, 3.0]
    u = unobs.value
    assert x.value.tolist() == [1.0, u[1].item(), 3.0]
    assert x.infer == {"_deterministic": True}
    assert torch.equal(tr.nodes["_RETURN"].value, x.value)
    tr.compute_log_prob()
    assert torch.allclose(obs.log_prob, torch.tensor([-0.5 - HALF_LOG_2PI, 0.0, -4.5 - HALF_LOG_2PI]))
    assert torch.allclose(unobs.log_prob, torch.tensor([0.0, -0.5 * u[1].item() ** 2 - HALF_LOG_2PI, 0.0]))
    assert x.log_prob.tolist() == [0.0, 0.0, 0.0]


def test_obs_mask_without_handlers_returns_the_combined_value():
    v = masked_model()
    assert v[0].item() == 1.0 and v[2].item() == 3.0


def test_obs_mask_must_be_a_bool_tensor():
    with pytest.raises(TypeError, match=r"site 'x': obs_mask must be a bool tensor.*float32"):
        pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor([1.0]), obs_mask=torch.tensor([1.0]))


def test_obs_mask_svi_step_with_a_guide_for_the_unobserved_entries():
    """Model x ~ N(mu, 1) in plate(2), obs [1, 5] observed where [True, False]; the guide puts
    x_unobserved at Delta(v), v = [7, 2]. Loss = -(log N(1|mu) + log N(v[1]|mu)) = 0.5 + 2 + log 2pi at
    mu = 0 (Delta's log q is 0); d/dmu = -(1 - mu) - (2 - mu) = -3, d/dv = [0, v1 - mu] = [0, 2]."""
    mask = torch.tensor([True, False])

    def model():
        mu = pyro.param("mu", torch.tensor(0.0))
        with pyro.plate("p", 2):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=torch.tensor([1.0, 5.0]), obs_mask=mask)

    def guide():
        v = pyro.param("v", torch.tensor([7.0, 2.0]))
        with pyro.plate("p", 2):
            pyro.sample("x_unobserved", dist.Delta(v))

    pyro.clear_param_store()
    svi = SVI(model, guide, SGD({"lr": 0.1}), Trace_ELBO())
    loss = svi.step()
    assert loss == pytest.approx(2.5 + 2 * HALF_LOG_2PI, abs=1e-5)
    store = pyro.get_param_store()
    assert store["mu"].item() == pytest.approx(0.3, abs=1e-6)
    assert store["v"].tolist() == pytest.approx([7.0, 1.8], abs=1e-6)


# ---------------------------------------------------------------- 2. plates sharing a name
def test_two_plates_with_one_name_are_refused_under_trace():
    def m(size2):
        with pyro.plate("r", 10, subsample_size=3):
            pyro.sample("z1", dist.Normal(0.0, 1.0))
        with pyro.plate("r", size2, subsample_size=3):
            pyro.sample("z2", dist.Normal(0.0, 1.0))

    for size2 in (10, 7):
        with pytest.raises(RuntimeError, match=rf"Multiple plates named 'r'.*sizes 10 and {size2}"):
            poutine.trace(m).get_trace(size2)
    m(10)  # without handlers nothing is recorded: fine, as in Pyro


def test_two_sequential_plates_with_one_name_are_refused_under_trace():
    def m():
        for i in pyro.plate("s", 2):
            pyro.sample(f"z{i}", dist.Normal(0.0, 1.0))
        for i in pyro.plate("s", 2):
            pyro.sample(f"y{i}", dist.Normal(0.0, 1.0))

    with pytest.raises(RuntimeError, match="Multiple plates named 's'"):
        poutine.trace(m).get_trace()


def test_the_same_plate_object_entered_again_shares_its_indices():
    def m():
        p = pyro.plate("r", 10, subsample_size=3)
        with p as a:
            pyro.sample("z1", dist.Normal(0.0, 1.0))
        with p as b:
            pyro.sample("z2", dist.Normal(0.0, 1.0))
        q = pyro.plate("s", 3)
        for i in q:
            pyro.sample(f"y{i}", dist.Normal(0.0, 1.0))
        with q:
            pyro.sample("w", dist.Normal(0.0, 1.0))
        return a, b

    tr = poutine.trace(m).get_trace()
    assert list(tr.nodes) == ["_INPUT", "r", "z1", "z2", "s", "y0", "y1", "y2", "w", "_RETURN"]
    a, b = tr.nodes["_RETURN"].value
    assert torch.equal(a, b) and torch.equal(a, tr.nodes["r"].value)
    a2, b2 = poutine.trace(poutine.replay(m, trace=tr)).get_trace().nodes["_RETURN"].value
    assert torch.equal(a2, a) and torch.equal(b2, a)


# ---------------------------------------------------------------- 3. block on "observe"
def abc():
    pyro.sample("a", dist.Normal(0.0, 1.0))
    pyro.sample("b", dist.Normal(0.0, 1.0), obs=torch.tensor(1.0))
    pyro.param("c", torch.tensor(1.0))


@pytest.mark.parametrize(
    "kwargs, seen",
    [
        ({"hide_types": ["observe"]}, ["a", "c"]),
        ({"expose_types": ["observe"]}, ["b"]),
        ({"hide_types": ["sample"]}, ["b", "c"]),
        ({"expose_types": ["sample"]}, ["a"]),
    ],
)
def test_block_type_filters_see_observed_sites_as_observe(kwargs, seen):
    tr = poutine.trace(poutine.block(abc, **kwargs)).get_trace()
    assert [n for n in tr.nodes if not n.startswith("_")] == seen


# ---------------------------------------------------------------- 4. the dict face of Message
def test_message_supports_the_dict_protocol():
    msg = Message("sample", "z", value=torch.tensor(1.0))
    assert isinstance(msg, MutableMapping)
    assert msg.setdefault("infer", {"x": 1}) == {} and msg.setdefault("extra", 5) == 5 and msg["extra"] == 5
    keys = list(msg)
    assert keys[:2] == ["type", "name"] and "extra" in keys and "log_prob" not in keys
    assert len(msg) == len(keys) and msg.values()[1] == "z"
    assert msg.pop("extra") == 5 and "extra" not in msg and msg.pop("extra", None) is None
    with pytest.raises(KeyError):
        msg.pop("extra")
    msg["log_prob"] = torch.tensor(0.0)
    del msg["log_prob"]
    assert "log_prob" not in msg and msg.log_prob is None
    msg["infer"]["a"] = 1
    del msg["infer"]
    assert msg.infer == {}
    with pytest.raises(KeyError):
        del msg["nothing"]


def test_a_pyro_style_messenger_can_use_setdefault_on_the_infer_dict():
    class MarkEnum(poutine.Messenger):
        def _pyro_sample(self, msg):
            msg.setdefault("infer", {})
            msg["infer"] = {**msg["infer"], "mark": True}

    tr = poutine.trace(MarkEnum()(abc)).get_trace()
    assert tr.nodes["a"].infer == {"mark": True}


def test_queue_helpers_accept_plain_dict_messages():
    site = {"type": "sample", "name": "b", "fn": dist.Bernoulli(0.25), "is_observed": False, "args": (), "kwargs": {}}
    tr = poutine.Trace()
    assert all_escape(tr, site) and discrete_escape(tr, site)
    ext = enum_extend(tr, site)
    assert [t.nodes["b"].value.item() for t in ext] == [0.0, 1.0]
    with pytest.raises(TypeError, match="enum_extend: expected a site message"):
        enum_extend(tr, 3)


# ---------------------------------------------------------------- 6. Monte-Carlo enumeration
def test_parallel_enumeration_with_num_samples_draws_along_the_dim():
    def m():
        pyro.sample("z", dist.Categorical(torch.ones(3) / 3), infer={"enumerate": "parallel", "num_samples": 6})

    site = poutine.trace(poutine.enum(m, first_available_dim=-1)).get_trace().nodes["z"]
    assert site["value"].shape == (6,) and site["infer"]["_enumerate_dim"] == -1  # draws, not the support of 3
    assert set(site["value"].tolist()) <= {0, 1, 2}


# ---------------------------------------------------------------- 7. subsample_size > size
def test_subsample_size_larger_than_size_is_refused():
    with pytest.raises(ValueError, match=r"plate 'p': subsample_size=5 is larger than the plate's size 3"):
        pyro.plate("p", 3, subsample_size=5)
    with pyro.plate("q", 3, subsample_size=3) as idx:
        assert idx.tolist() == [0, 1, 2]


# ---------------------------------------------------------------- 9. format_shapes, ScoreParts
def shapes_model(data):
    loc = pyro.param("loc", torch.zeros(2))
    sc = pyro.param("sc", torch.ones(()), constraint=dist.constraints.positive)
    with pyro.plate("a", 2, dim=-2):
        with pyro.plate("b", 3):
            z = pyro.sample("z", dist.Normal(loc.unsqueeze(-1), sc))
            pyro.sample("x", dist.Normal(z, 1.0).expand([2, 3]), obs=data)
    pyro.sample("m", dist.MultivariateNormal(torch.zeros(2), torch.eye(2)))


# printed by pyro-ppl 1.9.2 for the same model
PYRO_TABLE = "\n".join([
    'Trace Shapes:        ',
    ' Param Sites:        ',
    '          loc     2  ',
    '           sc        ',
    'Sample Sites:        ',
    '       a dist     |  ',
    '        value   2 |  ',
    '     log_prob     |  ',
    '       b dist     |  ',
    '        value   3 |  ',
    '     log_prob     |  ',
    '       z dist 2 3 |  ',
    '        value 2 3 |  ',
    '     log_prob 2 3 |  ',
    '       x dist 2 3 |  ',
    '        value 2 3 |  ',
    '     log_prob 2 3 |  ',
    '       m dist     | 2',
    '        value     | 2',
    '     log_prob     |  ',
])

PYRO_TABLE_UNTIL_Z = "\n".join([
    '            X      ',
    ' Param Sites:      ',
    '          loc     2',
    '           sc      ',
    'Sample Sites:      ',
    '       a dist     |',
    '        value   2 |',
    '       b dist     |',
    '        value   3 |',
    '       z dist 2 3 |',
    '        value 2 3 |',
])


def test_format_shapes_has_pyros_layout():
    pyro.clear_param_store()
    tr = poutine.trace(shapes_model).get_trace(torch.zeros(2, 3))
    assert tr.format_shapes(title="X", last_site="z") == PYRO_TABLE_UNTIL_Z
    tr.compute_log_prob()
    assert tr.format_shapes() == PYRO_TABLE
    assert poutine.Trace().format_shapes() == "Trace Shapes:"


def test_score_parts_are_pyros_namedtuple():
    def m():
        with pyro.plate("p", 2, subsample_size=1):
            pyro.sample("n", dist.Normal(0.0, 1.0))
            pyro.sample("b", dist.Bernoulli(0.25))

    tr = poutine.trace(m).get_trace()
    tr.compute_score_parts()
    n, b = tr.nodes["n"].score_parts, tr.nodes["b"].score_parts
    assert isinstance(n, ScoreParts) and n._fields == ("log_prob", "score_function", "entropy_term")
    assert n.score_function == 0 and torch.equal(n.entropy_term, n.log_prob) and torch.equal(n.log_prob, 2 * tr.nodes["n"].unscaled_log_prob)
    assert b.entropy_term == 0 and torch.equal(b.score_function, tr.nodes["b"].unscaled_log_prob)  # never scaled
    half = n.scale_and_mask(0.5, torch.tensor([False]))
    assert half.log_prob.tolist() == [0.0] and half.score_function == 0


# ---------------------------------------------------------------- 8. names Pyro has
def test_equalize_gives_later_matching_sites_the_first_value():
    def m():
        a = pyro.sample("a_std", dist.Normal(0.0, 1.0))
        b = pyro.sample("b_std", dist.Normal(5.0, 3.0))
        c = pyro.sample("c", dist.Normal(0.0, 1.0))
        return a, b, c

    tr = poutine.trace(poutine.equalize(m, ".+_std")).get_trace()
    a, b, c = tr.nodes["_RETURN"].value
    assert a is b and c is not a
    assert tr.nodes["b_std"].is_observed and tr.nodes["b_std"].infer == {"_deterministic": True}
    tr.compute_log_prob()
    assert tr.nodes["b_std"].log_prob.item() == 0.0
    kept = poutine.trace(poutine.equalize(m, ["a_std", "b_std"], keep_dist=True)).get_trace()
    kept.compute_log_prob()
    v = kept.nodes["a_std"].value.item()
    assert kept.nodes["b_std"].log_prob.item() == pytest.approx(-((v - 5.0) ** 2) / 18 - math.log(3.0) - HALF_LOG_2PI, abs=1e-5)


def test_collapse_is_refused_with_the_reason():
    with pytest.raises(NotImplementedError, match="funsor"):
        poutine.collapse(abc)


def test_validation_switch_barrier_and_site_is_subsample():
    from ember.util import site_is_subsample

    assert poutine.is_validation_enabled()
    poutine.enable_validation(False)
    try:
        assert not poutine.is_validation_enabled()
    finally:
        poutine.enable_validation(True)
    data = torch.ones(2)
    assert pyro.barrier(data) is data

    def m():
        with pyro.plate("p", 4, subsample_size=2):
            pyro.sample("z", dist.Normal(0.0, 1.0))
        return pyro.barrier(torch.zeros(1))

    tr = poutine.trace(m).get_trace()
    assert site_is_subsample(tr.nodes["p"]) and not site_is_subsample(tr.nodes["z"])


def test_trace_edges_predecessors_successors():
    tr = poutine.trace(abc).get_trace()
    assert list(tr.edges) == [] and tr.predecessors("a") == set()
    tr.add_edge("a", "b")
    assert list(tr.edges) == [("a", "b")] and tr.successors("a") == {"b"} and tr.predecessors("b") == {"a"}
    cp = tr.copy()
    tr.remove_node("a")
    assert list(tr.edges) == [] and tr.predecessors("b") == set() and list(cp.edges) == [("a", "b")]
    with pytest.raises(KeyError, match="no site 'q'"):
        tr.successors("q")


def test_save_visualization_without_graphviz_says_what_to_install(monkeypatch):
    import sys

    from ember.util import save_visualization

    monkeypatch.setitem(sys.modules, "graphviz", None)
    with pytest.raises(ImportError, match="pip install graphviz"):
        save_visualization(poutine.trace(abc).get_trace(), "/tmp/unused")


def test_a_trace_messenger_subclass_hook_runs_and_super_records():
    """A Pyro-style subclass of TraceMessenger adding ``_pyro_post_sample`` (calling super) has its
    hook run for sample sites while param sites are recorded as before (Ember's TraceMessenger
    overrides ``_postprocess_message``, which used to hide the subclass's hook)."""
    from ember.poutine.trace_messenger import TraceMessenger

    class Tagging(TraceMessenger):
        def _pyro_post_sample(self, msg):
            msg["infer"]["tag"] = True
            super()._pyro_post_sample(msg)

    def model():
        pyro.param("w", torch.tensor(1.0))
        pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.Normal(0.0, 1.0), obs=torch.tensor(0.5))

    with Tagging() as t:
        model()
    assert {n: (s["type"], s["infer"].get("tag")) for n, s in t.trace.nodes.items()} == {
        "w": ("param", None), "a": ("sample", True), "b": ("sample", True)}
