"""PyroModuleList (Pyro's pyro.nn.PyroModuleList): the site names and types pyro-ppl 1.9.2 gives."""

import torch
from torch import nn

import ember
import ember.distributions as dist
from ember import poutine
from ember.nn import PyroModule, PyroModuleList, PyroParam, PyroSample


class Net(PyroModule):
    def __init__(self):
        super().__init__()
        self.layers = PyroModuleList([PyroModule[nn.Linear](2, 3), PyroModule[nn.Linear](3, 1)])
        self.layers[0].weight = PyroSample(dist.Normal(0.0, 1.0).expand([3, 2]).to_event(2))
        self.layers[1].bias = PyroParam(torch.ones(1), dist.constraints.positive)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def test_is_the_mixin_and_a_module_list():
    assert PyroModule[nn.ModuleList] is PyroModuleList
    lst = PyroModuleList([nn.Linear(2, 2)])
    assert isinstance(lst, nn.ModuleList) and isinstance(lst, PyroModule)
    assert type(lst[0]) is nn.Linear  # plain children stay plain


def test_children_are_named_by_index_under_the_list():
    ember.clear_param_store()
    net = Net()
    tr = poutine.trace(net).get_trace(torch.ones(4, 2))
    sites = [(n, s["type"]) for n, s in tr.nodes.items() if s["type"] in ("sample", "param")]
    assert sites == [("layers.0.weight", "sample"), ("layers.0.bias", "param"), ("layers.1.weight", "param"),
                     ("layers.1.bias", "param")]
    assert sorted(ember.get_param_store().keys()) == ["layers.0.bias", "layers.1.bias", "layers.1.weight"]
    assert (net.layers._pyro_name, net.layers[0]._pyro_name) == ("layers", "layers.0")
    assert ember.get_param_store()["layers.1.bias"].item() == 1.0


def test_appended_children_and_slices():
    ember.clear_param_store()
    net = Net()
    net.layers.append(PyroModule[nn.Linear](1, 1))
    assert net.layers[2]._pyro_name == "layers.2" and len(net.layers) == 3
    head = net.layers[2:]
    assert type(head) is nn.ModuleList  # a slice is a plain ModuleList; the children keep their names
    tr = poutine.trace(lambda: [layer(torch.ones(1, 1)) for layer in head]).get_trace()
    assert [n for n, s in tr.nodes.items() if s["type"] == "param"] == ["layers.2.weight", "layers.2.bias"]
    assert [n for n, _ in net.named_parameters()] == ["layers.0.bias", "layers.1.weight", "layers.1.bias_unconstrained",
                                                      "layers.2.weight", "layers.2.bias"]


def test_nested_and_standalone_lists():
    nested = PyroModuleList([PyroModuleList([PyroModule[nn.Linear](1, 1)])])
    assert type(nested[0]) is PyroModuleList and type(nested[:1]) is nn.ModuleList
    assert (nested._pyro_name, nested[0]._pyro_name, nested[0][0]._pyro_name) == ("", "0", "0.0")


def test_add_module_names_a_pyro_child():
    root = PyroModule("root")
    root.add_module("lin", PyroModule[nn.Linear](1, 1))
    assert root.lin._pyro_name == "root.lin"
