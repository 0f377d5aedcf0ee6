"""Tests of ember.examples.air and ``ember air`` on multi-MNIST canvases made from a small fake MNIST.

Nothing is downloaded and Ember's real data cache is not touched (tests/examples/conftest.py).
Networks are shrunk (LSTM 32, z_what 8) so a handful of SVI steps take well under a second.
"""

import json
import math
import warnings

import numpy as np
import pytest
import torch
from _helpers import PNG_MAGIC, write_idx_dir

import ember
import ember.poutine as poutine
from ember.cli import main
from ember.examples import _runs, air
from ember.infer import TraceGraph_ELBO
from ember.params.serialize import CheckpointError

SMALL = {"rnn_hidden_size": 32, "z_what_size": 8, "encoder_net": [16], "decoder_net": [16], "predict_net": [16],
         "bl_predict_net": [16], "batch_size": 8}
SMALL_FLAGS = ["--rnn-hidden-size", "32", "--z-what-size", "8", "--encoder-net", "16", "--decoder-net", "16",
               "--predict-net", "16", "--bl-predict-net", "16", "--batch-size", "16"]


@pytest.fixture(scope="module")
def fake_mnist(tmp_path_factory):
    """A directory of IDX files holding 80 + 20 random 28x28 "digits" (a blob of ink each)."""
    d = tmp_path_factory.mktemp("fake-mnist")
    rng = np.random.default_rng(0)
    arrays = []
    for n in (80, 20):
        x = np.zeros((n, 28, 28), dtype=np.uint8)
        x[:, 6:22, 9:19] = rng.integers(100, 256, size=(n, 16, 10))
        arrays += [x, rng.integers(0, 10, n)]
    write_idx_dir(d, arrays)
    return d


def _cli(fake_mnist, out, *extra):
    argv = ["air", "--data-dir", str(fake_mnist), "--num-train", "96", "--num-test", "24", "--eval-size", "24",
            "--log-every", "2", "--eval-every", "2", "--checkpoint-every", "2", "--out", str(out), "--no-progress", *SMALL_FLAGS, *extra]
    return main(argv)


def _small_air(**kw) -> air.AIR:
    return air.build_air({**SMALL, **kw})


# ---- model and guide -------------------------------------------------------------------------------


def _traces(a, data):
    guide_trace = poutine.trace(a.guide).get_trace(data)
    model_trace = poutine.trace(poutine.replay(a.model, trace=guide_trace)).get_trace(data)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    return model_trace, guide_trace


def test_model_and_guide_shapes_masks_and_baselines():
    a = _small_air()
    data = torch.rand(20, 2500)
    n = a.batch_size
    model_trace, guide_trace = _traces(a, data)
    # the model uses the guide's minibatch, and both scale by N / batch
    assert torch.equal(model_trace.nodes["data"]["value"], guide_trace.nodes["data"]["value"])
    assert guide_trace.nodes["data"]["value"].shape == (n,)
    assert model_trace.nodes["obs"]["value"].shape == (n, 2500)
    assert model_trace.nodes["obs"]["log_prob"].shape == (n,)
    assert math.isclose(float(model_trace.nodes["obs"]["scale"]), 20 / n)
    seen_zero = seen_one = False
    prev = torch.ones(n)
    for t in range(a.num_steps):
        z_pres = guide_trace.nodes[f"z_pres_{t}"]["value"]
        assert z_pres.shape == (n, 1)
        assert guide_trace.nodes[f"z_where_{t}"]["value"].shape == (n, 3)
        assert guide_trace.nodes[f"z_what_{t}"]["value"].shape == (n, 8)
        p = z_pres.squeeze(-1)
        assert (p <= prev).all()  # once 0, always 0
        seen_zero |= bool((p == 0).any())
        seen_one |= bool((p == 1).any())
        for tr in (model_trace, guide_trace):
            for name in (f"z_pres_{t}", f"z_where_{t}", f"z_what_{t}"):
                site = tr.nodes[name]
                assert site["log_prob"].shape == (n,), name  # one term per datum
                assert site["fn"].batch_shape == (n,)
            # z_where and z_what of finished data contribute nothing
            for name in (f"z_where_{t}", f"z_what_{t}"):
                lp = tr.nodes[name]["log_prob"]
                assert (lp[p == 0] == 0).all() and (lp[p == 1] != 0).all()
        # one baseline per datum, the shape of the downstream cost, zero for finished data
        bl = guide_trace.nodes[f"z_pres_{t}"]["infer"]["baseline"]["baseline_value"]
        assert bl.shape == (n,)
        assert (bl[prev == 0] == 0).all()
        prev = p
    assert seen_zero and seen_one  # (seeded) the masks were exercised both ways


