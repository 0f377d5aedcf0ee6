"""``ember.log``: the logger Pyro scripts use as ``pyro.log`` (``pyro.log.info("step %d", i)``).

As Pyro's, it prints INFO and above as ``LEVEL \t message`` to stderr when the program has set
up no logging of its own (no handler on the root logger). It is its own logger
(``ember.log``), so Ember's internal messages (``ember.infer``, at INFO) keep the program's settings."""

from __future__ import annotations

import logging

__all__ = ["default_format", "log"]

default_format = "%(levelname)s \t %(message)s"
log = logging.getLogger("ember.log")
log.setLevel(logging.INFO)

if not logging.root.handlers:
    _handler = logging.StreamHandler()
    _handler.setLevel(logging.INFO)
    _handler.setFormatter(logging.Formatter(default_format))
    log.addHandler(_handler)
    log.propagate = False
