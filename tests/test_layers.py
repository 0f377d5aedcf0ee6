"""Ember's layers (DESIGN.md §11, issue 11 point 6) are an import-linter contract in pyproject.toml.

``test_contract_kept`` runs it on the package as it is. ``test_contract_bites`` proves that it is
not vacuous: it copies the package, adds one upward import (``ember.runtime`` importing
``ember.cli``, a circle through every layer) and checks that the same contract then fails,
naming that import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed (pip install 'ember-ppl[test]')")


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    """Run lint-imports with the contract in ``cwd/pyproject.toml`` on the ``ember`` package in ``cwd``."""
    env = dict(os.environ, PYTHONPATH=str(cwd), NO_COLOR="1", COLUMNS="200")
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_contract_kept() -> None:
    res = _lint(ROOT)
    assert res.returncode == 0, f"the layers contract is broken:\n{res.stdout}\n{res.stderr}"
    assert "1 kept, 0 broken" in res.stdout, res.stdout


def test_contract_bites(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "ember", tmp_path / "ember", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    runtime = tmp_path / "ember" / "runtime.py"
    runtime.write_text(runtime.read_text() + "\n\ndef _upward() -> None:\n    import ember.cli  # noqa: F401\n")
    res = _lint(tmp_path)
    assert str(tmp_path) in subprocess.run(
        [sys.executable, "-c", "import ember, os; print(os.path.dirname(ember.__file__))"],
        env=dict(os.environ, PYTHONPATH=str(tmp_path)), capture_output=True, text=True, cwd=tmp_path,
    ).stdout, "the copy was not the package analysed"
    assert res.returncode != 0, f"the contract did not catch ember.runtime -> ember.cli:\n{res.stdout}"
    assert "BROKEN" in res.stdout, res.stdout
    assert "ember.runtime -> ember.cli" in res.stdout, res.stdout
