"""The variational autoencoder of Kingma & Welling on MNIST, trained with SVI (``ember vae``).

    z ~ Normal(0, I)                         (z_dim = 50)
    x | z ~ Bernoulli(decoder(z))            (784 pixel intensities in [0, 1], .to_event(1))
    q(z | x) = Normal(encoder(x))            (amortized guide)

Encoder and decoder are the tutorial's: one softplus hidden layer of 400 units, a sigmoid decoder
output, ``exp`` for the guide's scale. Adam (lr 1e-3), batches of 256, Trace_ELBO. The 2017 workshop
version's smaller setting is ``--z-dim 20 --hidden-dim 100 --batch-size 250``. As in the tutorial, the
distributions' validation is off, because the Bernoulli scores intensities in [0, 1], not
only 0/1 (the ELBO is then the usual "binarized cross-entropy" objective).

Per epoch it prints and appends to ``metrics.jsonl`` the average training loss per datapoint
(-ELBO, as the tutorial's "average training loss") and, every ``--test-frequency`` epochs (the
tutorial's first epoch, then every 5th; and always the last), the test loss per datapoint. It
checkpoints every epoch (``--resume`` continues bit-for-bit: each epoch's shuffle derives from
the seed and the epoch number) and, at the end, draws PNG figures: train/test ELBO, test
images beside reconstructions, samples from the prior and a 2-D embedding (t-SNE with
scikit-learn if installed, else PCA) of the test set's latent means, coloured by digit.

``torchrun --nproc_per_node=N -m ember vae --distributed`` trains the same model data-parallel on N
processes (ember.infer.distributed): ``--batch-size`` is the global batch, each process takes its
part of every batch, the summed gradient is the single-process one; rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

import ember
import ember.distributions as dist
from ember.examples._main import run_main
from ember.examples._runs import (
    CHECKPOINT_NAME,
    MetricsLog,
    RunSetup,
    UsageError,
    check_resumed_data,
    data_identity,
    data_source,
    epoch_generator,
    fork_rng,
    load_mnist_arg,
    merge_settings,
    resolve_device,
    resolve_run,
    restore,
    rng_state,
    save_checkpoint,
    set_rng_state,
    writing,
)
from ember.infer import SVI, Trace_ELBO

__all__ = [
    "Encoder",
    "Decoder",
    "VAE",
    "make_svi",
    "train_epoch",
    "evaluate",
    "embed_2d",
    "add_arguments",
    "main",
    "DEFAULT_EPOCHS",
]

CHECKPOINT_KIND = "ember.examples.vae"
DEFAULT_EPOCHS = 10
TSNE_POINTS = 3000  # default size of the t-SNE embedding (t-SNE of all 10,000 test images takes over a minute)
NUM_PIXELS = 784
FIGURES = ("elbo.png", "reconstructions.png", "samples.png", "embedding.png")

# Settings that define the trained model and its trajectory: fixed by the checkpoint on --resume.
_TRAINING_DEFAULTS: dict[str, Any] = {"z_dim": 50, "hidden_dim": 400, "batch_size": 256, "lr": 1.0e-3, "seed": 0, "train_subset": None}
# Settings of the evaluation and the figures only: on --resume, the checkpoint's unless given again
# (so a resumed run draws the same figures as an uninterrupted one without repeating the flags).
_REPORT_DEFAULTS: dict[str, Any] = {"test_frequency": 5, "embedding": "auto", "embedding_points": None}
_TSNE_NEEDS_SKLEARN = "--embedding tsne needs scikit-learn (pip install scikit-learn); use --embedding pca"


# ---- the model, as in the VAE tutorial (Kingma & Welling) ----------------------------------------


class Decoder(nn.Module):
    """``z [B, z_dim] -> loc_img [B, 784]``: Bernoulli means of the pixels."""

    def __init__(self, z_dim: int, hidden_dim: int) -> None:
        super().__init__()
        # setup the two linear transformations used
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, NUM_PIXELS)
        # setup the non-linearities
        self.softplus = nn.Softplus()
        self.sigmoid = nn.Sigmoid()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        hidden = self.softplus(self.fc1(z))
        return self.sigmoid(self.fc21(hidden))


class Encoder(nn.Module):
    """``x [B, 784] (or [B, 1, 28, 28]) -> (z_loc, z_scale)``, each ``[B, z_dim]``."""

    def __init__(self, z_dim: int, hidden_dim: int) -> None:
        super().__init__()
        # setup the three linear transformations used
        self.fc1 = nn.Linear(NUM_PIXELS, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        # setup the non-linearities
        self.softplus = nn.Softplus()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.reshape(-1, NUM_PIXELS)
        hidden = self.softplus(self.fc1(x))
        z_loc = self.fc21(hidden)
        z_scale = torch.exp(self.fc22(hidden))
        return z_loc, z_scale


class VAE(nn.Module):
    """The tutorial's VAE: ``model`` (decoder, registered as ``"decoder"``) and ``guide`` (encoder, ``"encoder"``).

    Both take a minibatch ``x`` of shape ``[B, 784]`` (intensities in [0, 1]).
    """

    def __init__(self, z_dim: int = 50, hidden_dim: int = 400, use_cuda: bool = False) -> None:
        super().__init__()
        # create the encoder and decoder networks
        self.encoder = Encoder(z_dim, hidden_dim)
        self.decoder = Decoder(z_dim, hidden_dim)
        if use_cuda:
            self.cuda()
        self.use_cuda = use_cuda
        self.z_dim = z_dim

    # define the model p(x|z)p(z)
    def model(self, x: torch.Tensor) -> None:
        # register PyTorch module `decoder` with Ember
        ember.module("decoder", self.decoder)
        with ember.plate("data", x.size(0)):
            # setup hyperparameters for prior p(z)
            z_loc = x.new_zeros(torch.Size((x.size(0), self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.size(0), self.z_dim)))
            # sample from prior (value will be sampled by guide when computing the ELBO)
            z = ember.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            # decode the latent code z
            loc_img = self.decoder(z)
            # score against actual images
            ember.sample("obs", dist.Bernoulli(loc_img).to_event(1), obs=x.reshape(-1, NUM_PIXELS))

    # define the guide (i.e. variational distribution) q(z|x)
    def guide(self, x: torch.Tensor) -> None:
        # register PyTorch module `encoder` with Ember
        ember.module("encoder", self.encoder)
        with ember.plate("data", x.size(0)):
            # use the encoder to get the parameters used to define q(z|x)
            z_loc, z_scale = self.encoder(x)
            # sample the latent code z
            ember.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))

    # ---- helpers (no gradients) ------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent means ``[B, z_dim]`` of the guide for images ``x [B, 784]``."""
        z_loc, _ = self.encoder(x)
        return z_loc

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Encode ``x [B, 784]``, draw ``z ~ q(z|x)``, return the decoder's means ``[B, 784]`` (no pixel sampling)."""
        z_loc, z_scale = self.encoder(x)
        eps = torch.randn(z_loc.shape, generator=generator, dtype=z_loc.dtype).to(z_loc.device)
        return self.decoder(z_loc + z_scale * eps)

    reconstruct_img = reconstruct  # the tutorial's name

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decoder means ``[n, 784]`` of ``n`` codes drawn from the prior ``Normal(0, I)``."""
        p = next(self.decoder.parameters())
        z = torch.randn((n, self.z_dim), generator=generator, dtype=p.dtype).to(p.device)
        return self.decoder(z)


# ---- training and evaluation ---------------------------------------------------------------------


def make_svi(vae: VAE, lr: float = 1.0e-3) -> SVI:
    """SVI with the tutorial's setup: ``Adam({"lr": lr})`` and ``Trace_ELBO()``."""
    return SVI(vae.model, vae.guide, ember.optim.Adam({"lr": lr}), loss=Trace_ELBO())


