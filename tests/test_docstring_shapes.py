"""Every public name whose signature takes or returns tensors has a docstring that states shapes
(issue 18: "Every public name has a docstring that states shapes where tensors go in or out").

The rule (``tensor_routines`` and ``shapeless_docstrings`` in ``docs/_gen/docs_text.py``):

* What is checked: every public name (``__all__``) of the API reference's modules
  (``REFERENCE_MODULES``, the ones with a page on the site). A function defined in Ember is
  checked when its signature takes or returns tensors: an annotation that names ``Tensor``, or a
  parameter with a conventional tensor name (``value``, ``x``, ``y``, ``obs``, ``loc``, ``scale``,
  ``logits``, ``probs``, ``input(s)``, ``context``, ``samples``, ``sample_shape``,
  ``batch_shape``). A class defined in Ember is checked when its constructor does so (its
  docstring then says the shapes of what it is built from, e.g. a distribution's batch and event
  shapes), and so is each of its public methods (and ``__call__``) defined in Ember, once, under
  the class that defines it. Methods and classes from torch are torch's to document (the torch
  distribution classes Ember re-exports are checked: their docstrings get a "Shapes:" paragraph).
* Which docstring counts: the one a reader finds: the method's own or, for an override without
  one, the nearest base class's in the MRO (as ``inspect.getdoc`` does). So one docstring on
  ``TorchDistributionMixin.log_prob`` covers every distribution that does not write its own.
* What "states shapes" means: the docstring mentions a shape (``shape``, ``batch_shape``,
  ``event_shape``, ``sample_shape``), a ``scalar``, ``event_dim``, or writes one out:
  ``(N, D)``, ``(K,)``, ``[..., D]``, ``[*batch, D]``, ``[N]``, ``(..., input_dim)``.
  Call signatures such as ``(x, y)`` and intervals such as ``(0, 1)`` do not count.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GEN = ROOT / "docs" / "_gen"

def _docs_text() -> types.ModuleType:
    """docs/_gen/docs_text.py, imported from its file (docs/_gen is not a package)."""
    if str(GEN) not in sys.path:
        sys.path.insert(0, str(GEN))
    spec = importlib.util.spec_from_file_location("_ember_docs_docs_text_shapes", GEN / "docs_text.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_tensor_taking_public_name_states_shapes():
    docs_text = _docs_text()
    start = time.perf_counter()
    missing = docs_text.shapeless_docstrings(docs_text.REFERENCE_MODULES)
    assert time.perf_counter() - start < 30  # a fast check (a couple of seconds), not a slow test
    assert not missing, (
        "public names that take or return tensors without saying the shapes (state them in the docstring, "
        "or in the base class's that the method inherits):\n" + "\n".join(missing))


def test_the_check_covers_the_api():
    docs_text = _docs_text()
    names = docs_text.tensor_routines(docs_text.REFERENCE_MODULES)
    assert len(names) > 250
    # the shape contract of every distribution lives on the mixin, that of the flows' log-det on each
    assert "ember.distributions.torch_dist.TorchDistributionMixin.log_prob" in names
    assert "ember.distributions.torch.Dirichlet" in names  # torch's classes re-exported, with a Shapes paragraph
    assert "ember.distributions.transforms.simple_flows.Householder.log_abs_det_jacobian" in names
    # flows that compute their log-det on the way inherit it from one mixin (checked once, there)
    assert "ember.distributions.transforms.torch_transform._LogDetCache.log_abs_det_jacobian" in names
    assert "ember.ops.stats.quantile" in names


def test_the_check_flags_a_docstring_without_shapes(monkeypatch):
    docs_text = _docs_text()
    fake = types.ModuleType("ember_fake_shapes_module", "A module.")

    def no_shapes(x: torch.Tensor) -> torch.Tensor:
        """Add one to ``x``."""
        return x + 1

    def with_shapes(x: torch.Tensor) -> torch.Tensor:
        """Add one to ``x`` (any shape; the result has the shape of ``x``)."""
        return x + 1

    def written_out(value):
        """The row sums of ``value`` ``(N, D)``: ``(N,)``."""
        return value.sum(-1)

    def call_signature_only(value):
        """Calls ``f(x, y)`` on ``value`` for ``p`` in (0, 1)."""
        return value

    def no_tensors(name: str, n: int = 3) -> str:
        """Nothing here is a tensor."""
        return name * n

    class Base:
        """A base whose methods say their shapes."""

        def __init__(self, n: int) -> None:
            self.n = n

        def log_prob(self, value: torch.Tensor) -> torch.Tensor:
            """``value`` of shape ``batch_shape + (n,)`` to shape ``batch_shape``."""
            return value.sum(-1)

    class Inherits(Base):
        """A subclass that overrides without a docstring: it inherits its base's."""

        def log_prob(self, value: torch.Tensor) -> torch.Tensor:
            return value.sum(-1) * 2

        def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
            """A draw."""
            return torch.zeros(sample_shape)

    class Built(Base):
        """Built from a location."""

        def __init__(self, loc: torch.Tensor) -> None:
            super().__init__(loc.shape[-1])

    for obj in (no_shapes, with_shapes, written_out, call_signature_only, no_tensors, Base, Inherits, Built):
        obj.__module__ = "ember_fake_shapes_module"  # treated as Ember's own
    fake.__all__ = ["no_shapes", "with_shapes", "written_out", "call_signature_only", "no_tensors", "Base", "Inherits", "Built"]
    for name in fake.__all__:
        setattr(fake, name, locals()[name])
    monkeypatch.setitem(sys.modules, "ember_fake_shapes_module", fake)

    checked = docs_text.tensor_routines(["ember_fake_shapes_module"])
    prefix = "ember_fake_shapes_module.test_the_check_flags_a_docstring_without_shapes.<locals>."
    assert prefix + "no_tensors" not in checked and prefix + "Base" not in checked  # no tensor in their signatures
    assert docs_text.shapeless_docstrings(["ember_fake_shapes_module"]) == sorted(
        prefix + name for name in ("Built", "Inherits.rsample", "call_signature_only", "no_shapes"))
