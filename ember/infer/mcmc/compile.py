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
from collections.abc import Callable
from typing import Any

import torch

from ember.infer.compile import agrees, compile_graph

__all__ = ["compile_batched_value_and_grad", "compile_value_and_grad"]


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
    from torch.func import grad_and_value

    z0 = z0.detach()
    dtype = z0.dtype
    value_and_grad = grad_and_value(fn)

    def packed(z: torch.Tensor) -> torch.Tensor:
        g, u = value_and_grad(z.to(dtype))
        return torch.cat([g.reshape(-1), u.reshape(1)]).to(io_dtype)

    def differs(how: str, out: torch.Tensor, u_ref: Any, g_ref: torch.Tensor) -> str | None:
        value = float(out[-1])
        if math.isclose(value, u_ref, rel_tol=1e-4, abs_tol=1e-4) and agrees(out[:-1].to(g_ref.dtype), g_ref):
            return None
        return f"the compiled graph ({how}) gives U={value:.6g} where the model gives {u_ref:.6g}, or a different gradient"

    return _compile_checked(packed, z0, check, io_dtype, differs)


def compile_batched_value_and_grad(fn: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor,
                                   check: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                                   io_dtype: torch.dtype = torch.float64
                                   ) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, str]:
    """Compile ``z -> [dfn/dz (C*D), fn(z) (C)]`` for ``fn`` mapping ``[C, D]`` to ``[C]`` (independent
    rows: the gradient is that of ``fn(z).sum()``), as :func:`compile_value_and_grad` does for one
    chain: refused on the same grounds, checked against ``check(z) -> (U [C], grad [C, D])`` at
    ``z0`` and a nearby point. Returns ``(compiled, how)`` or ``(None, reason)``."""
    from torch.func import grad_and_value

    z0 = z0.detach()
    dtype = z0.dtype

    def summed(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u = fn(z)
        return u.sum(), u

    value_and_grad = grad_and_value(summed, has_aux=True)

    def packed(z: torch.Tensor) -> torch.Tensor:
        g, (_, u) = value_and_grad(z.to(dtype))
        return torch.cat([g.reshape(-1), u.reshape(-1)]).to(io_dtype)

    n = z0.numel()

    def differs(how: str, out: torch.Tensor, u_ref: Any, g_ref: torch.Tensor) -> str | None:
        if agrees(out[n:].to(u_ref.dtype), u_ref) and agrees(out[:n].reshape(g_ref.shape).to(g_ref.dtype), g_ref):
            return None
        return f"the compiled batched graph ({how}) gives different potentials or gradients from the model"

    return _compile_checked(packed, z0, check, io_dtype, differs)


def _compile_checked(packed: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor, check: Callable[[torch.Tensor], tuple],
                     io_dtype: torch.dtype, differs: Callable[[str, torch.Tensor, Any, torch.Tensor], str | None]
                     ) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, str]:
    """Record ``packed`` at ``z0`` (in ``io_dtype``) and return the fastest runner whose output
    ``differs(how, out, U, grad)`` finds equal to the eager ``check(z) -> (U, grad)`` at ``z0`` and
    at a nearby point (a different branch of Python-side logic that escaped the recording, e.g.
    through NumPy, would show there), and which does not write a later result into an earlier
    output (the samplers keep earlier results)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    z1 = z0 + 0.1 * torch.randn(z0.shape, generator=gen, dtype=z0.dtype).to(z0.device)
    points = []
    for z in (z0, z1):
        try:
            u, g = check(z)
        except Exception:  # noqa: BLE001 - the eager model fails here: no reference at this point
            continue
        if bool(torch.isfinite(torch.as_tensor(u)).all()) and bool(torch.isfinite(g).all()):
            points.append((z.to(io_dtype), u, g))
    if not points:
        return None, "the potential or its gradient is not finite at the points to check the compiled graph at"
    z_io = z0.to(io_dtype)

    def problem_of(how: str, run: Callable) -> str | None:
        outputs = []
        for z, u_ref, g_ref in points:
            with torch.no_grad():
                out = run(z)
            outputs.append((out, out.clone()))
            problem = differs(how, out, u_ref, g_ref)
            if problem is not None:
                return problem
        with torch.no_grad():
            run(z_io * 0.5 + 0.25)
        if not all(torch.equal(out, kept) for out, kept in outputs):
            return f"the compiled graph ({how}) reuses its output buffer"
        return None

    return compile_graph(packed, (z_io,), problem_of, who="the model", what="the latent values")
