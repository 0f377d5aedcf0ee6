"""ParamStore behaviours Pyro code relies on: ``.unconstrained()`` on parameter values,
``replace_param`` with a current value, and ``get_state``/``set_state`` with constraint objects."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from torch.distributions import constraints

import ember


@pytest.fixture(autouse=True)
def _clear() -> None:
    ember.clear_param_store()


def test_a_constrained_value_gives_its_unconstrained_leaf() -> None:
    s = ember.param("s", torch.tensor(2.0), constraint=constraints.positive)
    u = s.unconstrained()
    assert u is ember.get_param_store().unconstrained("s")
    assert u.is_leaf and u.requires_grad and u.item() == pytest.approx(math.log(2.0))
    assert ember.get_param_store()["s"].unconstrained() is u


def test_an_unconstrained_param_is_its_own_leaf() -> None:
    r = ember.param("r", torch.tensor(2.0))
    assert r.unconstrained() is r


def test_module_params_answer_unconstrained() -> None:
    lin = torch.nn.Linear(1, 1)
    ember.module("lin", lin)
    assert lin.weight.unconstrained() is lin.weight


def test_replace_param_takes_the_current_constrained_value() -> None:
    # Pyro's "Customizing SVI objectives" idiom
    store = ember.get_param_store()
    ember.param("s", torch.tensor(2.0), constraint=constraints.positive)
    store.replace_param("s", torch.tensor(5.0), ember.param("s"))
    assert ember.param("s").item() == pytest.approx(5.0)
    with pytest.raises(ValueError, match="'s' does not hold the given old tensor"):
        store.replace_param("s", torch.tensor(1.0), torch.tensor(5.0))


def test_get_state_holds_constraint_objects_and_set_state_restores_them() -> None:
    ember.param("s", torch.tensor(2.0), constraint=constraints.positive)
    ember.param("p", torch.tensor([0.2, 0.8]), constraint=constraints.simplex)
    state = ember.get_param_store().get_state()
    assert state["constraints"]["s"] is constraints.positive and state["constraints"]["p"] is constraints.simplex
    ember.clear_param_store()
    ember.get_param_store().set_state(state)
    assert ember.get_param_store().get_param_constraint("s") is constraints.positive
    assert ember.param("p").tolist() == pytest.approx([0.2, 0.8])


def test_plain_state_and_files_keep_specs(tmp_path) -> None:
    from ember.distributions import constraints as ec

    ember.param("s", torch.tensor(2.0), constraint=ec.softplus_positive)
    assert ember.get_param_store().get_plain_state()["constraints"] == {"s": "softplus_positive"}
    ember.get_param_store().save(tmp_path / "p.pt")
    ember.clear_param_store()
    ember.get_param_store().load(tmp_path / "p.pt")
    assert ember.get_param_store().get_param_constraint("s") is ec.softplus_positive
    copy = pickle.loads(pickle.dumps(ember.get_param_store()))
    assert copy.get_param_constraint("s") is ec.softplus_positive
    assert ember.param("s").item() == pytest.approx(2.0)
