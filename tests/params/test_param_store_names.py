"""Pyro's names in pyro.params.param_store: StateDict and normalize_param_name."""

import typing

import torch

import ember
from ember.params.param_store import StateDict, normalize_param_name, param_with_module_name


def test_normalize_param_name():
    assert normalize_param_name("decoder$$$fc1.weight") == "decoder.fc1.weight"
    assert normalize_param_name(param_with_module_name("enc", "w")) == "enc.w"
    assert normalize_param_name("plain") == "plain"


def test_state_dict_is_the_typed_dict_of_get_state():
    assert typing.is_typeddict(StateDict)
    assert set(typing.get_type_hints(StateDict)) == {"params", "constraints"}
    ember.clear_param_store()
    ember.param("a", torch.ones(2), constraint=ember.distributions.constraints.positive)
    state = ember.get_param_store().get_state()
    assert set(state) == set(StateDict.__annotations__)
    assert typing.get_type_hints(type(ember.get_param_store()).get_state)["return"] is StateDict
