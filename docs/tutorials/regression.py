# %% [markdown]
# # Bayesian regression: SVI with an autoguide, and NUTS
#
# A linear regression with unknown coefficients and noise, fitted two ways: variational
# inference with a guide built automatically from the model, and Hamiltonian Monte Carlo (NUTS),
# which draws from the exact posterior. On a model this small the two should agree closely.

# %%
import matplotlib.pyplot as plt
import torch

import ember
import ember.distributions as dist
from ember.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO
from ember.infer.autoguide import AutoNormal
from ember.optim import Adam

ember.set_rng_seed(0)
N = 100
x = torch.rand(N) * 4 - 2
y = 1.0 + 2.0 * x + 0.5 * torch.randn(N)  # intercept 1, slope 2, noise 0.5


def model(x, y=None):
    intercept = ember.sample("intercept", dist.Normal(0.0, 10.0))
    slope = ember.sample("slope", dist.Normal(0.0, 10.0))
    sigma = ember.sample("sigma", dist.HalfNormal(5.0))
    with ember.plate("data", len(x)):
        return ember.sample("obs", dist.Normal(intercept + slope * x, sigma), obs=y)


# %% [markdown]
# ## SVI with `AutoNormal`
#
# `AutoNormal(model)` runs the model once to find its latent sites and gives each an independent
# normal distribution in unconstrained space (`sigma` is positive, so its normal lives on the
# log scale). Nothing else is needed to fit it:

# %%
ember.clear_param_store()
guide = AutoNormal(model)
svi = SVI(model, guide, Adam({"lr": 0.05}), loss=Trace_ELBO())
for _ in range(1000):
    svi.step(x, y)
q = guide.quantiles([0.05, 0.5, 0.95], x, y)
for name in ["intercept", "slope", "sigma"]:
    lo, med, hi = (float(v) for v in q[name])
    print(f"SVI  {name:9s} median {med:6.3f}   90% interval [{lo:6.3f}, {hi:6.3f}]")

# %% [markdown]
# ## NUTS
#
# `MCMC` with the No-U-Turn sampler needs no guide. A short run (300 warm-up steps, 300 draws, 2
# chains) is enough here; `summary()` reports the effective sample size and R-hat per site.

# %%
mcmc = MCMC(NUTS(model), num_samples=300, warmup_steps=300, num_chains=2, disable_progbar=True)
mcmc.run(x, y)
samples = mcmc.get_samples()
for name in ["intercept", "slope", "sigma"]:
    s = samples[name]
    lo, med, hi = (float(v) for v in torch.quantile(s, torch.tensor([0.05, 0.5, 0.95])))
    print(f"NUTS {name:9s} median {med:6.3f}   90% interval [{lo:6.3f}, {hi:6.3f}]")

# %% [markdown]
# The two fits agree to within the width of their intervals. Mean-field guides such as
# `AutoNormal` ignore correlations between the sites (here between intercept and slope), which
# is where they and the exact posterior part first; `AutoMultivariateNormal` models them.
#
# ## Posterior predictive
#
# `Predictive` runs the model once per posterior draw, with the data unobserved, to show what
# data the fitted model expects:

# %%
grid = torch.linspace(-2, 2, 50)
pred = Predictive(model, samples)(grid)["obs"]  # [600, 50]: one simulated data set per draw
lo, hi = torch.quantile(pred, torch.tensor([0.05, 0.95]), dim=0)
plt.figure(figsize=(6, 3.5))
plt.scatter(x, y, s=8, color="k", label="data")
plt.fill_between(grid, lo, hi, alpha=0.3, label="90% posterior predictive")
plt.plot(grid, samples["intercept"].mean() + samples["slope"].mean() * grid, label="posterior mean line")
plt.legend()
plt.tight_layout()
