"""get_dependencies and render_model: edges from provenance, plates as clusters, observed shaded."""

from __future__ import annotations

import re
import shutil

import pytest
import torch

import ember as pyro
import ember.distributions as dist
from ember.infer.inspect import get_dependencies, get_model_relations, render_model
from ember.infer.reparam import LocScaleReparam

graphviz = pytest.importorskip("graphviz")

Y8 = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA8 = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools(y, sigma):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", 8):
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def _edges(src: str) -> set:
    return set(re.findall(r"^\s*(\w+) -> (\w+)", src, flags=re.M))


def _cluster_members(src: str, plate: str) -> set:
    body = src.split(f"subgraph cluster_{plate} {{", 1)[1]
    depth, out = 1, []
    for line in body.splitlines():
        depth += line.count("{") - line.count("}")
        if depth <= 0:
            break
        m = re.match(r"\s*(\w+) \[", line)
        if m and depth == 1:
            out.append(m.group(1))
    return set(out)


def test_get_dependencies_chain():
    def model():
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        b = pyro.sample("b", dist.Normal(a, 1.0))
        c = pyro.sample("c", dist.Normal(a, b.exp()))
        pyro.sample("d", dist.Normal(c, 1.0), obs=torch.tensor(0.0))
        e = pyro.sample("e", dist.Normal(0.0, 1.0))  # independent of all
        pyro.sample("f", dist.Normal(e + 0 * a.detach(), 1.0), obs=torch.tensor(0.0))

    deps = get_dependencies(model)
    prior = deps["prior_dependencies"]
    assert prior["a"] == {"a": set()}
    assert prior["b"] == {"a": set(), "b": set()}
    assert prior["c"] == {"a": set(), "b": set(), "c": set()}
    assert prior["d"] == {"c": set(), "d": set()}
    assert set(prior["f"]) == {"e", "a", "f"}  # provenance follows values, not gradients
    post = deps["posterior_dependencies"]
    # latents only, each mapped to the sites downstream of it and, moralised, its co-parents
    # (a and e are co-parents of the observed f); pyro-ppl 1.9.2 gives the same
    assert post == {
        "a": {"a": set(), "b": set(), "c": set(), "e": set(), "f": set()},
        "b": {"b": set(), "c": set()},
        "c": {"c": set(), "d": set()},
        "e": {"e": set(), "f": set()},
    }


def test_poutine_mask_is_a_dependency():
    def model():
        a = pyro.sample("a", dist.Bernoulli(0.5))
        with pyro.poutine.mask(mask=a.bool()):
            pyro.sample("b", dist.Normal(0.0, 1.0))

    assert get_dependencies(model)["prior_dependencies"]["b"] == {"a": set(), "b": set()}


def test_eight_schools_graph():
    g = render_model(eight_schools, (Y8, SIGMA8), render_distributions=True)
    assert isinstance(g, graphviz.Digraph)
    src = g.source
    assert _edges(src) == {("mu", "theta"), ("tau", "theta"), ("theta", "obs")}
    assert _cluster_members(src, "schools") == {"theta", "obs"}
    assert 'label="schools (8)"' in src
    assert re.search(r"obs \[label=\"obs\n~ Normal\".*fillcolor=gray.*style=filled", src)
    assert not re.search(r"theta \[.*filled", src)
    assert re.search(r"tau \[label=\"tau\n~ HalfCauchy\"", src)


def test_reparameterized_model_graph():
    model = pyro.poutine.reparam(eight_schools, config={"theta": LocScaleReparam(0.0)})
    src = render_model(model, (Y8, SIGMA8), render_deterministic=True).source
    assert _edges(src) == {("mu", "theta"), ("tau", "theta"), ("theta_decentered", "theta"), ("theta", "obs")}
    assert re.search(r"theta \[.*style=dashed", src)  # deterministic
    # by default (as in Pyro) obs depends on what the deterministic theta was computed from
    src = render_model(model, (Y8, SIGMA8)).source
    assert {("mu", "obs"), ("tau", "obs"), ("theta_decentered", "obs")} <= _edges(src)
    assert ("theta", "obs") not in _edges(src)


