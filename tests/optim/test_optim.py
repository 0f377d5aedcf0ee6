"""Tests of ember.optim: wrappers of torch optimizers and LR schedulers for the param store."""

import math

import pytest
import torch
from torch.distributions import constraints

import ember
from ember import optim
from ember.params import CheckpointError


@pytest.fixture(autouse=True)
def fresh_store():
    ember.clear_param_store()
    yield
    ember.clear_param_store()


def leaf(name):
    """The unconstrained leaf tensor of param ``name`` (what SVI hands to the optimizer)."""
    return dict(ember.get_param_store().named_parameters())[name]


def take_step(opt, loss_fn, names=None):
    """One SVI-like step: backward, ``opt(params)``, then clear the grads."""
    loss_fn().backward()
    store = ember.get_param_store()
    names = list(store.keys()) if names is None else names
    params = [leaf(n) for n in names]
    opt(params)
    for p in params:
        p.grad = None


TARGET = torch.tensor([1.0, -2.0, 3.0])


def quadratic():
    return ((ember.param("w") - TARGET) ** 2).sum()


# ---- plain optimizers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda args: optim.Adam(args),
        lambda args: optim.PyroOptim(torch.optim.Adam, args),
        lambda args: optim.EmberOptim(torch.optim.Adam, args),
    ],
    ids=["wrapper", "PyroOptim", "EmberOptim"],
)
def test_adam_matches_torch_step_for_step(make):
    init = torch.tensor([0.5, 0.5, 0.5])
    ember.param("w", init.clone())
    opt = make({"lr": 0.05, "betas": (0.8, 0.99)})
    ref = init.clone().requires_grad_(True)
    ref_opt = torch.optim.Adam([ref], lr=0.05, betas=(0.8, 0.99))
    for _ in range(20):
        take_step(opt, quadratic)
        ref_opt.zero_grad()
        ((ref - TARGET) ** 2).sum().backward()
        ref_opt.step()
        assert torch.equal(leaf("w").detach(), ref.detach())
    assert not torch.allclose(leaf("w").detach(), init)
    assert len(opt.optimizers) == 1 and isinstance(opt.optimizers[0], torch.optim.Adam)


def test_per_module_learning_rates_share_two_optimizers():
    calls = []

    def per_param(module_name, param_name):
        calls.append((module_name, param_name))
        return {"lr": 0.1} if module_name == "baseline" else {"lr": 1e-3}

    torch.manual_seed(0)
    baseline = torch.nn.Linear(3, 1)
    decoder = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.Linear(4, 2))
    for i in range(6):
        ember.param(f"p{i}", torch.randn(2))

    def loss():
        b = ember.module("baseline", baseline)
        d = ember.module("decoder", decoder)
        out = b(torch.ones(1, 3)).sum() + (d(torch.ones(1, 2)) ** 2).sum()
        return out + sum((ember.param(f"p{i}") ** 2).sum() for i in range(6))

    opt = optim.Adam(per_param)
    loss()  # registers the modules
    take_step(opt, loss)
    n_params = len(ember.get_param_store())
    assert n_params == 2 + 4 + 6
    assert len(opt.optimizers) == 2
    by_lr = {o.param_groups[0]["lr"]: o for o in opt.optimizers}
    assert set(by_lr) == {0.1, 1e-3}
    assert all(len(o.param_groups) == 1 for o in opt.optimizers)
    assert {id(p) for p in by_lr[0.1].param_groups[0]["params"]} == {id(p) for p in baseline.parameters()}
    others = {id(p) for p in decoder.parameters()} | {id(leaf(f"p{i}")) for i in range(6)}
    assert {id(p) for p in by_lr[1e-3].param_groups[0]["params"]} == others
    assert ("baseline", "weight") in calls and ("decoder", "1.bias") in calls and ("p0", "p0") in calls
    assert len(calls) == n_params

    # known params keep their optimizer (no new calls); a new param joins the existing instance
    ember.param("late", torch.zeros(2))
    take_step(opt, lambda: loss() + (ember.param("late") - 1.0).pow(2).sum())
    assert len(calls) == n_params + 1 and calls[-1] == ("late", "late")
    assert len(opt.optimizers) == 2
    slow = by_lr[1e-3]
    assert len(slow.param_groups) == 1 and any(p is leaf("late") for p in slow.param_groups[0]["params"])
    assert slow.state[leaf("late")]["step"].item() == 1
    assert slow.state[leaf("p0")]["step"].item() == 2
    assert len(opt.optim_objs) == n_params + 1
    assert all(opt.optim_objs[p] is by_lr[0.1] for p in baseline.parameters())