def test_prior_and_reconstruction_shapes():
    a = _small_air()
    x = a.prior(5)
    assert x.shape == (5, 50, 50)
    data = torch.rand(4, 2500)
    recons, z_where, z_pres = air.reconstruct(a, data)
    assert recons.shape == (4, 50, 50) and z_where.shape == (4, 3, 3) and z_pres.shape == (4, 3)
    # the prior replayed with the guide's choices: canvases with no object are empty
    empty = z_pres.sum(1) == 0
    assert (recons[empty] == 0).all()


def test_one_svi_step_trains_guide_decoder_and_baselines_with_their_learning_rates():
    a = _small_air()
    a.register_modules()
    before = {k: v.detach().clone() for k, v in ember.get_param_store().items()}
    svi = air.make_svi(a, lr=1e-3, baseline_lr=0.05)
    loss = svi.step(torch.rand(40, 2500))
    assert math.isfinite(loss)
    after = dict(ember.get_param_store().items())
    for module in air.MODULE_NAMES:
        names = [k for k in after if k.startswith(module + "$$$")]
        assert names, module
        assert any(not torch.equal(before[k], after[k]) for k in names), f"{module} did not move"
    groups = svi.optim.get_plain_state()["groups"]
    lrs = {}
    for g in groups.values():
        for name in g["params"]:
            lrs[name] = g["hyperparams"]["lr"]
    assert all(lr == (0.05 if k.startswith("bl_") else 1e-3) for k, lr in lrs.items())
    assert {k.split("$$$")[0] for k in lrs} == set(air.MODULE_NAMES)


def test_baseline_of_the_wrong_shape_is_rejected():
    a = _small_air()
    data = torch.rand(16, 2500)
    orig = a.baseline_step

    def bad(x, prev):
        v, h, c = orig(x, prev)
        return v.expand(-1, 2), h, c  # [n, 2]: squeeze(-1) leaves it 2-d

    a.baseline_step = bad
    with pytest.raises(ValueError, match="baseline"):
        TraceGraph_ELBO().loss_and_grads(a.model, a.guide, data)


def test_spatial_transformer_box_and_round_trip():
    obj = torch.ones(1, 400)
    z_where = torch.tensor([[2.0, 0.3, -0.2]])
    img = air.object_to_image(z_where, obj)[0]
    rows = (img > 0.5).any(1).nonzero().flatten()
    cols = (img > 0.5).any(0).nonzero().flatten()
    left, top, side = air.window_box(z_where[0])
    assert abs(float(cols[0]) - left) <= 1 and abs(float(cols[-1]) + 1 - (left + side)) <= 1  # x moves columns
    assert abs(float(rows[0]) - top) <= 1 and abs(float(rows[-1]) + 1 - (top + side)) <= 1  # y moves rows
    # image_to_object undoes object_to_image (up to interpolation) for a smooth object
    yy, xx = torch.meshgrid(torch.arange(20.0), torch.arange(20.0), indexing="ij")
    blob = torch.exp(-((yy - 9.5) ** 2 + (xx - 8) ** 2) / 20).reshape(1, 400)
    z_where = torch.tensor([[1.5, -0.2, 0.1]])
    back = air.image_to_object(z_where, air.object_to_image(z_where, blob).reshape(1, 2500))
    assert (back - blob).abs().max() < 0.1


