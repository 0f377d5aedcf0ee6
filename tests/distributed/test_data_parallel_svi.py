"""DataParallelSVI with 2 processes on gloo (localhost): the summed gradient is the single-process gradient on
the concatenated batch, the ranks stay identical, and failures, disagreements and a hung rank end in errors on
every rank, not in a hang. (A killed process: tests/distributed/test_vae_distributed.py.)"""

import math

import pytest
import torch
from _dp_models import Model, args_of, data

import ember
from ember import poutine
from ember.infer import SVI, Trace_ELBO
from ember.infer import distributed as ed

pytestmark = pytest.mark.skipif(not ed.is_available(), reason="torch.distributed with gloo is not available")

STEPS = 5  # as in _dp_worker.py


def _reference(variant: str, init: dict):
    """The single-process run on the concatenated batch: (loss, grads) of one step, losses and params after STEPS."""
    ember.clear_param_store()
    m = Model(n_data=20, subsample=variant != "full")
    batch = data(8, seed=1)
    poutine.trace(m.guide).get_trace(*args_of(batch))  # registers the parameters
    ember.get_param_store().set_state(init)
    store = ember.get_param_store()
    loss = Trace_ELBO().loss_and_grads(m.model, m.guide, *args_of(batch))
    grads = {n: p.grad.clone() for n, p in store.named_parameters() if p.grad is not None}
    for _, p in store.named_parameters():
        p.grad = None
    svi = SVI(m.model, m.guide, ember.optim.Adam({"lr": 0.05}), Trace_ELBO())
    losses = [svi.step(*args_of(data(8, seed=10 + s))) for s in range(STEPS)]
    return loss, grads, losses, store.get_state()


def test_summed_gradient_equals_the_single_process_gradient_and_ranks_stay_identical(run_workers):
    ranks = run_workers("grads")
    assert all(r["default_group_is_none"] for r in ranks)  # else a gloo thread may abort the process at exit
    for variant in ("subsample", "full", "uneven"):
        r0, r1 = ranks[0][variant], ranks[1][variant]
        # setup broadcast rank 0's parameters (the ranks had initialised them from different seeds)
        for k, v in r0["init"]["params"].items():
            assert torch.equal(v, r1["init"]["params"][k]), (variant, k)
        loss, grads, losses, final = _reference(variant, r0["init"])
        for r in (r0, r1):
            assert r["grads"].keys() == grads.keys(), variant
            for k, g in grads.items():
                torch.testing.assert_close(r["grads"][k], g, rtol=1e-5, atol=1e-5, msg=f"{variant} {k}")
            assert math.isclose(r["loss"], loss, rel_tol=1e-5), (variant, r["loss"], loss)
            assert r["losses"] == pytest.approx(losses, rel=1e-4), variant
        # after STEPS steps: identical on both ranks, bit for bit, and equal to the single process to rounding
        for k, v in r0["final"]["params"].items():
            assert torch.equal(v, r1["final"]["params"][k]), (variant, k)
            torch.testing.assert_close(v, final["params"][k], rtol=1e-4, atol=1e-5, msg=f"{variant} {k}")
            assert not torch.equal(v, r0["init"]["params"][k]), (variant, k)  # it trained