def test_clipped_adam_clamps_grads_and_decays_lr():
    ember.param("x", torch.tensor([0.0, 0.0]))
    lr, lrd, b1, b2, eps = 0.1, 0.5, 0.9, 0.999, 1e-8
    opt = optim.ClippedAdam({"lr": lr, "clip_norm": 1.0, "lrd": lrd})
    scale = torch.tensor([100.0, -0.5])
    x_ref, m, v = torch.zeros(2), torch.zeros(2), torch.zeros(2)
    for t in range(1, 4):
        loss = (ember.param("x") * scale).sum()
        loss.backward()
        x = leaf("x")
        opt([x])
        assert torch.equal(x.grad, torch.tensor([1.0, -0.5]))  # clamped in place to [-clip_norm, clip_norm]
        x.grad = None
        g = scale.clamp(-1.0, 1.0)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        lr_t = lr * lrd**t  # as in Pyro: the decay is applied at the start of each step
        x_ref = x_ref - lr_t * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (v.sqrt() + eps)
        assert torch.allclose(x.detach(), x_ref, rtol=1e-6, atol=1e-7)
        assert opt.optimizers[0].param_groups[0]["lr"] == pytest.approx(lr * lrd**t)


def test_clipped_adam_validates_args():
    with pytest.raises(ValueError, match="clip_norm"):
        optim.clipped_adam.ClippedAdam([torch.zeros(1, requires_grad=True)], clip_norm=0.0)


def test_clip_args_clip_norm_and_clip_value():
    ember.param("x", torch.tensor([0.0, 0.0]))
    opt = optim.SGD({"lr": 1.0}, {"clip_norm": 1.0})
    take_step(opt, lambda: (ember.param("x") * torch.tensor([3.0, 4.0])).sum())  # grad norm 5 -> 1
    assert torch.allclose(leaf("x").detach(), torch.tensor([-0.6, -0.8]), atol=1e-6)

    ember.clear_param_store()
    ember.param("y", torch.tensor([0.0, 0.0]))
    opt = optim.SGD({"lr": 1.0}, {"clip_value": 0.5})
    take_step(opt, lambda: (ember.param("y") * torch.tensor([3.0, -0.25])).sum())
    assert torch.equal(leaf("y").detach(), torch.tensor([-0.5, 0.25]))


def test_clip_args_callable_per_module():
    ember.param("a", torch.tensor([0.0]))
    ember.param("b", torch.tensor([0.0]))
    opt = optim.SGD({"lr": 1.0}, lambda module_name, param_name: {"clip_value": 0.1} if module_name == "a" else None)
    take_step(opt, lambda: (ember.param("a") * 10.0 + ember.param("b") * 10.0).sum())
    assert torch.allclose(leaf("a").detach(), torch.tensor([-0.1]))
    assert torch.equal(leaf("b").detach(), torch.tensor([-10.0]))


def test_unknown_clip_args_raise():
    with pytest.raises(ValueError, match="clip_nrom"):
        optim.Adam({"lr": 0.1}, {"clip_nrom": 1.0})
    with pytest.raises(ValueError, match="> 0"):
        optim.Adam({"lr": 0.1}, {"clip_norm": -1.0})


def test_params_without_grad_are_untouched():
    ember.param("a", torch.tensor([1.0, 2.0]))
    ember.param("b", torch.tensor([3.0, 4.0]))
    ember.param("c", torch.tensor([5.0]))
    opt = optim.Adam({"lr": 0.1, "weight_decay": 0.5})
    take_step(opt, lambda: (ember.param("a") ** 2).sum() + ember.param("c").sum(), names=["a", "b", "c"])
    assert torch.equal(leaf("b").detach(), torch.tensor([3.0, 4.0]))
    assert not opt.optimizers[0].state.get(leaf("b"))
    assert not torch.equal(leaf("a").detach(), torch.tensor([1.0, 2.0]))

    # a param of the same torch optimizer that has a gradient but is not part of this step is left alone
    c_before = leaf("c").detach().clone()
    leaf("c").grad = torch.tensor([7.0])
    (ember.param("a") ** 2).sum().backward()
    opt([leaf("a"), leaf("b")])
    assert torch.equal(leaf("c").detach(), c_before)
    assert torch.equal(leaf("c").grad, torch.tensor([7.0]))
    assert opt.optimizers[0].state[leaf("c")]["step"].item() == 1
    assert opt.optimizers[0].state[leaf("a")]["step"].item() == 2


