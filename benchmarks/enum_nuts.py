"""NUTS on a model with an enumerated discrete site, ember against pyro-ppl (issue 13's acceptance).

A two-component mixture with known locations (-2, 2): the weight ``p ~ Beta(2, 2)`` and the scale
``~ LogNormal(0, 1)`` are sampled by NUTS while each datum's assignment is summed out of the
potential (``config_enumerate``). Both libraries run the same model definition on the same 60
data points, 1000 warm-up + 2000 draws, 1 thread; prints the posterior mean and sd of each site
and the wall time as one JSON line. Run with the peers' python (`.peers-venv/bin/python
benchmarks/enum_nuts.py`, after `pip install -e . --no-deps` there).
"""

import json
import time

import pyro
import pyro.distributions as pdist
import torch
from pyro.infer import MCMC as PMCMC
from pyro.infer import NUTS as PNUTS
from pyro.infer import config_enumerate as pce

import ember
import ember.distributions as edist
from ember.infer import MCMC as EMCMC
from ember.infer import NUTS as ENUTS
from ember.infer import config_enumerate as ece

torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
z = torch.bernoulli(torch.full((60,), 0.3), generator=g).long()
data = torch.tensor([-2.0, 2.0])[z] + 0.8 * torch.randn(60, generator=g)
def make(lib, dist, ce):
    @ce
    def model(data):
        p = lib.sample("p", dist.Beta(2.0, 2.0))
        scale = lib.sample("scale", dist.LogNormal(0.0, 1.0))
        locs = torch.tensor([-2.0, 2.0])
        with lib.plate("data", len(data)):
            a = lib.sample("a", dist.Bernoulli(p))
            lib.sample("obs", dist.Normal(locs[a.long()], scale), obs=data)
    return model
out = {}
for name, lib, dist, ce, M, N in [("ember", ember, edist, ece, EMCMC, ENUTS), ("pyro", pyro, pdist, pce, PMCMC, PNUTS)]:
    lib.set_rng_seed(1)
    t = time.perf_counter()
    m = M(N(make(lib, dist, ce), max_plate_nesting=1), num_samples=2000, warmup_steps=1000, disable_progbar=True)
    m.run(data)
    s = m.get_samples()
    out[name] = {k: (round(float(v.mean()), 4), round(float(v.std()), 4)) for k, v in s.items()}
    out[name]["wall_s"] = round(time.perf_counter() - t, 2)
print(json.dumps({"benchmark": "enum_nuts", **out}))
