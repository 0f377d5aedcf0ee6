"""The VAE example (Kingma & Welling) on MNIST: seconds per training epoch, ember vs the same VAE written by hand in PyTorch.

What is timed: one pass over the first ``--subset`` MNIST training images in minibatches of 256
(the last one smaller), each a full SVI step: guide forward, one reparameterized sample of z,
model forward, -ELBO = -(log p(x|z) + log p(z) - log q(z|x)) summed over the batch, backward,
Adam (lr 1e-3) update, loss returned as a Python float. Data loading and shuffling are not
timed (the permutation is drawn before the clock starts; indexing the batch is timed).

Variants, each with its own copy of the same initial weights (z_dim 50, hidden 400) and the same
data order per epoch:

- ``torch``: the ELBO written by hand with ``torch.distributions`` (``validate_args=False``) and
  ``torch.optim.Adam`` over the encoder's and decoder's parameters;
- ``ember``: ``ember.examples.vae.VAE`` with ``SVI(model, guide, ember.optim.Adam, Trace_ELBO())``,
  validation off (``ember.enable_validation(False)``);
- ``ember_checked``: the same with Ember's own checks on and distribution validation off, which
  is what ``ember vae`` runs (as the VAE tutorial does);
- ``pyro``: the same model and guide in pyro-ppl, validation off, when pyro is importable (run
  with the peers' python: ``.peers-venv/bin/python benchmarks/vae_epoch.py``, ember installed
  there with ``pip install -e . --no-deps``).

Epochs alternate between the variants in one process (the order rotates every epoch), and
after a few untimed warm-up steps (the same for all), before each variant's epoch the global torch RNG is seeded from the epoch number, so all
variants draw the same noise: their losses agree to float rounding, which the output shows
(``final_loss``). Prints one JSON line: seconds per epoch per variant (mean and min over the
epochs) and the ratios of the means to ``torch`` (and ember / pyro).
"""

from __future__ import annotations

import argparse
import copy

import _harness
import torch

from ember.examples.vae import VAE

BATCH, LR, Z_DIM, HIDDEN = 256, 1.0e-3, 50, 400


def make_torch(init: VAE):
    from torch.distributions import Bernoulli, Normal

    net = copy.deepcopy(init)
    opt = torch.optim.Adam(net.parameters(), lr=LR)

    def step(x: torch.Tensor) -> float:
        z_loc, z_scale = net.encoder(x)
        q = Normal(z_loc, z_scale, validate_args=False)
        z = q.rsample()
        loc_img = net.decoder(z)
        log_px = Bernoulli(loc_img, validate_args=False).log_prob(x).sum(-1)
        log_pz = Normal(torch.zeros_like(z), torch.ones_like(z), validate_args=False).log_prob(z).sum(-1)
        loss = -(log_px + log_pz - q.log_prob(z).sum(-1)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step, None


def make_ember(init: VAE, checked: bool):
    import ember
    import ember.distributions as dist
    from ember.infer import SVI, Trace_ELBO

    net = copy.deepcopy(init)

    def enter() -> None:
        # The weights live in this variant's modules (the store holds the modules' own tensors) and
        # its Adam state in its own optimizer, so an emptied store simply re-registers them.
        ember.clear_param_store()
        ember.enable_validation(checked)
        dist.enable_validation(False)

    def leave() -> None:
        ember.clear_param_store()

    svi = SVI(net.model, net.guide, ember.optim.Adam({"lr": LR}), loss=Trace_ELBO())
    return svi.step, (enter, leave)


def make_pyro(init: VAE):
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, Trace_ELBO

    class PyroVAE(VAE):
        def model(self, x):
            pyro.module("decoder", self.decoder)
            with pyro.plate("data", x.size(0)):
                z_loc = x.new_zeros(torch.Size((x.size(0), self.z_dim)))
                z_scale = x.new_ones(torch.Size((x.size(0), self.z_dim)))
                z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
                loc_img = self.decoder(z)
                pyro.sample("obs", dist.Bernoulli(loc_img).to_event(1), obs=x.reshape(-1, 784))

        def guide(self, x):
            pyro.module("encoder", self.encoder)
            with pyro.plate("data", x.size(0)):
                z_loc, z_scale = self.encoder(x)
                pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))

    net = PyroVAE(Z_DIM, HIDDEN)
    net.load_state_dict(init.state_dict())
    pyro.enable_validation(False)
    pyro.clear_param_store()
    svi = SVI(net.model, net.guide, pyro.optim.Adam({"lr": LR}), loss=Trace_ELBO())
    return svi.step, (lambda: pyro.enable_validation(False), lambda: None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3, help="epochs per variant (default 3)")
    p.add_argument("--subset", type=int, default=60000, help="training images per epoch (default 60000, all)")
    args = _harness.parse_args(p, "epoch")

    from ember.data import load_mnist
    from ember.examples._runs import epoch_generator

    images = load_mnist().train_images[: args.subset].contiguous()
    torch.manual_seed(args.seed)
    init = VAE(Z_DIM, HIDDEN)
    variants, pyro_version = _harness.make_variants(args, lambda: make_torch(init), lambda checked: make_ember(init, checked),
                                                    lambda: make_pyro(init))

    n = images.shape[0]
    warm = torch.randperm(n, generator=epoch_generator(args.seed, 0))

    def warm_up(step: _harness.Step) -> None:
        for k in range(args.warmup):
            step(images[warm[(k * BATCH) % n :][:BATCH]])

    _harness.warm_up(variants, args.seed, warm_up)

    def epoch(step: _harness.Step, order: torch.Tensor) -> float:
        total = 0.0
        for start in range(0, n, BATCH):
            total += step(images[order[start : start + BATCH]])
        return total

    times, losses = _harness.alternate(variants, args.epochs, args.seed, epoch, data_size=n, unit="epoch",
                                       prepare=lambda e: torch.randperm(n, generator=epoch_generator(args.seed, e)),
                                       show=lambda k, s, loss: f"{k} {s:.2f} s (loss {loss:.3f})")

    mean = _harness.means(times)
    out = {
        **_harness.header("vae_epoch", args.threads, pyro_version, images_per_epoch=n, batch_size=BATCH, epochs=args.epochs),
        "s_per_epoch": {k: round(v, 3) for k, v in mean.items()},
        "s_per_epoch_min": {k: round(min(v), 3) for k, v in times.items()},
        "ms_per_step": {k: round(1000 * v / -(-n // BATCH), 3) for k, v in mean.items()},
        "ratio_to_torch": _harness.ratio_to_torch(mean),
        "final_loss": {k: round(v[-1], 4) for k, v in losses.items()},
    }
    _harness.emit(out, mean)


if __name__ == "__main__":
    main()
