# %% [markdown]
# # An introduction to inference
#
# A probabilistic program describes how data come about; inference runs it backwards, from the
# data to the causes that could have produced them. This tutorial shows the steps on the
# smallest model worth the name.
#
# ## The scale
#
# We want to know what an object weighs. Before weighing it, our guess is 8.5, give or take 1.
# The scale is unreliable: it reads the true weight plus noise of standard deviation 0.75.
#
# weight | guess ~ Normal(guess, 1),  measurement | weight ~ Normal(weight, 0.75)
#
# As an Ember program, every random choice is a named `sample` site:

# %%
import math

import matplotlib.pyplot as plt
import torch
from torch.distributions import constraints

import ember
import ember.distributions as dist
from ember.infer import SVI, Trace_ELBO
from ember.optim import SGD


def scale(guess):
    weight = ember.sample("weight", dist.Normal(guess, 1.0))
    return ember.sample("measurement", dist.Normal(weight, 0.75))


print([round(float(scale(8.5)), 2) for _ in range(5)])  # five readings the model imagines

# %% [markdown]
# ## Conditioning on data
#
# The scale reads 9.5. `condition` returns a new function, with the same arguments, in which the
# `measurement` site always takes that value. The model is written once; what is observed is
# said separately, and can change:

# %%
conditioned_scale = ember.condition(scale, data={"measurement": 9.5})


def scale_obs(guess):  # the same model with the observation written into the site
    weight = ember.sample("weight", dist.Normal(guess, 1.0))
    return ember.sample("measurement", dist.Normal(weight, 0.75), obs=9.5)


tr = ember.poutine.trace(conditioned_scale).get_trace(8.5)
print({name: round(float(site["value"]), 3) for name, site in tr.nodes.items() if site["type"] == "sample"})

# %% [markdown]
# `do` has the same interface as `condition` but intervenes instead of observing: the site is set
# to a value and nothing is learned from it about its causes.
#
# ## Guides
#
# What we want is the posterior distribution of `weight` given `measurement = 9.5`. For this
# model it is known exactly (both distributions are normal):

# %%
def exact_posterior(guess=8.5, measurement=9.5, sd_w=1.0, sd_m=0.75):
    precision = 1 / sd_w**2 + 1 / sd_m**2
    loc = (guess / sd_w**2 + measurement / sd_m**2) / precision
    return loc, math.sqrt(1 / precision)


loc, sd = exact_posterior()
print(f"exact posterior: Normal({loc:.2f}, {sd:.2f})")

# %% [markdown]
# In general no formula exists. Instead we write a **guide**: a function with the same arguments
# as the model that samples every site the model leaves unobserved, here `weight`. Its `param`
# sites are numbers to be learned: the guide is a family of distributions, and inference picks
# the member closest to the posterior. `constraint=constraints.positive` keeps the standard
# deviation positive (Ember stores an unconstrained value and hands back its positive image).

# %%
def guide(guess):
    a = ember.param("a", torch.tensor(guess))
    b = ember.param("b", torch.tensor(1.0), constraint=constraints.positive)
    return ember.sample("weight", dist.Normal(a, b))


# %% [markdown]
# ## Stochastic variational inference
#
# `SVI` maximises the evidence lower bound (ELBO) by stochastic gradient steps on the guide's
# parameters; `Trace_ELBO` estimates it from one run of the guide and of the model replayed
# against it. We record the parameters as they move.

# %%
ember.clear_param_store()
ember.set_rng_seed(0)
svi = SVI(conditioned_scale, guide, SGD({"lr": 0.001, "momentum": 0.1}), loss=Trace_ELBO())
a_hist, b_hist = [], []
for _ in range(2500):
    svi.step(8.5)
    a_hist.append(ember.param("a").item())
    b_hist.append(ember.param("b").item())
print(f"SVI: a = {a_hist[-1]:.2f} (exact {loc:.2f}), b = {b_hist[-1]:.2f} (exact {sd:.2f})")

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
axes[0].plot(a_hist)
axes[0].axhline(loc, color="k", linestyle=":")
axes[0].set(title="a (posterior mean)", xlabel="step")
axes[1].plot(b_hist)
axes[1].axhline(sd, color="k", linestyle=":")
axes[1].set(title="b (posterior sd)", xlabel="step")
fig.tight_layout()

# %% [markdown]
# The guide's parameters settle near the exact answer (the dotted lines): the guide family
# contains the posterior, so SVI can find it. Samples from the fitted guide can now stand in for
# posterior samples. The next tutorials replace the two numbers by neural networks.
