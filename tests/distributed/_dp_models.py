"""Models shared by the data-parallel tests' workers (``_dp_worker.py``) and the single-process
references in the tests: a global latent ``mu`` and per-datum latents ``z`` in plate ``"data"``,
with the guide's noise given as data (``FixedNormal``) so that a sharded run and a single-process
run on the concatenated batch can draw exactly the same latent values."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.distributions import constraints

import ember
import ember.distributions as dist

K, D = 3, 5  # latent and data dimensions


class FixedNormal(dist.Normal):
    """``Normal(loc, scale)`` whose reparameterized draw is ``loc + scale * eps`` for a given ``eps``."""

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, eps: torch.Tensor) -> None:
        super().__init__(loc, scale)
        self.eps = eps

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        assert not sample_shape
        return self.loc + self.scale * self.eps

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(D, 2 * K)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.fc(x)
        return h[:, :K], nn.functional.softplus(h[:, K:]) + 0.1


class Model:
    """``model(x, idx, eps_mu, eps_z)`` / ``guide(...)``: ``x [n, D]`` this shard's data, ``idx [n]`` its indices
    in the data set of size ``n_data`` (used when ``subsample``: ``plate("data", n_data, subsample=idx)``; else
    ``plate("data", len(x))``), ``eps_mu [K]`` the global latent's noise, ``eps_z [n, K]`` the local latents'."""

    def __init__(self, n_data: int, subsample: bool) -> None:
        self.n_data = n_data
        self.subsample = subsample
        self.encoder = Encoder()

    def _plate(self, x: torch.Tensor, idx: torch.Tensor) -> ember.plate:
        return ember.plate("data", self.n_data, subsample=idx) if self.subsample else ember.plate("data", x.shape[0])

    def model(self, x, idx, eps_mu, eps_z):
        w = ember.param("w", lambda: 0.3 * torch.ones(K, D))
        mu = ember.sample("mu", dist.Normal(torch.zeros(K), torch.ones(K)).to_event(1))
        with self._plate(x, idx):
            z = ember.sample("z", dist.Normal(mu.expand(x.shape[0], K), torch.ones(x.shape[0], K)).to_event(1))
            ember.sample("x", dist.Normal(z @ w, 0.5 * torch.ones(x.shape[0], D)).to_event(1), obs=x)

    def guide(self, x, idx, eps_mu, eps_z):
        ember.module("encoder", self.encoder)
        loc = ember.param("mu_loc", lambda: torch.zeros(K))
        scale = ember.param("mu_scale", lambda: torch.ones(K), constraint=constraints.positive)
        ember.sample("mu", FixedNormal(loc, scale, eps_mu).to_event(1))
        with self._plate(x, idx):
            z_loc, z_scale = self.encoder(x)
            ember.sample("z", FixedNormal(z_loc, z_scale, eps_z).to_event(1))


def data(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A data set of ``n`` points and the noise of one step: ``x [n, D]``, ``idx [n]``, ``eps_mu [K]``, ``eps_z [n, K]``."""
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, D, generator=g), "idx": torch.arange(n), "eps_mu": torch.randn(K, generator=g),
            "eps_z": torch.randn(n, K, generator=g)}


def args_of(d: dict[str, torch.Tensor], rows: slice | torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """The model's arguments for the rows ``rows`` of the batch ``d`` (all rows by default)."""
    r = slice(None) if rows is None else rows
    return d["x"][r], d["idx"][r], d["eps_mu"], d["eps_z"][r]
