"""Stein variational gradient descent (SVGD): ``num_particles`` point estimates of a model's
continuous latents, moved together so that they approximate the posterior.

Each step moves particle ``x_n`` (the vector of every latent's unconstrained value) along

    phi(x_n) = 1/N * sum_m [ k(x_m, x_n) * grad log p(x_m) + grad_{x_m} k(x_m, x_n) ]

(the first term pulls the particles towards high density, the second keeps them apart), by
handing ``-phi`` to the optimizer as the gradient of the particles. ``log p`` is the model's
joint log-density in unconstrained space (the log-Jacobian of each latent's ``biject_to``
included). Liu & Wang (2016), "Stein Variational Gradient Descent: A General Purpose
Bayesian Inference Algorithm"; the ``univariate`` mode uses one kernel per coordinate
(Singhal et al., "Kernelized Complete Conditional Stein Discrepancy").
"""

from __future__ import annotations

import contextlib
import math
from abc import ABCMeta, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch.distributions import biject_to

from ember import distributions as dist
from ember.distributions.util import sum_rightmost
from ember.params import get_param_store
from ember.poutine.block_messenger import BlockMessenger
from ember.poutine.plate_messenger import plate
from ember.poutine.trace_messenger import TraceMessenger
from ember.primitives import param, sample
from ember.runtime import is_deterministic, is_factor, is_observed

__all__ = ["IMQSteinKernel", "RBFSteinKernel", "SVGD", "SteinKernel"]

_PARTICLES = "svgd_particles"  # Pyro's parameter name
_PLATE = "num_particles_vectorized"  # Pyro's particle plate


def _check_bandwidth_factor(value: Any, who: str) -> Any:
    if value is not None and not (isinstance(value, (int, float)) and value > 0):
        raise ValueError(f"{who}: bandwidth_factor must be a positive number or None; got {value!r}")
    return value