def train_epoch(svi: SVI, images: torch.Tensor, batch_size: int, generator: torch.Generator | None = None,
                bar: Any = None, on_step: Callable[[int, int], None] | None = None,
                shard: Callable[[torch.Tensor], torch.Tensor] | None = None, min_batch: int = 1) -> tuple[float, list[float]]:
    """One pass over ``images [N, 784]`` in an order drawn from ``generator`` (a CPU generator).

    Returns the average loss per datapoint (-ELBO estimate, as the tutorial's "average training
    loss") and the same average over each quarter of the epoch's batches (how it moved within
    the epoch). ``bar``, a tqdm bar, is advanced per batch and shows the running loss.
    ``on_step(step, steps)``, if given, is called after each gradient step (``step`` from 1).
    Data-parallel training (``svi`` a ``DataParallelSVI``, whose ``step`` returns the global
    loss): ``shard(indices)`` picks this process's part of each global batch's indices, and a last
    batch smaller than ``min_batch`` (the number of processes: each needs a datum) joins the one before.
    """
    n = images.shape[0]
    order = torch.randperm(n, generator=generator).to(images.device)
    starts = _batch_starts(n, batch_size, min_batch)
    steps = len(starts)
    sums, sizes = [], []
    total = 0.0
    for k, start in enumerate(starts):
        idx = order[start : starts[k + 1] if k + 1 < steps else n]
        x = images[idx if shard is None else shard(idx)]
        loss = svi.step(x)
        sums.append(loss)
        sizes.append(idx.shape[0])
        total += loss
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"loss={total / sum(sizes):.2f}", refresh=False)
        if on_step is not None:
            on_step(len(sums), steps)
    chunks = [c for c in np.array_split(np.arange(len(sums)), min(4, len(sums))) if len(c)]
    quarters = [float(sum(sums[i] for i in c) / sum(sizes[i] for i in c)) for c in chunks]
    return total / n, quarters


