"""``block``: hide sites from the handlers outside."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ember.poutine.messenger import Messenger
from ember.runtime import Message


def _make_default_hide_fn(hide_all, expose_all, hide, expose, hide_types, expose_types) -> Callable[[Message], bool]:
    hide = set(hide or ())
    expose = set(expose or ())
    hide_types = set(hide_types or ())
    expose_types = set(expose_types or ())
    if hide & expose:
        raise ValueError(f"block: cannot both hide and expose sites {sorted(hide & expose)}")
    if hide_types & expose_types:
        raise ValueError(f"block: cannot both hide and expose site types {sorted(hide_types & expose_types)}")
    if expose_all:
        hide_rest = False
    elif expose or expose_types:
        hide_rest = True
    elif hide or hide_types:
        hide_rest = False
    else:
        hide_rest = hide_all

    def hide_fn(msg: Message) -> bool:
        name, t = msg.name, msg.type
        if t == "sample" and msg.is_observed:
            t = "observe"  # Pyro's type filters see an observed sample site as "observe"
        if name in hide or t in hide_types:
            return True
        return hide_rest and name not in expose and t not in expose_types

    return hide_fn


class BlockMessenger(Messenger):
    """Stop the handlers outside this one from seeing some sites.

    By default everything is hidden. ``hide=[names]`` / ``hide_types=[types]`` hide just
    those; ``expose=[names]`` / ``expose_types=[types]`` hide everything else;
    ``hide_fn(msg) -> bool`` or ``expose_fn(msg) -> bool`` decide per message. For the type
    filters, as in Pyro, an observed sample site has the type ``"observe"`` (so
    ``hide_types=["sample"]`` hides the latent sites only, ``hide_types=["observe"]`` the data).
    """

    def __init__(
        self,
        fn: Callable | None = None,
        hide_fn: Callable | None = None,
        expose_fn: Callable | None = None,
        hide_all: bool = True,
        expose_all: bool = False,
        hide: Iterable[str] | None = None,
        expose: Iterable[str] | None = None,
        hide_types: Iterable[str] | None = None,
        expose_types: Iterable[str] | None = None,
    ) -> None:
        super().__init__(fn)
        if not (hide_fn is None or expose_fn is None):
            raise ValueError("block: give hide_fn or expose_fn, not both")
        if hide_fn is not None:
            self.hide_fn = hide_fn
        elif expose_fn is not None:
            self.hide_fn = lambda msg: not expose_fn(msg)
        else:
            self.hide_fn = _make_default_hide_fn(hide_all, expose_all, hide, expose, hide_types, expose_types)

    def _process_message(self, msg: Message) -> None:
        if self.hide_fn(msg):
            msg.stop = True


def block(fn: Callable | None = None, **kwargs) -> BlockMessenger:
    """Hide sites of ``fn`` from outer handlers; see :class:`BlockMessenger`."""
    return BlockMessenger(fn, **kwargs)
