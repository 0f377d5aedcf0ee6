"""Pyro's ``pyro.contrib``, only as far as Pyro's own examples need it: ``ember.contrib.examples``
(the MNIST and multi-MNIST loaders). The rest of Pyro's ``contrib`` is out of Ember's scope."""
