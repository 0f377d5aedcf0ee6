"""Effect handlers. Each works as ``handler(fn, ...)`` (a new function), as a decorator
and as a context manager (``with handler(...):``); they compose freely."""

from ember.poutine.block_messenger import BlockMessenger, block
from ember.poutine.condition_messenger import (
    ConditionMessenger,
    DoMessenger,
    UnconditionMessenger,
    condition,
    do,
    uncondition,
)
from ember.poutine.messenger import Messenger
from ember.poutine.misc_messengers import (
    EscapeMessenger,
    InferConfigMessenger,
    LiftMessenger,
    escape,
    infer_config,
    lift,
)
from ember.poutine.plate_messenger import CondIndepStackFrame, PlateMessenger
from ember.poutine.replay_messenger import ReplayMessenger, replay
from ember.poutine.scale_messenger import MaskMessenger, ScaleMessenger, mask, scale
from ember.poutine.seed_messenger import SeedMessenger, seed
from ember.poutine.substitute_messenger import SubstituteMessenger, substitute
from ember.poutine.trace_messenger import TraceMessenger, trace
from ember.poutine.trace_struct import Trace
from ember.runtime import NonlocalExit

__all__ = [
    "BlockMessenger",
    "CondIndepStackFrame",
    "ConditionMessenger",
    "DoMessenger",
    "EscapeMessenger",
    "InferConfigMessenger",
    "LiftMessenger",
    "MaskMessenger",
    "Messenger",
    "NonlocalExit",
    "PlateMessenger",
    "ReplayMessenger",
    "ScaleMessenger",
    "SeedMessenger",
    "SubstituteMessenger",
    "Trace",
    "TraceMessenger",
    "UnconditionMessenger",
    "block",
    "condition",
    "do",
    "escape",
    "infer_config",
    "lift",
    "mask",
    "replay",
    "scale",
    "seed",
    "substitute",
    "trace",
    "uncondition",
]

# Pyro's module layout (issue 11 point 7): ember.poutine.handlers / runtime / util, and the
# handlers that live there.
from ember.poutine import handlers, runtime, util  # noqa: E402
from ember.poutine.broadcast_messenger import BroadcastMessenger, broadcast  # noqa: E402
from ember.poutine.handlers import queue, unwrap  # noqa: E402
from ember.poutine.runtime import get_mask, get_plates  # noqa: E402

__all__ += [
    "BroadcastMessenger",
    "broadcast",
    "get_mask",
    "get_plates",
    "handlers",
    "queue",
    "runtime",
    "unwrap",
    "util",
]

# issue 14: reparameterization
from ember.poutine.reparam_messenger import ReparamMessenger, reparam  # noqa: E402

__all__ += ["ReparamMessenger", "reparam"]

# Enumeration (issue 13): parallel enumeration of discrete sites, and markov chains that recycle dims
from ember.poutine.enum_messenger import EnumMessenger, enum  # noqa: E402
from ember.poutine.markov_messenger import MarkovMessenger, markov  # noqa: E402

__all__ += ["EnumMessenger", "MarkovMessenger", "enum", "markov"]

# Pyro's equalize, collapse (refused: needs funsor) and the validation switch
from ember.poutine.equalize_messenger import EqualizeMessenger, collapse, equalize  # noqa: E402
from ember.poutine.util import enable_validation, is_validation_enabled  # noqa: E402

__all__ += ["EqualizeMessenger", "collapse", "enable_validation", "equalize", "is_validation_enabled"]

# Pyro's effect-based guides live in the module ember.poutine.guide (as pyro.poutine.guide; the
# class is not among poutine's own names there either)
from ember.poutine import guide  # noqa: E402

__all__ += ["guide"]
