"""Recording a function of tensors as one graph of ATen operations and running it without Python.

The machinery behind the compiled MCMC potential (``ember.infer.mcmc.compile``) and the compiled
ELBO (``ember.infer.JitTrace_ELBO``): ``record`` runs the function once under ``make_fx`` (the
model's Python, Ember's handlers and the distribution objects run once; what remains are the
tensor operations, forward and backward), ``refused_op`` says when the graph would not be the
function, and ``runners`` gives the ways to run it, fastest first, for the caller to check
against the eager function before use.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["agrees", "compile_graph", "depends_on_input", "detach_constants", "first_runner", "largest_tensor", "prepare", "record",
           "refused_op", "runners", "sink_transposes"]

DATA_DEPENDENT = ("{who} turns a tensor it computed into a Python value (an `if` on a tensor, float(), .item(), "
                  ".tolist()), so its control flow may depend on {what}; values computed from the data alone can be "
                  "computed outside the model and passed in")


def _tolist_through_item(t: torch.Tensor) -> Any:
    # Tensor.tolist reads the values without passing through the dispatcher, so make_fx would not
    # see a recorded value leave the graph; .item() it sees (and refuses on a recorded tensor)
    return t.item() if t.dim() == 0 else [_tolist_through_item(x) for x in t.unbind(0)]


def _no_check(self: Any, value: Any) -> None:
    return None


def record(fn: Callable, example: tuple, who: str = "the model", what: str = "the latent values"
           ) -> tuple[torch.fx.GraphModule | None, str]:
    """``(graph, "")`` with ``fn``'s tensor operations on inputs shaped like ``example``, or
    ``(None, reason)`` when recording failed (``who``'s fault, said for a scientist; ``what``
    names the inputs)."""
    try:
        from torch.fx.experimental.proxy_tensor import make_fx
    except ImportError as e:  # pragma: no cover - every supported torch has it
        return None, f"this torch has no make_fx ({e})"
    tolist = torch.Tensor.tolist
    validate_sample = torch.distributions.Distribution._validate_sample
    try:
        torch.Tensor.tolist = _tolist_through_item
        # a distribution built while validation was on (a PyroSample prior made in __init__) keeps
        # checking its values; the eager step has checked them, and a check cannot be recorded
        torch.distributions.Distribution._validate_sample = _no_check
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = make_fx(fn)(*example)
    except Exception as e:  # noqa: BLE001 - whatever the model does that cannot be recorded
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "_local_scalar_dense" in msg or "data-dependent" in msg:
            msg = DATA_DEPENDENT.format(who=who, what=what)
        return None, f"recording the model failed: {msg}"
    finally:
        torch.Tensor.tolist = tolist
        torch.distributions.Distribution._validate_sample = validate_sample
    return gm, ""


_INDEX_OPS = ("index.Tensor", "index_put.default", "index_put_.default", "_index_put_impl_.default",
              "_unsafe_index.Tensor", "_unsafe_index_put.default")


def depends_on_input(gm: torch.fx.GraphModule) -> set:
    """The nodes whose value depends on the graph's inputs or on random numbers it draws."""
    seeded = getattr(getattr(torch, "Tag", None), "nondeterministic_seeded", None)
    dep: set = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            dep.add(node)
        elif node.op == "call_function" and (any(a in dep for a in node.all_input_nodes)
                                             or (seeded is not None and seeded in getattr(node.target, "tags", ()))):
            dep.add(node)
    return dep


def _boolean_index_depends(node: torch.fx.Node, dep: set) -> bool:
    """For ``x[idx]`` and its backward: is any boolean index computed from the latents? (Integer
    indices give the index's shape, and a boolean mask built from data is the same every call.)"""
    indices = node.args[1] if len(node.args) > 1 else ()
    for i in indices if isinstance(indices, (list, tuple)) else (indices,):
        if isinstance(i, torch.fx.Node) and i in dep:
            val = i.meta.get("val")
            if not isinstance(val, torch.Tensor) or val.dtype in (torch.bool, torch.uint8):
                return True
    return False


