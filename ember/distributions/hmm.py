"""Hidden Markov models as distributions over whole sequences (Pyro's ``DiscreteHMM`` and
``GaussianHMM``): the hidden states are marginalised exactly (forward algorithm, Kalman
filter). Convention (Pyro's): ``initial`` is the state before the first step, so each of the
``T`` steps applies a transition and then emits an observation."""

from __future__ import annotations

from typing import Any

import torch
from torch.distributions import constraints

from ember.distributions.torch import Categorical, MultivariateNormal
from ember.distributions.torch_dist import TorchDistribution

__all__ = ["DiscreteHMM", "GaussianHMM"]


class DiscreteHMM(TorchDistribution):
    """An HMM with ``S`` discrete hidden states. ``initial_logits``: ``[*batch, S]``;
    ``transition_logits``: ``[*batch, T, S, S]`` (from-state, to-state; ``T`` may be 1 and
    broadcast); ``observation_dist``: batch shape ``[*batch, T, S]`` (one emission
    distribution per step and state). Event shape ``[T, *obs_event]``. ``duration`` fixes
    ``T`` when every input broadcasts over time."""

    arg_constraints = {"initial_logits": constraints.real_vector, "transition_logits": constraints.independent(constraints.real, 2)}

    def __init__(self, initial_logits: torch.Tensor, transition_logits: torch.Tensor, observation_dist: Any,
                 validate_args: bool | None = None, duration: int | None = None) -> None:
        if initial_logits.dim() < 1 or transition_logits.dim() < 2:
            raise ValueError(f"DiscreteHMM: initial_logits must be [*batch, S] and transition_logits [*batch, T, S, S]; got "
                             f"{tuple(initial_logits.shape)} and {tuple(transition_logits.shape)}")
        S = initial_logits.size(-1)
        if transition_logits.shape[-2:] != (S, S) or observation_dist.batch_shape[-1:] != (S,):
            raise ValueError(f"DiscreteHMM: with S={S} states, transition_logits must end in ({S}, {S}) and observation_dist's batch "
                             f"shape in ({S},); got {tuple(transition_logits.shape)} and {tuple(observation_dist.batch_shape)}")
        if transition_logits.dim() == 2:
            transition_logits = transition_logits.unsqueeze(0)
        obs_batch = observation_dist.batch_shape
        if len(obs_batch) < 2:
            observation_dist = observation_dist.expand(torch.Size([1]) + obs_batch)
            obs_batch = observation_dist.batch_shape
        T = max(transition_logits.size(-3), obs_batch[-2]) if duration is None else duration
        batch_shape = torch.broadcast_shapes(initial_logits.shape[:-1], transition_logits.shape[:-3], obs_batch[:-2])
        self.initial_logits = initial_logits - initial_logits.logsumexp(-1, keepdim=True)
        self.transition_logits = transition_logits - transition_logits.logsumexp(-1, keepdim=True)
        self.observation_dist = observation_dist
        self.duration = T
        super().__init__(batch_shape, torch.Size([T]) + observation_dist.event_shape, validate_args=validate_args)

    @constraints.dependent_property
    def support(self):
        return constraints.independent(self.observation_dist.support, 1)

    def _obs_logits(self, value: torch.Tensor) -> torch.Tensor:
        """``log p(x_t | z_t = s)``: ``[*, T, S]``."""
        ev = self.observation_dist.event_dim if hasattr(self.observation_dist, "event_dim") else len(self.observation_dist.event_shape)
        return self.observation_dist.log_prob(value.unsqueeze(-1 - ev))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        obs = self._obs_logits(value)  # [*, T, S]
        T = self.duration
        trans = self.transition_logits.expand(self.transition_logits.shape[:-3] + (T,) + self.transition_logits.shape[-2:])
        alpha = self.initial_logits  # [*, S] over the state before step 0
        for t in range(T):
            alpha = torch.logsumexp(alpha.unsqueeze(-1) + trans[..., t, :, :], -2) + obs[..., t, :]
        return alpha.logsumexp(-1)

    def filter(self, value: torch.Tensor) -> Categorical:
        """The posterior of the final hidden state given ``value`` (shape ``sample_shape +
        batch_shape + event_shape``): a ``Categorical`` over ``S`` states with batch shape
        ``sample_shape + batch_shape``."""
        obs = self._obs_logits(value)
        T = self.duration
        trans = self.transition_logits.expand(self.transition_logits.shape[:-3] + (T,) + self.transition_logits.shape[-2:])
        alpha = self.initial_logits
        for t in range(T):
            alpha = torch.logsumexp(alpha.unsqueeze(-1) + trans[..., t, :, :], -2) + obs[..., t, :]
        return Categorical(logits=alpha - alpha.logsumexp(-1, keepdim=True))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        """Ancestral sampling of the hidden chain, then of each observation from its state: shape
        ``sample_shape + batch_shape + (T,) + observation event shape``."""
        with torch.no_grad():
            sample_shape = torch.Size(sample_shape)
            T = self.duration
            batch = sample_shape + self.batch_shape
            trans = self.transition_logits.expand(self.transition_logits.shape[:-3] + (T,) + self.transition_logits.shape[-2:])
            z = Categorical(logits=self.initial_logits.expand(batch + self.initial_logits.shape[-1:])).sample()
            zs = []
            for t in range(T):
                logits = trans[..., t, :, :].expand(batch + trans.shape[-2:])
                z = Categorical(logits=logits.gather(-2, z[..., None, None].expand(batch + (1, trans.size(-1)))).squeeze(-2)).sample()
                zs.append(z)
            states = torch.stack(zs, -1)  # [*batch, T]
            obs_shape = self.observation_dist.batch_shape[:-2]
            od = self.observation_dist.expand(torch.broadcast_shapes(obs_shape, self.batch_shape) + (T, self.observation_dist.batch_shape[-1]))
            x = od.sample(sample_shape)  # [*batch, T, S, *ev]
            ev = len(self.observation_dist.event_shape)
            idx = states.reshape(states.shape + (1,) * (1 + ev)).expand(states.shape + (1,) + x.shape[x.dim() - ev:])
            return x.gather(-1 - ev, idx).squeeze(-1 - ev)

    def expand(self, batch_shape: Any, _instance: Any = None) -> DiscreteHMM:
        batch_shape = torch.Size(batch_shape)
        S = self.initial_logits.size(-1)
        T_trans = self.transition_logits.size(-3)
        od = self.observation_dist.expand(batch_shape + self.observation_dist.batch_shape[-2:])
        return DiscreteHMM(self.initial_logits.expand(batch_shape + (S,)), self.transition_logits.expand(batch_shape + (T_trans, S, S)), od,
                           validate_args=self._validate_args, duration=self.duration)


