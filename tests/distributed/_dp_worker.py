"""One rank of a data-parallel test, started by the tests with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
set as torchrun sets them: ``python _dp_worker.py SCENARIO OUT_DIR``. Writes ``OUT_DIR/<scenario>-rank<R>.pt``
(plain data) for the test to check, and exits 0 when the scenario ran as intended."""

from __future__ import annotations

import datetime
import os
import sys
import time
import warnings
from pathlib import Path

import torch

torch.set_num_threads(1)

import _dp_models as M  # noqa: E402

import ember  # noqa: E402
from ember.infer import Trace_ELBO  # noqa: E402
from ember.infer import distributed as ed  # noqa: E402

STEPS = 5


def _rows(rank: int, sizes: list[int]) -> slice:
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def grads(info: ed.DistInfo, out: Path) -> None:
    """Per variant: the reduced gradient of one step (and its loss), then STEPS steps; the parameters after
    setup and at the end. Shards of unequal size (5 and 3, or 7 and 1 rows of a global batch of 8)."""
    variants = {"subsample": (True, [5, 3]), "full": (False, [5, 3]), "uneven": (True, [7, 1])}
    result = {}
    for name, (subsample, sizes) in variants.items():
        ember.clear_param_store()
        ed.seed_rank(100 + len(result))  # different initial weights on each rank: setup must broadcast rank 0's
        m = M.Model(n_data=20, subsample=subsample)
        svi = ed.DataParallelSVI(m.model, m.guide, ember.optim.Adam({"lr": 0.05}), Trace_ELBO())
        rows = _rows(info.rank, sizes)
        batch = M.data(8, seed=1)
        svi.setup(*M.args_of(batch, rows))
        init = ember.get_param_store().get_plain_state()
        loss, named = svi.compute_grads(*M.args_of(batch, rows))
        g = {n: p.grad.clone() for n, p in named}
        for _, p in named:
            p.grad = None
        losses = [svi.step(*M.args_of(M.data(8, seed=10 + s), rows)) for s in range(STEPS)]
        result[name] = {"init": init, "loss": loss, "grads": g, "losses": losses, "final": ember.get_param_store().get_plain_state()}
    # init_from_env imports torch.distributed.nn.functional before the group exists, so that its defaults
    # (group=group.WORLD, evaluated at import) do not keep the group alive past destroy_process_group
    import inspect

    import torch.distributed.nn.functional as F

    result["default_group_is_none"] = inspect.signature(F.all_reduce).parameters["group"].default is None
    torch.save(result, out / f"grads-rank{info.rank}.pt")


def _outcome(fn) -> dict:
    t = time.monotonic()
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            value = fn()
        return {"ok": True, "value": value, "warnings": [str(x.message) for x in w], "seconds": time.monotonic() - t}
    except Exception as e:  # noqa: BLE001 - recorded for the test
        return {"ok": False, "type": type(e).__name__, "message": str(e), "seconds": time.monotonic() - t}


