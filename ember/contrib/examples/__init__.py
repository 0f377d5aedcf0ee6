"""The data loaders Pyro's example scripts import (``pyro.contrib.examples.util`` and
``pyro.contrib.examples.multi_mnist``), backed by Ember's offline loaders in :mod:`ember.data`."""
