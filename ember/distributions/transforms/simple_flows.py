"""Smaller flows with Pyro's names: Planar and Radial (Rezende & Mohamed 2015),
Householder and Sylvester (van den Berg et al. 2018), BatchNorm (Dinh et al. 2017) and
NeuralAutoregressive (Huang et al. 2018, deep sigmoidal flow)."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import constraints

from ember.distributions.transforms.basic import Permute
from ember.distributions.transforms.torch_transform import ConditionalTransformModule, TransformModule, _ForwardOnly
from ember.nn.auto_reg_nn import AutoRegressiveNN, ConditionalAutoRegressiveNN
from ember.nn.dense_nn import DenseNN

__all__ = [
    "ConditionalHouseholder", "ConditionalMatrixExponential", "ConditionalNeuralAutoregressive", "ConditionalRadial", "MatrixExponential",
    "Polynomial", "polynomial",
    "conditional_householder", "conditional_matrix_exponential", "conditional_neural_autoregressive", "conditional_radial", "matrix_exponential",
    "BatchNorm", "ConditionalPlanar", "Householder", "NeuralAutoregressive", "Planar", "Radial", "Sylvester",
    "batchnorm", "conditional_planar", "householder", "neural_autoregressive", "permute", "planar", "radial", "sylvester",
]


def _planar(x: torch.Tensor, bias: torch.Tensor, u: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``y = x + u_hat tanh(w.x + b)`` with ``u_hat`` making it invertible; returns (y, log|det J|)."""
    wu = (w * u).sum(-1, keepdim=True)
    u_hat = u + (-1 + F.softplus(wu) - wu) * w / w.pow(2).sum(-1, keepdim=True)
    act = torch.tanh((w * x).sum(-1, keepdim=True) + bias)
    y = x + u_hat * act
    psi = (1 - act.pow(2)) * w
    return y, torch.log((1 + (u_hat * psi).sum(-1)).abs())


class Planar(_ForwardOnly, TransformModule):
    """``y = x + u tanh(w^T x + b)`` on ``[..., input_dim]`` (``u`` adjusted so that
    ``w^T u >= -1``: invertible). ``log|det J| = log|1 + u^T psi|``. Forward only (cached inverse)."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, input_dim: int) -> None:
        super().__init__(cache_size=1)
        bound = 1 / math.sqrt(input_dim)
        self.bias = nn.Parameter(torch.empty(1).uniform_(-bound, bound))
        self.u = nn.Parameter(torch.empty(input_dim).uniform_(-bound, bound))
        self.w = nn.Parameter(torch.empty(input_dim).uniform_(-bound, bound))
        self.input_dim = input_dim

    def _params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.bias, self.u, self.w

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _planar(x, *self._params())


class _ConditionalVectorFlow(ConditionalTransformModule):
    """What the conditional flows below share: a bijection of vectors whose parameters are a
    network's output; :meth:`_with_params` builds the conditioned transform without a module's
    own parameters."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    event_dim = 1

    @staticmethod
    def _with_params(cls: type, **attrs: Any) -> Any:
        t = cls.__new__(cls)
        TransformModule.__init__(t, cache_size=1)
        for k, v in attrs.items():
            setattr(t, k, v)
        return t


class ConditionalPlanar(_ConditionalVectorFlow):
    """:class:`Planar` whose ``(bias, u, w)`` are ``nn(context)`` (``param_dims = [1, D, D]``)."""


    def __init__(self, nn: Any) -> None:
        super().__init__()
        self.nn = nn

    def condition(self, context: torch.Tensor) -> Planar:
        bias, u, w = self.nn(context)
        return self._with_params(Planar, _cache_logdet=None, _params=lambda: (bias, u, w))


