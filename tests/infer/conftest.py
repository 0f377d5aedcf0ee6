import pytest
import torch


@pytest.fixture
def one_thread():
    """MCMC on tiny models: one intra-op thread (two threads stall each other on 10-element
    tensors, badly when the other core is busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
