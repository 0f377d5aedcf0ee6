"""``reparam``: rewrite chosen sample sites in terms of auxiliary sites (``ember.infer.reparam``).

A *reparameterizer* (``ember.infer.reparam.Reparam``) answers ``apply(msg) -> msg`` for one site:
it may draw auxiliary sites with ``ember.sample`` (they go through the whole handler stack, plates
included, as every site does), and it returns a dict with the site's new ``fn``, ``value`` and
``is_observed``. A reparameterizer that makes a latent site a function of its auxiliary sites
returns ``is_observed=True`` with a masked point mass as ``fn``: this handler then marks the site
deterministic (``infer["_deterministic"]``), so every estimator, sampler and predictor treats it
as ``ember.deterministic`` treats its sites (recorded, never scored, recomputed by ``Predictive``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ember.poutine.messenger import Messenger
from ember.runtime import Message

__all__ = ["ReparamMessenger", "reparam"]


class ReparamMessenger(Messenger):
    """Reparameterize the sample sites that ``config`` chooses.

    :param config: a dict ``{site name: reparameterizer}``, or a callable ``msg -> reparameterizer
        or None`` (e.g. a strategy such as ``ember.infer.reparam.AutoReparam()``). With a dict,
        a name may also be an auxiliary site another reparameterizer draws, which chains the two
        (``{"x": LocScaleReparam(0.), "x_decentered": LatentStableReparam()}``, as in Pyro); every
        name must be a sample site of the model or such an auxiliary site: leaving the handler after a run in which
        some name never appeared raises ``ValueError`` naming it and the sites that did appear.
    """

    def __init__(self, fn: Callable | None = None, config: Any = None) -> None:
        super().__init__(fn)
        if config is None:
            raise ValueError("reparam needs config=: a dict {site name: reparameterizer} or a callable msg -> reparameterizer")
        if not isinstance(config, dict) and not callable(config):
            raise TypeError(f"reparam: config must be a dict or a callable, got {type(config).__name__}")
        if isinstance(config, dict):
            for name, r in config.items():
                if not hasattr(r, "apply"):
                    raise TypeError(
                        f"reparam: config['{name}'] is {r!r}, not a reparameterizer (an object with .apply(msg), such as "
                        f"ember.infer.reparam.LocScaleReparam(0.))"
                    )
        self.config = config
        self._seen: set = set()
        self._matched: set = set()
        self._depth = 0
        self._applying = False  # inside a reparameterizer: its auxiliary sites are left alone

    def __enter__(self) -> ReparamMessenger:
        if self._depth == 0:
            self._seen = set()
            self._matched = set()
        self._depth += 1
        return super().__enter__()  # type: ignore[return-value]

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        super().__exit__(exc_type, exc_value, traceback)
        self._depth -= 1
        if self._depth == 0 and exc_type is None and isinstance(self.config, dict) and len(self._matched) < len(self.config):
            missing = sorted(set(self.config) - self._matched)
            raise ValueError(
                f"reparam: config names site(s) {missing} that the model did not sample; its sample sites were "
                f"{sorted(self._seen)}. Fix the names in config (a reparameterizer applies to a sample site by its name)."
            )

    def _reparameterizer(self, msg: Message) -> Any:
        config = self.config
        if isinstance(config, dict):
            self._seen.add(msg.name)
            r = config.get(msg.name)
            if r is not None:
                self._matched.add(msg.name)
            return r
        return config(msg)

    def _pyro_sample(self, msg: Message) -> None:
        if msg.infer.get("_deterministic") or hasattr(msg.fn, "log_factor"):
            return  # deterministic and factor sites are left as they are
        if self._applying and not (isinstance(self.config, dict) and msg.name in self.config):
            # an auxiliary site of a reparameterizer: left alone, unless a dict config names it, which
            # chains reparameterizers as Pyro's does ({"x": LocScaleReparam(), "x_decentered": ...})
            return
        r = self._reparameterizer(msg)
        if r is None:
            return
        was_observed = msg.is_observed
        outer, self._applying = self._applying, True
        try:
            new = r.apply({"name": msg.name, "fn": msg.fn, "value": msg.value, "is_observed": was_observed, "infer": msg.infer})
        finally:
            self._applying = outer
        msg.fn = new["fn"]
        msg.value = new["value"]
        msg.is_observed = new["is_observed"]
        if msg.value is not None:
            msg.done = True
        if msg.is_observed and not was_observed:
            # a latent site that became a function of auxiliary latents: a deterministic site
            msg.infer = {**msg.infer, "_deterministic": True}


def reparam(fn: Callable | None = None, config: Any = None) -> ReparamMessenger:
    """Reparameterize sample sites of ``fn`` as ``config`` says (see :class:`ReparamMessenger`);
    e.g. ``reparam(model, config={"theta": LocScaleReparam(0.)})`` non-centres ``theta``."""
    return ReparamMessenger(fn, config=config)