def test_bad_optimizer_args_name_optimizer_and_param():
    ember.param("a", torch.tensor([1.0]))
    opt = optim.Adam({"lrr": 0.1})
    with pytest.raises(TypeError, match=r"Adam.*'a'.*lrr"):
        take_step(opt, lambda: ember.param("a").sum())
    opt = optim.SGD({"lr": -1.0})
    with pytest.raises(ValueError, match=r"SGD.*'a'"):
        take_step(opt, lambda: ember.param("a").sum())


def test_tensor_not_in_store_raises():
    opt = optim.Adam({"lr": 0.1})
    t = torch.zeros(2, requires_grad=True)
    t.sum().backward()
    with pytest.raises(ValueError, match="not a parameter of Ember's parameter store"):
        opt([t])


def test_replaced_param_gets_fresh_state_and_old_tensor_is_dropped():
    ember.param("a", torch.tensor([1.0]))
    opt = optim.Adam({"lr": 0.1})
    take_step(opt, lambda: ember.param("a").sum())
    old = leaf("a")
    ember.get_param_store()["a"] = torch.tensor([5.0])
    assert leaf("a") is not old
    take_step(opt, lambda: ember.param("a").sum())
    group = opt.optimizers[0].param_groups[0]["params"]
    assert len(group) == 1 and group[0] is leaf("a")
    assert opt.optimizers[0].state[leaf("a")]["step"].item() == 1
    assert old not in opt.optimizers[0].state


def test_wrappers_for_every_torch_optimizer_and_scheduler():
    for name, cls in vars(torch.optim).items():
        if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer:
            wrapper = getattr(optim, name)
            assert issubclass(wrapper, optim.PyroOptim) and name in optim.__all__
    for name in ["ExponentialLR", "StepLR", "MultiStepLR", "CosineAnnealingLR", "ReduceLROnPlateau", "LambdaLR", "OneCycleLR", "CyclicLR"]:
        assert issubclass(getattr(optim, name), optim.PyroLRScheduler) and name in optim.__all__
    assert isinstance(optim.ClippedAdam({"lr": 0.1}), optim.PyroOptim)


# ---- state, save, load ------------------------------------------------------------------------------


def _resumable_problem(net_seed):
    torch.manual_seed(net_seed)
    net = torch.nn.Linear(3, 2)

    def loss():
        n = ember.module("net", net)
        a = ember.param("a", torch.tensor([0.3, -0.2]))
        s = ember.param("s", torch.tensor(2.0), constraint=constraints.positive)
        y = n(torch.tensor([[1.0, 2.0, -1.0]]))
        return ((y - a) ** 2).sum() + (s - 0.5) ** 2 + (a**2).sum()

    return net, loss


def _lr_by_module(module_name, param_name):
    return {"lr": 0.05} if module_name == "net" else {"lr": 0.1, "betas": (0.8, 0.95)}


def test_save_load_round_trip_is_bit_identical(tmp_path):
    # uninterrupted run
    _, loss = _resumable_problem(0)
    loss()
    opt = optim.Adam(_lr_by_module)
    expected = []
    for i in range(10):
        take_step(opt, loss)
        if i >= 5:
            expected.append({k: v.detach().clone() for k, v in ember.get_param_store().named_parameters()})

    # interrupted run: 5 steps, save, then a fresh store, module and optimizer
    ember.clear_param_store()
    _, loss = _resumable_problem(0)
    loss()
    opt = optim.Adam(_lr_by_module)
    for _ in range(5):
        take_step(opt, loss)
    ember.get_param_store().save(tmp_path / "params.pt")
    opt.save(tmp_path / "optim.pt")

    ember.clear_param_store()
    _, loss = _resumable_problem(123)  # a differently initialised module: the store's values win
    ember.get_param_store().load(tmp_path / "params.pt")
    opt2 = optim.Adam(_lr_by_module)
    opt2.load(tmp_path / "optim.pt")
    loss()
    names = list(reversed(list(ember.get_param_store().keys())))  # met in another order
    for i in range(5):
        take_step(opt2, loss, names=names)
        got = dict(ember.get_param_store().named_parameters())
        assert set(got) == set(expected[i])
        for k, v in expected[i].items():
            assert torch.equal(got[k].detach(), v), (i, k)
    assert len(opt2.optimizers) == 2


