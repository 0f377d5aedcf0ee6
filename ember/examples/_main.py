"""``run_main``: how the examples' ``main`` functions are run from the command line.

It lives here, not in ``ember.cli``, so that an example runs as a script
(``python -m ember.examples.vae``) without importing the command line, which imports the
examples: the layers go ``examples`` → ``cli``, never back.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["run_main", "user_errors"]


def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a user can fix (bad flag, unusable data, damaged checkpoint): reported in one line."""
    from ember.data import MNISTFormatError, MNISTNotFoundError
    from ember.examples._runs import UsageError
    from ember.params.serialize import CheckpointError

    return (UsageError, CheckpointError, MNISTFormatError, MNISTNotFoundError)


def run_main(fn: Callable[[argparse.Namespace], Any], args: argparse.Namespace, command: str) -> int:
    """Call ``fn(args)``; report the errors a user can fix as ``ember <command>: error: ...`` and return 2
    (130 on Ctrl-C); otherwise return ``fn``'s exit status (``None`` counts as 0)."""
    try:
        return int(fn(args) or 0)
    except user_errors() as e:
        print(f"ember {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ember {command}: interrupted", file=sys.stderr)
        return 130