class Radial(_ForwardOnly, TransformModule):
    """``y = x + beta h(alpha, r) (x - x0)`` with ``r = |x - x0|``, ``h = 1/(alpha + r)``,
    ``alpha > 0`` and ``beta >= -alpha`` (invertible). Forward only (cached inverse)."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, input_dim: int) -> None:
        super().__init__(cache_size=1)
        bound = 1 / math.sqrt(input_dim)
        self.x0 = nn.Parameter(torch.empty(input_dim).uniform_(-bound, bound))
        self.alpha_prime = nn.Parameter(torch.empty(1).uniform_(-bound, bound))
        self.beta_prime = nn.Parameter(torch.empty(1).uniform_(-bound, bound))
        self.input_dim = input_dim

    def _params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.x0, self.alpha_prime, self.beta_prime

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x0, alpha_prime, beta_prime = self._params()
        alpha = F.softplus(alpha_prime)
        beta = -alpha + F.softplus(beta_prime)
        diff = x - x0
        r = diff.norm(dim=-1, keepdim=True)
        h = 1 / (alpha + r)
        bh = beta * h
        y = x + bh * diff
        h_prime = -h.pow(2)
        ld = (x.size(-1) - 1) * torch.log1p(bh) + torch.log1p(bh + beta * h_prime * r)
        return y, ld.squeeze(-1)



class Householder(TransformModule):
    """``count_transforms`` Householder reflections ``x -> (I - 2 u u^T / |u|^2) x``
    (volume preserving, ``log|det J| = 0``; exact inverse: the reflections in reverse order)."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    volume_preserving = True

    def __init__(self, input_dim: int, count_transforms: int = 1) -> None:
        super().__init__(cache_size=1)
        if count_transforms < 1:
            raise ValueError(f"Householder: count_transforms must be >= 1; got {count_transforms}")
        bound = 1 / math.sqrt(input_dim)
        self.u_unnormed = nn.Parameter(torch.empty(count_transforms, input_dim).uniform_(-bound, bound))
        self.input_dim, self.count_transforms = input_dim, count_transforms

    def _u_unnormed(self) -> torch.Tensor:
        return self.u_unnormed

    def u(self) -> torch.Tensor:
        """The unit reflection vectors, ``[count_transforms, input_dim]`` (or ``[..., count, dim]`` when conditioned)."""
        uu = self._u_unnormed()
        return uu / uu.norm(dim=-1, keepdim=True)

    def _reflect(self, x: torch.Tensor, order: range) -> torch.Tensor:
        u = self.u()
        for i in order:
            ui = u[..., i, :]
            x = x - 2 * (x * ui).sum(-1, keepdim=True) * ui
        return x

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return self._reflect(x, range(self.count_transforms))

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return self._reflect(y, range(self.count_transforms - 1, -1, -1))

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``log|det dy/dx|`` for ``x`` and ``y = self(x)`` of shape ``batch_shape + (D,)``: one value per vector, of shape ``batch_shape``."""
        return x.new_zeros(x.shape[:-1])


class Sylvester(_ForwardOnly, Householder):
    """``y = x + Q R tanh(R' Q^T x + b)`` with ``Q`` orthogonal (Householder reflections) and
    ``R``, ``R'`` upper triangular with diagonals in ``(-1, 1)`` (so ``1 + R_ii R'_ii h' > 0``:
    invertible). ``log|det J| = sum_i log|1 + R_ii R'_ii (1 - tanh^2)|``. Forward only."""

    volume_preserving = False

    def __init__(self, input_dim: int, count_transforms: int = 1) -> None:
        super().__init__(input_dim, count_transforms)
        bound = 1 / math.sqrt(input_dim)
        self.R_dense = nn.Parameter(torch.empty(input_dim, input_dim).uniform_(-bound, bound))
        self.S_dense = nn.Parameter(torch.empty(input_dim, input_dim).uniform_(-bound, bound))
        self.R_diag = nn.Parameter(torch.empty(input_dim).uniform_(-bound, bound))
        self.S_diag = nn.Parameter(torch.empty(input_dim).uniform_(-bound, bound))
        self.b = nn.Parameter(torch.empty(input_dim).uniform_(-bound, bound))
        self.register_buffer("triangular_mask", torch.triu(torch.ones(input_dim, input_dim), diagonal=1))

    def _R(self) -> tuple[torch.Tensor, torch.Tensor]:
        R = self.R_dense * self.triangular_mask + torch.diag(torch.tanh(self.R_diag))
        S = self.S_dense * self.triangular_mask + torch.diag(torch.tanh(self.S_diag))
        return R, S

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        R, S = self._R()
        qtx = self._reflect(x, range(self.count_transforms))  # Q^T x (Q symmetric product, reflections reversed below)
        pre = qtx @ S.T + self.b
        act = torch.tanh(pre)
        y = x + self._reflect(act @ R.T, range(self.count_transforms - 1, -1, -1))
        diag = (torch.diagonal(R) * torch.diagonal(S)) * (1 - act.pow(2))
        return y, torch.log1p(diag).sum(-1)



