"""Reparameterizers by a transform of unit Jacobian (``UnitJacobianReparam``) and its two uses in
Pyro, the discrete cosine (``DiscreteCosineReparam``) and Haar (``HaarReparam``) transforms."""

from __future__ import annotations

from typing import Any

import torch
from torch.distributions import biject_to
from torch.distributions.transforms import ComposeTransform

from ember.infer.reparam.reparam import Reparam, sum_rightmost

__all__ = ["DiscreteCosineReparam", "HaarReparam", "UnitJacobianReparam"]


class UnitJacobianReparam(Reparam):
    """Write a site ``x ~ fn`` through ``y = T(biject_to(fn.support).inv(x))``, ``T`` a transform
    whose Jacobian determinant is one: the auxiliary site ``{name}_{suffix}`` draws ``y`` from the
    transformed distribution (its density is ``fn``'s, times the Jacobian of the map to
    unconstrained space) and the site becomes the point mass ``x = T^-1(y)``. Transforms that mix
    the values of a site (a DCT along time) give a posterior closer to independent, which a
    diagonal guide or mass matrix captures better.

    ``T`` couples the rightmost ``T.domain.event_dim`` dims of a value, which must be event dims of
    the site (``.to_event(n)``). An observed site keeps its exact likelihood: the auxiliary site is
    observed at ``y`` and the site keeps the Jacobian term of the map to unconstrained space.

    :param transform: the transform ``T`` (``log|det J| = 0``).
    :param suffix: the auxiliary site's name is ``{name}_{suffix}``.
    :param experimental_allow_batch: Pyro's option to couple along batch dims, not supported
        (make those dims event dims instead).
    """

    def __init__(self, transform: Any, suffix: str = "transformed", *, experimental_allow_batch: bool = False) -> None:
        if experimental_allow_batch:
            raise NotImplementedError(
                f"{type(self).__name__}(experimental_allow_batch=True): Ember transforms along event dims only; make the "
                f"dims to couple event dims of the site with .to_event(n)")
        self.transform = transform.with_cache()
        self.suffix = suffix

    def apply(self, msg: dict) -> dict:
        from ember.distributions import TransformedDistribution
        from ember.primitives import sample

        name, fn, value, is_observed = msg["name"], msg["fn"], msg["value"], msg["is_observed"]
        event_dim = len(fn.event_shape)
        coupled = self.transform.domain.event_dim
        if coupled > event_dim:
            raise ValueError(
                f"{type(self).__name__} at site '{name}': its transform couples the rightmost {coupled} dims of a value, "
                f"but the site has {event_dim} event dims (event_shape {tuple(fn.event_shape)}, batch_shape "
                f"{tuple(fn.batch_shape)}); make the coupled dims event dims with .to_event(n)")
        to_unconstrained = biject_to(fn.support).inv.with_cache()
        transform = ComposeTransform([to_unconstrained, self.transform])
        aux = f"{name}_{self.suffix}"
        aux_fn = TransformedDistribution(fn, transform)
        if value is None:
            y = sample(aux, aux_fn)
            value = transform.inv(y)  # the cache hands back the draw's preimage
        elif is_observed:
            sample(aux, aux_fn, obs=transform(value))
        else:
            from ember.poutine.misc_messengers import _SubstituteValuesMessenger

            with _SubstituteValuesMessenger(data={aux: transform(value)}):
                sample(aux, aux_fn)
        if not is_observed:
            return self._deterministic(value, event_dim)
        # the observed auxiliary site scores fn.log_prob(x) - log|dz/dx| (z unconstrained): add it back
        z = to_unconstrained(value)
        ldj = sum_rightmost(to_unconstrained.log_abs_det_jacobian(value, z), event_dim - to_unconstrained.domain.event_dim)
        if not isinstance(ldj, torch.Tensor):
            ldj = torch.zeros(value.shape[: value.dim() - event_dim], dtype=value.dtype)
        return self._observed(value, event_dim, ldj)


class DiscreteCosineReparam(UnitJacobianReparam):
    """:class:`UnitJacobianReparam` with the orthonormal DCT-II along ``dim``
    (:class:`~ember.distributions.transforms.DiscreteCosineTransform`; ``smooth = 1`` turns
    Brownian noise white, ``smooth = 0`` keeps white noise white), auxiliary site ``{name}_dct``:
    for sequences coupled along a time-like dim, whose posterior is closer to independent in the
    frequency domain."""

    def __init__(self, dim: int = -1, smooth: float = 0.0, *, experimental_allow_batch: bool = False) -> None:
        from ember.distributions.transforms import DiscreteCosineTransform

        super().__init__(DiscreteCosineTransform(dim=dim, smooth=smooth, cache_size=1), suffix="dct",
                         experimental_allow_batch=experimental_allow_batch)


class HaarReparam(UnitJacobianReparam):
    """:class:`UnitJacobianReparam` with the orthonormal Haar wavelet transform along ``dim``
    (:class:`~ember.distributions.transforms.HaarTransform`, reversed first when ``flip``),
    auxiliary site ``{name}_haar``: for sequences with structure at several time scales."""

    def __init__(self, dim: int = -1, flip: bool = False, *, experimental_allow_batch: bool = False) -> None:
        from ember.distributions.transforms import HaarTransform

        super().__init__(HaarTransform(dim=dim, flip=flip, cache_size=1), suffix="haar",
                         experimental_allow_batch=experimental_allow_batch)
