"""Utilities shared across Ember (Pyro's ``pyro.util``).

Keyword-argument checking: :func:`check_kwargs` makes constructors strict. An unknown
keyword raises ``TypeError`` naming the closest valid one; a Pyro option that Ember
accepts but does not implement warns once, naming it.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["check_kwargs"]

_WARNED_IGNORED: set = set()


def check_kwargs(
    owner: str,
    kwargs: Mapping[str, Any],
    valid: Iterable[str] = (),
    ignored: Mapping[str, str] | None = None,
) -> None:
    """Validate the extra keyword arguments ``kwargs`` given to ``owner``.

    ``valid`` lists every keyword ``owner`` accepts (used for the "did you mean" hint);
    ``ignored`` maps accepted-but-unimplemented Pyro options to the reason they have no
    effect: each warns once per (owner, name). Anything else raises ``TypeError``.
    """
    ignored = ignored or {}
    for name in kwargs:
        if name in ignored:
            key = (owner, name)
            if key not in _WARNED_IGNORED:
                _WARNED_IGNORED.add(key)
                warnings.warn(f"{owner}: the Pyro option {name}= is accepted but has no effect in Ember: {ignored[name]}", UserWarning, stacklevel=3)
            continue
        candidates = list(valid) + list(ignored)
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}=?" if close else ""
        raise TypeError(f"{owner} got an unexpected keyword argument {name}={kwargs[name]!r}{hint} (valid: {', '.join(sorted(candidates))})")
