"""The base class of reparameterizers, and what they share: unwrapping ``Independent`` and
masks off a site's distribution, and the point mass a reparameterized latent becomes."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["Reparam"]


class Reparam:
    """A reparameterizer: ``apply(msg) -> msg`` for one sample site (see ``ember.poutine.reparam``).

    ``msg`` is a dict with ``name``, ``fn`` (the site's distribution), ``value`` (None, or a given
    value such as an observation) and ``is_observed``. ``apply`` may draw auxiliary sites with
    ``ember.sample`` and returns a dict with the site's new ``fn``, ``value`` and ``is_observed``.
    """

    def apply(self, msg: dict) -> dict:
        raise NotImplementedError

    def __call__(self, name: str, fn: Any, obs: Any) -> tuple[Any, Any]:
        """Pyro's older interface ``(name, fn, obs) -> (new_fn, value)``; ``obs`` (or None) and the
        returned ``value`` have the site's shape, ``fn.batch_shape + fn.event_shape``."""
        out = self.apply({"name": name, "fn": fn, "value": obs, "is_observed": obs is not None})
        return out["fn"], out["value"]

    # ---- shared helpers -----------------------------------------------------------------
    @staticmethod
    def _unwrap(fn: Any, name: str = "?") -> tuple[Any, int, Any]:
        """``(base, reinterpreted, mask)``: ``fn`` without its ``Independent`` and mask wrappers,
        how many batch dims the wrappers made event dims, and the mask on the site's batch dims
        (None if none). A mask inside ``to_event`` (masking event elements) is refused."""
        from ember.distributions.torch_dist import MaskedDistribution

        reinterpreted = 0
        mask = None
        while True:
            if isinstance(fn, torch.distributions.Independent):
                reinterpreted += fn.reinterpreted_batch_ndims
                fn = fn.base_dist
            elif isinstance(fn, MaskedDistribution):
                if reinterpreted:
                    raise ValueError(
                        f"reparam at site '{name}': the distribution is masked inside .to_event() (a mask on event "
                        f"elements); reparameterizers support masks on batch dims only: write d.to_event(n).mask(m)"
                    )
                mask = fn._mask if mask is None else (mask & fn._mask)
                fn = fn.base_dist
            else:
                return fn, reinterpreted, mask

    @staticmethod
    def _wrap(fn: Any, reinterpreted: int, mask: Any = None) -> Any:
        """Undo :meth:`_unwrap` on a new base distribution (``to_event``, then the mask)."""
        if reinterpreted:
            fn = fn.to_event(reinterpreted)
        if mask is not None:
            fn = fn.mask(mask)
        return fn

    @staticmethod
    def _deterministic(value: torch.Tensor, event_dim: int) -> dict:
        """The site as a deterministic function of its auxiliary sites: a masked point mass."""
        from ember.distributions import Delta

        return {"fn": Delta(value, event_dim=event_dim).mask(False), "value": value, "is_observed": True}

    @staticmethod
    def _observed(value: torch.Tensor, event_dim: int, log_density: Any) -> dict:
        """An observed site whose log-density is carried by auxiliary observed sites, up to
        ``log_density`` (a Jacobian term, batch-shaped) kept on the site itself."""
        from ember.distributions import Delta

        return {"fn": Delta(value, log_density=log_density, event_dim=event_dim), "value": value, "is_observed": True}


def sum_rightmost(x: Any, n: int) -> Any:
    """``x`` summed over its rightmost ``n`` dims (``x`` itself when ``n <= 0`` or a number)."""
    if not isinstance(x, torch.Tensor) or n <= 0:
        return x
    return x.sum(tuple(range(-n, 0)))