def test_guide_init_puts_z_where_at_the_prior():
    a = _small_air()
    with torch.no_grad():
        a.predict.net[-1].weight.zero_()
        _, loc, scale = a.predict(torch.zeros(3, 32))
    assert torch.allclose(loc, torch.tensor([3.0, 0.0, 0.0]).expand(3, 3))
    assert torch.allclose(scale, math.log(2) * torch.tensor([0.2, 1.0, 1.0]).expand(3, 3), atol=1e-6)
    z = air.build_air({**SMALL, "guide_init": "zero"})
    assert not torch.allclose(z.predict.net[-1].bias[1:4], torch.tensor([3.0, 0.0, 0.0]))


def test_z_pres_prior_schedules():
    cfg = dict(air.DEFAULTS)
    assert air.z_pres_prior_at(10**6, cfg) == 0.01
    cfg.update(z_pres_prior=0.5, anneal_prior_to=1e-4, anneal_prior_begin=100, anneal_prior_duration=1000)
    for kind in ("lin", "exp"):
        cfg["anneal_prior"] = kind
        assert air.z_pres_prior_at(1, cfg) == 0.5
        assert air.z_pres_prior_at(1100, cfg) == pytest.approx(1e-4)
        assert air.z_pres_prior_at(10**6, cfg) == pytest.approx(1e-4)
        assert 1e-4 < air.z_pres_prior_at(600, cfg) < 0.5
    cfg["anneal_prior"] = "exp"
    assert air.z_pres_prior_at(600, cfg) == pytest.approx(math.sqrt(0.5 * 1e-4))


def test_count_accuracy_and_confusion():
    a = _small_air()
    images = torch.rand(30, 2500)
    true = torch.randint(0, 3, (30,))
    inferred = air.infer_counts(a, images, chunk=7)
    assert inferred.shape == (30,) and inferred.dtype == torch.int64
    assert ((inferred >= 0) & (inferred <= 3)).all()
    torch.manual_seed(1)
    acc, conf = air.count_accuracy(a, images, true, chunk=7)
    torch.manual_seed(1)
    again = air.infer_counts(a, images, chunk=7)
    assert len(conf) == 3 and all(len(r) == 4 for r in conf)
    assert sum(map(sum, conf)) == 30
    assert acc == pytest.approx(float((again == true).float().mean()))
    assert acc == pytest.approx(sum(conf[i][i] for i in range(3)) / 30)


# ---- the seed's code, verbatim ----------------------------------------------------------------------