def _batch_starts(n: int, batch_size: int, min_batch: int = 1) -> list[int]:
    """Where the minibatches of an epoch of ``n`` items start; a last batch smaller than ``min_batch`` joins the one before."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] < min_batch:
        starts.pop()
    return starts


def evaluate(svi: SVI, images: torch.Tensor, batch_size: int) -> float:
    """The loss per datapoint (-ELBO estimate) over ``images [N, 784]``, without gradient steps."""
    return _loss_sum(svi, images, batch_size) / images.shape[0]


def _loss_sum(svi: Any, images: torch.Tensor, batch_size: int) -> float:
    total = 0.0
    for start in range(0, images.shape[0], batch_size):
        total += svi.evaluate_loss(images[start : start + batch_size])
    return total


def embed_2d(z: torch.Tensor, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D embedding of latent codes ``z [N, D]``: t-SNE (scikit-learn) or PCA (``torch.pca_lowrank``).

    ``method`` is ``"tsne"``, ``"pca"`` or ``"auto"`` (t-SNE if scikit-learn is importable).
    Returns ``(coords [N, 2], "t-SNE" or "PCA")``.
    """
    z = z.detach().cpu().double()
    if method in ("auto", "tsne"):
        try:
            from sklearn.manifold import TSNE
        except ImportError:
            if method == "tsne":
                raise UsageError(_TSNE_NEEDS_SKLEARN) from None
        else:
            perplexity = float(min(30.0, max(2.0, (z.shape[0] - 1) / 3.0)))
            tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
            return tsne.fit_transform(z.numpy()), "t-SNE"
    zc = z - z.mean(0, keepdim=True)
    if min(zc.shape) >= 2:
        _, _, v = torch.linalg.svd(zc, full_matrices=False)
        coords = zc @ v[:2].T
    else:
        coords = torch.cat([zc, torch.zeros_like(zc)], 1)[:, :2]
    return coords.numpy(), "PCA"


# ---- figures -----------------------------------------------------------------------------------


def _have_sklearn() -> bool:
    import importlib.util

    return importlib.util.find_spec("sklearn") is not None


