"""Attend-Infer-Repeat (AIR; Eslami et al.) on multi-MNIST, trained with SVI (``ember air``).

The model and guide are the Attend-Infer-Repeat tutorial's, written with ``import ember as pyro``:

    for t in 0, 1, 2:                      (at most 3 objects; once z_pres is 0 it stays 0)
        z_pres_t  ~ Bernoulli(p * z_pres_{t-1})                      p = --z-pres-prior (0.01)
        z_where_t ~ Normal([3, 0, 0], [s, 1, 1]), masked by z_pres_t  [scale, x, y]; s = --scale-prior-sd (0.2)
        z_what_t  ~ Normal(0, I_50), masked by z_pres_t
        x += z_pres_t * object_to_image(z_where_t, decode(z_what_t))   (spatial transformer, 20x20 window)
    obs ~ Normal(x, 0.3)

    guide: an LSTMCell(2554, 256) reads the image and the previous step's choices; a "predict" net
    maps its state to z_pres and z_where; the window image_to_object(z_where, image) is encoded to
    z_what. A second LSTM (detached inputs, output x the previous z_pres) gives each z_pres site a
    data-dependent baseline, passed as ``infer={"baseline": {"baseline_value": ...}}`` to
    TraceGraph_ELBO. Minibatches of 64 via ``pyro.plate('data', N, subsample_size=64)``.

Defaults are the tutorial's "In practice" settings and the command behind its figures
(``-blr 0.1 --z-pres-prior 0.01 --scale-prior-sd 0.2 --predict-net 200 --bl-predict-net 200
--decoder-output-use-sigmoid --decoder-output-bias -2``, Adam lr 1e-4, 200,000 steps), except the
window, 20x20 as in the tutorial's code (``--window-size 28`` is the standalone example's).

Choices the tutorial leaves open, made here:

* ``--guide-init prior`` (default): the last layer of the predict net starts with biases that put
  the guide's z_where at the prior's mean ([3, 0, 0], scale sd x softplus(0)). Pyro's standalone
  example gets the same start by adding the prior's mean to the net's output (and multiplying the
  scale by the prior's sd); with a zero-centred start the window scale starts near 0 and the
  inverse transform (1 / scale) throws the attention window far off the canvas.
* ``F.affine_grid`` / ``F.grid_sample`` with ``align_corners=False`` (torch's default since 1.3).
* ``--overlap allow`` (default): the multi-MNIST canvases keep overlapping digits, as the issue
  asks; ``--overlap reject`` re-draws a 2-digit canvas whose digits' raw sum exceeds 1 anywhere,
  as ``pyro.contrib.examples.multi_mnist`` (the data of Pyro's published accuracy curve) does.
  Two crossing digits often look like one, which caps the count accuracy on the overlap-allowed data.
* Otherwise the model and guide are the tutorial's text (with ``self.`` for its globals and
  device-neutral ``new_zeros``): ``.mask(z_pres)`` with the float z_pres, and a model plate
  without ``subsample_size`` that takes the guide's 64 indices under replay.
  ``tests/examples/test_air.py`` also runs the tutorial's code verbatim.

``ember air`` trains (a tqdm bar with the loss per datum and count accuracy), appends to
``metrics.jsonl`` every ``--log-every`` steps (mean loss per datum, training-batch count accuracy)
and every ``--eval-every`` steps the held-out count accuracy on ``--eval-size`` test canvases
(inferred count = sum over steps of z_pres, one guide sample) with its 3x4 confusion matrix (true
0-2 x inferred 0-3). It checkpoints every ``--checkpoint-every`` steps; ``--resume`` continues
bit-for-bit. ``ember air reconstruct --checkpoint PATH --out PNG`` draws the tutorial's figure from a
checkpoint alone: test canvases on top, reconstructions below (the guide traced with
``poutine.trace``, the prior replayed against it with ``poutine.replay``, as the 2017 workshop notebook does), each
step's window boxed red / green / blue and the inferred count in the corner.
"""

from __future__ import annotations

import argparse
import inspect
import math
import time
from collections import namedtuple
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.functional import sigmoid, softplus

import ember as pyro
import ember.distributions as dist
import ember.optim as optim
import ember.poutine as poutine
from ember.examples._runs import (
    CHECKPOINT_NAME,
    CheckpointError,
    MetricsLog,
    RunSetup,
    UsageError,
    check_resumed_data,
    checkpoint_path,
    data_identity,
    data_source,
    fork_rng,
    load_mnist_arg,
    load_run_checkpoint,
    merge_settings,
    resolve_device,
    resolve_run,
    restore,
    rng_state,
    save_checkpoint,
    writing,
)
from ember.infer import SVI, TraceGraph_ELBO
from ember.poutine.messenger import Messenger

__all__ = [
    "AIR",
    "Decoder",
    "Encoder",
    "Predict",
    "GuideState",
    "expand_z_where",
    "z_where_inv",
    "object_to_image",
    "image_to_object",
    "make_svi",
    "z_pres_prior_at",
    "infer_counts",
    "count_accuracy",
    "reconstruct",
    "draw_reconstructions",
    "add_arguments",
    "main",
    "DEFAULTS",
]

CHECKPOINT_KIND = "ember.examples.air"
X_SIZE = 50
NUM_EXAMPLES = 16  # test canvases stored in each checkpoint, for `ember air reconstruct`
MODULE_NAMES = ("decode", "rnn", "predict", "encode", "bl_rnn", "bl_predict")

