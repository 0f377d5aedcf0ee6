import pytest

from ember.poutine import plate_messenger
from ember.runtime import get_stack


@pytest.fixture(autouse=True)
def _no_leaked_handlers():
    """Every test starts and must end with an empty handler stack and no plate dims in use."""
    get_stack().clear()
    plate_messenger._ACTIVE_DIMS.clear()
    yield
    leaked = list(get_stack())
    dims = dict(plate_messenger._ACTIVE_DIMS)
    get_stack().clear()
    plate_messenger._ACTIVE_DIMS.clear()
    assert leaked == [], f"handlers left on the stack: {leaked}"
    assert dims == {}, f"plate dims left allocated: {dims}"