def _save(fig: Any, path: Path) -> str:
    """Lay out, write as PNG and close a matplotlib figure; return its path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def _grid(images: torch.Tensor, rows: int, cols: int, pad: int = 1) -> np.ndarray:
    """Tile ``images [rows*cols, 784]`` into one ``[rows*29+1, cols*29+1]`` array (white gutters)."""
    images = images.detach().cpu().float().reshape(-1, 28, 28)
    out = torch.ones(rows * (28 + pad) + pad, cols * (28 + pad) + pad)
    for k in range(min(images.shape[0], rows * cols)):
        r, c = divmod(k, cols)
        out[pad + r * (28 + pad) : pad + r * (28 + pad) + 28, pad + c * (28 + pad) : pad + c * (28 + pad) + 28] = images[k]
    return out.numpy()


def _pick_test_examples(labels: torch.Tensor, per_digit: int = 2) -> torch.Tensor:
    """Indices of the first ``per_digit`` test images of each digit (fewer if some digit is rarer)."""
    idx = []
    for k in range(per_digit):
        for d in range(10):
            hits = (labels == d).nonzero().flatten()
            if hits.numel() > k:
                idx.append(int(hits[k]))
    return torch.tensor(idx if idx else list(range(min(20, labels.numel()))), dtype=torch.long)


def make_figures(vae: VAE, run_dir: Path, train_hist: list[tuple[int, float]], test_hist: list[tuple[int, float]],
                 test_images: torch.Tensor, test_labels: torch.Tensor, embedding: str = "auto", embedding_points: int | None = None,
                 seed: int = 0) -> dict[str, str]:
    """Write ``elbo.png``, ``reconstructions.png``, ``samples.png`` and ``embedding.png`` into ``run_dir``.

    Returns ``{figure: path}``; empty (with a note printed) if matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (no figures: install matplotlib, e.g. pip install 'ember-ppl[plots]')")
        return {}
    g = torch.Generator().manual_seed(seed)
    paths: dict[str, str] = {}
    vae.eval()

    # 1. train / test ELBO per datapoint
    fig, ax = plt.subplots(figsize=(6, 4))
    if train_hist:
        e, v = zip(*train_hist)
        ax.plot(e, [-x for x in v], "o-", label="train (average over the epoch)")
    if test_hist:
        e, v = zip(*test_hist)
        ax.plot(e, [-x for x in v], "s-", label="test (after the epoch)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO per datapoint (nats)")
    ax.set_title("VAE on MNIST")
    ax.legend()
    ax.grid(alpha=0.3)
    paths["elbo"] = _save(fig, run_dir / "elbo.png")

    # 2. test images beside their reconstructions (columns: image, reconstruction)
    idx = _pick_test_examples(test_labels.cpu())
    x = test_images[idx.to(test_images.device)]
    rec = vae.reconstruct(x, generator=g)
    pairs = torch.stack([x.cpu(), rec.cpu()], 1).reshape(-1, NUM_PIXELS)  # image, reco, image, reco, ...
    cols = 8  # four (image, reconstruction) pairs per row
    rows = math.ceil(pairs.shape[0] / cols)
    fig, ax = plt.subplots(figsize=(cols * 1.2, rows * 1.2))
    ax.imshow(_grid(pairs, rows, cols), cmap="gray_r", vmin=0, vmax=1)
    ax.set_title("test image | reconstruction", fontsize=9)
    ax.axis("off")
    paths["reconstructions"] = _save(fig, run_dir / "reconstructions.png")

    # 3. samples from the prior (decoder means)
    s = vae.sample(64, generator=g)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(_grid(s, 8, 8), cmap="gray_r", vmin=0, vmax=1)
    ax.set_title("decoder means of z ~ N(0, I)", fontsize=9)
    ax.axis("off")
    paths["samples"] = _save(fig, run_dir / "samples.png")

    # 4. 2-D embedding of the test set's latent means
    if embedding_points is None:
        embedding_points = test_images.shape[0] if embedding == "pca" or (embedding == "auto" and not _have_sklearn()) else TSNE_POINTS
    m = min(embedding_points, test_images.shape[0])
    z = torch.cat([vae.encode(test_images[i : i + 1000]).cpu() for i in range(0, m, 1000)])[:m]
    coords, how = embed_2d(z, embedding, seed)
    lab = test_labels[:m].cpu().numpy()
    fig, ax = plt.subplots(figsize=(7, 6))
    sc = ax.scatter(coords[:, 0], coords[:, 1], c=lab, cmap="tab10", vmin=-0.5, vmax=9.5, s=3, alpha=0.7, linewidths=0)
    cb = fig.colorbar(sc, ax=ax, ticks=range(10))
    cb.set_label("digit")
    ax.set_title(f"{how} of the latent means of {m} test images")
    ax.set_xticks([])
    ax.set_yticks([])
    paths["embedding"] = _save(fig, run_dir / "embedding.png")
    vae.train()
    return paths


