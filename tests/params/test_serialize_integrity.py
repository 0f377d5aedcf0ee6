"""Parameter-store and optimizer files: every byte is checksummed, malformed contents are named,
older files without a checksum load with a warning, and a loaded value is checked against the
constraint the model later declares (issue 17, point 4)."""

import random
import warnings

import pytest
import torch
from torch.distributions import constraints

import ember
from ember import optim
from ember.params.serialize import (
    FILE_MAGIC,
    CheckpointError,
    UnverifiedCheckpointWarning,
    atomic_save,
    load_digested,
    save_digested,
)


def _small_store():
    ember.param("loc", torch.tensor([0.5, -1.0, 2.0]))
    ember.param("scale", torch.tensor([1.5, 0.2]), constraint=constraints.positive)
    ember.param("p", torch.tensor(0.3), constraint=constraints.interval(0.0, 1.0))


def _step(opt):
    store = ember.get_param_store()
    loss = sum((v**2).sum() for v in store.values())
    loss.backward()
    params = [u for _, u in store.named_parameters()]
    opt(params)
    for u in params:
        u.grad = None


def _flip_positions(n, k=200):
    rng = random.Random(17)
    return sorted(rng.sample(range(n * 8), min(k, n * 8)))


def _every_flip_refused(path, load):
    data = path.read_bytes()
    refused = []
    for bit in _flip_positions(len(data)):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(flipped))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", UnverifiedCheckpointWarning)
                load(path)
        except CheckpointError:
            refused.append(bit)
    path.write_bytes(data)
    return refused, len(_flip_positions(len(data)))


def test_every_flipped_bit_of_a_param_store_file_is_refused(tmp_path):
    _small_store()
    path = tmp_path / "params.pt"
    ember.get_param_store().save(path)
    assert path.read_bytes().startswith(FILE_MAGIC)
    before = {k: v.detach().clone() for k, v in ember.get_param_store().named_parameters()}
    refused, total = _every_flip_refused(path, lambda p: ember.get_param_store().load(p))
    assert len(refused) == total == 200
    # a refused load leaves the store as it was; the intact file loads exactly
    assert {k: v for k, v in ember.get_param_store().named_parameters()}.keys() == before.keys()
    ember.clear_param_store()
    ember.get_param_store().load(path)
    for k, v in ember.get_param_store().named_parameters():
        assert torch.equal(v, before[k])


def test_every_flipped_bit_of_an_optimizer_file_is_refused(tmp_path):
    _small_store()
    opt = optim.Adam({"lr": 0.01})
    _step(opt)
    path = tmp_path / "optim.pt"
    opt.save(path)
    refused, total = _every_flip_refused(path, lambda p: optim.Adam({"lr": 0.01}).load(p))
    assert len(refused) == total == 200
    optim.Adam({"lr": 0.01}).load(path)  # the intact file


def test_a_changed_payload_byte_names_the_checksum(tmp_path):
    _small_store()
    path = tmp_path / "params.pt"
    ember.get_param_store().save(path)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"params\.pt: its contents do not match the checksum"):
        ember.get_param_store().load(path)
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01  # the magic line
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="not an Ember file"):
        ember.get_param_store().load(path)


def test_the_wrong_kind_of_file_says_which_it_is(tmp_path):
    _small_store()
    opt = optim.Adam({"lr": 0.01})
    _step(opt)
    opt.save(tmp_path / "optim.pt")
    ember.get_param_store().save(tmp_path / "params.pt")
    with pytest.raises(CheckpointError, match="it is an optimizer state"):
        ember.get_param_store().load(tmp_path / "optim.pt")
    with pytest.raises(CheckpointError, match="it is a parameter store"):
        optim.Adam({"lr": 0.01}).load(tmp_path / "params.pt")


def _store_file(tmp_path, params, cons):
    path = tmp_path / "bad.pt"
    save_digested({"format": "ember.param_store", "version": 2, "params": params, "constraints": cons}, path, "ember.param_store")
    return path


@pytest.mark.parametrize(
    "params, cons, message",
    [
        ([1.0, 2.0], {}, r"'params' and 'constraints' must be dicts, got list and dict"),
        ({"w": torch.tensor([1, 2])}, {"w": "real"}, r"param 'w' has dtype torch\.int64"),
        ({"w": [1.0, 2.0]}, {"w": "real"}, r"param 'w' is a list, not a tensor"),
        ({"w": torch.tensor([1.0, float("nan")])}, {"w": "real"}, r"param 'w' holds non-finite values"),
        ({"w": torch.zeros(2)}, {"w": 3}, r"param 'w': malformed constraint spec in checkpoint: 3"),
        ({"w": torch.zeros(2)}, {"w": "positiv"}, r"param 'w': unknown constraint 'positiv'"),
        ({"w": torch.zeros(2)}, {"w": {"type": "interval", "lower": 0.0}}, r"param 'w': malformed constraint spec.*KeyError"),
        ({"w": torch.zeros(2)}, {"w": {"type": "interval", "lower": "0", "upper": 1.0}}, r"param 'w': malformed constraint spec"),
        ({"w": torch.zeros(2)}, {"w": {"type": "independent", "base": "real", "ndims": -1}}, r"ndims must be an integer >= 0"),
        ({"w": torch.zeros(2)}, {"w": "real", "v": "real"}, r"constraints for parameters it does not hold: \['v'\]"),
    ],
)
def test_malformed_param_store_contents_are_named(tmp_path, params, cons, message):
    ember.param("keep", torch.tensor(1.0))
    path = _store_file(tmp_path, params, cons)
    with pytest.raises(CheckpointError, match=message) as e:
        ember.get_param_store().load(path)
    assert str(tmp_path / "bad.pt") in str(e.value)
    assert list(ember.get_param_store().keys()) == ["keep"]  # untouched


