"""A potential and its gradient compiled into one graph, for models whose structure is static.

``compile_value_and_grad(fn, z0)`` records every tensor operation of ``torch.func.grad_and_value(fn)``
at ``z0`` (``make_fx``: the model's Python, Ember's handlers and the distribution objects run once,
and what remains is a flat graph of ~70 ATen operations for the forward and backward pass) and
hands that graph to TorchScript, which runs it without Python. On eight schools this is ~4x cheaper
than running the model eagerly (benchmarks/README.md).

A recorded graph is only the same function as the model where the model's control flow does not
depend on the values it is given, so compilation is refused (and the caller runs the model
eagerly) when:

- the model turns a tensor it computed into a Python value (``if x > 0``, ``float(x)``,
  ``x.item()``, ``x.tolist()``): ``make_fx`` raises rather than bake in one branch (it cannot
  tell latents from data there, so this refuses data-only values computed in the model too);
- an operation whose output shape depends on tensor values (boolean indexing, ``nonzero``,
  ``unique``) or whose output is data to Python (``equal``), by the operator's own tags, is
  applied to values computed from the latents (on data alone it gives the same result every call);
- an operation draws random numbers (the potential must be a deterministic function);
- the compiled graph does not reproduce the eager value and gradient at ``z0``.

Python-side state that the model reads (a global, an argument's attribute) is read once, when
recording, exactly as the model's arguments are: they are fixed for the whole run.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["compile_value_and_grad"]

_INDEX_OPS = ("index.Tensor", "index_put.default", "index_put_.default", "_index_put_impl_.default",
              "_unsafe_index.Tensor", "_unsafe_index_put.default")


def _depends_on_input(gm: torch.fx.GraphModule) -> set:
    """The nodes whose value depends on the graph's input (the latent vector)."""
    dep: set = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder" or (node.op == "call_function" and any(a in dep for a in node.all_input_nodes)):
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


def _refused_op(gm: torch.fx.GraphModule) -> str | None:
    """Why the recorded graph is not the model, if an operation says so by its tags: random
    numbers (always), or a value-dependent output shape or Python-facing result computed from
    the latents (the same operations on data only give the same result on every call)."""
    tag = getattr(torch, "Tag", None)
    seeded = getattr(tag, "nondeterministic_seeded", None)
    dynamic = getattr(tag, "dynamic_output_shape", None)
    data_dep = getattr(tag, "data_dependent_output", None)
    dep = _depends_on_input(gm)
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        op_tags = getattr(node.target, "tags", ())
        if seeded is not None and seeded in op_tags:
            return f"operation {node.target}, which draws random numbers, so the potential is not a function of the latents"
        if (dynamic is not None and dynamic in op_tags) or (data_dep is not None and data_dep in op_tags):
            name = getattr(node.target, "__name__", str(node.target))
            if name in _INDEX_OPS:
                if _boolean_index_depends(node, dep):
                    return f"a boolean mask computed from the latents ({node.target}: its output shape depends on their values)"
            elif any(a in dep for a in node.all_input_nodes):
                return f"operation {node.target} on values computed from the latents (its output shape or result depends on them)"
    return None


def _detach_constants(gm: torch.fx.GraphModule) -> None:
    # the model's params, module weights and data are constants of the graph; TorchScript refuses
    # constants that require grad, and no gradient flows to them here anyway
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = getattr(gm, node.target, None)
            if isinstance(value, torch.Tensor) and value.requires_grad:
                delattr(gm, node.target)  # an nn.Parameter cannot be replaced by a plain tensor in place
                setattr(gm, node.target, value.detach())


def _tolist_through_item(t: torch.Tensor) -> Any:
    # Tensor.tolist reads the values without passing through the dispatcher, so make_fx would not
    # see a latent leave the graph; .item() it sees (and refuses on a recorded tensor)
    return t.item() if t.dim() == 0 else [_tolist_through_item(x) for x in t.unbind(0)]


def _runners(gm: torch.fx.GraphModule, z0: torch.Tensor) -> list[tuple[str, Callable]]:
    """Ways to run the graph, fastest first: TorchScript's static runtime (made for small
    inference graphs: ~1.5 µs per operation here), the TorchScript interpreter (~2.2 µs), and
    the FX graph itself (~6 µs, always there). The first two are skipped where this torch
    cannot build them."""
    out: list[tuple[str, Callable]] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(gm, (z0,), check_trace=False)
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

    def run_fx(z: torch.Tensor, _gm: torch.fx.GraphModule = gm) -> torch.Tensor:
        with torch.no_grad():
            return _gm(z)

    out.append(("fx", run_fx))
    return out