# ---- command line ------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = _TRAINING_DEFAULTS
    p.add_argument("--epochs", type=int, default=None,
                   help=f"total number of epochs (default {DEFAULT_EPOCHS}: about a minute on one CPU thread, ~5 s per epoch "
                        "plus ~7 s of start-up and figures; the tutorial trains 100). With --resume: the new total")
    p.add_argument("--batch-size", type=int, default=None, help=f"minibatch size (default {d['batch_size']}, 2017 workshop version: 250)")
    p.add_argument("--lr", type=float, default=None, help=f"Adam learning rate (default {d['lr']})")
    p.add_argument("--z-dim", type=int, default=None, help=f"latent dimension (default {d['z_dim']}, 2017 workshop version: 20)")
    p.add_argument("--hidden-dim", type=int, default=None, help=f"hidden units of encoder and decoder (default {d['hidden_dim']}, 2017 workshop version: 100)")
    p.add_argument("--seed", type=int, default=None, help="random seed: initial weights, data order, ELBO samples (default 0)")
    p.add_argument("--train-subset", type=int, default=None, metavar="N", help="train on the first N training images only (smoke tests)")
    p.add_argument("--test-frequency", type=int, default=None,
                   help="evaluate the test loss after epoch 1 and every this many epochs (1, 6, 11, ... as in the tutorial; "
                        "default 5, with --resume the resumed run's), and always after the last")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; 0: torch's choice, one per core (default 1). Measured on 2 cores: 5 s per epoch "
                        "with 1 thread, 3 s with 2 on an idle machine, but 30-110 s with 2 while another job was busy")
    p.add_argument("--data-dir", default=None,
                   help="directory with the MNIST IDX files or mnist.pkl.gz (default: Ember's cache, downloading if needed)")
    p.add_argument("--out", default=None, help="run directory (default runs/vae-<time>)")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN_DIR",
                   help="continue from the checkpoint in RUN_DIR (default: --out, else the latest runs/vae-*). The training "
                        "images and the data source must be those the checkpoint recorded (see --allow-data-change)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --out that already holds one, deleting its checkpoint, metrics and figures "
                        "(without --resume or --overwrite such an --out is refused)")
    p.add_argument("--allow-data-change", action="store_true",
                   help="with --resume: continue although the training images or the data source differ from the checkpoint's")
    p.add_argument("--embedding", choices=["auto", "tsne", "pca"], default=None,
                   help="2-D embedding of the latent means: t-SNE (needs scikit-learn), PCA, or auto (t-SNE if installed; "
                        "the default, with --resume the resumed run's)")
    p.add_argument("--embedding-points", type=int, default=None,
                   help=f"test images in the embedding plot (default: all 10000 for PCA, the first {TSNE_POINTS} for t-SNE, "
                        "which took 13 s for 2000 and 72 s for 10000 points on one core; with --resume the resumed run's)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--no-validation", action="store_true",
                   help="also turn off Ember's own checks (shapes, finite gradients), which the tutorial keeps on: ~15%% faster steps "
                        "(benchmarks/vae_epoch.py: 1.17x vs 1.02x the time of a hand-written torch step)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--render-model", nargs="?", const="vae_model.png", default=None, metavar="FILE",
                   help="draw the model's graph (ember.render_model) to FILE (default vae_model.png) and exit; needs graphviz")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel training on the processes torchrun starts (`torchrun --nproc_per_node=N -m ember vae "
                        "--distributed`; gloo on CPU, NCCL with --device cuda): --batch-size is the global batch, split "
                        "across the processes; rank 0 prints, checkpoints and plots")
    p.add_argument("--dist-timeout", type=float, default=None, metavar="SECONDS",
                   help="with --distributed: how long a process waits for the others before failing "
                        "(default 300; a process that dies is noticed at once)")


def _check_positive(args: argparse.Namespace) -> None:
    if args.threads is not None and args.threads < 0:
        raise UsageError(f"--threads must be >= 0, got {args.threads}")
    for name in ("epochs", "batch_size", "z_dim", "hidden_dim", "train_subset", "test_frequency", "embedding_points"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
    if args.lr is not None and not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"--lr must be a positive number, got {args.lr}")


def _load_data(data_dir: str | None, device: torch.device, train_subset: int | None):
    mnist = load_mnist_arg(data_dir)
    train_x, train_y = mnist.train_images, mnist.train_labels
    if train_subset is not None:
        train_x, train_y = train_x[:train_subset], train_y[:train_subset]
    return mnist, train_x.to(device), mnist.test_images.to(device), mnist.test_labels


def _training_settings(args: argparse.Namespace, ckpt: dict[str, Any] | None) -> dict[str, Any]:
    """The model's and trajectory's settings (fixed by a resumed checkpoint), then the report's and the epochs (given, else the checkpoint's)."""
    return merge_settings(args, ckpt["args"] if ckpt is not None else None, _TRAINING_DEFAULTS,
                          {**_REPORT_DEFAULTS, "epochs": DEFAULT_EPOCHS})


TEST_SLEEP_ENV = "EMBER_TEST_SLEEP_PER_STEP"
# flags that may differ between the ranks of a data-parallel run (the data directory may be a per-machine
# path: the data themselves are compared); every other flag must be the same on every rank
_PER_RANK_ARGS = frozenset({"no_progress", "data_dir", "threads"})


def _test_step_hook(epoch: int) -> Callable[[int, int], None] | None:
    """Test hook, off unless the environment sets ``EMBER_TEST_SLEEP_PER_STEP=SECONDS``.

    Then, after every training step, the process writes ``ember-test: epoch E step S of N`` to
    stderr and sleeps SECONDS: tests/examples/test_vae.py uses it to SIGKILL a run at a known
    step in the middle of an epoch. It changes nothing in what is computed.
    """
    value = os.environ.get(TEST_SLEEP_ENV)
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise UsageError(f"{TEST_SLEEP_ENV}={value!r}: expected a number of seconds") from None

    def hook(step: int, steps: int) -> None:
        print(f"ember-test: epoch {epoch} step {step} of {steps}", file=sys.stderr, flush=True)
        time.sleep(seconds)

    return hook


