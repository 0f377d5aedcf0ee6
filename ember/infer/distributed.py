"""Data-parallel SVI on ``torch.distributed`` (processes started by ``torchrun``).

Every process (rank) runs the model and the guide on its own shard of each global
minibatch; the gradients are summed over the ranks with one ``all_reduce`` per dtype before
every optimizer step, so all ranks take the same step and keep identical parameters. The
engine is PyTorch's own: gloo on CPU, NCCL on GPUs, launched by ``torchrun``::

    # torchrun --nproc_per_node=2 train.py
    from ember.infer.distributed import DataParallelSVI, init_from_env, seed_rank, shard

    info = init_from_env()                     # RANK, WORLD_SIZE, ... as set by torchrun
    seed_rank(0)                               # each rank its own random stream
    svi = DataParallelSVI(model, guide, ember.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    svi.setup(shard(first_batch))              # create the params, broadcast rank 0's
    for batch in global_batches:               # the same global batches on every rank
        loss = svi.step(shard(batch))          # the global loss, the same on every rank

**The objective.** ``DataParallelSVI`` optimizes the single-process objective of the *global*
minibatch, the concatenation of the ranks' shards: with the same latent noise, one step's
gradient equals the single-process gradient on the concatenated batch (tests/distributed
checks this to float rounding). Each rank's loss is scaled so that the *sum* over the ranks
is that objective, and the gradients are *summed* (not averaged):

* sites inside a *sharded plate* (named by ``plates``, default ``"data"``) hold the rank's
  part of the global batch. A plate declared without subsampling (``plate("data", len(x))``
  over the rank's ``x``: the VAE example) is the rank's slice of the single-process plate over
  the concatenated batch, whose scale is 1: its sites keep scale 1. A subsampled plate
  (``plate("data", N, subsample=idx)`` or ``subsample_size=``) scales its sites by ``N / B``
  with ``B`` the *global* batch size (the sum of the ranks' subsample sizes, found with one
  small ``all_gather`` the first time the plate is met in a step), not by ``N / n_rank``;
* every other sample site (global latents, priors on them) is computed on every rank and
  scaled by ``1 / world_size``, so that the sum counts it once.

Ranks may hold shards of different sizes (the last batch of an epoch): the sum is still
exactly the global objective. Global latent sites are drawn on each rank from its own random
stream, so they are estimated with ``world_size`` particles instead of one (unbiased, less
noisy). Pyro's Horovod recipe instead averages full-size estimates (``N / n_rank``); the two
agree when the shards are of equal size.

**Consistency.** Before training, :func:`check_agreement` compares each rank's settings and a
SHA-256 of its data with rank 0's (one small ``all_gather``): a rank with other data, fewer
items or another flag stops every rank at once, with one line naming it and the difference.
Parameters are created by :meth:`DataParallelSVI.setup` (one run of model
and guide, which leaves the random streams as they were) and broadcast from rank 0. Every
step first exchanges a few numbers per rank (one ``all_gather``): whether the rank's loss
was computed, the loss, and a fingerprint of the names, shapes and dtypes of the parameters
its traces touched. If a rank failed (an exception, or a NaN loss) every rank stops with an
error naming it (or, with ``on_nonfinite="skip"``, every rank skips the step); if the ranks
touched different parameters every rank raises :class:`DistributedError` listing them; a
parameter created after ``setup`` is an error too (it would start from different values on
each rank). Only then are the gradients reduced. A process that dies makes the others fail at
their next collective at once (the connection closes); one that hangs makes them fail after
the process group's timeout (:func:`init_from_env`'s ``timeout``). Errors of the collectives
are raised as :class:`DistributedError`, not left to hang.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ember.infer.elbo import NonFiniteLossError, get_importance_trace
from ember.infer.svi import SVI
from ember.infer.util import trace_params
from ember.optim.optim import NonFiniteParameterError
from ember.poutine.messenger import Messenger
from ember.poutine.trace_messenger import TraceMessenger
from ember.primitives import get_param_store, set_rng_seed
from ember.runtime import Message, is_validation_enabled

__all__ = [
    "DEFAULT_TIMEOUT",
    "DataParallelSVI",
    "DistInfo",
    "DistributedError",
    "PeerError",
    "all_reduce_sum",
    "broadcast_from_main",
    "check_agreement",
    "destroy",
    "gather_to_main",
    "get_info",
    "init_from_env",
    "is_available",
    "rank_seed",
    "seed_rank",
    "shard",
    "shard_range",
]

DEFAULT_TIMEOUT = 300.0  # seconds a collective may wait for the other ranks


class DistributedError(RuntimeError):
    """A collective failed: another process died, hung past the timeout, or the ranks disagree."""


class PeerError(DistributedError):
    """Another rank failed (it reports its own error); this rank stops too."""


def is_available() -> bool:
    """Whether ``torch.distributed`` with the gloo backend is available in this torch build."""
    return dist.is_available() and dist.is_gloo_available()


# ---- the process group ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the process group."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0


_INFO: list[DistInfo | None] = [None]
_ENV_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def init_from_env(backend: str | None = None, timeout: float = DEFAULT_TIMEOUT, device: str | torch.device | None = None) -> DistInfo:
    """Join the process group described by the environment ``torchrun`` sets (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).

    :param backend: ``"gloo"`` or ``"nccl"``; default NCCL for a CUDA ``device``, else gloo.
    :param timeout: seconds a collective (and the start-up rendezvous) waits for the other
        ranks before raising; a rank that dies is noticed at once, a rank that hangs after this.
    :param device: ``"cpu"`` (default) or ``"cuda"``: with CUDA each process uses the GPU
        ``cuda:LOCAL_RANK``.

    Returns a :class:`DistInfo`. Calling it again (or with a group already initialized by
    other code) returns the current group's info.
    """
    if not dist.is_available():
        raise DistributedError("torch.distributed is not available in this torch build")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dist.is_initialized():
        return get_info()
    missing = [v for v in _ENV_VARS if v not in os.environ]
    if missing:
        raise DistributedError(
            f"init_from_env: {', '.join(missing)} not set: start the processes with torchrun, e.g. "
            f"`torchrun --nproc_per_node=2 -m ember vae --distributed` (or set RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)"
        )
    try:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as e:
        raise DistributedError(f"init_from_env: malformed RANK/WORLD_SIZE/LOCAL_RANK: {e}") from None
    if not (0 <= rank < world_size):
        raise DistributedError(f"init_from_env: RANK={rank} is not in [0, WORLD_SIZE={world_size})")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DistributedError("init_from_env: device cuda, but CUDA is not available")
        dev = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    if backend is None:
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "gloo" and not dist.is_gloo_available():
        raise DistributedError("init_from_env: the gloo backend is not available in this torch build")
    if backend == "nccl" and not dist.is_nccl_available():
        raise DistributedError("init_from_env: the NCCL backend is not available in this torch build")
    kwargs: dict[str, Any] = {}
    if backend == "nccl":
        kwargs["device_id"] = dev
    # torch.distributed.nn.functional takes `group=group.WORLD` as default arguments: imported after the group
    # exists (torch._dynamo imports it, e.g. when the first torch optimizer is created), it keeps the group alive
    # after destroy_process_group, and a gloo worker thread releasing its last work while the interpreter shuts
    # down then aborts the process ("terminate called without an active exception"). Imported now, its defaults
    # are None.
    importlib.import_module("torch.distributed.nn.functional")
    try:
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=float(timeout)), **kwargs)
    except Exception as e:  # noqa: BLE001 - rendezvous failures of every kind become one error
        raise DistributedError(f"could not join the process group (rank {rank} of {world_size}, backend {backend}, "
                               f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}): {_first_line(e)}") from e
    info = DistInfo(rank, world_size, local_rank, backend, dev)
    _INFO[0] = info
    return info


def get_info() -> DistInfo:
    """The :class:`DistInfo` of the initialized default process group."""
    if not (dist.is_available() and dist.is_initialized()):
        raise DistributedError("torch.distributed is not initialized: call ember.infer.distributed.init_from_env() first")
    info = _INFO[0]
    if info is not None and info.rank == dist.get_rank() and info.world_size == dist.get_world_size():
        return info
    backend = str(dist.get_backend())
    rank = dist.get_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    info = DistInfo(rank, dist.get_world_size(), local_rank, backend, device)
    _INFO[0] = info
    return info


def destroy() -> None:
    """Leave the process group (if initialized)."""
    _INFO[0] = None
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):  # leaving must not mask the error that ended the run
            dist.destroy_process_group()


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    """Turn the errors of collectives (a peer died, a timeout) into :class:`DistributedError`."""
    try:
        yield
    except DistributedError:
        raise
    except RuntimeError as e:
        msg = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", _first_line(e))  # gloo's source location
        if "imed out" in msg or "timeout" in msg.lower():
            why = "another process stopped answering (no reply within the process group's timeout)"
        else:
            why = "another process died or closed its connection"
        raise DistributedError(f"{what} failed on rank {dist.get_rank()}: {why}: {msg}") from e


# ---- seeds and shards ----------------------------------------------------------------------------


def rank_seed(seed: int, rank: int) -> int:
    """The seed of ``rank``'s random streams for the run seed ``seed``: ``seed`` itself for rank 0
    (so a 1-process run reproduces the non-distributed one), else one derived from
    ``(seed, rank)`` with numpy's ``SeedSequence``."""
    if rank == 0:
        return int(seed)
    ss = np.random.SeedSequence([int(seed) % (2**63), int(rank)])
    return int(ss.generate_state(1, dtype=np.uint64)[0] % (2**63))


