"""ember.compat.alias_pyro: `import pyro.X` gives `ember.X`; a script written against Pyro's
module paths (tests/pyro_style_script.py) runs unchanged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ember import compat

SCRIPT = Path(__file__).with_name("pyro_style_script.py")


@pytest.fixture()
def aliased():
    if "pyro" in sys.modules and not compat.is_pyro_aliased():
        pytest.skip("a real pyro is imported in this process")
    compat.alias_pyro()
    yield
    compat.unalias_pyro()


def test_alias_gives_the_ember_modules(aliased) -> None:
    import pyro
    import pyro.infer.abstract_infer
    import pyro.poutine.runtime
    from pyro.distributions import Normal

    import ember.infer.abstract_infer
    import ember.poutine.runtime

    assert pyro is ember
    assert pyro.poutine.runtime is ember.poutine.runtime and pyro.infer.abstract_infer is ember.infer.abstract_infer
    assert Normal is ember.distributions.Normal
    assert sys.modules["pyro.poutine.runtime"] is ember.poutine.runtime
    assert ember.poutine.runtime.__spec__.name == "ember.poutine.runtime"  # the module keeps its own spec
    compat.alias_pyro()  # idempotent
    with pytest.raises(ModuleNotFoundError, match="'pyro.no_such_module'.*'ember.no_such_module'"):
        import pyro.no_such_module  # noqa: F401


def test_unalias_removes_the_names(aliased) -> None:
    import pyro.infer  # noqa: F401

    compat.unalias_pyro()
    assert not compat.is_pyro_aliased()
    assert not any(n == "pyro" or n.startswith("pyro.") for n in sys.modules if getattr(sys.modules[n], "__name__", "").startswith("ember"))
    compat.alias_pyro()


def test_refuses_when_a_real_pyro_is_loaded(monkeypatch) -> None:
    import types

    monkeypatch.setitem(sys.modules, "pyro", types.ModuleType("pyro"))
    with pytest.raises(RuntimeError, match="already imported"):
        compat.alias_pyro()
    assert not compat.is_pyro_aliased()


def test_pyro_style_script_runs_unchanged(aliased, capsys) -> None:
    import runpy

    runpy.run_path(str(SCRIPT), run_name="__main__")
    assert "PYRO SCRIPT OK" in capsys.readouterr().out


@pytest.mark.slow
def test_pyro_style_script_runs_unchanged_in_a_fresh_interpreter() -> None:
    code = f"import ember.compat, runpy; ember.compat.alias_pyro(); runpy.run_path({str(SCRIPT)!r}, run_name='__main__')"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "PYRO SCRIPT OK" in res.stdout
