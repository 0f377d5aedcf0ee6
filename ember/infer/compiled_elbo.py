"""The ELBO's loss and gradients compiled into one graph: what ``JitTrace_ELBO`` runs.

The first ``loss_and_grads`` call for a given model, guide and argument signature runs eagerly,
with every check (it also creates the parameters), and then records the whole estimate as one
graph: the guide's sampling (random operations stay in the graph and draw fresh numbers from
torch's generator on every call, in the same order as the eager code), the model replayed
against it, the surrogate loss and its gradient with respect to every parameter the step read
(``make_fx`` over ``torch.func.grad_and_value``). Later calls with the same signature run that
graph (TorchScript's static runtime where possible) and set each parameter's ``.grad``, which
is all ``SVI.step`` needs: on a small model such as the introductory scale model the step is
several times faster than eager (measurements in benchmarks/README.md).

As with Pyro's ``JitTrace_ELBO``, the model and guide must have static structure. Compiling is
refused, with the reason in ``compile_status`` and one warning, and the ELBO runs eagerly, when:
a tensor the model or guide computed becomes a Python value (``if``, ``float``, ``.item()``);
a value-dependent shape is computed from sampled values, parameters or data arguments; an
``nn.Module`` (``ember.module``) parameter is read; a parameter or argument is off the CPU; or
the graph's loss and gradients differ from the eager code's on the same random numbers.
Arguments are matched by signature: tensors by shape and dtype (their values may change from
step to step, e.g. mini-batches), other arguments by value; a ninth signature stops compiling.
Tensors the model or guide reads from elsewhere (globals, closures) are constants of the graph:
pass data that changes between steps as an argument. When none of the graph's tensors is large
enough for torch to split an operation across threads, each compiled step runs on one intra-op
thread (torch's setting is set back after it): more threads would only wait on each other, and,
when another process keeps a core busy, on that core. Python side effects of the model and guide
(printing, appending to a list) happen during the first step only (several times: the eager step,
the recording and its checks), never in the compiled steps.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.distributions import constraints as _constraints
from torch.distributions import transform_to

from ember.infer.compile import agrees, first_runner, largest_tensor, prepare, record
from ember.infer.threads import ThreadChoice, threads_given
from ember.infer.util import trace_params
from ember.params import get_param_store
from ember.poutine.misc_messengers import _SubstituteValuesMessenger
from ember.poutine.trace_messenger import TraceMessenger
from ember.primitives import validation_enabled
from ember.runtime import _STACK, Message, apply_stack

__all__ = ["CompiledLossAndGrads", "CompiledSteps", "compile_steps"]

_MAX_SIGNATURES = 8
_PLAIN = (int, float, bool, str, type(None))


def _transform(constraint: Any) -> Any:
    """The map from unconstrained to constrained values (None for an unconstrained parameter)."""
    return None if constraint is _constraints.real else transform_to(constraint)


def _signature(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[Any, list, Callable] | None:
    """``(key, tensors, rebuild)`` for flat argument lists (tensors and plain values), else None.
    ``rebuild(new_tensors)`` gives ``(args, kwargs)`` with the tensors replaced."""
    tensors: list[torch.Tensor] = []
    key: list[Any] = [id(model), id(guide)]
    slots: list[tuple[Any, Any]] = []  # (position or name, None for a tensor slot / the plain value)
    for where, v in [(i, a) for i, a in enumerate(args)] + sorted(kwargs.items()):
        if isinstance(v, torch.Tensor):
            key.append((where, "T", tuple(v.shape), v.dtype, v.device.type))
            tensors.append(v)
            slots.append((where, None))
        elif isinstance(v, _PLAIN):
            key.append((where, type(v).__name__, v))
            slots.append((where, v))
        else:
            return None
    n_args = len(args)

    def rebuild(new: list) -> tuple[tuple, dict]:
        it = iter(new)
        a, kw = [], {}
        for where, v in slots:
            value = next(it) if v is None else v
            if isinstance(where, int) and where < n_args:
                a.append(value)
            else:
                kw[where] = value
        return tuple(a), kw

    return tuple(key), tensors, rebuild


class _Compiled:
    """One signature's graph: the parameters it reads (by name), which of them get gradients, and
    what each parameter was when recorded (its transform to the constraint is in the graph)."""

    def __init__(self, run: Callable, how: str, names: list[str], grad_idx: list[int], params: list,
                 constraints: list, gm: torch.fx.GraphModule) -> None:
        self.run, self.how, self.names, self.grad_idx, self.gm = run, how, names, grad_idx, gm
        self.shapes = [(p.shape, p.dtype) for p in params]
        # no tensor of the graph is large enough for torch to split across threads: run it on one
        # (more threads only wait on each other, and on a busy machine for a core)
        self.one_thread = largest_tensor(gm) < ThreadChoice.GRAIN
        self.constraints = constraints


class CompiledLossAndGrads:
    """Mixin for an ELBO class: ``loss_and_grads`` through a recorded graph (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # signature -> (model, guide, _Compiled or the reason it runs eagerly); holding the model
        # and guide keeps their ids from being reused by new functions
        self._signatures: dict = {}
        self._warned = False
        self.compile_status = "not run"

    def _fall_back(self, why: str) -> None:
        self.compile_status = f"eager: {why}"
        if not self._warned:
            self._warned = True
            warnings.warn(f"{type(self).__name__} runs eagerly: {why}", UserWarning, stacklevel=4)

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        eager = super().loss_and_grads  # type: ignore[misc]
        sig = _signature(model, guide, args, kwargs)
        if sig is None:
            self._fall_back("its arguments are not flat tensors and plain values (numbers, strings, None)")
            return eager(model, guide, *args, **kwargs)
        key, tensors, rebuild = sig
        held = self._signatures.get(key)
        entry = held[2] if held is not None and held[0] is model and held[1] is guide else None
        if entry is None:
            self._signatures.pop(key, None)
            if len(self._signatures) >= _MAX_SIGNATURES:
                self._fall_back(f"the arguments came with {_MAX_SIGNATURES} different signatures (a Python number "
                                f"that changes every step? pass it as a tensor)")
                return eager(model, guide, *args, **kwargs)
            return self._first_call(key, model, guide, args, kwargs, tensors, rebuild)
        if isinstance(entry, str):
            return eager(model, guide, *args, **kwargs)
        return self._run(entry, key, model, guide, args, kwargs, tensors)

    # ---- the first call: eager, then record ------------------------------------------------------
    def _first_call(self, key: Any, model: Callable, guide: Callable, args: tuple, kwargs: dict, tensors: list,
                    rebuild: Callable) -> float:
        with TraceMessenger(param_only=True) as capture:
            loss = super().loss_and_grads(model, guide, *args, **kwargs)  # type: ignore[misc]
        # the parameters the step's traces saw: the graph's inputs (a parameter hidden with
        # poutine.block is read as a constant of the graph, at its value now)
        names = list(trace_params(capture.trace))
        try:
            entry = self._compile(model, guide, tensors, rebuild, names)
        except Exception as e:  # noqa: BLE001 - compiling is an optimisation: never fail the step for it
            entry = f"compiling failed: {type(e).__name__}: {e}"
        self._signatures[key] = (model, guide, entry)
        if isinstance(entry, str):
            self._fall_back(entry)
        else:
            self.compile_status = f"compiled ({entry.how})"
        return loss

    def _compile(self, model: Callable, guide: Callable, tensors: list, rebuild: Callable, names: list[str]) -> _Compiled | str:
        from torch.func import grad_and_value

        store = get_param_store()
        modules = [n for n in names if store.is_module_param(n)]
        if modules:
            return f"it reads nn.Module parameters (ember.module: {modules[:3]}), which the compiled ELBO does not support yet"
        params = [store.unconstrained(n) for n in names]
        if any(t.device.type != "cpu" for t in params + tensors):
            return "compiling is done for CPU parameters and data only"
        if any(t.requires_grad for t in tensors):
            return "a tensor argument requires grad, and the compiled ELBO gives gradients to parameters only"
        grad_idx = [i for i, p in enumerate(params) if p.grad is not None]  # the eager step's gradients
        if not grad_idx:
            return "no parameter received a gradient"
        k = len(params)

        transforms = [_transform(store.get_param_constraint(n)) for n in names]

        def surrogate_fn(*flat: torch.Tensor) -> tuple[torch.Tensor, tuple]:
            # the parameters' unconstrained values come in as graph inputs, through a handler
            values = {n: (u if t is None else t(u)) for n, u, t in zip(names, flat[:k], transforms)}
            a, kw = rebuild(list(flat[k:]))
            with _SubstituteValuesMessenger(data=values):
                loss, surrogate = self._loss_and_surrogate(model, guide, a, kw)
            return surrogate, (loss.detach(), tuple(v.detach() for v in values.values()))

        value_and_grad = grad_and_value(surrogate_fn, argnums=tuple(grad_idx), has_aux=True)

        def loss_and_grads(*flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
            # (loss, gradients..., the parameters' constrained values: reported as param sites)
            grads, (_, (loss, constrained)) = value_and_grad(*flat)
            return (loss, *grads, *constrained)

        example = tuple(p.detach() for p in params) + tuple(t.detach() for t in tensors)

        def eager_reference() -> tuple[float, list]:
            leaves = [params[i] for i in grad_idx]
            a, kw = rebuild(tensors)
            loss, surrogate = self._loss_and_surrogate(model, guide, a, kw)
            grads = torch.autograd.grad(surrogate, leaves, allow_unused=True)
            return float(loss.detach()), [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads)]

        def problem_of(how: str, run: Callable) -> str | None:
            for _ in range(2):  # the same random numbers for both, twice
                rng = torch.get_rng_state()
                u_ref, g_ref = eager_reference()
                torch.set_rng_state(rng)
                with torch.no_grad():
                    out = run(*example)
                value = float(out[0])
                same = math.isclose(value, u_ref, rel_tol=1e-4, abs_tol=1e-4) if math.isfinite(u_ref) else not math.isfinite(value)
                if not (same and all(agrees(g, r) for g, r in zip(out[1:], g_ref))):
                    return (f"the compiled graph ({how}) gives loss {value:.6g} where the eager ELBO gives {u_ref:.6g} on "
                            f"the same random numbers, or different gradients (randomness from outside torch, e.g. "
                            f"Python's random or NumPy?)")
            return None

        with validation_enabled(False):  # the eager first step has checked the model and guide
            gm, problem = record(loss_and_grads, example, who="the model or guide",
                                 what="the sampled values, the parameters or the data")
            if gm is None:
                return problem
            problem = prepare(gm, who="the model or guide", source="the sampled values or inputs", allow_random=True)
            if problem is not None:
                return problem
            run, how = first_runner(gm, example, problem_of)
        if run is None:
            return how
        return _Compiled(run, how, names, grad_idx, params, [store.get_param_constraint(n) for n in names], gm)

    def compiled_for(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[_Compiled, list] | str:
        """The recorded graph that ``loss_and_grads(model, guide, *args, **kwargs)`` runs and the
        argument tensors it takes, or why that call runs eagerly (or has not been compiled yet)."""
        sig = _signature(model, guide, args, kwargs)
        if sig is None:
            return "its arguments are not flat tensors and plain values (numbers, strings, None)"
        key, tensors, _ = sig
        held = self._signatures.get(key)
        if held is None or held[0] is not model or held[1] is not guide:
            return "the ELBO has not been compiled for these arguments yet"
        entry = held[2]
        if isinstance(entry, str):
            return entry
        store = get_param_store()
        if any(store.unconstrained(n) is None for n in entry.names):
            return "a parameter of the recorded graph was deleted"
        return entry, tensors

    # ---- later calls --------------------------------------------------------------------------------
    def _run(self, entry: _Compiled, key: Any, model: Callable, guide: Callable, args: tuple, kwargs: dict,
             tensors: list) -> float:
        store = get_param_store()
        params = [store.unconstrained(n) for n in entry.names]
        if any(p is None or (p.shape, p.dtype) != sd or store.get_param_constraint(n) is not c
               for n, p, sd, c in zip(entry.names, params, entry.shapes, entry.constraints)):
            # a parameter was deleted, or re-created with another shape, dtype or constraint (whose
            # transform the graph holds): record again
            del self._signatures[key]
            return self.loss_and_grads(model, guide, *args, **kwargs)
        rng = torch.get_rng_state()
        threads = torch.get_num_threads()
        with torch.no_grad():
            if entry.one_thread and threads > 1 and not threads_given():
                torch.set_num_threads(1)
                try:
                    out = entry.run(*params, *tensors)
                finally:
                    torch.set_num_threads(threads)
            else:
                out = entry.run(*params, *tensors)
        loss = float(out[0])
        if not math.isfinite(loss):
            # the eager ELBO on the same random numbers says which site is at fault
            torch.set_rng_state(rng)
            return super().loss_and_grads(model, guide, *args, **kwargs)  # type: ignore[misc]
        seen: set = set()
        n_grads = len(entry.grad_idx)
        for i, g in zip(entry.grad_idx, out[1 : 1 + n_grads]):
            # optimizers may update .grad in place: give each parameter its own plain tensor (the
            # static runtime returns inference tensors; a graph may return one expanded buffer twice)
            if g.is_inference() or g._base is not None or id(g) in seen:
                g = g.clone()
            seen.add(id(g))
            p = params[i]
            p.grad = g if p.grad is None else p.grad + g
        if _STACK:
            # the step read these parameters: say so through the protocol, so a capture around
            # it (SVI.step's) steps them as it would after an eager step (the graph computed
            # their constrained values)
            for n, v in zip(entry.names, out[1 + n_grads :]):
                apply_stack(Message("param", n, None, (n,), None, v))
        return loss


# ---- several SVI steps as one graph (SVI.run) ---------------------------------------------------------


class CompiledSteps:
    """``k`` SVI steps recorded as one graph: the ELBO's recorded step (loss and gradients) and the
    optimizer's update (:mod:`ember.optim.functional`), ``k`` times over. ``run(*params, *data,
    *optimizer state, schedule)`` returns ``(losses [k], *new stepped parameters, *new optimizer
    state)`` without touching its inputs; :meth:`step_chunk` runs it on the current values and,
    when every number it returns is finite, commits the results."""

    def __init__(self, run: Callable, how: str, k: int, entry: _Compiled, update: Any, params: list, tensors: list,
                 optim: Any) -> None:
        self.run, self.how, self.k, self.entry, self.update = run, how, k, entry, update
        self.params, self.tensors, self.optim = params, tensors, optim
        self.update_key = update.key

    def valid_for(self, entry: _Compiled, params: list, tensors: list, optim: Any) -> bool:
        """Whether this graph still is the step for ``entry`` (the ELBO's current graph), the same
        parameter tensors, data of the same shapes, the same optimizer object (``svi.optim`` may
        have been replaced) and the same optimizer constants."""
        return (entry is self.entry and optim is self.optim and len(params) == len(self.params)
                and all(p is q for p, q in zip(params, self.params)) and self.update.ready()
                and self.update.key == self.update_key)

    def step_chunk(self, tensors: list) -> torch.Tensor | None:
        """Run ``k`` steps on the current parameters and optimizer state and commit them; returns the
        ``k`` losses (shape ``[k]``), or None, committing nothing, when a loss, parameter or state
        value came out non-finite (the caller reruns the chunk eagerly to find the site)."""
        out = self.run(*self.params, *tensors, *self.update.state(), self.update.schedule(self.k))
        n = len(self.entry.grad_idx)
        losses, new_p, new_s = out[0], list(out[1 : 1 + n]), list(out[1 + n :])
        if not all(bool(torch.isfinite(t).all()) for t in [losses, *new_p, *new_s]):
            return None
        self.update.commit(new_p, new_s, self.k)
        return losses


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = 1.0 + (float(b.abs().max()) if b.numel() else 0.0)
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), rtol=1e-3, atol=1e-3 * scale))


