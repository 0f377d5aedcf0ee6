"""SVI.run (issue 16, point 4): many steps per call of a recorded graph where the model, the ELBO
and the optimizer allow it, the step loop otherwise, with the same results either way; the thread
count Ember chooses for the run; the progress bar; argument checks."""

import math
import warnings

import numpy as np
import pytest
import torch
from torch.distributions import constraints

import ember
import ember.distributions as dist
from ember import optim
from ember.infer import SVI, JitTrace_ELBO, NonFiniteLossError, Trace_ELBO

GUESS = torch.tensor(8.5)


def scale_model(guess):
    w = ember.sample("weight", dist.Normal(guess, 1.0))
    return ember.sample("measurement", dist.Normal(w, 0.75), obs=torch.tensor(9.5))


def scale_guide(guess):
    a = ember.param("a", torch.tensor(8.5))
    b = ember.param("b", torch.tensor(1.0), constraint=constraints.positive)
    return ember.sample("weight", dist.Normal(a, b))


def regression_model(x, y):
    w = ember.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    with ember.plate("data", x.shape[0]):
        ember.sample("y", dist.Normal(x @ w, 0.5), obs=y)


def regression_guide(x, y):
    loc = ember.param("loc", torch.zeros(3))
    scale = ember.param("scale", torch.ones(3), constraint=constraints.positive)
    ember.sample("w", dist.Normal(loc, scale).to_event(1))


def _params():
    return {k: v.detach().clone() for k, v in ember.get_param_store().items()}


def _fit(make_optim, n, use_run, model=scale_model, guide=scale_guide, args=(GUESS,), elbo=JitTrace_ELBO, seed=0, **kw):
    ember.clear_param_store()
    torch.manual_seed(seed)
    svi = SVI(model, guide, make_optim(), elbo(), **kw)
    if use_run:
        losses = svi.run(n, *args, progress_bar=False, chunked=True)
    else:
        losses = torch.tensor([svi.step(*args) for _ in range(n)], dtype=torch.float64)
    return svi, losses, _params()


def _same(a, b, params_a, params_b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, equal_nan=True)
    assert params_a.keys() == params_b.keys()
    for k in params_a:
        torch.testing.assert_close(params_a[k], params_b[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make_optim", [
    lambda: optim.SGD({"lr": 1e-3, "momentum": 0.1}),
    lambda: optim.Adam({"lr": 0.01}),
    lambda: optim.AdamW({"lr": 0.01, "weight_decay": 0.1}),
    lambda: optim.ClippedAdam({"lr": 0.01, "lrd": 0.999, "clip_norm": 1.0}),
    lambda: optim.Adam({"lr": 0.01}, clip_args={"clip_norm": 0.5, "clip_value": 0.3}),
], ids=["sgd", "adam", "adamw", "clipped_adam", "adam_clipped_grads"])
def test_run_is_the_step_loop_compiled(make_optim):
    _, ref, p_ref = _fit(make_optim, 60, False)
    svi, got, p_got = _fit(make_optim, 60, True)
    assert svi.compile_status.startswith("compiled (8 steps per call"), svi.compile_status
    assert got.shape == (60,) and got.dtype == torch.float64
    _same(got, ref, p_got, p_ref)


def test_run_on_vector_params_with_data_and_a_plate():
    x = torch.randn(20, 3, generator=torch.Generator().manual_seed(1))
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1
    make = lambda: optim.Adam({"lr": 0.05})  # noqa: E731
    _, ref, p_ref = _fit(make, 40, False, regression_model, regression_guide, (x, y))
    svi, got, p_got = _fit(make, 40, True, regression_model, regression_guide, (x, y))
    assert svi.compile_status.startswith("compiled"), svi.compile_status
    _same(got, ref, p_got, p_ref)