class BatchNorm(TransformModule):
    """Batch normalisation as an elementwise flow (Dinh et al. 2017), oriented as in Pyro: the
    inverse (the density-estimation direction, data ``y`` to base ``x``) normalises,
    ``x = (y - m) / sqrt(v + eps) * gamma + beta``, with the batch's mean and (unbiased) variance
    over dim 0 in training mode (updating the moving averages) and the moving averages in eval
    mode; the forward map undoes it with the moving averages. ``gamma = relu(gamma_raw) + 1e-6``.
    ``log|dy/dx| = -log gamma + log(v + eps)/2`` elementwise."""

    domain = constraints.real
    codomain = constraints.real
    bijective = True

    def __init__(self, input_dim: int, momentum: float = 0.1, epsilon: float = 1e-5) -> None:
        super().__init__()
        self.input_dim, self.momentum, self.epsilon = input_dim, momentum, epsilon
        self.gamma = nn.Parameter(torch.ones(input_dim))
        self.beta = nn.Parameter(torch.zeros(input_dim))
        self.register_buffer("moving_mean", torch.zeros(input_dim))
        self.register_buffer("moving_variance", torch.ones(input_dim))

    @property
    def constrained_gamma(self) -> torch.Tensor:
        return F.relu(self.gamma) + 1e-6

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.beta) / self.constrained_gamma * torch.sqrt(self.moving_variance + self.epsilon) + self.moving_mean

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        if self.training:
            mean, var = y.mean(0), y.var(0)
            with torch.no_grad():
                self.moving_mean.mul_(1 - self.momentum).add_(self.momentum * mean.detach())
                self.moving_variance.mul_(1 - self.momentum).add_(self.momentum * var.detach())
        else:
            mean, var = self.moving_mean, self.moving_variance
        return (y - mean) * self.constrained_gamma / torch.sqrt(var + self.epsilon) + self.beta

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``log|dy/dx|`` elementwise (``event_dim = 0``): a tensor of the shape of ``x``."""
        var = torch.var(y, dim=0, keepdim=True) if self.training else self.moving_variance
        return (-self.constrained_gamma.log() + 0.5 * torch.log(var + self.epsilon)).expand(x.shape)


class NeuralAutoregressive(_ForwardOnly, TransformModule):
    """Neural autoregressive flow (Huang et al. 2018): ``y_j = T^-1(sum_k w_jk T(a_jk x_j + b_jk))``
    with ``a > 0`` (softplus), ``w`` on the simplex (softmax over ``k``), ``(a, w, b) =
    autoregressive_nn(x)`` (``param_dims = [hidden_units] * 3``) and the monotone activation ``T``
    in ``sigmoid`` (the deep sigmoidal flow; computed in log space), ``tanh``, ``ELU`` or
    ``LeakyReLU``. Forward only (cached inverse)."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    autoregressive = True
    eps = 1e-8

    def __init__(self, autoregressive_nn: Any, hidden_units: int = 16, activation: str = "sigmoid") -> None:
        super().__init__(cache_size=1)
        from ember.distributions.transforms.elementwise import ELUTransform, LeakyReLUTransform

        activations = {"sigmoid": None, "tanh": torch.distributions.transforms.TanhTransform, "ELU": ELUTransform, "LeakyReLU": LeakyReLUTransform}
        if activation not in activations:
            raise ValueError(f"NeuralAutoregressive: activation must be one of {sorted(activations)}; got {activation!r}")
        self.arn, self.hidden_units, self.activation = autoregressive_nn, hidden_units, activation
        self.T = activations[activation]() if activations[activation] is not None else None

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a_, w_, b = self.arn(x)  # each [..., H, D], in Pyro's order (A, W, b)
        a = F.softplus(a_)
        log_w = torch.log_softmax(w_, dim=-2)
        pre = a * x.unsqueeze(-2) + b
        if self.T is None:  # sigmoid, in log space
            log_sig, log_1m_sig = F.logsigmoid(pre), F.logsigmoid(-pre)
            log_s = torch.logsumexp(log_w + log_sig, -2)  # log of sum_k w sigma  (in (0, 1))
            log_1m_s = torch.logsumexp(log_w + log_1m_sig, -2)
            y = log_s - log_1m_s
            # dy/dx = (sum_k w a sigma (1 - sigma)) / (s (1 - s))
            log_ds = torch.logsumexp(log_w + a.log() + log_sig + log_1m_sig, -2)
            return y, (log_ds - log_s - log_1m_s).sum(-1)
        T = self.T
        t_pre = T(pre)
        mix = (log_w.exp() * t_pre).sum(-2)
        y = T.inv(mix)
        log_dmix = torch.logsumexp(log_w + a.log() + T.log_abs_det_jacobian(pre, t_pre), -2)
        return y, (log_dmix - T.log_abs_det_jacobian(y, mix)).sum(-1)