def refused_op(gm: torch.fx.GraphModule, allow_random: bool = False, source: str = "the latents") -> str | None:
    """Why the recorded graph is not the function, if an operation says so by its tags: random
    numbers (unless ``allow_random``: an ELBO estimate is random, and the graph draws fresh
    numbers on every call), or a value-dependent output shape or Python-facing result computed
    from the graph's inputs (the same operations on data only give the same result every call).
    ``source`` names those inputs in the message."""
    tag = getattr(torch, "Tag", None)
    seeded = getattr(tag, "nondeterministic_seeded", None)
    dynamic = getattr(tag, "dynamic_output_shape", None)
    data_dep = getattr(tag, "data_dependent_output", None)
    dep = depends_on_input(gm)
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        op_tags = getattr(node.target, "tags", ())
        if seeded is not None and seeded in op_tags and not allow_random:
            return f"operation {node.target}, which draws random numbers, so the potential is not a function of the latents"
        if (dynamic is not None and dynamic in op_tags) or (data_dep is not None and data_dep in op_tags):
            name = getattr(node.target, "__name__", str(node.target))
            if name in _INDEX_OPS:
                if _boolean_index_depends(node, dep):
                    return f"a boolean mask computed from {source} ({node.target}: its output shape depends on their values)"
            elif any(a in dep for a in node.all_input_nodes):
                return f"operation {node.target} on values computed from {source} (its output shape or result depends on them)"
    return None


def detach_constants(gm: torch.fx.GraphModule) -> None:
    # the model's params, module weights and data are constants of the graph; TorchScript refuses
    # constants that require grad, and no gradient flows to them here anyway
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = getattr(gm, node.target, None)
            if isinstance(value, torch.Tensor) and value.requires_grad:
                delattr(gm, node.target)  # an nn.Parameter cannot be replaced by a plain tensor in place
                setattr(gm, node.target, value.detach())


def runners(gm: torch.fx.GraphModule, example: tuple) -> list[tuple[str, Callable]]:
    """Ways to run the graph, fastest first: TorchScript's static runtime (made for small
    inference graphs: ~1.5 µs per operation here), the TorchScript interpreter (~2.2 µs), and
    the FX graph itself (~6 µs, always there). The first two are skipped where this torch
    cannot build them."""
    out: list[tuple[str, Callable]] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(gm, example, check_trace=False)
            try:
                traced = torch.jit.freeze(traced.eval())  # constants folded in
            except Exception:  # noqa: BLE001 - freezing is an optimisation only
                pass
        to_static = getattr(torch._C, "_jit_to_static_module", None)
        if to_static is not None:
            try:
                out.append(("static runtime", to_static(traced._c)))
            except Exception:  # noqa: BLE001 - not every graph is supported
                pass
        method = getattr(getattr(traced, "_c", None), "_get_method", None)
        out.append(("torchscript", method("forward") if method is not None else traced))  # skips Module.__call__
    except Exception:  # noqa: BLE001 - TorchScript is optional: the FX graph runs without it
        pass

    def run_fx(*inputs: torch.Tensor, _gm: torch.fx.GraphModule = gm) -> Any:
        with torch.no_grad():
            return _gm(*inputs)

    out.append(("fx", run_fx))
    return out


def largest_tensor(gm: torch.fx.GraphModule) -> int:
    """The number of elements of the largest tensor the recorded graph computes or reads (from the
    shapes ``make_fx`` recorded; 0 when it recorded none)."""
    largest = 0
    for node in gm.graph.nodes:
        vals = node.meta.get("val")
        for v in vals if isinstance(vals, (list, tuple)) else (vals,):
            if isinstance(v, torch.Tensor):
                largest = max(largest, v.numel())
    for _, buf in list(gm.named_buffers()) + [(n, getattr(gm, n)) for n in dir(gm) if n.startswith("_tensor_constant")]:
        if isinstance(buf, torch.Tensor):
            largest = max(largest, buf.numel())
    return largest