def _agrees(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    tol = 1e-3 if a.dtype in (torch.float16, torch.bfloat16) else 1e-4 if a.dtype == torch.float32 else 1e-7
    scale = 1.0 + (float(b.abs().max()) if b.numel() else 0.0)
    return bool(torch.allclose(a, b, rtol=tol, atol=tol * scale))


def compile_value_and_grad(fn: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor,
                           check: Callable[[torch.Tensor], tuple[float, torch.Tensor]],
                           io_dtype: torch.dtype = torch.float64) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, str]:
    """Compile ``z -> [dfn/dz, fn(z)]`` for a scalar ``fn`` of one flat tensor.

    Args:
        fn: the scalar function (the model's potential energy) of a ``[D]`` tensor of ``z0``'s dtype.
        z0: the point to record at (its shape, dtype and device are those of every later call).
        check: the eager ``z -> (fn(z), dfn/dz)``, which the compiled function must reproduce at
            ``z0`` and at a second, nearby point.
        io_dtype: the dtype the compiled function takes and returns (float64 by default: the
            samplers keep their state in float64, and the casts then happen inside the graph).

    Returns:
        ``(compiled, how)``: ``compiled(z)`` takes a ``[D]`` tensor of ``io_dtype`` and returns
        one ``[D + 1]`` tensor of ``io_dtype``, the gradient followed by the value (no autograd
        graph); ``how`` names the runner (``"static runtime"``, ``"torchscript"`` or ``"fx"``). Or
        ``(None, reason)`` when the function cannot be compiled.
    """
    try:
        from torch.func import grad_and_value
        from torch.fx.experimental.proxy_tensor import make_fx
    except ImportError as e:  # pragma: no cover - every supported torch has both
        return None, f"this torch has no make_fx/torch.func ({e})"

    z0 = z0.detach()
    dtype = z0.dtype
    value_and_grad = grad_and_value(lambda z: fn(z))

    def packed(z: torch.Tensor) -> torch.Tensor:
        g, u = value_and_grad(z.to(dtype))
        return torch.cat([g.reshape(-1), u.reshape(1)]).to(io_dtype)

    z_io = z0.to(io_dtype)
    tolist = torch.Tensor.tolist
    try:
        torch.Tensor.tolist = _tolist_through_item
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = make_fx(packed)(z_io)
    except Exception as e:  # noqa: BLE001 - whatever the model does that cannot be recorded
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "_local_scalar_dense" in msg or "data-dependent" in msg:
            msg = ("the model turns a tensor it computed into a Python value (an `if` on a tensor, float(), .item(), "
                   ".tolist()), so its control flow may depend on the latent values; values computed from the data "
                   "alone can be computed outside the model and passed in")
        return None, f"recording the model failed: {msg}"
    finally:
        torch.Tensor.tolist = tolist
    try:
        refused = _refused_op(gm)
        if refused is not None:
            return None, f"the model uses {refused}"
        _detach_constants(gm)
        gm.graph.eliminate_dead_code()
        gm.recompile()
    except Exception as e:  # noqa: BLE001 - an unexpected graph: run the model eagerly
        return None, f"preparing the recorded graph failed: {type(e).__name__}: {e}"

    # the points to check at: z0, and a nearby point (a different branch of Python-side logic
    # that escaped the recording, e.g. through NumPy, would show there)
    gen = torch.Generator(device="cpu").manual_seed(0)
    z1 = z0 + 0.1 * torch.randn(z0.shape, generator=gen, dtype=z0.dtype).to(z0.device)
    points = []
    for z in (z0, z1):
        try:
            u, g = check(z)
        except Exception:  # noqa: BLE001 - the eager model fails here: no reference at this point
            continue
        if math.isfinite(u) and bool(torch.isfinite(g).all()):
            points.append((z.to(io_dtype), u, g))

    if not points:
        return None, "the potential or its gradient is not finite at the point to check the compiled graph at"
    problem = ""
    for how, run in _runners(gm, z_io):
        try:
            ok = True
            outputs = []
            for z, u_ref, g_ref in points:
                with torch.no_grad():
                    out = run(z)
                outputs.append((out, out.clone()))
                value = float(out[-1])
                if not (math.isclose(value, u_ref, rel_tol=1e-4, abs_tol=1e-4) and _agrees(out[:-1].to(g_ref.dtype), g_ref)):
                    problem = (f"the compiled graph ({how}) gives U={value:.6g} where the model gives {u_ref:.6g}, "
                               f"or a different gradient")
                    ok = False
                    break
            # the samplers keep earlier results: a runner must not write a later result into them
            with torch.no_grad():
                run(z_io * 0.5 + 0.25)
            if ok and not all(torch.equal(out, kept) for out, kept in outputs):
                problem = f"the compiled graph ({how}) reuses its output buffer"
                ok = False
        except Exception as e:  # noqa: BLE001 - try the next runner
            problem = f"running the compiled graph ({how}) failed: {type(e).__name__}: {e}"
            continue
        if ok:
            return run, how
    return None, problem