class ConditionalRadial(_ConditionalVectorFlow):
    """:class:`Radial` whose ``(x0, alpha', beta')`` are ``nn(context)`` (``param_dims = [D, 1, 1]``)."""


    def __init__(self, nn: Any) -> None:
        super().__init__()
        self.nn = nn

    def condition(self, context: torch.Tensor) -> Radial:
        x0, a, b = self.nn(context)
        return self._with_params(Radial, _cache_logdet=None, _params=lambda: (x0, a, b))


class ConditionalHouseholder(_ConditionalVectorFlow):
    """:class:`Householder` whose reflection vectors are ``nn(context)`` (``param_dims = [count * D]``)."""

    volume_preserving = True

    def __init__(self, input_dim: int, nn: Any, count_transforms: int = 1) -> None:
        super().__init__()
        self.input_dim, self.nn, self.count_transforms = input_dim, nn, count_transforms

    def condition(self, context: torch.Tensor) -> Householder:
        raw = self.nn(context)
        raw = raw.reshape(raw.shape[:-1] + (self.count_transforms, self.input_dim))
        return self._with_params(Householder, input_dim=self.input_dim, count_transforms=self.count_transforms, _u_unnormed=lambda: raw)


class MatrixExponential(TransformModule):
    """``y = expm(M) x`` for a learnable square ``M`` (Hoogeboom et al. 2020): always invertible,
    ``x = expm(-M) y``, ``log|det J| = trace(M)``."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, input_dim: int) -> None:
        super().__init__(cache_size=1)
        self.input_dim = input_dim
        self.weights = nn.Parameter(torch.empty(input_dim, input_dim).uniform_(-0.1, 0.1))

    def _M(self) -> torch.Tensor:
        return self.weights

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.linalg.matrix_exp(self._M()) @ x.unsqueeze(-1)).squeeze(-1)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return (torch.linalg.matrix_exp(-self._M()) @ y.unsqueeze(-1)).squeeze(-1)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``log|det dy/dx|`` for ``x`` and ``y = self(x)`` of shape ``batch_shape + (D,)``: one value per vector, of shape ``batch_shape``."""
        tr = self._M().diagonal(dim1=-2, dim2=-1).sum(-1)
        return tr.expand(x.shape[:-1])


class ConditionalMatrixExponential(_ConditionalVectorFlow):
    """:class:`MatrixExponential` whose ``M`` is ``nn(context)`` reshaped to ``[D, D]`` (``param_dims = [D * D]``)."""


    def __init__(self, input_dim: int, nn: Any) -> None:
        super().__init__()
        self.input_dim, self.nn = input_dim, nn

    def condition(self, context: torch.Tensor) -> MatrixExponential:
        raw = self.nn(context)
        M = raw.reshape(raw.shape[:-1] + (self.input_dim, self.input_dim))
        return self._with_params(MatrixExponential, input_dim=self.input_dim, _M=lambda: M)


