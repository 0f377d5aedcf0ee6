import pytest

from ember.runtime import get_stack


@pytest.fixture(autouse=True)
def _no_leaked_handlers():
    """Every test starts and must end with an empty handler stack (plate dims live in the
    frames of the plates on it, so an empty stack means no dim is in use)."""
    get_stack().clear()
    yield
    leaked = list(get_stack())
    get_stack().clear()
    assert leaked == [], f"handlers left on the stack: {leaked}"
