"""Monotonic rational splines on ``[-bound, bound]`` (identity outside), elementwise
(:class:`Spline`), with coupling (:class:`SplineCoupling`) and autoregressive
(:class:`SplineAutoregressive`) conditioners.

``order="quadratic"``: rational-quadratic splines (Durkan et al. 2019). ``order="linear"``
(Pyro's default): linear-rational splines (Dolatabadi et al. 2020), each bin split at a
learned ``lambda`` into two linear-rational pieces. Both are monotone with the learned
derivatives at the interior knots and ``1 - 1e-3`` at ``±bound`` (Pyro's value).

Parameter layout (per transformed dim, ``K = count_bins``): widths ``[K]``, heights ``[K]``,
derivatives ``[K - 1]`` (interior knots), lambdas ``[K]`` (linear order only)."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import constraints

from ember.distributions.transforms.torch_transform import ConditionalTransformModule, TransformModule, _LogDetCache
from ember.nn.auto_reg_nn import AutoRegressiveNN, ConditionalAutoRegressiveNN
from ember.nn.dense_nn import DenseNN

__all__ = [
    "ConditionalSpline", "ConditionalSplineAutoregressive", "Spline", "SplineAutoregressive", "SplineCoupling",
    "conditional_spline", "conditional_spline_autoregressive", "spline", "spline_autoregressive", "spline_coupling",
]

MIN_BIN_WIDTH = 1e-3
MIN_BIN_HEIGHT = 1e-3
MIN_DERIVATIVE = 1e-3
MIN_LAMBDA = 0.025


def _knots(unnormalized: torch.Tensor, bound: float, min_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(bin sizes ``[..., K]``, knot positions ``[..., K+1]`` from ``-bound`` to ``bound``)."""
    K = unnormalized.size(-1)
    sizes = min_size + (1 - min_size * K) * torch.softmax(unnormalized, -1)
    cum = F.pad(torch.cumsum(sizes, -1), (1, 0))
    cum = 2 * bound * cum - bound
    cum = torch.cat([cum[..., :1].new_full(cum[..., :1].shape, -bound), cum[..., 1:-1], cum[..., -1:].new_full(cum[..., :1].shape, bound)], -1)
    return cum[..., 1:] - cum[..., :-1], cum


