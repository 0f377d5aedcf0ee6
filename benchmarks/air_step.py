"""Attend-Infer-Repeat (the AIR example): seconds per SVI step at batch 64, ember vs the same estimator written by hand in PyTorch (and pyro-ppl).

What is timed: one full SVI step of ``ember air``'s model and guide on multi-MNIST (60,000
canvases, a minibatch of 64 drawn by the plate): the guide (two LSTMCells 2554 -> 256, predict
and encoder nets, spatial transformer crops, 3 steps), the model replayed against it, the
TraceGraph_ELBO surrogate with data-dependent baselines, backward, and Adam (lr 1e-4; 0.1 for
the baseline nets), the loss returned as a Python float.

Variants, each with its own copy of the same initial weights (``ember.examples.air.AIR`` with
the command's defaults):

- ``torch``: the estimator written by hand with ``torch.distributions`` (``validate_args=False``)
  and ``torch.optim.Adam`` (two parameter groups). Per datum ``n``, with ``k = N / 64``::

      elbo   = k * sum_n [ sum_t (log p - log q)(z_pres_t, z_where_t, z_what_t) + log p(x | z) ]
      cost_t = k * [ sum_{s >= t} (log p - log q)(z_pres_s, z_where_s, z_what_s) + log p(x | z) ]   (detached)
      loss   = -(elbo + sum_{t,n} log q(z_pres_t) * (cost_t - b_t)) + sum_{t,n} (cost_t - b_t)^2

  with the z_where / z_what terms of finished data masked to 0 and ``b_t`` the baseline net's
  output: TraceGraph_ELBO's downstream cost for z_pres_t (the guide's terms from step t on and
  the model's from its z_pres_t on, likelihood included, per datum);
- ``ember``: ``SVI(air.model, air.guide, ember.optim.Adam(per-module lr), TraceGraph_ELBO())``,
  validation off;
- ``ember_checked``: the same with Ember's checks and distribution validation on, which is
  what ``ember air`` runs;
- ``pyro``: the same model and guide written with pyro-ppl (the seed's code: float masks, a
  model plate without subsample_size), validation off, when pyro is importable (run with the
  peers' python: ``.peers-venv/bin/python benchmarks/air_step.py``).

Rounds alternate between the variants in one process (the order rotates every round); before
each variant's round the global torch RNG is seeded from the round number, so all variants draw
the same minibatches and noise and their losses agree to float rounding (``final_loss``, a check
of the maths). Prints one JSON line: ms per step per variant (mean over rounds and min), ratios
to ``torch`` and ember / pyro.
"""

from __future__ import annotations

import argparse
import copy

import _harness
import torch

from ember.examples.air import _MODEL_KEYS, AIR, DEFAULTS, build_air, image_to_object, object_to_image