def test_optimizer_state_after_run_is_the_step_loops_and_steps_continue(tmp_path):
    make = lambda: optim.Adam({"lr": 0.02})  # noqa: E731
    ref_svi, _, _ = _fit(make, 30, False)
    ref_state = ref_svi.optim.get_plain_state()
    more_ref = [ref_svi.step(GUESS) for _ in range(5)]
    svi, _, _ = _fit(make, 30, True)
    state = svi.optim.get_plain_state()
    for name in ("a", "b"):
        for key, value in ref_state["params"][name]["state"].items():
            torch.testing.assert_close(state["params"][name]["state"][key], value, rtol=1e-5, atol=1e-6)
    more = [svi.step(GUESS) for _ in range(5)]
    assert more == pytest.approx(more_ref, rel=1e-5)
    # saved after run(), loaded into a fresh optimizer: the next steps are the same again
    svi.optim.save(tmp_path / "opt.pt")
    ember.get_param_store().save(tmp_path / "params.pt")
    rng = torch.get_rng_state()
    histories = []
    for use_run in (False, True):
        ember.clear_param_store()
        ember.get_param_store().load(tmp_path / "params.pt")
        fresh = SVI(scale_model, scale_guide, make(), JitTrace_ELBO())
        fresh.optim.load(tmp_path / "opt.pt")
        torch.set_rng_state(rng)
        histories.append(fresh.run(16, GUESS, progress_bar=False) if use_run
                         else torch.tensor([fresh.step(GUESS) for _ in range(16)], dtype=torch.float64))
    torch.testing.assert_close(histories[1], histories[0], rtol=1e-5, atol=1e-6)


def test_optimizer_state_loaded_into_the_same_svi_between_runs_is_used(tmp_path):
    make = lambda: optim.Adam({"lr": 0.02})  # noqa: E731
    histories = []
    for use_run in (False, True):
        ember.clear_param_store()
        torch.manual_seed(5)
        svi = SVI(scale_model, scale_guide, make(), JitTrace_ELBO())
        steps = (lambda n, svi=svi: svi.run(n, GUESS, progress_bar=False, chunked=True).tolist()) if use_run else (
            lambda n, svi=svi: [svi.step(GUESS) for _ in range(n)])
        first = steps(30)
        svi.optim.save(tmp_path / f"opt{use_run}.pt")
        saved = _params()
        steps(30)
        svi.optim.load(tmp_path / f"opt{use_run}.pt")  # back to the state after the first 30 steps
        for k, v in saved.items():
            with torch.no_grad():
                ember.get_param_store().unconstrained(k).copy_(v if k == "a" else v.log())
        histories.append(torch.tensor(first + steps(30), dtype=torch.float64))
    torch.testing.assert_close(histories[1], histories[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make, recorded_again", [
    (lambda: optim.SGD({"lr": 1e-3}), True),  # SGD's lr is a constant of the graph
    (lambda: optim.AdamW({"lr": 1e-3, "weight_decay": 2.0}), True),  # so is AdamW's, in its weight decay
    (lambda: optim.Adam({"lr": 1e-3}), False),  # Adam's comes with each step's schedule: the graph stays
])
def test_a_second_run_reuses_the_graph_or_records_it_again_when_the_learning_rate_is_in_it(make, recorded_again):
    losses = []
    for use_run in (False, True):
        ember.clear_param_store()
        torch.manual_seed(3)
        svi = SVI(scale_model, scale_guide, make(), JitTrace_ELBO())
        first = svi.run(30, GUESS, progress_bar=False, chunked=True) if use_run else [svi.step(GUESS) for _ in range(30)]
        graph = svi._steps
        svi.optim.optimizers[0].param_groups[0]["lr"] = 5e-3  # what a user's schedule would do between runs
        second = svi.run(30, GUESS, progress_bar=False, chunked=True) if use_run else [svi.step(GUESS) for _ in range(30)]
        if use_run:
            assert graph is not None and (svi._steps is not graph) == recorded_again
            assert svi.compile_status.startswith("compiled")
        losses.append(torch.tensor([*first, *second], dtype=torch.float64))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)


