import pytest
import torch

import ember


@pytest.fixture(autouse=True)
def _fresh_state():
    """Every test starts with an empty parameter store, validation on and a fixed seed."""
    ember.clear_param_store()
    ember.enable_validation(True)
    ember.set_rng_seed(0)
    yield
    ember.clear_param_store()
    ember.enable_validation(True)
    torch.distributions.Distribution.set_default_validate_args(True)