def errors(info: ed.DistInfo, out: Path) -> None:
    """In sequence, in one process group (each check leaves it usable): ranks with different parameters at
    setup; a rank whose model raises (before a subsampled plate and after a full one); a NaN loss on one rank
    with on_nonfinite="skip" and "raise"; a parameter created after setup; normal steps; and last a rank
    that hangs."""
    rank = info.rank
    res: dict = {}
    ed.seed_rank(7)
    batch = M.data(8, seed=3)
    rows = _rows(rank, [4, 4])

    def fresh(subsample=False, **kw):
        ember.clear_param_store()
        m = M.Model(n_data=20, subsample=subsample)
        return m, ed.DataParallelSVI(m.model, m.guide, ember.optim.Adam({"lr": 0.05}), Trace_ELBO(), **kw)

    # 1. rank 1 has an extra parameter
    m, svi = fresh()

    def guide_extra(*args):
        if rank == 1:
            ember.param("extra", torch.zeros(2))
        return m.guide(*args)

    svi = ed.DataParallelSVI(m.model, guide_extra, ember.optim.Adam({"lr": 0.05}), Trace_ELBO())
    res["mismatch"] = _outcome(lambda: svi.setup(*M.args_of(batch, rows)))

    # 2. rank 1's model raises: before the subsampled plate (the others are in its size exchange), or at the end
    for subsample in (True, False):
        m, _ = fresh(subsample)
        boom = [False]

        def model(*args, m=m, boom=boom, subsample=subsample):
            if boom[0] and rank == 1 and subsample:
                raise ValueError("boom before the plate")
            out = m.model(*args)
            if boom[0] and rank == 1:
                raise ValueError("boom after the plate")
            return out

        svi = ed.DataParallelSVI(model, m.guide, ember.optim.Adam({"lr": 0.05}), Trace_ELBO())
        svi.setup(*M.args_of(batch, rows))
        boom[0] = True
        res[f"raise-{'subsample' if subsample else 'full'}"] = _outcome(lambda svi=svi: svi.step(*M.args_of(batch, rows)))
        boom[0] = False
        res[f"after-raise-{'subsample' if subsample else 'full'}"] = _outcome(lambda svi=svi: svi.step(*M.args_of(batch, rows)))

    # 3. a NaN datum on rank 0
    bad = {k: v.clone() for k, v in batch.items()}
    bad["x"][0, 0] = float("nan")
    ember.distributions.enable_validation(False)  # a NaN loss, not a distribution's argument error
    for mode in ("skip", "raise"):
        m, svi = fresh(on_nonfinite=mode)
        svi.setup(*M.args_of(batch, rows))
        before = ember.get_param_store().get_plain_state()
        res[f"nan-{mode}"] = _outcome(lambda svi=svi: svi.step(*M.args_of(bad if rank == 0 else batch, rows)))
        res[f"nan-{mode}"]["unchanged"] = all(torch.equal(before["params"][k], v) for k, v in ember.get_param_store().get_plain_state()["params"].items())

    # 4. a parameter created after setup
    m, svi = fresh()
    late = [False]

    def guide_late(*args):
        if late[0]:
            ember.param("late", torch.zeros(2))
        return m.guide(*args)

    svi = ed.DataParallelSVI(m.model, guide_late, ember.optim.Adam({"lr": 0.05}), Trace_ELBO())
    svi.setup(*M.args_of(batch, rows))
    late[0] = True
    res["late"] = _outcome(lambda: svi.step(*M.args_of(batch, rows)))

    # 5. the group still works
    m, svi = fresh(True)
    res["steps"] = _outcome(lambda: [svi.step(*M.args_of(M.data(8, seed=s), rows)) for s in range(3)])
    res["final"] = ember.get_param_store().get_plain_state()

    # 6. last, as it breaks the group: rank 1 stops answering (sleeps past the timeout of a group of its own,
    # HANG_TIMEOUT seconds) before its second step; rank 0 must fail after the timeout, not hang
    timeout = float(os.environ.get("HANG_TIMEOUT", "2"))
    group = torch.distributed.new_group([0, 1], timeout=datetime.timedelta(seconds=timeout))
    m, _ = fresh()
    svi = ed.DataParallelSVI(m.model, m.guide, ember.optim.Adam({"lr": 0.05}), Trace_ELBO(), process_group=group)
    svi.step(*M.args_of(batch, rows))
    if rank == 1:
        time.sleep(2 * timeout + 1)
    res["hang"] = _outcome(lambda: svi.step(*M.args_of(batch, rows)))
    torch.save(res, out / f"errors-rank{rank}.pt")


def main() -> int:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    info = ed.init_from_env(timeout=float(os.environ.get("DP_TIMEOUT", "30")))
    try:
        {"grads": grads, "errors": errors}[scenario](info, out)
    finally:
        ed.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