def test_malformed_optimizer_contents_are_named(tmp_path):
    _small_store()
    opt = optim.Adam({"lr": 0.01})
    _step(opt)
    state = opt.get_plain_state()
    state["params"]["loc"]["state"]["exp_avg"] = "zeros"
    save_digested(state, tmp_path / "o.pt", "ember.optim")
    with pytest.raises(CheckpointError, match=r"param 'loc': 'exp_avg' holds a str, expected tensors or numbers"):
        optim.Adam({"lr": 0.01}).load(tmp_path / "o.pt")
    state = opt.get_plain_state()
    state["params"]["loc"]["shape"] = "3"
    save_digested(state, tmp_path / "o.pt", "ember.optim")
    with pytest.raises(CheckpointError, match=r"param 'loc': shape '3' is not a list of sizes"):
        optim.Adam({"lr": 0.01}).load(tmp_path / "o.pt")
    save_digested([1, 2], tmp_path / "o.pt", "ember.optim")
    with pytest.raises(CheckpointError, match="not an Ember optimizer state"):
        optim.Adam({"lr": 0.01}).load(tmp_path / "o.pt")


def test_files_without_a_checksum_load_with_a_warning(tmp_path):
    _small_store()
    state = ember.get_param_store().get_plain_state()  # old files held constraint specs
    old = tmp_path / "old.pt"  # what Ember wrote before: a bare torch.save zip
    atomic_save({"format": "ember.param_store", "version": 1, **state}, old)
    ember.clear_param_store()
    with pytest.warns(UnverifiedCheckpointWarning, match="without a checksum"):
        ember.get_param_store().load(old)
    assert torch.equal(ember.param("loc"), torch.tensor([0.5, -1.0, 2.0]))
    # still checked for form
    atomic_save({"format": "ember.param_store", "version": 1, "params": {"w": torch.tensor([1])}, "constraints": {}}, old)
    with pytest.warns(UnverifiedCheckpointWarning), pytest.raises(CheckpointError, match="dtype torch.int64"):
        ember.get_param_store().load(old)


def test_a_truncated_header_and_a_missing_file(tmp_path):
    path = tmp_path / "t.pt"
    path.write_bytes(FILE_MAGIC + b"ember.param_store")
    with pytest.raises(CheckpointError, match="truncated header"):
        load_digested(path, "ember.param_store")
    with pytest.raises(CheckpointError, match="parameter store file not found"):
        ember.get_param_store().load(tmp_path / "missing.pt")


def test_a_loaded_value_outside_the_declared_constraint_is_an_error(tmp_path):
    # a store whose 'scale' was saved unconstrained and negative, then a model declaring it positive
    path = _store_file(tmp_path, {"scale": torch.tensor([0.5, -2.0])}, {"scale": "real"})
    ember.get_param_store().load(path)
    with pytest.raises(ValueError, match=r"param 'scale': the value loaded .* lies outside the constraint _?GreaterThan.*-2\.0"):
        ember.param("scale", torch.ones(2), constraint=constraints.positive)


def test_a_loaded_value_inside_the_declared_constraint_takes_it(tmp_path):
    path = _store_file(tmp_path, {"scale": torch.tensor([0.5, 2.0])}, {"scale": "real"})
    ember.get_param_store().load(path)
    v = ember.param("scale", torch.ones(2), constraint=constraints.positive)
    assert torch.allclose(v, torch.tensor([0.5, 2.0]))
    assert ember.get_param_store().get_param_constraint("scale") is constraints.positive
    # later calls are the plain hot path again
    assert torch.allclose(ember.param("scale"), torch.tensor([0.5, 2.0]))


def test_the_same_constraint_after_a_load_keeps_the_tensor(tmp_path):
    _small_store()
    ember.get_param_store().save(tmp_path / "p.pt")
    ember.clear_param_store()
    ember.get_param_store().load(tmp_path / "p.pt")
    u = dict(ember.get_param_store().named_parameters())["p"]
    ember.param("p", torch.tensor(0.5), constraint=constraints.interval(0.0, 1.0))  # a new, equal constraint object
    assert dict(ember.get_param_store().named_parameters())["p"] is u


def test_a_loaded_constraint_stays_when_param_declares_none(tmp_path):
    # Pyro: param(name) of a stored parameter keeps its constraint; real, the default, declares nothing
    path = _store_file(tmp_path, {"scale": torch.tensor([0.5, 2.0])}, {"scale": "positive"})  # unconstrained values
    ember.get_param_store().load(path)
    assert torch.allclose(ember.param("scale"), torch.tensor([0.5, 2.0]).exp())
    assert ember.get_param_store().get_param_constraint("scale") is constraints.positive
    ember.param("scale", constraint=constraints.positive)  # a declared, equal constraint changes nothing
    assert torch.allclose(ember.param("scale"), torch.tensor([0.5, 2.0]).exp())