def _mvn_params(d: Any, who: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(loc, covariance) of a MultivariateNormal or an Independent Normal."""
    if hasattr(d, "covariance_matrix"):
        return d.loc, d.covariance_matrix
    base = getattr(d, "base_dist", None)
    if base is not None and hasattr(base, "scale") and getattr(d, "reinterpreted_batch_ndims", 0) == 1:
        return base.loc, torch.diag_embed(base.scale.pow(2))
    raise ValueError(f"GaussianHMM: {who} must be a MultivariateNormal or Normal(...).to_event(1); got {type(d).__name__}")


class GaussianHMM(TorchDistribution):
    """A linear-Gaussian state space model over ``T`` steps:
    ``z_t = z_{t-1} @ transition_matrix + w_t``, ``x_t = z_t @ observation_matrix + v_t``, with
    ``z_{-1} ~ initial_dist`` (event ``[H]``), ``w_t ~ transition_dist`` (event ``[H]``),
    ``v_t ~ observation_dist`` (event ``[O]``); the matrices are ``[*batch, T or 1, H, H]`` and
    ``[*batch, T or 1, H, O]``; the noise distributions have batch ``[*batch, T or 1]``.
    ``log_prob`` runs the Kalman filter; ``rsample`` is ancestral. Event shape ``[T, O]``."""

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    def __init__(self, initial_dist: Any, transition_matrix: torch.Tensor, transition_dist: Any, observation_matrix: torch.Tensor,
                 observation_dist: Any, validate_args: bool | None = None, duration: int | None = None) -> None:
        H, Dx = observation_matrix.shape[-2:]
        if transition_matrix.shape[-2:] != (H, H) or initial_dist.event_shape != (H,) or transition_dist.event_shape != (H,) \
                or observation_dist.event_shape != (Dx,):
            raise ValueError(
                f"GaussianHMM: with hidden dim H={H} and obs dim Dx={Dx} (from observation_matrix {tuple(observation_matrix.shape)}), "
                f"transition_matrix must end in ({H}, {H}) and initial/transition/observation events be ({H},)/({H},)/({Dx},); got "
                f"{tuple(transition_matrix.shape)}, {tuple(initial_dist.event_shape)}, {tuple(transition_dist.event_shape)}, "
                f"{tuple(observation_dist.event_shape)}"
            )
        self.initial_loc, self.initial_cov = _mvn_params(initial_dist, "initial_dist")
        self.trans_loc, self.trans_cov = _mvn_params(transition_dist, "transition_dist")
        self.obs_loc, self.obs_cov = _mvn_params(observation_dist, "observation_dist")
        self.transition_matrix = transition_matrix if transition_matrix.dim() > 2 else transition_matrix.unsqueeze(0)
        self.observation_matrix = observation_matrix if observation_matrix.dim() > 2 else observation_matrix.unsqueeze(0)
        # time lengths of every time-indexed input; T is their broadcast
        times = [self.transition_matrix.size(-3), self.observation_matrix.size(-3)]
        times += [self.trans_loc.size(-2) if self.trans_loc.dim() > 1 else 1, self.obs_loc.size(-2) if self.obs_loc.dim() > 1 else 1]
        T = max(times) if duration is None else duration
        self.hidden_dim, self.obs_dim, self.duration = H, Dx, T
        self.initial_dist, self.transition_dist, self.observation_dist = initial_dist, transition_dist, observation_dist
        shapes = [self.initial_loc.shape[:-1], self.transition_matrix.shape[:-3], self.observation_matrix.shape[:-3],
                  self.trans_loc.shape[:-2], self.obs_loc.shape[:-2]]
        batch_shape = torch.broadcast_shapes(*shapes)
        super().__init__(batch_shape, torch.Size([T, Dx]), validate_args=validate_args)

    def _at(self, x: torch.Tensor, t: int, event_dims: int) -> torch.Tensor:
        """Entry ``t`` of a time-indexed input (time dim ``-1 - event_dims``; size 1 broadcasts)."""
        if x.dim() <= event_dims:
            return x
        tdim = x.dim() - 1 - event_dims
        return x.select(tdim, t if x.size(tdim) > 1 else 0)

    def _kalman(self, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Kalman filter over the ``T`` steps: (log p(value), mean and covariance of the last hidden state given value)."""
        if value.shape[-2:] != (self.duration, self.obs_dim):
            raise ValueError(f"GaussianHMM: value must end in ({self.duration}, {self.obs_dim}); got shape {tuple(value.shape)}")
        m, P = self.initial_loc, self.initial_cov  # state before step 0, row-vector convention
        total = value.new_zeros(())
        for t in range(self.duration):
            A = self._at(self.transition_matrix, t, 2)
            C = self._at(self.observation_matrix, t, 2)
            m = (m.unsqueeze(-2) @ A).squeeze(-2) + self._at(self.trans_loc, t, 1)
            P = A.transpose(-1, -2) @ P @ A + self._at(self.trans_cov, t, 2)
            pred = (m.unsqueeze(-2) @ C).squeeze(-2) + self._at(self.obs_loc, t, 1)
            Sx = C.transpose(-1, -2) @ P @ C + self._at(self.obs_cov, t, 2)
            x_t = value[..., t, :]
            total = total + MultivariateNormal(pred, Sx, validate_args=False).log_prob(x_t)
            # update: K = P C S^-1
            PC = P @ C
            K = torch.linalg.solve(Sx, PC.transpose(-1, -2)).transpose(-1, -2)  # [*, H, Dx]
            m = m + (K @ (x_t - pred).unsqueeze(-1)).squeeze(-1)
            P = P - K @ PC.transpose(-1, -2)
            P = 0.5 * (P + P.transpose(-1, -2))
        return total, m, P

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``log p(value)`` (``value``: ``[..., T, Dx]``) with the hidden states marginalised by the Kalman filter."""
        return self._kalman(value)[0]

    def filter(self, value: torch.Tensor) -> MultivariateNormal:
        """The posterior of the last hidden state ``z_{T-1}`` given ``value`` (``[..., T, Dx]``): a
        ``MultivariateNormal`` with batch shape ``value.shape[:-2]`` and event shape ``(H,)``."""
        _, m, P = self._kalman(value)
        return MultivariateNormal(m, P)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        sample_shape = torch.Size(sample_shape)
        batch = sample_shape + self.batch_shape
        z = MultivariateNormal(self.initial_loc, self.initial_cov).expand(batch).rsample()
        xs = []
        for t in range(self.duration):
            A = self._at(self.transition_matrix, t, 2)
            C = self._at(self.observation_matrix, t, 2)
            w = MultivariateNormal(self._at(self.trans_loc, t, 1), self._at(self.trans_cov, t, 2)).expand(batch).rsample()
            z = (z.unsqueeze(-2) @ A).squeeze(-2) + w
            v = MultivariateNormal(self._at(self.obs_loc, t, 1), self._at(self.obs_cov, t, 2)).expand(batch).rsample()
            xs.append((z.unsqueeze(-2) @ C).squeeze(-2) + v)
        return torch.stack(xs, -2)

    def expand(self, batch_shape: Any, _instance: Any = None) -> GaussianHMM:
        batch_shape = torch.Size(batch_shape)
        new = self._get_checked_instance(GaussianHMM, _instance)
        new.__dict__.update(self.__dict__)
        TorchDistribution.__init__(new, batch_shape, self.event_shape, validate_args=False)
        if batch_shape != self.batch_shape:
            # expand the parameters that carry the batch on the left
            new.initial_loc = self.initial_loc.expand(batch_shape + self.initial_loc.shape[-1:])
            new.initial_cov = self.initial_cov.expand(batch_shape + self.initial_cov.shape[-2:])
        return new