def make_torch(init: AIR, n_total: int, lr: float, blr: float, z_pres_prior: float):
    from torch.distributions import Bernoulli, Normal

    net = copy.deepcopy(init)
    bl = [p for name, p in net.named_parameters() if name.startswith("bl_")]
    main = [p for name, p in net.named_parameters() if not name.startswith("bl_")]
    opt = torch.optim.Adam([{"params": main, "lr": lr}, {"params": bl, "lr": blr}])
    B = net.batch_size
    k = n_total / B
    H, Z = net.rnn_hidden_size, net.z_what_size
    prior_loc, prior_scale = net.z_where_prior_loc, net.z_where_prior_scale

    def step(data: torch.Tensor) -> float:
        idx = torch.randperm(data.size(0))[:B]
        batch = data[idx]
        n = batch.size(0)
        zeros = batch.new_zeros
        h, c, bl_h, bl_c = zeros(n, H), zeros(n, H), zeros(n, H), zeros(n, H)
        prev_pres, prev_where, prev_what = batch.new_ones(n, 1), zeros(n, 3), zeros(n, Z)
        x = zeros(n, net.x_size, net.x_size)
        terms, scores, baselines = [], [], []
        for _t in range(net.num_steps):
            # guide
            h, c = net.rnn(torch.cat((batch, prev_where, prev_what, prev_pres), 1), (h, c))
            z_pres_p, where_loc, where_scale = net.predict(h)
            bl_h, bl_c = net.bl_rnn(torch.cat((batch, prev_where.detach(), prev_what.detach(), prev_pres.detach()), 1), (bl_h, bl_c))
            baselines.append((net.bl_predict(bl_h) * prev_pres).squeeze(-1))
            q_pres = Bernoulli(z_pres_p * prev_pres, validate_args=False)
            z_pres = q_pres.sample()
            m = z_pres.squeeze(-1).bool()
            q_where = Normal(where_loc, where_scale, validate_args=False)
            z_where = q_where.rsample()
            what_loc, what_scale = net.encode(image_to_object(z_where, batch, net.window_size, net.x_size))
            q_what = Normal(what_loc, what_scale, validate_args=False)
            z_what = q_what.rsample()
            lq_pres = q_pres.log_prob(z_pres).sum(-1)
            lq = lq_pres + torch.where(m, q_where.log_prob(z_where).sum(-1), 0.0) + torch.where(m, q_what.log_prob(z_what).sum(-1), 0.0)
            # model (replayed: the same values)
            lp = Bernoulli(z_pres_prior * prev_pres, validate_args=False).log_prob(z_pres).sum(-1)
            lp = lp + torch.where(m, Normal(prior_loc.expand(n, -1), prior_scale.expand(n, -1), validate_args=False).log_prob(z_where).sum(-1), 0.0)
            lp = lp + torch.where(m, Normal(torch.zeros_like(z_what), torch.ones_like(z_what), validate_args=False).log_prob(z_what).sum(-1), 0.0)
            x = x + object_to_image(z_where, net.decode(z_what), net.window_size, net.x_size) * z_pres.view(-1, 1, 1)
            terms.append(k * (lp - lq))
            scores.append(lq_pres)
            prev_pres, prev_where, prev_what = z_pres, z_where, z_what
        flat = x.view(n, -1)
        lp_obs = k * Normal(flat, torch.full_like(flat, net.likelihood_sd), validate_args=False).log_prob(batch).sum(-1)
        elbo = (sum(terms) + lp_obs).sum()
        surrogate = elbo
        bl_loss = 0.0
        later = lp_obs.detach()
        for t in reversed(range(net.num_steps)):
            later = later + terms[t].detach()  # the downstream cost of z_pres_t, per datum
            surrogate = surrogate + (scores[t] * (later - baselines[t].detach())).sum()
            bl_loss = bl_loss + ((later - baselines[t]) ** 2).sum()
        loss = -surrogate + bl_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return -elbo.item()

    return step, None


def make_ember(init: AIR, lr: float, blr: float, checked: bool):
    import ember
    import ember.distributions as dist
    from ember.examples.air import make_svi

    net = copy.deepcopy(init)
    svi = make_svi(net, lr, blr)

    def enter() -> None:
        # this variant's weights live in its modules and its Adam state in its own optimizer;
        # an emptied store simply re-registers them
        ember.clear_param_store()
        ember.enable_validation(checked)
        dist.enable_validation(checked)

    def leave() -> None:
        ember.clear_param_store()

    return svi.step, (enter, leave)