def _should_test(epoch: int, freq: int, last: int) -> bool:
    """After 1-based ``epoch``: the tutorial tests at 0-based epochs 0, freq, 2*freq, ...; we also test after the last."""
    return (epoch - 1) % freq == 0 or epoch == last


def main(args: argparse.Namespace) -> int:
    """Train (or resume), evaluate, checkpoint and plot; the ``ember vae`` command. Returns the exit status."""
    if getattr(args, "render_model", None) is not None:
        from ember.infer.inspect import render_model

        d = _TRAINING_DEFAULTS
        vae = VAE(z_dim=args.z_dim or d["z_dim"], hidden_dim=args.hidden_dim or d["hidden_dim"])
        render_model(vae.model, (torch.zeros(args.batch_size or d["batch_size"], NUM_PIXELS),), filename=args.render_model, render_distributions=True)
        print(args.render_model)
        return 0
    if getattr(args, "distributed", False):
        return _main_distributed(args)
    _check_positive(args)
    device = resolve_device(args.device)
    run_dir, ckpt_path, ckpt = resolve_run(args.out, args.resume, "vae", CHECKPOINT_KIND,
                                           required=("epoch", "params", "optim", "rng", "args", "history"),
                                           types={"args": dict, "history": dict, "epoch": int}, overwrite=args.overwrite)
    cfg = _training_settings(args, ckpt)
    if cfg["embedding"] == "tsne" and not args.no_plots and not _have_sklearn():
        raise UsageError(_TSNE_NEEDS_SKLEARN)  # now, not after the training
    # Ember's own checks on, as in the tutorial (pyro.enable_validation(True)); the distributions'
    # off: the Bernoulli scores intensities in [0, 1], not only 0/1
    with RunSetup(args.threads, validation=(not args.no_validation, False)) as setup:
        mnist, train_x, test_x, test_y = _load_data(args.data_dir, device, cfg["train_subset"])
        data = data_identity(train_x, data_source(args.data_dir))
        if ckpt is not None:
            check_resumed_data(ckpt_path, ckpt, data, args.allow_data_change)
        run_dir = setup.started(run_dir, "vae", f"{train_x.shape[0]} training and {test_x.shape[0]} test images ({mnist.source})",
                                resuming=ckpt is not None, overwrite=args.overwrite, outputs=FIGURES)
        return _run(args, cfg, device, run_dir, ckpt_path, ckpt, train_x, test_x, test_y, data=data)