def test_an_optimizer_replaced_between_runs_is_the_one_that_steps():
    results = []
    for use_run in (False, True):
        ember.clear_param_store()
        torch.manual_seed(0)
        svi = SVI(scale_model, scale_guide, optim.Adam({"lr": 0.01}), JitTrace_ELBO())
        for _ in range(2):
            svi.run(30, GUESS, progress_bar=False, chunked=True) if use_run else [svi.step(GUESS) for _ in range(30)]
            svi.optim = optim.SGD({"lr": 0.0})  # the parameters stop moving
        results.append(_params())
    for k in results[0]:
        torch.testing.assert_close(results[1][k], results[0][k], rtol=1e-5, atol=1e-5)


def test_a_graph_that_disagrees_with_the_step_loop_costs_no_extra_steps(monkeypatch):
    """Every runner (static runtime, TorchScript, FX) runs the same graph: after one disagrees, the
    others are not tried (each check takes a chunk's worth of real steps)."""
    import ember.infer.compiled_elbo as compiled_elbo

    monkeypatch.setattr(compiled_elbo, "_close", lambda a, b: False)
    ember.clear_param_store()
    svi = SVI(scale_model, scale_guide, optim.Adam({"lr": 0.05}), JitTrace_ELBO())
    losses = svi.run(25, GUESS, progress_bar=False, chunked=True)
    assert losses.shape == (25,) and svi.compile_status.startswith("eager: the 8-step graph")