def agrees(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    tol = 1e-3 if a.dtype in (torch.float16, torch.bfloat16) else 1e-4 if a.dtype == torch.float32 else 1e-7
    scale = 1.0 + (float(b.abs().max()) if b.numel() else 0.0)
    return bool(torch.allclose(a, b, rtol=tol, atol=tol * scale))


_aten = torch.ops.aten
_TRANSPOSES = (_aten.permute.default, _aten.t.default, _aten.transpose.int)


def _is_matrix_transpose(node: Any) -> bool:
    """Is ``node`` the transpose of a matrix (``permute(m, [1, 0])``, ``t(m)``, ``transpose(m, 0, 1)``)?"""
    if not isinstance(node, torch.fx.Node) or node.op != "call_function" or node.target not in _TRANSPOSES:
        return False
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() != 2:
        return False
    if node.target is _aten.permute.default:
        return list(node.args[1]) == [1, 0]
    if node.target is _aten.transpose.int:
        return sorted(int(d) % 2 for d in node.args[1:3]) == [0, 1]
    return True


def sink_transposes(gm: torch.fx.GraphModule) -> int:
    """Rewrite ``transpose(mm(a, b))`` as ``mm(transpose(b), transpose(a))``, in place (not
    recompiled); returns how many. The same matrix, computed in the layout it is read in: a
    transposed product is a strided view, and every element-wise operation and reduction after it
    walks memory with a stride. ``torch.func.vmap`` over chains or particles makes this pattern
    (a batched ``x @ w`` is ``mm(x, W.T).T``): on the regression with 4 vectorized chains, the
    potential took 89 µs with the view and 59 µs without (benchmarks/README.md). ``transpose(transpose(u))``
    is ``u``, so no copy is added; the rounding of the product may change (another order of BLAS
    operands), which the callers' check against the eager function allows."""
    graph = gm.graph
    done = 0
    for node in list(graph.nodes):
        if not _is_matrix_transpose(node):
            continue
        mm = node.args[0]
        if not (isinstance(mm, torch.fx.Node) and mm.op == "call_function" and mm.target is _aten.mm.default
                and len(mm.users) == 1):
            continue
        a, b = mm.args[:2]
        operands = []
        with graph.inserting_before(node):
            for u in (b, a):
                if _is_matrix_transpose(u):
                    operands.append(u.args[0])
                else:
                    t = graph.call_function(_aten.t.default, (u,))
                    val = u.meta.get("val")
                    if isinstance(val, torch.Tensor):
                        t.meta["val"] = val.t()
                    operands.append(t)
            product = graph.call_function(_aten.mm.default, tuple(operands))
        product.meta["val"] = node.meta.get("val")
        node.replace_all_uses_with(product)
        graph.erase_node(node)
        graph.erase_node(mm)
        for u in (a, b):  # a transpose that only fed the product is a view nobody reads now
            if _is_matrix_transpose(u) and not u.users:
                graph.erase_node(u)
        done += 1
    return done


def prepare(gm: torch.fx.GraphModule, *, who: str, source: str = "the latents", allow_random: bool = False) -> str | None:
    """Refuse what would not be the recorded function (:func:`refused_op`), detach the graph's
    constants, compute transposed products in the layout they are read in (:func:`sink_transposes`)
    and recompile it, in place; returns None, or why the graph cannot be used."""
    try:
        refused = refused_op(gm, allow_random=allow_random, source=source)
        if refused is not None:
            return f"{who} uses {refused}"
        detach_constants(gm)
        sink_transposes(gm)
        if not allow_random:
            gm.graph.eliminate_dead_code()
        gm.recompile()
    except Exception as e:  # noqa: BLE001 - an unexpected graph: run the function eagerly
        return f"preparing the recorded graph failed: {type(e).__name__}: {e}"
    return None


def first_runner(gm: torch.fx.GraphModule, example: tuple, problem_of: Callable[[str, Callable], str | None]
                 ) -> tuple[Callable | None, str]:
    """The fastest of :func:`runners` that ``problem_of(how, run)`` accepts (it returns None, or what
    is wrong): ``(run, how)``, or ``(None, the last problem)``."""
    problem = ""
    for how, run in runners(gm, example):
        try:
            problem = problem_of(how, run) or ""
        except Exception as e:  # noqa: BLE001 - try the next runner
            problem = f"running the compiled graph ({how}) failed: {type(e).__name__}: {e}"
            continue
        if not problem:
            return run, how
    return None, problem


def compile_graph(fn: Callable, example: tuple, problem_of: Callable[[str, Callable], str | None], *,
                  who: str, what: str, source: str = "the latents", allow_random: bool = False
                  ) -> tuple[Callable | None, str]:
    """Record ``fn`` at ``example``, refuse what would not be ``fn``, and return the fastest runner
    that ``problem_of(how, run)`` accepts (it returns None, or what is wrong): ``(run, how)``, or
    ``(None, reason)``. With ``allow_random`` the graph keeps every operation (a random draw whose
    result is unused still advances the generator, as in the eager code)."""
    gm, problem = record(fn, example, who=who, what=what)
    if gm is None:
        return None, problem
    refused = prepare(gm, who=who, source=source, allow_random=allow_random)
    if refused is not None:
        return None, refused
    return first_runner(gm, example, problem_of)