class ConditionalNeuralAutoregressive(_ConditionalVectorFlow):
    """:class:`NeuralAutoregressive` whose network also reads a context."""


    def __init__(self, autoregressive_nn: Any, **kwargs: Any) -> None:
        super().__init__()
        self.nn, self.kwargs = autoregressive_nn, kwargs

    def condition(self, context: torch.Tensor) -> NeuralAutoregressive:
        return NeuralAutoregressive(partial(self.nn, context=context), **self.kwargs)


class Polynomial(_ForwardOnly, TransformModule):
    """Sum-of-squares polynomial flow (Jaini et al. 2019): for each coordinate ``j``,
    ``y_j = c_j + ∫_0^{x_j} sum_k (sum_r a_kr u^r)^2 du`` with the ``count_sum`` polynomials of
    degree ``count_degree`` given by ``autoregressive_nn(x)`` (``param_dims = [(count_degree + 1) *
    count_sum]``, so ``a`` depends only on earlier coordinates). Monotone, autoregressive;
    ``log|det J| = sum_j log sum_k P_k(x_j)^2``. Forward only (cached inverse)."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    autoregressive = True

    def __init__(self, autoregressive_nn: Any, input_dim: int, count_degree: int, count_sum: int) -> None:
        super().__init__(cache_size=1)
        self.arn, self.input_dim, self.count_degree, self.count_sum = autoregressive_nn, input_dim, count_degree, count_sum
        bound = 1 / math.sqrt(input_dim)
        self.c = nn.Parameter(torch.empty(input_dim).uniform_(-bound, bound))
        powers = torch.arange(1, count_degree + 2, dtype=torch.get_default_dtype())
        power_mask = powers + torch.arange(count_degree + 1, dtype=powers.dtype).unsqueeze(-1)  # r + s + 1
        self.register_buffer("powers", powers)
        self.register_buffer("power_mask", power_mask)
        self.register_buffer("mask", power_mask.reciprocal())

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        R1, K = self.count_degree + 1, self.count_sum
        a = self.arn(x).reshape(x.shape[:-1] + (K, R1, self.input_dim))  # [..., K, R+1, D]
        coefs = (a.unsqueeze(-2) * a.unsqueeze(-3)).sum(-4)  # sum_k a_kr a_ks: [..., R+1, R+1, D]
        xu = x.unsqueeze(-2).unsqueeze(-2)  # [..., 1, 1, D]
        pm = self.power_mask.to(x).unsqueeze(-1)  # [R+1, R+1, 1]
        y = self.c + (coefs * xu.pow(pm) * self.mask.to(x).unsqueeze(-1)).sum((-3, -2))
        deriv = (coefs * xu.pow(pm - 1)).sum((-3, -2))  # sum_k P_k(x)^2
        return y, deriv.clamp_min(torch.finfo(x.dtype).tiny).log().sum(-1)



def polynomial(input_dim: int, hidden_dims: list[int] | None = None) -> Polynomial:
    """A :class:`Polynomial` flow (degree 4, sums of 3 squares) with a MADE network (default hidden ``[10 * input_dim]``)."""
    hidden = [input_dim * 10] if hidden_dims is None else list(hidden_dims)
    arn = AutoRegressiveNN(input_dim, hidden, param_dims=[(4 + 1) * 3])
    return Polynomial(arn, input_dim=input_dim, count_degree=4, count_sum=3)


def planar(input_dim: int) -> Planar:
    """A :class:`Planar` flow on ``input_dim`` dims."""
    return Planar(input_dim)


def conditional_planar(input_dim: int, context_dim: int, hidden_dims: list[int] | None = None) -> ConditionalPlanar:
    """A :class:`ConditionalPlanar` with a ``DenseNN`` from the context (default hidden ``[10 * input_dim]``)."""
    hidden = [input_dim * 10] if hidden_dims is None else list(hidden_dims)
    return ConditionalPlanar(DenseNN(context_dim, hidden, param_dims=[1, input_dim, input_dim]))


def radial(input_dim: int) -> Radial:
    """A :class:`Radial` flow on ``input_dim`` dims."""
    return Radial(input_dim)


def householder(input_dim: int, count_transforms: int | None = None) -> Householder:
    """:class:`Householder` reflections (default ``input_dim // 2`` of them, at least 1)."""
    return Householder(input_dim, count_transforms if count_transforms is not None else max(1, input_dim // 2))


def sylvester(input_dim: int, count_transforms: int | None = None) -> Sylvester:
    """A :class:`Sylvester` flow (default ``input_dim // 2`` reflections, at least 1)."""
    return Sylvester(input_dim, count_transforms if count_transforms is not None else max(1, input_dim // 2))


def batchnorm(input_dim: int, **kwargs: Any) -> BatchNorm:
    """A :class:`BatchNorm` flow on ``input_dim`` dims."""
    return BatchNorm(input_dim, **kwargs)


def neural_autoregressive(input_dim: int, hidden_dims: list[int] | None = None, activation: str = "sigmoid", width: int = 16) -> NeuralAutoregressive:
    """A :class:`NeuralAutoregressive` flow with a MADE network (default hidden ``[3 * input_dim + 1]``)."""
    hidden = [3 * input_dim + 1] if hidden_dims is None else list(hidden_dims)
    arn = AutoRegressiveNN(input_dim, hidden, param_dims=[width] * 3)
    return NeuralAutoregressive(arn, hidden_units=width, activation=activation)


def conditional_radial(input_dim: int, context_dim: int, hidden_dims: list[int] | None = None) -> ConditionalRadial:
    """A :class:`ConditionalRadial` with a ``DenseNN`` from the context (default hidden ``[10 * input_dim]``)."""
    hidden = [input_dim * 10] if hidden_dims is None else list(hidden_dims)
    return ConditionalRadial(DenseNN(context_dim, hidden, param_dims=[input_dim, 1, 1]))


def conditional_householder(input_dim: int, context_dim: int, hidden_dims: list[int] | None = None, count_transforms: int = 1) -> ConditionalHouseholder:
    """A :class:`ConditionalHouseholder` with a ``DenseNN`` from the context (default hidden ``[10 * input_dim]``)."""
    hidden = [input_dim * 10] if hidden_dims is None else list(hidden_dims)
    return ConditionalHouseholder(input_dim, DenseNN(context_dim, hidden, param_dims=[input_dim * count_transforms]), count_transforms)


def matrix_exponential(input_dim: int) -> MatrixExponential:
    """A :class:`MatrixExponential` flow on ``input_dim`` dims."""
    return MatrixExponential(input_dim)


def conditional_matrix_exponential(input_dim: int, context_dim: int, hidden_dims: list[int] | None = None) -> ConditionalMatrixExponential:
    """A :class:`ConditionalMatrixExponential` with a ``DenseNN`` from the context (default hidden ``[10 * input_dim]``)."""
    hidden = [input_dim * 10] if hidden_dims is None else list(hidden_dims)
    return ConditionalMatrixExponential(input_dim, DenseNN(context_dim, hidden, param_dims=[input_dim * input_dim]))


def conditional_neural_autoregressive(input_dim: int, context_dim: int, hidden_dims: list[int] | None = None, activation: str = "sigmoid",
                                      width: int = 16) -> ConditionalNeuralAutoregressive:
    """A :class:`ConditionalNeuralAutoregressive` with a conditional MADE network (default hidden ``[3 * input_dim + 1]``)."""
    hidden = [3 * input_dim + 1] if hidden_dims is None else list(hidden_dims)
    arn = ConditionalAutoRegressiveNN(input_dim, context_dim, hidden, param_dims=[width] * 3)
    return ConditionalNeuralAutoregressive(arn, hidden_units=width, activation=activation)


def permute(input_dim: int, permutation: torch.Tensor | None = None, *, dim: int = -1) -> Permute:
    """A :class:`Permute` of ``input_dim`` entries (a random permutation by default) along ``dim``:
    inputs of shape ``(..., input_dim)`` for the default ``dim=-1``."""
    return Permute(torch.randperm(input_dim) if permutation is None else permutation, dim=dim)