def _unrolled(elbo_gm: torch.fx.GraphModule, update_gm: torch.fx.GraphModule, k: int, n_p: int, n_t: int, n_s: int,
              per: int, grad_idx: list[int]) -> torch.fx.GraphModule:
    """``k`` steps chained into one graph from copies of the ELBO's recorded graph (params, data ->
    loss, gradients, ...) and the optimizer's (stepped params, gradients, state, schedule values ->
    params, state): FX node copies, nothing recorded again. Inputs ``(params, data, state,
    schedule [k * per])``, outputs ``(losses [k], stepped params, state)``."""
    n_g = len(grad_idx)
    g = torch.fx.Graph()
    inputs = [g.placeholder(f"x{i}") for i in range(n_p + n_t + n_s + 1)]
    elbo_in = [n for n in elbo_gm.graph.nodes if n.op == "placeholder"]
    update_in = [n for n in update_gm.graph.nodes if n.op == "placeholder"]
    root = torch.nn.Module()
    constants: dict = {}  # both recordings name their constants _tensor_constant0, ...: one node each, renamed
    for prefix, gm in (("elbo_", elbo_gm), ("opt_", update_gm)):
        for node in gm.graph.nodes:
            if node.op == "get_attr":
                setattr(root, prefix + node.target, getattr(gm, node.target))
                constants[node] = g.get_attr(prefix + node.target)
    values = g.call_function(torch.ops.aten.unbind.int, (inputs[-1],)) if per else None
    ps, ts, state = list(inputs[:n_p]), inputs[n_p : n_p + n_t], list(inputs[n_p + n_t : -1])
    losses = []
    for j in range(k):
        sched = [g.call_function(operator.getitem, (values, j * per + i)) for i in range(per)]
        out = g.graph_copy(elbo_gm.graph, {**constants, **dict(zip(elbo_in, [*ps, *ts]))})
        losses.append(out[0])
        new = g.graph_copy(update_gm.graph, {**constants, **dict(zip(update_in, [*[ps[i] for i in grad_idx], *out[1 : 1 + n_g],
                                                                                 *state, *sched]))})
        new = list(new) if isinstance(new, (list, tuple)) else [new]
        for i, q in zip(grad_idx, new[:n_g]):
            ps[i] = q
        state = new[n_g:]
    stacked = g.call_function(torch.ops.aten.stack.default, (losses,))
    g.output((stacked, *[ps[i] for i in grad_idx], *state))
    _simplify(g)
    return torch.fx.GraphModule(root, g)  # (its constructor generates the code)