@pytest.mark.parametrize("case, reason", [
    ("trace_elbo", "eager: the loss is not JitTrace_ELBO"),
    ("rmsprop", "eager: the update of RMSprop (parameter 'a'"),
    ("scheduler", "eager: the optimizer is an LR scheduler wrapper"),
    ("few_steps", "too few to record and check"),
])
def test_the_step_loop_runs_with_the_reason_where_nothing_is_compiled(case, reason):
    elbo = Trace_ELBO if case == "trace_elbo" else JitTrace_ELBO
    make = {"rmsprop": lambda: optim.RMSprop({"lr": 0.01}),
            "scheduler": lambda: optim.StepLR({"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.01}, "step_size": 5})
            }.get(case, lambda: optim.SGD({"lr": 0.01}))
    n = 10 if case == "few_steps" else 30
    _, ref, p_ref = _fit(make, n, False, elbo=elbo)
    svi, got, p_got = _fit(make, n, True, elbo=elbo)
    assert svi.compile_status.startswith("eager") and reason in svi.compile_status, svi.compile_status
    _same(got, ref, p_got, p_ref)


def test_by_default_chunks_are_recorded_only_where_the_steps_left_repay_them():
    make = lambda: optim.SGD({"lr": 1e-3})  # noqa: E731
    _, ref, p_ref = _fit(make, 60, False)
    ember.clear_param_store()
    torch.manual_seed(0)
    svi = SVI(scale_model, scale_guide, make(), JitTrace_ELBO())
    got = svi.run(60, GUESS, progress_bar=False)
    assert svi.compile_status.startswith("step by step (JitTrace_ELBO's compiled step): 56 steps left are too few"), svi.compile_status
    _same(got, ref, _params(), p_ref)
    svi.record_s_per_node = 0.0  # recording for free: any run repays it
    svi.run(60, GUESS, progress_bar=False)
    assert svi.compile_status.startswith("compiled"), svi.compile_status
    svi.run(60, GUESS, progress_bar=False, chunked=False)
    assert svi.compile_status == "step by step: chunked=False"
    with pytest.raises(ValueError, match="chunked must be None, True or False"):
        svi.run(5, GUESS, chunked="yes")


def test_a_model_that_cannot_be_compiled_runs_the_step_loop_with_jit_traces_reason():
    def model():
        w = ember.sample("w", dist.Normal(0.0, 1.0))
        if w > 0:  # control flow on a sampled value
            ember.sample("x", dist.Normal(w, 1.0), obs=torch.tensor(1.0))

    def guide():
        ember.sample("w", dist.Normal(ember.param("m", torch.tensor(0.0)), 1.0))

    ember.clear_param_store()
    svi = SVI(model, guide, optim.SGD({"lr": 0.01}), JitTrace_ELBO())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        losses = svi.run(30, progress_bar=False)
    assert losses.shape == (30,) and bool(torch.isfinite(losses).all())
    assert svi.compile_status.startswith("eager: ") and "Python value" in svi.compile_status, svi.compile_status


def diverging_model():
    ember.sample("w", dist.Normal(0.0, 1.0))


def diverging_guide():
    ember.sample("w", dist.Normal(ember.param("a", torch.tensor(1.0)), 1.0))


def test_a_non_finite_loss_inside_a_chunk_names_the_site_and_leaves_the_step_loops_parameters():
    # SGD with lr=4 multiplies a by about -3 per step: the loss overflows after some 40 steps,
    # inside a compiled chunk
    make = lambda: optim.SGD({"lr": 4.0})  # noqa: E731
    results = []
    for use_run in (False, True):
        ember.clear_param_store()
        torch.manual_seed(0)
        svi = SVI(diverging_model, diverging_guide, make(), JitTrace_ELBO())
        with pytest.raises(NonFiniteLossError, match="'w'") as e:
            if use_run:
                svi.run(200, progress_bar=False, chunked=True)
            else:
                for _ in range(200):
                    svi.step()
        results.append((str(e.value), _params()["a"]))
    assert results[1][0] == results[0][0]
    assert math.isfinite(float(results[1][1])) and float(results[1][1]) == pytest.approx(float(results[0][1]), rel=1e-5)
    assert svi.compile_status.startswith("compiled"), svi.compile_status


def test_skipping_non_finite_steps_inside_chunks_is_the_step_loops_skipping():
    make = lambda: optim.SGD({"lr": 4.0})  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, ref, p_ref = _fit(make, 80, False, diverging_model, diverging_guide, (), on_nonfinite="skip")
        svi, got, p_got = _fit(make, 80, True, diverging_model, diverging_guide, (), on_nonfinite="skip")
    assert bool(torch.isnan(got).any()) and svi.compile_status.startswith("compiled")
    _same(got, ref, p_got, p_ref)


def test_threads_chosen_by_size_for_a_compiled_run_and_restored():
    torch.set_num_threads(2)
    try:
        ember.clear_param_store()
        svi = SVI(scale_model, scale_guide, optim.SGD({"lr": 1e-3}), JitTrace_ELBO())
        svi.run(40, GUESS, progress_bar=False, chunked=True)
        assert svi.thread_status.startswith("1 thread, chosen by size"), svi.thread_status
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_threads_chosen_by_timing_a_compiled_step_when_the_graph_holds_a_large_tensor():
    data = torch.randn(40_000, generator=torch.Generator().manual_seed(0))

    def model(x):
        mu = ember.sample("mu", dist.Normal(0.0, 1.0))
        with ember.plate("N", x.shape[0]):
            ember.sample("x", dist.Normal(mu, 1.0), obs=x)

    def guide(x):
        ember.sample("mu", dist.Normal(ember.param("m", torch.tensor(0.0)), 0.1))

    torch.set_num_threads(2)
    try:
        _, ref, _ = _fit(lambda: optim.Adam({"lr": 0.01}), 30, False, model, guide, (data,))
        svi, got, _ = _fit(lambda: optim.Adam({"lr": 0.01}), 30, True, model, guide, (data,))
        assert svi.compile_status.startswith("compiled"), svi.compile_status
        assert "chosen by timing the ELBO's recorded step" in svi.thread_status, svi.thread_status
        assert torch.get_num_threads() == 2
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-3)  # the timing draws no random numbers of the run's
    finally:
        torch.set_num_threads(1)


def test_threads_chosen_by_timing_the_first_eager_steps_and_restored_and_explicit_setting_wins():
    seen = []

    def model(guess):
        seen.append(torch.get_num_threads())
        return scale_model(guess)

    torch.set_num_threads(2)
    try:
        ember.clear_param_store()
        svi = SVI(model, scale_guide, optim.SGD({"lr": 1e-3}), Trace_ELBO())
        svi.run(20, GUESS, progress_bar=False)
        assert "chosen by timing the first steps" in svi.thread_status, svi.thread_status
        chosen = int(svi.thread_status.split()[0])
        assert set(seen[1:7]) == {1, 2} and set(seen[7:]) == {chosen}
        assert torch.get_num_threads() == 2
        seen.clear()
        svi.run(10, GUESS, progress_bar=False, num_threads=1)
        assert set(seen) == {1} and svi.thread_status == "1 thread(s), as given (num_threads=1)"
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_an_explicit_thread_count_holds_for_the_compiled_steps_too(monkeypatch):
    """A compiled step of small tensors switches to one thread by itself, except inside a run
    given num_threads: then the count is as given in every step (set once, restored once)."""
    torch.set_num_threads(1)
    try:
        ember.clear_param_store()
        svi = SVI(scale_model, scale_guide, optim.SGD({"lr": 1e-3}), JitTrace_ELBO())
        svi.step(GUESS)  # compiles the step
        calls = []
        real = torch.set_num_threads

        def watch(n):
            calls.append(n)
            real(n)

        monkeypatch.setattr(torch, "set_num_threads", watch)
        svi.run(5, GUESS, progress_bar=False, chunked=False, num_threads=2)
        assert calls == [2, 1]  # the run's setting, then the user's restored; no step in between
        calls.clear()
        real(2)
        svi.step(GUESS)  # outside a run: the compiled step takes one thread and gives it back
        assert calls == [1, 2]
    finally:
        torch.set_num_threads(1)


def test_progress_bar_on_and_off(capsys):
    ember.clear_param_store()
    svi = SVI(scale_model, scale_guide, optim.SGD({"lr": 1e-3}), JitTrace_ELBO())
    svi.run(30, GUESS, progress_bar=False)
    assert capsys.readouterr().err == ""
    svi.run(30, GUESS)
    err = capsys.readouterr().err
    assert "SVI" in err and "30/30" in err and "loss" in err


def test_arguments_are_checked():
    ember.clear_param_store()
    svi = SVI(scale_model, scale_guide, optim.SGD({"lr": 1e-3}), JitTrace_ELBO())
    with pytest.raises(TypeError, match="did you mean progress_bar="):
        svi.run(10, GUESS, progres_bar=False)
    with pytest.raises(TypeError, match="unexpected keyword argument rng_key"):
        svi.run(10, GUESS, rng_key=0)
    for bad in (-1, 2.0, True, "3"):
        with pytest.raises(ValueError, match="num_steps must be an integer >= 0"):
            svi.run(bad, GUESS)
    assert svi.run(np.int64(2), GUESS, progress_bar=False).shape == (2,)
    with pytest.raises(ValueError, match="num_threads must be None or an int >= 1"):
        svi.run(5, GUESS, num_threads=0)
    assert svi.run(0, GUESS).shape == (0,) and svi.compile_status == "no steps: num_steps=0"
    # a keyword the model takes goes to the model
    assert svi.run(3, guess=GUESS, progress_bar=False).shape == (3,)


def test_run_finds_the_scale_models_exact_posterior():
    # prior N(8.5, 1), measurement N(w, 0.75) of 9.5: the posterior is N(9.14, 0.6)
    ember.clear_param_store()
    torch.manual_seed(0)
    svi = SVI(scale_model, scale_guide, optim.Adam({"lr": 0.02}), JitTrace_ELBO())
    svi.run(3000, GUESS, progress_bar=False, chunked=True)
    svi.optim.optimizers[0].param_groups[0]["lr"] = 0.002  # a smaller step to settle (a new graph is recorded)
    svi.run(2000, GUESS, progress_bar=False, chunked=True)
    var = 1 / (1 + 1 / 0.75**2)
    assert ember.param("a").item() == pytest.approx(var * (8.5 + 9.5 / 0.75**2), abs=0.05)
    assert ember.param("b").item() == pytest.approx(var**0.5, abs=0.05)
    assert svi.compile_status.startswith("compiled")