def test_nested_plates_and_params():
    def model():
        w = pyro.param("w", torch.tensor(1.0))
        with pyro.plate("outer", 2, dim=-2):
            a = pyro.sample("a", dist.Normal(w, 1.0))
            with pyro.plate("inner", 3, dim=-1):
                pyro.sample("x", dist.Normal(a, 1.0), obs=torch.zeros(2, 3))

    rel = get_model_relations(model, include_params=True)
    assert rel["plates"] == {"a": ["outer"], "x": ["outer", "inner"]}
    assert rel["sample_param"]["a"] == ["w"]
    src = render_model(model, render_params=True).source
    inner = src.split("subgraph cluster_outer {", 1)[1]
    assert "subgraph cluster_inner {" in inner  # nested
    assert _cluster_members(src, "inner") == {"x"} and _cluster_members(src, "outer") == {"a"}
    assert re.search(r'"param w" -> a', src)


def test_vae_and_air_graphs():
    from ember.examples.air import AIR
    from ember.examples.vae import VAE

    src = render_model(VAE(z_dim=4, hidden_dim=8).model, (torch.zeros(3, 784),)).source
    assert _edges(src) == {("latent", "obs")} and _cluster_members(src, "data") == {"latent", "obs"}
    air = AIR(rnn_hidden_size=8, z_what_size=4, encoder_net=[8], decoder_net=[8], predict_net=[8], bl_predict_net=[8])
    src = render_model(air.model, (torch.rand(2, 2500),)).source
    edges = _edges(src)
    for t in range(3):
        assert {(f"z_pres_{t}", f"z_where_{t}"), (f"z_pres_{t}", f"z_what_{t}")} <= edges  # masks
        assert {(f"z_pres_{t}", "obs"), (f"z_where_{t}", "obs"), (f"z_what_{t}", "obs")} <= edges
    assert {("z_pres_0", "z_pres_1"), ("z_pres_1", "z_pres_2")} <= edges
    assert ("z_where_0", "z_where_1") not in edges
    assert len(edges) == 3 * 3 + 3 * 2 + 2
    assert len(_cluster_members(src, "data")) == 10


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot program is not installed (apt-get install graphviz)")
def test_render_to_file(tmp_path):
    path = tmp_path / "schools.png"
    render_model(eight_schools, (Y8, SIGMA8), filename=str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's dot program is not installed (apt-get install graphviz)")
@pytest.mark.parametrize("example", ["vae", "air"])
def test_cli_render_model(tmp_path, example, capsys):
    from ember.cli import main

    path = tmp_path / f"{example}.svg"
    assert main([example, "--render-model", str(path)]) == 0
    svg = path.read_text()
    assert "obs" in svg and ("latent" in svg if example == "vae" else "z_pres_2" in svg)


def test_top_level_export():
    assert pyro.render_model is render_model


# ---- Pyro's own examples (pyro-ppl 1.9.2 gives exactly these) ---------------------------------------


def _pyro_model_1():
    a = pyro.sample("a", dist.Normal(0, 1))
    pyro.sample("b", dist.Normal(a, 1), obs=torch.tensor(0.0))


def _pyro_model_2():
    a = pyro.sample("a", dist.Normal(0, 1))
    b = pyro.sample("b", dist.LogNormal(0, 1))
    c = pyro.sample("c", dist.Normal(a, b))
    pyro.sample("d", dist.Normal(c, 1), obs=torch.tensor(0.0))


def _pyro_model_3():
    with pyro.plate("p", 5):
        a = pyro.sample("a", dist.Normal(0, 1))
    pyro.sample("b", dist.Normal(a.sum(), 1), obs=torch.tensor(0.0))


def _chain():
    a = pyro.sample("a", dist.Normal(0, 1))
    b = pyro.sample("b", dist.Normal(a, 1))
    pyro.sample("c", dist.Normal(b, 1))


def _two_plated_parents():
    with pyro.plate("p", 3):
        a = pyro.sample("a", dist.Normal(0, 1))
        b = pyro.sample("b", dist.Normal(0, 1))
        pyro.sample("c", dist.Normal(a + b, 1), obs=torch.zeros(3))
    pyro.sample("e", dist.Normal(b.sum() + a.sum(), 1), obs=torch.tensor(0.0))


@pytest.mark.parametrize("model, expected", [
    (_pyro_model_1, {"prior_dependencies": {"a": {"a": set()}, "b": {"a": set(), "b": set()}},
                     "posterior_dependencies": {"a": {"a": set(), "b": set()}}}),
    (_pyro_model_2, {"prior_dependencies": {"a": {"a": set()}, "b": {"b": set()}, "c": {"a": set(), "b": set(), "c": set()},
                                            "d": {"c": set(), "d": set()}},
                     "posterior_dependencies": {"a": {"a": set(), "b": set(), "c": set()}, "b": {"b": set(), "c": set()},
                                                "c": {"c": set(), "d": set()}}}),
    (_pyro_model_3, {"prior_dependencies": {"a": {"a": set()}, "b": {"a": set(), "b": set()}},
                     "posterior_dependencies": {"a": {"a": {"p"}, "b": set()}}}),
    (_chain, {"prior_dependencies": {"a": {"a": set()}, "b": {"a": set(), "b": set()}, "c": {"b": set(), "c": set()}},
              "posterior_dependencies": {"a": {"a": set(), "b": set()}, "b": {"b": set(), "c": set()}, "c": {"c": set()}}}),
    (_two_plated_parents, {"prior_dependencies": {"a": {"a": set()}, "b": {"b": set()}, "c": {"a": set(), "b": set(), "c": set()},
                                                  "e": {"a": set(), "b": set(), "e": set()}},
                           "posterior_dependencies": {"a": {"a": {"p"}, "b": {"p"}, "c": set(), "e": set()},
                                                      "b": {"b": {"p"}, "c": set(), "e": set()}}}),
], ids=["pyro_model_1", "pyro_model_2", "pyro_model_3", "chain", "two_plated_parents"])
def test_get_dependencies_matches_pyro(model, expected):
    assert get_dependencies(model) == expected


def test_deterministic_sites_are_seen_through():
    def model():
        m = pyro.sample("m", dist.Normal(0, 1))
        d = pyro.deterministic("d", m * 2)
        pyro.sample("x", dist.Normal(d, 1), obs=torch.tensor(0.0))

    assert get_dependencies(model) == {"prior_dependencies": {"m": {"m": set()}, "x": {"m": set(), "x": set()}},
                                       "posterior_dependencies": {"m": {"m": set(), "x": set()}}}
    assert get_model_relations(model)["sample_sample"] == {"m": [], "d": ["m"], "x": ["m"]}


def test_get_model_relations_matches_pyro_docstring_and_lists_params():
    from torch.distributions import constraints

    def model(data):
        m = pyro.sample("m", dist.Normal(0, 1))
        sd = pyro.sample("sd", dist.LogNormal(m, 1))
        s = pyro.param("s", torch.tensor(1.0), constraint=constraints.positive)
        with pyro.plate("N", len(data)):
            pyro.sample("obs", dist.Normal(m, sd * s), obs=data)

    rel = get_model_relations(model, (torch.zeros(4),))
    assert rel["sample_sample"] == {"m": [], "sd": ["m"], "obs": ["m", "sd"]}
    assert rel["sample_dist"] == {"m": "Normal", "sd": "LogNormal", "obs": "Normal"}
    assert rel["plate_sample"] == {"N": ["obs"]}
    assert rel["observed"] == ["obs"]
    assert rel["sample_param"] == {"m": [], "sd": [], "obs": ["s"]}
    assert rel["param_constraint"] == {"s": "GreaterThan(lower_bound=0.0)"}
    assert re.search(r'"param s" -> obs', render_model(model, (torch.zeros(4),), render_params=True).source)