def _simplify(g: torch.fx.Graph) -> None:
    """Drop what the chained graph does not need, without changing a number it computes: ``detach``
    (the graph runs without autograd), ``x * 1`` of the same shape and dtype, and operations whose
    results nothing uses, except those that draw random numbers or write in place (dropping one
    would change the random numbers the later steps draw)."""
    seeded = getattr(getattr(torch, "Tag", None), "nondeterministic_seeded", None)
    for n in list(g.nodes):
        if n.op != "call_function" or not isinstance(n.args[0] if n.args else None, torch.fx.Node):
            continue
        same = n.target is torch.ops.aten.detach.default
        if n.target is torch.ops.aten.mul.Tensor and len(n.args) == 2 and n.args[1] == 1 and not isinstance(n.args[1], bool):
            a, v = n.args[0].meta.get("val"), n.meta.get("val")
            same = isinstance(a, torch.Tensor) and isinstance(v, torch.Tensor) and a.shape == v.shape and a.dtype == v.dtype
        if same:
            n.replace_all_uses_with(n.args[0])
            g.erase_node(n)

    def impure(n: torch.fx.Node) -> bool:
        name = getattr(n.target, "__name__", str(n.target))
        return n.is_impure() or (seeded is not None and seeded in getattr(n.target, "tags", ())) or name.split(".")[0].endswith("_")

    g.eliminate_dead_code(is_impure_node=impure)


