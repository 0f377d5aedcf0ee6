"""A kernel of one's own (Pyro's MCMCKernel protocol) under MCMC, and RandomWalkKernel."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import biject_to, constraints

import ember as pyro
import ember.distributions as dist
from ember.infer import MCMC
from ember.infer.mcmc import MCMCKernel, RandomWalkKernel


class Counting(MCMCKernel):
    """Adds 1 to every site per step; records the protocol calls."""

    def __init__(self):
        self.calls = []
        self.transforms = {"s": biject_to(constraints.positive).inv}

    def setup(self, warmup_steps, *args, **kwargs):
        self.calls.append(("setup", warmup_steps, args, kwargs))
        if self.initial_params is None:
            self.initial_params = {"a": torch.zeros(2), "s": torch.tensor(0.0)}

    def sample(self, params):
        self.calls.append("sample")
        return {k: v + 1 for k, v in params.items()}

    def end_warmup(self):
        self.calls.append("end_warmup")

    def cleanup(self):
        self.calls.append("cleanup")

    def diagnostics(self):
        return {"acceptance rate": 0.5}


def test_mcmc_runs_a_kernel_of_ones_own_by_pyros_protocol():
    kernel = Counting()
    seen = []
    mcmc = MCMC(kernel, num_samples=4, warmup_steps=3, thinning=2, disable_progbar=True,
                hook_fn=lambda k, params, stage, i: seen.append((stage, i, float(params["s"]))))
    mcmc.run(7.0, flag=True)
    assert kernel.calls[0] == ("setup", 3, (7.0,), {"flag": True})
    assert kernel.calls[1:] == ["sample"] * 3 + ["end_warmup"] + ["sample"] * 4 + ["cleanup"]
    assert seen == [("Warmup", 0, 1.0), ("Warmup", 1, 2.0), ("Warmup", 2, 3.0), ("Sample", 0, 4.0), ("Sample", 1, 5.0),
                    ("Sample", 2, 6.0), ("Sample", 3, 7.0)]
    samples = mcmc.get_samples()
    torch.testing.assert_close(samples["a"], torch.tensor([[4.0, 4.0], [6.0, 6.0]]))  # kept: iterations 4 and 6
    torch.testing.assert_close(samples["s"], torch.tensor([4.0, 6.0]).exp())  # constrained with transforms[s].inv
    assert mcmc.diagnostics()["acceptance rate"] == {"chain 0": 0.5}
    assert mcmc.get_extra_fields() == {} and mcmc.num_divergences == 0
    assert "MCMCKernel" in mcmc.compile_status[0]


def test_each_chain_starts_where_mcmc_initial_params_say():
    kernel = Counting()
    mcmc = MCMC(kernel, num_samples=1, warmup_steps=0, num_chains=2, disable_progbar=True,
                initial_params={"a": torch.tensor([[0.0, 0.0], [10.0, 10.0]]), "s": torch.tensor([0.0, 1.0])})
    mcmc.run()
    draws = mcmc.get_samples(group_by_chain=True)
    torch.testing.assert_close(draws["a"], torch.tensor([[[1.0, 1.0]], [[11.0, 11.0]]]))
    assert kernel.calls.count("end_warmup") == 2  # no warm-up: before the first draw of each chain


def test_random_walk_recovers_a_conjugate_posterior():
    def model(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)
        return s

    pyro.set_rng_seed(0)
    kernel = RandomWalkKernel(model, init_step_size=0.5)
    mcmc = MCMC(kernel, num_samples=3000, warmup_steps=500, disable_progbar=True)
    mcmc.run(torch.tensor(1.0))
    z, s = mcmc.get_samples()["z"], mcmc.get_samples()["s"]
    # z | x ~ N(0.5, 1/2); s keeps its LogNormal(0, 1) prior: median 1
    assert abs(float(z.mean()) - 0.5) < 0.15 and abs(float(z.std()) - math.sqrt(0.5)) < 0.12
    assert bool((s > 0).all()) and abs(float(s.median()) - 1.0) < 0.3
    rate = mcmc.diagnostics()["acceptance rate"]["chain 0"]
    assert 0.1 < rate < 0.5 and kernel.step_size != 0.5  # adapted towards 0.234
    assert list(kernel.logging()) == ["step size", "acc. prob"]


def test_bad_kernels_and_arguments():
    with pytest.raises(TypeError, match="MCMCKernel"):
        MCMC(object(), num_samples=2)
    with pytest.raises(ValueError, match="init_step_size"):
        RandomWalkKernel(lambda: None, init_step_size=0.0)
    with pytest.raises(ValueError, match="target_accept_prob"):
        RandomWalkKernel(lambda: None, target_accept_prob=1.0)
    with pytest.raises(TypeError, match="abstract"):
        MCMCKernel()