SEED_002 = '''
from collections import namedtuple
import ember as pyro
import ember.optim as optim
from ember.infer import SVI, TraceGraph_ELBO
import ember.distributions as dist
import ember.poutine as poutine
import torch
import torch.nn as nn
from torch.nn.functional import relu, sigmoid, softplus, grid_sample, affine_grid

class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(50, 200)
        self.l2 = nn.Linear(200, 400)

    def forward(self, z_what):
        h = relu(self.l1(z_what))
        return sigmoid(self.l2(h))

decode = Decoder()

z_where_prior_loc = torch.tensor([3., 0., 0.])
z_where_prior_scale = torch.tensor([0.1, 1., 1.])
z_what_prior_loc = torch.zeros(50)
z_what_prior_scale = torch.ones(50)

def expand_z_where(z_where):
    n = z_where.size(0)
    expansion_indices = torch.LongTensor([1, 0, 2, 0, 1, 3])
    out = torch.cat((torch.zeros([1, 1]).expand(n, 1), z_where), 1)
    return torch.index_select(out, 1, expansion_indices).view(n, 2, 3)

def object_to_image(z_where, obj):
    n = obj.size(0)
    theta = expand_z_where(z_where)
    grid = affine_grid(theta, torch.Size((n, 1, 50, 50)))
    out = grid_sample(obj.view(n, 1, 20, 20), grid)
    return out.view(n, 50, 50)

def prior_step(n, t, prev_x, prev_z_pres):
    z_pres = pyro.sample('z_pres_{}'.format(t),
                         dist.Bernoulli(0.5 * prev_z_pres)
                             .to_event(1))

    z_where = pyro.sample('z_where_{}'.format(t),
                          dist.Normal(z_where_prior_loc.expand(n, -1),
                                      z_where_prior_scale.expand(n, -1))
                              .mask(z_pres)
                              .to_event(1))

    z_what = pyro.sample('z_what_{}'.format(t),
                         dist.Normal(z_what_prior_loc.expand(n, -1),
                                     z_what_prior_scale.expand(n, -1))
                             .mask(z_pres)
                             .to_event(1))

    y_att = decode(z_what)
    y = object_to_image(z_where, y_att)
    x = prev_x + y * z_pres.view(-1, 1, 1)
    return x, z_pres

def prior(n):
    x = torch.zeros(n, 50, 50)
    z_pres = torch.ones(n, 1)
    for t in range(3):
        x, z_pres = prior_step(n, t, x, z_pres)
    return x

def model(data):
    pyro.module("decode", decode)
    with pyro.plate('data', data.size(0)) as indices:
        batch = data[indices]
        x = prior(batch.size(0)).view(-1, 50 * 50)
        sd = (0.3 * torch.ones(1)).expand_as(x)
        pyro.sample('obs', dist.Normal(x, sd).to_event(1),
                    obs=batch)

rnn = nn.LSTMCell(2554, 256)

class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(400, 200)
        self.l2 = nn.Linear(200, 100)

    def forward(self, data):
        h = relu(self.l1(data))
        a = self.l2(h)
        return a[:, 0:50], softplus(a[:, 50:])

encode = Encoder()

class Predict(nn.Module):
    def __init__(self, ):
        super().__init__()
        self.l = nn.Linear(256, 7)

    def forward(self, h):
        a = self.l(h)
        z_pres_p = sigmoid(a[:, 0:1]) # Squish to [0,1]
        z_where_loc = a[:, 1:4]
        z_where_scale = softplus(a[:, 4:]) # Squish to >0
        return z_pres_p, z_where_loc, z_where_scale

predict = Predict()

def z_where_inv(z_where):
    n = z_where.size(0)
    out = torch.cat((torch.ones([1, 1]).type_as(z_where).expand(n, 1), -z_where[:, 1:]), 1)
    out = out / z_where[:, 0:1]
    return out

def image_to_object(z_where, image):
    n = image.size(0)
    theta_inv = expand_z_where(z_where_inv(z_where))
    grid = affine_grid(theta_inv, torch.Size((n, 1, 20, 20)))
    out = grid_sample(image.view(n, 1, 50, 50), grid)
    return out.view(n, -1)

bl_rnn = nn.LSTMCell(2554, 256)
bl_predict = nn.Linear(256, 1)

def baseline_step(x, prev):
    rnn_input = torch.cat((x,
                           prev.z_where.detach(),
                           prev.z_what.detach(),
                           prev.z_pres.detach()), 1)
    bl_h, bl_c = bl_rnn(rnn_input, (prev.bl_h, prev.bl_c))
    bl_value = bl_predict(bl_h) * prev.z_pres
    return bl_value, bl_h, bl_c

GuideState = namedtuple('GuideState', ['h', 'c', 'bl_h', 'bl_c', 'z_pres', 'z_where', 'z_what'])
def initial_guide_state(n):
    return GuideState(h=torch.zeros(n, 256),
                      c=torch.zeros(n, 256),
                      bl_h=torch.zeros(n, 256),
                      bl_c=torch.zeros(n, 256),
                      z_pres=torch.ones(n, 1),
                      z_where=torch.zeros(n, 3),
                      z_what=torch.zeros(n, 50))

def guide_step(t, data, prev):

    rnn_input = torch.cat((data, prev.z_where, prev.z_what, prev.z_pres), 1)
    h, c = rnn(rnn_input, (prev.h, prev.c))
    z_pres_p, z_where_loc, z_where_scale = predict(h)

    baseline_value, bl_h, bl_c = baseline_step(data, prev)
    z_pres = pyro.sample('z_pres_{}'.format(t),
                         dist.Bernoulli(z_pres_p * prev.z_pres)
                             .to_event(1),
                         infer=dict(baseline=dict(baseline_value=baseline_value.squeeze(-1))))

    z_where = pyro.sample('z_where_{}'.format(t),
                          dist.Normal(z_where_loc, z_where_scale)
                              .mask(z_pres)
                              .to_event(1))

    x_att = image_to_object(z_where, data)

    z_what_loc, z_what_scale = encode(x_att)

    z_what = pyro.sample('z_what_{}'.format(t),
                         dist.Normal(z_what_loc, z_what_scale)
                             .mask(z_pres)
                             .to_event(1))

    return GuideState(h=h, c=c, bl_h=bl_h, bl_c=bl_c, z_pres=z_pres, z_where=z_where, z_what=z_what)

def guide(data):
    pyro.module('rnn', rnn),
    pyro.module('predict', predict),
    pyro.module('encode', encode),
    pyro.module('bl_rnn', bl_rnn)
    pyro.module('bl_predict', bl_predict)

    with pyro.plate('data', data.size(0), subsample_size=64) as indices:
        batch = data[indices]
        state = initial_guide_state(batch.size(0))
        steps = []
        for t in range(3):
            state = guide_step(t, batch, state)
            steps.append(state)
        return steps

data = mnist.view(-1, 50 * 50)

svi = SVI(model,
          guide,
          optim.Adam({'lr': 1e-4}),
          loss=TraceGraph_ELBO())

losses = []
for i in range(2):
    loss = svi.step(data)
    losses.append(loss / data.size(0))
'''