def test_failures_and_disagreements_raise_on_every_rank(run_workers):
    r0, r1 = run_workers("errors")
    for r in (r0, r1):
        assert not r["mismatch"]["ok"] and r["mismatch"]["type"] == "DistributedError"
        assert "different parameters" in r["mismatch"]["message"]
    # rank 1's model raises: rank 1 gets its own error, rank 0 an error naming rank 1, at once
    for where in ("subsample", "full"):
        a, b = r0[f"raise-{where}"], r1[f"raise-{where}"]
        assert (b["ok"], b["type"]) == (False, "ValueError"), b
        assert (a["ok"], a["type"]) == (False, "PeerError") and "rank(s) [1] failed" in a["message"], a
        assert a["seconds"] < 10 and b["seconds"] < 10
        assert r0[f"after-raise-{where}"]["ok"] and r1[f"after-raise-{where}"]["ok"]  # the ranks are still in step
        assert r0[f"after-raise-{where}"]["value"] == r1[f"after-raise-{where}"]["value"]
    # a NaN on rank 0: skipped on both ranks (with a warning), or an error on both; no parameter moved
    for r in (r0, r1):
        s = r["nan-skip"]
        assert s["ok"] and math.isnan(s["value"]) and s["unchanged"]
        assert any("skipped on every rank" in w and "rank(s) [0]" in w for w in s["warnings"])
        e = r["nan-raise"]
        assert not e["ok"] and e["type"] == "NonFiniteLossError" and e["unchanged"]
        assert not r["late"]["ok"] and "created after setup" in r["late"]["message"]
    assert r1["nan-raise"]["message"].startswith("DataParallelSVI.step: non-finite loss on rank(s) [0]")
    # and the group still works: the same losses and parameters on both ranks
    assert r0["steps"]["ok"] and r0["steps"]["value"] == r1["steps"]["value"]
    for k, v in r0["final"]["params"].items():
        assert torch.equal(v, r1["final"]["params"][k]), k
    # rank 1 hangs past the group's timeout (2 s): rank 0 fails after it, and rank 1, awake, finds the group gone
    h0, h1 = r0["hang"], r1["hang"]
    assert not h0["ok"] and h0["type"] == "DistributedError" and "stopped answering" in h0["message"], h0
    assert 1.5 < h0["seconds"] < 5, h0
    assert not h1["ok"] and h1["type"] == "DistributedError", h1


def test_shards_cover_the_batch_in_rank_order():
    x = torch.arange(11)
    parts = [ed.shard(x, r, 3) for r in range(3)]
    assert [len(p) for p in parts] == [4, 4, 3] and torch.equal(torch.cat(parts), x)
    assert [len(ed.shard(x[:1], r, 2)) for r in range(2)] == [1, 0]
    assert ed.shard_range(10, 1, 4) == (3, 6)
    assert ed.rank_seed(5, 0) == 5 and ed.rank_seed(5, 1) != ed.rank_seed(5, 2) != 5


def test_without_torchrun_the_error_says_how_to_launch(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ed.DistributedError, match="torchrun"):
        ed.init_from_env()
    with pytest.raises(ed.DistributedError, match="init_from_env"):
        ed.DataParallelSVI(lambda: None, lambda: None, ember.optim.Adam({"lr": 0.1}), Trace_ELBO())


@pytest.fixture
def one_process_group(monkeypatch):
    """A 1-process gloo group in this process (as `torchrun --nproc_per_node=1` would give)."""
    from _dp_launch import free_port

    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(k, v)
    info = ed.init_from_env(timeout=30)
    yield info
    ed.destroy()


def test_one_process_is_plain_svi_bit_for_bit(one_process_group):
    assert one_process_group.world_size == 1 and one_process_group.is_main
    results = []
    for parallel in (False, True):
        ember.clear_param_store()
        ember.set_rng_seed(3)
        m = Model(n_data=20, subsample=True)
        optim = ember.optim.Adam({"lr": 0.05})
        if parallel:
            svi = ed.DataParallelSVI(m.model, m.guide, optim, Trace_ELBO())
            svi.setup(*args_of(data(8)))
        else:
            svi = SVI(m.model, m.guide, optim, Trace_ELBO())
        losses = [svi.step(*args_of(data(8, seed=s))) for s in range(4)]
        results.append((losses, ember.get_param_store().get_state()["params"]))
    (la, pa), (lb, pb) = results
    assert la == lb
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k


def test_a_model_without_the_sharded_plate_is_a_clear_error(one_process_group):
    m = Model(n_data=20, subsample=False)
    svi = ed.DataParallelSVI(m.model, m.guide, ember.optim.Adam({"lr": 0.05}), Trace_ELBO(), plates="batch")
    with pytest.raises(ValueError, match=r"sharded plate\(s\) \['batch'\]"):
        svi.setup(*args_of(data(8)))

    def model(x):
        for i in ember.plate("data", len(x)):
            ember.sample(f"x{i}", ember.distributions.Normal(0.0, 1.0), obs=x[i])

    svi = ed.DataParallelSVI(model, lambda x: None, ember.optim.Adam({"lr": 0.05}), Trace_ELBO())
    with pytest.raises(ValueError, match="must be vectorized"):
        svi.setup(torch.zeros(3))