def compile_steps(elbo: CompiledLossAndGrads, model: Callable, guide: Callable, args: tuple, kwargs: dict, optim: Any,
                  k: int, eager_steps: Callable[[int], list[float]]) -> CompiledSteps | str:
    """Record ``k`` steps of ``SVI(model, guide, optim, elbo)`` on ``args``/``kwargs`` as one graph,
    or say why not (a sentence). The ELBO must already be compiled for these arguments (one step
    taken). The check: from the same parameters, optimizer state and random numbers, the graph and
    ``eager_steps(k)`` (``k`` ordinary ``svi.step`` calls, which stand: they are the run's next
    steps, and return their losses) must give the same losses, parameters and optimizer state.
    The random numbers the recording draws are given back, so the run draws what a step loop draws."""
    from ember.optim.functional import functional_update

    found = elbo.compiled_for(model, guide, args, kwargs)
    if isinstance(found, str):
        return found
    entry, tensors = found
    store = get_param_store()
    params = [store.unconstrained(n) for n in entry.names]
    stepped = [params[i] for i in entry.grad_idx]
    update = functional_update(optim, stepped)
    if isinstance(update, str):
        return update
    n_p, n_t, n_g = len(params), len(tensors), len(entry.grad_idx)
    n_s, per = len(update.state()), sum(r.n_sched for r in update.rules)

    def update_fn(*flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # one optimizer update: (stepped params, their gradients, state, the step's schedule values) -> (params, state)
        new, state = update.update(0, list(flat[:n_g]), list(flat[n_g : 2 * n_g]), list(flat[2 * n_g : 2 * n_g + n_s]),
                                   list(flat[2 * n_g + n_s :]))
        return (*new, *state)

    rng = torch.get_rng_state()
    sched = update.schedule(k)
    example = (*[p.detach() for p in params], *[t.detach() for t in tensors], *[s.detach() for s in update.state()], sched)
    try:
        with validation_enabled(False):
            update_gm, problem = record(update_fn, (*[p.detach() for p in stepped], *[torch.zeros_like(p) for p in stepped],
                                                    *[s.detach() for s in update.state()], *sched[:per].unbind(0)),
                                        who="the optimizer", what="its state")
            if update_gm is None:
                return problem
            graph = _unrolled(entry.gm, update_gm, k, n_p, n_t, n_s, per, entry.grad_idx)
            start, failed, disagreed = [rng], [], []

            def problem_of(how: str, run: Callable) -> str | None:
                # the check takes k real steps: after a step failed, or once one runner disagreed
                # (every runner runs the same graph), trying the next would take k steps more
                if failed:
                    return "a step failed"
                if disagreed:
                    return disagreed[0]
                torch.set_rng_state(start[0])
                with torch.no_grad():
                    out = run(*[p.detach() for p in params], *tensors, *update.state(), update.schedule(k))
                torch.set_rng_state(start[0])
                try:
                    ref = torch.tensor(eager_steps(k), dtype=out[0].dtype)
                except Exception as e:  # noqa: BLE001 - an ordinary step's error: raised below, as the step loop would
                    failed.append(e)
                    return "a step failed"
                start[0] = torch.get_rng_state()
                now = [p.detach() for p in stepped] + update.state()
                if not (_close(out[0], ref) and all(_close(a, b) for a, b in zip(out[1:], now))):
                    disagreed.append(f"the {k}-step graph ({how}) disagrees with {k} calls of svi.step on the same random "
                                     f"numbers (losses {out[0][:3].tolist()}... where the steps gave {ref[:3].tolist()}...)")
                    return disagreed[0]
                return None

            run, how = first_runner(graph, example, problem_of)
    except Exception as e:  # noqa: BLE001 - compiling is an optimisation: never fail the run for it
        torch.set_rng_state(start[0] if "start" in locals() else rng)
        return f"recording {k} steps failed: {type(e).__name__}: {e}"
    if failed:
        raise failed[0]
    torch.set_rng_state(start[0])
    if run is None:
        return how
    return CompiledSteps(run, how, k, entry, update, params, tensors, optim)