MASK_AS_BOOL = (".mask(z_pres)", ".mask(z_pres.bool())")
MODEL_PLATE_SUBSAMPLES = ("with pyro.plate('data', data.size(0)) as indices:", "with pyro.plate('data', data.size(0), subsample_size=64) as indices:")


def _run_seed(*edits):
    code = SEED_002
    for old, new in edits:
        assert old in code
        code = code.replace(old, new)
    ns = {"mnist": torch.rand(100, 50, 50)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*align_corners.*")  # the seed's affine_grid / grid_sample calls
        exec(compile(code, "seed_002_air", "exec"), ns)
    return ns["losses"]


# Seed 002's code verbatim: float z_pres masks, and a model plate without subsample_size that
# takes the guide's 64 indices under replay.
def test_seed_code_verbatim():
    _run_seed()


def test_seed_code_with_bool_masks():
    _run_seed(MASK_AS_BOOL)


def test_seed_code_with_both_workarounds_runs():
    losses = _run_seed(MASK_AS_BOOL, MODEL_PLATE_SUBSAMPLES)
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)


# ---- the command line ----------------------------------------------------------------------------


def test_cli_trains_and_writes_metrics_checkpoint_and_figure(fake_mnist, tmp_path, capsys):
    run = tmp_path / "run"
    assert _cli(fake_mnist, run, "--steps", "4") == 0
    out = capsys.readouterr().out
    assert "held-out count accuracy" in out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in train] == [2, 4] and [r["step"] for r in evals] == [2, 4]
    assert all(math.isfinite(r["loss"]) and 0 <= r["train_count_accuracy"] <= 1 for r in train)
    for r in evals:
        conf = r["confusion"]
        assert len(conf) == 3 and all(len(row) == 4 for row in conf) and sum(map(sum, conf)) == 24
        assert r["test_count_accuracy"] == pytest.approx(sum(conf[i][i] for i in range(3)) / 24)
    ckpt = _runs.load_checkpoint(run / "checkpoint.pt", air.CHECKPOINT_KIND)
    assert ckpt["step"] == 4 and ckpt["args"]["rnn_hidden_size"] == 32 and ckpt["args"]["steps"] == 4
    assert ckpt["examples"].dtype == torch.uint8 and ckpt["examples"].shape == (16, 50, 50)
    assert (run / "reconstructions.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "ember-cache" / "multi_mnist").is_dir()  # the canvases were cached under EMBER_DATA


def test_reconstruct_draws_the_figure_from_the_checkpoint_alone(fake_mnist, tmp_path, capsys):
    run = tmp_path / "run"
    assert _cli(fake_mnist, run, "--steps", "2", "--no-plots") == 0
    assert not (run / "reconstructions.png").exists()
    ckpt = _runs.load_checkpoint(run / "checkpoint.pt", air.CHECKPOINT_KIND)
    ember.clear_param_store()
    png = tmp_path / "figs" / "recon.png"
    assert main(["air", "reconstruct", "--checkpoint", str(run / "checkpoint.pt"), "--out", str(png), "--num", "6"]) == 0
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert "inferred counts" in capsys.readouterr().out
    # the networks drawn with hold the checkpoint's weights
    store = ember.get_param_store()
    for name, value in ckpt["params"]["params"].items():
        assert torch.equal(store[name].detach(), value), name
    # a run directory works too, and the default output sits beside the checkpoint
    assert main(["air", "reconstruct", "--checkpoint", str(run)]) == 0
    assert (run / "reconstructions.png").read_bytes()[:8] == PNG_MAGIC


def test_resume_is_identical_to_an_uninterrupted_run(fake_mnist, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert _cli(fake_mnist, full, "--steps", "4", "--no-plots") == 0
    full_params = {k: v.detach().clone() for k, v in ember.get_param_store().items()}
    assert _cli(fake_mnist, part, "--steps", "2", "--no-plots") == 0
    ember.clear_param_store()
    assert _cli(fake_mnist, part, "--steps", "4", "--no-plots", "--resume") == 0
    part_params = dict(ember.get_param_store().items())
    assert full_params.keys() == part_params.keys()
    for k in full_params:
        assert torch.equal(full_params[k], part_params[k].detach()), k

    def strip(path):
        return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "eval_seconds")} for line in path.read_text().splitlines()]

    assert strip(full / "metrics.jsonl") == strip(part / "metrics.jsonl")


