"""Stochastic variational inference."""

from __future__ import annotations

import inspect
import math
import operator
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from ember.infer.compiled_elbo import CompiledLossAndGrads, CompiledSteps, compile_steps
from ember.infer.elbo import ELBO, NonFiniteLossError, describe_nonfinite, get_importance_trace
from ember.infer.threads import ThreadChoice
from ember.infer.util import trace_params
from ember.optim.optim import NonFiniteParameterError
from ember.params import get_param_store
from ember.poutine.trace_messenger import TraceMessenger
from ember.runtime import is_validation_enabled
from ember.util import check_kwargs

__all__ = ["SVI"]


class SVI:
    """Fit the parameters of ``model`` and ``guide`` by stochastic gradient steps on a loss.

    :param model: the model, a stochastic function.
    :param guide: the guide (variational distribution), same signature as the model.
    :param optim: an ``ember.optim`` optimizer (wrapping ``torch.optim``).
    :param loss: an ELBO object (``Trace_ELBO()``, ...) or any callable
        ``(model, guide, *args, **kwargs) -> scalar tensor`` to minimise.
    :param on_nonfinite: ``"raise"`` (default) raises on a NaN/inf loss naming the first
        site at fault, and the optimizer's ``NonFiniteParameterError`` when a step would
        leave a parameter NaN/inf; ``"skip"`` warns and skips the step (``step`` returns
        NaN). Either way no parameter moves.

    ``step(*args, **kwargs)`` takes one gradient step on every parameter the model and
    guide touched and returns the loss as a float; ``evaluate_loss`` only estimates it;
    ``run(num_steps, *args, **kwargs)`` takes ``num_steps`` steps, compiled many steps to a
    graph where it can (see :meth:`run`), and returns the losses.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        optim: Any,
        loss: Any,
        loss_and_grads: Callable | None = None,
        on_nonfinite: str = "raise",
        **kwargs: Any,
    ) -> None:
        check_kwargs(
            "SVI",
            kwargs,
            valid=("loss_and_grads", "on_nonfinite"),
            ignored={k: "Pyro's deprecated SVI-as-TracePosterior options; call svi.step in a loop" for k in ("num_samples", "num_steps")},
        )
        if not callable(optim):
            raise TypeError(f"SVI: optim must be an ember.optim optimizer (e.g. ember.optim.Adam({{'lr': 1e-3}})); got {optim!r}")
        if isinstance(optim, torch.optim.Optimizer):
            raise TypeError("SVI: pass an ember.optim wrapper (e.g. ember.optim.Adam({'lr': 1e-3})), not a torch.optim.Optimizer instance")
        if on_nonfinite not in ("raise", "skip"):
            raise ValueError(f"SVI: on_nonfinite must be 'raise' or 'skip'; got {on_nonfinite!r}")
        self.model = model
        self.guide = guide
        self.optim = optim
        self.on_nonfinite = on_nonfinite
        #: how the last :meth:`run` took its steps: ``"compiled (...)"`` or ``"eager: <why>"``
        self.compile_status = "not run"
        #: the thread count the last :meth:`run` used, and why
        self.thread_status = "not run"
        self._elbo = loss if isinstance(loss, ELBO) else None
        self._steps: CompiledSteps | None = None
        if isinstance(loss, ELBO):
            self.loss = loss.loss
            self.loss_and_grads = loss.loss_and_grads
        elif callable(loss):
            if loss_and_grads is None:

                def _loss_and_grads(model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
                    value = loss(model, guide, *args, **kwargs)
                    if not isinstance(value, torch.Tensor):
                        raise TypeError(f"SVI: the loss function must return a scalar tensor; got {type(value).__name__}")
                    f = value.item()
                    if not math.isfinite(f):
                        raise NonFiniteLossError(
                            f"The loss is {f}: {self._diagnose(args, kwargs)}. No gradient step was taken; the parameters are unchanged."
                        )
                    if value.requires_grad:
                        value.backward()
                    return f

                loss_and_grads = _loss_and_grads

            def _loss(model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
                with torch.no_grad():
                    value = loss(model, guide, *args, **kwargs)
                return value.item() if isinstance(value, torch.Tensor) else float(value)

            self.loss = _loss
            self.loss_and_grads = loss_and_grads
        else:
            raise TypeError(f"SVI: loss must be an ELBO object or a callable (model, guide, *args) -> tensor; got {loss!r}")

    def _diagnose(self, args: tuple, kwargs: dict) -> str:
        """Re-run guide and model under trace to find a non-finite site (best effort)."""
        try:
            with torch.no_grad():
                model_trace, guide_trace = get_importance_trace(self.model, self.guide, args, kwargs, validate=False)
            return describe_nonfinite([("model", model_trace), ("guide", guide_trace)])
        except Exception as e:  # noqa: BLE001 - diagnosis must not hide the original problem
            return f"(could not trace model and guide to find the site: {e})"

    def step(self, *args: Any, **kwargs: Any) -> float:
        """One gradient step on the parameters whose ``param`` sites appear in the traces of
        model and guide (Pyro's rule: a parameter hidden with ``poutine.block`` stays put);
        returns the loss estimate (a float, -ELBO for ELBO losses)."""
        with TraceMessenger(param_only=True) as capture:
            try:
                loss = self.loss_and_grads(self.model, self.guide, *args, **kwargs)
            except NonFiniteLossError as e:
                for p in trace_params(capture.trace).values():
                    p.grad = None
                if self.on_nonfinite == "skip":
                    warnings.warn(f"SVI.step skipped: {e}", RuntimeWarning, stacklevel=2)
                    return math.nan
                raise
            except BaseException:
                for p in trace_params(capture.trace).values():
                    p.grad = None
                raise
        touched = trace_params(capture.trace)
        params = list(touched.values())
        if is_validation_enabled():
            self._check_grads(touched)
        try:
            self.optim(params)
        except NonFiniteParameterError as e:  # the optimizer restored the parameters
            if self.on_nonfinite != "skip":
                raise
            warnings.warn(f"SVI.step skipped: {e}", RuntimeWarning, stacklevel=2)
            loss = math.nan
        finally:
            for p in params:
                p.grad = None
        return loss

    def _check_grads(self, touched: dict) -> None:
        grads = [p.grad for p in touched.values() if p.grad is not None]
        if not grads:
            return
        # one fused check (a single device sync); per-parameter only when it fails
        if bool(torch.isfinite(torch.stack([g.sum() for g in grads])).all()):
            return
        bad = [n for n, p in touched.items() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
        if not bad:
            return  # the sums overflowed, the gradients themselves are finite
        for p in touched.values():
            p.grad = None
        msg = f"Non-finite gradients for parameters {bad[:10]} (the loss itself was finite). No step was taken; the parameters are unchanged."
        if self.on_nonfinite == "skip":
            warnings.warn("SVI.step skipped: " + msg, RuntimeWarning, stacklevel=3)
            return
        raise NonFiniteLossError(msg)

    def evaluate_loss(self, *args: Any, **kwargs: Any) -> float:
        """The loss estimate without taking a step (no gradients are computed)."""
        with torch.no_grad():
            return self.loss(self.model, self.guide, *args, **kwargs)

    # ---- many steps ---------------------------------------------------------------------------------
    #: steps per call of the recorded multi-step graph
    chunk_size = 8
    #: about what recording a chunk costs per node of the ELBO's recorded graph (seconds), and the
    #: share of a compiled step's time a chunked step saves: :meth:`run` records chunks only when
    #: the steps left promise to repay the recording
    record_s_per_node = 1.5e-3
    chunk_saving = 0.6

    def run(self, num_steps: int, *args: Any, progress_bar: bool = True, num_threads: int | None = None,
            chunked: bool | None = None, **kwargs: Any) -> torch.Tensor:
        """Take ``num_steps`` steps, each what :meth:`step` ``(*args, **kwargs)`` takes, and return the
        losses: a float64 tensor of shape ``[num_steps]`` (NaN for steps skipped with
        ``on_nonfinite="skip"``).

        The result is the step loop's: the same random numbers in the same order, the same
        parameters and optimizer state afterwards (to float rounding), so ``step``, ``run``,
        ``optim.save``/``load`` mix freely. With ``JitTrace_ELBO`` and an ``ember.optim`` SGD, Adam,
        AdamW or ClippedAdam, after the first step :attr:`chunk_size` steps (the ELBO's recorded
        graph and the optimizer's update, :mod:`ember.optim.functional`) are recorded as one graph,
        checked against as many ordinary steps on the same random numbers, and then run one call
        per chunk, where the steps left repay the recording (see ``chunked``); anything else runs
        the step loop. :attr:`compile_status` says which and why. A
        chunk with a non-finite loss, parameter or optimizer state commits nothing: it is rerun
        step by step, so the error (or, with ``on_nonfinite="skip"``, the warning) names the site
        and the parameters are those before the failing step, as in the step loop.

        :param num_steps: how many steps (an int >= 0).
        :param args: the model's and guide's positional arguments, the same for every step.
        :param progress_bar: show a tqdm bar with the loss (the mean over the last steps).
        :param num_threads: torch's intra-op threads during the run. None (default): Ember
            chooses (one thread for a compiled graph whose tensors are too small to split across
            threads, else by timing the first steps with one thread and the current setting),
            says so in :attr:`thread_status` and the ``ember.infer`` log, and restores the
            setting afterwards; an int is used as given.
        :param chunked: None (default): record chunks when the steps left promise to repay the
            recording (from the time of a few ordinary steps and the size of the ELBO's graph);
            True: whenever they can be recorded; False: never (the step loop).
        :param kwargs: the model's and guide's keyword arguments (run's own names above are taken
            by run); a name neither the model nor the guide accepts is a ``TypeError``.
        """
        try:  # any integer type (a NumPy integer too), not a bool or a float
            n = -1 if isinstance(num_steps, bool) else operator.index(num_steps)
        except TypeError:
            n = -1
        if n < 0:
            raise ValueError(f"SVI.run: num_steps must be an integer >= 0; got {num_steps!r}")
        num_steps = n
        if chunked not in (None, True, False):
            raise ValueError(f"SVI.run: chunked must be None, True or False; got {chunked!r}")
        if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1):
            raise ValueError(f"SVI.run: num_threads must be None or an int >= 1; got {num_threads!r}")
        self._check_run_kwargs(kwargs)
        from tqdm import tqdm

        losses: list[float] = []
        with ThreadChoice(num_threads, label="SVI", what="the ELBO's recorded step") as threads, tqdm(
            total=num_steps, desc="SVI", unit="step", disable=not progress_bar, dynamic_ncols=True, mininterval=0.2
        ) as bar:
            try:
                _Run(self, args, kwargs, losses, bar, threads, chunked).go(num_steps)
            finally:
                self.thread_status = threads.status if threads.chosen is not None else (
                    f"not chosen: too few steps to time (torch's setting, {threads._saved} thread(s), is restored)")
        return torch.tensor(losses, dtype=torch.float64)

    def _check_run_kwargs(self, kwargs: dict) -> None:
        if not kwargs:
            return
        names: set = set()
        for fn in (self.model, self.guide):
            try:
                ps = inspect.signature(fn).parameters.values()
            except (TypeError, ValueError):
                return  # a callable without a signature: nothing to check against
            if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ps):
                return
            names |= {p.name for p in ps if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
        check_kwargs("SVI.run", {k: v for k, v in kwargs.items() if k not in names},
                     valid=sorted(names | {"progress_bar", "num_threads", "chunked"}))


class _Run:
    """One :meth:`SVI.run`: the steps, compiled in chunks where possible, the thread choice and the bar."""

    def __init__(self, svi: SVI, args: tuple, kwargs: dict, losses: list, bar: Any, threads: ThreadChoice,
                 chunked: bool | None) -> None:
        self.svi, self.args, self.kwargs, self.losses, self.bar, self.threads = svi, args, kwargs, losses, bar, threads
        self.chunked = chunked
        self._shown = 0

    def step(self) -> float:
        loss = self.svi.step(*self.args, **self.kwargs)
        self.losses.append(loss)
        self.bar.update(1)
        return loss

    def steps(self, n: int) -> list[float]:
        out = [self.step() for _ in range(n)]
        self.show()
        return out

    def show(self) -> None:
        if self.bar.disable or len(self.losses) - self._shown < 1:
            return
        recent = [x for x in self.losses[-100:] if math.isfinite(x)]
        if recent:
            self.bar.set_postfix_str(f"loss {sum(recent) / len(recent):.4g}", refresh=False)
        self._shown = len(self.losses)

    def timed_step(self) -> None:
        k = self.threads.trial()
        if k is None:
            self.step()
            return
        t = time.perf_counter()
        self.step()
        self.threads.observe(k, time.perf_counter() - t)

    def go(self, n: int) -> None:
        svi = self.svi
        end = len(self.losses) + n
        if n == 0:
            svi.compile_status = "no steps: num_steps=0"
            return
        self.step()  # eager and checked: creates the parameters and the optimizer state, compiles the ELBO
        steps = self.compiled(end - len(self.losses))
        if steps is None:
            while len(self.losses) < end:
                self.timed_step()
                if len(self.losses) % 50 == 0:
                    self.show()
            self.show()
            return
        svi.compile_status = f"compiled ({steps.k} steps per call, {steps.how})"
        if self.threads.chosen is None and self.threads.by_size(_largest(steps)) is None:
            self.threads.choose(self._evaluate(steps))
        k = steps.k
        while end - len(self.losses) >= k:
            rng = torch.get_rng_state()
            chunk = steps.step_chunk(steps.tensors)
            if chunk is None:  # a non-finite value: the same steps one by one name the site (or skip)
                torch.set_rng_state(rng)
                self.steps(k)
                continue
            self.losses.extend(chunk.tolist())
            self.bar.update(k)
            self.show()
        self.steps(end - len(self.losses))

    def compiled(self, remaining: int) -> CompiledSteps | None:
        """The multi-step graph for this run (recorded and checked now, or kept from the last run),
        or None with the reason in ``compile_status``."""
        svi = self.svi
        elbo = svi._elbo
        if self.chunked is False:
            svi.compile_status = "step by step: chunked=False"
            return None
        if not isinstance(elbo, CompiledLossAndGrads):
            svi.compile_status = ("eager: the loss is not JitTrace_ELBO (SVI.run records steps as one graph from "
                                  "JitTrace_ELBO's recorded ELBO)")
            return None
        found = elbo.compiled_for(svi.model, svi.guide, self.args, self.kwargs)
        if isinstance(found, str):
            svi.compile_status = f"eager: {found}"
            return None
        entry, tensors = found
        k = svi.chunk_size
        old = svi._steps
        if old is not None:
            store = get_param_store()
            if old.valid_for(entry, [store.unconstrained(n) for n in entry.names], tensors, svi.optim):
                old.tensors = tensors
                return old
        if remaining < 3 * k:
            svi.compile_status = f"eager: {remaining} steps left after the first, too few to record and check {k}-step chunks"
            return None
        if self.chunked is None:
            t = time.perf_counter()
            self.steps(3)  # ordinary (compiled) steps, timed: what a chunked step would save
            saving = svi.chunk_saving * (time.perf_counter() - t) / 3
            cost = svi.record_s_per_node * len(entry.gm.graph.nodes)
            remaining -= 3
            if saving * remaining < cost:
                svi.compile_status = (f"step by step (JitTrace_ELBO's compiled step): {remaining} steps left are too few for "
                                      f"{k}-step chunks to repay their recording (about {cost * 1e3:.0f} ms, saving about "
                                      f"{saving * 1e6:.0f} µs per step); chunked=True records them anyway")
                return None
        made = compile_steps(elbo, svi.model, svi.guide, self.args, self.kwargs, svi.optim, k, self.steps)
        if isinstance(made, str):
            svi.compile_status = f"eager: {made}"
            return None
        svi._steps = made
        return made

    @staticmethod
    def _evaluate(steps: CompiledSteps) -> Callable[[], Any]:
        """One evaluation of the ELBO's recorded step on the current values, drawing no random
        numbers from the run's stream (the generator is given back), for the thread timing."""
        entry = steps.entry
        store = get_param_store()
        params = [store.unconstrained(n).detach() for n in entry.names]

        def evaluate() -> Any:
            rng = torch.get_rng_state()
            with torch.no_grad():
                entry.run(*params, *steps.tensors)
            torch.set_rng_state(rng)

        return evaluate


def _largest(steps: CompiledSteps) -> int:
    from ember.infer.compile import largest_tensor

    return largest_tensor(steps.entry.gm)