def test_state_is_plain_data_keyed_by_name_and_set_state_applies_now():
    ember.param("a", torch.tensor([1.0, 2.0]))
    opt = optim.Adam({"lr": 0.1})
    take_step(opt, lambda: (ember.param("a") ** 2).sum())
    state = opt.get_plain_state()
    assert state["format"] == "ember.optim"
    assert set(state["params"]) == {"a"}
    assert set(state["params"]["a"]["state"]) == {"step", "exp_avg", "exp_avg_sq"}
    group = state["groups"][state["params"]["a"]["group"]]
    assert group["hyperparams"]["lr"] == 0.1 and group["params"] == ["a"]
    saved_avg = state["params"]["a"]["state"]["exp_avg"].clone()
    take_step(opt, lambda: (ember.param("a") ** 2).sum())
    assert torch.equal(state["params"]["a"]["state"]["exp_avg"], saved_avg)  # a snapshot, not a view
    opt.set_state(state)  # already attached: installed immediately
    live = opt.optimizers[0].state[leaf("a")]
    assert live["step"].item() == 1 and torch.equal(live["exp_avg"], saved_avg)


def test_loaded_state_of_unseen_params_is_kept(tmp_path):
    ember.param("a", torch.tensor([1.0]))
    ember.param("b", torch.tensor([2.0]))
    opt = optim.Adam({"lr": 0.1})
    take_step(opt, lambda: (ember.param("a") * ember.param("b")).sum())
    opt.save(tmp_path / "o.pt")
    opt2 = optim.Adam({"lr": 0.1})
    opt2.load(tmp_path / "o.pt")
    take_step(opt2, lambda: ember.param("a").sum(), names=["a"])  # "b" not met yet
    state = opt2.get_plain_state()
    assert set(state["params"]) == {"a", "b"}
    assert state["params"]["b"]["state"]["step"].item() == 1
    assert state["params"]["a"]["state"]["step"].item() == 2


def test_bad_files_raise_checkpoint_error(tmp_path):
    ember.param("a", torch.tensor([1.0]))
    opt = optim.Adam({"lr": 0.1})
    take_step(opt, lambda: ember.param("a").sum())
    path = tmp_path / "optim.pt"
    opt.save(path)
    data = path.read_bytes()

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        optim.Adam({"lr": 0.1}).load(truncated)

    tampered = tmp_path / "tampered.pt"
    torch.save({"format": "ember.optim", "payload": _NotPlainData()}, tampered)
    with pytest.raises(CheckpointError, match="refuses to unpickle"):
        optim.Adam({"lr": 0.1}).load(tampered)

    store_file = tmp_path / "store.pt"
    ember.get_param_store().save(store_file)
    with pytest.raises(CheckpointError, match="parameter store"):
        optim.Adam({"lr": 0.1}).load(store_file)

    with pytest.raises(CheckpointError, match="not found"):
        optim.Adam({"lr": 0.1}).load(tmp_path / "missing.pt")

    with pytest.raises(CheckpointError, match="saved by a Adam optimizer"):
        optim.SGD({"lr": 0.1}).load(path)


class _NotPlainData:
    pass


# ---- schedulers -------------------------------------------------------------------------------------

SCHEDULERS = [
    (optim.ExponentialLR, torch.optim.lr_scheduler.ExponentialLR, {"gamma": 0.7}),
    (optim.StepLR, torch.optim.lr_scheduler.StepLR, {"step_size": 2, "gamma": 0.5}),
]


@pytest.mark.parametrize(("wrapper", "torch_cls", "kwargs"), SCHEDULERS, ids=["ExponentialLR", "StepLR"])
def test_scheduler_decays_lr_like_torch(wrapper, torch_cls, kwargs):
    init = torch.tensor([0.5, 0.5, 0.5])
    ember.param("w", init.clone())
    sched = wrapper({"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.1, "momentum": 0.5}, **kwargs})
    ref = init.clone().requires_grad_(True)
    ref_opt = torch.optim.SGD([ref], lr=0.1, momentum=0.5)
    ref_sched = torch_cls(ref_opt, **kwargs)
    for _ in range(6):
        for _ in range(2):
            take_step(sched, quadratic)
            ref_opt.zero_grad()
            ((ref - TARGET) ** 2).sum().backward()
            ref_opt.step()
            assert torch.equal(leaf("w").detach(), ref.detach())
        sched.step()
        ref_sched.step()
        assert sched.optimizers[0].param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]
        assert sched.get_last_lr() == ref_sched.get_last_lr()
    assert ref_opt.param_groups[0]["lr"] < 0.1 / 4
    assert len(sched.schedulers) == 1 and isinstance(sched.schedulers[0], torch_cls)


@pytest.mark.parametrize(("wrapper", "torch_cls", "kwargs"), SCHEDULERS, ids=["ExponentialLR", "StepLR"])
def test_scheduler_state_round_trip(tmp_path, wrapper, torch_cls, kwargs):
    args = {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.1}, **kwargs}

    def run(sched, epochs):
        out = []
        for _ in range(epochs):
            take_step(sched, quadratic)
            sched.step()
            out.append((leaf("w").detach().clone(), sched.optimizers[0].param_groups[0]["lr"]))
        return out

    ember.param("w", torch.zeros(3))
    expected = run(wrapper(args), 7)[3:]

    ember.clear_param_store()
    ember.param("w", torch.zeros(3))
    sched = wrapper(args)
    run(sched, 3)
    ember.get_param_store().save(tmp_path / "p.pt")
    sched.save(tmp_path / "s.pt")
    state = sched.get_plain_state()
    assert state["scheduler"] == torch_cls.__name__
    assert next(iter(state["groups"].values()))["scheduler"]["last_epoch"] == 3

    ember.clear_param_store()
    ember.get_param_store().load(tmp_path / "p.pt")
    sched2 = wrapper(args)
    sched2.load(tmp_path / "s.pt")
    got = run(sched2, 4)
    for (w_exp, lr_exp), (w_got, lr_got) in zip(expected, got, strict=True):
        assert torch.equal(w_got, w_exp)
        assert lr_got == lr_exp
    assert args["optimizer"] is torch.optim.Adam  # the caller's dict is left intact