def test_resume_rejects_other_settings_and_damaged_checkpoints(fake_mnist, tmp_path, capsys):
    run = tmp_path / "run"
    assert _cli(fake_mnist, run, "--steps", "2", "--no-plots") == 0
    capsys.readouterr()
    assert _cli(fake_mnist, run, "--steps", "4", "--no-plots", "--resume", "--z-pres-prior", "0.5") == 2
    assert "the run being resumed used 0.01" in capsys.readouterr().err
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    assert _cli(fake_mnist, run, "--steps", "4", "--no-plots", "--resume") == 2
    assert "error" in capsys.readouterr().err
    assert main(["air", "reconstruct", "--checkpoint", str(run / "checkpoint.pt")]) == 2
    with pytest.raises(CheckpointError):
        _runs.load_checkpoint(run / "checkpoint.pt", air.CHECKPOINT_KIND)


def test_bad_flags_give_one_line_errors(fake_mnist, tmp_path, capsys):
    assert _cli(fake_mnist, tmp_path / "r", "--steps", "0") == 2
    assert "--steps must be a positive integer" in capsys.readouterr().err
    assert _cli(fake_mnist, tmp_path / "r", "--z-pres-prior", "1.5") == 2
    assert "--z-pres-prior must be in (0, 1]" in capsys.readouterr().err
    assert _cli(fake_mnist, tmp_path / "r", "--device", "cuda:7") == 2
    assert not (tmp_path / "r").exists()


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("ember air: error:") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_out_naming_a_file_exits_2(fake_mnist, tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("x")
    assert _cli(fake_mnist, f, "--steps", "2", "--no-plots") == 2
    assert _one_line_error(capsys) == f"ember air: error: --out {f}: exists and is not a directory"
    assert f.read_text() == "x"


def test_resume_names_the_checkpoint_it_loaded(fake_mnist, tmp_path, capsys):
    run = tmp_path / "run"
    assert _cli(fake_mnist, run, "--steps", "2", "--no-plots") == 0
    saved = run / "saved.pt"
    (run / "checkpoint.pt").rename(saved)
    capsys.readouterr()
    assert _cli(fake_mnist, run, "--steps", "4", "--no-plots", "--resume", str(saved)) == 0
    assert f"resuming after step 2 from {saved}" in capsys.readouterr().out

    state = _runs.load_checkpoint(saved, air.CHECKPOINT_KIND)
    payload = {k: v for k, v in state.items() if k not in ("format", "version", "digest")}
    _runs.save_checkpoint(saved, air.CHECKPOINT_KIND, {**payload, "window": {}})
    assert _cli(fake_mnist, run, "--steps", "6", "--no-plots", "--resume", str(saved)) == 2
    err = _one_line_error(capsys)
    assert f"{saved}: malformed checkpoint" in err and "checkpoint.pt" not in err


def test_reconstruct_out_under_a_file_exits_2(fake_mnist, tmp_path, capsys):
    run = tmp_path / "run"
    assert _cli(fake_mnist, run, "--steps", "2", "--no-plots") == 0
    f = tmp_path / "file"
    f.write_text("x")
    capsys.readouterr()
    assert main(["air", "reconstruct", "--checkpoint", str(run), "--out", str(f / "recon.png")]) == 2
    assert _one_line_error(capsys).startswith(f"ember air: error: --out {f / 'recon.png'}: cannot create its directory {f}")
    assert main(["air", "reconstruct", "--checkpoint", str(run), "--out", str(run)]) == 2
    assert "is a directory" in _one_line_error(capsys)
    assert f.read_text() == "x"


def test_overlap_reject_is_recorded_and_kept_on_resume(fake_mnist, tmp_path, capsys):
    run = tmp_path / "run"
    assert _cli(fake_mnist, run, "--steps", "2", "--no-plots", "--overlap", "reject") == 0
    assert "overlaps rejected" in capsys.readouterr().out
    ckpt = _runs.load_checkpoint(run / "checkpoint.pt", air.CHECKPOINT_KIND)
    assert ckpt["args"]["overlap"] == "reject"
    cache = tmp_path / "ember-cache" / "multi_mnist"
    assert [p.name for p in cache.iterdir() if "-reject-" in p.name]  # its own cache file
    # resuming without the flag keeps the rejecting data; asking for the other data is an error
    assert _cli(fake_mnist, run, "--steps", "4", "--no-plots", "--resume") == 0
    assert "overlaps rejected" in capsys.readouterr().out
    assert _runs.load_checkpoint(run / "checkpoint.pt", air.CHECKPOINT_KIND)["args"]["overlap"] == "reject"
    assert _cli(fake_mnist, run, "--steps", "6", "--no-plots", "--resume", "--overlap", "allow") == 2
    assert "--overlap allow: the run being resumed used reject" in capsys.readouterr().err
    # the default is the data (overlaps allowed), and a checkpoint from before the option resumes with it
    other = tmp_path / "other"
    assert _cli(fake_mnist, other, "--steps", "2", "--no-plots") == 0
    state = _runs.load_checkpoint(other / "checkpoint.pt", air.CHECKPOINT_KIND)
    assert state["args"]["overlap"] == "allow"
    payload = {k: v for k, v in state.items() if k not in ("format", "version", "digest")}
    payload["args"] = {k: v for k, v in payload["args"].items() if k != "overlap"}
    _runs.save_checkpoint(other / "checkpoint.pt", air.CHECKPOINT_KIND, payload)
    capsys.readouterr()
    assert _cli(fake_mnist, other, "--steps", "4", "--no-plots", "--resume", "--overlap", "reject") == 2
    assert "the run being resumed used allow" in capsys.readouterr().err
    assert _cli(fake_mnist, other, "--steps", "4", "--no-plots", "--resume") == 0
    assert "overlaps allowed" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        _cli(fake_mnist, tmp_path / "bad", "--overlap", "clip")
