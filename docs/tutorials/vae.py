# %% [markdown]
# # The variational autoencoder
#
# The variational autoencoder (Kingma and Welling, 2014) is a latent-variable model of images
# with a neural network inside: each image x has a code z, drawn from a standard normal prior,
# and a **decoder** network turns z into the probability of each pixel being on. Its posterior
# has no closed form, so we fit a guide, and the guide is a network too: an **encoder** that
# maps an image to the mean and scale of its code. One encoder serves every image; this is
# *amortised* inference.
#
# This page trains a deliberately tiny VAE (600 images, one pass) so that the site builds in
# seconds; `ember vae` trains the full one (60,000 images, hidden layer of 400, code of 50).

# %%
import matplotlib.pyplot as plt
import torch
from torch import nn

import ember
import ember.distributions as dist
from ember.data import load_mnist
from ember.infer import SVI, Trace_ELBO
from ember.optim import Adam

mnist = load_mnist()
train = mnist.train_images[:600]  # [600, 784], intensities in [0, 1]
test = mnist.test_images[:200]
print("training images", tuple(train.shape), "test images", tuple(test.shape))

# %% [markdown]
# ## The networks
#
# Plain PyTorch modules; Ember adds nothing to them.

# %%
Z, H = 10, 200


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(Z, H), nn.Linear(H, 784)

    def forward(self, z):  # [B, Z] -> pixel probabilities [B, 784]
        return torch.sigmoid(self.fc2(nn.functional.softplus(self.fc1(z))))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.loc, self.log_scale = nn.Linear(784, H), nn.Linear(H, Z), nn.Linear(H, Z)

    def forward(self, x):  # [B, 784] -> (loc, scale), each [B, Z]
        h = nn.functional.softplus(self.fc1(x))
        return self.loc(h), torch.exp(self.log_scale(h))


decoder, encoder = Decoder(), Encoder()

# %% [markdown]
# ## Model and guide
#
# `ember.module` registers a network's parameters with Ember, so that SVI trains them. The
# `plate` says the images of a minibatch are independent; `to_event(1)` says the Z numbers of a
# code (and the 784 pixels of an image) form one draw.
# The guide samples the same site `"latent"` as the model, from the encoder's distribution.

# %%
def model(x):
    ember.module("decoder", decoder)
    with ember.plate("data", x.shape[0]):
        z = ember.sample("latent", dist.Normal(x.new_zeros(x.shape[0], Z), 1.0).to_event(1))
        ember.sample("obs", dist.Bernoulli(decoder(z)).to_event(1), obs=x)


def guide(x):
    ember.module("encoder", encoder)
    with ember.plate("data", x.shape[0]):
        loc, scale = encoder(x)
        ember.sample("latent", dist.Normal(loc, scale).to_event(1))


# %% [markdown]
# ## Training
#
# The MNIST intensities lie in [0, 1] rather than being exactly 0 or 1, which torch's argument
# checks would refuse for a Bernoulli likelihood, so we switch those checks off (Ember's own
# shape checks stay on). One pass over the 600 images in minibatches of 100:

# %%
ember.distributions.enable_validation(False)
ember.clear_param_store()
ember.set_rng_seed(0)
svi = SVI(model, guide, Adam({"lr": 1e-3}), loss=Trace_ELBO())
for start in range(0, len(train), 100):
    loss = svi.step(train[start:start + 100])
    print(f"images {start:3d}-{start + 99:3d}: loss per image {loss / 100:.1f}")
print(f"test loss per image {svi.evaluate_loss(test) / len(test):.1f}")

# %% [markdown]
# The loss is the negative ELBO per image, in nats; the full model reaches about 110 after ten
# epochs. Even after this short run, the decoder's reconstructions (encode, draw a code, decode)
# show the rough shape of the digits:

# %%
with torch.no_grad():
    x = test[:8]
    loc, scale = encoder(x)
    recon = decoder(loc + scale * torch.randn_like(loc))
fig, axes = plt.subplots(2, 8, figsize=(8, 2.2))
for i in range(8):
    axes[0, i].imshow(x[i].reshape(28, 28).numpy(), cmap="gray")
    axes[1, i].imshow(recon[i].reshape(28, 28).numpy(), cmap="gray")
for ax in axes.flat:
    ax.axis("off")
fig.suptitle("test digits (top) and reconstructions (bottom)")
ember.distributions.enable_validation(True)

# %% [markdown]
# To train the real thing, with checkpoints, a test curve, samples and a 2-D map of the codes:
# `ember vae` (see the [example](../examples/vae.md)).