def seed_rank(seed: int) -> int:
    """Seed torch, numpy and ``random`` for this rank (:func:`rank_seed`); returns the seed used."""
    s = rank_seed(seed, get_info().rank)
    set_rng_seed(s)
    return s


def shard_range(n: int, rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """``(start, stop)`` of ``rank``'s contiguous part of ``n`` items split as evenly as possible
    (the first ``n % world_size`` ranks get one more; as ``torch.tensor_split``)."""
    if rank is None or world_size is None:
        info = get_info()
        rank = info.rank if rank is None else rank
        world_size = info.world_size if world_size is None else world_size
    q, r = divmod(int(n), int(world_size))
    start = rank * q + min(rank, r)
    return start, start + q + (1 if rank < r else 0)


def shard(batch: Any, rank: int | None = None, world_size: int | None = None) -> Any:
    """This rank's contiguous part of ``batch`` (a tensor, split along dim 0, or a sequence):
    the parts of the ranks, concatenated in rank order, are ``batch``. A batch with fewer items
    than ranks leaves some ranks an empty part: avoid that (torch's ``Independent.log_prob``,
    behind ``.to_event()``, fails on an empty batch; ``ember vae`` merges such a last batch
    into the one before)."""
    start, stop = shard_range(len(batch), rank, world_size)
    return batch[start:stop]


# ---- small collectives ---------------------------------------------------------------------------


def all_reduce_sum(values: Iterable[float]) -> list[float]:
    """Sum ``values`` (floats, the same number on every rank) over the ranks, in float64;
    e.g. an epoch's loss totals. Every rank must call it."""
    info = get_info()
    t = torch.tensor(list(values), dtype=torch.float64, device=info.device)
    if info.world_size > 1:
        with _collective("all_reduce_sum"):
            dist.all_reduce(t)
    return t.tolist()


def broadcast_from_main(fn: Callable[[], Any], what: str = "rank 0's set-up") -> Any:
    """Run ``fn()`` on rank 0 only and return its result on every rank (sent as a pickle over
    the process group, so plain data). If ``fn`` raises on rank 0 the exception propagates
    there and every other rank raises :class:`PeerError`. Every rank must call it."""
    info = get_info()
    if info.world_size == 1:
        return fn()
    payload: list[Any] = [None]
    error: BaseException | None = None
    if info.is_main:
        try:
            payload[0] = ("ok", fn())
        except Exception as e:  # noqa: BLE001 - reported to the peers, then re-raised
            error = e
            payload[0] = ("error", f"{type(e).__name__}: {_first_line(e)}")
    with _collective(f"broadcast of {what}"):
        dist.broadcast_object_list(payload, src=0, device=info.device if info.backend == "nccl" else None)
    if error is not None:
        raise error
    status, value = payload[0]
    if status != "ok":
        raise PeerError(f"rank 0 failed during {what} ({value}); rank {info.rank} stops too")
    return value


def gather_to_main(obj: Any, what: str = "gather") -> list[Any] | None:
    """Every rank's ``obj`` (plain data), in rank order, on rank 0; None on the other ranks.
    Every rank must call it."""
    info = get_info()
    if info.world_size == 1:
        return [obj]
    out: list[Any] | None = [None] * info.world_size if info.is_main else None
    with _collective(what):
        dist.gather_object(obj, out, dst=0)
    return out


# ---- agreement at start-up ----------------------------------------------------------------------------


def _tensor_fingerprint(t: torch.Tensor) -> dict[str, Any]:
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256()
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""), "sha256": h.hexdigest()}