def _main_distributed(args: argparse.Namespace) -> int:
    """``ember vae --distributed`` on one of the processes torchrun started (see :func:`_run`)."""
    from ember.infer import distributed as ed

    _check_positive(args)
    if args.dist_timeout is not None and not args.dist_timeout > 0:
        raise UsageError(f"--dist-timeout must be a positive number of seconds, got {args.dist_timeout}")
    if not ed.is_available():
        raise UsageError("--distributed: this torch build has no torch.distributed with the gloo backend")
    device = resolve_device(args.device)
    try:
        info = ed.init_from_env(timeout=args.dist_timeout or ed.DEFAULT_TIMEOUT, device=device)
    except ed.DistributedError as e:
        raise UsageError(f"--distributed: {e}") from None
    tag = "" if info.is_main else f"rank {info.rank}: "
    try:
        with contextlib.ExitStack() as stack:
            if not info.is_main:  # rank 0 prints, checkpoints and plots
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
                args = argparse.Namespace(**{**vars(args), "no_progress": True})

            def resolve() -> tuple[Any, ...]:
                run = resolve_run(args.out, args.resume, "vae", CHECKPOINT_KIND,
                                  required=("epoch", "params", "optim", "rng", "args", "history"),
                                  types={"args": dict, "history": dict, "epoch": int}, overwrite=args.overwrite)
                cfg = _training_settings(args, run.ckpt)
                if cfg["embedding"] == "tsne" and not args.no_plots and not _have_sklearn():
                    raise UsageError(_TSNE_NEEDS_SKLEARN)
                return (*run, cfg)

            run_dir, ckpt_path, ckpt, cfg = ed.broadcast_from_main(resolve, "reading the settings and the checkpoint")
            with RunSetup(args.threads, validation=(not args.no_validation, False)) as setup:
                mnist, train_x, test_x, test_y = _load_data(args.data_dir, info.device, cfg["train_subset"])
                # every rank the same command line and the same data, or every rank stops now, saying which differs
                ed.check_agreement({k: v for k, v in sorted(vars(args).items())
                                    if k not in _PER_RANK_ARGS and isinstance(v, (str, int, float, bool, type(None), list))},
                                   {"training images": train_x, "test images": test_x, "test labels": test_y},
                                   notes={"--data-dir": args.data_dir})
                if min(cfg["batch_size"], train_x.shape[0], test_x.shape[0]) < info.world_size:
                    raise UsageError(f"--distributed with {info.world_size} processes needs a batch size and data sets of at "
                                     f"least {info.world_size} images (one per process)")
                data = data_identity(train_x, data_source(args.data_dir))
                if ckpt is not None:  # every rank has the checkpoint: all refuse alike
                    check_resumed_data(ckpt_path, ckpt, data, args.allow_data_change)
                # rank 0 claims the run directory; if it cannot (locked, not writable, a run there), every rank stops
                run_dir = ed.broadcast_from_main(
                    lambda: setup.started(run_dir, "vae", f"{train_x.shape[0]} training and {test_x.shape[0]} test images "
                                                          f"({mnist.source}); {info.world_size} processes ({info.backend})",
                                          resuming=ckpt is not None, overwrite=args.overwrite, outputs=FIGURES),
                    "claiming the run directory")
                return _run(args, cfg, info.device, run_dir, ckpt_path, ckpt, train_x, test_x, test_y, ddp=info, data=data)
    except ed.DistributedError as e:
        print(f"ember vae: error: {tag}{e} (the last checkpoint, if any, is intact: restart with --resume)", file=sys.stderr)
        return 1
    finally:
        ed.destroy()


def _seed_ranks(ddp: Any, cfg: dict[str, Any], ckpt: dict[str, Any] | None, start: int) -> None:
    """Each rank's random streams (data-parallel runs): fresh, rank 0 keeps the run seed and rank r > 0 seeds from
    (seed, r); resumed, rank r continues its saved stream if the checkpoint has one (same or larger world size
    before), else it seeds from (seed, r, epoch)."""
    from ember.infer import distributed as ed

    if ckpt is None:
        if ddp.rank > 0:
            ember.set_rng_seed(ed.rank_seed(cfg["seed"], ddp.rank))
        return
    saved = ckpt.get("rng_ranks") or [ckpt["rng"]]
    if ddp.rank < len(saved):
        set_rng_state(saved[ddp.rank])
    else:
        ember.set_rng_seed(int(np.random.SeedSequence([cfg["seed"], ddp.rank, start]).generate_state(1, dtype=np.uint64)[0] % (2**63)))
    if len(saved) != ddp.world_size:
        print(f"the checkpoint was written by {len(saved)} process(es), this run has {ddp.world_size}: parameters, optimizer "
              f"state and data order carry over; ranks >= {len(saved)} start new random streams"
              + (f" and the streams of ranks >= {ddp.world_size} are dropped" if len(saved) > ddp.world_size else ""))


