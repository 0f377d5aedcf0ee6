# %% [markdown]
# # SVI, step by step
#
# Stochastic variational inference (SVI) turns inference into optimisation. Given a model
# p(x, z) and a guide q(z) with parameters, it maximises the evidence lower bound
#
# ELBO = E_q[ log p(x, z) - log q(z) ]  ≤  log p(x),
#
# whose gap is the KL divergence from q to the posterior. This tutorial opens up what `SVI.step`
# does, on a coin whose fairness we infer from ten flips.

# %%
import matplotlib.pyplot as plt
import torch
from torch.distributions import constraints

import ember
import ember.distributions as dist
from ember import poutine
from ember.infer import SVI, Trace_ELBO
from ember.optim import Adam

data = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])


def model(data):
    f = ember.sample("fairness", dist.Beta(10.0, 10.0))
    with ember.plate("data", len(data)):
        ember.sample("obs", dist.Bernoulli(f), obs=data)


def guide(data):
    a = ember.param("a", torch.tensor(15.0), constraint=constraints.positive)
    b = ember.param("b", torch.tensor(15.0), constraint=constraints.positive)
    ember.sample("fairness", dist.Beta(a, b))


# %% [markdown]
# ## One ELBO estimate by hand
#
# Run the guide under `trace` to record its draw; run the model under `replay`, so that its
# `fairness` site takes the guide's value, and `trace` it too. Each trace sums its sites'
# log-densities (the plate makes the ten observations ten terms of one site):

# %%
ember.set_rng_seed(0)
guide_trace = poutine.trace(guide).get_trace(data)
model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(data)
print(model_trace.format_shapes())
elbo = model_trace.log_prob_sum() - guide_trace.log_prob_sum()
print(f"one-sample ELBO estimate: {elbo.item():.3f}")

# %% [markdown]
# That is all a loss needs to be: any function `(model, guide, *args) -> tensor` works with SVI.
# `Trace_ELBO` does the same, plus the score-function terms that non-reparameterisable sites
# need.

# %%
def simple_elbo_loss(model, guide, *args):
    guide_trace = poutine.trace(guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    return -(model_trace.log_prob_sum() - guide_trace.log_prob_sum())


# %% [markdown]
# ## Fitting
#
# `SVI.step` computes the loss, takes gradients with respect to every parameter the traces
# touched, and updates them with the optimizer. The exact posterior is Beta(16, 14) (the prior's
# counts plus six heads and four tails), so we can check the result:

# %%
ember.clear_param_store()
ember.set_rng_seed(0)
svi = SVI(model, guide, Adam({"lr": 0.01}), loss=Trace_ELBO())
losses = [svi.step(data) for _ in range(1000)]
a, b = ember.param("a").item(), ember.param("b").item()
print(f"posterior mean {a / (a + b):.3f} (exact {16 / 30:.3f})")

plt.figure(figsize=(6, 3))
plt.plot(losses, linewidth=0.5)
plt.xlabel("step")
plt.ylabel("loss (-ELBO)")
plt.title("Trace_ELBO, one particle per step")
plt.tight_layout()

# %% [markdown]
# The loss is noisy, because every step uses one sample from the guide; the parameters still
# converge. `Trace_ELBO(num_particles=10, vectorize_particles=True)` averages ten samples per
# step in one vectorized run. The same fit with our hand-written loss:

# %%
ember.clear_param_store()
ember.set_rng_seed(0)
svi = SVI(model, guide, Adam({"lr": 0.01}), loss=simple_elbo_loss)
for _ in range(1000):
    svi.step(data)
a, b = ember.param("a").item(), ember.param("b").item()
print(f"hand-written loss: posterior mean {a / (a + b):.3f}")
