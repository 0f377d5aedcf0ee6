"""The backend-agnostic test suite of the PyPI package pyro-api, run against Ember."""

import pytest

pyroapi = pytest.importorskip("pyroapi")
from pyroapi import pyro_backend, register_backend  # noqa: E402
from pyroapi.tests import *  # noqa: E402,F401,F403

register_backend(
    "ember",
    {
        "distributions": "ember.distributions",
        "handlers": "ember.poutine",
        "infer": "ember.infer",
        "ops": "torch",
        "optim": "ember.optim",
        "pyro": "ember",
    },
)


@pytest.fixture
def backend():
    with pyro_backend("ember"):
        yield