def _show_tensor(fp: dict[str, Any] | None) -> str:
    if fp is None:
        return "none"
    n = fp["shape"][0] if fp["shape"] else 1
    return f"{n} items {fp['shape']} {fp['dtype']}, sha256 {fp['sha256'][:12]}"


def check_agreement(settings: dict[str, Any], data: dict[str, torch.Tensor], notes: dict[str, Any] | None = None,
                    what: str = "start-up") -> None:
    """Check, before training, that every rank runs with the same ``settings`` (name -> plain
    value, compared by ``repr``) and the same ``data`` (name -> tensor ``[N, ...]``, compared by
    shape, dtype and a SHA-256 of the contents). ``notes`` (name -> value) are not compared but
    shown with a difference (e.g. each rank's ``--data-dir``, which may differ between machines
    while the data agree). One ``all_gather`` of a few hundred bytes per rank.

    Every rank must call it. If any rank differs from rank 0, every rank raises the same
    :class:`DistributedError` at once, naming each differing rank and what differs (instead of
    training on other data, or hanging at a later collective when the sizes differ).
    """
    info = get_info()
    if info.world_size == 1:
        return
    mine = {"settings": {k: repr(v) for k, v in settings.items()},
            "data": {k: _tensor_fingerprint(v) for k, v in data.items()},
            "notes": {k: repr(v) for k, v in (notes or {}).items()}}
    every: list[Any] = [None] * info.world_size
    with _collective(f"the {what} agreement check"):
        dist.all_gather_object(every, mine)
    ref = every[0]
    lines = []
    for r in range(1, info.world_size):
        fp = every[r]
        diffs = []
        for k in sorted(set(ref["settings"]) | set(fp["settings"])):
            a, b = fp["settings"].get(k, "<unset>"), ref["settings"].get(k, "<unset>")
            if a != b:
                diffs.append(f"{k} {a} (rank 0: {b})")
        data_differs = False
        for k in sorted(set(ref["data"]) | set(fp["data"])):
            a, b = fp["data"].get(k), ref["data"].get(k)
            if a != b:
                data_differs = True
                if a is not None and b is not None and a["shape"] == b["shape"] and a["dtype"] == b["dtype"]:
                    diffs.append(f"{k}: the same shape {a['shape']} but other contents "
                                 f"(sha256 {a['sha256'][:12]}, rank 0: {b['sha256'][:12]})")
                else:
                    diffs.append(f"{k}: {_show_tensor(a)} (rank 0: {_show_tensor(b)})")
        if data_differs:
            for k in sorted(set(ref["notes"]) | set(fp["notes"])):
                diffs.append(f"{k} {fp['notes'].get(k, '<unset>')} (rank 0: {ref['notes'].get(k, '<unset>')})")
        if diffs:
            lines.append(f"rank {r} differs from rank 0: " + "; ".join(diffs))
    if lines:
        raise DistributedError(f"the ranks disagree at {what}, so none trains: {' | '.join(lines)}. "
                               "Start every rank with the same command and the same data")