def _gather(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return t.gather(-1, idx.unsqueeze(-1)).squeeze(-1)


def rational_spline(
    x: torch.Tensor, widths: torch.Tensor, heights: torch.Tensor, derivatives: torch.Tensor, lambdas: torch.Tensor | None,
    *, bound: float = 3.0, inverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluate the monotone spline (or its inverse) elementwise. ``x``: ``[...]``;
    unnormalized ``widths``/``heights``: ``[..., K]``, ``derivatives``: ``[..., K-1]``,
    ``lambdas``: ``[..., K]`` or None for the rational-quadratic order (all broadcast with
    ``x``). Returns (output ``[...]``, ``log|dy/dx|`` ``[...]``; for the inverse, ``log|dx/dy|``)."""
    inside = (x >= -bound) & (x <= bound)
    xc = x.clamp(-bound, bound)
    w, cw = _knots(widths, bound, MIN_BIN_WIDTH)
    h, ch = _knots(heights, bound, MIN_BIN_HEIGHT)
    d_int = MIN_DERIVATIVE + F.softplus(derivatives)
    # the derivative at ±bound: 1 - MIN_DERIVATIVE, as in Pyro (and the reference implementation it
    # follows), so that trained parameters give the same function; the identity tails have slope 1
    ones = d_int.new_full(d_int.shape[:-1] + (1,), 1.0 - MIN_DERIVATIVE)
    d = torch.cat([ones, d_int, ones], -1)
    shape = torch.broadcast_shapes(xc.shape, w.shape[:-1])
    xc = xc.expand(shape)
    # the bin: how many interior knots lie at or below the value (no copy of the expanded knots)
    inner = (ch if inverse else cw)[..., 1:-1].detach()
    idx = (xc.detach().unsqueeze(-1) >= inner).sum(-1)
    bw, bh = _gather(w.expand(shape + w.shape[-1:]), idx), _gather(h.expand(shape + h.shape[-1:]), idx)
    x0, y0 = _gather(cw.expand(shape + cw.shape[-1:]), idx), _gather(ch.expand(shape + ch.shape[-1:]), idx)
    dk = _gather(d.expand(shape + d.shape[-1:]), idx)
    dk1 = _gather(d.expand(shape + d.shape[-1:]), idx + 1)
    s = bh / bw
    if lambdas is None:
        out, logdet = _rq(xc, x0, y0, bw, bh, s, dk, dk1, inverse)
    else:
        lam = MIN_LAMBDA + (1 - 2 * MIN_LAMBDA) * torch.sigmoid(lambdas)
        lam = _gather(lam.expand(shape + lam.shape[-1:]), idx)
        out, logdet = _lr(xc, x0, y0, bw, bh, s, dk, dk1, lam, inverse)
    out = torch.where(inside, out, x)
    logdet = torch.where(inside, logdet, torch.zeros_like(logdet))
    return out, logdet


def _rq(x, x0, y0, w, h, s, dk, dk1, inverse):
    """Rational-quadratic bin (Durkan et al. 2019, eqs. 4-8)."""
    c = dk1 + dk - 2 * s
    if not inverse:
        xi = (x - x0) / w
        t = xi * (1 - xi)
        den = s + c * t
        y = y0 + h * (s * xi.pow(2) + dk * t) / den
        dnum = s.pow(2) * (dk1 * xi.pow(2) + 2 * s * t + dk * (1 - xi).pow(2))
        return y, torch.log(dnum) - 2 * torch.log(den)
    dy = x - y0
    a = h * (s - dk) + dy * c
    b = h * dk - dy * c
    cc = -s * dy
    disc = (b.pow(2) - 4 * a * cc).clamp_min(0)
    xi = (2 * cc) / (-b - torch.sqrt(disc))
    t = xi * (1 - xi)
    den = s + c * t
    dnum = s.pow(2) * (dk1 * xi.pow(2) + 2 * s * t + dk * (1 - xi).pow(2))
    return x0 + xi * w, -(torch.log(dnum) - 2 * torch.log(den))


def _lr(x, x0, y0, w, h, s, dk, dk1, lam, inverse):
    """Linear-rational bin (Dolatabadi et al. 2020): two linear-rational pieces meeting at
    ``theta = lambda`` with value ``yc``; weights ``wa = 1``, ``wb = sqrt(dk / dk1)`` and
    ``wc`` set so that the derivatives at the knots are ``dk`` and ``dk1``."""
    ya, yb = y0, y0 + h
    wa = torch.ones_like(dk)
    wb = torch.sqrt(dk / dk1)
    wc = (lam * dk + (1 - lam) * wb * dk1) / s
    yc = ((1 - lam) * wa * ya + lam * wb * yb) / ((1 - lam) * wa + lam * wb)
    if not inverse:
        theta = (x - x0) / w
        m = (theta <= lam).to(x.dtype)  # 1 on the left piece; blending by arithmetic is cheaper than where in autograd
        num = m * (wa * ya * (lam - theta) + wc * yc * theta) + (1 - m) * (wc * yc * (1 - theta) + wb * yb * (theta - lam))
        den = m * (wa * (lam - theta) + wc * theta) + (1 - m) * (wc * (1 - theta) + wb * (theta - lam))
        dnum = m * (wa * wc * lam * (yc - ya)) + (1 - m) * (wb * wc * (1 - lam) * (yb - yc))
        return num / den, torch.log(dnum) - 2 * torch.log(den.abs()) - torch.log(w)
    m = (x <= yc).to(x.dtype)
    num = m * (lam * wa * (ya - x)) + (1 - m) * ((wc - lam * wb) * x + lam * wb * yb - wc * yc)
    den = m * ((wc - wa) * x + wa * ya - wc * yc) + (1 - m) * ((wc - wb) * x + wb * yb - wc * yc)
    theta = num / den
    # dx/dy = w / (dy/dtheta) with dy/dtheta at theta
    dnum = m * (wa * wc * lam * (yc - ya)) + (1 - m) * (wb * wc * (1 - lam) * (yb - yc))
    den_f = m * (wa * (lam - theta) + wc * theta) + (1 - m) * (wc * (1 - theta) + wb * (theta - lam))
    return x0 + theta * w, -(torch.log(dnum) - 2 * torch.log(den_f.abs()) - torch.log(w))


class _SplineParams:
    """Splitting of a flat parameter vector into the spline's pieces."""

    @staticmethod
    def count(count_bins: int, order: str) -> list[int]:
        if order not in ("linear", "quadratic"):
            raise ValueError(f"spline order must be 'linear' or 'quadratic'; got order={order!r}")
        return [count_bins, count_bins, count_bins - 1] + ([count_bins] if order == "linear" else [])


class Spline(_LogDetCache, TransformModule):
    """An elementwise monotone spline on ``input_dim`` independent coordinates with its own
    learnable knots per coordinate (``event_dim = 0``: ``log_abs_det_jacobian`` is elementwise)."""

    domain = constraints.real
    codomain = constraints.real
    bijective = True

    def __init__(self, input_dim: int, count_bins: int = 8, bound: float = 3.0, order: str = "linear") -> None:
        super().__init__(cache_size=1)
        _SplineParams.count(count_bins, order)
        self.input_dim, self.count_bins, self.bound, self.order = input_dim, count_bins, bound, order
        self.unnormalized_widths = nn.Parameter(torch.randn(input_dim, count_bins))
        self.unnormalized_heights = nn.Parameter(torch.randn(input_dim, count_bins))
        self.unnormalized_derivatives = nn.Parameter(torch.randn(input_dim, count_bins - 1))
        self.unnormalized_lambdas = nn.Parameter(torch.rand(input_dim, count_bins)) if order == "linear" else None

    def _params(self) -> tuple:
        return self.unnormalized_widths, self.unnormalized_heights, self.unnormalized_derivatives, self.unnormalized_lambdas

    def _spline(self, v: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        w, h, d, lam = self._params()
        return rational_spline(v, w, h, d, lam, bound=self.bound, inverse=inverse)

    def _with_logdet(self, v: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return self._spline(v, inverse)


class _NetSpline(Spline):
    """A spline whose parameters come from a function of the input (coupling/autoregressive)."""

    def __init__(self, count_bins: int, bound: float, order: str) -> None:
        TransformModule.__init__(self, cache_size=1)
        _SplineParams.count(count_bins, order)
        self.count_bins, self.bound, self.order = count_bins, bound, order
        self._cache_logdet = None


class ConditionalSpline(ConditionalTransformModule):
    """An elementwise spline whose parameters are ``nn(context)``: a ``DenseNN`` with
    ``param_dims = [D*K, D*K, D*(K-1)(, D*K)]``."""

    domain = constraints.real
    codomain = constraints.real
    bijective = True

    def __init__(self, nn: Any, input_dim: int, count_bins: int, bound: float = 3.0, order: str = "linear") -> None:
        super().__init__()
        _SplineParams.count(count_bins, order)
        self.nn, self.input_dim, self.count_bins, self.bound, self.order = nn, input_dim, count_bins, bound, order

    def condition(self, context: torch.Tensor) -> Spline:
        params = self.nn(context)
        D, K = self.input_dim, self.count_bins
        sizes = _SplineParams.count(K, self.order)
        pieces = [p.reshape(p.shape[:-1] + (D, k)) for p, k in zip(params, sizes)]
        t = _NetSpline(K, self.bound, self.order)
        lam = pieces[3] if self.order == "linear" else None
        t._params = lambda: (pieces[0], pieces[1], pieces[2], lam)  # type: ignore[method-assign]
        return t


class SplineCoupling(_LogDetCache, TransformModule):
    """Keeps ``x[..., :split_dim]`` and applies a spline to the rest (``x[..., split_dim:]``)
    whose parameters are ``hypernet(x[..., :split_dim])``. With ``identity=True`` the first
    part is kept as is; otherwise it goes through its own learnable elementwise spline.
    ``log|det J|`` is summed over the event (``[..., D]`` -> ``[...]``)."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, input_dim: int, split_dim: int, hypernet: Any, count_bins: int = 8, bound: float = 3.0,
                 order: str = "linear", identity: bool = False) -> None:
        super().__init__(cache_size=1)
        if not 0 < split_dim < input_dim:
            raise ValueError(f"SplineCoupling: split_dim must be in 1..input_dim-1 = {input_dim - 1}; got {split_dim}")
        _SplineParams.count(count_bins, order)
        self.input_dim, self.split_dim = input_dim, split_dim
        self.count_bins, self.bound, self.order = count_bins, bound, order
        self.lower_spline = None if identity else Spline(split_dim, count_bins, bound, order)
        # the hypernetwork lives at upper_spline.nn (Pyro's state_dict layout)
        self.upper_spline = ConditionalSpline(hypernet, input_dim - split_dim, count_bins, bound, order)

    def _upper_params(self, x1: torch.Tensor, context: torch.Tensor | None = None) -> tuple:
        net = self.upper_spline.nn
        params = net(x1) if context is None else net(x1, context=context)
        D, K = self.input_dim - self.split_dim, self.count_bins
        sizes = _SplineParams.count(K, self.order)
        pieces = [p.reshape(p.shape[:-1] + (D, k)) for p, k in zip(params, sizes)]
        return pieces[0], pieces[1], pieces[2], (pieces[3] if self.order == "linear" else None)

    def _transform(self, v: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        v1, v2 = v[..., : self.split_dim], v[..., self.split_dim :]
        if self.lower_spline is None:
            u1, ld1 = v1, v1.new_zeros(())
        else:
            u1, ld1 = self.lower_spline._spline(v1, inverse)
            ld1 = ld1.sum(-1)
        x1 = u1 if inverse else v1  # the conditioner always reads the untransformed lower half
        w, h, d, lam = self._upper_params(x1)
        u2, ld2 = rational_spline(v2, w, h, d, lam, bound=self.bound, inverse=inverse)
        return torch.cat([u1, u2], -1), ld1 + ld2.sum(-1)

    def _with_logdet(self, v: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return self._transform(v, inverse)


class SplineAutoregressive(TransformModule):
    """An autoregressive spline: the spline of coordinate ``j`` has parameters from
    ``autoregressive_nn(x)`` (``param_dims = [K, K, K-1(, K)]``, each ``[..., K_p, D]``), so it
    depends only on coordinates before ``j``. Forward is one pass, the inverse ``D`` passes.
    ``log|det J|`` is summed over the event."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    autoregressive = True

    def __init__(self, input_dim: int, autoregressive_nn: Any, count_bins: int = 8, bound: float = 3.0, order: str = "linear") -> None:
        super().__init__(cache_size=1)
        _SplineParams.count(count_bins, order)
        self.input_dim, self.arn = input_dim, autoregressive_nn
        self.count_bins, self.bound, self.order = count_bins, bound, order
        if isinstance(autoregressive_nn, nn.Module):  # the same network also at spline.nn (Pyro's state_dict layout)
            self.spline = ConditionalSpline(autoregressive_nn, input_dim, count_bins, bound, order)
        self._cache_logdet: tuple[torch.Tensor, torch.Tensor] | None = None

    def _spline_at(self, cond: torch.Tensor, v: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        params = [p.transpose(-1, -2) for p in self.arn(cond)]  # each [..., D, K_p]
        lam = params[3] if self.order == "linear" else None
        return rational_spline(v, params[0], params[1], params[2], lam, bound=self.bound, inverse=inverse)

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        y, ld = self._spline_at(x, x, False)
        ld = ld.sum(-1)
        self._cache_logdet = (x, ld)
        return y

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        perm = self.arn.get_permutation() if hasattr(self.arn, "get_permutation") else self.arn.permutation
        x = torch.zeros_like(y)
        for idx in perm.tolist():
            xi, _ = self._spline_at(x, y, True)
            x = x.clone()
            x[..., idx] = xi[..., idx]
        return x

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``log|det dy/dx|`` for ``x`` and ``y = self(x)`` of shape ``batch_shape + (D,)``: one value per vector, of shape ``batch_shape``."""
        c = self._cache_logdet
        if c is not None and c[0] is x:
            return c[1]
        return self._spline_at(x, x, False)[1].sum(-1)


class ConditionalSplineAutoregressive(ConditionalTransformModule):
    """:class:`SplineAutoregressive` whose network also reads a context."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    event_dim = 1

    def __init__(self, input_dim: int, autoregressive_nn: ConditionalAutoRegressiveNN, **kwargs: Any) -> None:
        super().__init__()
        self.input_dim, self.nn, self.kwargs = input_dim, autoregressive_nn, kwargs

    def condition(self, context: torch.Tensor) -> SplineAutoregressive:
        cond_nn = partial(self.nn, context=context)
        cond_nn.permutation = self.nn.permutation  # type: ignore[attr-defined]
        cond_nn.get_permutation = self.nn.get_permutation  # type: ignore[attr-defined]
        return SplineAutoregressive(self.input_dim, cond_nn, **self.kwargs)


def spline(input_dim: int, **kwargs: Any) -> Spline:
    """An elementwise :class:`Spline` (``count_bins=8, bound=3.0, order='linear'``)."""
    return Spline(input_dim, **kwargs)


def spline_coupling(input_dim: int, split_dim: int | None = None, hidden_dims: list[int] | None = None, count_bins: int = 8,
                    bound: float = 3.0) -> SplineCoupling:
    """A :class:`SplineCoupling` (linear order) with a ``DenseNN`` hypernetwork of ``hidden_dims``
    (default ``[input_dim * 10, input_dim * 10]``) on the first ``split_dim`` (default ``input_dim // 2``) dims."""
    split_dim = input_dim // 2 if split_dim is None else split_dim
    hidden = [input_dim * 10, input_dim * 10] if hidden_dims is None else list(hidden_dims)
    D = input_dim - split_dim
    net = DenseNN(split_dim, hidden, [D * count_bins, D * count_bins, D * (count_bins - 1), D * count_bins])
    return SplineCoupling(input_dim, split_dim, net, count_bins, bound)


def spline_autoregressive(input_dim: int, hidden_dims: list[int] | None = None, count_bins: int = 8, bound: float = 3.0,
                          order: str = "linear") -> SplineAutoregressive:
    """A :class:`SplineAutoregressive` with a MADE network (default hidden ``[input_dim * 10, input_dim * 10]``)."""
    hidden = [input_dim * 10, input_dim * 10] if hidden_dims is None else list(hidden_dims)
    arn = AutoRegressiveNN(input_dim, hidden, param_dims=_SplineParams.count(count_bins, order))
    return SplineAutoregressive(input_dim, arn, count_bins=count_bins, bound=bound, order=order)


def conditional_spline(input_dim: int, context_dim: int, hidden_dims: list[int] | None = None, count_bins: int = 8,
                       bound: float = 3.0, order: str = "linear") -> ConditionalSpline:
    """A :class:`ConditionalSpline` with a ``DenseNN`` from the context (default hidden ``[input_dim * 10, input_dim * 10]``)."""
    hidden = [input_dim * 10, input_dim * 10] if hidden_dims is None else list(hidden_dims)
    sizes = [input_dim * k for k in _SplineParams.count(count_bins, order)]
    return ConditionalSpline(DenseNN(context_dim, hidden, sizes), input_dim, count_bins, bound, order)


def conditional_spline_autoregressive(input_dim: int, context_dim: int, hidden_dims: list[int] | None = None, count_bins: int = 8,
                                      bound: float = 3.0, order: str = "linear") -> ConditionalSplineAutoregressive:
    """A :class:`ConditionalSplineAutoregressive` with a conditional MADE network."""
    hidden = [input_dim * 10, input_dim * 10] if hidden_dims is None else list(hidden_dims)
    arn = ConditionalAutoRegressiveNN(input_dim, context_dim, hidden, param_dims=_SplineParams.count(count_bins, order))
    return ConditionalSplineAutoregressive(input_dim, arn, count_bins=count_bins, bound=bound, order=order)


