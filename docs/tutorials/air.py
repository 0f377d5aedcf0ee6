# %% [markdown]
# # Attend-Infer-Repeat
#
# Attend-Infer-Repeat (AIR; Eslami et al., 2016) models an image as a **variable number of
# objects**. Its generative story, for a 50x50 canvas:
#
# 1. at step t = 0, 1, 2, decide whether one more object is present: `z_pres_t ~ Bernoulli`
#    (once a step says "no", every later step says "no");
# 2. if it is, choose where: `z_where_t` = (scale, x, y) of a square window on the canvas;
# 3. and what: a code `z_what_t ~ Normal(0, I)`, which a decoder network turns into a small
#    20x20 image, placed on the canvas through the window (a spatial transformer);
# 4. the canvas is the sum of the placed objects, observed with Gaussian noise.
#
# The number of steps taken is the number of objects: a model with random control flow. The
# guide mirrors it with a recurrent network that looks at the image and, step by step, proposes
# where the next object is, reads it through an inverse window, and encodes what it sees.
# `z_pres` is discrete, so its gradient comes from the score-function estimator; to keep that
# estimator's variance down, AIR trains with `TraceGraph_ELBO` (each decision is credited only
# with the costs that come after it) and with **baselines**: small networks, trained alongside,
# that predict those costs and are subtracted from them.
#
# Ember's implementation is `ember.examples.air`, written with `import ember as pyro`. This page
# trains it for a few steps on 200 canvases, enough to see every part run; `ember air` is the
# full-scale run.

# %%
import matplotlib.pyplot as plt
import torch

import ember
from ember.data import make_multi_mnist
from ember.examples.air import AIR, count_accuracy, make_svi, reconstruct, window_box

data = make_multi_mnist(200, seed=0)
images = data.images.reshape(200, -1)  # [200, 2500]
print("canvases", tuple(data.images.shape), "objects per canvas:", torch.bincount(data.counts).tolist())

# %% [markdown]
# ## Samples from the prior
#
# Before any training, the model (with its random decoder) already says what kind of images it
# expects: up to three blobs, each in its own window.

# %%
ember.clear_param_store()
ember.set_rng_seed(0)
air = AIR(batch_size=32)
with torch.no_grad():
    prior_images = air.prior(6)
fig, axes = plt.subplots(1, 6, figsize=(9, 1.8))
for ax, im in zip(axes, prior_images):
    ax.imshow(im.numpy(), cmap="gray")
    ax.axis("off")
fig.suptitle("six draws from the untrained prior")

# %% [markdown]
# ## Training
#
# `make_svi` is SVI with `TraceGraph_ELBO` and Adam, with a learning rate of 1e-4 for the model
# and guide networks and 0.1 for the baseline networks (a per-module setting: the optimizer's
# arguments are a function of each parameter's module name). The `data` plate subsamples a
# minibatch of 32 canvases each step.

# %%
ember.set_rng_seed(0)
svi = make_svi(air)
for step in range(1, 11):
    loss = svi.step(images)
    if step % 5 == 0:
        print(f"step {step}: loss per canvas {loss / len(images):.1f}")
accuracy, confusion = count_accuracy(air, images, data.counts)
print(f"count accuracy after 10 steps: {accuracy:.2f}; confusion (true rows 0-2, inferred columns 0-3): {confusion}")

# %% [markdown]
# Ten steps teach it little: the full run needs thousands of steps before the counts become
# right (see the [example](../examples/air.md) for the curve). What the tutorial shows is how a
# trained model is read: run the guide on a canvas, then the prior replayed against the guide's
# choices, and draw each used step's window.

# %%
recons, z_where, z_pres = reconstruct(air, images[:5])
fig, axes = plt.subplots(2, 5, figsize=(8, 3.4))
for i in range(5):
    axes[0, i].imshow(data.images[i].numpy(), cmap="gray")
    axes[1, i].imshow(recons[i].numpy(), cmap="gray")
    for t in range(z_where.shape[1]):
        if z_pres[i, t] > 0:
            left, top, side = window_box(z_where[i, t])
            axes[1, i].add_patch(plt.Rectangle((left - 0.5, top - 0.5), side, side, fill=False, color="red"))
    axes[1, i].set_title(f"{int(z_pres[i].sum())} found", fontsize=8)
for ax in axes.flat:
    ax.axis("off")
fig.suptitle("canvases (top); reconstructions and windows after 10 steps (bottom)")