# Settings that define the model, the data and the training trajectory: fixed by the checkpoint on --resume.
DEFAULTS: dict[str, Any] = {
    "model_steps": 3,
    "window_size": 20,
    "z_what_size": 50,
    "rnn_hidden_size": 256,
    "encoder_net": [200],
    "decoder_net": [200],
    "predict_net": [200],
    "bl_predict_net": [200],
    "decoder_output_bias": -2.0,
    "decoder_output_use_sigmoid": True,
    "scale_prior_mean": 3.0,
    "scale_prior_sd": 0.2,
    "pos_prior_mean": 0.0,
    "pos_prior_sd": 1.0,
    "likelihood_sd": 0.3,
    "z_pres_prior": 0.01,
    "anneal_prior": "none",
    "anneal_prior_to": 1e-5,
    "anneal_prior_begin": 0,
    "anneal_prior_duration": 100000,
    "guide_init": "prior",
    "batch_size": 64,
    "lr": 1.0e-4,
    "baseline_lr": 0.1,
    "seed": 0,
    "data_seed": 0,
    "num_train": 60000,
    "num_test": 10000,
    "overlap": "allow",
}
DEFAULT_STEPS = 200000


# ---- networks ------------------------------------------------------------------------------------


def _mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers of the given sizes with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


class Decoder(nn.Module):
    """``z_what [n, 50] -> window [n, w*w]``: the tutorial's 50 -> 200 -> 400 (ReLU) net, with a fixed
    bias (``--decoder-output-bias``, -2) added before the sigmoid so that objects start mostly empty."""

    def __init__(self, z_what_size: int = 50, hidden: list[int] = (200,), window_size: int = 20, output_bias: float = -2.0,
                 use_sigmoid: bool = True) -> None:
        super().__init__()
        self.net = _mlp([z_what_size, *hidden, window_size * window_size])
        self.output_bias = float(output_bias)
        self.use_sigmoid = bool(use_sigmoid)

    def forward(self, z_what: torch.Tensor) -> torch.Tensor:
        a = self.net(z_what) + self.output_bias
        return sigmoid(a) if self.use_sigmoid else a