# ---- the scaling ---------------------------------------------------------------------------------


class _ShardScale(Messenger):
    """Scales every sample site so that the sum of the ranks' losses is the global objective
    (see the module docstring): sites in a sharded plate by ``global scale / local scale``,
    the others by ``1 / world_size``."""

    def __init__(self, fn: Callable, owner: DataParallelSVI) -> None:
        super().__init__(fn)
        self.owner = owner

    def _pyro_sample(self, msg: Message) -> None:
        owner = self.owner
        factor = owner._site_factor(msg)
        if factor != 1.0:
            s = msg.scale
            msg.scale = factor if (type(s) is float and s == 1.0) else s * factor


def _signature(named: Sequence[tuple[str, torch.Tensor]]) -> str:
    return "\n".join(f"{n}:{tuple(p.shape)}:{p.dtype}" for n, p in named)


def _fingerprint(sig: str) -> float:
    """A 52-bit hash of a parameter signature, exact in float64."""
    return float(int.from_bytes(hashlib.blake2b(sig.encode(), digest_size=8).digest(), "little") >> 12)


# Every exchange between the ranks is one all_gather of a row of 5 float64 per rank, whose first entry says what
# it is: the end of a step's traces (status: ok, non-finite loss, failed; then the loss, a fingerprint of the
# parameters, their number and how many were created after setup) or a subsampled sharded plate's local size.
# A rank that fails early thus meets the others' next exchange, whatever it is, with a row that says so: every
# rank leaves the step after the same number of collectives.
_OK, _NONFINITE, _FAILED, _SIZE = 0.0, 1.0, 2.0, 3.0