def _read_history(ckpt: dict[str, Any]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """The (epoch, loss) histories, train and test, of a checkpoint."""
    return tuple([(int(e), float(v)) for e, v in ckpt["history"][split]] for split in ("train", "test"))


def _run(args: argparse.Namespace, cfg: dict[str, Any], device: torch.device, run_dir: Path | None, ckpt_path: Path | None,
         ckpt: dict[str, Any] | None, train_x: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, ddp: Any = None,
         data: dict[str, Any] | None = None) -> int:
    """Train, evaluate, checkpoint, plot. ``ddp``: the ``DistInfo`` of a data-parallel run (each rank trains on its
    part of every global batch; rank 0 alone writes), else None. ``data``: the training data's
    :func:`~ember.examples._runs.data_identity`, recorded in the checkpoint."""
    ember.set_rng_seed(cfg["seed"])
    ember.clear_param_store()
    vae = VAE(cfg["z_dim"], cfg["hidden_dim"]).to(device)
    ember.module("encoder", vae.encoder)
    ember.module("decoder", vae.decoder)
    main_rank = ddp is None or ddp.is_main
    if ddp is None:
        svi = make_svi(vae, cfg["lr"])
    else:
        from ember.infer.distributed import DataParallelSVI, all_reduce_sum, gather_to_main, shard

        svi = DataParallelSVI(vae.model, vae.guide, ember.optim.Adam({"lr": cfg["lr"]}), loss=Trace_ELBO())
    metrics = MetricsLog(run_dir) if main_rank else None
    start = 0
    train_hist: list[tuple[int, float]] = []
    test_hist: list[tuple[int, float]] = []
    if ckpt is not None:
        start, (train_hist, test_hist) = restore(ckpt_path, ckpt, svi.optim, metrics, "epoch", _read_history)
    if ddp is not None:
        _seed_ranks(ddp, cfg, ckpt, start)
        svi.setup(shard(train_x[: cfg["batch_size"]]))  # parameters from rank 0 (leaves the random streams alone)
    epochs = cfg["epochs"]
    n_batches = len(_batch_starts(train_x.shape[0], cfg["batch_size"], 1 if ddp is None else ddp.world_size))
    if start >= epochs:
        print(f"already trained for {start} epochs (pass --epochs N with N > {start} to train more); drawing the figures")
    else:
        print(f"VAE z_dim={cfg['z_dim']} hidden_dim={cfg['hidden_dim']}, Adam lr={cfg['lr']}, batch {cfg['batch_size']} "
              f"({n_batches} steps per epoch), epochs {start + 1}..{epochs}, device {device}, {torch.get_num_threads()} threads")

    from tqdm import tqdm

    for epoch in range(start + 1, epochs + 1):
        bar = tqdm(total=n_batches, desc=f"epoch {epoch}/{epochs}", unit="step", leave=False, dynamic_ncols=True,
                   mininterval=0.5, disable=args.no_progress)
        t = time.perf_counter()
        try:
            train_loss, quarters = train_epoch(svi, train_x, cfg["batch_size"], epoch_generator(cfg["seed"], epoch), bar,
                                               on_step=_test_step_hook(epoch), shard=None if ddp is None else shard,
                                               min_batch=1 if ddp is None else ddp.world_size)
        finally:
            bar.close()
        seconds = time.perf_counter() - t
        train_hist.append((epoch, train_loss))
        record: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss, "train_loss_by_quarter": quarters,
                                  "train_seconds": round(seconds, 3), "train_images": int(train_x.shape[0])}
        line = f"[epoch {epoch:03d}]  average training loss: {train_loss:.4f}  ({seconds:.1f} s)"
        if _should_test(epoch, cfg["test_frequency"], epochs):
            t = time.perf_counter()
            # the test ELBO draws z too: keep it off the training RNG stream, so the trajectory
            # does not depend on when (or whether) the test loss was computed
            with fork_rng(device):
                if ddp is None:
                    test_loss = evaluate(svi, test_x, cfg["batch_size"])
                else:  # each rank its part of the test set; one reduction
                    test_loss = all_reduce_sum([_loss_sum(svi, shard(test_x), cfg["batch_size"])])[0] / test_x.shape[0]
            record.update(test_loss=test_loss, test_seconds=round(time.perf_counter() - t, 3))
            test_hist.append((epoch, test_loss))
            line += f"\n[epoch {epoch:03d}]  average test loss: {test_loss:.4f}"
        print(line, flush=True)
        rng = rng_state()
        extra: dict[str, Any] = {}
        if ddp is not None:  # parameters and optimizer state are replicated; the random streams are per rank
            rngs = gather_to_main(rng, "gathering the random states for the checkpoint")
            extra = {"world_size": ddp.world_size, "rng_ranks": rngs}
        if not main_rank:
            continue
        metrics.append(record)
        save_checkpoint(run_dir / CHECKPOINT_NAME, CHECKPOINT_KIND, {
            "epoch": epoch,
            "params": ember.get_param_store().get_plain_state(),
            "optim": svi.optim.get_plain_state(),
            "rng": rng,
            "args": {**cfg, "device": str(device), "data_dir": args.data_dir},
            "history": {"train": [list(h) for h in train_hist], "test": [list(h) for h in test_hist]},
            **({"data": data} if data is not None else {}),
            **extra,
        })

    if not main_rank:
        return 0
    if not args.no_plots:
        t = time.perf_counter()
        with writing(run_dir, "the checkpoint is intact"):
            paths = make_figures(vae, run_dir, train_hist, test_hist, test_x, test_y, cfg["embedding"], cfg["embedding_points"],
                                 cfg["seed"])
        if paths:
            print(f"figures ({time.perf_counter() - t:.1f} s): {', '.join(Path(p).name for p in paths.values())}")
    print(f"run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m ember.examples.vae", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    raise SystemExit(run_main(main, parser.parse_args(), "vae"))