class SteinKernel(metaclass=ABCMeta):
    """Base class of the kernels :class:`SVGD` uses. A kernel defines
    :meth:`log_kernel_and_grad`."""

    @abstractmethod
    def log_kernel_and_grad(self, particles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For ``particles`` of shape ``(N, D)``, a pair of tensors of shape ``(N, N, D)``: the
        log-kernel of each coordinate, entry ``(n, m, d)`` for particles ``n, m``, and the
        gradient of the kernel with respect to ``x_{m,d}`` divided by the kernel."""
        raise NotImplementedError


class _MedianBandwidth(SteinKernel):
    """The median heuristic shared by both kernels: per coordinate ``d``, the median over pairs
    ``n < m`` of ``(x_{n,d} - x_{m,d})**2``, times ``bandwidth_factor``, over ``log(N + 1)``."""

    _bandwidth_factor: float | None = None

    @property
    def bandwidth_factor(self) -> float | None:
        """The factor the median heuristic's bandwidth is scaled by (``None``: 1); may be set
        between steps."""
        return self._bandwidth_factor

    @bandwidth_factor.setter
    def bandwidth_factor(self, value: float | None) -> None:
        self._bandwidth_factor = _check_bandwidth_factor(value, type(self).__name__)

    def _bandwidth(self, norm_sq: torch.Tensor) -> torch.Tensor:
        """``norm_sq`` ``(N, N, D)`` -> bandwidth ``(D,)``."""
        n = norm_sq.size(0)
        i, j = torch.triu_indices(n, n, offset=1, device=norm_sq.device)
        med = norm_sq[i, j].median(dim=0).values  # torch's median: the lower middle value of an even count
        if self._bandwidth_factor is not None:
            med = med * self._bandwidth_factor
        return med / math.log(n + 1)

    @staticmethod
    def _diffs(particles: torch.Tensor, who: str) -> torch.Tensor:
        if particles.dim() != 2 or particles.size(0) < 2:
            raise ValueError(f"{who}.log_kernel_and_grad: particles must have shape (N, D) with N >= 2; got {tuple(particles.shape)}")
        return particles.unsqueeze(0) - particles.unsqueeze(1)  # (n, m, d): x_{m,d} - x_{n,d}


class RBFSteinKernel(_MedianBandwidth):
    """The RBF kernel ``k(x, y) = exp(-(x - y)**2 / h)`` per coordinate, with the bandwidth ``h``
    ``(D,)`` from the particles' median pairwise squared distance (see :class:`SVGD`).

    :param bandwidth_factor: scale the heuristic bandwidth by this positive number (``None``: 1).

    ``log_kernel_and_grad(particles)`` with particles ``(N, D)`` returns ``(log_kernel,
    grad)``, each ``(N, N, D)``: ``log_kernel[n, m, d] = -(x_{m,d} - x_{n,d})**2 / h_d`` and
    ``grad[n, m, d] = 2 (x_{m,d} - x_{n,d}) / h_d`` (minus the derivative of the log-kernel
    in ``x_{m,d}``: the repulsive term ``SVGD`` adds to the gradient it descends).
    """

    def __init__(self, bandwidth_factor: float | None = None) -> None:
        self.bandwidth_factor = bandwidth_factor

    @torch.no_grad()
    def log_kernel_and_grad(self, particles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See the class: ``(N, D)`` particles -> two ``(N, N, D)`` tensors."""
        delta = self._diffs(particles, "RBFSteinKernel")
        norm_sq = delta.pow(2)
        h = self._bandwidth(norm_sq)
        return -norm_sq / h, 2.0 * delta / h


class IMQSteinKernel(_MedianBandwidth):
    """The inverse multi-quadratic kernel ``k(x, y) = (alpha + (x - y)**2 / h)**beta`` per
    coordinate, with ``h`` ``(D,)`` from the median heuristic (Chen et al., "Stein Points").

    :param alpha: positive (default 0.5).
    :param beta: negative (default -0.5).
    :param bandwidth_factor: scale the heuristic bandwidth by this positive number (``None``: 1).

    ``log_kernel_and_grad(particles)`` with particles ``(N, D)`` returns two ``(N, N, D)``
    tensors: ``beta * log(alpha + (x_{m,d} - x_{n,d})**2 / h_d)`` and
    ``-2 beta (x_{m,d} - x_{n,d}) / (h_d (alpha + (x_{m,d} - x_{n,d})**2 / h_d))``.
    """

    def __init__(self, alpha: float = 0.5, beta: float = -0.5, bandwidth_factor: float | None = None) -> None:
        if not alpha > 0.0:
            raise ValueError(f"IMQSteinKernel: alpha must be positive; got {alpha!r}")
        if not beta < 0.0:
            raise ValueError(f"IMQSteinKernel: beta must be negative; got {beta!r}")
        self.alpha = alpha
        self.beta = beta
        self.bandwidth_factor = bandwidth_factor

    @torch.no_grad()
    def log_kernel_and_grad(self, particles: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See the class: ``(N, D)`` particles -> two ``(N, N, D)`` tensors."""
        delta = self._diffs(particles, "IMQSteinKernel")
        norm_sq = delta.pow(2)
        h = self._bandwidth(norm_sq)
        base = self.alpha + norm_sq / h
        return self.beta * base.log(), (-2.0 * self.beta) * delta / (h * base)


class _Site:
    __slots__ = ("name", "shape", "event_dim", "transform", "ushape", "numel", "frames")

    def __init__(self, name: str, shape: torch.Size, event_dim: int, transform: Any, frames: list) -> None:
        self.name = name
        self.shape = shape
        self.event_dim = event_dim
        self.transform = transform
        self.ushape = torch.Size(transform.inverse_shape(shape))
        self.numel = self.ushape.numel()
        self.frames = frames


class _SVGDGuide:
    """The particles as a guide: one parameter ``svgd_particles`` holding every latent's
    unconstrained value (the whole vectorized site, particle dim included) end to end, sampled as
    the auxiliary site ``__SVGDGuide_latent`` (as Pyro names it) and unpacked into a ``Delta`` per
    latent site, inside the site's plates."""

    def __init__(self, model: Callable, num_particles: int, max_plate_nesting: int) -> None:
        self.model = model
        self.num_particles = num_particles
        self.max_plate_nesting = max_plate_nesting
        self.sites: list[_Site] | None = None
        self._init: torch.Tensor | None = None

    def setup(self, args: tuple, kwargs: dict) -> None:
        with torch.no_grad(), BlockMessenger():
            tr = TraceMessenger(self.model).get_trace(*args, **kwargs)
        sites, init = [], []
        n, nesting = self.num_particles, self.max_plate_nesting
        for name, s in tr.nodes.items():
            if s.type != "sample" or is_observed(s) or is_deterministic(s) or is_factor(s) or name == _PLATE:
                continue
            if (s.infer or {}).get("_do_not_trace") or (s.infer or {}).get("is_auxiliary"):
                continue
            fn = s.fn
            support = getattr(fn, "support", None)
            if support is None or getattr(support, "is_discrete", False):
                raise ValueError(
                    f"SVGD: latent site '{name}' ({type(fn).__name__}, support {support}) is discrete; SVGD moves continuous "
                    f"particles only: marginalize it out, observe it, or use another method"
                )
            event_dim = len(fn.event_shape)
            value = s.value
            batch = value.shape[: value.dim() - event_dim]
            frames = [f for f in s.cond_indep_stack if f.dim is not None]
            for f in frames:
                if f.full_size is not None and f.full_size != f.size:
                    raise ValueError(f"SVGD: latent site '{name}' is in plate '{f.name}', which subsamples; SVGD needs full plates")
            if len(batch) != nesting + 1 or batch[0] != n:
                raise ValueError(
                    f"SVGD: latent site '{name}' has batch shape {tuple(batch)} inside the particle plate of size {n} at dim "
                    f"{-nesting - 1}; expected {nesting + 1} batch dims with {n} leftmost. Is max_plate_nesting={nesting} "
                    f"the model's deepest plate nesting, and is the model vectorized over its batch dims?"
                )
            transform = biject_to(support)
            site = _Site(name, value.shape, event_dim, transform, frames)
            sites.append(site)
            init.append(transform.inv(value).detach().reshape(-1))
        if not sites:
            raise ValueError("SVGD: the model has no latent sample sites")
        self.sites = sites
        dtype = init[0].dtype
        for t in init[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        self._init = torch.cat([t.to(dtype) for t in init])

    def unpack(self, flat: torch.Tensor) -> list[tuple[_Site, torch.Tensor]]:
        """``(site, unconstrained value of the site's unconstrained shape)`` from the flat vector."""
        out, offset = [], 0
        for s in self.sites:
            out.append((s, flat[offset: offset + s.numel].reshape(s.ushape)))
            offset += s.numel
        return out

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        if self.sites is None:
            self.setup(args, kwargs)
        particles = param(_PARTICLES, lambda: self._init.clone())
        z = sample("__SVGDGuide_latent", dist.Delta(particles, event_dim=1), infer={"is_auxiliary": True})
        out = {}
        plates: dict = {}  # one plate object per name for the whole run, entered by every site in it
        for s, u in self.unpack(z):
            value = s.transform(u)
            lad = s.transform.log_abs_det_jacobian(u, value)
            log_density = -sum_rightmost(lad, lad.dim() - (value.dim() - s.event_dim))
            with contextlib.ExitStack() as stack:
                for f in sorted(s.frames, key=lambda f: -f.dim):
                    if f.name not in plates:
                        plates[f.name] = plate(f.name, f.full_size or f.size, dim=f.dim)
                    stack.enter_context(plates[f.name])
                out[s.name] = sample(s.name, dist.Delta(value, log_density=log_density, event_dim=s.event_dim))
        return out


def _vectorize(model: Callable, num_particles: int, max_plate_nesting: int) -> Callable:
    def vectorized(*args: Any, **kwargs: Any) -> Any:
        with plate(_PLATE, num_particles, dim=-max_plate_nesting - 1):
            return model(*args, **kwargs)

    return vectorized


class SVGD:
    """Stein variational gradient descent (Liu & Wang, 2016) with ``num_particles`` particles.

    :param model: the model; vectorized over its plates, with continuous latents only (a
        discrete latent raises naming the site). It runs inside a plate
        ``num_particles_vectorized`` of size ``N = num_particles`` at dim
        ``-max_plate_nesting - 1``.
    :param kernel: a :class:`SteinKernel` (:class:`RBFSteinKernel`, :class:`IMQSteinKernel`).
    :param optim: an ``ember.optim`` optimizer (``ember.optim.Adam({"lr": 0.1})``).
    :param num_particles: ``N >= 2``.
    :param max_plate_nesting: the model's deepest plate nesting (``>= 0``).
    :param mode: ``"univariate"`` (default): a kernel per coordinate ``d``, ``k_d(x_m, x_n)``;
        ``"multivariate"``: one kernel, the product over coordinates.

    The particles live in the parameter ``svgd_particles``, a flat vector of length
    ``sum(site.numel)`` holding each latent's unconstrained vectorized value (shape
    ``(N, 1, ..., *site_shape)``) end to end, in the model's site order, as in Pyro; they
    start from a draw of the prior. ``step(*args, **kwargs)`` takes one step: with ``X``
    ``(N, D)`` (row ``n``: particle ``n``'s coordinates over all sites) and ``G`` ``(N, D)`` the
    gradient of ``-log p`` in unconstrained space, the particles' gradient is
    ``(K @ G + R) / N`` (multivariate: ``K[n, m] = exp(sum_d log_kernel[n, m, d])``,
    ``R[n] = sum_m K[n, m] grad[n, m]``; univariate: the same per coordinate), and the optimizer
    steps every parameter the model and guide touched. It returns ``{site: float}``, the mean
    square of that gradient over each site's entries (a convergence monitor), as Pyro does.
    ``get_named_particles()`` gives ``{site: tensor}`` on the site's support, each of the
    vectorized site's shape ``(N, 1, ..., *site_shape)`` (Pyro's shapes).

    Unlike Pyro, which reshapes the flat vector to ``(N, D)`` directly and so mixes up particles
    when the model has more than one latent site, each site's block is read per particle.
    """

    def __init__(
        self,
        model: Callable,
        kernel: SteinKernel,
        optim: Any,
        num_particles: int,
        max_plate_nesting: int,
        mode: str = "univariate",
    ) -> None:
        from ember.optim.optim import PyroOptim

        if not callable(model):
            raise TypeError(f"SVGD: model must be callable; got {type(model).__name__}")
        if not isinstance(kernel, SteinKernel):
            raise TypeError(f"SVGD: kernel must be a SteinKernel (RBFSteinKernel(), IMQSteinKernel()); got {kernel!r}")
        if not isinstance(optim, PyroOptim):
            raise TypeError(f"SVGD: optim must be an ember.optim optimizer (e.g. ember.optim.Adam({{'lr': 0.1}})); got {optim!r}")
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 2:
            raise ValueError(f"SVGD: num_particles must be an integer >= 2; got {num_particles!r}")
        if isinstance(max_plate_nesting, bool) or not isinstance(max_plate_nesting, int) or max_plate_nesting < 0:
            raise ValueError(f"SVGD: max_plate_nesting must be an integer >= 0; got {max_plate_nesting!r}")
        if mode not in ("univariate", "multivariate"):
            raise ValueError(f"SVGD: mode must be 'univariate' or 'multivariate'; got {mode!r}")
        from ember.infer.trace_elbo import Trace_ELBO

        self.model = _vectorize(model, num_particles, max_plate_nesting)
        self.kernel = kernel
        self.optim = optim
        self.num_particles = num_particles
        self.max_plate_nesting = max_plate_nesting
        self.mode = mode
        self.loss = Trace_ELBO().differentiable_loss
        self.guide = _SVGDGuide(self.model, num_particles, max_plate_nesting)

    def get_named_particles(self) -> dict[str, torch.Tensor]:
        """``{site: particles}``, each on the site's support with the vectorized site's shape
        ``(N, 1, ..., *site_shape)`` (``N`` = ``num_particles`` leftmost)."""
        if self.guide.sites is None:
            raise RuntimeError("SVGD.get_named_particles: take a step first (the particles are made on the first step)")
        flat = get_param_store()[_PARTICLES]
        return {s.name: s.transform(u) for s, u in self.guide.unpack(flat)}

    def _matrix(self, flat: torch.Tensor) -> torch.Tensor:
        """The flat vector (site-major) -> ``(N, D)``, row ``n`` particle ``n``."""
        n = self.num_particles
        return torch.cat([u.reshape(n, -1) for _, u in self.guide.unpack(flat)], dim=-1)

    def _flat(self, matrix: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_matrix`."""
        parts, col = [], 0
        for s in self.guide.sites:
            k = s.numel // self.num_particles
            parts.append(matrix[:, col: col + k].reshape(-1))
            col += k
        return torch.cat(parts)

    def _phi_grad(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The gradient handed to the optimizer, ``(N, D)``, for particles ``x`` and gradients of
        ``-log p`` ``g``, both ``(N, D)``."""
        log_kernel, kernel_grad = self.kernel.log_kernel_and_grad(x)
        if self.mode == "multivariate":
            k = log_kernel.sum(-1).exp()  # (N, N)
            attractive = k @ g
            repulsive = (k.unsqueeze(-1) * kernel_grad).sum(1)
        else:
            k = log_kernel.exp()  # (N, N, D)
            attractive = (k * g.unsqueeze(0)).sum(1)
            repulsive = (k * kernel_grad).sum(1)
        return (attractive + repulsive) / self.num_particles

    @torch.no_grad()
    def step(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """One SVGD step (arguments go to the model); returns ``{site: mean squared gradient}``."""
        from ember.infer.util import trace_params

        with torch.enable_grad(), TraceMessenger(param_only=True) as capture:
            loss = self.loss(self.model, self.guide, *args, **kwargs)
            loss.backward()
        touched = trace_params(capture.trace)
        params = list(touched.values())
        particles = touched[_PARTICLES]
        try:
            grad = particles.grad if particles.grad is not None else torch.zeros_like(particles)
            new_grad = self._flat(self._phi_grad(self._matrix(particles.detach()), self._matrix(grad)))
            particles.grad = new_grad.reshape(particles.shape)
            squared = {s.name: u.pow(2).mean().item() for s, u in self.guide.unpack(particles.grad)}
            self.optim(params)
        finally:
            for p in params:
                p.grad = None
        return squared