class DataParallelSVI:
    """SVI over the ranks of the process group: the drop-in for :class:`ember.infer.SVI` in
    data-parallel training (see the module docstring for the objective and the checks).

    :param model, guide, optim, loss, on_nonfinite: as for :class:`~ember.infer.SVI`.
    :param plates: the name(s) of the plate(s) whose data is sharded over the ranks.
    :param process_group: a ``torch.distributed`` group (default: the default group,
        from :func:`init_from_env`).

    ``setup(*args)`` creates the parameters and broadcasts rank 0's (the first ``step`` calls
    it if needed); ``step(*args)`` takes one step on this rank's shard ``args`` and returns the
    *global* loss, the same on every rank; ``evaluate_loss(*args)`` returns this rank's part
    of the global loss (sum it over ranks with :func:`all_reduce_sum`, e.g. once per epoch).
    Every rank must make the same calls in the same order.
    """

    def __init__(self, model: Callable, guide: Callable, optim: Any, loss: Any, *, plates: str | Sequence[str] = "data",
                 process_group: Any = None, on_nonfinite: str = "raise") -> None:
        info = get_info()
        self.plates = frozenset([plates] if isinstance(plates, str) else plates)
        if not self.plates:
            raise ValueError("DataParallelSVI: plates must name at least one plate (the one over the sharded data)")
        self.group = process_group
        self.rank = dist.get_rank(process_group) if process_group is not None else info.rank
        self.world_size = dist.get_world_size(process_group) if process_group is not None else info.world_size
        self.device = info.device
        self.model = model
        self.guide = guide
        self._svi = SVI(_ShardScale(model, self), _ShardScale(guide, self), optim, loss, on_nonfinite=on_nonfinite)
        self.optim = optim
        self.on_nonfinite = on_nonfinite
        self._synced: set[str] | None = None
        self._global_sizes: dict[str, tuple[int, int]] = {}  # plate -> (local subsample size, global) in this call
        self._seen_sharded = False

    # ---- scaling -------------------------------------------------------------------------------
    def _site_factor(self, msg: Message) -> float:
        frames = [f for f in msg.cond_indep_stack if f.name in self.plates]
        if not frames:
            return 1.0 / self.world_size
        if len(frames) > 1:
            raise ValueError(f"DataParallelSVI: site '{msg.name}' is inside several sharded plates "
                             f"{[f.name for f in frames]}; shard one plate only")
        f = frames[0]
        self._seen_sharded = True
        if f.dim is None:
            raise ValueError(f"DataParallelSVI: sharded plate '{f.name}' is used sequentially (for i in plate(...)) at site "
                             f"'{msg.name}'; a sharded plate must be vectorized (with plate(...))")
        full = f.full_size if f.full_size is not None else f.size
        n = f.size
        if full == n:
            return 1.0  # the rank's slice of the plate over the concatenated batch (scale 1)
        cached = self._global_sizes.get(f.name)
        if cached is None or cached[0] != n:
            if cached is not None:
                raise ValueError(f"DataParallelSVI: plate '{f.name}' has subsample size {n} at site '{msg.name}' but "
                                 f"{cached[0]} earlier in the same step; it must be the same throughout a step")
            what = f"the global batch size of plate '{f.name}'"
            table = self._exchange([_SIZE, float(n), 0.0, 0.0, 0.0], what)
            kinds = table[:, 0].tolist()
            if any(k != _SIZE for k in kinds):
                failed = [r for r, k in enumerate(kinds) if k == _FAILED]
                if failed:
                    raise PeerError(f"{what}: rank(s) {failed} failed (see their errors); rank {self.rank} stops too. No step was taken.")
                raise DistributedError(f"{what}: rank(s) {[r for r, k in enumerate(kinds) if k != _SIZE]} finished model and guide "
                                       f"without reaching this plate at site '{msg.name}'; every rank must run the same structure")
            cached = (n, int(table[:, 1].sum().item()))
            self._global_sizes[f.name] = cached
        # the plate scaled by full / n; the global objective wants full / B
        return n / cached[1] if cached[1] else 1.0

    # ---- agreement -----------------------------------------------------------------------------
    def _exchange(self, row: list[float], what: str) -> torch.Tensor:
        """All ranks' ``row`` (float64), as a ``[world_size, len(row)]`` tensor, on every rank."""
        t = torch.tensor(row, dtype=torch.float64, device=self.device)
        if self.world_size == 1:
            return t.unsqueeze(0).cpu()
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        with _collective(what):
            dist.all_gather(out, t, group=self.group)
        return torch.stack(out).cpu()

    def _agree(self, table: torch.Tensor, local_error: BaseException | None, what: str) -> None:
        """Raise on every rank if any rank failed (status column 0)."""
        status = table[:, 0].tolist()
        failed = [r for r, s in enumerate(status) if s == _FAILED]
        if failed:
            if local_error is not None and status[self.rank] == _FAILED:
                raise local_error
            raise PeerError(f"{what}: rank(s) {failed} failed (see their errors); rank {self.rank} stops too. "
                            "No step was taken.")
        ahead = [r for r, s in enumerate(status) if s == _SIZE]
        if ahead:
            raise DistributedError(f"{what}: rank(s) {ahead} were still running model and guide (at a subsampled sharded "
                                   f"plate) when rank {self.rank} had finished; every rank must run the same structure")

    # ---- set-up --------------------------------------------------------------------------------
    def setup(self, *args: Any, **kwargs: Any) -> None:
        """Run model and guide once on this rank's shard ``args`` (creating their parameters;
        the random streams are left as they were), check that every rank has the same
        parameters and that a sharded plate is used, and broadcast rank 0's values of every
        parameter of the store. Every rank must call it."""
        store = get_param_store()
        error: BaseException | None = None
        self._seen_sharded = False
        self._global_sizes = {}
        try:
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                get_importance_trace(self._svi.model, self._svi.guide, args, kwargs, validate=False)
            if not self._seen_sharded:
                raise ValueError(f"DataParallelSVI: no sample site of model or guide is inside the sharded plate(s) "
                                 f"{sorted(self.plates)}; name the plate over the data with plates=...")
        except DistributedError:
            raise  # raised by an exchange the peers took part in: they know
        except Exception as e:  # noqa: BLE001 - reported to the peers, then re-raised
            error = e
        finally:
            self._global_sizes = {}
        named = sorted(store.named_parameters())
        sig = _signature(named)
        table = self._exchange([_FAILED if error is not None else _OK, 0.0, _fingerprint(sig), float(len(named)), 0.0],
                               "DataParallelSVI.setup")
        self._agree(table, error, "DataParallelSVI.setup")
        self._check_same_params(table, named, "after setup")
        with torch.no_grad():
            for group in self._by_dtype([p for _, p in named]):
                flat = torch.cat([p.detach().reshape(-1) for p in group])
                if self.world_size > 1:
                    with _collective("the broadcast of rank 0's parameters"):
                        dist.broadcast(flat, src=self._global_rank(0), group=self.group)
                offset = 0
                for p in group:
                    k = p.numel()
                    p.copy_(flat[offset : offset + k].view_as(p))
                    offset += k
        self._synced = {n for n, _ in named}

    def _global_rank(self, group_rank: int) -> int:
        return group_rank if self.group is None else dist.get_global_rank(self.group, group_rank)

    @staticmethod
    def _by_dtype(params: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        groups: dict[str, list[torch.Tensor]] = {}
        for p in params:
            groups.setdefault(str(p.dtype), []).append(p)
        return [groups[k] for k in sorted(groups)]

    def _check_same_params(self, table: torch.Tensor, named: list[tuple[str, torch.Tensor]], when: str) -> None:
        prints = table[:, 2].tolist()
        if len(set(prints)) > 1:
            counts = [int(c) for c in table[:, 3].tolist()]
            odd = [r for r, f in enumerate(prints) if f != prints[0]]
            raise DistributedError(
                f"DataParallelSVI: the ranks have different parameters {when} (rank 0: {counts[0]} parameters; rank(s) "
                f"{odd} differ: {[counts[r] for r in odd]} parameters, or other names, shapes or dtypes). Every rank must "
                f"run the same model and guide structure. Rank {self.rank} has: {[n for n, _ in named][:20]}"
            )

    # ---- the step ------------------------------------------------------------------------------
    def compute_grads(self, *args: Any, **kwargs: Any) -> tuple[float, list[tuple[str, torch.Tensor]]]:
        """Loss and gradients of one step, without the optimizer step: this rank's shard
        ``args`` -> (global loss, ``[(name, param)]`` sorted by name, whose ``.grad`` holds the
        gradient summed over the ranks (of the parameter's shape), or None where no rank had one). ``step`` is this
        followed by the optimizer. With ``on_nonfinite="skip"`` a skipped step returns
        ``(nan, [])``."""
        if self._synced is None:
            self.setup(*args, **kwargs)
        error: BaseException | None = None
        status, loss = _OK, 0.0
        self._global_sizes = {}
        capture = TraceMessenger(param_only=True)
        try:
            with capture:  # the parameters the step's traces see (SVI's rule)
                loss = float(self._svi.loss_and_grads(self._svi.model, self._svi.guide, *args, **kwargs))
            if not math.isfinite(loss):  # a custom loss_and_grads may return nan without raising
                raise NonFiniteLossError(f"The loss is {loss}. No gradient step was taken; the parameters are unchanged.")
        except NonFiniteLossError as e:
            error, status = e, _NONFINITE
        except DistributedError:
            self._clear(list(trace_params(capture.trace).items()))
            raise  # raised by an exchange the peers took part in: they know
        except Exception as e:  # noqa: BLE001 - reported to the peers, then re-raised
            error, status = e, _FAILED
        finally:
            self._global_sizes = {}
        touched = trace_params(capture.trace)
        named = sorted(touched.items())
        unsynced = [n for n, _ in named if n not in self._synced]  # type: ignore[operator]
        try:
            table = self._exchange([status, loss if status == _OK else 0.0, _fingerprint(_signature(named)),
                                    float(len(named)), float(len(unsynced))], "DataParallelSVI.step")
        except BaseException:
            self._clear(named)
            raise
        try:
            self._agree(table, error, "DataParallelSVI.step")
            statuses = table[:, 0].tolist()
            if any(s == _NONFINITE for s in statuses):
                ranks = [r for r, s in enumerate(statuses) if s == _NONFINITE]
                msg = f"non-finite loss on rank(s) {ranks}" + (f": {error}" if error is not None else "")
                if self.on_nonfinite == "skip":
                    warnings.warn(f"DataParallelSVI.step skipped on every rank: {msg}", RuntimeWarning, stacklevel=3)
                    self._clear(named)
                    return math.nan, []
                if error is not None:
                    raise error
                raise NonFiniteLossError(f"DataParallelSVI.step: {msg} (see its error). No step was taken on any rank.")
            self._check_same_params(table, named, "in this step")
            late = [int(c) for c in table[:, 4].tolist()]
            if any(late):
                raise DistributedError(
                    f"DataParallelSVI: parameters were created after setup() on rank(s) {[r for r, c in enumerate(late) if c]} "
                    f"(rank {self.rank}: {unsynced[:10]}); they would start from different values on each rank. Call "
                    f"setup() with arguments for which model and guide create every parameter."
                )
        except BaseException:
            self._clear(named)
            raise
        self._reduce(named)
        return float(table[:, 1].sum().item()), named

    def _reduce(self, named: list[tuple[str, torch.Tensor]]) -> None:
        """Sum the gradients over the ranks: one flat buffer (and one all_reduce) per dtype,
        with a count of the ranks that had a gradient for each parameter."""
        params = [p for _, p in named]
        for group in self._by_dtype(params):
            parts = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
                     for p in group]
            parts.append(torch.tensor([float(p.grad is not None) for p in group], dtype=group[0].dtype, device=group[0].device))
            flat = torch.cat(parts)
            if self.world_size > 1:
                try:
                    with _collective("the gradient all_reduce"):
                        dist.all_reduce(flat, group=self.group)
                except BaseException:
                    self._clear(named)
                    raise
            has = flat[flat.numel() - len(group) :].tolist()
            offset = 0
            for p, h in zip(group, has):
                k = p.numel()
                p.grad = flat[offset : offset + k].view_as(p) if h > 0 else None
                offset += k

    @staticmethod
    def _clear(named: list[tuple[str, torch.Tensor]]) -> None:
        for _, p in named:
            p.grad = None

    def step(self, *args: Any, **kwargs: Any) -> float:
        """One gradient step on this rank's shard ``args``; returns the global loss (the sum
        of the ranks' losses: -ELBO of the global batch for ELBO losses), equal on every rank."""
        loss, named = self.compute_grads(*args, **kwargs)
        if not named:
            return loss
        touched = dict(named)
        try:
            if is_validation_enabled():
                self._svi._check_grads(touched)  # the same reduced gradients on every rank: the same decision
            params = [p for p in touched.values() if p.grad is not None]
            if params:
                self.optim(params)
        except NonFiniteParameterError as e:  # the same parameters and gradients on every rank: the same decision
            if self.on_nonfinite != "skip":
                raise
            warnings.warn(f"DataParallelSVI.step skipped: {e}", RuntimeWarning, stacklevel=2)
            return math.nan
        finally:
            self._clear(named)
        return loss

    def evaluate_loss(self, *args: Any, **kwargs: Any) -> float:
        """This rank's part of the global loss on its shard ``args`` (no gradients, no step).
        The sum over the ranks (:func:`all_reduce_sum`) is the global loss. Collective only
        when a sharded plate subsamples (its global batch size is summed over the ranks)."""
        self._global_sizes = {}
        try:
            return self._svi.evaluate_loss(*args, **kwargs)
        finally:
            self._global_sizes = {}