class Encoder(nn.Module):
    """Attention window ``[n, w*w] -> (z_what_loc, z_what_scale)``, each ``[n, 50]`` (seed: 400 -> 200 -> 100)."""

    def __init__(self, window_size: int = 20, hidden: list[int] = (200,), z_what_size: int = 50) -> None:
        super().__init__()
        self.net = _mlp([window_size * window_size, *hidden, 2 * z_what_size])
        self.z_what_size = z_what_size

    def forward(self, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.net(data)
        k = self.z_what_size
        return a[:, 0:k], softplus(a[:, k:])


class Predict(nn.Module):
    """Guide RNN state ``h [n, 256] -> (z_pres_p [n, 1], z_where_loc [n, 3], z_where_scale [n, 3])``.

    The tutorial's ``nn.Linear(256, 7)``, optionally with hidden layers (``--predict-net``). With
    ``init_loc``/``init_scale`` the last layer's biases make the initial output (for zero weights)
    z_where ~ Normal(init_loc, init_scale).
    """

    def __init__(self, rnn_hidden_size: int = 256, hidden: list[int] = (), init_loc: list[float] | None = None,
                 init_scale: list[float] | None = None) -> None:
        super().__init__()
        self.net = _mlp([rnn_hidden_size, *hidden, 7])
        if init_loc is not None:
            last = self.net[-1]
            with torch.no_grad():
                last.bias[1:4] = torch.as_tensor(init_loc, dtype=last.bias.dtype)
                scale = torch.as_tensor(init_scale, dtype=last.bias.dtype)
                last.bias[4:7] = scale + torch.log(-torch.expm1(-scale))  # softplus^-1

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = self.net(h)
        z_pres_p = sigmoid(a[:, 0:1])  # Squish to [0,1]
        z_where_loc = a[:, 1:4]
        z_where_scale = softplus(a[:, 4:])  # Squish to >0
        return z_pres_p, z_where_loc, z_where_scale


# ---- spatial transformer (the tutorial's, for any window and canvas size) ------------------------


def expand_z_where(z_where: torch.Tensor) -> torch.Tensor:
    # Takes 3-dimensional vectors, and massages them into 2x3 matrices with elements like so:
    # [s,x,y] -> [[s,0,x],
    #             [0,s,y]]
    n = z_where.size(0)
    expansion_indices = torch.tensor([1, 0, 2, 0, 1, 3], device=z_where.device)
    out = torch.cat((z_where.new_zeros([1, 1]).expand(n, 1), z_where), 1)
    return torch.index_select(out, 1, expansion_indices).view(n, 2, 3)


def z_where_inv(z_where: torch.Tensor) -> torch.Tensor:
    # Take a batch of z_where vectors, and compute their "inverse".
    # That is, for each row compute:
    # [s,x,y] -> [1/s,-x/s,-y/s]
    n = z_where.size(0)
    out = torch.cat((torch.ones([1, 1]).type_as(z_where).expand(n, 1), -z_where[:, 1:]), 1)
    out = out / z_where[:, 0:1]
    return out


def object_to_image(z_where: torch.Tensor, obj: torch.Tensor, window_size: int = 20, x_size: int = X_SIZE) -> torch.Tensor:
    """Place the ``[n, w*w]`` objects on ``[n, 50, 50]`` canvases with pose ``z_where``."""
    n = obj.size(0)
    theta = expand_z_where(z_where)
    grid = F.affine_grid(theta, torch.Size((n, 1, x_size, x_size)), align_corners=False)
    out = F.grid_sample(obj.view(n, 1, window_size, window_size), grid, align_corners=False)
    return out.view(n, x_size, x_size)


def image_to_object(z_where: torch.Tensor, image: torch.Tensor, window_size: int = 20, x_size: int = X_SIZE) -> torch.Tensor:
    """Crop the ``[n, w*w]`` windows with pose ``z_where`` out of the images ``[n, 50*50]``."""
    n = image.size(0)
    theta_inv = expand_z_where(z_where_inv(z_where))
    grid = F.affine_grid(theta_inv, torch.Size((n, 1, window_size, window_size)), align_corners=False)
    out = F.grid_sample(image.view(n, 1, x_size, x_size), grid, align_corners=False)
    return out.view(n, -1)


# ---- model and guide -----------------------------------------------------------------------------

GuideState = namedtuple("GuideState", ["h", "c", "bl_h", "bl_c", "z_pres", "z_where", "z_what"])


class AIR(nn.Module):
    """The networks of the AIR tutorial and its ``prior``, ``model`` and ``guide`` (as methods).

    ``model(data)`` and ``guide(data)`` take all the canvases, ``data [N, 2500]``, and work on a
    minibatch of ``batch_size`` (64) drawn by the ``'data'`` plate; ``guide(data, batch_size=n)``
    with ``n = N`` runs on all of them (used to count objects). ``z_pres_prior`` (an attribute)
    is the prior success probability of z_pres, which annealing changes between steps.
    """

    def __init__(self, model_steps: int = 3, window_size: int = 20, z_what_size: int = 50, rnn_hidden_size: int = 256,
                 encoder_net: list[int] = (200,), decoder_net: list[int] = (200,), predict_net: list[int] = (200,),
                 bl_predict_net: list[int] = (200,), decoder_output_bias: float = -2.0, decoder_output_use_sigmoid: bool = True,
                 scale_prior_mean: float = 3.0, scale_prior_sd: float = 0.2, pos_prior_mean: float = 0.0, pos_prior_sd: float = 1.0,
                 likelihood_sd: float = 0.3, z_pres_prior: float = 0.01, guide_init: str = "prior", batch_size: int = 64,
                 x_size: int = X_SIZE) -> None:
        super().__init__()
        self.num_steps = int(model_steps)
        self.window_size = int(window_size)
        self.x_size = int(x_size)
        self.z_what_size = int(z_what_size)
        self.rnn_hidden_size = int(rnn_hidden_size)
        self.likelihood_sd = float(likelihood_sd)
        self.z_pres_prior = float(z_pres_prior)
        self.batch_size = int(batch_size)
        self.register_buffer("z_where_prior_loc", torch.tensor([scale_prior_mean, pos_prior_mean, pos_prior_mean]))
        self.register_buffer("z_where_prior_scale", torch.tensor([scale_prior_sd, pos_prior_sd, pos_prior_sd]))
        self.register_buffer("z_what_prior_loc", torch.zeros(self.z_what_size))
        self.register_buffer("z_what_prior_scale", torch.ones(self.z_what_size))

        rnn_input_size = self.x_size**2 + 3 + self.z_what_size + 1  # 2554
        self.decode = Decoder(self.z_what_size, list(decoder_net), self.window_size, decoder_output_bias, decoder_output_use_sigmoid)
        self.rnn = nn.LSTMCell(rnn_input_size, self.rnn_hidden_size)
        self.encode = Encoder(self.window_size, list(encoder_net), self.z_what_size)
        if guide_init == "prior":
            init_loc = [scale_prior_mean, pos_prior_mean, pos_prior_mean]
            init_scale = [math.log(2.0) * s for s in (scale_prior_sd, pos_prior_sd, pos_prior_sd)]
        elif guide_init == "zero":
            init_loc = init_scale = None
        else:
            raise ValueError(f"guide_init must be 'prior' or 'zero'; got {guide_init!r}")
        self.predict = Predict(self.rnn_hidden_size, list(predict_net), init_loc, init_scale)
        self.bl_rnn = nn.LSTMCell(rnn_input_size, self.rnn_hidden_size)
        self.bl_predict = _mlp([self.rnn_hidden_size, *bl_predict_net, 1])

    def register_modules(self) -> None:
        """Register the networks with the parameter store under the names model and guide use
        (values already in the store, e.g. loaded from a checkpoint, are copied into them)."""
        for name in MODULE_NAMES:
            pyro.module(name, getattr(self, name))

    # ---- the model (the AIR tutorial, cells 9, 10 and 12) ------------------------------------

    def prior_step(self, n: int, t: int, prev_x: torch.Tensor, prev_z_pres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Sample variable indicating whether to add this object to the output.

        # We multiply the success probability by the value sampled for this
        # choice in the previous step. By doing so we add objects to the output until
        # the first 0 is sampled, after which we add no further objects.
        z_pres = pyro.sample('z_pres_{}'.format(t),  # noqa: UP032 (the tutorial's spelling)
                             dist.Bernoulli(self.z_pres_prior * prev_z_pres)
                                 .to_event(1))

        z_where = pyro.sample('z_where_{}'.format(t),  # noqa: UP032 (the tutorial's spelling)
                              dist.Normal(self.z_where_prior_loc.expand(n, -1),
                                          self.z_where_prior_scale.expand(n, -1))
                                  .mask(z_pres)
                                  .to_event(1))

        z_what = pyro.sample('z_what_{}'.format(t),  # noqa: UP032 (the tutorial's spelling)
                             dist.Normal(self.z_what_prior_loc.expand(n, -1),
                                         self.z_what_prior_scale.expand(n, -1))
                                 .mask(z_pres)
                                 .to_event(1))

        y_att = self.decode(z_what)
        y = object_to_image(z_where, y_att, self.window_size, self.x_size)

        # Combine the image generated at this step with the image so far.
        x = prev_x + y * z_pres.view(-1, 1, 1)

        return x, z_pres

    def prior(self, n: int) -> torch.Tensor:
        x = self.z_what_prior_loc.new_zeros(n, self.x_size, self.x_size)
        z_pres = self.z_what_prior_loc.new_ones(n, 1)
        for t in range(self.num_steps):
            x, z_pres = self.prior_step(n, t, x, z_pres)
        return x

    def model(self, data: torch.Tensor) -> None:
        # Register network for optimization.
        pyro.module("decode", self.decode)
        with pyro.plate('data', data.size(0)) as indices:
            batch = data[indices]
            x = self.prior(batch.size(0)).view(-1, self.x_size * self.x_size)
            sd = (self.likelihood_sd * x.new_ones(1)).expand_as(x)
            pyro.sample('obs', dist.Normal(x, sd).to_event(1),
                        obs=batch)

    # ---- the guide (the AIR tutorial, cells 16 and 17) ---------------------------------------

    def baseline_step(self, x: torch.Tensor, prev: GuideState) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Use an RNN to compute the baseline value. This network takes the
        # input images and the values samples so far as input.
        rnn_input = torch.cat((x,
                               prev.z_where.detach(),
                               prev.z_what.detach(),
                               prev.z_pres.detach()), 1)
        bl_h, bl_c = self.bl_rnn(rnn_input, (prev.bl_h, prev.bl_c))
        bl_value = self.bl_predict(bl_h) * prev.z_pres
        return bl_value, bl_h, bl_c

    def initial_guide_state(self, n: int) -> GuideState:
        zeros = self.z_what_prior_loc.new_zeros
        return GuideState(h=zeros(n, self.rnn_hidden_size),
                          c=zeros(n, self.rnn_hidden_size),
                          bl_h=zeros(n, self.rnn_hidden_size),
                          bl_c=zeros(n, self.rnn_hidden_size),
                          z_pres=self.z_what_prior_loc.new_ones(n, 1),
                          z_where=zeros(n, 3),
                          z_what=zeros(n, self.z_what_size))

    def guide_step(self, t: int, data: torch.Tensor, prev: GuideState) -> GuideState:

        rnn_input = torch.cat((data, prev.z_where, prev.z_what, prev.z_pres), 1)
        h, c = self.rnn(rnn_input, (prev.h, prev.c))
        z_pres_p, z_where_loc, z_where_scale = self.predict(h)

        # Here we compute the baseline value, and pass it to sample.
        baseline_value, bl_h, bl_c = self.baseline_step(data, prev)
        z_pres = pyro.sample('z_pres_{}'.format(t),  # noqa: UP032 (the tutorial's spelling)
                             dist.Bernoulli(z_pres_p * prev.z_pres)
                                 .to_event(1),
                             infer=dict(baseline=dict(baseline_value=baseline_value.squeeze(-1))))

        z_where = pyro.sample('z_where_{}'.format(t),  # noqa: UP032 (the tutorial's spelling)
                              dist.Normal(z_where_loc, z_where_scale)
                                  .mask(z_pres)
                                  .to_event(1))

        x_att = image_to_object(z_where, data, self.window_size, self.x_size)

        z_what_loc, z_what_scale = self.encode(x_att)

        z_what = pyro.sample('z_what_{}'.format(t),  # noqa: UP032 (the tutorial's spelling)
                             dist.Normal(z_what_loc, z_what_scale)
                                 .mask(z_pres)
                                 .to_event(1))

        return GuideState(h=h, c=c, bl_h=bl_h, bl_c=bl_c, z_pres=z_pres, z_where=z_where, z_what=z_what)

    def guide(self, data: torch.Tensor, batch_size: int | None = None) -> list[GuideState]:
        # Register networks for optimization.
        pyro.module('rnn', self.rnn),
        pyro.module('predict', self.predict),
        pyro.module('encode', self.encode),
        pyro.module('bl_rnn', self.bl_rnn)
        pyro.module('bl_predict', self.bl_predict)

        with pyro.plate('data', data.size(0), subsample_size=batch_size or self.batch_size) as indices:
            batch = data[indices]
            state = self.initial_guide_state(batch.size(0))
            steps = []
            for t in range(self.num_steps):
                state = self.guide_step(t, batch, state)
                steps.append(state)
            return steps


# the settings that are AIR's constructor arguments
_MODEL_KEYS = tuple(k for k in inspect.signature(AIR).parameters if k in DEFAULTS)


def build_air(cfg: dict[str, Any]) -> AIR:
    """An :class:`AIR` from a settings dict (``DEFAULTS``' keys; missing ones take the defaults)."""
    c = {**DEFAULTS, **cfg}
    return AIR(**{k: c[k] for k in _MODEL_KEYS})


def make_svi(air: AIR, lr: float = 1.0e-4, baseline_lr: float = 0.1, on_nonfinite: str = "raise") -> SVI:
    """SVI with TraceGraph_ELBO and Adam: ``lr`` for every module, ``baseline_lr`` for ``bl_*`` (the baseline nets)."""

    def per_module_args(module_name: str, param_name: str) -> dict[str, float]:
        return {"lr": baseline_lr if module_name.startswith("bl_") else lr}

    return SVI(air.model, air.guide, optim.Adam(per_module_args), loss=TraceGraph_ELBO(), on_nonfinite=on_nonfinite)


def z_pres_prior_at(step: int, cfg: dict[str, Any]) -> float:
    """The prior success probability of z_pres at SVI step ``step`` (1-based): fixed, or annealed
    linearly / exponentially from ``z_pres_prior`` to ``anneal_prior_to`` over ``anneal_prior_duration``
    steps after ``anneal_prior_begin`` (as Pyro's standalone AIR example)."""
    p0, kind = float(cfg["z_pres_prior"]), cfg.get("anneal_prior", "none")
    if kind == "none":
        return p0
    p1, begin, duration = float(cfg["anneal_prior_to"]), int(cfg["anneal_prior_begin"]), int(cfg["anneal_prior_duration"])
    lo, hi = min(p0, p1), max(p0, p1)
    if kind == "lin":
        x = (p1 - p0) * (step - begin) / duration + p0
    else:
        x = p0 * math.exp(math.log(p1 / p0) / duration * (step - begin))
    return min(max(x, lo), hi)


# ---- counting ------------------------------------------------------------------------------------


class _CaptureGuide(Messenger):
    """Records the values of the plate's indices and of the z_pres sites as the guide runs."""

    def __init__(self) -> None:
        super().__init__(None)
        self.values: dict[str, torch.Tensor] = {}

    def _pyro_post_sample(self, msg: Any) -> None:
        if msg.name.startswith("z_pres_"):
            self.values[msg.name] = msg.value

    def _pyro_post_subsample(self, msg: Any) -> None:
        if msg.name == "data":
            self.values[msg.name] = msg.value


@torch.no_grad()
def infer_counts(air: AIR, images: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
    """The inferred number of objects (sum of z_pres over steps, one draw of the guide) for each
    canvas of ``images [N, 2500]``: int64 ``[N]`` on the CPU."""
    out = []
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk]
        steps = air.guide(x, batch_size=x.shape[0])
        out.append(sum(s.z_pres for s in steps).squeeze(-1).round().long().cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def count_accuracy(air: AIR, images: torch.Tensor, true_counts: torch.Tensor, chunk: int = 1000) -> tuple[float, list[list[int]]]:
    """(accuracy, confusion) of the inferred counts: ``confusion[true][inferred]``, true 0..2 x inferred 0..num_steps."""
    inferred = infer_counts(air, images, chunk)
    true = true_counts.cpu().long()
    rows = max(2, int(true.max()) if true.numel() else 0) + 1
    conf = torch.zeros(rows, air.num_steps + 1, dtype=torch.long)
    conf.index_put_((true, inferred), torch.ones_like(true), accumulate=True)
    acc = float((inferred == true).float().mean()) if true.numel() else float("nan")
    return acc, conf.tolist()


# ---- reconstructions (as in the 2017 workshop notebook) ------------------------------------------


@torch.no_grad()
def reconstruct(air: AIR, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the guide on ``images [n, 2500]`` and the prior replayed against its trace, as the 2017 workshop notebook does.

    Returns ``(recons [n, 50, 50], z_where [n, steps, 3], z_pres [n, steps])``.
    """
    n = images.size(0)
    # run the guide and store the sampled random variables in the trace
    trace = poutine.trace(air.guide).get_trace(images, n)
    # run the prior against the samples in the trace
    recons = poutine.replay(air.prior, trace=trace)(n)
    z_where = torch.stack([trace.nodes[f"z_where_{t}"]["value"] for t in range(air.num_steps)], 1)
    z_pres = torch.stack([trace.nodes[f"z_pres_{t}"]["value"].squeeze(-1) for t in range(air.num_steps)], 1)
    return recons, z_where, z_pres


def window_box(z_where: torch.Tensor, x_size: int = X_SIZE) -> tuple[float, float, float]:
    """The attention window of ``z_where = [s, x, y]`` on the canvas: (left, top, side) in pixel units
    (pixel edges; ``align_corners=False``)."""
    s, x, y = (float(v) for v in z_where)
    side = x_size / s
    left = (x_size - side) / 2 - x / s * x_size / 2
    top = (x_size - side) / 2 - y / s * x_size / 2
    return left, top, side


STEP_COLOURS = ("red", "lime", "blue", "orange", "magenta")


def draw_reconstructions(images: torch.Tensor, recons: torch.Tensor, z_where: torch.Tensor, z_pres: torch.Tensor, path: str | Path,
                         title: str | None = None) -> str:
    """The tutorial's figure: inputs on top, reconstructions below with each used step's window boxed
    (red, green, blue for steps 1, 2, 3) and the inferred count in the top-left corner. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = images.shape[0]
    size = int(round(math.sqrt(images[0].numel())))
    fig, axes = plt.subplots(2, n, figsize=(0.9 * n + 0.2, 2.0), squeeze=False)
    for i in range(n):
        top, bottom = axes[0, i], axes[1, i]
        top.imshow(images[i].reshape(size, size).cpu().numpy(), cmap="gray", vmin=0, vmax=1)
        bottom.imshow(recons[i].reshape(size, size).clamp(0, 1).cpu().numpy(), cmap="gray", vmin=0, vmax=1)
        count = int(z_pres[i].sum())
        for t in range(z_pres.shape[1]):
            if z_pres[i, t] > 0:
                left, up, side = window_box(z_where[i, t], size)
                bottom.add_patch(Rectangle((left - 0.5, up - 0.5), side, side, fill=False, lw=1.0,
                                           edgecolor=STEP_COLOURS[t % len(STEP_COLOURS)]))
        bottom.text(1, 1, str(count), color="white", fontsize=8, va="top", ha="left", fontweight="bold")
        for ax in (top, bottom):
            ax.set_xlim(-0.5, size - 0.5)
            ax.set_ylim(size - 0.5, -0.5)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.88 if title else 0.99, wspace=0.06, hspace=0.06)
    path = str(path)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


# ---- command line --------------------------------------------------------------------------------


def _int_list(s: str) -> list[int]:
    """``"200"``, ``"200,100"`` or ``""`` (no hidden layer) -> list of layer sizes."""
    s = s.strip()
    if not s or s.lower() == "none":
        return []
    try:
        out = [int(v) for v in s.replace(" ", ",").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer sizes like 200 or 200,100; got {s!r}") from None
    if any(v < 1 for v in out):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive; got {s!r}")
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DEFAULTS
    # no abbreviated flags: otherwise `ember air reconstruct --num 6` is read as an ambiguous
    # abbreviation of the training flags --num-train / --num-test
    p.allow_abbrev = False
    sub = p.add_subparsers(dest="air_command", metavar="[reconstruct]",
                           description="with no subcommand, ember air trains; 'ember air reconstruct --checkpoint PATH --out PNG' draws a checkpoint's reconstructions")
    r = sub.add_parser("reconstruct", help="draw test canvases and their reconstructions from a checkpoint (the tutorial's figure)")
    r.add_argument("--checkpoint", required=True, help="a checkpoint.pt written by ember air, or its run directory")
    r.add_argument("--out", dest="png", default=None, help="PNG to write (default: reconstructions.png beside the checkpoint)")
    r.add_argument("--num", type=int, default=10, help=f"canvases to draw, at most {NUM_EXAMPLES} (default 10)")
    r.add_argument("--seed", dest="draw_seed", type=int, default=0, help="seed of the guide's draws (default 0)")
    r.add_argument("--device", dest="draw_device", default="cpu", help="cpu or cuda (default cpu)")

    g = p.add_argument_group("training")
    g.add_argument("--steps", type=int, default=None,
                   help=f"total SVI steps (default {DEFAULT_STEPS}, the tutorial's -n: ~9 h at the ~0.16 s per step measured on one CPU thread). "
                        "With --resume: the new total")
    g.add_argument("--batch-size", type=int, default=None, help=f"canvases per step (default {d['batch_size']})")
    g.add_argument("-lr", "--lr", "--learning-rate", dest="lr", type=float, default=None, help=f"Adam learning rate (default {d['lr']})")
    g.add_argument("-blr", "--baseline-lr", "--baseline-learning-rate", dest="baseline_lr", type=float, default=None,
                   help=f"Adam learning rate of the baseline nets bl_rnn, bl_predict (default {d['baseline_lr']}, as the tutorial)")
    g.add_argument("--seed", type=int, default=None, help="random seed: initial weights, minibatches, guide draws (default 0)")
    g.add_argument("--eval-every", type=int, default=1000, help="held-out count accuracy every this many steps, and at the end (default 1000; 0: only at the end)")
    g.add_argument("--eval-size", type=int, default=10000,
                   help="test canvases for the count accuracy, the first ones (default 10000, all; ~5 s on one thread)")
    g.add_argument("--log-every", type=int, default=100, help="metrics.jsonl record of the mean loss and training count accuracy every this many steps (default 100)")
    g.add_argument("--checkpoint-every", type=int, default=1000, help="checkpoint every this many steps, and at the end (default 1000)")
    g.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    g.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0: torch's choice (default 1)")
    g.add_argument("--out", default=None, help="run directory (default runs/air-<time>)")
    g.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN_DIR",
                   help="continue from the checkpoint in RUN_DIR (default: --out, else the latest runs/air-*). The training "
                        "canvases and the data source must be those the checkpoint recorded (see --allow-data-change)")
    g.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --out that already holds one, deleting its checkpoint, metrics and figure "
                        "(without --resume or --overwrite such an --out is refused)")
    g.add_argument("--allow-data-change", action="store_true",
                   help="with --resume: continue although the training canvases or the data source differ from the checkpoint's")
    g.add_argument("--no-plots", action="store_true", help="skip the reconstruction figure at the end")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--render-model", nargs="?", const="air_model.png", default=None, metavar="FILE",
                   help="draw the model's graph (ember.render_model) to FILE (default air_model.png) and exit; needs graphviz")
    g.add_argument("--no-validation", action="store_true", help="turn off Ember's own checks and distribution argument checks")

    m = p.add_argument_group("model (fixed by the checkpoint on --resume)")
    m.add_argument("--model-steps", type=int, default=None, help=f"AIR steps, the most objects per canvas (default {d['model_steps']})")
    m.add_argument("--window-size", type=int, default=None, choices=[20, 28], help=f"attention window side (default {d['window_size']})")
    m.add_argument("--z-what-size", type=int, default=None, help=f"object code size (default {d['z_what_size']})")
    m.add_argument("--rnn-hidden-size", type=int, default=None, help=f"LSTM state size (default {d['rnn_hidden_size']})")
    for name in ("encoder_net", "decoder_net", "predict_net", "bl_predict_net"):
        m.add_argument("--" + name.replace("_", "-"), type=_int_list, default=None, metavar="SIZES",
                       help=f"hidden layer sizes, comma-separated, '' for none (default {','.join(map(str, d[name]))})")
    m.add_argument("--decoder-output-bias", type=float, default=None, help=f"added before the decoder's sigmoid (default {d['decoder_output_bias']})")
    m.add_argument("--no-decoder-sigmoid", dest="decoder_output_use_sigmoid", action="store_const", const=False, default=None,
                   help="no sigmoid on the decoder output (the default applies one, the tutorial's --decoder-output-use-sigmoid)")
    m.add_argument("--scale-prior-mean", type=float, default=None, help=f"prior mean of the window scale (default {d['scale_prior_mean']})")
    m.add_argument("--scale-prior-sd", type=float, default=None, help=f"prior sd of the window scale (default {d['scale_prior_sd']}; tutorial cells: 0.1)")
    m.add_argument("--pos-prior-mean", type=float, default=None, help=f"prior mean of the window position (default {d['pos_prior_mean']})")
    m.add_argument("--pos-prior-sd", type=float, default=None, help=f"prior sd of the window position (default {d['pos_prior_sd']})")
    m.add_argument("--likelihood-sd", type=float, default=None, help=f"sd of the Normal likelihood (default {d['likelihood_sd']})")
    m.add_argument("--z-pres-prior", type=float, default=None, help=f"prior success probability of z_pres (default {d['z_pres_prior']}; the tutorial's cells use 0.5)")
    m.add_argument("--anneal-prior", choices=["none", "lin", "exp"], default=None,
                   help="anneal the z_pres prior from --z-pres-prior to --anneal-prior-to (default none: fixed)")
    m.add_argument("--anneal-prior-to", type=float, default=None, help=f"final z_pres prior when annealing (default {d['anneal_prior_to']})")
    m.add_argument("--anneal-prior-begin", type=int, default=None, help="step at which annealing begins (default 0)")
    m.add_argument("--anneal-prior-duration", type=int, default=None, help=f"steps over which to anneal (default {d['anneal_prior_duration']})")
    m.add_argument("--guide-init", choices=["prior", "zero"], default=None,
                   help="start the guide's z_where at the prior's mean (prior, default) or at the predict net's default init (zero)")
    m.add_argument("--data-seed", type=int, default=None, help="seed of the multi-MNIST canvases (default 0)")
    m.add_argument("--num-train", type=int, default=None, help=f"training canvases (default {d['num_train']})")
    m.add_argument("--num-test", type=int, default=None, help=f"test canvases (default {d['num_test']})")
    m.add_argument("--overlap", choices=["allow", "reject"], default=None,
                   help="multi-MNIST digits may overlap, their sum clipped to 1 (allow, default, the issue's data), or a 2-digit "
                        "canvas is drawn again while its digits' raw sum exceeds 1 anywhere (reject: Pyro's multi_mnist rule)")
    m.add_argument("--data-dir", default=None,
                   help="directory with the MNIST IDX files or mnist.pkl.gz (default: Ember's cache, downloading if needed)")


def _check_args(args: argparse.Namespace) -> None:
    positive = ("steps", "batch_size", "eval_size", "log_every", "checkpoint_every", "model_steps", "z_what_size", "rnn_hidden_size",
                "num_train", "num_test", "anneal_prior_duration")
    for name in positive:
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
    for name in ("eval_every", "threads", "anneal_prior_begin"):
        v = getattr(args, name, None)
        if v is not None and v < 0:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {v}")
    for name in ("lr", "baseline_lr", "scale_prior_sd", "pos_prior_sd", "likelihood_sd", "scale_prior_mean"):
        v = getattr(args, name, None)
        if v is not None and not (math.isfinite(v) and v > 0):
            raise UsageError(f"--{name.replace('_', '-')} must be a positive number, got {v}")
    for name in ("z_pres_prior", "anneal_prior_to"):
        v = getattr(args, name, None)
        if v is not None and not (0 < v <= 1):
            raise UsageError(f"--{name.replace('_', '-')} must be in (0, 1], got {v}")


_TRAIN_TYPES = {"args": dict, "step": int}  # checked where present


def _settings(args: argparse.Namespace, ckpt: dict[str, Any] | None) -> dict[str, Any]:
    """The model's, data's and trajectory's settings (fixed by a resumed checkpoint), then the steps (given, else the checkpoint's)."""
    saved = None
    if ckpt is not None:
        saved = {"overlap": "allow", **ckpt["args"]}  # checkpoints from before --overlap: the canvases allowed overlaps
    return merge_settings(args, saved, DEFAULTS, {"steps": DEFAULT_STEPS})


def _load_data(args: argparse.Namespace, cfg: dict[str, Any]):
    from ember.data import load_multi_mnist

    mnist = load_mnist_arg(args.data_dir) if args.data_dir is not None else None  # None: Ember's, loaded only if not cached
    return load_multi_mnist(cfg["num_train"], cfg["num_test"], cfg["data_seed"], mnist=mnist, overlap=cfg["overlap"])


def main(args: argparse.Namespace) -> int:
    """``ember air`` (train or resume) and ``ember air reconstruct``. Returns the exit status."""
    if getattr(args, "air_command", None) == "reconstruct":
        return reconstruct_main(args)
    if getattr(args, "render_model", None) is not None:
        from ember.infer.inspect import render_model

        air = AIR(model_steps=DEFAULTS["model_steps"])
        render_model(air.model, (torch.zeros(air.batch_size, X_SIZE * X_SIZE),), filename=args.render_model, render_distributions=True)
        print(args.render_model)
        return 0
    _check_args(args)
    device = resolve_device(args.device)
    run_dir, ckpt_path, ckpt = resolve_run(args.out, args.resume, "air", CHECKPOINT_KIND,
                                           required=("step", "params", "optim", "rng", "args", "window"), types=_TRAIN_TYPES,
                                           overwrite=args.overwrite)
    cfg = _settings(args, ckpt)
    with RunSetup(args.threads, validation=(not args.no_validation, not args.no_validation)) as setup:
        data = _load_data(args, cfg)
        ident = data_identity(data.train.images, "multi-MNIST from " + data_source(args.data_dir))
        if ckpt is not None:
            check_resumed_data(ckpt_path, ckpt, ident, args.allow_data_change)
        run_dir = setup.started(run_dir, "air", f"{len(data.train)} training and {len(data.test)} test canvases, overlaps "
                                                f"{'rejected' if cfg['overlap'] == 'reject' else 'allowed'} ({data.source})",
                                resuming=ckpt is not None, overwrite=args.overwrite, outputs=("reconstructions.png",))
        return _train(args, cfg, device, run_dir, ckpt_path, ckpt, data, ident)


def _train(args: argparse.Namespace, cfg: dict[str, Any], device: torch.device, run_dir: Path, ckpt_path: Path | None,
           ckpt: dict[str, Any] | None, data: Any, ident: dict[str, Any] | None = None) -> int:
    from tqdm import tqdm

    pyro.set_rng_seed(cfg["seed"])
    pyro.clear_param_store()
    air = build_air(cfg).to(device)
    air.register_modules()
    svi = make_svi(air, cfg["lr"], cfg["baseline_lr"], on_nonfinite="skip")
    train_x = data.train.images.reshape(len(data.train), -1).to(device)
    train_counts = data.train.counts.to(device)
    n_eval = min(args.eval_size, len(data.test))
    eval_x = data.test.images[:n_eval].reshape(n_eval, -1).to(device)
    eval_counts = data.test.counts[:n_eval]
    examples = (data.test.images[:NUM_EXAMPLES] * 255).round().to(torch.uint8)
    example_counts = data.test.counts[:NUM_EXAMPLES].clone()
    n_train = train_x.shape[0]

    metrics = MetricsLog(run_dir)
    start = 0
    window = {"loss_sum": 0.0, "acc_sum": 0.0, "n": 0, "skipped": 0}
    last_eval: dict[str, Any] = {}
    if ckpt is not None:
        def read(c: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
            return {k: type(v)(c["window"][k]) for k, v in window.items()}, dict(c.get("last_eval") or {})

        start, (window, last_eval) = restore(ckpt_path, ckpt, svi.optim, metrics, "step", read)
    steps = cfg["steps"]
    if start >= steps:
        print(f"already trained for {start} steps (pass --steps N with N > {start} to train more)")
    else:
        print(f"AIR: {air.num_steps} steps, window {air.window_size}, z_pres prior {cfg['z_pres_prior']}"
              f"{'' if cfg['anneal_prior'] == 'none' else ' (' + cfg['anneal_prior'] + '-annealed to ' + str(cfg['anneal_prior_to']) + ')'}, "
              f"scale prior sd {cfg['scale_prior_sd']}; Adam lr {cfg['lr']} (baselines {cfg['baseline_lr']}), batch {cfg['batch_size']}; "
              f"steps {start + 1}..{steps}, device {device}, {torch.get_num_threads()} threads")

    def save(step: int) -> None:
        save_checkpoint(run_dir / CHECKPOINT_NAME, CHECKPOINT_KIND, {
            "step": step, "params": pyro.get_param_store().get_plain_state(), "optim": svi.optim.get_plain_state(), "rng": rng_state(),
            "args": {k: cfg[k] for k in (*DEFAULTS, "steps")}, "window": dict(window), "last_eval": dict(last_eval),
            "examples": examples, "example_counts": example_counts, **({"data": ident} if ident is not None else {}),
        })

    def evaluate(step: int) -> None:
        t = time.perf_counter()
        # the guide's draws come from a generator of their own: the training trajectory does not
        # depend on when (or whether) the accuracy was measured
        with fork_rng(device):
            torch.manual_seed(cfg["seed"] * 1_000_003 + step)
            acc, conf = count_accuracy(air, eval_x, eval_counts)
        last_eval.update(step=step, test_count_accuracy=acc)
        metrics.append({"step": step, "kind": "eval", "test_count_accuracy": acc, "confusion": conf, "test_size": n_eval,
                        "eval_seconds": round(time.perf_counter() - t, 3)})
        tqdm.write(f"[step {step:6d}]  held-out count accuracy {acc:.4f} on {n_eval} test canvases; "
                   f"confusion (true 0-2 x inferred 0-{air.num_steps}): {conf}")

    capture = _CaptureGuide()

    def guide(data_: torch.Tensor) -> list[GuideState]:
        with capture:
            return air.guide(data_)

    svi.guide = guide
    bar = tqdm(total=steps, initial=start, desc="air", unit="step", dynamic_ncols=True, mininterval=0.5, disable=args.no_progress)
    t_start = time.perf_counter()
    try:
        for step in range(start + 1, steps + 1):
            air.z_pres_prior = z_pres_prior_at(step, cfg)
            capture.values.clear()
            loss = svi.step(train_x)
            if math.isfinite(loss):
                idx = capture.values.get("data")
                true = train_counts[idx] if idx is not None else train_counts
                inferred = sum(capture.values[f"z_pres_{t}"] for t in range(air.num_steps)).squeeze(-1)
                window["loss_sum"] += loss / n_train
                window["acc_sum"] += float((inferred.round().long() == true).float().mean())
                window["n"] += 1
            else:
                window["skipped"] += 1
            if step % args.log_every == 0 or step == steps:
                k = max(window["n"], 1)
                rec = {"step": step, "kind": "train", "loss": window["loss_sum"] / k if window["n"] else None,
                       "train_count_accuracy": window["acc_sum"] / k if window["n"] else None, "steps_in_window": window["n"],
                       "skipped_steps": window["skipped"], "z_pres_prior": air.z_pres_prior,
                       "seconds": round(time.perf_counter() - t_start, 3)}
                metrics.append(rec)
                post = f"loss={rec['loss']:.1f}" if rec["loss"] is not None else "loss=nan"
                if rec["train_count_accuracy"] is not None:
                    post += f" acc(train)={rec['train_count_accuracy']:.3f}"
                if "test_count_accuracy" in last_eval:
                    post += f" acc(test)={last_eval['test_count_accuracy']:.3f}"
                bar.set_postfix_str(post, refresh=False)
                window.update(loss_sum=0.0, acc_sum=0.0, n=0, skipped=0)
            if (args.eval_every and step % args.eval_every == 0) or step == steps:
                evaluate(step)
            if step % args.checkpoint_every == 0 or step == steps:
                save(step)
            bar.update(1)
    finally:
        bar.close()
    if start < steps:
        print(f"trained steps {start + 1}..{steps} in {time.perf_counter() - t_start:.1f} s; checkpoint {run_dir / CHECKPOINT_NAME}")
    if not args.no_plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("  (no figure: install matplotlib, e.g. pip install 'ember-ppl[plots]')")
        else:
            with fork_rng(device):
                torch.manual_seed(0)
                x = examples[:10].float().div(255).reshape(-1, X_SIZE * X_SIZE).to(device)
                recons, z_where, z_pres = reconstruct(air, x)
            with writing(run_dir / "reconstructions.png", "the checkpoint is intact"):
                path = draw_reconstructions(x, recons, z_where, z_pres, run_dir / "reconstructions.png",
                                            title=f"step {max(start, steps)}: test canvases (top) and reconstructions (bottom)")
            print(f"figure: {path}")
    return 0


def reconstruct_main(args: argparse.Namespace) -> int:
    """``ember air reconstruct``: rebuild the networks from a checkpoint's settings, load its
    parameters through the parameter store, and draw the tutorial's figure."""
    ckpt_path = checkpoint_path(args.checkpoint)
    ckpt = load_run_checkpoint(ckpt_path, CHECKPOINT_KIND, required=("params", "args", "examples"), types=_TRAIN_TYPES)
    if not 1 <= args.num <= NUM_EXAMPLES:
        raise UsageError(f"--num must be between 1 and {NUM_EXAMPLES}, got {args.num}")
    device = resolve_device(args.draw_device)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError("ember air reconstruct needs matplotlib (pip install 'ember-ppl[plots]')") from None
    out = Path(args.png) if args.png else ckpt_path.parent / "reconstructions.png"
    if out.is_dir():
        raise UsageError(f"{'--out ' if args.png else ''}{out}: is a directory; name the PNG file to write")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create its directory {out.parent} ({e.strerror or e})") from None
    pyro.clear_param_store()
    try:
        air = build_air(ckpt["args"]).to(device)
        pyro.get_param_store().set_state(ckpt["params"])
        air.register_modules()  # copies the checkpoint's values into the fresh networks
        images = ckpt["examples"][: args.num].float().div(255).reshape(-1, X_SIZE * X_SIZE).to(device)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt_path}: malformed checkpoint ({type(e).__name__}: {e})") from None
    air.eval()
    torch.manual_seed(args.draw_seed)
    recons, z_where, z_pres = reconstruct(air, images)
    true = ckpt.get("example_counts")
    inferred = z_pres.sum(1).long().cpu()
    title = f"step {ckpt.get('step', '?')}: inferred counts {inferred.tolist()}"
    if isinstance(true, torch.Tensor):
        title += f", true {true[: args.num].tolist()}"
    draw_reconstructions(images, recons, z_where, z_pres, out, title=title)
    print(f"figure: {out}")
    print(title)
    return 0
