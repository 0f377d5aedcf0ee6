"""Pyro's ``pyro.distributions.torch_transform`` path: the learnable transform classes (defined in
:mod:`ember.distributions.transforms.torch_transform`)."""

from ember.distributions.transforms.torch_transform import ComposeTransformModule, TransformModule

__all__ = ["ComposeTransformModule", "TransformModule"]
