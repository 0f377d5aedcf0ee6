"""Fixtures of the data-parallel tests; the launching helpers are in ``_dp_launch``."""

from __future__ import annotations

import sys

import pytest
from _dp_launch import HERE, Procs, launch


@pytest.fixture
def run_workers(tmp_path):
    """``run_workers(scenario, world_size=2, timeout=60, **env)``: run ``_dp_worker.py scenario`` on every rank,
    assert they all exit 0, and return each rank's result file (loaded)."""
    import torch

    started: list[Procs] = []

    def run(scenario: str, world_size: int = 2, timeout: float = 60, **extra: str) -> list[dict]:
        procs = launch([sys.executable, str(HERE / "_dp_worker.py"), scenario, str(tmp_path)], world_size, tmp_path,
                       name=f"{scenario}-", **extra)
        started.append(procs)
        codes = procs.wait(timeout)
        assert codes == [0] * world_size, procs.all_text()
        return [torch.load(tmp_path / f"{scenario}-rank{r}.pt", weights_only=True) for r in range(world_size)]

    yield run
    for p in started:
        p.kill()
