"""Launching the data-parallel tests' processes: ``launch(argv, world_size)`` starts ``world_size`` copies of
a command with the environment torchrun gives its workers (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR=127.0.0.1,
a free MASTER_PORT), one CPU thread each, and waits for them with a deadline. The test modules skip themselves
when torch.distributed or its gloo backend is missing. (A module of its own, not conftest: several test
directories have a conftest, and ``from conftest import`` finds another one when the whole suite runs.)"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_env(rank: int, world_size: int, port: int, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "EMBER_TEST_SLEEP_PER_STEP"):
        env.pop(k, None)
    env.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(HERE), str(REPO)]), **extra)
    return env


@dataclass
class Procs:
    procs: list[subprocess.Popen]
    logs: list[Path]

    def text(self, rank: int) -> str:
        return self.logs[rank].read_text()

    def all_text(self) -> str:
        return "\n".join(f"--- rank {r} ---\n{self.text(r)}" for r in range(len(self.logs)))

    def wait(self, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        try:
            for p in self.procs:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the processes did not finish within {timeout} s\n{self.all_text()}")
        return [p.returncode for p in self.procs]

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def launch(argv: list[str], world_size: int, log_dir: Path, name: str = "rank", **extra: str) -> Procs:
    """Start ``argv`` once per rank (stdout and stderr to ``log_dir/<name><rank>.log``)."""
    port = free_port()
    procs, logs = [], []
    for rank in range(world_size):
        log = log_dir / f"{name}{rank}.log"
        with open(log, "w") as f:
            procs.append(subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, cwd=log_dir,
                                          env=worker_env(rank, world_size, port, **extra)))
        logs.append(log)
    return Procs(procs, logs)
