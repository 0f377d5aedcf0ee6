# %% [markdown]
# # Mixtures and enumeration
#
# A mixture model says each data point comes from one of K components, chosen at random. The
# choice is a discrete latent variable per data point. Sampling it (and estimating gradients with
# the score-function estimator) works, but is noisy; with only K values, it can be **summed out
# exactly**. Ember does this by *enumeration*: mark the site, and `TraceEnum_ELBO` evaluates the
# model at every value at once, along a tensor dim of its own, and sums.
#
# The data: 200 points from two well-separated normal distributions.

# %%
import torch
from torch.distributions import constraints

import ember
import ember.distributions as dist
from ember import poutine
from ember.infer import SVI, TraceEnum_ELBO, config_enumerate, infer_discrete
from ember.optim import Adam

ember.set_rng_seed(0)
true_locs = torch.tensor([-3.0, 4.0])
which = torch.bernoulli(torch.full((200,), 0.3)).long()
data = true_locs[which] + torch.randn(200)
print("points from the second component:", int(which.sum()))

# %% [markdown]
# ## The model
#
# `config_enumerate` marks every discrete site of the model for parallel enumeration. The mixture
# weights and the component means are global latents; each point's `assignment` is local, inside
# the `data` plate. `max_plate_nesting=1` tells the ELBO that plates own one dim on the right, so
# enumeration may use the dims to their left.

# %%
K = 2


@config_enumerate
def model(data):
    weights = ember.sample("weights", dist.Dirichlet(torch.ones(K)))
    with ember.plate("components", K):
        locs = ember.sample("locs", dist.Normal(0.0, 10.0))
    with ember.plate("data", len(data)):
        assignment = ember.sample("assignment", dist.Categorical(weights))
        ember.sample("obs", dist.Normal(locs[assignment], 1.0), obs=data)


def guide(data):  # point estimates of the global latents; the assignments are summed out
    w = ember.param("w", torch.ones(K) / K, constraint=constraints.simplex)
    m = ember.param("m", torch.tensor([-1.0, 1.0]))
    ember.sample("weights", dist.Delta(w).to_event(1))
    with ember.plate("components", K):
        ember.sample("locs", dist.Delta(m))


# %% [markdown]
# Under enumeration the `assignment` site's value is not a draw but the whole support, shaped
# to broadcast against the plate (`[2, 1]` against `data`'s `[200]`):

# %%
tr = poutine.trace(poutine.enum(model, first_available_dim=-2)).get_trace(data)
print("assignment value:", tuple(tr.nodes["assignment"]["value"].shape))
print("obs log-density:", tuple(tr.nodes["obs"]["fn"].log_prob(data).shape))

# %% [markdown]
# ## Fitting

# %%
ember.clear_param_store()
svi = SVI(model, guide, Adam({"lr": 0.1}), loss=TraceEnum_ELBO(max_plate_nesting=1))
for step in range(301):
    loss = svi.step(data)
    if step % 100 == 0:
        print(f"step {step}: loss {loss:.1f}")
print("weights", [round(v, 2) for v in ember.param("w").tolist()],
      "means", [round(v, 2) for v in ember.param("m").tolist()])

# %% [markdown]
# ## Which component?
#
# `infer_discrete` runs the model with the discrete sites drawn from their posterior given
# everything else (here with `temperature=0`: the most likely value), after the guide has fixed
# the global latents:

# %%
guide_trace = poutine.trace(guide).get_trace(data)
conditioned = poutine.replay(model, trace=guide_trace)
serving = infer_discrete(conditioned, first_available_dim=-2, temperature=0)
tr = poutine.trace(serving).get_trace(data)
assigned = tr.nodes["assignment"]["value"]
agreement = max((assigned == which).float().mean(), (assigned != which).float().mean())
print(f"points assigned to their true component: {agreement:.1%}")
