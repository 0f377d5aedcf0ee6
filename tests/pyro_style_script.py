"""A script written against Pyro 1.x's module paths only (no `ember` anywhere): tests/test_compat.py
runs it with `ember.compat.alias_pyro()` active, so each `pyro.X` below is `ember.X`."""

import queue

import pyro
import pyro.distributions as dist
import pyro.distributions.torch  # noqa: F401
import pyro.poutine as poutine
import torch
from pyro.contrib.examples import multi_mnist  # noqa: F401
from pyro.contrib.examples.util import get_data_loader  # noqa: F401
from pyro.distributions import constraints, transforms
from pyro.distributions.util import broadcast_shape, is_identically_zero, scale_and_mask, sum_rightmost
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.abstract_infer import Marginals, TracePosterior
from pyro.infer.mcmc.util import diagnostics  # noqa: F401
from pyro.infer.util import guess_max_plate_nesting  # noqa: F401
from pyro.ops.stats import effective_sample_size, hpdi, quantile
from pyro.optim import Adam
from pyro.poutine.handlers import queue as queue_handler
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import am_i_wrapped, apply_stack, effectful  # noqa: F401
from pyro.poutine.trace_struct import Trace
from pyro.util import get_rng_state, set_rng_seed, set_rng_state, warn_if_nan

assert poutine.queue is queue_handler
assert broadcast_shape((2, 1), (3,)) == (2, 3)
assert is_identically_zero(0) and sum_rightmost(torch.ones(2, 3), 1).shape == (2,)
assert torch.equal(scale_and_mask(torch.ones(2), 2.0), torch.full((2,), 2.0))
assert isinstance(transforms.ExpTransform(), torch.distributions.Transform)

set_rng_seed(0)
state = get_rng_state()
a = torch.rand(())
set_rng_state(state)
assert torch.rand(()) == a


# --- SVI on a conjugate model (exact posterior Normal(sum(x) / 11, 1 / sqrt(11))) --------------
def model(data):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(data)):
        pyro.sample("obs", dist.Normal(z, 1.0), obs=data)


def guide(data):
    loc = pyro.param("loc", torch.tensor(0.0))
    scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
    pyro.sample("z", dist.Normal(loc, scale))


data = torch.linspace(0.5, 1.5, 10)
pyro.clear_param_store()
svi = SVI(model, guide, Adam({"lr": 0.05}), loss=Trace_ELBO(num_particles=8, vectorize_particles=True))
for _ in range(300):
    svi.step(data)
assert abs(pyro.param("loc").item() - data.sum().item() / 11) < 0.1, pyro.param("loc")
assert abs(pyro.param("scale").item() - 11 ** -0.5) < 0.1, pyro.param("scale")


# --- a Messenger, effectful, and Pyro's Search posterior -----------------------------------
class CountSamples(Messenger):
    def __init__(self):
        super().__init__()
        self.count = 0

    def _pyro_sample(self, msg):
        self.count += 1


@effectful(type="double")
def double(x):
    return 2 * x


with poutine.trace() as tm, CountSamples() as counter:
    assert am_i_wrapped()
    pyro.sample("z", dist.Normal(0.0, 1.0))
    double(torch.tensor(1.0), name="d")
assert counter.count == 1 and tm.trace.nodes["d"]["type"] == "double" and isinstance(tm.trace, Trace)


class Search(TracePosterior):
    def __init__(self, model, max_tries=int(1e6)):
        self.model = model
        self.max_tries = max_tries
        super().__init__()

    def _traces(self, *args, **kwargs):
        q = queue.Queue()
        q.put(poutine.Trace())
        p = poutine.trace(poutine.queue(self.model, queue=q, max_tries=self.max_tries))
        while not q.empty():
            tr = p.get_trace(*args, **kwargs)
            yield tr, tr.log_prob_sum()


def two_coins():
    x = pyro.sample("x", dist.Bernoulli(0.5))
    y = pyro.sample("y", dist.Bernoulli(0.5))
    return x + y


marginal = Marginals(Search(two_coins).run()).empirical["_RETURN"]
assert abs(marginal.log_prob(torch.tensor(1.0)).exp().item() - 0.5) < 1e-6

# --- plate_stack, subsample, settings; ops.stats ------------------------------------------
with pyro.plate_stack("p", (2, 3)):
    assert pyro.sample("w", dist.Normal(0.0, 1.0)).shape == (2, 3)
with pyro.plate("batch", 10, subsample_size=4) as idx:
    assert torch.equal(pyro.subsample(torch.arange(10.0), event_dim=0), idx.float())
with pyro.settings.context(validate_poutine=False):
    assert pyro.settings.get("validate_poutine") is False
x = torch.randn(2, 400)
assert effective_sample_size(x).shape == () and hpdi(x[0], 0.9).shape == (2,) and quantile(x[0], [0.5]).shape == (1,)
warn_if_nan(torch.tensor(1.0))
print("PYRO SCRIPT OK")
