"""``MCMCKernel``: Pyro's interface for a kernel of one's own, which :class:`~ember.infer.mcmc.MCMC`
runs chain by chain (``setup``, then ``sample`` once per iteration, ``end_warmup`` between the two
phases, ``cleanup`` at the end). Ember's own HMC and NUTS use the chains-as-values interface of
:mod:`ember.infer.mcmc.hmc` instead."""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections import OrderedDict
from typing import Any

import torch

__all__ = ["MCMCKernel"]


class MCMCKernel(metaclass=ABCMeta):
    """The base class of a user's MCMC kernel (Pyro's protocol).

    A kernel moves a dict of unconstrained tensors by site name. :class:`~ember.infer.mcmc.MCMC`
    calls, per chain: :meth:`setup` ``(warmup_steps, *model_args, **model_kwargs)``; then, starting
    from ``initial_params`` (``MCMC``'s, else the kernel's :attr:`initial_params`), ``params =
    kernel.sample(params)`` once per iteration, :meth:`end_warmup` after the warm-up ones, and
    :meth:`cleanup` at the end. The draws are constrained with ``kernel.transforms`` (``{site:
    Transform}`` from constrained to unconstrained values; ``t.inv`` constrains), or with the model's
    supports when the kernel has a ``model`` and no ``transforms``.
    """

    def setup(self, warmup_steps: int, *args: Any, **kwargs: Any) -> None:
        """Prepare a chain on ``model(*args, **kwargs)`` with ``warmup_steps`` adaptation steps."""
        return None  # optional for a kernel: nothing to do by default

    def cleanup(self) -> None:
        """Release what :meth:`setup` made (after the chain's last iteration)."""
        return None  # optional for a kernel: nothing to do by default

    def end_warmup(self) -> None:
        """Called once, after the last warm-up iteration."""
        return None  # optional for a kernel: nothing to do by default

    def logging(self) -> OrderedDict:
        """Statistics for the progress bar (Pyro's: strings by label)."""
        return OrderedDict()

    def diagnostics(self) -> dict:
        """Statistics of the chain so far (Pyro's, e.g. ``{"acceptance rate": 0.3}``)."""
        return {}

    @abstractmethod
    def sample(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The next state of the chain: unconstrained tensors by site name, each of its site's
        unconstrained shape, from the current ``params``."""

    @property
    def initial_params(self) -> dict[str, torch.Tensor] | None:
        """Where a chain starts (unconstrained tensors by site name), set by :meth:`setup` or by hand."""
        return getattr(self, "_initial_params", None)

    @initial_params.setter
    def initial_params(self, params: dict[str, torch.Tensor] | None) -> None:
        self._initial_params = params