def test_reduce_lr_on_plateau_takes_the_metric():
    ember.param("w", torch.zeros(3))
    sched = optim.ReduceLROnPlateau({"optimizer": torch.optim.SGD, "optim_args": {"lr": 0.1}, "patience": 0, "factor": 0.5})
    take_step(sched, quadratic)
    lr = lambda: sched.optimizers[0].param_groups[0]["lr"]
    sched.step(1.0)
    assert lr() == pytest.approx(0.1)
    sched.step(2.0)  # worse: reduce
    assert lr() == pytest.approx(0.05)
    sched.step(0.5)  # better: keep
    assert lr() == pytest.approx(0.05)
    sched.step(torch.tensor(3.0))
    assert lr() == pytest.approx(0.025)


def test_scheduler_with_late_param_and_per_group_lambda():
    ember.param("a", torch.zeros(2))
    sched = optim.LambdaLR({"optimizer": torch.optim.SGD, "optim_args": {"lr": 1.0}, "lr_lambda": lambda epoch: 0.5**epoch})
    take_step(sched, lambda: ember.param("a").sum())
    sched.step()
    ember.param("b", torch.zeros(2))
    take_step(sched, lambda: ember.param("a").sum() + ember.param("b").sum())  # b joins the scheduled group
    sched.step()
    assert len(sched.schedulers) == 1 and len(sched.optimizers[0].param_groups) == 1
    assert torch.equal(leaf("b").detach(), torch.tensor([-0.5, -0.5]))  # stepped with the current lr 0.5
    assert sched.optimizers[0].param_groups[0]["lr"] == 0.25


def test_one_argument_optim_args_callable_gets_the_full_normalized_name():
    seen = []

    def per_param(param_name):
        seen.append(param_name)
        return {"lr": 0.5 if param_name == "lin.weight" else 0.25}

    lin = torch.nn.Linear(1, 1, bias=False)
    ember.module("lin", lin)  # stored as "lin$$$weight"
    ember.param("a", torch.tensor(0.0))
    opt = optim.SGD(per_param)
    w0 = lin.weight.item()

    def loss():
        return ember.param("a") + ember.get_param_store()["lin$$$weight"].sum()

    take_step(opt, loss)
    assert sorted(seen) == ["a", "lin.weight"]
    assert ember.param("a").item() == pytest.approx(-0.25)
    assert ember.get_param_store()["lin$$$weight"].item() == pytest.approx(w0 - 0.5)


def test_two_argument_optim_args_callable_gets_module_and_param_names():
    seen = []

    def per_param(module_name, param_name):
        seen.append((module_name, param_name))
        return {"lr": 0.1}

    lin = torch.nn.Linear(1, 1, bias=False)
    ember.module("lin", lin)
    ember.param("a", torch.tensor(0.0))
    take_step(optim.SGD(per_param), lambda: ember.param("a") + ember.get_param_store()["lin$$$weight"].sum())
    assert sorted(seen) == [("a", "a"), ("lin", "weight")]  # as Pyro: a name without a module is both


def test_pyro_scheduler_names_exist_and_wrap_torch():
    import torch.optim.lr_scheduler as sched

    for name in ("ChainedScheduler", "SequentialLR", "LRScheduler"):
        cls = getattr(optim, name)
        assert issubclass(cls, optim.PyroLRScheduler) and cls.__name__ == name
        assert getattr(sched, name).__name__ in cls.__doc__
