"""A potential and its gradient compiled into one graph, for models whose structure is static.

``compile_value_and_grad(fn, z0)`` records every tensor operation of ``torch.func.grad_and_value(fn)``
at ``z0`` (``make_fx``: the model's Python, Ember's handlers and the distribution objects run once,
and what remains is a flat graph of ~70 ATen operations for the forward and backward pass) and
hands that graph to TorchScript, which runs it without Python. On eight schools this is ~4x cheaper
than running the model eagerly (benchmarks/README.md).

A recorded graph is only the same function as the model where the model's control flow does not
depend on the values it is given, so compilation is refused (and the caller runs the model
eagerly) when:

- the model turns a traced tensor into a Python value (``if x > 0``, ``float(x)``, ``x.item()``):
  ``make_fx`` raises rather than bake in one branch;
- an operation's output shape depends on tensor values (boolean indexing, ``nonzero``, ``unique``)
  or its output is data to Python (``equal``), by the operator's own tags;
- an operation draws random numbers (the potential must be a deterministic function);
- the compiled graph does not reproduce the eager value and gradient at ``z0``.

Python-side state that the model reads (a global, an argument's attribute) is read once, when
recording, exactly as the model's arguments are: they are fixed for the whole run.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch

__all__ = ["compile_value_and_grad"]

_REFUSED_TAGS = ("dynamic_output_shape", "data_dependent_output", "nondeterministic_seeded")


def _integer_indexing(node: torch.fx.Node) -> bool:
    """``x[idx]`` with integer index tensors (a hierarchical model's ``theta[group]``): the output
    shape is the index's, so fixed; the same op with a boolean mask is not."""
    if "index" not in getattr(node.target, "__name__", "") or len(node.args) < 2:
        return False
    indices = node.args[1]
    if not isinstance(indices, (list, tuple)):
        return False
    for i in indices:
        if i is None:
            continue
        val = i.meta.get("val") if isinstance(i, torch.fx.Node) else i
        if not isinstance(val, torch.Tensor) or val.dtype in (torch.bool, torch.uint8) or val.is_floating_point():
            return False
    return True


def _refused_op(gm: torch.fx.GraphModule) -> str | None:
    tags = tuple(getattr(torch.Tag, t) for t in _REFUSED_TAGS if hasattr(torch.Tag, t))
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        op_tags = getattr(node.target, "tags", ())
        for tag in tags:
            if tag in op_tags and not (tag.name == "dynamic_output_shape" and _integer_indexing(node)):
                return f"operation {node.target} ({tag.name.replace('_', ' ')})"
    return None


def _detach_constants(gm: torch.fx.GraphModule) -> None:
    # the model's params and data are constants of the graph; TorchScript refuses constants that
    # require grad, and no gradient flows to them here anyway
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = getattr(gm, node.target, None)
            if isinstance(value, torch.Tensor) and value.requires_grad:
                setattr(gm, node.target, value.detach())


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
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = make_fx(packed)(z_io)
    except Exception as e:  # noqa: BLE001 - whatever the model does that cannot be recorded
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "_local_scalar_dense" in msg or "data-dependent" in msg:
            msg = ("the model turns a tensor into a Python value (an `if` on a tensor, float(), .item()), so its "
                   "control flow may depend on the latent values")
        return None, f"recording the model failed: {msg}"
    refused = _refused_op(gm)
    if refused is not None:
        return None, f"the model uses {refused}, whose result is not a fixed function of the inputs"
    _detach_constants(gm)
    gm.graph.eliminate_dead_code()
    gm.recompile()

    # the points to check at: z0, and a nearby point (a different branch of Python-side logic
    # that escaped the recording, e.g. through NumPy, would show there)
    gen = torch.Generator(device="cpu").manual_seed(0)
    z1 = z0 + 0.1 * torch.randn(z0.shape, generator=gen, dtype=z0.dtype).to(z0.device)
    points = []
    for z in (z0, z1):
        u, g = check(z)
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
