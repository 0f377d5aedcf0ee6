"""``plate``: conditional independence, batch dimensions and subsampling."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch

from ember.poutine.messenger import Messenger
from ember.runtime import _STACK, Message, apply_stack, is_validation_enabled


class CondIndepStackFrame(NamedTuple):
    """One plate a site is inside: ``size`` is the (subsampled) size along ``dim``;
    ``dim`` is None for a sequential plate, whose ``counter`` tells the iteration."""

    name: str
    dim: int | None
    size: int
    counter: int
    full_size: int | None = None

    @property
    def vectorized(self) -> bool:
        return self.dim is not None


class _Subsample(torch.distributions.Distribution):
    """The ``fn`` of a plate's ``subsample`` message: draws ``subsample_size`` of ``size``
    indices uniformly without replacement. Never scored."""

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, size: int, subsample_size: int, device: Any = None) -> None:
        self.size = size
        self.subsample_size = subsample_size
        self.device = device
        super().__init__(torch.Size(), torch.Size([subsample_size]), validate_args=False)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        if sample_shape:
            raise NotImplementedError("_Subsample does not draw batches of index sets")
        if self.subsample_size >= self.size:
            return _arange(self.size, self.device)
        return torch.randperm(self.size, device=self.device)[: self.subsample_size]

    def __call__(self) -> torch.Tensor:
        return self.sample()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return torch.zeros((), device=value.device)


_ARANGE_CACHE: dict = {}


def _arange(size: int, device: Any) -> torch.Tensor:
    key = (size, str(device) if device is not None else None)
    t = _ARANGE_CACHE.get(key)
    if t is None:
        t = torch.arange(size, device=device)
        if len(_ARANGE_CACHE) > 64:
            _ARANGE_CACHE.clear()
        _ARANGE_CACHE[key] = t
    return t


def _shape(s: Any) -> str:
    return str(tuple(int(x) for x in s))


class PlateMessenger(Messenger):
    """A plate of conditionally independent variables.

    ``with plate(name, size) as idx:`` declares a batch dimension (``dim``, negative,
    allocated right to left when not given) along which sample sites inside are
    independent; distributions with a size-1 or missing batch dimension there are
    broadcast to the plate's size. With ``subsample_size`` (or explicit ``subsample``
    indices) ``idx`` holds the subsampled indices and every log-density inside is
    scaled by ``size / subsample_size``. ``for i in plate(name, size):`` is the
    sequential version: one iteration per index, with the same scaling.

    ``plate(name)`` without a size declares a dim of any size, set by broadcasting (as in
    Pyro): nothing is expanded or scaled, and ``idx`` is None.

    Shapes: ``idx`` is a long tensor of shape ``(subsample_size,)`` (``(size,)`` without
    subsampling: ``arange(size)``). Inside the plate a site's batch shape has ``subsample_size``
    at position ``dim``; a data tensor indexed with ``idx`` along that dim fits it.

    The indices are a ``subsample`` message (not a sample site): ``trace`` records them and
    ``replay`` gives a model the guide's indices; estimators never see them. The plate's dim
    is allocated from the frames of the plates on the handler stack.
    """

    def __init__(
        self,
        name: str,
        size: int | None = None,
        subsample_size: int | None = None,
        subsample: torch.Tensor | None = None,
        dim: int | None = None,
        use_cuda: bool | None = None,
        device: Any = None,
    ) -> None:
        super().__init__(None)
        if not isinstance(name, str):
            raise TypeError(f"plate: the first argument must be the plate's name (a str); got {name!r}")
        if dim is not None and (not isinstance(dim, int) or dim >= 0):
            raise ValueError(f"plate '{name}': dim must be a negative integer (counted from the right); got {dim!r}")
        if use_cuda and device is None:
            device = "cuda"
        self.name = name
        self.device = device
        self._dim_request = dim
        self.dim: int | None = None
        self.subsample: torch.Tensor | None = None
        self._frame: CondIndepStackFrame | None = None
        if size is None and subsample is None:
            if subsample_size is not None:
                raise ValueError(f"plate '{name}': subsample_size needs the plate's size")
            self.size = self.subsample_size = -1  # any size, set by broadcasting (Pyro's convention)
            self._subsample_given = None
            self._scale = 1.0
            return
        check_range = size is not None
        if size is None:
            size = len(subsample)  # explicit indices without a size: as many as given, no scaling
        if isinstance(size, torch.Tensor):
            size = int(size)
        if not isinstance(size, numbers.Integral) or size < 0:
            raise ValueError(f"plate '{name}': size must be a non-negative integer; got {size!r}")
        if subsample is not None:
            subsample = _check_indices(name, int(size) if check_range else 0, subsample, device)
            subsample_size = len(subsample)
        elif subsample_size is not None:
            if not isinstance(subsample_size, numbers.Integral) or subsample_size <= 0:
                raise ValueError(f"plate '{name}': subsample_size must be a positive integer; got {subsample_size!r}")
            if subsample_size > size:
                raise ValueError(
                    f"plate '{name}': subsample_size={int(subsample_size)} is larger than the plate's size {int(size)}; "
                    f"a plate draws at most all of its {int(size)} indices (use subsample_size <= size, or drop it)"
                )
            subsample_size = int(subsample_size)
        else:
            subsample_size = int(size)
        self.size = int(size)
        self.subsample_size = int(subsample_size)
        self._subsample_given = subsample
        self._scale = self.size / self.subsample_size if self.subsample_size else 1.0

    # ---- indices ---------------------------------------------------------------------
    def _draw_subsample(self) -> torch.Tensor | None:
        """The plate's indices: drawn once per plate object (re-entering the same plate
        reuses them, and emits the subsample message only once)."""
        if self.subsample is None and self.size >= 0:
            self.subsample = self._new_subsample()
        return self.subsample

    def _new_subsample(self) -> torch.Tensor:
        fn = _Subsample(self.size, self.subsample_size, self.device)
        given = self._subsample_given
        if not _STACK:
            return given if given is not None else fn.sample()
        # A message of its own, so that replay() makes the model use the guide's indices, also
        # where the model's plate itself does not subsample (AIR's model); its size and scale
        # then follow the indices.
        msg = Message("subsample", self.name, fn, value=given)
        apply_stack(msg)
        sub = msg.value
        n = len(sub)
        if n != self.subsample_size:
            if n > self.size:
                raise ValueError(f"plate '{self.name}' of size {self.size} was given {n} subsample indices")
            self.subsample_size = n
            self._scale = self.size / n if n else 1.0
        return sub

    def _allocate_dim(self) -> int:
        used = {}
        for h in _STACK:
            frame = getattr(h, "_frame", None)
            if frame is not None and frame.dim is not None:
                used[frame.dim] = frame.name
        dim = self._dim_request
        if dim is not None:
            other = used.get(dim)
            if other is not None:
                raise ValueError(f"plate '{self.name}' asks for dim {dim}, but plate '{other}' already uses it; nested plates need distinct dims")
            return dim
        dim = -1
        while dim in used:
            dim -= 1
        return dim

    # ---- vectorized use ----------------------------------------------------------------
    def __enter__(self) -> torch.Tensor | None:
        for h in _STACK:
            if isinstance(h, PlateMessenger) and h.name == self.name and h._frame is not None:
                raise ValueError(f"plate '{self.name}' is nested inside a plate with the same name; plate names must be unique")
        self._draw_subsample()
        dim = self._allocate_dim()
        self.dim = dim
        self._frame = CondIndepStackFrame(self.name, dim, self.subsample_size, 0, self.size)
        _STACK.append(self)
        return self.subsample

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        self._frame = None

    # ---- sequential use ----------------------------------------------------------------
    def __iter__(self) -> Iterator[int]:
        if self.size < 0:
            raise ValueError(f"plate '{self.name}': a sequential plate (for i in plate(...)) needs a size")
        sub = self._draw_subsample()
        if self._subsample_given is None and self.subsample_size == self.size:
            idx_list = range(self.size)  # no subsampling: no tensor read (static structure for the compiled ELBO)
        else:
            idx_list = sub.tolist() if isinstance(sub, torch.Tensor) else list(sub)
        for counter, i in enumerate(idx_list):
            self.dim = None
            self._frame = CondIndepStackFrame(self.name, None, 1, counter, self.size)
            _STACK.append(self)
            try:
                yield i
            finally:
                super().__exit__(None, None, None)
                self._frame = None

    def __len__(self) -> int:
        if self.size < 0:
            raise TypeError(f"plate '{self.name}' has no size (any size, set by broadcasting)")
        return self.subsample_size

    # ---- message processing --------------------------------------------------------------
    def _pyro_param(self, msg: Message) -> None:
        msg.cond_indep_stack = (self._frame,) + msg.cond_indep_stack

    def _pyro_sample(self, msg: Message) -> None:
        frame = self._frame
        msg.cond_indep_stack = (frame,) + msg.cond_indep_stack
        if self._scale != 1.0:
            s = msg.scale
            msg.scale = self._scale if (type(s) is float and s == 1.0) else s * self._scale
        dim = frame.dim
        size = frame.size
        if dim is None or size < 0:
            return
        fn = msg.fn
        batch_shape = getattr(fn, "batch_shape", None)
        if batch_shape is None:
            return
        nd = len(batch_shape)
        if -dim > nd:
            new = [1] * (-dim - nd) + list(batch_shape)
            new[dim] = size
            msg.fn = fn.expand(torch.Size(new))
        else:
            cur = batch_shape[dim]
            if cur != size:
                if cur != 1:
                    raise ValueError(
                        f"Shape mismatch inside plate('{self.name}') at site '{msg.name}', dim {dim}: the distribution "
                        f"{type(fn).__name__} has batch_shape {_shape(batch_shape)}, so size {cur} at dim {dim}, but the "
                        f"plate has size {size}. Make the distribution's parameters size {size} (or 1) along dim {dim}, "
                        f"or use .to_event() for dims that belong to one event."
                    )
                new = list(batch_shape)
                new[dim] = size
                msg.fn = fn.expand(torch.Size(new))

    def _pyro_post_sample(self, msg: Message) -> None:
        frame = self._frame
        dim = frame.dim if frame is not None else None
        if dim is None or frame.size < 0:
            return
        v = msg.value
        if not isinstance(v, torch.Tensor):
            return
        fn = msg.fn
        event_shape = getattr(fn, "event_shape", ())
        batch_dims = v.dim() - len(event_shape)
        if -dim <= batch_dims:
            cur = v.shape[dim - len(event_shape)]
            if cur != 1 and cur != self.subsample_size and not msg.is_observed:
                raise ValueError(
                    f"Plate size clash at site '{msg.name}': plate '{self.name}' has size {self.subsample_size} in the model "
                    f"but {cur} in the guide (the value given to the site, e.g. replayed from the guide, has shape "
                    f"{_shape(v.shape)}, so size {cur} at plate dim {dim}). Model and guide must use the same plate sizes "
                    f"and subsample sizes."
                )
            if cur != 1 and cur != self.subsample_size:
                raise ValueError(
                    f"Shape mismatch inside plate('{self.name}') at observed site '{msg.name}': the observed value has "
                    f"shape {_shape(v.shape)} (batch {_shape(v.shape[:batch_dims])}, event {_shape(event_shape)}), so size "
                    f"{cur} at plate dim {dim}, but the plate has size {self.subsample_size}. "
                    f"(The distribution {type(fn).__name__} has batch_shape {_shape(fn.batch_shape)}.)"
                    + (" If you subsample, index the data with the plate's indices: `with plate(...) as idx: obs=data[idx]`." if self.subsample_size != self.size else "")
                )
            if cur == 1 and self.subsample_size > 1 and msg.is_observed and is_validation_enabled() and not msg.infer.get("_deterministic", False):
                warnings.warn(
                    f"Observed site '{msg.name}' has size 1 along dim {dim} of plate('{self.name}') of size "
                    f"{self.subsample_size} (value shape {_shape(v.shape)}): the one datum is counted "
                    f"{self.subsample_size} times. Give the observation the plate's size along that dim, or move "
                    f"the site out of the plate.",
                    UserWarning,
                    stacklevel=4,
                )


def _check_indices(name: str, size: int, subsample: Any, device: Any) -> torch.Tensor:
    """Explicit subsample indices: integers in [0, size), one dim."""
    if not isinstance(subsample, torch.Tensor):
        subsample = torch.as_tensor(subsample, device=device)
    if subsample.dim() != 1:
        raise ValueError(f"plate '{name}': subsample must be a 1-d tensor of indices; got shape {_shape(subsample.shape)}")
    if subsample.is_floating_point() or subsample.dtype == torch.bool:
        raise ValueError(f"plate '{name}': subsample indices must be integers; got dtype {subsample.dtype}")
    # (a value check, under validation: a recorded graph reads no tensor values)
    if is_validation_enabled() and subsample.numel() and size and bool(((subsample < 0) | (subsample >= size)).any()):
        bad = subsample[(subsample < 0) | (subsample >= size)][:5].tolist()
        raise ValueError(f"plate '{name}' of size {size}: subsample indices must lie in [0, {size - 1}]; got {bad}")
    return subsample


def plate(
    name: str,
    size: int | None = None,
    subsample_size: int | None = None,
    subsample: torch.Tensor | None = None,
    dim: int | None = None,
    use_cuda: bool | None = None,
    device: Any = None,
) -> PlateMessenger:
    """A plate named ``name`` (see :class:`PlateMessenger`): ``with plate("data", N) as idx:`` gives
    ``idx`` of shape ``(subsample_size,)`` and puts a dim of that size at ``dim`` in the batch
    shape of every sample site inside."""
    return PlateMessenger(name, size, subsample_size, subsample, dim, use_cuda, device)