def make_pyro(init: AIR, model_cfg: dict, lr: float, blr: float):
    import pyro
    import pyro.distributions as dist
    from pyro.infer import SVI, TraceGraph_ELBO

    from ember.examples.air import GuideState

    class PyroAIR(AIR):
        """The seed's model and guide, verbatim apart from self. and the device-neutral zeros."""

        def prior_step(self, n, t, prev_x, prev_z_pres):
            z_pres = pyro.sample('z_pres_{}'.format(t), dist.Bernoulli(self.z_pres_prior * prev_z_pres).to_event(1))  # noqa: UP032
            z_where = pyro.sample('z_where_{}'.format(t),  # noqa: UP032
                                  dist.Normal(self.z_where_prior_loc.expand(n, -1), self.z_where_prior_scale.expand(n, -1))
                                  .mask(z_pres).to_event(1))
            z_what = pyro.sample('z_what_{}'.format(t),  # noqa: UP032
                                 dist.Normal(self.z_what_prior_loc.expand(n, -1), self.z_what_prior_scale.expand(n, -1))
                                 .mask(z_pres).to_event(1))
            y = object_to_image(z_where, self.decode(z_what), self.window_size)
            return prev_x + y * z_pres.view(-1, 1, 1), z_pres

        def model(self, data):
            pyro.module("decode", self.decode)
            with pyro.plate('data', data.size(0)) as indices:
                batch = data[indices]
                x = self.prior(batch.size(0)).view(-1, 50 * 50)
                sd = (self.likelihood_sd * x.new_ones(1)).expand_as(x)
                pyro.sample('obs', dist.Normal(x, sd).to_event(1), obs=batch)

        def guide_step(self, t, data, prev):
            rnn_input = torch.cat((data, prev.z_where, prev.z_what, prev.z_pres), 1)
            h, c = self.rnn(rnn_input, (prev.h, prev.c))
            z_pres_p, z_where_loc, z_where_scale = self.predict(h)
            baseline_value, bl_h, bl_c = self.baseline_step(data, prev)
            z_pres = pyro.sample('z_pres_{}'.format(t), dist.Bernoulli(z_pres_p * prev.z_pres).to_event(1),  # noqa: UP032
                                 infer=dict(baseline=dict(baseline_value=baseline_value.squeeze(-1))))
            z_where = pyro.sample('z_where_{}'.format(t), dist.Normal(z_where_loc, z_where_scale).mask(z_pres).to_event(1))  # noqa: UP032
            x_att = image_to_object(z_where, data, self.window_size)
            z_what_loc, z_what_scale = self.encode(x_att)
            z_what = pyro.sample('z_what_{}'.format(t), dist.Normal(z_what_loc, z_what_scale).mask(z_pres).to_event(1))  # noqa: UP032
            return GuideState(h=h, c=c, bl_h=bl_h, bl_c=bl_c, z_pres=z_pres, z_where=z_where, z_what=z_what)

        def guide(self, data, batch_size=None):
            for name in ("rnn", "predict", "encode", "bl_rnn", "bl_predict"):
                pyro.module(name, getattr(self, name))
            with pyro.plate('data', data.size(0), subsample_size=batch_size or self.batch_size) as indices:
                batch = data[indices]
                state = self.initial_guide_state(batch.size(0))
                steps = []
                for t in range(self.num_steps):
                    state = self.guide_step(t, batch, state)
                    steps.append(state)
                return steps

    net = PyroAIR(**model_cfg)
    net.load_state_dict(init.state_dict())
    pyro.enable_validation(False)
    pyro.clear_param_store()

    def per_module(module_name, param_name):
        return {"lr": blr if module_name.startswith("bl_") else lr}

    svi = SVI(net.model, net.guide, pyro.optim.Adam(per_module), loss=TraceGraph_ELBO())
    return svi.step, (lambda: pyro.enable_validation(False), lambda: None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="SVI steps per variant per round (default 30)")
    p.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    p.add_argument("--num-train", type=int, default=60000, help="multi-MNIST training canvases (default 60000, the cached set)")
    args = _harness.parse_args(p, "round")

    from ember.data import load_multi_mnist

    data = load_multi_mnist(num_train=args.num_train).train.images.reshape(args.num_train, -1).contiguous()
    n = data.shape[0]
    cfg = dict(DEFAULTS)
    torch.manual_seed(args.seed)
    init = build_air(cfg)
    model_cfg = {k: cfg[k] for k in _MODEL_KEYS}
    lr, blr, prior_p = cfg["lr"], cfg["baseline_lr"], cfg["z_pres_prior"]
    variants, pyro_version = _harness.make_variants(args, lambda: make_torch(init, n, lr, blr, prior_p),
                                                    lambda checked: make_ember(init, lr, blr, checked),
                                                    lambda: make_pyro(init, model_cfg, lr, blr))

    def steps(step: _harness.Step, count: int) -> float:
        total = 0.0
        for _ in range(count):
            total += step(data)
        return total

    _harness.warm_up(variants, args.seed, lambda step: steps(step, args.warmup))
    times, losses = _harness.alternate(variants, args.rounds, args.seed, lambda step, _: steps(step, args.steps),
                                       steps_per_round=args.steps, data_size=n,
                                       show=lambda k, s, loss: f"{k} {1000 * s:.1f} ms/step (loss/datum {loss:.3f})")

    mean = _harness.means(times)
    out = {
        **_harness.header("air_step", args.threads, pyro_version, canvases=n, batch_size=cfg["batch_size"],
                          steps_per_round=args.steps, rounds=args.rounds),
        "ms_per_step": {k: round(1000 * v, 2) for k, v in mean.items()},
        "ms_per_step_min": {k: round(1000 * min(v), 2) for k, v in times.items()},
        "ratio_to_torch": _harness.ratio_to_torch(mean),
        "final_loss_per_datum": {k: round(v[-1], 4) for k, v in losses.items()},
    }
    _harness.emit(out, mean)


if __name__ == "__main__":
    main()
