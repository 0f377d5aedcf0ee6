"""Test helpers Pyro ships under ``pyro.distributions.testing``."""
